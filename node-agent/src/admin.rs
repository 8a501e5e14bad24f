//! The admin API: JSON over HTTP/1.1 on localhost in the agent's own network
//! namespace (default 127.0.0.1:15000). docs/operations.md shows each
//! listing; the CLI's `ambit` commands read it.
//!
//! | path | body |
//! | --- | --- |
//! | `/ready` | `ready` (200) once the programs are attached, the configuration applied and every enrolled pod holds a certificate; else 503 and why |
//! | `/pods` | this node's configured pods: state, error, effective mTLS modes and warnings, netns cookie, traffic counters |
//! | `/workloads` | every meshed pod the agent knows, on any node: identity, addresses, node, labels |
//! | `/services` | configured services: host name, selector, ports, the meshed pods behind them |
//! | `/connections` | open connections (bytes so far, age) and the recently closed ones, with identities, security, verdict and deciding policy |
//! | `/connections?follow` | each connection as it closes, one JSON object per line, until the client leaves |
//! | `/certificates` | workload certificates: identity, serial, validity, state |
//! | `/policies` | authorization policies: as compiled, status (accepted, failing closed, rejected) |
//! | `/peer-authentications` | peer authentications: as compiled, status (accepted, or rejected and STRICT in their scope) |
//! | `/ebpf` | pin directory, cgroup root, programs and where they attach, maps, enrolled netns, counters |
//! | `/counters` | the eBPF programs' counters, summed over CPUs |
//! | `/config` | the effective configuration |
//! | `/logging` | the log filter; `PUT` a new one as the body (e.g. `debug`) |
//! | `/metrics` | Prometheus metrics, text format |

use std::{convert::Infallible, sync::Arc};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, StreamBody, combinators::BoxBody};
use hyper::{
    Method, Request, Response, StatusCode, body::Frame, body::Incoming, server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use mesh_core::logging::LogControl;
use mesh_proxy::accept::accept_until;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::{
    authz::Authorizer, config::Config, connections::ConnectionLog, ebpf::MeshMaps,
    enrollment::reconcile::PodStatusBoard, identity::CertManager, metrics::Metrics,
    splice::Splicer, telemetry::Readiness, workloads::SharedWorkloads,
};

mod views;

pub use views::{ConnectionEntry, EbpfView, PeerAuthnView, ServiceView, WorkloadView};

/// The largest log filter a `PUT /logging` may send.
const MAX_FILTER_BYTES: usize = 4096;

/// The paths a GET can ask for, for the 404 hint.
const PATHS: &str = "/pods, /workloads, /services, /connections, /certificates, /policies, /peer-authentications, /ebpf, /counters, /config, /logging, /metrics or /ready";

/// A response body: whole, or streamed (`/connections?follow`).
type Body = BoxBody<Bytes, Infallible>;

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
    /// Open and recently closed connections.
    pub connections: Arc<ConnectionLog>,
    /// Authorization policies.
    pub authorizer: Arc<Authorizer>,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Every meshed pod the agent knows.
    pub workloads: Arc<SharedWorkloads>,
    /// Kernel-spliced connections.
    pub splicer: Arc<Splicer>,
    /// Whether the kernel splice is on, or why not.
    pub kernel_splice: String,
    /// The log filter.
    pub logging: LogControl,
    /// Whether the agent is ready (the same answer as port 15021's).
    pub readiness: Arc<Readiness>,
    /// Cancelled by `POST /uninstall`: the agent un-enrolls every pod,
    /// removes its eBPF state and exits.
    pub uninstall: CancellationToken,
}

/// Serves the admin API on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>, shutdown: CancellationToken) {
    let span = tracing::info_span!("admin");
    accept_until(&listener, shutdown.cancelled(), |stream, _| {
        let (state, shutdown) = (state.clone(), shutdown.clone());
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let (state, shutdown) = (state.clone(), shutdown.clone());
                async move { Ok::<_, Infallible>(respond(&state, request, shutdown).await) }
            });
            if let Err(error) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%error, "admin connection ended with an error");
            }
        });
    })
    .instrument(span)
    .await;
}

async fn respond(
    state: &AdminState,
    request: Request<Incoming>,
    shutdown: CancellationToken,
) -> Response<Body> {
    let path = request.uri().path().to_owned();
    let follow = request
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|p| p == "follow" || p == "follow=true"));
    match (request.method().clone(), path.as_str()) {
        (Method::PUT, "/logging") => set_log_filter(state, request).await,
        (Method::POST, "/uninstall") => {
            tracing::warn!(
                "uninstall requested through the admin API: releasing every pod and removing the eBPF state"
            );
            state.uninstall.cancel();
            shutdown.cancel();
            json(&serde_json::json!({ "uninstalling": true }))
        }
        (Method::GET, "/connections") if follow => follow_connections(state, shutdown),
        (Method::GET, path) => get(state, path),
        (_, "/logging") => text(StatusCode::METHOD_NOT_ALLOWED, "use GET or PUT\n"),
        (_, "/uninstall") => text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n"),
        _ => text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET is supported here\n",
        ),
    }
}

fn get(state: &AdminState, path: &str) -> Response<Body> {
    match path {
        "/ready" => match state.readiness.check() {
            Ok(()) => text(StatusCode::OK, "ready\n"),
            Err(reasons) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("not ready: {}\n", reasons.join("; ")),
            ),
        },
        "/pods" => json(&state.board.pods()),
        "/workloads" => json(&views::workloads(&state.workloads.current())),
        "/services" => json(&views::services(
            &state.workloads.current(),
            &state.config.cluster_domain,
        )),
        "/connections" => json(&views::connections(state)),
        "/ebpf" => json(&views::ebpf(state)),
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
        "/policies" => json(&state.authorizer.statuses()),
        "/peer-authentications" => json(&views::peer_authentications(
            &state.workloads.current(),
            &state.config.root_namespace,
        )),
        "/logging" => json(&serde_json::json!({ "filter": state.logging.current() })),
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
        _ => text(StatusCode::NOT_FOUND, &format!("not found; try {PATHS}\n")),
    }
}

/// `PUT /logging`: the body is the new filter.
async fn set_log_filter(state: &AdminState, request: Request<Incoming>) -> Response<Body> {
    let body = match http_body_util::Limited::new(request.into_body(), MAX_FILTER_BYTES)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(error) => {
            return text(
                StatusCode::BAD_REQUEST,
                &format!("cannot read the filter (at most {MAX_FILTER_BYTES} bytes): {error}\n"),
            );
        }
    };
    let Ok(filter) = std::str::from_utf8(&body) else {
        return text(StatusCode::BAD_REQUEST, "the filter is not UTF-8\n");
    };
    match state.logging.set(filter) {
        Ok(()) => json(&serde_json::json!({ "filter": state.logging.current() })),
        Err(error) => text(StatusCode::BAD_REQUEST, &format!("{error}\n")),
    }
}

/// `GET /connections?follow`: one JSON line per connection as it closes.
fn follow_connections(state: &AdminState, shutdown: CancellationToken) -> Response<Body> {
    let receiver = state.connections.follow();
    tracing::debug!("a client follows closed connections");
    let workloads = state.workloads.clone();
    let node = state.config.node_name.clone();
    let lines = futures_util::stream::unfold(
        (receiver, workloads, node, shutdown),
        |(mut receiver, workloads, node, shutdown)| async move {
            let line = tokio::select! {
                () = shutdown.cancelled() => return None,
                next = receiver.recv() => match next {
                    Ok(record) => {
                        let entry = views::closed_entry(record, &workloads.current(), &node);
                        serde_json::to_string(&entry).unwrap_or_default()
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                        serde_json::json!({ "missed": missed }).to_string()
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                },
            };
            Some((
                Ok::<_, Infallible>(Frame::data(Bytes::from(line + "\n"))),
                (receiver, workloads, node, shutdown),
            ))
        },
    );
    let mut response = Response::new(BoxBody::new(StreamBody::new(lines)));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/x-ndjson"),
    );
    response
}

fn json(value: &impl Serialize) -> Response<Body> {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => {
            let mut response = Response::new(whole(Bytes::from(body)));
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/json"),
            );
            response
        }
        Err(error) => text(StatusCode::INTERNAL_SERVER_ERROR, &format!("{error}\n")),
    }
}

fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut response = Response::new(whole(Bytes::from(body.to_owned())));
    *response.status_mut() = status;
    response
}

fn whole(bytes: Bytes) -> Body {
    BoxBody::new(Full::new(bytes))
}
