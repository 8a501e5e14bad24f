//! The admin API: JSON over HTTP/1.1 on localhost in the agent's own network
//! namespace (default 127.0.0.1:15000).
//!
//! | path | body |
//! | --- | --- |
//! | `/ready` | `ready` once the programs are attached (200) |
//! | `/pods` | every configured pod: state, error, netns cookie, traffic counters |
//! | `/counters` | the eBPF programs' counters, summed over CPUs |
//! | `/connections` | recently closed connections: ends, identities, mTLS or not, bytes |
//! | `/certificates` | workload certificates: identity, serial, validity, rotations |
//! | `/config` | the effective configuration |
//! | `/policies` | authorization policies: as compiled, status (accepted, failing closed, rejected) |
//! | `/metrics` | Prometheus metrics, text format |

use std::{convert::Infallible, sync::Arc};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode, body::Incoming, server::conn::http1, service::service_fn,
};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    authz::Authorizer, config::Config, connections::ConnectionLog, ebpf::MeshMaps,
    enrollment::reconcile::PodStatusBoard, identity::CertManager, metrics::Metrics,
};

/// What the admin API reads.
pub struct AdminState {
    /// The effective configuration.
    pub config: Config,
    /// Pods and their counters.
    pub board: Arc<PodStatusBoard>,
    /// The eBPF maps.
    pub maps: Arc<MeshMaps>,
    /// Workload certificates.
    pub certs: Arc<CertManager>,
    /// Recently closed connections.
    pub connections: Arc<ConnectionLog>,
    /// Authorization policies.
    pub authorizer: Arc<Authorizer>,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
}

/// Serves the admin API on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>, shutdown: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "admin accept failed");
                    continue;
                }
            },
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(respond(&state, &request)) }
            });
            if let Err(error) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%error, "admin connection ended with an error");
            }
        });
    }
}

fn respond(state: &AdminState, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET is supported\n");
    }
    match request.uri().path() {
        "/ready" => text(StatusCode::OK, "ready\n"),
        "/pods" => json(&state.board.pods()),
        "/counters" => match state.maps.counters() {
            Ok(counters) => json(
                &counters
                    .into_iter()
                    .collect::<std::collections::BTreeMap<_, _>>(),
            ),
            Err(error) => text(StatusCode::INTERNAL_SERVER_ERROR, &format!("{error}\n")),
        },
        "/config" => json(&state.config),
        "/certificates" => json(&state.certs.certificates()),
        "/connections" => json(&state.connections.recent()),
        "/policies" => json(&state.authorizer.statuses()),
        "/metrics" => match state.metrics.encode() {
            Ok(body) => {
                let mut response = text(StatusCode::OK, &body);
                response.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                response
            }
            Err(error) => text(StatusCode::INTERNAL_SERVER_ERROR, &format!("{error}\n")),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /pods, /connections, /policies, /certificates, /counters, /metrics, /config or /ready\n",
        ),
    }
}

fn json(value: &impl Serialize) -> Response<Full<Bytes>> {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => {
            let mut response = Response::new(Full::new(Bytes::from(body)));
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/json"),
            );
            response
        }
        Err(error) => text(StatusCode::INTERNAL_SERVER_ERROR, &format!("{error}\n")),
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_owned())));
    *response.status_mut() = status;
    response
}
