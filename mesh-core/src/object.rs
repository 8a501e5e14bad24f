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
}
