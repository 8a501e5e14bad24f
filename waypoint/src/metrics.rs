//! The waypoint's metrics, with Istio's names and labels so that existing
//! dashboards work: `istio_requests_total` and
//! `istio_request_duration_milliseconds` (reporter `waypoint`), plus
//! counters of its own resilience decisions.

use std::sync::Arc;

use mesh_core::{identity::SpiffeId, service::ServiceKey};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

/// The labels of one request's metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Always `waypoint`.
    pub reporter: &'static str,
    /// The client's principal (SPIFFE id).
    pub source_principal: Arc<str>,
    /// The client's namespace, from its identity.
    pub source_workload_namespace: Arc<str>,
    /// `<service>.<namespace>.svc.cluster.local`.
    pub destination_service: Arc<str>,
    /// The service's name.
    pub destination_service_name: Arc<str>,
    /// The service's namespace.
    pub destination_service_namespace: Arc<str>,
    /// The backend Service the request was routed to (a canary split's
    /// side), or `unknown` when none was chosen.
    pub destination_backend: Arc<str>,
    /// `http` or `grpc_or_http2`.
    pub request_protocol: &'static str,
    /// The status sent to the client.
    pub response_code: u16,
    /// Why the waypoint answered itself: `-` when the backend answered,
    /// else Envoy's flags (`UF` connect failure, `UT` timeout, `UO`
    /// overflow, `UH` no healthy upstream, `RL` rate limited, `FI` fault
    /// injected, `DC` client gone, `NR` no route).
    pub response_flags: &'static str,
    /// Always `mutual_tls`: clients reach the waypoint over HBONE.
    pub connection_security_policy: &'static str,
}

impl RequestLabels {
    /// The labels a stream's requests share: the client's identity and the
    /// service; the rest is filled in per request.
    #[must_use]
    pub fn for_stream(peer: &SpiffeId, service: &ServiceKey) -> Self {
        Self {
            reporter: "waypoint",
            source_principal: peer.to_string().into(),
            source_workload_namespace: peer.namespace().into(),
            destination_service: format!(
                "{}.{}.svc.cluster.local",
                service.name, service.namespace
            )
            .into(),
            destination_service_name: service.name.as_str().into(),
            destination_service_namespace: service.namespace.as_str().into(),
            destination_backend: "unknown".into(),
            request_protocol: "http",
            response_code: 0,
            response_flags: "-",
            connection_security_policy: "mutual_tls",
        }
    }
}

/// The waypoint's registry and its metrics.
pub struct Metrics {
    registry: Registry,
    /// `istio_requests_total`.
    pub requests: Family<RequestLabels, Counter>,
    /// `istio_request_duration_milliseconds`.
    pub duration: Family<RequestLabels, Histogram>,
    /// Retries sent (`ambit_waypoint_retries_total`).
    pub retries: Counter,
    /// Retries the budget refused (`ambit_waypoint_retry_budget_exhausted_total`).
    pub retries_refused: Counter,
    /// Backend endpoints ejected by outlier detection (`ambit_waypoint_outlier_ejections_total`).
    pub ejections: Counter,
    /// HTTP connections opened to backend endpoints, all workers
    /// (`ambit_waypoint_backend_connections_opened_total`).
    pub backend_connections: Counter,
    /// Response bodies cut at a route's timeout after their headers had
    /// gone out (`ambit_waypoint_response_bodies_cut_total`).
    pub bodies_cut: Counter,
}

impl Metrics {
    /// A registry with every metric at zero.
    #[must_use]
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "istio_requests",
            "Requests the waypoint handled",
            requests.clone(),
        );
        let duration = Family::<RequestLabels, Histogram>::new_with_constructor(|| {
            // 0.5 ms .. ~65 s.
            Histogram::new(exponential_buckets(0.5, 2.0, 18))
        });
        registry.register(
            "istio_request_duration_milliseconds",
            "Time from the request's arrival to its response's end, in milliseconds",
            duration.clone(),
        );
        let retries = Counter::default();
        registry.register(
            "ambit_waypoint_retries",
            "Retries sent to backends",
            retries.clone(),
        );
        let retries_refused = Counter::default();
        registry.register(
            "ambit_waypoint_retry_budget_exhausted",
            "Retries not sent because the retry budget was spent",
            retries_refused.clone(),
        );
        let ejections = Counter::default();
        registry.register(
            "ambit_waypoint_outlier_ejections",
            "Backend endpoints ejected after consecutive failures",
            ejections.clone(),
        );
        let backend_connections = Counter::default();
        registry.register(
            "ambit_waypoint_backend_connections_opened",
            "HTTP connections opened to backend endpoints (each over its own HBONE stream or TCP connection)",
            backend_connections.clone(),
        );
        let bodies_cut = Counter::default();
        registry.register(
            "ambit_waypoint_response_bodies_cut",
            "Response bodies cut at a route's timeout after their headers had been sent",
            bodies_cut.clone(),
        );
        Self {
            registry,
            requests,
            duration,
            retries,
            retries_refused,
            ejections,
            backend_connections,
            bodies_cut,
        }
    }

    /// The metrics in Prometheus' text format.
    #[must_use]
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
