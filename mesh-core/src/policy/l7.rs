//! What only a waypoint sees: a request's method, path, host and headers,
//! how the HTTP fields of a policy (`methods`, `paths`, `hosts`,
//! `when: request.headers[...]`) are checked when they are loaded, and how
//! they match a request.

use std::borrow::Cow;

use super::{HeaderCondition, Operation, Pattern};

/// What a waypoint knows of an HTTP request.
///
/// ```
/// use mesh_core::policy::HttpAttributes;
///
/// let get = HttpAttributes::new(http::Method::GET, "/api/items?page=2")
///     .with_host("backend.shop.svc.cluster.local:8080");
/// assert_eq!(get.path, "/api/items");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpAttributes {
    /// The method.
    pub method: http::Method,
    /// The path, without the query (a query left on it is ignored when
    /// matching).
    pub path: String,
    /// `Host` or `:authority`, as sent (matching ignores its case).
    pub host: Option<String>,
    /// The headers.
    pub headers: http::HeaderMap,
}

// === impl HttpAttributes ===

impl HttpAttributes {
    /// A request for `path` (a query is dropped) with `method`, no host
    /// and no headers.
    #[must_use]
    pub fn new(method: http::Method, path: &str) -> Self {
        Self {
            method,
            path: without_query(path).to_owned(),
            host: None,
            headers: http::HeaderMap::new(),
        }
    }

    /// The same request with this host (`Host` or `:authority`).
    #[must_use]
    pub fn with_host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(host.into());
        self
    }

    /// The same request with these headers.
    #[must_use]
    pub fn with_headers(mut self, headers: http::HeaderMap) -> Self {
        self.headers = headers;
        self
    }

    /// A request's attributes from its head: the method, the URI's path,
    /// the `Host` header (else the URI's authority, as HTTP/2 sends it)
    /// and a copy of the headers.
    #[must_use]
    pub fn from_parts(parts: &http::request::Parts) -> Self {
        let host = parts
            .headers
            .get(http::header::HOST)
            .and_then(|value| value.to_str().ok())
            .or_else(|| parts.uri.authority().map(http::uri::Authority::as_str));
        Self {
            method: parts.method.clone(),
            path: parts.uri.path().to_owned(),
            host: host.map(ToOwned::to_owned),
            headers: parts.headers.clone(),
        }
    }
}

/// Whether `http` matches the HTTP fields of `operation` (its ports are
/// the caller's).
pub(super) fn operation_matches(operation: &Operation, http: &HttpAttributes) -> bool {
    let method = http.method.as_str();
    let path = without_query(&http.path);
    let host = http.host.as_deref().map(lowercase);
    let host = host.as_deref();
    // A host pattern never matches a request without one; notHosts then
    // exclude nothing.
    let host_in = |patterns: &[Pattern]| host.is_some_and(|h| host_matches(patterns, h));
    (operation.methods.is_empty() || operation.methods.iter().any(|m| m == method))
        && !operation.not_methods.iter().any(|m| m == method)
        && (operation.paths.is_empty() || operation.paths.iter().any(|p| p.matches(path)))
        && !operation.not_paths.iter().any(|p| p.matches(path))
        && (operation.hosts.is_empty() || host_in(&operation.hosts))
        && !host_in(&operation.not_hosts)
}

/// Whether `http` satisfies a `request.headers[<name>]` condition, as
/// Istio does: `values` need the header with a value matching one of them;
/// `notValues` need no value matching one of them (a missing header has
/// none).
pub(super) fn header_matches(condition: &HeaderCondition, http: &HttpAttributes) -> bool {
    // Every value is compared, whatever bytes it holds: a value a DENY
    // should catch must not slip by as unreadable.
    let values = || {
        http.headers
            .get_all(condition.name.as_str())
            .iter()
            .map(|value| String::from_utf8_lossy(value.as_bytes()))
    };
    let matches_any = |patterns: &[Pattern], value: &str| patterns.iter().any(|p| p.matches(value));
    (condition.values.is_empty() || values().any(|v| matches_any(&condition.values, &v)))
        && !values().any(|v| matches_any(&condition.not_values, &v))
}

/// `host` (lowercase) against host patterns; a pattern also matches the
/// host without its port, so `example.com` matches `example.com:8080`.
fn host_matches(patterns: &[Pattern], host: &str) -> bool {
    let without_port = strip_port(host);
    patterns
        .iter()
        .any(|p| p.matches(host) || without_port.is_some_and(|h| p.matches(h)))
}

/// `name` of `name:port`; `None` when there is no port. An IPv6 literal
/// keeps its brackets (`[::1]:80` → `[::1]`).
fn strip_port(host: &str) -> Option<&str> {
    let (name, port) = host.rsplit_once(':')?;
    let bracketed_or_plain = name.ends_with(']') || !name.contains(':');
    (!port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) && bracketed_or_plain)
        .then_some(name)
}

fn lowercase(value: &str) -> Cow<'_, str> {
    if value.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(value.to_ascii_lowercase())
    } else {
        Cow::Borrowed(value)
    }
}

fn without_query(path: &str) -> &str {
    path.split_once('?').map_or(path, |(path, _)| path)
}

// --- Checks when a policy is loaded.

/// A method as Istio matches it: exactly, case-sensitively, so an HTTP
/// token in uppercase (`GET`, `M-SEARCH`).
pub(super) fn check_method(method: &str) -> Result<(), String> {
    if method.contains('*') {
        return Err(format!(
            "{method:?}: methods are matched exactly, without `*`; leave methods out to match any"
        ));
    }
    if http::Method::from_bytes(method.as_bytes()).is_err() {
        return Err(format!(
            "{method:?} is not an HTTP method (uppercase, e.g. GET)"
        ));
    }
    if method.bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(format!(
            "{method:?} is not an HTTP method (uppercase, e.g. GET): methods are case-sensitive; write {:?}",
            method.to_ascii_uppercase()
        ));
    }
    Ok(())
}

/// A path pattern: exact or `prefix*` starting with `/`, `*suffix`, or
/// `*`. Paths are matched without the query, so a `?` could never match.
pub(super) fn parse_path(value: &str) -> Result<Pattern, String> {
    if !value.is_empty() && !value.starts_with(['/', '*']) {
        return Err(format!(
            "{value:?} is not a path (it must start with /, or with * for a suffix)"
        ));
    }
    if value.contains(['?', '#']) {
        return Err(format!(
            "{value:?}: paths are matched without the query or fragment; remove them"
        ));
    }
    // Taken as an exact path, a template would never match: a DENY would
    // deny nothing.
    if value.contains("{*}") || value.contains("{**}") {
        return Err(format!(
            "{value:?}: path templates ({{*}}, {{**}}) are not supported; use prefix* or *suffix"
        ));
    }
    Pattern::parse(value, super::accept_any)
}

/// A host pattern, lowercase: hosts are matched without regard to case.
pub(super) fn parse_host(value: &str) -> Result<Pattern, String> {
    if value.contains('/') {
        return Err(format!(
            "{value:?} is not a host (a name, optionally with a port)"
        ));
    }
    Pattern::parse(&value.to_ascii_lowercase(), super::accept_any)
}

/// The header a `request.headers[<name>]` key names, lowercase; `None`
/// when the key is not of that form, `Err` when the name is not a header's.
pub(super) fn header_key(key: &str) -> Option<Result<String, String>> {
    let name = key.strip_prefix("request.headers[")?.strip_suffix(']')?;
    Some(
        http::HeaderName::from_bytes(name.as_bytes())
            .map(|name| name.as_str().to_owned())
            .map_err(|_| format!("{name:?} in {key:?} is not a header name")),
    )
}
