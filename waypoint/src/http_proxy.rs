//! One HTTP request through the waypoint, in order: trace context, HTTP
//! authorization (403 naming the policy), route selection (Gateway API
//! precedence; no route attached: the service itself), the route's rate
//! limit (429), fault injection, redirect, header filters, the weighted
//! backend, then attempts: an endpoint by power of two choices on least
//! requests among those not ejected, its circuit breaker, the backend
//! request timeout, and retries within the route's retry budget. Every
//! request is counted in Istio's metrics and logged on one access-log line.
//!
//! Timeouts cover the whole response: past its deadline a response still
//! waiting for its headers gets 504, one whose body is still streaming is
//! cut ([`deadline`](crate::deadline)). A route without timeouts never cuts
//! a stream (gRPC server streaming).

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Version, header};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{body::Incoming, service::service_fn};
use mesh_core::{
    policy::HttpAttributes,
    route::{Backend, RequestView, Retry, RouteRule, Selected},
    service::ServiceKey,
};

use crate::{
    Waypoint, authz,
    inbound::{Protocol, StreamInfo},
    metrics::RequestLabels,
    resilience::outlier::Outcome,
    runtime::{RouteRuntime, RouteRuntimeRef},
    trace::TraceContext,
    upstream::Body,
};

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
    waypoint.metrics.requests.get_or_create(&labels).inc();
    waypoint
        .metrics
        .duration
        .get_or_create(&labels)
        .observe(elapsed_ms);
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

/// Writes one access-log line (JSON) to standard output.
pub fn access_log(line: &serde_json::Value) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
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

/// Attempts until a response that is not retried, within the timeouts,
/// the retry policy and its budget.
#[expect(
    clippy::too_many_lines,
    reason = "the attempt loop reads best in one place; each step is a helper"
)]
async fn forward(
    waypoint: &Waypoint,
    protocol: Protocol,
    mut plan: Plan,
    outcome: &mut RequestEnd,
) -> Response<Body> {
    let retry = plan.rule().and_then(|r| r.retry.clone());
    let timeouts = plan.rule().map(|r| r.timeouts.clone()).unwrap_or_default();
    let backend_key = backend_key(&plan.backend);
    let balancer = plan.balancer(waypoint, &backend_key);
    let limits = plan
        .route_runtime
        .as_ref()
        .map(|r| r.limits.clone())
        .unwrap_or_default();
    let mut body = plan.body.take();
    let held = match hold_for_retries(&mut body, retry.is_some(), &plan.parts.headers).await {
        Ok(held) => held,
        Err(answer) => return answer,
    };
    if let Some(runtime) = &plan.route_runtime {
        runtime.retry_budget.record_request(Instant::now());
    }
    let deadline = timeouts.request.map(|t| Instant::now() + t);
    let attempts = 1 + retry.as_ref().map_or(0, |r| r.attempts);
    let mut last: Option<Response<Body>> = None;
    // Retries go to another endpoint while there is one.
    let mut tried: Vec<SocketAddr> = Vec::new();
    for attempt in 1..=attempts {
        outcome.attempts = attempt;
        if attempt > 1
            && !may_retry(
                waypoint,
                plan.route_runtime.as_deref(),
                retry.as_ref(),
                attempt,
            )
            .await
        {
            break;
        }
        let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if remaining == Some(Duration::ZERO) {
            outcome.flags = "UT";
            return text(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream request timeout\n".to_owned(),
            );
        }
        let target = Target {
            balancer: &balancer,
            limits: &limits,
            key: &backend_key,
        };
        let (pick, permit) = match reserve(waypoint, &target, remaining, &tried, outcome).await {
            Ok(reserved) => reserved,
            Err(answer) => return answer,
        };
        let endpoint = *pick.endpoint();
        tried.push(endpoint);
        let upstream_body: Body = match (&held, body.take()) {
            (Some(bytes), _) => Full::new(bytes.clone())
                .map_err(|never| match never {})
                .boxed(),
            (None, Some(body)) => body.map_err(crate::upstream::BodyError::from).boxed(),
            (None, None) => break,
        };
        let per_try = match (timeouts.backend_request, remaining) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        // The attempt's deadline also bounds the response's body.
        let body_deadline = per_try.map(|limit| (tokio::time::Instant::now() + limit, limit));
        // The last attempt takes the headers; earlier ones send a copy.
        let headers = if attempt == attempts {
            std::mem::take(&mut plan.parts.headers)
        } else {
            plan.parts.headers.clone()
        };
        let result = match send(
            waypoint,
            protocol,
            (&plan.parts, headers),
            upstream_body,
            endpoint,
            per_try,
        )
        .await
        {
            Ok(result) => result,
            Err(answer) => return answer,
        };
        drop(permit);
        let now = Instant::now();
        let (health, retriable, response) = classify(
            result,
            &Context {
                held: held.is_some(),
                late: deadline.is_some_and(|d| d <= now),
                retry: retry.as_ref(),
                rule: plan.rule(),
                endpoint,
            },
            outcome,
        );
        if pick.finish(health, now) {
            waypoint.metrics.ejections.inc();
        }
        let response = match body_deadline {
            Some((at, limit)) => response.map(|body| {
                crate::deadline::limit(body, at, limit, waypoint.metrics.bodies_cut.clone())
            }),
            None => response,
        };
        if !retriable || attempt == attempts {
            return response;
        }
        last = Some(response);
    }
    last.unwrap_or_else(|| {
        outcome.flags = "UF";
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            "no upstream attempt could be made\n".to_owned(),
        )
    })
}

/// The backend an attempt goes to.
struct Target<'a> {
    balancer: &'a crate::resilience::balancer::LeastRequest<SocketAddr>,
    limits: &'a crate::resilience::circuit::Limits,
    key: &'a ServiceKey,
}

/// An endpoint for one attempt (another than those `tried`, while there is
/// one) and a slot of its circuit breaker.
async fn reserve(
    waypoint: &Waypoint,
    target: &Target<'_>,
    remaining: Option<Duration>,
    tried: &[SocketAddr],
    outcome: &mut RequestEnd,
) -> Result<
    (
        crate::resilience::balancer::Pick<SocketAddr>,
        crate::resilience::circuit::RequestPermit,
    ),
    Response<Body>,
> {
    let Some(pick) = target.balancer.pick_avoiding(Instant::now(), tried) else {
        outcome.flags = "UH";
        return Err(text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "no healthy upstream: {} has no ready endpoint\n",
                target.key
            ),
        ));
    };
    let endpoint = *pick.endpoint();
    outcome.endpoint = Some(endpoint);
    let breaker = waypoint.runtime.breaker(endpoint, target.limits);
    match breaker
        .acquire_request(remaining.unwrap_or(Duration::from_secs(30)))
        .await
    {
        Ok(permit) => Ok((pick, permit)),
        Err(overflow) => {
            outcome.flags = "UO";
            Err(text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{overflow}\n"),
            ))
        }
    }
}

/// Holds a small body in memory when retries may need to send it again;
/// a large or streaming one is sent once, as it comes.
async fn hold_for_retries(
    body: &mut Option<Incoming>,
    retries: bool,
    headers: &HeaderMap,
) -> Result<Option<Bytes>, Response<Body>> {
    let Some(small) = body.take_if(|b| retries && body_is_small(headers, b)) else {
        return Ok(None);
    };
    match Limited::new(small, MAX_RETRY_BODY).collect().await {
        Ok(collected) => Ok(Some(collected.to_bytes())),
        Err(_) => Err(text(
            StatusCode::BAD_REQUEST,
            "cannot read the request body\n".to_owned(),
        )),
    }
}

/// Whether attempt `attempt` (a retry) may go: the budget has one left;
/// then waits out the backoff.
async fn may_retry(
    waypoint: &Waypoint,
    runtime: Option<&RouteRuntime>,
    retry: Option<&Retry>,
    attempt: u32,
) -> bool {
    if !runtime.is_some_and(|r| r.retry_budget.try_withdraw(Instant::now())) {
        waypoint.metrics.retries_refused.inc();
        return false;
    }
    waypoint.metrics.retries.inc();
    if let Some(backoff) = retry.and_then(|r| r.backoff) {
        tokio::time::sleep(jittered(backoff, attempt)).await;
    }
    true
}

/// What deciding on an attempt's result needs.
struct Context<'a> {
    /// The body is held, so the request can be sent again.
    held: bool,
    /// The request's timeout has passed.
    late: bool,
    retry: Option<&'a Retry>,
    rule: Option<&'a RouteRule>,
    endpoint: SocketAddr,
}

type Sent = Option<Result<Response<Body>, crate::pool::SendError>>;

/// How an attempt went: the endpoint's health, whether to retry, and the
/// response to give if not (`None` result: the attempt timed out).
fn classify(
    result: Sent,
    context: &Context<'_>,
    outcome: &mut RequestEnd,
) -> (Outcome, bool, Response<Body>) {
    match result {
        None => {
            outcome.flags = "UT";
            let answer = text(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream request timeout\n".to_owned(),
            );
            (Outcome::ServerError, context.held && !context.late, answer)
        }
        Some(Err(error)) => {
            tracing::debug!(endpoint = %context.endpoint, error = %error_chain(&error), "backend request failed");
            outcome.flags = "UF";
            let answer = text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("upstream connect error: {}\n", error_chain(&error)),
            );
            (Outcome::ConnectFailure, context.held, answer)
        }
        Some(Ok(response)) => {
            outcome.flags = "-";
            let status = response.status();
            let retriable = context.held
                && context
                    .retry
                    .is_some_and(|r| r.codes.contains(&status.as_u16()));
            let mut response = response;
            strip_hop_by_hop(response.headers_mut());
            for filter in context.rule.into_iter().flat_map(|r| &r.filters) {
                filter.apply_response_headers(response.headers_mut());
            }
            let health = if status.is_server_error() {
                Outcome::ServerError
            } else {
                Outcome::Success
            };
            (health, retriable, response)
        }
    }
}

/// Sends one attempt, waiting at most `per_try` for the response's
/// headers (`None` in the result: it timed out).
async fn send(
    waypoint: &Waypoint,
    protocol: Protocol,
    (parts, headers): (&http::request::Parts, HeaderMap),
    body: Body,
    endpoint: SocketAddr,
    per_try: Option<Duration>,
) -> Result<Sent, Response<Body>> {
    let Some(upstream) = upstream_request(parts, headers, body, endpoint, protocol) else {
        return Err(text(
            StatusCode::BAD_REQUEST,
            "bad request target\n".to_owned(),
        ));
    };
    let sent = waypoint
        .upstreams
        .send(endpoint, upstream, protocol == Protocol::Http2);
    Ok(match per_try {
        Some(limit) => tokio::time::timeout(limit, sent).await.ok(),
        None => Some(sent.await),
    })
}

/// The request to send to `endpoint`: the client's method and path, with
/// `headers` (the client's, after the route's filters), in the client's
/// HTTP version. HTTP/1.1 goes in origin form (the client's `Host` header is
/// kept); HTTP/2 keeps the client's authority (`Host`, else `:authority`),
/// or names the endpoint when it had none.
fn upstream_request(
    parts: &http::request::Parts,
    headers: HeaderMap,
    body: Body,
    endpoint: SocketAddr,
    protocol: Protocol,
) -> Option<Request<Body>> {
    let mut upstream = Request::new(body);
    *upstream.method_mut() = parts.method.clone();
    let path_and_query = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    let uri = if protocol == Protocol::Http2 {
        *upstream.version_mut() = Version::HTTP_2;
        let authority = match host_of(&headers, &parts.uri) {
            Some(host) => http::uri::Authority::try_from(host).ok()?,
            None => http::uri::Authority::try_from(endpoint.to_string()).ok()?,
        };
        http::Uri::builder()
            .scheme(http::uri::Scheme::HTTP)
            .authority(authority)
            .path_and_query(path_and_query)
            .build()
            .ok()?
    } else {
        *upstream.version_mut() = Version::HTTP_11;
        http::Uri::from(path_and_query)
    };
    *upstream.uri_mut() = uri;
    *upstream.headers_mut() = headers;
    Some(upstream)
}

/// The request's host: `Host`, else the URI's authority (HTTP/2).
fn host_of(headers: &HeaderMap, uri: &http::Uri) -> Option<String> {
    headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| uri.authority().map(|a| a.as_str().to_owned()))
}

/// Whether a body is known to fit [`MAX_RETRY_BODY`].
fn body_is_small(headers: &HeaderMap, body: &Incoming) -> bool {
    use hyper::body::Body as _;
    if body.is_end_stream() {
        return true;
    }
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .is_some_and(|n| n <= MAX_RETRY_BODY)
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for name in HOP_BY_HOP {
        headers.remove(*name);
    }
}

/// The backoff before attempt `attempt` (2 = first retry): doubling from
/// `base`, with up to 50% jitter, at most 10 × `base`.
fn jittered(base: Duration, attempt: u32) -> Duration {
    let doubled = base.saturating_mul(1 << attempt.saturating_sub(2).min(8));
    let capped = doubled.min(base.saturating_mul(10));
    capped.mul_f64(0.5 + fastrand::f64() / 2.0)
}

/// An error and its causes, on one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
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

#[cfg(test)]
mod tests {
    use super::jittered;
    use std::time::Duration;

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let base = Duration::from_millis(100);
        for _ in 0..100 {
            let first = jittered(base, 2);
            assert!(first >= Duration::from_millis(50) && first <= base);
            let late = jittered(base, 30);
            assert!(late <= Duration::from_secs(1));
        }
    }
}
