//! L4 authorization: `AuthorizationPolicy` objects, modelled on Istio's so
//! that policies carry over, checked once when they are loaded and compiled
//! into a form the data path evaluates without parsing anything.
//!
//! ```yaml
//! apiVersion: security.ambit.dev/v1alpha1     # optional; Istio's security.istio.io/v1 too
//! kind: AuthorizationPolicy                   # optional
//! metadata: {name: backend-allow, namespace: shop}
//! spec:
//!   selector: {matchLabels: {app: backend}}   # none: every workload of the namespace
//!   action: ALLOW                             # ALLOW (default), DENY or AUDIT
//!   rules:
//!     - from:
//!         - source:
//!             principals: [cluster.local/ns/shop/sa/frontend, "*/sa/admin"]
//!             notNamespaces: [legacy]
//!             ipBlocks: [10.10.0.0/16]
//!       to:
//!         - operation: {ports: ["8080"]}
//! ```
//!
//! A policy in the mesh's root namespace without a selector applies to every
//! workload of the mesh; with a selector, to every workload of any namespace
//! whose labels match.
//!
//! **Fields only a waypoint can enforce** (`methods`, `paths`, `hosts`,
//! `requestPrincipals`, `remoteIpBlocks` and their `not` forms) are accepted.
//! Without a waypoint they fail closed: a rule that uses them never allows,
//! and a DENY or AUDIT rule that uses them applies on its L4 fields alone, so
//! it denies at least what it meant to. The policy's status says so.
//!
//! **A policy that is wrong** (an unknown action, an invalid CIDR, a malformed
//! principal, an unknown field) is rejected with an error naming the policy
//! and the field, and it fails closed too: what can be read of its scope is
//! kept, and a rejected ALLOW allows nothing there, while a rejected DENY, or
//! one whose action cannot be read, denies everything there. A broken policy
//! never opens traffic.

use std::{collections::BTreeMap, fmt, net::IpAddr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

mod evaluate;
#[cfg(test)]
mod tests;

pub use evaluate::{
    Decision, HttpAttributes, PolicySet, Request, ServiceTarget, Verdict, Workload,
};

/// The root namespace when none is configured: its policies apply mesh-wide.
pub const DEFAULT_ROOT_NAMESPACE: &str = "ambit-system";

/// The `apiVersion`s a policy may declare.
pub const API_VERSIONS: &[&str] = &[
    "security.ambit.dev/v1alpha1",
    "security.istio.io/v1",
    "security.istio.io/v1beta1",
];

/// Why a policy was rejected: the policy, the field, and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize)]
#[error("authorization policy {policy}: {field}: {message}")]
pub struct PolicyError {
    /// The policy's namespace/name.
    pub policy: PolicyKey,
    /// The field, as a path from the top of the object (`spec.rules[0].from[0].source.ipBlocks[1]`).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

/// A policy's namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PolicyKey {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

/// What a policy does when one of its rules matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Action {
    /// Connections must match an ALLOW policy, once any selects the workload.
    Allow,
    /// A matching connection is refused, whatever else allows it.
    Deny,
    /// A matching connection is recorded; the verdict is unchanged.
    Audit,
}

/// A checked policy, ready to evaluate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Policy {
    /// namespace/name.
    pub key: PolicyKey,
    /// Which workloads it applies to, within its namespace (or the mesh, for
    /// the root namespace).
    pub selector: BTreeMap<String, String>,
    /// ALLOW, DENY or AUDIT.
    pub action: Action,
    /// Its rules; a connection matching any of them matches the policy.
    pub rules: Vec<Rule>,
    /// Why it was rejected, when it was: it then keeps only its scope and
    /// fails closed (see the module docs).
    pub rejected: Option<PolicyError>,
    /// Fields it uses that only a waypoint can enforce, by path.
    pub waypoint_fields: Vec<String>,
    /// The Services or waypoints it is attached to (`targetRefs`): such a
    /// policy is enforced by the waypoint, not by the node agents.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<TargetRef>,
}

/// What a policy's `targetRefs` entry attaches it to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "name")]
pub enum TargetRef {
    /// Traffic to this Service of the policy's namespace, at its waypoint.
    Service(String),
    /// Every request through this waypoint (Gateway API `Gateway`).
    Gateway(String),
}

/// One rule: every `from` list and `to` list given must match.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Rule {
    /// Sources; one must match. Empty: any source.
    pub from: Vec<Source>,
    /// Operations; one must match. Empty: any operation.
    pub to: Vec<Operation>,
    /// Request headers (`when: request.headers[...]`); each must match.
    pub headers: Vec<HeaderCondition>,
    /// The rule uses fields only a waypoint can enforce.
    pub needs_waypoint: bool,
    /// The rule uses fields no part of ambit enforces (`requestPrincipals`,
    /// `remoteIpBlocks`: JWT and proxy-protocol attributes): it fails
    /// closed at the waypoint too.
    pub unenforceable: bool,
}

/// A `when` condition on a request header.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HeaderCondition {
    /// The header, lowercase.
    pub name: String,
    /// Its value must match one of these (when given).
    pub values: Vec<Pattern>,
    /// Its value must match none of these.
    pub not_values: Vec<Pattern>,
}

/// Who is connecting. Every field given must match.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Source {
    /// The peer's principal must match one of these.
    pub principals: Vec<Pattern>,
    /// The peer's principal must match none of these.
    pub not_principals: Vec<Pattern>,
    /// The peer's namespace (from its identity) must match one of these.
    pub namespaces: Vec<Pattern>,
    /// The peer's namespace must match none of these.
    pub not_namespaces: Vec<Pattern>,
    /// The peer's address must be in one of these.
    pub ip_blocks: Vec<IpNet>,
    /// The peer's address must be in none of these.
    pub not_ip_blocks: Vec<IpNet>,
}

/// What is connected to. Every field given must match.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Operation {
    /// The destination port must be one of these.
    pub ports: Vec<u16>,
    /// The destination port must be none of these.
    pub not_ports: Vec<u16>,
    /// The request's host (lowercase; a pattern without a port also
    /// matches the host with any port) must match one of these. Waypoint.
    pub hosts: Vec<Pattern>,
    /// ... and none of these. Waypoint.
    pub not_hosts: Vec<Pattern>,
    /// The method must be one of these. Waypoint.
    pub methods: Vec<String>,
    /// ... and none of these. Waypoint.
    pub not_methods: Vec<String>,
    /// The path (without the query) must match one of these. Waypoint.
    pub paths: Vec<Pattern>,
    /// ... and none of these. Waypoint.
    pub not_paths: Vec<Pattern>,
}

/// A principal or namespace pattern: exact, `prefix*`, `*suffix` or `*`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub enum Pattern {
    /// Any value, as long as there is one (`*`: any authenticated peer).
    Any,
    /// Exactly this.
    Exact(String),
    /// Starts with this (`prefix*`).
    Prefix(String),
    /// Ends with this (`*suffix`).
    Suffix(String),
}

// --- The object as written. Lists are optional so that `[]` and a missing
// --- field mean the same; unknown fields are errors.

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    api_version: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    metadata: RawMetadata,
    #[serde(default)]
    spec: RawSpec,
    /// Written by controllers; ignored on input.
    #[serde(default)]
    #[expect(
        dead_code,
        reason = "accepted so that objects from a cluster load as they are"
    )]
    status: Option<serde_yaml::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawMetadata {
    name: String,
    #[serde(default = "crate::workload::default_namespace")]
    namespace: String,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawSpec {
    #[serde(default)]
    selector: Option<RawSelector>,
    #[serde(default)]
    target_refs: Option<Vec<RawTargetRef>>,
    #[serde(default)]
    target_ref: Option<RawTargetRef>,
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    provider: Option<serde_yaml::Value>,
    #[serde(default)]
    rules: Option<Vec<RawRule>>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawSelector {
    #[serde(default)]
    match_labels: BTreeMap<String, String>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawRule {
    #[serde(default)]
    from: Option<Vec<RawFrom>>,
    #[serde(default)]
    to: Option<Vec<RawTo>>,
    #[serde(default)]
    when: Option<Vec<RawCondition>>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawCondition {
    key: String,
    #[serde(default)]
    values: Option<Vec<String>>,
    #[serde(default)]
    not_values: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawTargetRef {
    #[serde(default)]
    group: Option<String>,
    kind: String,
    name: String,
    #[serde(default)]
    namespace: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawFrom {
    #[serde(default)]
    source: RawSource,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawSource {
    #[serde(default)]
    principals: Option<Vec<String>>,
    #[serde(default)]
    not_principals: Option<Vec<String>>,
    #[serde(default)]
    namespaces: Option<Vec<String>>,
    #[serde(default)]
    not_namespaces: Option<Vec<String>>,
    #[serde(default)]
    ip_blocks: Option<Vec<String>>,
    #[serde(default)]
    not_ip_blocks: Option<Vec<String>>,
    // Waypoint only.
    #[serde(default)]
    request_principals: Option<Vec<String>>,
    #[serde(default)]
    not_request_principals: Option<Vec<String>>,
    #[serde(default)]
    remote_ip_blocks: Option<Vec<String>>,
    #[serde(default)]
    not_remote_ip_blocks: Option<Vec<String>>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawTo {
    #[serde(default)]
    operation: RawOperation,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawOperation {
    #[serde(default)]
    ports: Option<Vec<RawPort>>,
    #[serde(default)]
    not_ports: Option<Vec<RawPort>>,
    // Waypoint only.
    #[serde(default)]
    hosts: Option<Vec<String>>,
    #[serde(default)]
    not_hosts: Option<Vec<String>>,
    #[serde(default)]
    methods: Option<Vec<String>>,
    #[serde(default)]
    not_methods: Option<Vec<String>>,
    #[serde(default)]
    paths: Option<Vec<String>>,
    #[serde(default)]
    not_paths: Option<Vec<String>>,
}

/// Istio writes ports as strings; a number is accepted too.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawPort {
    Number(i64),
    Text(String),
}

/// Reads one policy object. Never fails: a policy that cannot be accepted
/// comes back with [`Policy::rejected`] set and only its scope kept.
#[must_use]
pub fn compile(value: &serde_yaml::Value) -> Policy {
    let key = key_of(value);
    let raw: Result<RawPolicy, _> = serde_path_to_error::deserialize(value.clone());
    let result = match raw {
        Ok(raw) => compile_raw(raw),
        Err(error) => Err(PolicyError {
            policy: key.clone(),
            field: field_path(&error.path().to_string()),
            message: error.into_inner().to_string(),
        }),
    };
    result.unwrap_or_else(|error| rejected(value, key, error))
}

/// Reads every policy object of a list, in order.
#[must_use]
pub fn compile_all(values: &[serde_yaml::Value]) -> Vec<Policy> {
    values.iter().map(compile).collect()
}

fn compile_raw(raw: RawPolicy) -> Result<Policy, PolicyError> {
    let key = PolicyKey {
        namespace: raw.metadata.namespace,
        name: raw.metadata.name,
    };
    let fail = |field: &str, message: String| PolicyError {
        policy: key.clone(),
        field: field.to_owned(),
        message,
    };
    if key.name.is_empty() {
        return Err(fail("metadata.name", "a policy needs a name".to_owned()));
    }
    if let Some(version) = &raw.api_version
        && !API_VERSIONS.contains(&version.as_str())
    {
        return Err(fail(
            "apiVersion",
            format!("unknown apiVersion {version:?}; expected one of {API_VERSIONS:?}"),
        ));
    }
    if let Some(kind) = &raw.kind
        && kind != "AuthorizationPolicy"
    {
        return Err(fail(
            "kind",
            format!("kind {kind:?} is not AuthorizationPolicy"),
        ));
    }
    let spec = raw.spec;
    let target_refs = compile_target_refs(
        spec.target_refs
            .into_iter()
            .flatten()
            .chain(spec.target_ref),
        &key.namespace,
    )
    .map_err(|(field, m)| fail(&field, m))?;
    if !target_refs.is_empty() && spec.selector.is_some() {
        return Err(fail(
            "spec.targetRefs",
            "a policy has either a selector (node agents enforce it) or targetRefs (the waypoint does), not both".to_owned(),
        ));
    }
    if spec.provider.is_some() {
        return Err(fail(
            "spec.provider",
            "external authorizers (CUSTOM) are not supported".to_owned(),
        ));
    }
    let action = parse_action(spec.action.as_deref()).map_err(|m| fail("spec.action", m))?;
    let mut waypoint_fields = Vec::new();
    let mut rules = Vec::new();
    for (r, raw_rule) in spec.rules.unwrap_or_default().into_iter().enumerate() {
        let path = format!("spec.rules[{r}]");
        let mut rule = Rule::default();
        for (w, condition) in raw_rule.when.unwrap_or_default().into_iter().enumerate() {
            let path = format!("{path}.when[{w}]");
            rule.headers
                .push(compile_condition(condition, &path).map_err(|(field, m)| fail(&field, m))?);
            waypoint_fields.push(path);
        }
        for (f, from) in raw_rule.from.unwrap_or_default().into_iter().enumerate() {
            let path = format!("{path}.from[{f}].source");
            let (source, l7) =
                compile_source(from.source, &path).map_err(|(field, m)| fail(&field, m))?;
            waypoint_fields.extend(l7);
            rule.from.push(source);
        }
        for (t, to) in raw_rule.to.unwrap_or_default().into_iter().enumerate() {
            let path = format!("{path}.to[{t}].operation");
            let (operation, l7) =
                compile_operation(to.operation, &path).map_err(|(field, m)| fail(&field, m))?;
            waypoint_fields.extend(l7);
            rule.to.push(operation);
        }
        let own: Vec<&String> = waypoint_fields
            .iter()
            .filter(|f| f.starts_with(&format!("{path}.")))
            .collect();
        rule.needs_waypoint = !own.is_empty();
        rule.unenforceable = own.iter().any(|f| {
            UNENFORCEABLE_FIELDS
                .iter()
                .any(|u| f.ends_with(&format!(".{u}")))
        });
        rules.push(rule);
    }
    Ok(Policy {
        key,
        selector: spec.selector.unwrap_or_default().match_labels,
        action,
        rules,
        rejected: None,
        waypoint_fields,
        target_refs,
    })
}

fn parse_action(action: Option<&str>) -> Result<Action, String> {
    match action {
        None | Some("ALLOW") => Ok(Action::Allow),
        Some("DENY") => Ok(Action::Deny),
        Some("AUDIT") => Ok(Action::Audit),
        Some("CUSTOM") => Err("CUSTOM (an external authorizer) is not supported".to_owned()),
        Some(other) => Err(format!(
            "unknown action {other:?}; expected ALLOW, DENY or AUDIT"
        )),
    }
}

type FieldError = (String, String);

fn compile_source(raw: RawSource, path: &str) -> Result<(Source, Vec<String>), FieldError> {
    let patterns =
        |list: Option<Vec<String>>, field: &str, check: fn(&str) -> Result<(), String>| {
            list.unwrap_or_default()
                .iter()
                .enumerate()
                .map(|(i, value)| {
                    Pattern::parse(value, check).map_err(|m| (format!("{path}.{field}[{i}]"), m))
                })
                .collect::<Result<Vec<_>, _>>()
        };
    let blocks = |list: Option<Vec<String>>, field: &str| {
        list.unwrap_or_default()
            .iter()
            .enumerate()
            .map(|(i, value)| {
                parse_ip_block(value).map_err(|m| (format!("{path}.{field}[{i}]"), m))
            })
            .collect::<Result<Vec<_>, _>>()
    };
    let source = Source {
        principals: patterns(raw.principals, "principals", check_principal)?,
        not_principals: patterns(raw.not_principals, "notPrincipals", check_principal)?,
        namespaces: patterns(raw.namespaces, "namespaces", check_namespace)?,
        not_namespaces: patterns(raw.not_namespaces, "notNamespaces", check_namespace)?,
        ip_blocks: blocks(raw.ip_blocks, "ipBlocks")?,
        not_ip_blocks: blocks(raw.not_ip_blocks, "notIpBlocks")?,
    };
    let waypoint_only = [
        ("requestPrincipals", &raw.request_principals),
        ("notRequestPrincipals", &raw.not_request_principals),
        ("remoteIpBlocks", &raw.remote_ip_blocks),
        ("notRemoteIpBlocks", &raw.not_remote_ip_blocks),
    ];
    Ok((source, used_fields(path, &waypoint_only)))
}

fn compile_operation(
    raw: RawOperation,
    path: &str,
) -> Result<(Operation, Vec<String>), FieldError> {
    let ports = |list: Option<Vec<RawPort>>, field: &str| {
        list.unwrap_or_default()
            .iter()
            .enumerate()
            .map(|(i, port)| parse_port(port).map_err(|m| (format!("{path}.{field}[{i}]"), m)))
            .collect::<Result<Vec<_>, _>>()
    };
    let patterns =
        |list: &Option<Vec<String>>, field: &str, check: fn(&str) -> Result<(), String>| {
            list.iter()
                .flatten()
                .enumerate()
                .map(|(i, value)| {
                    Pattern::parse(value, check).map_err(|m| (format!("{path}.{field}[{i}]"), m))
                })
                .collect::<Result<Vec<_>, _>>()
        };
    let methods = |list: &Option<Vec<String>>, field: &str| {
        list.iter()
            .flatten()
            .enumerate()
            .map(|(i, method)| {
                check_method(method)
                    .map(|()| method.clone())
                    .map_err(|m| (format!("{path}.{field}[{i}]"), m))
            })
            .collect::<Result<Vec<_>, _>>()
    };
    let lowercase = |list: &Option<Vec<String>>| {
        list.as_ref()
            .map(|hosts| hosts.iter().map(|h| h.to_ascii_lowercase()).collect())
    };
    let operation = Operation {
        ports: ports(raw.ports, "ports")?,
        not_ports: ports(raw.not_ports, "notPorts")?,
        hosts: patterns(&lowercase(&raw.hosts), "hosts", accept_any)?,
        not_hosts: patterns(&lowercase(&raw.not_hosts), "notHosts", accept_any)?,
        methods: methods(&raw.methods, "methods")?,
        not_methods: methods(&raw.not_methods, "notMethods")?,
        paths: patterns(&raw.paths, "paths", check_path)?,
        not_paths: patterns(&raw.not_paths, "notPaths", check_path)?,
    };
    let waypoint_only = [
        ("hosts", &raw.hosts),
        ("notHosts", &raw.not_hosts),
        ("methods", &raw.methods),
        ("notMethods", &raw.not_methods),
        ("paths", &raw.paths),
        ("notPaths", &raw.not_paths),
    ];
    Ok((operation, used_fields(path, &waypoint_only)))
}

/// Fields that no part of ambit can enforce (they need JWT validation or
/// the PROXY protocol); a rule that uses them fails closed everywhere.
const UNENFORCEABLE_FIELDS: &[&str] = &[
    "requestPrincipals",
    "notRequestPrincipals",
    "remoteIpBlocks",
    "notRemoteIpBlocks",
];

#[expect(
    clippy::unnecessary_wraps,
    reason = "the shape Pattern::parse takes for its checks"
)]
fn accept_any(_: &str) -> Result<(), String> {
    Ok(())
}

fn check_path(value: &str) -> Result<(), String> {
    if value.is_empty() || value.starts_with('/') {
        Ok(())
    } else {
        Err(format!("{value:?} is not a path (it must start with /)"))
    }
}

fn check_method(method: &str) -> Result<(), String> {
    if !method.is_empty() && method.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(())
    } else {
        Err(format!(
            "{method:?} is not an HTTP method (uppercase, e.g. GET)"
        ))
    }
}

/// The header a `when` key names, from `request.headers[<name>]`; any
/// other key is refused with the supported one.
fn compile_condition(raw: RawCondition, path: &str) -> Result<HeaderCondition, FieldError> {
    let name = raw
        .key
        .strip_prefix("request.headers[")
        .and_then(|rest| rest.strip_suffix(']'))
        .filter(|name| http::HeaderName::from_bytes(name.as_bytes()).is_ok())
        .ok_or_else(|| {
            (
                format!("{path}.key"),
                format!(
                    "{:?} is not supported; the supported condition key is request.headers[<name>] (use from and to for sources and ports)",
                    raw.key
                ),
            )
        })?;
    let patterns = |list: Option<Vec<String>>, field: &str| {
        list.unwrap_or_default()
            .iter()
            .enumerate()
            .map(|(i, value)| {
                Pattern::parse(value, accept_any).map_err(|m| (format!("{path}.{field}[{i}]"), m))
            })
            .collect::<Result<Vec<_>, _>>()
    };
    let condition = HeaderCondition {
        name: name.to_ascii_lowercase(),
        values: patterns(raw.values, "values")?,
        not_values: patterns(raw.not_values, "notValues")?,
    };
    if condition.values.is_empty() && condition.not_values.is_empty() {
        return Err((
            format!("{path}.values"),
            "a condition needs values or notValues".to_owned(),
        ));
    }
    Ok(condition)
}

/// `targetRefs`: Services of the policy's namespace (group `""`) or
/// waypoints (`gateway.networking.k8s.io` `Gateway`).
fn compile_target_refs(
    refs: impl Iterator<Item = RawTargetRef>,
    namespace: &str,
) -> Result<Vec<TargetRef>, FieldError> {
    refs.enumerate()
        .map(|(i, raw)| {
            let field = format!("spec.targetRefs[{i}]");
            if raw.namespace.as_deref().is_some_and(|ns| ns != namespace) {
                return Err((
                    format!("{field}.namespace"),
                    "a policy can only target objects of its own namespace".to_owned(),
                ));
            }
            match (raw.group.as_deref().unwrap_or(""), raw.kind.as_str()) {
                ("" | "core", "Service") => Ok(TargetRef::Service(raw.name)),
                ("gateway.networking.k8s.io", "Gateway") => Ok(TargetRef::Gateway(raw.name)),
                (group, kind) => Err((
                    field,
                    format!("{kind} (group {group:?}) cannot be targeted; use a Service (group \"\") or a waypoint's Gateway"),
                )),
            }
        })
        .collect()
}

fn used_fields(path: &str, fields: &[(&str, &Option<Vec<String>>)]) -> Vec<String> {
    fields
        .iter()
        .filter(|(_, values)| values.as_ref().is_some_and(|v| !v.is_empty()))
        .map(|(field, _)| format!("{path}.{field}"))
        .collect()
}

fn parse_port(port: &RawPort) -> Result<u16, String> {
    let number = match port {
        RawPort::Number(n) => *n,
        RawPort::Text(text) => text
            .trim()
            .parse::<i64>()
            .map_err(|_| format!("{text:?} is not a port number"))?,
    };
    u16::try_from(number)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{number} is not a port (1-65535)"))
}

fn parse_ip_block(value: &str) -> Result<IpNet, String> {
    let value = value.trim();
    if let Ok(net) = value.parse::<IpNet>() {
        if net.trunc() != net {
            return Err(format!(
                "{value:?} has host bits set; did you mean {}?",
                net.trunc()
            ));
        }
        return Ok(net);
    }
    value
        .parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("{value:?} is not an IP address or CIDR block"))
}

fn check_principal(value: &str) -> Result<(), String> {
    if value.starts_with("spiffe://") {
        return Err(format!(
            "{value:?}: principals are written without the scheme, e.g. cluster.local/ns/default/sa/client"
        ));
    }
    if value.contains('?') || value.contains('#') {
        return Err(format!("{value:?} is not a SPIFFE id path"));
    }
    Ok(())
}

fn check_namespace(value: &str) -> Result<(), String> {
    let plain = value.trim_matches('*');
    if plain
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
    {
        Ok(())
    } else {
        Err(format!("{value:?} is not a namespace name"))
    }
}

/// The policy's namespace/name, read as far as the object allows.
fn key_of(value: &serde_yaml::Value) -> PolicyKey {
    let metadata = &value["metadata"];
    PolicyKey {
        namespace: metadata["namespace"]
            .as_str()
            .map_or_else(crate::workload::default_namespace, ToOwned::to_owned),
        name: metadata["name"].as_str().unwrap_or("<unnamed>").to_owned(),
    }
}

/// A rejected policy keeps what can be read of its scope and fails closed.
fn rejected(value: &serde_yaml::Value, key: PolicyKey, error: PolicyError) -> Policy {
    // A selector that cannot be read widens the scope to the namespace.
    let selector = value["spec"]["selector"]["matchLabels"]
        .as_mapping()
        .and_then(|labels| {
            labels
                .iter()
                .map(|(k, v)| Some((k.as_str()?.to_owned(), v.as_str()?.to_owned())))
                .collect::<Option<BTreeMap<_, _>>>()
        })
        .unwrap_or_default();
    let action = match value["spec"]["action"].as_str() {
        None | Some("ALLOW") => Action::Allow,
        // AUDIT changes no verdict, so a broken one is harmless either way;
        // anything unreadable is taken as a DENY.
        Some("AUDIT") => Action::Audit,
        Some(_) => Action::Deny,
    };
    let rules = match action {
        // An ALLOW with no rules allows nothing.
        Action::Allow | Action::Audit => Vec::new(),
        // A DENY with one empty rule denies everything.
        Action::Deny => vec![Rule::default()],
    };
    Policy {
        key,
        selector,
        action,
        rules,
        rejected: Some(error),
        waypoint_fields: Vec::new(),
        target_refs: readable_target_refs(value),
    }
}

/// The targets of a rejected policy, as far as they can be read: it then
/// fails closed at those targets (at the waypoint); with none readable, in
/// its namespace or selector's scope at the node agents.
fn readable_target_refs(value: &serde_yaml::Value) -> Vec<TargetRef> {
    value["spec"]["targetRefs"]
        .as_sequence()
        .into_iter()
        .flatten()
        .chain(
            value["spec"]["targetRef"]
                .as_mapping()
                .map(|_| &value["spec"]["targetRef"]),
        )
        .filter_map(|target| {
            let name = target["name"].as_str()?.to_owned();
            match target["kind"].as_str()? {
                "Service" => Some(TargetRef::Service(name)),
                "Gateway" => Some(TargetRef::Gateway(name)),
                _ => None,
            }
        })
        .collect()
}

/// serde's path to the failing field (`spec.rules[0].from`); the whole
/// object when the failure is at the top.
fn field_path(path: &str) -> String {
    if path == "." || path.is_empty() {
        "(top level)".to_owned()
    } else {
        path.to_owned()
    }
}

// === impl Policy ===

impl Policy {
    /// What an operator should know about how the policy is enforced:
    /// why it was rejected, or which fields need a waypoint.
    #[must_use]
    pub fn status(&self) -> String {
        if let Some(error) = &self.rejected {
            let effect = match self.action {
                Action::Allow => "allows nothing",
                Action::Deny => "denies every connection",
                Action::Audit => "records nothing",
            };
            return format!(
                "rejected: {}: {}; it fails closed and {effect} in its scope",
                error.field, error.message
            );
        }
        let unenforceable: Vec<&str> = self
            .waypoint_fields
            .iter()
            .filter(|f| {
                UNENFORCEABLE_FIELDS
                    .iter()
                    .any(|u| f.ends_with(&format!(".{u}")))
            })
            .map(String::as_str)
            .collect();
        if !self.target_refs.is_empty() {
            if unenforceable.is_empty() {
                return "accepted; enforced by the waypoint".to_owned();
            }
            return format!(
                "accepted, failing closed: {} are not supported (no JWT or PROXY protocol); rules that use them allow nothing",
                unenforceable.join(", ")
            );
        }
        if self.waypoint_fields.is_empty() {
            return "accepted".to_owned();
        }
        let effect = match self.action {
            Action::Allow => "rules that use them allow nothing",
            Action::Deny | Action::Audit => "rules that use them apply on their L4 fields alone",
        };
        format!(
            "accepted, failing closed: {} need a waypoint and none serves this workload; {effect}",
            self.waypoint_fields.join(", ")
        )
    }
}

// === impl PolicyKey ===

impl fmt::Display for PolicyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

// === impl Action ===

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Allow => "ALLOW",
            Self::Deny => "DENY",
            Self::Audit => "AUDIT",
        })
    }
}

// === impl Pattern ===

impl Pattern {
    /// Reads `value`: `*`, `prefix*`, `*suffix` or an exact value checked by
    /// `check`. A `*` anywhere else is an error.
    fn parse(value: &str, check: fn(&str) -> Result<(), String>) -> Result<Self, String> {
        if value.is_empty() {
            return Err("an empty value matches nothing; remove it".to_owned());
        }
        if value.chars().any(char::is_whitespace) {
            return Err(format!("{value:?} contains whitespace"));
        }
        if value == "*" {
            return Ok(Self::Any);
        }
        let inner = value.trim_start_matches('*').trim_end_matches('*');
        let stars = value.matches('*').count();
        if inner.contains('*') || stars > 1 {
            return Err(format!(
                "{value:?}: `*` may only stand alone, or start or end the value once"
            ));
        }
        check(inner)?;
        Ok(if let Some(suffix) = value.strip_prefix('*') {
            Self::Suffix(suffix.to_owned())
        } else if let Some(prefix) = value.strip_suffix('*') {
            Self::Prefix(prefix.to_owned())
        } else {
            Self::Exact(value.to_owned())
        })
    }

    /// Whether `value` matches.
    #[must_use]
    pub fn matches(&self, value: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(exact) => value == exact,
            Self::Prefix(prefix) => value.starts_with(prefix.as_str()),
            Self::Suffix(suffix) => value.ends_with(suffix.as_str()),
        }
    }
}

impl From<Pattern> for String {
    fn from(pattern: Pattern) -> Self {
        match pattern {
            Pattern::Any => "*".to_owned(),
            Pattern::Exact(value) => value,
            Pattern::Prefix(prefix) => format!("{prefix}*"),
            Pattern::Suffix(suffix) => format!("*{suffix}"),
        }
    }
}
