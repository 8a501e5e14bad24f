//! Prometheus metrics, in the `OpenMetrics` text format, served on the
//! metrics port's `/metrics` (15020, served by the telemetry module) and on the
//! admin API's. Every label value comes from a bounded set: workloads,
//! namespaces, identities, services, policies and small fixed enums, never
//! addresses or ports (docs/metrics.md lists them all).
//!
//! - [`tcp`]: Istio's TCP metrics, with Istio's names and labels
//! - series naming workloads or policies go once idle
//!   ([`mesh_core::metrics_retention`])
//! - [`collectors`]: figures read at scrape time (eBPF counters,
//!   certificate expiry, live tasks and open fds)
//!
//! How workloads are named in labels is `crate::workloads::names`; the
//! proxies' calls (`PodContext::count_opened` and co.) are in the proxy.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

use crate::{ebpf::MeshMaps, identity::CertManager};
use mesh_core::metrics_retention::Retained;

pub mod collectors;
pub mod tcp;

/// The content type of [`Metrics::encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

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

/// Labels of a connection that took the kernel path.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KernelPathLabels {
    /// `outbound` (the application's leg to the agent), `inbound` (the
    /// agent's leg to the application) or `same_node` (a direct same-node
    /// connection, spliced end to end).
    pub leg: &'static str,
}

/// The agent's metrics.
pub struct Metrics {
    registry: Mutex<Registry>,
    /// Connections authorized or refused, by verdict and deciding policy.
    pub authorization_decisions: Retained<AuthorizationLabels, Counter>,
    /// Open connections closed because a policy change denies them.
    pub authorization_revocations: Retained<AuthorizationLabels, Counter>,
    /// Istio's TCP connection and byte counters.
    pub tcp: tcp::TcpMetrics,
    /// Connections whose leg took the kernel path, by leg.
    pub kernel_path_connections: Family<KernelPathLabels, Counter>,
}

// === impl Metrics ===

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let authorization_decisions = Retained::<AuthorizationLabels, Counter>::default();
        registry.register(
            "ambit_authorization_decisions",
            "Connections checked against authorization policies, by verdict and deciding policy",
            authorization_decisions.view(|counter| counter),
        );
        let authorization_revocations = Retained::<AuthorizationLabels, Counter>::default();
        registry.register(
            "ambit_authorization_revocations",
            "Open connections closed because a policy change denies them",
            authorization_revocations.view(|counter| counter),
        );
        let tcp = tcp::TcpMetrics::register(&mut registry);
        let kernel_path_connections = Family::<KernelPathLabels, Counter>::default();
        registry.register(
            "ambit_kernel_path_connections",
            "Connections whose leg between application and agent (or whole same-node path) was spliced by sk_msg, by leg",
            kernel_path_connections.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            authorization_decisions,
            authorization_revocations,
            tcp,
            kernel_path_connections,
        }
    }
}

impl Metrics {
    /// Counts a connection whose `leg` took the kernel path.
    pub fn kernel_path_connection(&self, leg: &'static str) {
        self.kernel_path_connections
            .get_or_create(&KernelPathLabels { leg })
            .inc();
    }

    /// Drops the series that name workloads, identities or policies and
    /// have not moved for `retain` (unless an open connection holds them);
    /// returns how many label sets went.
    #[must_use = "how many went is worth logging"]
    pub fn evict_idle(&self, retain: Duration) -> usize {
        self.authorization_decisions.evict_idle(retain)
            + self.authorization_revocations.evict_idle(retain)
            + self.tcp.evict_idle(retain)
    }

    /// Runs [`Self::evict_idle`] until `shutdown` (see
    /// [`mesh_core::metrics_retention::evict_idle_until_cancelled`]).
    pub async fn evict_idle_until_cancelled(
        self: Arc<Self>,
        retain: Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        mesh_core::metrics_retention::evict_idle_until_cancelled(retain, shutdown, |retain| {
            self.evict_idle(retain)
        })
        .await;
    }

    /// Adds the figures read at scrape time: the eBPF counters in `maps`
    /// and the expiry of the certificates `certs` holds.
    pub fn read_at_scrape(&self, maps: Arc<MeshMaps>, certs: Arc<CertManager>) {
        let mut registry = crate::sync::lock(&self.registry);
        registry.register_collector(Box::new(collectors::EbpfEvents(maps)));
        registry.register_collector(Box::new(collectors::CertificateExpiry(certs)));
    }

    /// The agent's metrics, with the live tasks of its data-path and
    /// control runtimes and its open file descriptors read at scrape time.
    #[must_use]
    pub fn for_runtimes(
        data_plane: &tokio::runtime::Handle,
        control: &tokio::runtime::Handle,
    ) -> Self {
        let metrics = Self::default();
        crate::sync::lock(&metrics.registry).register_collector(Box::new(
            collectors::AgentProcess(vec![
                ("data-path", data_plane.clone()),
                ("control", control.clone()),
            ]),
        ));
        metrics
    }

    /// The metrics in Prometheus' text format.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let registry = crate::sync::lock(&self.registry);
        let mut text = String::new();
        encode(&mut text, &registry)?;
        Ok(text)
    }
}
