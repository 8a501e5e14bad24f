//! The waypoint's HTTP listeners besides HBONE, as the node agent's:
//!
//! | listener | default | paths |
//! | --- | --- | --- |
//! | `--metrics-addr` | `0.0.0.0:15020` (the pod's address: Prometheus and the kubelet reach it) | `/stats/prometheus` (also `/metrics`), `/healthz/ready` (200 once the waypoint can serve, else 503 and why: see [`crate::readiness`]) |
//! | `--admin-addr` | `127.0.0.1:15000` (inside the pod only; `kubectl port-forward` reaches it) | `/config` |
//!
//! `/config` (JSON: the services served, the routes and why any were
//! rejected, the endpoints' health, and what each worker served) says how
//! the namespace's traffic is routed and which backends are failing:
//! nothing another pod should read.

use std::{convert::Infallible, sync::Arc};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use mesh_proxy::accept::accept_until;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::{Waypoint, metrics::Metrics, readiness::Readiness};

/// Serves metrics and readiness on `listener` until cancelled.
pub async fn serve_telemetry(
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    listener: TcpListener,
    cancel: CancellationToken,
) {
    serve(listener, cancel, move |request| {
        telemetry_response(&metrics, &readiness, request.uri().path())
    })
    .await;
}

/// Serves the admin views (`/config`) on `listener` until cancelled.
pub async fn serve_admin(
    waypoint: Arc<Waypoint>,
    listener: TcpListener,
    cancel: CancellationToken,
) {
    serve(listener, cancel, move |request| {
        admin_response(&waypoint, request.uri().path())
    })
    .await;
}

/// Answers each request on `listener` with `respond` until cancelled.
async fn serve<F>(listener: TcpListener, cancel: CancellationToken, respond: F)
where
    F: Fn(&Request<Incoming>) -> Response<Full<Bytes>> + Send + Sync + 'static,
{
    let respond = Arc::new(respond);
    let span = tracing::info_span!("admin");
    accept_until(&listener, cancel.cancelled(), |tcp, _| {
        let respond = respond.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let response = respond(&request);
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    })
    .instrument(span)
    .await;
}

fn telemetry_response(
    metrics: &Metrics,
    readiness: &Readiness,
    path: &str,
) -> Response<Full<Bytes>> {
    match path {
        "/stats/prometheus" | "/metrics" => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        "/healthz/ready" => match readiness.check(std::time::SystemTime::now()) {
            Ok(()) => reply(StatusCode::OK, "text/plain", "ready\n".to_owned()),
            Err(reasons) => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("not ready: {}\n", reasons.join("; ")),
            ),
        },
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found; here: /stats/prometheus, /metrics, /healthz/ready (the admin views are on --admin-addr, localhost)\n"
                .to_owned(),
        ),
    }
}

fn admin_response(waypoint: &Waypoint, path: &str) -> Response<Full<Bytes>> {
    match path {
        "/config" => reply(
            StatusCode::OK,
            "application/json",
            serde_json::to_string_pretty(&config_view(waypoint)).unwrap_or_default(),
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found; here: /config (metrics and readiness are on --metrics-addr)\n".to_owned(),
        ),
    }
}

/// What `/config` shows.
fn config_view(waypoint: &Waypoint) -> serde_json::Value {
    let state = waypoint.state.current();
    let mut served: Vec<serde_json::Value> = state
        .served_ports()
        .map(|(addr, served)| {
            serde_json::json!({
                "address": addr.to_string(),
                "service": served.service.to_string(),
                "port": served.port.port,
            })
        })
        .collect();
    served.sort_by_key(|v| v["address"].as_str().unwrap_or_default().to_owned());
    let routes: Vec<serde_json::Value> = state
        .routes
        .routes()
        .map(|route| serde_json::to_value(route.view()).unwrap_or_default())
        .collect();
    let errors: Vec<serde_json::Value> = state
        .route_errors
        .iter()
        .map(|error| {
            serde_json::json!({
                "route": error.route.to_string(),
                "reason": error.reason(),
                "message": error.to_string(),
            })
        })
        .collect();
    serde_json::json!({
        "waypoint": format!("{}/{}", waypoint.name.namespace, waypoint.name.name),
        "identity": waypoint.identity.id.to_string(),
        "services": served,
        "routes": routes,
        "rejectedRoutes": errors,
        "endpoints": waypoint.runtime.endpoint_status(std::time::Instant::now()),
        "workers": waypoint.workers.view(),
    })
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = http::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(http::header::CONTENT_TYPE, value);
    }
    response
}
