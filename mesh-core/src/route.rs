//! L7 routing: Gateway API `HTTPRoute` objects with a Service as parent
//! (the GAMMA pattern), checked once when they are loaded and compiled for
//! the waypoint.
//!
//! ```yaml
//! apiVersion: gateway.networking.k8s.io/v1
//! kind: HTTPRoute
//! metadata:
//!   name: reviews-canary
//!   namespace: shop
//!   annotations:                              # ambit's extensions, all optional
//!     ambit.dev/fault-abort-status: "503"
//!     ambit.dev/fault-abort-percent: "5"
//!     ambit.dev/rate-limit: "100"
//! spec:
//!   parentRefs: [{group: "", kind: Service, name: reviews, port: 80}]
//!   rules:
//!     - matches: [{path: {type: PathPrefix, value: /api}, method: GET}]
//!       backendRefs:
//!         - {name: reviews-v1, port: 80, weight: 90}
//!         - {name: reviews-v2, port: 80, weight: 10}
//!       timeouts: {request: 2s, backendRequest: 500ms}
//!       retry: {codes: [503], attempts: 2, backoff: 25ms}
//! ```
//!
//! **Supported**: `parentRefs` to existing Services of the route's
//! namespace (producer routes; a route attached to another namespace's
//! Service, a consumer route, is refused, since the waypoint cannot tell
//! one namespace's clients from another's), optionally limited to a port;
//! matches on path (`Exact`, `PathPrefix`, `RegularExpression`, anchored to
//! the whole path), headers and query parameters (`Exact`,
//! `RegularExpression`) and method; weighted
//! `backendRefs` to Services of the route's namespace; the filters
//! `RequestHeaderModifier`, `ResponseHeaderModifier` and `RequestRedirect`;
//! `timeouts.request` and `timeouts.backendRequest`; `retry` (codes,
//! attempts, backoff; codes default to 500, 502, 503 and 504, attempts to 1,
//! at most 10; no backoff unless given).
//! Between routes attached to one Service, Gateway API's precedence decides:
//! an exact path, then the longest prefix, then a regular expression; then a
//! method match; then more header matches; then more query matches; then
//! the oldest route, then the route's namespace/name; then rule order.
//!
//! **ambit's annotations** (Gateway API has no fields for these):
//!
//! | annotation | meaning | default |
//! | --- | --- | --- |
//! | `ambit.dev/fault-delay` | delay injected (duration) | none |
//! | `ambit.dev/fault-delay-percent` | share of requests delayed (0-100) | 100 |
//! | `ambit.dev/fault-abort-status` | status injected (400-599) | none |
//! | `ambit.dev/fault-abort-percent` | share of requests aborted (0-100) | 100 |
//! | `ambit.dev/rate-limit` | requests per second, per waypoint | none |
//! | `ambit.dev/rate-limit-burst` | bucket size | the rate, rounded up |
//! | `ambit.dev/retry-budget-percent` | retries may add this share of requests | 20 |
//! | `ambit.dev/retry-budget-min-per-second` | retries always allowed per second | 10 |
//! | `ambit.dev/max-connections` | per backend endpoint | unlimited |
//! | `ambit.dev/max-pending-requests` | per backend endpoint | unlimited |
//! | `ambit.dev/max-requests` | in flight per backend endpoint | unlimited |
//! | `ambit.dev/outlier-consecutive-failures` | 5xx or connect failures in a row that eject (0: never) | 5 |
//! | `ambit.dev/outlier-base-ejection` | first ejection's length | 30s |
//! | `ambit.dev/outlier-max-ejection-percent` | at most this share ejected | 50 |
//!
//! Durations use Gateway API's format: `1h`, `30s`, `250ms`, `1m30s`.
//!
//! **A route that is wrong** (an unknown backend or parent Service, weights
//! that sum to 0, a bad regular expression, an unsupported filter, an
//! unknown `ambit.dev/` annotation, an unknown field) is rejected with an error naming the route
//! and the field, and a Gateway API reason for its status. A route that was
//! good and turns bad keeps its last good version ([`RouteTable::apply`]).

use std::{collections::BTreeMap, fmt, time::Duration};

use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use regex::Regex;
use serde::Serialize;

mod compile;
mod filters;
mod matching;
mod raw;
mod table;
#[cfg(test)]
mod tests;

pub use compile::{compile, parse_duration};
pub use table::{RouteTable, RouteView, RuleView, Selected};

/// The `apiVersion`s a route may declare.
pub const API_VERSIONS: &[&str] = &[
    "gateway.networking.k8s.io/v1",
    "gateway.networking.k8s.io/v1beta1",
];

/// Status codes retried when a `retry` names none.
pub const DEFAULT_RETRY_CODES: &[u16] = &[500, 502, 503, 504];

/// A route's namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct RouteKey {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

/// Why a route was rejected, in Gateway API's terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Reason {
    /// A field's value is malformed or contradicts another.
    Invalid,
    /// A kind or filter ambit does not implement.
    UnsupportedValue,
    /// A `backendRef` names a Service that does not exist.
    BackendNotFound,
    /// A `backendRef` in another namespace (no `ReferenceGrant` support).
    RefNotPermitted,
    /// The route has no `parentRef`, or its parent Service does not exist.
    NoMatchingParent,
}

/// Why a route was rejected: the route, the field, what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize)]
#[error("HTTP route {route}: {field}: {message}")]
pub struct RouteError {
    /// The route (`?/?` when its metadata cannot be read).
    pub route: RouteKey,
    /// The field, as a path from the top of the object.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
    /// The status reason.
    pub kind: Reason,
}

/// A compiled route.
#[derive(Clone, Debug)]
pub struct Route {
    /// namespace/name.
    pub key: RouteKey,
    /// `metadata.creationTimestamp`, for precedence (RFC 3339 sorts as text).
    pub creation: Option<String>,
    /// The Services it attaches to.
    pub parents: Vec<ParentRef>,
    /// Host names requests must carry (`Host`), if any: exact or `*.suffix`.
    pub hostnames: Vec<String>,
    /// Its rules, in order.
    pub rules: Vec<RouteRule>,
    /// ambit's settings from the route's annotations.
    pub policy: RoutePolicy,
}

/// A Service a route attaches to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ParentRef {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Only this port of it, if given.
    pub port: Option<u16>,
}

/// One rule: a request matching any of `matches` goes to `backends`.
#[derive(Clone, Debug)]
pub struct RouteRule {
    /// The rule's optional name.
    pub name: Option<String>,
    /// Its matches; never empty (none written: every path).
    pub matches: Vec<RouteMatch>,
    /// Its filters, in order.
    pub filters: Vec<Filter>,
    /// Its weighted backends (empty only for a redirect).
    pub backends: Vec<Backend>,
    /// Its timeouts.
    pub timeouts: Timeouts,
    /// Its retry policy.
    pub retry: Option<Retry>,
}

/// One way a request matches a rule: every part must hold.
#[derive(Clone, Debug)]
pub struct RouteMatch {
    /// The path.
    pub path: PathMatch,
    /// Headers that must be present with matching values.
    pub headers: Vec<HeaderMatch>,
    /// Query parameters that must be present with matching values.
    pub query: Vec<QueryMatch>,
    /// The method, if any.
    pub method: Option<Method>,
}

/// How a path matches.
#[derive(Clone, Debug)]
pub enum PathMatch {
    /// Exactly this path.
    Exact(String),
    /// This prefix, on whole segments (`/api` matches `/api` and `/api/x`,
    /// not `/apix`).
    Prefix(String),
    /// The whole path matches this expression.
    Regex(Regex),
}

/// How a header or query value matches.
#[derive(Clone, Debug)]
pub enum StringMatch {
    /// Exactly this.
    Exact(String),
    /// The whole value matches this expression.
    Regex(Regex),
}

/// A header condition.
#[derive(Clone, Debug)]
pub struct HeaderMatch {
    /// The header (case-insensitive).
    pub name: HeaderName,
    /// Its value.
    pub value: StringMatch,
}

/// A query-parameter condition.
#[derive(Clone, Debug)]
pub struct QueryMatch {
    /// The parameter (case-sensitive).
    pub name: String,
    /// Its value.
    pub value: StringMatch,
}

/// A filter of a rule.
#[derive(Clone, Debug)]
pub enum Filter {
    /// Changes the request's headers before it is sent on.
    RequestHeaders(HeaderModifier),
    /// Changes the response's headers before it is returned.
    ResponseHeaders(HeaderModifier),
    /// Answers with a redirect instead of forwarding.
    Redirect(Redirect),
}

/// Header changes: set (replace), add (append), remove.
#[derive(Clone, Debug, Default)]
pub struct HeaderModifier {
    /// Replaced or added.
    pub set: Vec<(HeaderName, HeaderValue)>,
    /// Appended.
    pub add: Vec<(HeaderName, HeaderValue)>,
    /// Removed.
    pub remove: Vec<HeaderName>,
}

/// A redirect's parts; those not given come from the request.
#[derive(Clone, Debug)]
pub struct Redirect {
    /// `http` or `https`.
    pub scheme: Option<String>,
    /// The host name.
    pub hostname: Option<String>,
    /// The new path.
    pub path: Option<PathRewrite>,
    /// The port.
    pub port: Option<u16>,
    /// 301, 302 (default), 303, 307 or 308.
    pub status: StatusCode,
}

/// How a redirect rewrites the path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathRewrite {
    /// The whole path becomes this.
    Full(String),
    /// The matched prefix becomes this.
    Prefix(String),
}

/// A weighted backend: a Service port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Backend {
    /// The Service's namespace (the route's).
    pub namespace: String,
    /// The Service's name.
    pub name: String,
    /// The Service's port.
    pub port: u16,
    /// Its share of the rule's requests.
    pub weight: u32,
}

/// A rule's timeouts; `None`: none.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Timeouts {
    /// From the request's arrival to the response's headers, retries
    /// included.
    pub request: Option<Duration>,
    /// Each attempt to a backend.
    pub backend_request: Option<Duration>,
}

/// A rule's retries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retry {
    /// Response statuses that are retried (connect failures always are).
    pub codes: Vec<u16>,
    /// Retries after the first attempt.
    pub attempts: u32,
    /// The first retry's backoff (doubling, jittered).
    pub backoff: Option<Duration>,
}

/// ambit's settings of a route, from its annotations.
#[derive(Clone, Debug, PartialEq)]
pub struct RoutePolicy {
    /// Fault injection.
    pub fault: Fault,
    /// Local rate limit.
    pub rate_limit: Option<RateLimit>,
    /// How much retries may add.
    pub retry_budget: RetryBudgetPolicy,
    /// Circuit-breaker limits per backend endpoint.
    pub circuit_breaker: CircuitBreakerPolicy,
    /// Outlier detection for the backends.
    pub outlier: OutlierPolicy,
}

/// Faults injected.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Fault {
    /// A delay before forwarding.
    pub delay: Option<FaultDelay>,
    /// An answer instead of forwarding.
    pub abort: Option<FaultAbort>,
}

/// An injected delay.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultDelay {
    /// How long.
    pub duration: Duration,
    /// Share of requests, 0-100.
    pub percent: f64,
}

/// An injected failure.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultAbort {
    /// The status answered.
    pub status: u16,
    /// Share of requests, 0-100.
    pub percent: f64,
}

/// A token bucket.
#[derive(Clone, Debug, PartialEq)]
pub struct RateLimit {
    /// Refill rate.
    pub requests_per_second: f64,
    /// Size.
    pub burst: u32,
}

/// A retry budget.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryBudgetPolicy {
    /// Retries may add this share (percent) of the requests.
    pub percent: f64,
    /// Retries always allowed per second.
    pub min_per_second: u32,
}

/// Circuit-breaker limits; `None`: unlimited.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CircuitBreakerPolicy {
    /// Connections per endpoint.
    pub max_connections: Option<u32>,
    /// Requests waiting per endpoint.
    pub max_pending_requests: Option<u32>,
    /// Requests in flight per endpoint.
    pub max_requests: Option<u32>,
}

/// Outlier detection settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutlierPolicy {
    /// Failures in a row that eject; 0: never.
    pub consecutive_failures: u32,
    /// The first ejection's length.
    pub base_ejection: Duration,
    /// At most this share (percent) of endpoints ejected.
    pub max_ejection_percent: u32,
}

impl Default for RoutePolicy {
    fn default() -> Self {
        Self {
            fault: Fault::default(),
            rate_limit: None,
            retry_budget: RetryBudgetPolicy {
                percent: 20.0,
                min_per_second: 10,
            },
            circuit_breaker: CircuitBreakerPolicy::default(),
            outlier: OutlierPolicy {
                consecutive_failures: 5,
                base_ejection: Duration::from_secs(30),
                max_ejection_percent: 50,
            },
        }
    }
}

/// A request, as matching reads it.
#[derive(Clone, Copy, Debug)]
pub struct RequestView<'a> {
    /// The method.
    pub method: &'a Method,
    /// The path, without the query.
    pub path: &'a str,
    /// The query, without `?`.
    pub query: Option<&'a str>,
    /// The headers.
    pub headers: &'a HeaderMap,
    /// `Host` or `:authority`, maybe with a port.
    pub host: Option<&'a str>,
}

// === impl RouteKey ===

impl fmt::Display for RouteKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

// === impl Reason ===

impl Reason {
    /// The reason as a status condition writes it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Invalid => "Invalid",
            Self::UnsupportedValue => "UnsupportedValue",
            Self::BackendNotFound => "BackendNotFound",
            Self::RefNotPermitted => "RefNotPermitted",
            Self::NoMatchingParent => "NoMatchingParent",
        }
    }
}

impl RouteError {
    /// The Gateway API reason for the route's status.
    #[must_use]
    pub fn reason(&self) -> &'static str {
        self.kind.as_str()
    }
}

// === impl Route ===

impl Route {
    /// A description for the admin view.
    #[must_use]
    pub fn view(&self) -> RouteView {
        RouteView {
            route: self.key.to_string(),
            parents: self
                .parents
                .iter()
                .map(|p| match p.port {
                    Some(port) => format!("{}/{}:{port}", p.namespace, p.name),
                    None => format!("{}/{}", p.namespace, p.name),
                })
                .collect(),
            rules: self.rules.iter().map(RouteRule::view).collect(),
        }
    }
}

// === impl RouteRule ===

impl RouteRule {
    /// Picks a backend by weight: `draw` is a random number.
    #[must_use]
    pub fn pick_backend(&self, draw: u64) -> Option<&Backend> {
        let total: u64 = self.backends.iter().map(|b| u64::from(b.weight)).sum();
        if total == 0 {
            return None;
        }
        let mut point = draw % total;
        for backend in &self.backends {
            let weight = u64::from(backend.weight);
            if point < weight {
                return Some(backend);
            }
            point -= weight;
        }
        None
    }

    /// The redirect of this rule for `request`, which matched `matched`:
    /// the status and `Location`.
    #[must_use]
    pub fn redirect(
        &self,
        request: &RequestView<'_>,
        matched: &RouteMatch,
        default_scheme: &str,
    ) -> Option<(StatusCode, String)> {
        let redirect = self.filters.iter().find_map(|f| match f {
            Filter::Redirect(r) => Some(r),
            _ => None,
        })?;
        Some((
            redirect.status,
            redirect.location(request, matched, default_scheme),
        ))
    }

    fn view(&self) -> RuleView {
        let mut timeouts = BTreeMap::new();
        if let Some(t) = self.timeouts.request {
            timeouts.insert("request", format!("{t:?}"));
        }
        if let Some(t) = self.timeouts.backend_request {
            timeouts.insert("backendRequest", format!("{t:?}"));
        }
        RuleView {
            matches: self.matches.iter().map(ToString::to_string).collect(),
            backends: self
                .backends
                .iter()
                .map(|b| format!("{}/{}:{} weight {}", b.namespace, b.name, b.port, b.weight))
                .collect(),
            filters: self
                .filters
                .iter()
                .map(|f| match f {
                    Filter::RequestHeaders(_) => "RequestHeaderModifier",
                    Filter::ResponseHeaders(_) => "ResponseHeaderModifier",
                    Filter::Redirect(_) => "RequestRedirect",
                })
                .collect(),
            timeouts,
            retry: self.retry.as_ref().map(|r| {
                format!(
                    "{} attempts on {:?}, backoff {:?}",
                    r.attempts, r.codes, r.backoff
                )
            }),
        }
    }
}

impl fmt::Display for RouteMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.path {
            PathMatch::Exact(p) => write!(f, "path = {p}")?,
            PathMatch::Prefix(p) => write!(f, "path prefix {p}")?,
            PathMatch::Regex(r) => write!(f, "path ~ {}", r.as_str())?,
        }
        if let Some(method) = &self.method {
            write!(f, ", method {method}")?;
        }
        for header in &self.headers {
            write!(f, ", header {}", header.name)?;
        }
        for query in &self.query {
            write!(f, ", query {}", query.name)?;
        }
        Ok(())
    }
}

/// `host:port` → (host, port); IPv6 literals keep their brackets.
fn split_host(authority: &str) -> (&str, Option<u16>) {
    match authority.rsplit_once(':') {
        Some((host, port))
            if !host.ends_with(':') && (!host.contains(':') || host.ends_with(']')) =>
        {
            (host, port.parse().ok())
        }
        _ => (authority, None),
    }
}
