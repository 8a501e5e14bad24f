//! Authorization: `AuthorizationPolicy` objects, modelled on Istio's so
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
//!       when:
//!         - {key: source.ip, notValues: [10.10.9.0/24]}
//! ```
//!
//! A policy in the mesh's root namespace without a selector applies to every
//! workload of the mesh; with a selector, to every workload of any namespace
//! whose labels match.
//!
//! **Who enforces what.** A policy with a `selector` (or none) is the node
//! agents': they see connections (L4), so they check `principals`,
//! `namespaces`, `ipBlocks`, `ports`, the `not` forms, and the `when` keys
//! `source.principal`, `source.namespace`, `source.ip` and
//! `destination.port`. A policy with `targetRefs` (a Service, or the
//! waypoint as a Gateway) is the waypoint's: an L7 proxy, it sees each HTTP
//! request and also checks `methods`, `paths`, `hosts` and
//! `when: request.headers[<name>]` (Istio's semantics: methods exact and
//! case-sensitive; paths and hosts exact, `prefix*`, `*suffix` or `*`; hosts
//! without regard to case, a pattern without a port matching any port).
//!
//! **Fields only a waypoint can enforce** fail closed wherever they cannot
//! be checked (at a node agent, or at the waypoint on a stream that is not
//! HTTP): a rule that uses them never allows, and a DENY or AUDIT rule that
//! uses them applies on its other fields alone, so it denies at least what
//! it meant to. `requestPrincipals` and `remoteIpBlocks` (and their `not`
//! forms) need JWT validation or the PROXY protocol, which ambit does not
//! have: they are accepted but fail closed everywhere, the waypoint
//! included. The policy's status says so.
//!
//! **A policy that is wrong** (an unknown action, an invalid CIDR, a malformed
//! principal, an unknown field or `when` key) is rejected with an error
//! naming the policy and the field, and it fails closed too: what can be read
//! of its scope is kept, and a rejected ALLOW allows nothing there, while a
//! rejected DENY, or one whose action cannot be read, denies everything
//! there. A broken policy never opens traffic.

use std::{collections::BTreeMap, fmt, net::IpAddr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

mod evaluate;
mod l7;
#[cfg(test)]
mod tests;

pub use evaluate::{Decision, PolicySet, Request, ServiceTarget, Verdict, Workload};
pub use l7::HttpAttributes;

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

/// One rule: every `from` list and `to` list given, and every `when`
/// condition, must match.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Rule {
    /// Sources; one must match. Empty: any source.
    pub from: Vec<Source>,
    /// Operations; one must match. Empty: any operation. Every port the
    /// rule depends on is named in them (`ports`, `not_ports`): its
    /// `destination.port` conditions are folded in, as Istio does, so
    /// ports a rule does not name are all alike to it.
    pub to: Vec<Operation>,
    /// Its `when` conditions but `destination.port`; each must match.
    pub when: Vec<Condition>,
    /// The rule uses fields only a waypoint can enforce.
    pub needs_waypoint: bool,
    /// The rule uses fields no part of ambit enforces (`requestPrincipals`,
    /// `remoteIpBlocks`: JWT and proxy-protocol attributes): it fails
    /// closed at the waypoint too.
    pub unenforceable: bool,
}

/// A `when` condition: the attribute its key names must match one of its
/// values (when given) and none of its `notValues`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "key")]
pub enum Condition {
    /// `request.headers[<name>]`: waypoint only.
    #[serde(rename = "request.headers")]
    RequestHeader(HeaderCondition),
    /// `source.principal`: the peer's principal, as in `principals`.
    #[serde(rename = "source.principal")]
    SourcePrincipal(ConditionValues<Pattern>),
    /// `source.namespace`: the peer's namespace, as in `namespaces`.
    #[serde(rename = "source.namespace")]
    SourceNamespace(ConditionValues<Pattern>),
    /// `source.ip`: the peer's address, as in `ipBlocks`.
    #[serde(rename = "source.ip")]
    SourceIp(ConditionValues<IpNet>),
}

/// A condition's values.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ConditionValues<T> {
    /// The attribute must match one of these (when given); an attribute the
    /// connection lacks (a plaintext peer's principal) matches none.
    pub values: Vec<T>,
    /// The attribute must match none of these.
    pub not_values: Vec<T>,
}

/// A `when` condition on a request header, as Istio has it: `values` need
/// the header with a value matching one of them, `not_values` need no value
/// matching one of them (a missing header has none).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HeaderCondition {
    /// The header, lowercase.
    pub name: String,
    /// Its value must match one of these (when given).
    pub values: Vec<Pattern>,
    /// Its value must match none of these.
    pub not_values: Vec<Pattern>,
}

/// The condition keys a policy may use.
pub const CONDITION_KEYS: &[&str] = &[
    "request.headers[<name>]",
    "source.principal",
    "source.namespace",
    "source.ip",
    "destination.port",
];

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
    /// The request's host must match one of these (lowercase: case does
    /// not matter; a pattern without a port also matches the host with any
    /// port). Waypoint.
    pub hosts: Vec<Pattern>,
    /// ... and none of these. Waypoint.
    pub not_hosts: Vec<Pattern>,
    /// The method must be one of these, exactly (`GET`, uppercase). Waypoint.
    pub methods: Vec<String>,
    /// ... and none of these. Waypoint.
    pub not_methods: Vec<String>,
    /// The path (without the query) must match one of these. Waypoint.
    pub paths: Vec<Pattern>,
    /// ... and none of these. Waypoint.
    pub not_paths: Vec<Pattern>,
}

/// A principal, namespace, path, host or header value pattern: exact,
/// `prefix*`, `*suffix` or `*`.
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

type RawPolicy = crate::object::RawObject<RawMetadata, RawSpec>;

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
    values: Option<Vec<RawScalar>>,
    #[serde(default)]
    not_values: Option<Vec<RawScalar>>,
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
    ports: Option<Vec<RawScalar>>,
    #[serde(default)]
    not_ports: Option<Vec<RawScalar>>,
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

/// Istio writes ports and condition values as strings; a number is
/// accepted too.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawScalar {
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
        let rule = compile_rule(raw_rule, &format!("spec.rules[{r}]"), &mut waypoint_fields)
            .map_err(|(field, m)| fail(&field, m))?;
        // A rule whose ports contradict each other matches nothing: without
        // it the policy means the same.
        rules.extend(rule);
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

/// One rule at `path`; the fields it uses that need a waypoint are added to
/// `waypoint_fields`. `None` when it can match nothing.
fn compile_rule(
    raw: RawRule,
    path: &str,
    waypoint_fields: &mut Vec<String>,
) -> Result<Option<Rule>, FieldError> {
    let mut rule = Rule::default();
    let mut own_fields = Vec::new();
    let mut destination_ports = Vec::new();
    for (w, condition) in raw.when.unwrap_or_default().into_iter().enumerate() {
        let path = format!("{path}.when[{w}]");
        match compile_condition(condition, &path)? {
            Compiled::When(condition) => {
                if matches!(condition, Condition::RequestHeader(_)) {
                    own_fields.push(path);
                }
                rule.when.push(condition);
            }
            Compiled::DestinationPort(ports) => destination_ports.push(ports),
        }
    }
    for (f, from) in raw.from.unwrap_or_default().into_iter().enumerate() {
        let (source, l7) = compile_source(from.source, &format!("{path}.from[{f}].source"))?;
        own_fields.extend(l7);
        rule.from.push(source);
    }
    for (t, to) in raw.to.unwrap_or_default().into_iter().enumerate() {
        let (operation, l7) =
            compile_operation(to.operation, &format!("{path}.to[{t}].operation"))?;
        own_fields.extend(l7);
        rule.to.push(operation);
    }
    rule.needs_waypoint = !own_fields.is_empty();
    rule.unenforceable = own_fields.iter().any(|f| is_unenforceable(f));
    waypoint_fields.extend(own_fields);
    Ok(fold_destination_ports(&mut rule, destination_ports).then_some(rule))
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
    let ports = |list: Option<Vec<RawScalar>>, field: &str| {
        list.unwrap_or_default()
            .iter()
            .enumerate()
            .map(|(i, port)| parse_port(port).map_err(|m| (format!("{path}.{field}[{i}]"), m)))
            .collect::<Result<Vec<_>, _>>()
    };
    let parsed =
        |list: &Option<Vec<String>>, field: &str, parse: fn(&str) -> Result<Pattern, String>| {
            list.iter()
                .flatten()
                .enumerate()
                .map(|(i, value)| parse(value).map_err(|m| (format!("{path}.{field}[{i}]"), m)))
                .collect::<Result<Vec<_>, _>>()
        };
    let methods = |list: &Option<Vec<String>>, field: &str| {
        list.iter()
            .flatten()
            .enumerate()
            .map(|(i, method)| {
                l7::check_method(method)
                    .map(|()| method.clone())
                    .map_err(|m| (format!("{path}.{field}[{i}]"), m))
            })
            .collect::<Result<Vec<_>, _>>()
    };
    let operation = Operation {
        ports: ports(raw.ports, "ports")?,
        not_ports: ports(raw.not_ports, "notPorts")?,
        hosts: parsed(&raw.hosts, "hosts", l7::parse_host)?,
        not_hosts: parsed(&raw.not_hosts, "notHosts", l7::parse_host)?,
        methods: methods(&raw.methods, "methods")?,
        not_methods: methods(&raw.not_methods, "notMethods")?,
        paths: parsed(&raw.paths, "paths", l7::parse_path)?,
        not_paths: parsed(&raw.not_paths, "notPaths", l7::parse_path)?,
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

/// A `when` condition, compiled: kept on the rule, or (`destination.port`)
/// folded into its operations.
enum Compiled {
    When(Condition),
    DestinationPort(ConditionValues<u16>),
}

/// A `when` condition; a key not in [`CONDITION_KEYS`] is refused with the
/// supported ones.
fn compile_condition(raw: RawCondition, path: &str) -> Result<Compiled, FieldError> {
    enum Key {
        Header(String),
        Principal,
        Namespace,
        Ip,
        Port,
    }
    let key = match raw.key.trim() {
        "source.principal" => Key::Principal,
        "source.namespace" => Key::Namespace,
        "source.ip" => Key::Ip,
        "destination.port" => Key::Port,
        other => match l7::header_key(other) {
            Some(Ok(name)) => Key::Header(name),
            Some(Err(message)) => return Err((format!("{path}.key"), message)),
            None => {
                let why = if other.starts_with("request.auth.") {
                    " (ambit validates no JWT)"
                } else {
                    ""
                };
                return Err((
                    format!("{path}.key"),
                    format!(
                        "{other:?} is not supported{why}; the supported condition keys are {}",
                        CONDITION_KEYS.join(", ")
                    ),
                ));
            }
        },
    };
    let texts = |list: Option<Vec<RawScalar>>| -> Vec<String> {
        list.unwrap_or_default()
            .into_iter()
            .map(|value| match value {
                RawScalar::Number(n) => n.to_string(),
                RawScalar::Text(text) => text,
            })
            .collect()
    };
    let (values, not_values) = (texts(raw.values), texts(raw.not_values));
    if values.is_empty() && not_values.is_empty() {
        return Err((
            format!("{path}.values"),
            "a condition needs values or notValues".to_owned(),
        ));
    }
    let patterns = |check: fn(&str) -> Result<(), String>| {
        condition_values(&values, &not_values, path, &|value| {
            Pattern::parse(value, check)
        })
    };
    Ok(match key {
        Key::Header(name) => {
            let values = patterns(accept_any)?;
            Compiled::When(Condition::RequestHeader(HeaderCondition {
                name,
                values: values.values,
                not_values: values.not_values,
            }))
        }
        Key::Principal => Compiled::When(Condition::SourcePrincipal(patterns(check_principal)?)),
        Key::Namespace => Compiled::When(Condition::SourceNamespace(patterns(check_namespace)?)),
        Key::Ip => Compiled::When(Condition::SourceIp(condition_values(
            &values,
            &not_values,
            path,
            &parse_ip_block,
        )?)),
        Key::Port => {
            Compiled::DestinationPort(condition_values(&values, &not_values, path, &|value| {
                parse_port(&RawScalar::Text(value.to_owned()))
            })?)
        }
    })
}

/// A condition's values and notValues, each read by `parse`.
fn condition_values<T>(
    values: &[String],
    not_values: &[String],
    path: &str,
    parse: &dyn Fn(&str) -> Result<T, String>,
) -> Result<ConditionValues<T>, FieldError> {
    let each = |list: &[String], field: &str| {
        list.iter()
            .enumerate()
            .map(|(i, value)| parse(value).map_err(|m| (format!("{path}.{field}[{i}]"), m)))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(ConditionValues {
        values: each(values, "values")?,
        not_values: each(not_values, "notValues")?,
    })
}

/// Folds a rule's `destination.port` conditions into its operations, as
/// Istio does (each operation then needs the ports too), so that every
/// port the rule depends on is in its operations. `false` when no
/// operation can match any more: the rule matches nothing.
fn fold_destination_ports(rule: &mut Rule, conditions: Vec<ConditionValues<u16>>) -> bool {
    if conditions.is_empty() {
        return true;
    }
    // Every condition must hold: the ports in all of their values, and in
    // none of their notValues.
    let mut allowed: Option<Vec<u16>> = None;
    let mut excluded: Vec<u16> = Vec::new();
    for condition in conditions {
        if !condition.values.is_empty() {
            allowed = Some(match allowed {
                None => condition.values,
                Some(ports) => ports
                    .into_iter()
                    .filter(|p| condition.values.contains(p))
                    .collect(),
            });
        }
        excluded.extend(condition.not_values);
    }
    if rule.to.is_empty() {
        rule.to.push(Operation::default());
    }
    rule.to.retain_mut(|operation| {
        if let Some(allowed) = &allowed {
            operation.ports = if operation.ports.is_empty() {
                allowed.clone()
            } else {
                operation
                    .ports
                    .iter()
                    .copied()
                    .filter(|p| allowed.contains(p))
                    .collect()
            };
            if operation.ports.is_empty() {
                return false;
            }
        }
        for port in &excluded {
            if !operation.not_ports.contains(port) {
                operation.not_ports.push(*port);
            }
        }
        true
    });
    !rule.to.is_empty()
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

fn parse_port(port: &RawScalar) -> Result<u16, String> {
    let number = match port {
        RawScalar::Number(n) => *n,
        RawScalar::Text(text) => text
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
    /// What an operator should know about how the policy is enforced: why
    /// it was rejected, who enforces it (the waypoint for `targetRefs`, the
    /// node agents otherwise), and which of its fields fail closed there.
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
            .filter(|f| is_unenforceable(f))
            .map(String::as_str)
            .collect();
        let unsupported = || {
            format!(
                "{} are not supported (no JWT or PROXY protocol) and fail closed at the waypoint too",
                unenforceable.join(", ")
            )
        };
        if !self.target_refs.is_empty() {
            if unenforceable.is_empty() {
                return "accepted; enforced by the waypoint".to_owned();
            }
            let effect = match self.action {
                Action::Allow => "rules that use them allow nothing",
                Action::Deny | Action::Audit => "rules that use them apply without them",
            };
            return format!(
                "accepted; enforced by the waypoint, failing closed: {}; {effect}",
                unsupported()
            );
        }
        if self.waypoint_fields.is_empty() {
            return "accepted".to_owned();
        }
        let effect = match self.action {
            Action::Allow => "rules that use them allow nothing",
            Action::Deny | Action::Audit => "rules that use them apply on their L4 fields alone",
        };
        let mut status = format!(
            "accepted, failing closed at the node agent: {} need a waypoint (they are enforced only by a waypoint, for a policy attached with targetRefs); {effect}",
            self.waypoint_fields.join(", ")
        );
        if !unenforceable.is_empty() {
            status.push_str("; ");
            status.push_str(&unsupported());
        }
        status
    }
}

/// Whether `field` (a path in [`Policy::waypoint_fields`]) is one no part
/// of ambit enforces.
fn is_unenforceable(field: &str) -> bool {
    UNENFORCEABLE_FIELDS.iter().any(|u| {
        field
            .strip_suffix(u)
            .is_some_and(|rest| rest.ends_with('.'))
    })
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
