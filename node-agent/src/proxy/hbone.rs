//! The agent's side of HBONE (TCP carried in HTTP/2 CONNECT streams over
//! mutual TLS 1.3, between the node agents of the two ends, port 15008 in
//! the destination pod). The protocol, the pool and the relay are
//! `mesh_proxy`'s; what is the agent's is here:
//!
//! - [`client`]: connections from the pod's namespace with its identity.
//! - [`server`]: one listener per enrolled pod, with L4 authorization.
//! - the authorization verdict a destination's agent reports in its
//!   CONNECT response ([`report_authorization`], [`reported_authorization`]).

use mesh_core::policy::Decision;
use mesh_proxy::hbone::verdict_headers;

use crate::flow::{Authorization, EnforcementPoint};

pub mod client;
pub mod server;

/// The verdict a destination's agent reported in a CONNECT response.
#[must_use]
pub fn reported_authorization(headers: &http::HeaderMap) -> Option<Authorization> {
    let text = |name| headers.get(name)?.to_str().ok();
    let decision = Decision::parse(text(verdict_headers::DECISION)?)?;
    let policy = text(verdict_headers::POLICY)?.to_owned();
    let enforced_by = text(verdict_headers::ENFORCED_BY)?.to_owned();
    Some(Authorization {
        decision,
        reason: format!("reported by the destination's agent on {enforced_by}"),
        policy,
        enforced_by,
        enforcement_point: EnforcementPoint::HboneInbound,
        audited: Vec::new(),
    })
}

/// The headers that report `authorization` in a CONNECT response.
pub fn report_authorization(headers: &mut http::HeaderMap, authorization: &Authorization) {
    let values = [
        (verdict_headers::DECISION, authorization.decision.as_str()),
        (verdict_headers::POLICY, authorization.policy.as_str()),
        (
            verdict_headers::ENFORCED_BY,
            authorization.enforced_by.as_str(),
        ),
    ];
    for (name, value) in values {
        if let Ok(value) = http::HeaderValue::from_str(value) {
            headers.insert(name, value);
        }
    }
}
