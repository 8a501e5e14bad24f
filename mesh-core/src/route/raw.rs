//! `HTTPRoute` as written, in YAML or by the Kubernetes API: the serde
//! types the compiler reads. Unknown fields are errors.

use std::collections::BTreeMap;

use serde::Deserialize;

pub(super) type RawRoute = crate::object::RawObject<RawMetadata, RawSpec>;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct RawMetadata {
    pub(super) name: String,
    #[serde(default = "crate::workload::default_namespace")]
    pub(super) namespace: String,
    /// Values are read as text only for ambit's keys (see [`policy`]).
    #[serde(default)]
    pub(super) annotations: BTreeMap<String, serde_yaml::Value>,
    #[serde(default)]
    pub(super) creation_timestamp: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RawSpec {
    #[serde(default)]
    pub(super) parent_refs: Vec<RawParentRef>,
    #[serde(default)]
    pub(super) hostnames: Vec<String>,
    #[serde(default)]
    pub(super) rules: Vec<RawRule>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RawParentRef {
    #[serde(default)]
    pub(super) group: Option<String>,
    #[serde(default)]
    pub(super) kind: Option<String>,
    pub(super) name: String,
    #[serde(default)]
    pub(super) namespace: Option<String>,
    #[serde(default)]
    pub(super) port: Option<i64>,
    #[serde(default)]
    pub(super) section_name: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RawRule {
    #[serde(default)]
    pub(super) name: Option<String>,
    #[serde(default)]
    pub(super) matches: Vec<RawMatch>,
    #[serde(default)]
    pub(super) filters: Vec<RawFilter>,
    #[serde(default)]
    pub(super) backend_refs: Vec<RawBackendRef>,
    #[serde(default)]
    pub(super) timeouts: Option<RawTimeouts>,
    #[serde(default)]
    pub(super) retry: Option<RawRetry>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RawMatch {
    #[serde(default)]
    pub(super) path: Option<RawTyped>,
    #[serde(default)]
    pub(super) headers: Vec<RawNamedMatch>,
    #[serde(default)]
    pub(super) query_params: Vec<RawNamedMatch>,
    #[serde(default)]
    pub(super) method: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RawTyped {
    #[serde(default, rename = "type")]
    pub(super) kind: Option<String>,
    #[serde(default)]
    pub(super) value: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RawNamedMatch {
    #[serde(default, rename = "type")]
    pub(super) kind: Option<String>,
    pub(super) name: String,
    pub(super) value: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RawFilter {
    #[serde(rename = "type")]
    pub(super) kind: String,
    #[serde(default)]
    pub(super) request_header_modifier: Option<RawHeaderModifier>,
    #[serde(default)]
    pub(super) response_header_modifier: Option<RawHeaderModifier>,
    #[serde(default)]
    pub(super) request_redirect: Option<RawRedirect>,
    // Known to Gateway API, not implemented: the type is refused by name.
    #[serde(default, rename = "urlRewrite")]
    pub(super) _url_rewrite: Option<serde_yaml::Value>,
    #[serde(default, rename = "requestMirror")]
    pub(super) _request_mirror: Option<serde_yaml::Value>,
    #[serde(default, rename = "extensionRef")]
    pub(super) _extension_ref: Option<serde_yaml::Value>,
    #[serde(default, rename = "cors")]
    pub(super) _cors: Option<serde_yaml::Value>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RawHeaderModifier {
    #[serde(default)]
    pub(super) set: Vec<RawHeader>,
    #[serde(default)]
    pub(super) add: Vec<RawHeader>,
    #[serde(default)]
    pub(super) remove: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RawHeader {
    pub(super) name: String,
    pub(super) value: String,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RawRedirect {
    #[serde(default)]
    pub(super) scheme: Option<String>,
    #[serde(default)]
    pub(super) hostname: Option<String>,
    #[serde(default)]
    pub(super) path: Option<RawRedirectPath>,
    #[serde(default)]
    pub(super) port: Option<i64>,
    #[serde(default)]
    pub(super) status_code: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RawRedirectPath {
    #[serde(rename = "type")]
    pub(super) kind: String,
    #[serde(default)]
    pub(super) replace_full_path: Option<String>,
    #[serde(default)]
    pub(super) replace_prefix_match: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RawBackendRef {
    #[serde(default)]
    pub(super) group: Option<String>,
    #[serde(default)]
    pub(super) kind: Option<String>,
    pub(super) name: String,
    #[serde(default)]
    pub(super) namespace: Option<String>,
    #[serde(default)]
    pub(super) port: Option<i64>,
    #[serde(default)]
    pub(super) weight: Option<i64>,
    #[serde(default)]
    pub(super) filters: Vec<serde_yaml::Value>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RawTimeouts {
    #[serde(default)]
    pub(super) request: Option<String>,
    #[serde(default)]
    pub(super) backend_request: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RawRetry {
    #[serde(default)]
    pub(super) codes: Option<Vec<i64>>,
    #[serde(default)]
    pub(super) attempts: Option<i64>,
    #[serde(default)]
    pub(super) backoff: Option<String>,
}
