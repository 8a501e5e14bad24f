//! `AuthorizationPolicy` as written, in YAML or by the Kubernetes API: the
//! serde types the compiler reads. Lists are optional so that `[]` and a
//! missing field mean the same; unknown fields are errors.

use std::collections::BTreeMap;

use serde::Deserialize;

pub(super) type RawPolicy = crate::object::RawObject<RawMetadata, RawSpec>;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct RawMetadata {
    pub(super) name: String,
    #[serde(default = "crate::workload::default_namespace")]
    pub(super) namespace: String,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RawSpec {
    #[serde(default)]
    pub(super) selector: Option<RawSelector>,
    #[serde(default)]
    pub(super) target_refs: Option<Vec<RawTargetRef>>,
    #[serde(default)]
    pub(super) target_ref: Option<RawTargetRef>,
    #[serde(default)]
    pub(super) action: Option<String>,
    #[serde(default)]
    pub(super) provider: Option<serde_yaml::Value>,
    #[serde(default)]
    pub(super) rules: Option<Vec<RawRule>>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RawSelector {
    #[serde(default)]
    pub(super) match_labels: BTreeMap<String, String>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RawRule {
    #[serde(default)]
    pub(super) from: Option<Vec<RawFrom>>,
    #[serde(default)]
    pub(super) to: Option<Vec<RawTo>>,
    #[serde(default)]
    pub(super) when: Option<Vec<RawCondition>>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RawCondition {
    pub(super) key: String,
    #[serde(default)]
    pub(super) values: Option<Vec<RawScalar>>,
    #[serde(default)]
    pub(super) not_values: Option<Vec<RawScalar>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RawTargetRef {
    #[serde(default)]
    pub(super) group: Option<String>,
    pub(super) kind: String,
    pub(super) name: String,
    #[serde(default)]
    pub(super) namespace: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RawFrom {
    #[serde(default)]
    pub(super) source: RawSource,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RawSource {
    #[serde(default)]
    pub(super) principals: Option<Vec<String>>,
    #[serde(default)]
    pub(super) not_principals: Option<Vec<String>>,
    #[serde(default)]
    pub(super) namespaces: Option<Vec<String>>,
    #[serde(default)]
    pub(super) not_namespaces: Option<Vec<String>>,
    #[serde(default)]
    pub(super) ip_blocks: Option<Vec<String>>,
    #[serde(default)]
    pub(super) not_ip_blocks: Option<Vec<String>>,
    // Waypoint only.
    #[serde(default)]
    pub(super) request_principals: Option<Vec<String>>,
    #[serde(default)]
    pub(super) not_request_principals: Option<Vec<String>>,
    #[serde(default)]
    pub(super) remote_ip_blocks: Option<Vec<String>>,
    #[serde(default)]
    pub(super) not_remote_ip_blocks: Option<Vec<String>>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RawTo {
    #[serde(default)]
    pub(super) operation: RawOperation,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RawOperation {
    #[serde(default)]
    pub(super) ports: Option<Vec<RawScalar>>,
    #[serde(default)]
    pub(super) not_ports: Option<Vec<RawScalar>>,
    // Waypoint only.
    #[serde(default)]
    pub(super) hosts: Option<Vec<String>>,
    #[serde(default)]
    pub(super) not_hosts: Option<Vec<String>>,
    #[serde(default)]
    pub(super) methods: Option<Vec<String>>,
    #[serde(default)]
    pub(super) not_methods: Option<Vec<String>>,
    #[serde(default)]
    pub(super) paths: Option<Vec<String>>,
    #[serde(default)]
    pub(super) not_paths: Option<Vec<String>>,
}

/// Istio writes ports and condition values as strings; a number is
/// accepted too.
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum RawScalar {
    Number(i64),
    Text(String),
}
