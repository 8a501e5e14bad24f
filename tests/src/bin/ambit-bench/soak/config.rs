//! The soak's configuration: one text for both agents and the waypoint,
//! rewritten at every change. What is always there: the waypoint's
//! topology (its pods and Services), the soak's pods that never leave the
//! mesh, and the three bad objects, each of which must be rejected with a
//! status while nothing else is disturbed:
//!
//! - [`BAD_POLICY`], an ALLOW policy with an invalid CIDR, whose selector
//!   matches no pod (a rejected ALLOW allows nothing in its scope);
//! - [`BAD_ROUTE`], an `HTTPRoute` on the Service `backend` with a regular
//!   expression that does not compile;
//! - the pod [`TYPO_POD`] with `ambit.dev/kernel-path: enabeld`, which
//!   stays enrolled on the user-space path with the label's rejection in
//!   its status.
//!
//! What changes: which of the flip pods are enrolled, the DENY and
//! ALLOW-everything policies in force, and the variant of the route
//! [`CANARY_ROUTE`] under the waypoint.

use std::fmt::Write as _;

use ambit_tests::Pod;
use ambit_tests::mesh::pods_yaml_labelled;
use serde::Serialize;

/// The namespace of every pod (the waypoint topology's).
pub const NAMESPACE: &str = "shop";
/// The invalid policy.
pub const BAD_POLICY: &str = "bad-cidr";
/// The route whose regular expression does not compile.
pub const BAD_ROUTE: &str = "bad-regex";
/// The pod whose label has a typo.
pub const TYPO_POD: &str = "typo-1";
/// The typo: `enabeld` for `enabled`.
pub const TYPO_LABEL: &str = "ambit.dev/kernel-path: enabeld";
/// The route whose variants change under the waypoint.
pub const CANARY_ROUTE: &str = "canary";

/// A variant of [`CANARY_ROUTE`]; the soak goes through them in turn.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RouteVariant {
    /// No route: the Service's own endpoints (`v1`, `v2`, `v3`).
    #[default]
    Absent,
    /// 90 % to `backend-v1`, 10 % to `backend-v2`.
    Split90,
    /// Half and half.
    Split50,
    /// `/api` and below to `backend-v2`, the rest to `backend-v1`.
    ByPath,
}

/// A DENY policy on one client and one target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Deny {
    /// The client pod (its service account is named like it).
    pub client: String,
    /// The target pod.
    pub target: String,
}

/// What changes, as it is now.
#[derive(Clone, Debug, Default)]
pub struct Desired {
    /// DENY policies in force.
    pub denies: Vec<Deny>,
    /// Pods with an ALLOW-everything policy (every address) in force, once
    /// for each policy lane that added it (the file holds one policy per
    /// pod).
    pub allow_all: Vec<String>,
    /// The canary route's variant.
    pub route: RouteVariant,
}

/// The parts of the file that come from elsewhere.
pub struct Parts<'a> {
    /// The waypoint topology's `pods:` section.
    pub waypoint_pods: &'a str,
    /// Its `services:` section.
    pub services: &'a str,
    /// Pods in the mesh now, besides the waypoint's and the typo pod.
    pub enrolled: &'a [&'a Pod],
    /// The pod with the typo.
    pub typo: &'a Pod,
}

/// The configuration text.
#[must_use]
pub fn render(parts: &Parts<'_>, desired: &Desired) -> String {
    let mut yaml = parts.waypoint_pods.to_owned();
    for section in [
        pods_yaml_labelled(parts.enrolled, None),
        pods_yaml_labelled(&[parts.typo], Some(TYPO_LABEL)),
    ] {
        yaml.push_str(section.trim_start_matches("pods:\n"));
    }
    yaml.push_str(parts.services);
    let _ = write!(
        yaml,
        "policies:
  - metadata: {{name: {BAD_POLICY}, namespace: {NAMESPACE}}}
    spec:
      selector: {{matchLabels: {{app: nobody}}}}
      rules: [{{from: [{{source: {{ipBlocks: [10.0.0.0/33]}}}}]}}]
"
    );
    for deny in &desired.denies {
        let _ = write!(
            yaml,
            "  - metadata: {{name: {name}, namespace: {NAMESPACE}}}
    spec:
      selector: {{matchLabels: {{app: {target}}}}}
      action: DENY
      rules: [{{from: [{{source: {{principals: [cluster.local/ns/{NAMESPACE}/sa/{client}]}}}}]}}]
",
            name = deny.name(),
            target = deny.target,
            client = deny.client
        );
    }
    let mut allowed: Vec<&String> = desired.allow_all.iter().collect();
    allowed.sort_unstable();
    allowed.dedup();
    for target in allowed {
        let _ = write!(
            yaml,
            "  - metadata: {{name: allow-all-{target}, namespace: {NAMESPACE}}}
    spec:
      selector: {{matchLabels: {{app: {target}}}}}
      rules: [{{from: [{{source: {{ipBlocks: [0.0.0.0/0, '::/0']}}}}]}}]
"
        );
    }
    yaml.push_str("routes:\n");
    yaml.push_str(&route(
        BAD_ROUTE,
        "        - matches: [{path: {type: RegularExpression, value: '/(unclosed'}}]
          backendRefs: [{name: backend-v1, port: 80}]
",
    ));
    let split = |v1: u32, v2: u32| {
        format!(
            "        - backendRefs:
            - {{name: backend-v1, port: 80, weight: {v1}}}
            - {{name: backend-v2, port: 80, weight: {v2}}}
"
        )
    };
    let canary = match desired.route {
        RouteVariant::Absent => None,
        RouteVariant::Split90 => Some(split(90, 10)),
        RouteVariant::Split50 => Some(split(50, 50)),
        RouteVariant::ByPath => Some(
            "        - matches: [{path: {type: PathPrefix, value: /api}}]
          backendRefs: [{name: backend-v2, port: 80}]
        - backendRefs: [{name: backend-v1, port: 80}]
"
            .to_owned(),
        ),
    };
    if let Some(rules) = canary {
        yaml.push_str(&route(CANARY_ROUTE, &rules));
    }
    yaml
}

/// An `HTTPRoute` on the Service `backend`'s port 80 with these rules.
fn route(name: &str, rules: &str) -> String {
    format!(
        "  - apiVersion: gateway.networking.k8s.io/v1
    kind: HTTPRoute
    metadata: {{name: {name}, namespace: {NAMESPACE}}}
    spec:
      parentRefs: [{{group: '', kind: Service, name: backend, port: 80}}]
      rules:
{rules}"
    )
}

// === impl RouteVariant ===

impl RouteVariant {
    /// The next variant in turn.
    #[must_use]
    pub fn next(self) -> Self {
        match self {
            Self::Absent => Self::Split90,
            Self::Split90 => Self::Split50,
            Self::Split50 => Self::ByPath,
            Self::ByPath => Self::Absent,
        }
    }
}

// === impl Deny ===

impl Deny {
    /// The policy's name.
    #[must_use]
    pub fn name(&self) -> String {
        format!("deny-{}-{}", self.client, self.target)
    }
}

#[cfg(test)]
mod tests;
