//! Prometheus metrics, in the text format, served on the admin API's
//! `/metrics`. Label values come from bounded sets: decisions, enforcement
//! points, policy names and namespaces.

use std::sync::Mutex;

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

/// Labels of an authorization decision.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthorizationLabels {
    /// Always `destination`: the destination's agent decides.
    pub reporter: &'static str,
    /// `allow` or `deny`.
    pub decision: &'static str,
    /// The deciding policy (namespace/name), `default allow` or `no ALLOW matched`.
    pub policy: String,
    /// Where it was enforced: `hbone-inbound`, `plaintext-inbound` or `same-node-outbound`.
    pub enforcement_point: &'static str,
    /// The destination pod's namespace.
    pub destination_workload_namespace: String,
}

/// The agent's metrics.
pub struct Metrics {
    registry: Mutex<Registry>,
    /// Connections authorized or refused, by verdict and deciding policy.
    pub authorization_decisions: Family<AuthorizationLabels, Counter>,
    /// Open connections closed because a policy change denies them.
    pub authorization_revocations: Family<AuthorizationLabels, Counter>,
}

// === impl Metrics ===

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let authorization_decisions = Family::<AuthorizationLabels, Counter>::default();
        registry.register(
            "ambit_authorization_decisions",
            "Connections checked against authorization policies, by verdict and deciding policy",
            authorization_decisions.clone(),
        );
        let authorization_revocations = Family::<AuthorizationLabels, Counter>::default();
        registry.register(
            "ambit_authorization_revocations",
            "Open connections closed because a policy change denies them",
            authorization_revocations.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            authorization_decisions,
            authorization_revocations,
        }
    }
}

impl Metrics {
    /// The metrics in Prometheus' text format.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let registry = self
            .registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut text = String::new();
        encode(&mut text, &registry)?;
        Ok(text)
    }
}
