//! Whether a request matches a rule's match and a route's host names.

use super::{PathMatch, QueryMatch, RequestView, RouteMatch, StringMatch};

impl RouteMatch {
    /// Whether `request` matches: path, method, every header and every
    /// query parameter.
    #[must_use]
    pub fn matches(&self, request: &RequestView<'_>) -> bool {
        self.path.matches(request.path)
            && self.method.as_ref().is_none_or(|m| m == request.method)
            && self.headers.iter().all(|h| {
                // As UTF-8, not `to_str` (visible ASCII only): a value
                // HTTP allows with other bytes would never match.
                request
                    .headers
                    .get_all(&h.name)
                    .iter()
                    .filter_map(|v| std::str::from_utf8(v.as_bytes()).ok())
                    .any(|v| h.value.matches(v))
            })
            && self.query.iter().all(|q| query_matches(q, request.query))
    }
}

impl PathMatch {
    /// Whether `path` matches.
    #[must_use]
    pub fn matches(&self, path: &str) -> bool {
        match self {
            Self::Exact(exact) => path == exact,
            Self::Prefix(prefix) => {
                let prefix = prefix.trim_end_matches('/');
                prefix.is_empty()
                    || (path.starts_with(prefix)
                        && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/')))
            }
            Self::Regex(regex) => regex.is_match(path),
        }
    }
}

impl StringMatch {
    /// Whether `value` matches.
    #[must_use]
    pub fn matches(&self, value: &str) -> bool {
        match self {
            Self::Exact(exact) => value == exact,
            Self::Regex(regex) => regex.is_match(value),
        }
    }
}

/// The first value of the parameter must match (Gateway API leaves
/// repeated parameters to the implementation).
fn query_matches(condition: &QueryMatch, query: Option<&str>) -> bool {
    let Some(query) = query else {
        return false;
    };
    query
        .split('&')
        .find_map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (name == condition.name).then_some(value)
        })
        .is_some_and(|value| condition.value.matches(value))
}

/// Whether a request's host (`Host`, maybe with a port) is one of a route's
/// host names; a route without host names takes every host.
#[must_use]
pub fn host_matches(hostnames: &[String], host: Option<&str>) -> bool {
    if hostnames.is_empty() {
        return true;
    }
    let Some(host) = host else {
        return false;
    };
    let host = super::split_host(host).0.to_ascii_lowercase();
    hostnames.iter().any(|name| match name.strip_prefix("*.") {
        Some(suffix) => host
            .strip_suffix(suffix)
            .is_some_and(|rest| rest.ends_with('.') && rest.len() > 1),
        None => host == *name,
    })
}
