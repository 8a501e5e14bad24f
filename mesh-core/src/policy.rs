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

use std::{collections::BTreeMap, fmt};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

mod compile;
mod evaluate;
mod l7;
mod raw;
#[cfg(test)]
mod tests;

pub use compile::{compile, compile_all};
// Shared with `peer_authn`, which reads its objects the same way.
pub(crate) use compile::{field_path, key_of, readable_selector};
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
