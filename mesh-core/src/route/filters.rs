//! Applying a rule's filters to a request or response: header modifiers
//! and redirects (the data path's side of [`Filter`]).

use std::fmt::Write as _;

use http::HeaderMap;

use super::{
    Filter, HeaderModifier, PathMatch, PathRewrite, Redirect, RequestView, RouteMatch, split_host,
};

// === impl Filter ===

impl Filter {
    /// Applies a `RequestHeaderModifier` to a request's headers.
    pub fn apply_request_headers(&self, headers: &mut HeaderMap) {
        if let Self::RequestHeaders(modifier) = self {
            modifier.apply(headers);
        }
    }

    /// Applies a `ResponseHeaderModifier` to a response's headers.
    pub fn apply_response_headers(&self, headers: &mut HeaderMap) {
        if let Self::ResponseHeaders(modifier) = self {
            modifier.apply(headers);
        }
    }
}

impl HeaderModifier {
    fn apply(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
        for name in &self.remove {
            headers.remove(name);
        }
    }
}

// === impl Redirect ===

impl Redirect {
    pub(super) fn location(
        &self,
        request: &RequestView<'_>,
        matched: &RouteMatch,
        default_scheme: &str,
    ) -> String {
        let scheme = self.scheme.as_deref().unwrap_or(default_scheme);
        let (request_host, request_port) = split_host(request.host.unwrap_or_default());
        let host = self.hostname.as_deref().unwrap_or(request_host);
        let port = self.port.or(if self.scheme.is_some() {
            None
        } else {
            request_port
        });
        let default_port = match scheme {
            "https" => 443,
            _ => 80,
        };
        let path = match (&self.path, &matched.path) {
            (Some(PathRewrite::Full(path)), _) => path.clone(),
            (Some(PathRewrite::Prefix(replacement)), PathMatch::Prefix(prefix)) => {
                let prefix = prefix.trim_end_matches('/');
                let rest = request.path.get(prefix.len()..).unwrap_or_default();
                let base = replacement.trim_end_matches('/');
                match (base.is_empty(), rest.is_empty()) {
                    (true, true) => "/".to_owned(),
                    (_, false) => format!("{base}{rest}"),
                    (false, true) => base.to_owned(),
                }
            }
            _ => request.path.to_owned(),
        };
        let mut location = format!("{scheme}://{host}");
        if let Some(port) = port.filter(|p| *p != default_port) {
            let _ = write!(location, ":{port}");
        }
        location.push_str(&path);
        if let Some(query) = request.query {
            location.push('?');
            location.push_str(query);
        }
        location
    }
}
