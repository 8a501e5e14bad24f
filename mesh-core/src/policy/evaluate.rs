//! Evaluating policies for one connection or request, Istio's way:
//!
//! 1. any DENY policy that matches denies;
//! 2. otherwise, if any ALLOW policy applies to the workload, one must match;
//! 3. otherwise the connection is allowed.
//!
//! AUDIT policies only record. The set is indexed by namespace and by each
//! selector's first label, so a connection looks at the policies that can
//! apply to its workload and never scans the rest.
//!
//! The node agents evaluate policies with a `selector` (or none) for a
//! workload, at L4 ([`PolicySet::evaluate`], a [`Request`] without HTTP
//! attributes); the waypoint evaluates those with `targetRefs` for a
//! Service ([`PolicySet::evaluate_target`]), with the request's HTTP
//! attributes ([`Request::with_http`]) when the stream is HTTP. With them,
//! every field is checked: an ALLOW rule on `methods: [GET]` allows GET, a
//! DENY rule on `methods: [DELETE]` denies DELETE and nothing else. A rule
//! whose fields cannot all be checked (HTTP fields without HTTP
//! attributes; `requestPrincipals` or `remoteIpBlocks` anywhere) never
//! allows, and a DENY or AUDIT rule then applies on the fields that can be.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    sync::Arc,
};

use serde::Serialize;

use crate::identity::SpiffeId;

use super::{
    Action, Condition, ConditionValues, HttpAttributes, Operation, Pattern, Policy, Rule, Source,
    TargetRef, l7,
};

/// The workload a connection is for: its namespace and labels.
#[derive(Clone, Copy, Debug)]
pub struct Workload<'a> {
    /// Its namespace.
    pub namespace: &'a str,
    /// Its labels.
    pub labels: &'a BTreeMap<String, String>,
}

/// What is known about a connection (at L4) or a request (at a waypoint).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Request {
    /// The peer's principal (its SPIFFE id without the scheme) when it
    /// proved one with mTLS (or is a meshed pod of this node); `None` for
    /// plaintext.
    pub principal: Option<String>,
    /// The peer's namespace, from its identity.
    pub namespace: Option<String>,
    /// The peer's address.
    pub source_ip: IpAddr,
    /// The destination port.
    pub port: u16,
    /// The HTTP request, at a waypoint; `None` at L4.
    #[serde(skip)]
    pub http: Option<HttpAttributes>,
}

/// The Service a waypoint evaluates `targetRefs` policies for.
#[derive(Clone, Copy, Debug)]
pub struct ServiceTarget<'a> {
    /// The Service's namespace.
    pub namespace: &'a str,
    /// The Service's name.
    pub service: &'a str,
    /// The waypoint's name (policies may target it as a `Gateway`).
    pub waypoint: &'a str,
}

// === impl Decision ===

impl Decision {
    /// `allow` or `deny`, as logs, metric labels and headers spell it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
        }
    }

    /// The decision [`Self::as_str`] spells `text`.
    #[must_use]
    pub fn parse(text: &str) -> Option<Self> {
        [Self::Allow, Self::Deny]
            .into_iter()
            .find(|decision| decision.as_str() == text)
    }
}

// === impl Request ===

impl Request {
    /// A connection from `peer` (when it proved an identity) at
    /// `source_ip`, to `port`.
    #[must_use]
    pub fn new(peer: Option<&SpiffeId>, source_ip: IpAddr, port: u16) -> Self {
        Self {
            principal: peer.map(|id| {
                format!(
                    "{}/ns/{}/sa/{}",
                    id.trust_domain(),
                    id.namespace(),
                    id.service_account()
                )
            }),
            namespace: peer.map(|id| id.namespace().to_owned()),
            source_ip: source_ip.to_canonical(),
            port,
            http: None,
        }
    }

    /// The same request with its HTTP attributes (at a waypoint): rules
    /// are then checked on their HTTP fields too.
    #[must_use]
    pub fn with_http(mut self, http: HttpAttributes) -> Self {
        self.http = Some(http);
        self
    }
}

/// Allowed or denied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// The connection may proceed.
    Allow,
    /// The connection is refused.
    Deny,
}

/// A decision and what made it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// Allowed or denied.
    pub decision: Decision,
    /// The policy that decided (namespace/name), or `default allow` when no
    /// policy applies, or `no ALLOW matched` when ALLOW policies apply and
    /// none matched.
    pub policy: String,
    /// Why, in a sentence.
    pub reason: String,
    /// AUDIT policies that matched.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub audited: Vec<String>,
}

/// What the `policy` of a verdict says when no policy applies.
pub const DEFAULT_ALLOW: &str = "default allow";
/// What the `policy` of a verdict says when ALLOW policies apply and none matched.
pub const NO_ALLOW_MATCHED: &str = "no ALLOW matched";

/// Every policy, indexed for evaluation. Immutable: a change builds a new set.
#[derive(Debug, Default)]
pub struct PolicySet {
    root_namespace: String,
    policies: Vec<Arc<Policy>>,
    by_namespace: HashMap<String, NamespacePolicies>,
    /// Policies with `targetRefs`, for the waypoint.
    targeted: Vec<Arc<Policy>>,
}

/// One namespace's policies.
#[derive(Debug, Default)]
struct NamespacePolicies {
    /// Without a selector.
    wide: Vec<Arc<Policy>>,
    /// With a selector, by the selector's first label key and value.
    by_label: HashMap<String, HashMap<String, Vec<Arc<Policy>>>>,
}

// === impl PolicySet ===

impl PolicySet {
    /// Indexes `policies` (shared or not); those in `root_namespace` apply
    /// mesh-wide.
    #[must_use]
    pub fn new(
        policies: impl IntoIterator<Item = impl Into<Arc<Policy>>>,
        root_namespace: &str,
    ) -> Self {
        let mut set = Self {
            root_namespace: root_namespace.to_owned(),
            ..Self::default()
        };
        for policy in policies {
            let policy: Arc<Policy> = policy.into();
            if !policy.target_refs.is_empty() {
                set.targeted.push(policy.clone());
                set.policies.push(policy);
                continue;
            }
            let namespace = set
                .by_namespace
                .entry(policy.key.namespace.clone())
                .or_default();
            match policy.selector.iter().next() {
                None => namespace.wide.push(policy.clone()),
                Some((key, value)) => namespace
                    .by_label
                    .entry(key.clone())
                    .or_default()
                    .entry(value.clone())
                    .or_default()
                    .push(policy.clone()),
            }
            set.policies.push(policy);
        }
        set
    }

    /// Every policy, in the order given.
    #[must_use]
    pub fn policies(&self) -> &[Arc<Policy>] {
        &self.policies
    }

    /// The mesh's root namespace.
    #[must_use]
    pub fn root_namespace(&self) -> &str {
        &self.root_namespace
    }

    /// The policies that apply to `workload`: the root namespace's and its
    /// own namespace's, without a selector or with one its labels match.
    pub fn applicable<'a>(
        &'a self,
        workload: Workload<'a>,
    ) -> impl Iterator<Item = &'a Arc<Policy>> {
        let own = (workload.namespace != self.root_namespace).then_some(workload.namespace);
        [Some(self.root_namespace.as_str()), own]
            .into_iter()
            .flatten()
            .filter_map(|namespace| self.by_namespace.get(namespace))
            .flat_map(move |policies| {
                let selected = workload
                    .labels
                    .iter()
                    .filter_map(|(key, value)| policies.by_label.get(key)?.get(value))
                    .flatten()
                    .filter(move |policy| selects(policy, workload.labels));
                policies.wide.iter().chain(selected)
            })
    }

    /// The verdict for `request` to `workload` (a node agent's, at L4).
    #[must_use]
    pub fn evaluate(&self, workload: Workload<'_>, request: &Request) -> Verdict {
        decide(self.applicable(workload), request)
    }

    /// The verdict for `request` to a Service at its waypoint: the
    /// policies of the Service's namespace that target it or the waypoint.
    #[must_use]
    pub fn evaluate_target(&self, target: &ServiceTarget<'_>, request: &Request) -> Verdict {
        decide(self.targeting(target), request)
    }

    /// Whether any policy targets the Service or its waypoint. With none,
    /// [`evaluate_target`](Self::evaluate_target) allows every request, so
    /// a caller may skip gathering the request's attributes.
    #[must_use]
    pub fn any_targets(&self, target: &ServiceTarget<'_>) -> bool {
        self.targeting(target).next().is_some()
    }

    /// The policies of the Service's namespace that target it or its
    /// waypoint.
    fn targeting<'a>(
        &'a self,
        target: &'a ServiceTarget<'_>,
    ) -> impl Iterator<Item = &'a Arc<Policy>> + 'a {
        self.targeted.iter().filter(|policy| {
            policy.key.namespace == target.namespace
                && policy.target_refs.iter().any(|r| match r {
                    TargetRef::Service(name) => name == target.service,
                    TargetRef::Gateway(name) => name == target.waypoint,
                })
        })
    }
}

/// Istio's evaluation over `policies` (see the module docs).
fn decide<'a>(policies: impl Iterator<Item = &'a Arc<Policy>>, request: &Request) -> Verdict {
    let mut audited = Vec::new();
    let mut allow_policies: Vec<&Policy> = Vec::new();
    for policy in policies {
        match policy.action {
            Action::Deny => {
                if let Some(rule) = matching_rule(policy, request, true) {
                    return Verdict {
                        decision: Decision::Deny,
                        policy: policy.key.to_string(),
                        reason: deny_reason(policy, rule, request),
                        audited,
                    };
                }
            }
            Action::Audit => {
                if matching_rule(policy, request, true).is_some() {
                    audited.push(policy.key.to_string());
                }
            }
            Action::Allow => allow_policies.push(policy),
        }
    }
    if allow_policies.is_empty() {
        return Verdict {
            decision: Decision::Allow,
            policy: DEFAULT_ALLOW.to_owned(),
            reason: "no ALLOW or DENY policy matched".to_owned(),
            audited,
        };
    }
    if let Some(policy) = allow_policies
        .iter()
        .find(|policy| matching_rule(policy, request, false).is_some())
    {
        return Verdict {
            decision: Decision::Allow,
            policy: policy.key.to_string(),
            reason: format!("ALLOW policy {} matched", policy.key),
            audited,
        };
    }
    // Attribute the denial to a policy that failed closed, if one did:
    // that is what the operator must fix.
    let failed_closed = allow_policies
        .iter()
        .find(|p| p.rejected.is_some())
        .or_else(|| allow_policies.iter().find(|p| fails_closed(p, request)));
    if let Some(policy) = failed_closed {
        return Verdict {
            decision: Decision::Deny,
            policy: policy.key.to_string(),
            reason: format!(
                "{} fails closed: {}",
                policy.key,
                closed_reason(policy, request)
            ),
            audited,
        };
    }
    // At a waypoint, name the policy that lets the client in but not this
    // request: its HTTP fields are what refused it.
    if let Some(http) = &request.http
        && let Some(policy) = allow_policies.iter().find(|p| {
            p.rules
                .iter()
                .any(|rule| rule.needs_waypoint && rule_matches(rule, request, None))
        })
    {
        return Verdict {
            decision: Decision::Deny,
            policy: policy.key.to_string(),
            reason: format!(
                "ALLOW policy {} matches the connection but not {}: no rule's methods, paths, hosts and headers all match",
                policy.key,
                describe(http)
            ),
            audited,
        };
    }
    let names: Vec<String> = allow_policies.iter().map(|p| p.key.to_string()).collect();
    Verdict {
        decision: Decision::Deny,
        policy: NO_ALLOW_MATCHED.to_owned(),
        reason: format!(
            "ALLOW policies apply ({}) and none matched",
            names.join(", ")
        ),
        audited,
    }
}

fn selects(policy: &Policy, labels: &BTreeMap<String, String>) -> bool {
    policy
        .selector
        .iter()
        .all(|(key, value)| labels.get(key) == Some(value))
}

/// The first rule of `policy` that `request` matches. A rule whose fields
/// cannot all be checked (see [`is_complete`]) never matches for ALLOW; for
/// DENY and AUDIT (`partial_ok`) the fields that can be checked decide.
fn matching_rule<'a>(policy: &'a Policy, request: &Request, partial_ok: bool) -> Option<&'a Rule> {
    policy.rules.iter().find(|rule| {
        (partial_ok || is_complete(rule, request))
            && rule_matches(rule, request, request.http.as_ref())
    })
}

/// Whether every field of `rule` can be checked for `request`: its HTTP
/// fields need HTTP attributes, and `requestPrincipals` and
/// `remoteIpBlocks` (not compiled: nothing here can check them) never can.
fn is_complete(rule: &Rule, request: &Request) -> bool {
    !(rule.unenforceable || (rule.needs_waypoint && request.http.is_none()))
}

/// Whether `request` matches what can be checked of `rule`: its L4 fields,
/// and with `http` its HTTP fields too.
fn rule_matches(rule: &Rule, request: &Request, http: Option<&HttpAttributes>) -> bool {
    (rule.from.is_empty() || rule.from.iter().any(|s| source_matches(s, request)))
        && (rule.to.is_empty() || rule.to.iter().any(|o| operation_matches(o, request, http)))
        && rule
            .when
            .iter()
            .all(|c| condition_matches(c, request, http))
}

/// Whether an ALLOW `policy` that did not match failed closed for
/// `request`: at L4 because it uses HTTP fields, at a waypoint because it
/// uses fields nothing checks.
fn fails_closed(policy: &Policy, request: &Request) -> bool {
    if request.http.is_none() {
        !policy.waypoint_fields.is_empty()
    } else {
        policy.rules.iter().any(|rule| rule.unenforceable)
    }
}

/// Why `policy` fails closed for `request`.
fn closed_reason(policy: &Policy, request: &Request) -> String {
    if policy.rejected.is_none() && request.http.is_none() && !policy.target_refs.is_empty() {
        // At the waypoint, on a stream that is not HTTP.
        return format!(
            "{} need HTTP attributes and this stream is not HTTP",
            policy.waypoint_fields.join(", ")
        );
    }
    policy.status()
}

fn deny_reason(policy: &Policy, rule: &Rule, request: &Request) -> String {
    if policy.rejected.is_some() {
        return format!("{} fails closed: {}", policy.key, policy.status());
    }
    match &request.http {
        _ if !rule.needs_waypoint => format!("DENY policy {} matched", policy.key),
        None => format!(
            "DENY policy {} matched on its L4 fields only: {}",
            policy.key,
            closed_reason(policy, request)
        ),
        Some(http) if rule.unenforceable => format!(
            "DENY policy {} matched {} on the fields that can be checked: {}",
            policy.key,
            describe(http),
            policy.status()
        ),
        Some(http) => format!("DENY policy {} matched {}", policy.key, describe(http)),
    }
}

/// `GET /path (host h)` for a reason, the path cut short.
fn describe(http: &HttpAttributes) -> String {
    const MAX_PATH: usize = 128;
    let path = match http.path.char_indices().nth(MAX_PATH) {
        Some((cut, _)) => format!("{}...", &http.path[..cut]),
        None => http.path.clone(),
    };
    match &http.host {
        Some(host) => format!("{} {path} (host {host})", http.method),
        None => format!("{} {path}", http.method),
    }
}

// A list that is given must match; plaintext has no principal or namespace,
// so those lists never match it, and their `not` lists never exclude it.
fn any_of(patterns: &[Pattern], value: Option<&str>) -> bool {
    patterns.is_empty() || value.is_some_and(|v| patterns.iter().any(|p| p.matches(v)))
}

fn none_of(patterns: &[Pattern], value: Option<&str>) -> bool {
    value.is_none_or(|v| !patterns.iter().any(|p| p.matches(v)))
}

fn source_matches(source: &Source, request: &Request) -> bool {
    let principal = request.principal.as_deref();
    let namespace = request.namespace.as_deref();
    let ip = request.source_ip.to_canonical();
    any_of(&source.principals, principal)
        && none_of(&source.not_principals, principal)
        && any_of(&source.namespaces, namespace)
        && none_of(&source.not_namespaces, namespace)
        && (source.ip_blocks.is_empty() || source.ip_blocks.iter().any(|b| b.contains(&ip)))
        && !source.not_ip_blocks.iter().any(|b| b.contains(&ip))
}

/// Ports always; with `http`, methods, paths and hosts too.
fn operation_matches(
    operation: &Operation,
    request: &Request,
    http: Option<&HttpAttributes>,
) -> bool {
    (operation.ports.is_empty() || operation.ports.contains(&request.port))
        && !operation.not_ports.contains(&request.port)
        && http.is_none_or(|http| l7::operation_matches(operation, http))
}

/// A `when` condition; a header condition only with `http` (without, the
/// rule is incomplete and only DENY and AUDIT get here).
fn condition_matches(
    condition: &Condition,
    request: &Request,
    http: Option<&HttpAttributes>,
) -> bool {
    let patterns = |values: &ConditionValues<Pattern>, value: Option<&str>| {
        any_of(&values.values, value) && none_of(&values.not_values, value)
    };
    match condition {
        Condition::RequestHeader(header) => {
            http.is_none_or(|http| l7::header_matches(header, http))
        }
        Condition::SourcePrincipal(values) => patterns(values, request.principal.as_deref()),
        Condition::SourceNamespace(values) => patterns(values, request.namespace.as_deref()),
        Condition::SourceIp(blocks) => {
            let ip = request.source_ip.to_canonical();
            (blocks.values.is_empty() || blocks.values.iter().any(|b| b.contains(&ip)))
                && !blocks.not_values.iter().any(|b| b.contains(&ip))
        }
    }
}
