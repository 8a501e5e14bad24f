//! The listeners for the world outside the node: Prometheus scrapes
//! `/metrics` on the metrics port (default `0.0.0.0:15020`), the kubelet
//! probes `/healthz/ready` on the readiness port (default `0.0.0.0:15021`).
//! Both listen in the agent's own network namespace, are served on the
//! control runtime, and answer plain HTTP/1.1 `GET` (and `HEAD`).
//!
//! | port | path | body |
//! | --- | --- | --- |
//! | metrics | `/metrics` (and Istio's `/stats/prometheus`) | every metric, `OpenMetrics` text |
//! | readiness | `/healthz/ready` | `ready` (200), or `not ready:` and the reasons (503) |
//!
//! The agent is ready once its eBPF programs are attached, its first
//! configuration snapshot is applied, and every enrolled pod holds a valid
//! workload certificate. A pod that could not be enrolled does not hold
//! readiness back: the admin API's `/pods` says why it failed.

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Incoming, server::conn::http1};
use hyper_util::rt::TokioIo;
use mesh_core::identity::SpiffeId;
use mesh_proxy::accept::accept_until;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::{
    config::{Config, env},
    ebpf::MeshMaps,
    enrollment::reconcile::{PodState, PodStatusBoard},
    identity::{CertManager, CertificateInfo},
    metrics::{self, Metrics},
};

/// Path of the metrics.
pub const METRICS_PATH: &str = "/metrics";
/// Istio's path for the same metrics, for scrapers configured for Istio.
pub const ISTIO_METRICS_PATH: &str = "/stats/prometheus";
/// Path of the readiness probe.
pub const READINESS_PATH: &str = "/healthz/ready";

/// Why a listener could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The address could not be bound.
    #[error(
        "cannot listen on the {what} address {addr}: {source} (is another agent or proxy using it? set {env})"
    )]
    Bind {
        /// `metrics` or `readiness`.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The variable that moves it.
        env: &'static str,
        /// The error.
        source: std::io::Error,
    },
}

/// The metrics and readiness listeners, bound and not yet served.
pub struct TelemetryListeners {
    metrics: TcpListener,
    readiness: TcpListener,
}

/// What readiness depends on.
pub struct Readiness {
    ebpf_attached: AtomicBool,
    board: Arc<PodStatusBoard>,
    certs: Arc<CertManager>,
    trust_domain: String,
}

/// Serves the metrics and readiness ports for an agent whose eBPF programs
/// are attached (`maps`), whose CA is loaded (`certs`) and whose pods
/// `board` lists; adds the figures read at scrape time to `metrics`, and
/// drops its idle series (`--metrics-retain-idle-secs`) until `shutdown`.
/// Returns the readiness state, which the admin API's `/ready` shares.
pub async fn start(
    config: &Config,
    metrics: &Arc<Metrics>,
    maps: &Arc<MeshMaps>,
    certs: &Arc<CertManager>,
    board: Arc<PodStatusBoard>,
    shutdown: &CancellationToken,
) -> Result<Arc<Readiness>, TelemetryError> {
    let listeners = TelemetryListeners::bind(config.metrics_addr, config.readiness_addr).await?;
    metrics.read_at_scrape(maps.clone(), certs.clone());
    let readiness = Arc::new(Readiness::new(board, certs.clone(), &config.trust_domain));
    readiness.set_ebpf_attached();
    listeners.spawn(metrics.clone(), readiness.clone(), shutdown);
    tokio::spawn(
        metrics
            .clone()
            .evict_idle_until_cancelled(config.metrics_retain_idle(), shutdown.clone()),
    );
    Ok(readiness)
}

// === impl TelemetryListeners ===

impl TelemetryListeners {
    /// Binds both addresses in the current network namespace.
    pub async fn bind(
        metrics_addr: SocketAddr,
        readiness_addr: SocketAddr,
    ) -> Result<Self, TelemetryError> {
        let bind = |what, addr, env| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| TelemetryError::Bind {
                    what,
                    addr,
                    env,
                    source,
                })
        };
        Ok(Self {
            metrics: bind("metrics", metrics_addr, env::METRICS_ADDR).await?,
            readiness: bind("readiness", readiness_addr, env::READINESS_ADDR).await?,
        })
    }

    /// Serves both until `shutdown`, on the current runtime.
    pub fn spawn(
        self,
        metrics: Arc<Metrics>,
        readiness: Arc<Readiness>,
        shutdown: &CancellationToken,
    ) {
        tokio::spawn(serve(self.metrics, shutdown.clone(), move |path| {
            metrics_response(&metrics, path)
        }));
        tokio::spawn(serve(self.readiness, shutdown.clone(), move |path| {
            readiness_response(&readiness, path)
        }));
    }
}

// === impl Readiness ===

impl Readiness {
    /// Readiness of an agent whose CA is loaded into `certs`, whose pods
    /// `board` lists, with identities in `trust_domain`.
    #[must_use]
    pub fn new(board: Arc<PodStatusBoard>, certs: Arc<CertManager>, trust_domain: &str) -> Self {
        Self {
            ebpf_attached: AtomicBool::new(false),
            board,
            certs,
            trust_domain: trust_domain.to_owned(),
        }
    }

    /// The eBPF programs are attached.
    pub fn set_ebpf_attached(&self) {
        self.ebpf_attached.store(true, Ordering::Relaxed);
    }

    /// `Ok` when ready, else every reason it is not.
    pub fn check(&self) -> Result<(), Vec<String>> {
        let enrolled: Vec<String> = self
            .board
            .pods()
            .into_iter()
            .filter(|pod| pod.state == PodState::Enrolled)
            .filter_map(|pod| {
                let account = pod.service_account.as_deref()?;
                let id = SpiffeId::new(&self.trust_domain, &pod.namespace, account).ok()?;
                Some(id.to_string())
            })
            .collect();
        let reasons = unready_reasons(
            self.ebpf_attached.load(Ordering::Relaxed),
            self.board.reconciled(),
            &enrolled,
            &self.certs.certificates(),
        );
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons)
        }
    }
}

/// Why an agent is not ready: its programs are not attached, no
/// configuration was applied yet, or an enrolled pod's identity (of
/// `enrolled`) has no valid certificate among `certificates`.
fn unready_reasons(
    ebpf_attached: bool,
    reconciled: bool,
    enrolled: &[String],
    certificates: &[CertificateInfo],
) -> Vec<String> {
    let mut reasons = Vec::new();
    if !ebpf_attached {
        reasons.push("the eBPF programs are not attached yet".to_owned());
    }
    if !reconciled {
        reasons.push("the configuration has not been applied yet".to_owned());
    }
    for identity in enrolled {
        match certificates.iter().find(|c| &c.identity == identity) {
            Some(certificate) if certificate.state == "valid" => {}
            Some(certificate) => reasons.push(format!(
                "the certificate of {identity} is {} (serial {})",
                certificate.state.replace('_', " "),
                certificate.serial
            )),
            None => reasons.push(format!("no certificate is loaded for {identity}")),
        }
    }
    reasons.dedup();
    reasons
}

fn metrics_response(metrics: &Metrics, path: &str) -> Response<Full<Bytes>> {
    if path != METRICS_PATH && path != ISTIO_METRICS_PATH {
        return text(
            StatusCode::NOT_FOUND,
            "not found; the metrics are at /metrics\n".to_owned(),
        );
    }
    match metrics.encode() {
        Ok(body) => {
            let mut response = text(StatusCode::OK, body);
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(metrics::CONTENT_TYPE),
            );
            response
        }
        Err(error) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n")),
    }
}

fn readiness_response(readiness: &Readiness, path: &str) -> Response<Full<Bytes>> {
    if path != READINESS_PATH {
        return text(
            StatusCode::NOT_FOUND,
            "not found; readiness is at /healthz/ready\n".to_owned(),
        );
    }
    match readiness.check() {
        Ok(()) => text(StatusCode::OK, "ready\n".to_owned()),
        Err(reasons) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", reasons.join("; ")),
        ),
    }
}

/// Answers `GET` and `HEAD` on `listener` with `respond(path)` until
/// `shutdown`.
async fn serve<F>(listener: TcpListener, shutdown: CancellationToken, respond: F)
where
    F: Fn(&str) -> Response<Full<Bytes>> + Clone + Send + Sync + 'static,
{
    let span = tracing::info_span!("telemetry");
    accept_until(&listener, shutdown.cancelled(), |stream, _| {
        let respond = respond.clone();
        let connection = http1::Builder::new().serve_connection(
            TokioIo::new(stream),
            hyper::service::service_fn(move |request: Request<Incoming>| {
                let response = if matches!(*request.method(), Method::GET | Method::HEAD) {
                    respond(request.uri().path())
                } else {
                    text(
                        StatusCode::METHOD_NOT_ALLOWED,
                        "only GET is supported\n".to_owned(),
                    )
                };
                std::future::ready(Ok::<_, Infallible>(response))
            }),
        );
        tokio::spawn(until_cancelled(connection, shutdown.clone()));
    })
    .instrument(span)
    .await;
}

async fn until_cancelled<F, E>(connection: F, shutdown: CancellationToken)
where
    F: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    tokio::select! {
        () = shutdown.cancelled() => {}
        result = connection => if let Err(error) = result {
            tracing::debug!(%error, "telemetry connection ended with an error");
        },
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate(identity: &str, state: &'static str) -> CertificateInfo {
        CertificateInfo {
            identity: identity.to_owned(),
            serial: "0a".to_owned(),
            not_before: 0,
            not_after: 1,
            rotations: 0,
            state,
        }
    }

    const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";
    const DB: &str = "spiffe://cluster.local/ns/shop/sa/db";

    #[test]
    fn ready_once_attached_applied_and_every_enrolled_pod_has_a_valid_certificate() {
        let certs = [certificate(WEB, "valid"), certificate(DB, "valid")];
        let enrolled = [WEB.to_owned(), DB.to_owned(), WEB.to_owned()];
        assert!(unready_reasons(true, true, &enrolled, &certs).is_empty());
        assert!(
            unready_reasons(true, true, &[], &[]).is_empty(),
            "no pods: ready"
        );
    }

    #[test]
    fn each_missing_condition_is_a_reason() {
        let reasons = unready_reasons(false, false, &[], &[]);
        assert_eq!(
            reasons,
            [
                "the eBPF programs are not attached yet",
                "the configuration has not been applied yet"
            ]
        );
        let certs = [certificate(WEB, "expired")];
        let reasons = unready_reasons(true, true, &[WEB.to_owned(), DB.to_owned()], &certs);
        assert_eq!(
            reasons,
            [
                format!("the certificate of {WEB} is expired (serial 0a)"),
                format!("no certificate is loaded for {DB}"),
            ]
        );
    }
}
