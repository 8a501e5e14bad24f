//! The envelope of the Kubernetes-style objects ambit reads
//! (`AuthorizationPolicy`, `HTTPRoute`), as written in the local file or
//! served by the API server. Each model keeps its own `metadata` and `spec`
//! types; what they share is here.

use serde::Deserialize;

/// An object as written: `apiVersion`, `kind`, `metadata` and `spec` (empty
/// when missing). `status`, written by controllers, is accepted and ignored
/// so that objects from a cluster load as they are. Any other field is an
/// error.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[serde(bound(deserialize = "M: Deserialize<'de>, S: Deserialize<'de> + Default"))]
pub(crate) struct RawObject<M, S> {
    /// `apiVersion`, checked by each model.
    #[serde(default)]
    pub(crate) api_version: Option<String>,
    /// `kind`, checked by each model.
    #[serde(default)]
    pub(crate) kind: Option<String>,
    /// The model's metadata.
    pub(crate) metadata: M,
    /// The model's spec.
    #[serde(default)]
    pub(crate) spec: S,
    /// Accepted, never read.
    #[serde(default, rename = "status")]
    _status: serde::de::IgnoredAny,
}

/// An `apiVersion` or `kind` that is not the model's, as
/// [`RawObject::check_header`] finds it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum HeaderMismatch {
    /// `apiVersion` is none of the model's.
    ApiVersion {
        /// As written.
        found: String,
        /// The model's.
        expected: &'static [&'static str],
    },
    /// `kind` is not the model's.
    Kind {
        /// As written.
        found: String,
        /// The model's.
        expected: &'static str,
    },
}

// === impl RawObject ===

impl<M, S> RawObject<M, S> {
    /// Checks `apiVersion` against `api_versions` and `kind` against
    /// `kind`, in that order; either may be left out. The mismatch owns
    /// what it reports, so a caller may check before it takes the object
    /// apart and report after its own earlier checks.
    pub(crate) fn check_header(
        &self,
        api_versions: &'static [&'static str],
        kind: &'static str,
    ) -> Result<(), HeaderMismatch> {
        if let Some(version) = &self.api_version
            && !api_versions.contains(&version.as_str())
        {
            return Err(HeaderMismatch::ApiVersion {
                found: version.clone(),
                expected: api_versions,
            });
        }
        if let Some(found) = &self.kind
            && found != kind
        {
            return Err(HeaderMismatch::Kind {
                found: found.clone(),
                expected: kind,
            });
        }
        Ok(())
    }
}

// === impl HeaderMismatch ===

impl HeaderMismatch {
    /// The field that failed: `apiVersion` or `kind`.
    pub(crate) fn field(&self) -> &'static str {
        match self {
            Self::ApiVersion { .. } => "apiVersion",
            Self::Kind { .. } => "kind",
        }
    }

    /// What the policy models (`AuthorizationPolicy`, `PeerAuthentication`)
    /// say about it.
    pub(crate) fn message(&self) -> String {
        match self {
            Self::ApiVersion { found, expected } => {
                format!("unknown apiVersion {found:?}; expected one of {expected:?}")
            }
            Self::Kind { found, expected } => format!("kind {found:?} is not {expected}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::RawObject;

    #[derive(serde::Deserialize)]
    struct Metadata {
        name: String,
    }

    #[derive(Default, serde::Deserialize)]
    struct Spec {
        #[serde(default)]
        port: u16,
    }

    type Raw = RawObject<Metadata, Spec>;

    #[test]
    fn status_is_ignored_a_missing_spec_is_empty_and_unknown_fields_fail() {
        let raw: Raw = serde_yaml::from_str(
            "{apiVersion: v1, kind: K, metadata: {name: a}, spec: {port: 80},
              status: {conditions: [{type: Accepted, status: 'True'}]}}",
        )
        .unwrap();
        assert_eq!(raw.api_version.as_deref(), Some("v1"));
        assert_eq!(raw.kind.as_deref(), Some("K"));
        assert_eq!((raw.metadata.name.as_str(), raw.spec.port), ("a", 80));
        let bare: Raw = serde_yaml::from_str("{metadata: {name: b}}").unwrap();
        assert_eq!((bare.api_version, bare.spec.port), (None, 0));
        let error = serde_yaml::from_str::<Raw>("{metadata: {name: c}, extra: 1}")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains("unknown field `extra`"), "{error}");
    }

    #[test]
    fn the_header_check_names_the_first_field_that_is_not_the_models() {
        const VERSIONS: &[&str] = &["a/v1", "a/v2"];
        let raw = |text: &str| serde_yaml::from_str::<Raw>(text).unwrap();
        assert_eq!(
            raw("{metadata: {name: a}}").check_header(VERSIONS, "K"),
            Ok(())
        );
        let both = raw("{apiVersion: b/v1, kind: L, metadata: {name: a}}");
        let mismatch = both.check_header(VERSIONS, "K").unwrap_err();
        assert_eq!(mismatch.field(), "apiVersion");
        assert_eq!(
            mismatch.message(),
            r#"unknown apiVersion "b/v1"; expected one of ["a/v1", "a/v2"]"#
        );
        let kind = raw("{apiVersion: a/v2, kind: L, metadata: {name: a}}");
        let mismatch = kind.check_header(VERSIONS, "K").unwrap_err();
        assert_eq!(
            (mismatch.field(), mismatch.message()),
            ("kind", r#"kind "L" is not K"#.to_owned())
        );
    }
}
