//! L4 authorization, enforced by the destination's agent: every connection
//! to an enrolled pod is checked against the policies in force before a
//! byte reaches the application, with the peer identity mTLS proved (or
//! none, for plaintext).
//!
//! Three places enforce, all on the destination's node:
//! - the HBONE server (`hbone-inbound`): mesh traffic from other nodes;
//! - the inbound plaintext proxy (`plaintext-inbound`): clients outside the
//!   mesh, in permissive mode;
//! - the outbound proxy of a pod of the same node (`same-node-outbound`):
//!   the same-node fast path skips the destination's inbound proxy, so the
//!   check happens before the agent connects to the destination.
//!
//! Allowed connections stay registered while they are open. When the
//! policies change, each is checked again, and those the new policies deny
//! are reset, counted and logged.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
};

use mesh_core::{
    policy::{Decision, Policy, PolicySet, Request, Verdict, Workload},
    workload::PodKey,
};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::{
    flow::{Authorization, EnforcementPoint},
    metrics::{AuthorizationLabels, Metrics},
    published::Published,
};

/// A connection to check: which pod it is for and what is known of it.
#[derive(Clone, Debug)]
pub struct Check<'a> {
    /// The destination pod.
    pub pod: &'a PodKey,
    /// Its labels.
    pub labels: &'a Arc<BTreeMap<String, String>>,
    /// The connection at L4.
    pub request: Request,
    /// The connection's ends, for the log.
    pub src: SocketAddr,
    /// Where it goes.
    pub dst: SocketAddr,
    /// Where the check happens.
    pub point: EnforcementPoint,
}

/// Checks connections and keeps the allowed ones answerable to later
/// policy changes.
pub struct Authorizer {
    node: String,
    root_namespace: String,
    policies: Published<PolicySet>,
    live: Mutex<HashMap<u64, LiveConnection>>,
    next_id: AtomicU64,
    metrics: Arc<Metrics>,
}

/// An allowed connection, while it is open. Dropping it unregisters it.
pub struct Admitted {
    authorizer: Arc<Authorizer>,
    id: u64,
    revocation: Arc<Revocation>,
    /// The verdict that let it in.
    pub authorization: Authorization,
}

/// A policy as the admin API lists it.
#[derive(Clone, Debug, Serialize)]
pub struct PolicyStatus {
    /// The policy, as compiled.
    #[serde(flatten)]
    pub policy: Policy,
    /// `accepted`, `accepted, failing closed: ...` or `rejected: ...`.
    pub status: String,
    /// Whether the policy is in force as written.
    pub state: PolicyState,
}

/// Whether a policy is in force as written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyState {
    /// In force as written.
    Accepted,
    /// In force, but fields it uses need a waypoint, so it fails closed.
    FailingClosed,
    /// Rejected; its scope fails closed.
    Rejected,
}

struct LiveConnection {
    namespace: String,
    labels: Arc<BTreeMap<String, String>>,
    request: Request,
    point: EnforcementPoint,
    src: SocketAddr,
    dst: SocketAddr,
    revocation: Arc<Revocation>,
}

#[derive(Default)]
struct Revocation {
    cancelled: CancellationToken,
    verdict: OnceLock<Authorization>,
}

// === impl Authorizer ===

impl Authorizer {
    /// An authorizer for the agent of `node`, with no policies yet.
    #[must_use]
    pub fn new(node: &str, root_namespace: &str, metrics: Arc<Metrics>) -> Self {
        Self {
            node: node.to_owned(),
            root_namespace: root_namespace.to_owned(),
            policies: Published::new(PolicySet::new(Vec::<Policy>::new(), root_namespace)),
            live: Mutex::default(),
            next_id: AtomicU64::new(1),
            metrics,
        }
    }

    /// Checks a connection. An allowed one comes back registered, to be
    /// revoked if the policies change; a denied one comes back as the
    /// verdict, already counted and logged.
    pub fn check(self: &Arc<Self>, check: Check<'_>) -> Result<Admitted, Authorization> {
        let workload = Workload {
            namespace: &check.pod.namespace,
            labels: check.labels,
        };
        let verdict = self.policies.current().evaluate(workload, &check.request);
        let authorization = self.attribute(verdict, check.point);
        self.count_decision(&authorization, &check.pod.namespace);
        if !authorization.audited.is_empty() {
            tracing::info!(pod = %check.pod, src = %check.src, dst = %check.dst, audited = ?authorization.audited, decision = ?authorization.decision, "AUDIT policies matched");
        }
        if authorization.decision == Decision::Deny {
            tracing::warn!(
                pod = %check.pod,
                src = %check.src,
                dst = %check.dst,
                principal = check.request.principal.as_deref().unwrap_or("-"),
                policy = %authorization.policy,
                point = authorization.enforcement_point.as_str(),
                reason = %authorization.reason,
                "connection denied by authorization policy"
            );
            return Err(authorization);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let revocation = Arc::new(Revocation::default());
        self.live().insert(
            id,
            LiveConnection {
                namespace: check.pod.namespace.clone(),
                labels: check.labels.clone(),
                request: check.request,
                point: check.point,
                src: check.src,
                dst: check.dst,
                revocation: revocation.clone(),
            },
        );
        Ok(Admitted {
            authorizer: self.clone(),
            id,
            revocation,
            authorization,
        })
    }

    /// Puts `policies` in force: new connections are checked against them
    /// at once, and open connections they deny are reset. Returns how many
    /// were.
    pub fn publish(&self, policies: Vec<Arc<Policy>>) -> usize {
        let current = self.policies.current();
        if current
            .policies()
            .iter()
            .map(AsRef::as_ref)
            .eq(policies.iter().map(AsRef::as_ref))
        {
            return 0;
        }
        for policy in &policies {
            if let Some(error) = &policy.rejected {
                tracing::error!(policy = %policy.key, field = %error.field, %error, "authorization policy rejected; it fails closed");
            } else if !policy.waypoint_fields.is_empty() {
                tracing::warn!(policy = %policy.key, status = %policy.status(), "authorization policy uses fields only a waypoint can enforce");
            }
        }
        let count = policies.len();
        self.policies
            .publish(PolicySet::new(policies, &self.root_namespace));
        let revoked = self.recheck_open_connections();
        tracing::info!(policies = count, revoked, "authorization policies in force");
        revoked
    }

    /// The policies in force.
    #[must_use]
    pub fn policy_set(&self) -> Arc<PolicySet> {
        self.policies.current()
    }

    /// The verdict for `request` to a pod of `namespace` with `labels`,
    /// without counting or logging it.
    #[must_use]
    pub fn evaluate(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
        request: &Request,
        point: EnforcementPoint,
    ) -> Authorization {
        let workload = Workload { namespace, labels };
        self.attribute(self.policies.current().evaluate(workload, request), point)
    }

    /// Counts a decision in the metrics (also one taken elsewhere: the
    /// kernel splice).
    pub fn count_decision(&self, authorization: &Authorization, namespace: &str) {
        self.metrics
            .authorization_decisions
            .touch(&Self::labels(authorization, namespace))
            .inc();
    }

    /// Counts an open connection reset because the policies now deny it
    /// (also one reset elsewhere: the kernel splice).
    pub fn count_revocation(&self, authorization: &Authorization, namespace: &str) {
        self.metrics
            .authorization_revocations
            .touch(&Self::labels(authorization, namespace))
            .inc();
    }

    /// Every policy with its status.
    #[must_use]
    pub fn statuses(&self) -> Vec<PolicyStatus> {
        self.policies
            .current()
            .policies()
            .iter()
            .map(|policy| PolicyStatus {
                policy: (**policy).clone(),
                status: policy.status(),
                state: if policy.rejected.is_some() {
                    PolicyState::Rejected
                } else if policy.waypoint_fields.is_empty() {
                    PolicyState::Accepted
                } else {
                    PolicyState::FailingClosed
                },
            })
            .collect()
    }

    /// How many allowed connections are open.
    #[must_use]
    pub fn open_connections(&self) -> usize {
        self.live().len()
    }

    fn recheck_open_connections(&self) -> usize {
        let policies = self.policies.current();
        let live = self.live();
        let mut revoked = 0;
        for connection in live.values() {
            let workload = Workload {
                namespace: &connection.namespace,
                labels: &connection.labels,
            };
            let verdict = policies.evaluate(workload, &connection.request);
            if verdict.decision == Decision::Allow {
                continue;
            }
            let authorization = self.attribute(verdict, connection.point);
            self.count_revocation(&authorization, &connection.namespace);
            tracing::warn!(
                src = %connection.src,
                dst = %connection.dst,
                policy = %authorization.policy,
                reason = %authorization.reason,
                "open connection reset: the new policies deny it"
            );
            if connection.revocation.verdict.set(authorization).is_ok() {
                connection.revocation.cancelled.cancel();
                revoked += 1;
            }
        }
        revoked
    }

    fn attribute(&self, verdict: Verdict, point: EnforcementPoint) -> Authorization {
        Authorization {
            decision: verdict.decision,
            policy: verdict.policy,
            reason: verdict.reason,
            enforced_by: self.node.clone(),
            enforcement_point: point,
            audited: verdict.audited,
        }
    }

    fn labels(authorization: &Authorization, namespace: &str) -> AuthorizationLabels {
        AuthorizationLabels {
            reporter: "destination",
            decision: authorization.decision.as_str(),
            policy: authorization.policy.clone(),
            enforcement_point: authorization.enforcement_point.as_str(),
            destination_workload_namespace: namespace.to_owned(),
        }
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<u64, LiveConnection>> {
        crate::sync::lock(&self.live)
    }
}

// === impl Admitted ===

impl Admitted {
    /// Resolves when a policy change denies the connection, with the verdict
    /// that did.
    pub async fn revoked(&self) -> Authorization {
        self.revocation.cancelled.cancelled().await;
        self.revocation
            .verdict
            .get()
            .cloned()
            .unwrap_or_else(|| self.authorization.clone())
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.authorizer.live().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policies(yaml: &str) -> Vec<Arc<Policy>> {
        let values: Vec<serde_yaml::Value> = serde_yaml::from_str(yaml).unwrap();
        mesh_core::policy::compile_all(&values)
            .into_iter()
            .map(Arc::new)
            .collect()
    }

    fn check<'a>(
        pod: &'a PodKey,
        labels: &'a Arc<BTreeMap<String, String>>,
        port: u16,
    ) -> Check<'a> {
        Check {
            pod,
            labels,
            request: Request::new(None, "10.0.0.1".parse().unwrap(), port),
            src: "10.0.0.1:40000".parse().unwrap(),
            dst: "10.0.0.2:80".parse().unwrap(),
            point: EnforcementPoint::PlaintextInbound,
        }
    }

    #[tokio::test]
    async fn a_policy_change_revokes_the_open_connections_it_denies() {
        let metrics = Arc::new(Metrics::default());
        let authorizer = Arc::new(Authorizer::new("node-1", "ambit-system", metrics.clone()));
        let pod = PodKey {
            namespace: "shop".to_owned(),
            name: "backend".to_owned(),
        };
        let labels = Arc::new(BTreeMap::new());
        let on_80 = authorizer
            .check(check(&pod, &labels, 80))
            .expect("no policy: allowed");
        let on_81 = authorizer
            .check(check(&pod, &labels, 81))
            .expect("no policy: allowed");
        assert_eq!(on_80.authorization.policy, "default allow");
        assert_eq!(authorizer.open_connections(), 2);

        let revoked = authorizer.publish(policies(
            "- metadata: {name: no-80, namespace: shop}\n  spec: {action: DENY, rules: [{to: [{operation: {ports: ['80']}}]}]}",
        ));
        assert_eq!(revoked, 1);
        let verdict = tokio::time::timeout(std::time::Duration::from_secs(1), on_80.revoked())
            .await
            .expect("the connection on port 80 is revoked");
        assert_eq!(verdict.policy, "shop/no-80");
        assert_eq!(verdict.decision, Decision::Deny);
        let still_open =
            tokio::time::timeout(std::time::Duration::from_millis(50), on_81.revoked()).await;
        assert!(still_open.is_err(), "port 81 is still allowed");

        let denied = authorizer
            .check(check(&pod, &labels, 80))
            .err()
            .expect("denied");
        assert_eq!(denied.enforced_by, "node-1");
        drop((on_80, on_81));
        assert_eq!(authorizer.open_connections(), 0);

        let text = metrics.encode().unwrap();
        assert!(text.contains(r#"ambit_authorization_revocations_total{reporter="destination",decision="deny",policy="shop/no-80",enforcement_point="plaintext-inbound",destination_workload_namespace="shop"} 1"#), "{text}");
        assert!(text.contains(r#"ambit_authorization_decisions_total{reporter="destination",decision="allow",policy="default allow",enforcement_point="plaintext-inbound",destination_workload_namespace="shop"} 2"#), "{text}");
    }

    #[test]
    fn publishing_the_same_policies_again_changes_nothing() {
        let authorizer = Authorizer::new("node-1", "ambit-system", Arc::default());
        let yaml = "- metadata: {name: p, namespace: shop}\n  spec: {}";
        authorizer.publish(policies(yaml));
        let before = authorizer.policies.current();
        authorizer.publish(policies(yaml));
        assert!(Arc::ptr_eq(&before, &authorizer.policies.current()));
    }
}
