//! Authorization at the waypoint: the `AuthorizationPolicy` objects
//! attached to the destination Service (`targetRefs` of kind `Service`) or
//! to the waypoint itself (kind `Gateway`, named after the waypoint), with
//! the client's identity from mutual TLS and, for HTTP, the request's
//! method, path, host and headers. Policies with a `selector` are the node
//! agents' to enforce (L4) and do not apply here.

use mesh_core::policy::{Decision, HttpAttributes, Request, ServiceTarget, Verdict};

use crate::{flow::StreamInfo, state::State};

/// The verdict for a stream (`http` `None`: opaque TCP) or one request.
#[must_use]
pub fn check(state: &State, info: &StreamInfo, http: Option<HttpAttributes>) -> Verdict {
    let mut request = Request::new(Some(&info.peer), info.client.ip(), info.served.port.port);
    if let Some(http) = http {
        request = request.with_http(http);
    }
    state
        .policies
        .evaluate_target(&target(state, info), &request)
}

/// Whether any policy applies to the stream's service; with none, every
/// request is allowed and [`check`] need not be called.
#[must_use]
pub fn applies(state: &State, info: &StreamInfo) -> bool {
    state.policies.any_targets(&target(state, info))
}

fn target<'a>(state: &'a State, info: &'a StreamInfo) -> ServiceTarget<'a> {
    ServiceTarget {
        namespace: &info.served.service.namespace,
        service: &info.served.service.name,
        waypoint: &state.waypoint_name,
    }
}

/// Whether a verdict lets the request through.
#[must_use]
pub fn allowed(verdict: &Verdict) -> bool {
    verdict.decision == Decision::Allow
}
