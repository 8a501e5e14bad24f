//! A planned request's attempts: an endpoint by power of two choices among
//! those not ejected, a slot of its circuit breaker, the backend request
//! timeout, and retries within the route's retry policy and budget; each
//! attempt's result read for the endpoint's health and whether to retry.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Version, header};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use mesh_core::{
    route::{Retry, RouteRule},
    service::ServiceKey,
};

use super::{HOP_BY_HOP, MAX_RETRY_BODY, Plan, RequestEnd, backend_key, host_of, text};
use crate::{
    Waypoint,
    flow::{Body, BodyError, Protocol},
    resilience::outlier::Outcome,
    runtime::RouteRuntime,
};

/// Attempts until a response that is not retried, within the timeouts,
/// the retry policy and its budget.
#[expect(
    clippy::too_many_lines,
    reason = "the attempt loop reads best in one place; each step is a helper"
)]
pub(super) async fn forward(
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
            (None, Some(body)) => body.map_err(BodyError::from).boxed(),
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

type Sent = Option<Result<Response<Body>, crate::upstream::pool::SendError>>;

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
