//! HBONE: TCP carried in HTTP/2 CONNECT streams over mutual TLS 1.3, between
//! the node agents of the two ends (port 15008 in the destination pod).
//!
//! - [`client`]: the outbound side; pooled connections per destination.
//! - [`server`]: the inbound side, one listener per enrolled pod.
//! - [`relay`]: copying between an application's TCP connection and a
//!   CONNECT stream, with flow control and half-close.

use mesh_core::policy::Decision;

use crate::authz::{Authorization, EnforcementPoint};

pub mod client;
pub mod relay;
pub mod server;

pub use mesh_core::hbone::{
    CONNECTION_WINDOW, HANDSHAKE_TIMEOUT, MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE,
    MAX_STREAMS_PER_CONNECTION, SPREAD_CONNECTIONS, STREAM_WINDOW, verdict_headers,
};

/// Why an HBONE connection or stream failed.
#[derive(Debug, thiserror::Error)]
pub enum HboneError {
    /// The TCP connection to the peer's HBONE port failed.
    #[error(
        "cannot connect to the HBONE port {addr}: {source} (is the destination's node agent running? does a NetworkPolicy block port 15008?)"
    )]
    Connect {
        /// The peer's HBONE address.
        addr: std::net::SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The TLS handshake failed (wrong CA, wrong identity, expired certificate...).
    #[error("TLS handshake with {addr} failed: {reason}")]
    Tls {
        /// The peer's HBONE address.
        addr: std::net::SocketAddr,
        /// What went wrong, naming the certificate problem.
        reason: String,
    },
    /// The HTTP/2 layer failed.
    #[error("HTTP/2 with {addr} failed: {source}")]
    H2 {
        /// The peer's HBONE address.
        addr: std::net::SocketAddr,
        /// The error.
        source: h2::Error,
    },
    /// The handshake took too long.
    #[error("the HBONE handshake with {0} timed out")]
    Timeout(std::net::SocketAddr),
    /// The peer answered the CONNECT with an error status.
    #[error("{addr} refused the CONNECT to {authority} with status {status}")]
    Refused {
        /// The peer's HBONE address.
        addr: std::net::SocketAddr,
        /// The requested destination.
        authority: std::net::SocketAddr,
        /// The status.
        status: http::StatusCode,
    },
    /// A socket could not be created in the pod.
    #[error("cannot create the HBONE socket in the pod: {0}")]
    Socket(#[source] std::io::Error),
    /// No certificate or TLS configuration for an identity.
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
    /// The handshakes this stream waited for failed; every stream that
    /// waited for them gets the same error.
    #[error(transparent)]
    Shared(std::sync::Arc<HboneError>),
    /// The handshakes this stream waited for ended with no outcome.
    #[error(
        "the HBONE handshake with {0} was abandoned (is the agent shutting down? its log tells whether the handshake panicked)"
    )]
    Abandoned(std::net::SocketAddr),
}

impl From<mesh_core::hbone::HandshakeError> for HboneError {
    fn from(error: mesh_core::hbone::HandshakeError) -> Self {
        use mesh_core::hbone::HandshakeError;
        match error {
            HandshakeError::Tls { addr, reason } => Self::Tls { addr, reason },
            HandshakeError::H2 { addr, source } => Self::H2 { addr, source },
            HandshakeError::Timeout(addr) => Self::Timeout(addr),
        }
    }
}

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
