//! One HTTP request through the waypoint, in order: trace context, HTTP
//! authorization (403 naming the policy), route selection (Gateway API
//! precedence; no route attached: the service itself), the route's rate
//! limit (429), fault injection, redirect, header filters, the weighted
//! backend, then attempts: an endpoint by power of two choices on least
//! requests among those not ejected, its circuit breaker, the backend
//! request timeout, and retries within the route's retry budget
//! (`forward`). Every request is counted in Istio's metrics and logged on
//! one access-log line.
//!
//! Timeouts cover the whole response: past its deadline a response still
//! waiting for its headers gets 504, one whose body is still streaming is
//! cut ([`deadline`](crate::deadline)). A route without timeouts never cuts
//! a stream (gRPC server streaming).

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full};
use hyper::{body::Incoming, service::service_fn};
use mesh_core::{
    policy::HttpAttributes,
    route::{Backend, RequestView, RouteRule, Selected},
    service::ServiceKey,
};

use crate::{
    Waypoint, authz,
    flow::{Body, Protocol, StreamInfo, access_log},
    metrics::RequestLabels,
    runtime::{RouteRuntime, RouteRuntimeRef},
    trace::TraceContext,
};

mod forward;

use forward::forward;

/// Largest request body held for retries; larger ones stream and are not
/// retried.
pub const MAX_RETRY_BODY: usize = 64 * 1024;

/// Headers that belong to one hop and are not forwarded.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
];

/// How a request ended, for metrics and the access log.
#[derive(Debug, Default)]
struct RequestEnd {
    flags: &'static str,
    backend: Option<ServiceKey>,
    endpoint: Option<SocketAddr>,
    attempts: u32,
    route: Option<String>,
    denied_by: Option<String>,
}

/// The hyper service of one inbound connection.
#[must_use]
pub fn service(
    waypoint: Arc<Waypoint>,
    info: Arc<StreamInfo>,
    protocol: Protocol,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<Body>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Body>, Infallible>> + Send,
> + Clone {
    service_fn(move |request| {
        let (waypoint, info) = (waypoint.clone(), info.clone());
        async move { Ok::<_, Infallible>(handle(&waypoint, &info, protocol, request).await) }
    })
}

async fn handle(
    waypoint: &Waypoint,
    info: &StreamInfo,
    protocol: Protocol,
    request: Request<Incoming>,
) -> Response<Body> {
    let started = Instant::now();
    waypoint.workers.request(waypoint.worker);
    let logged = waypoint.config.access_log.then(|| {
        let path = request
            .uri()
            .path_and_query()
            .map_or_else(|| "/".to_owned(), ToString::to_string);
        (request.method().clone(), path)
    });
    let trace = TraceContext::continue_or_start(request.headers());
    let mut outcome = RequestEnd {
        flags: "-",
        ..RequestEnd::default()
    };
    let response = proxy(waypoint, info, protocol, request, &trace, &mut outcome).await;
    let status = response.status();
    let labels = labels(info, protocol, status, &outcome);
    let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    waypoint.metrics.request(&labels, elapsed_ms);
    if let Some((method, path)) = logged {
        access_log(&serde_json::json!({
            "protocol": protocol.as_str(),
            "method": method.as_str(),
            "path": path,
            "status": status.as_u16(),
            "flags": outcome.flags,
            "src": info.client.to_string(),
            "source_principal": info.peer.to_string(),
            "service": info.served.service.to_string(),
            "route": outcome.route,
            "backend": outcome.backend.as_ref().map(ToString::to_string),
            "endpoint": outcome.endpoint.map(|e| e.to_string()),
            "attempts": outcome.attempts,
            "denied_by": outcome.denied_by,
            "trace_id": trace.trace_id,
            "duration_ms": elapsed_ms,
        }));
    }
    response
}

fn labels(
    info: &StreamInfo,
    protocol: Protocol,
    status: StatusCode,
    outcome: &RequestEnd,
) -> RequestLabels {
    let mut labels = info.labels.clone();
    if let Some(backend) = &outcome.backend {
        labels.destination_backend = backend.name.as_str().into();
    }
    labels.request_protocol = protocol.as_str();
    labels.response_code = status.as_u16();
    labels.response_flags = outcome.flags;
    labels
}

async fn proxy(
    waypoint: &Waypoint,
    info: &StreamInfo,
    protocol: Protocol,
    request: Request<Incoming>,
    trace: &TraceContext,
    outcome: &mut RequestEnd,
) -> Response<Body> {
    let mut plan = match plan(waypoint, info, request, outcome).await {
        Ok(plan) => plan,
        Err(answered) => return answered,
    };
    trace.inject(&mut plan.parts.headers);
    forward(waypoint, protocol, plan, outcome).await
}

/// Where a request goes, once the waypoint has decided to forward it.
struct Plan {
    parts: http::request::Parts,
    body: Option<Incoming>,
    /// The route and rule it matched; `None`: no route, the service itself.
    selected: Option<Selected>,
    route_runtime: Option<Arc<RouteRuntime>>,
    backend: Backend,
    endpoints: Vec<SocketAddr>,
}

impl Plan {
    fn rule(&self) -> Option<&RouteRule> {
        self.selected.as_ref().map(Selected::rule)
    }

    /// The balancer of the backend, with the route's outlier settings.
    fn balancer(
        &self,
        waypoint: &Waypoint,
        backend_key: &ServiceKey,
    ) -> Arc<crate::resilience::balancer::LeastRequest<SocketAddr>> {
        let route_ref = self
            .selected
            .as_ref()
            .zip(self.route_runtime.as_deref())
            .map(|(selected, runtime)| RouteRuntimeRef {
                key: &selected.route.key,
                runtime,
            });
        waypoint.runtime.balancer(
            route_ref.as_ref(),
            backend_key,
            self.backend.port,
            &self.endpoints,
        )
    }
}

/// Authorization, route, rate limit, faults, redirect, request filters
/// and the backend: a plan to forward, or the waypoint's own answer.
async fn plan(
    waypoint: &Waypoint,
    info: &StreamInfo,
    request: Request<Incoming>,
    outcome: &mut RequestEnd,
) -> Result<Plan, Response<Body>> {
    let state = waypoint.state.current();
    let (mut parts, body) = request.into_parts();
    let host = host_of(&parts.headers, &parts.uri);
    // The request's attributes are gathered only when a policy applies.
    if authz::applies(&state, info) {
        let attributes = HttpAttributes {
            method: parts.method.clone(),
            path: parts.uri.path().to_owned(),
            host: host.clone(),
            headers: parts.headers.clone(),
        };
        let verdict = authz::check(&state, info, Some(attributes));
        if !authz::allowed(&verdict) {
            outcome.denied_by = Some(verdict.policy.clone());
            return Err(text(
                StatusCode::FORBIDDEN,
                format!("RBAC: access denied by policy {}\n", verdict.policy),
            ));
        }
    }
    let view = RequestView {
        method: &parts.method,
        path: parts.uri.path(),
        query: parts.uri.query(),
        headers: &parts.headers,
        host: host.as_deref(),
    };
    let served = &info.served;
    let selected = state.routes.select(
        &served.service.namespace,
        &served.service.name,
        served.port.port,
        &view,
    );
    if selected.is_none()
        && state
            .routes
            .has_parent(&served.service.namespace, &served.service.name)
    {
        outcome.flags = "NR";
        return Err(text(
            StatusCode::NOT_FOUND,
            "no route matched the request\n".to_owned(),
        ));
    }
    let route_runtime = selected.as_ref().map(|s| waypoint.runtime.route(&s.route));
    if let Some(selected) = &selected {
        outcome.route = Some(selected.route.key.to_string());
    }
    if let Some(runtime) = &route_runtime {
        gate(runtime, outcome).await?;
    }
    let backend = if let Some(selected) = &selected {
        let rule = selected.rule();
        if let Some((status, location)) = rule.redirect(&view, selected.matched(), "http") {
            let mut response = text(status, String::new());
            if let Ok(location) = HeaderValue::from_str(&location) {
                response.headers_mut().insert(header::LOCATION, location);
            }
            return Err(response);
        }
        for filter in &rule.filters {
            filter.apply_request_headers(&mut parts.headers);
        }
        rule.pick_backend(fastrand::u64(..))
            .cloned()
            .ok_or_else(|| {
                text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the route has no backend\n".to_owned(),
                )
            })?
    } else {
        Backend {
            namespace: served.service.namespace.clone(),
            name: served.service.name.clone(),
            port: served.port.port,
            weight: 1,
        }
    };
    let backend_key = backend_key(&backend);
    outcome.backend = Some(backend_key.clone());
    for name in HOP_BY_HOP {
        parts.headers.remove(*name);
    }
    let endpoints = state
        .endpoints(&backend_key, backend.port, info.dialled.is_ipv4())
        .unwrap_or_default();
    Ok(Plan {
        parts,
        body: Some(body),
        selected,
        route_runtime,
        backend,
        endpoints,
    })
}

/// The route's rate limit and injected faults.
async fn gate(runtime: &RouteRuntime, outcome: &mut RequestEnd) -> Result<(), Response<Body>> {
    if !runtime.admit(Instant::now()) {
        outcome.flags = "RL";
        return Err(text(
            StatusCode::TOO_MANY_REQUESTS,
            "local rate limit exceeded\n".to_owned(),
        ));
    }
    if let Some(status) = runtime.fault_abort() {
        outcome.flags = "FI";
        return Err(text(status, "fault filter abort\n".to_owned()));
    }
    if let Some(delay) = runtime.fault_delay() {
        tokio::time::sleep(delay).await;
    }
    Ok(())
}

fn backend_key(backend: &Backend) -> ServiceKey {
    ServiceKey {
        namespace: backend.namespace.clone(),
        name: backend.name.clone(),
    }
}

/// The request's host: `Host`, else the URI's authority (HTTP/2).
fn host_of(headers: &HeaderMap, uri: &http::Uri) -> Option<String> {
    headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| uri.authority().map(|a| a.as_str().to_owned()))
}

/// A plain-text response the waypoint writes itself.
fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut response = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}
