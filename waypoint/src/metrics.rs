//! The waypoint's metrics, with Istio's names and labels so that existing
//! dashboards work: `istio_requests_total` and
//! `istio_request_duration_milliseconds` (reporter `waypoint`), plus
//! counters of its own resilience decisions. A request label set's two
//! series go together once unchanged for the retention
//! ([`mesh_core::metrics_retention`]).

use std::{sync::Arc, time::Duration};

use mesh_core::{
    identity::SpiffeId,
    metrics_retention::{self, Retained},
    service::ServiceKey,
};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use tokio_util::sync::CancellationToken;

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

/// The series of one request label set: `istio_requests_total` and
/// `istio_request_duration_milliseconds`, which come and go together.
#[derive(Debug)]
pub struct RequestSeries {
    /// Requests answered.
    pub requests: Counter,
    /// Their durations, in milliseconds.
    pub duration: Histogram,
}

/// The waypoint's registry and its metrics.
pub struct Metrics {
    registry: Registry,
    /// `istio_requests_total` and `istio_request_duration_milliseconds`.
    requests: Retained<RequestLabels, RequestSeries>,
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
        let requests = Retained::<RequestLabels, RequestSeries>::default();
        registry.register(
            "istio_requests",
            "Requests the waypoint handled",
            requests.view(|series| &series.requests),
        );
        registry.register(
            "istio_request_duration_milliseconds",
            "Time from the request's arrival to its response's end, in milliseconds",
            requests.view(|series| &series.duration),
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
            retries,
            retries_refused,
            ejections,
            backend_connections,
            bodies_cut,
        }
    }

    /// Counts a request answered with `labels` after `elapsed_ms`.
    pub fn request(&self, labels: &RequestLabels, elapsed_ms: f64) {
        let series = self.requests.touch(labels);
        series.requests.inc();
        series.duration.observe(elapsed_ms);
    }

    /// Drops the request label sets unchanged for `retain`; returns how
    /// many went.
    #[must_use = "how many went is worth logging"]
    pub fn evict_idle(&self, retain: Duration) -> usize {
        self.requests.evict_idle(retain)
    }

    /// Drops idle request label sets until `shutdown` (see
    /// [`mesh_core::metrics_retention::evict_idle_until_cancelled`]).
    pub async fn evict_idle_until_cancelled(
        self: Arc<Self>,
        retain: Duration,
        shutdown: CancellationToken,
    ) {
        metrics_retention::evict_idle_until_cancelled(retain, shutdown, |retain| {
            self.evict_idle(retain)
        })
        .await;
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

// === impl RequestSeries ===

impl Default for RequestSeries {
    fn default() -> Self {
        Self {
            requests: Counter::default(),
            // 0.5 ms .. ~65 s.
            duration: Histogram::new(exponential_buckets(0.5, 2.0, 18)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(service: &str) -> RequestLabels {
        let peer = SpiffeId::new("cluster.local", "shop", "client").expect("id");
        let service = ServiceKey {
            namespace: "shop".to_owned(),
            name: service.to_owned(),
        };
        RequestLabels {
            response_code: 200,
            ..RequestLabels::for_stream(&peer, &service)
        }
    }

    #[test]
    fn a_request_label_set_goes_once_idle_with_both_its_series() {
        let metrics = Metrics::new();
        metrics.request(&labels("gone"), 3.0);
        std::thread::sleep(Duration::from_millis(60));
        metrics.request(&labels("busy"), 3.0);
        let before = metrics.encode();
        assert!(
            before.contains(r#"destination_service_name="gone""#),
            "{before}"
        );
        assert_eq!(metrics.evict_idle(Duration::from_millis(40)), 1);
        let after = metrics.encode();
        assert!(!after.contains(r#""gone""#), "{after}");
        let busy = after
            .lines()
            .filter(|line| line.contains(r#"destination_service_name="busy""#))
            .count();
        // The count, and the histogram's buckets, sum and count.
        assert!(busy > 3, "{after}");
        assert!(
            after
                .lines()
                .any(|line| line.starts_with("istio_requests_total{")
                    && line.contains(r#""busy""#)
                    && line.ends_with(" 1")),
            "{after}"
        );
        assert!(
            after.lines().any(|line| line
                .starts_with("istio_request_duration_milliseconds_count{")
                && line.contains(r#""busy""#)
                && line.ends_with(" 1")),
            "{after}"
        );
    }
}
