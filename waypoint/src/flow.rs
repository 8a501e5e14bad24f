//! The waypoint's vocabulary, its bottom module: what an accepted HBONE
//! stream is ([`StreamInfo`], [`Protocol`]), the bodies it passes on
//! ([`Body`], [`BodyError`]) and the access log. The listener, the HTTP and
//! opaque proxies, authorization and the upstream side all speak it; it
//! imports none of them.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use mesh_core::identity::SpiffeId;

use crate::{metrics::RequestLabels, state::ServedPort};

/// Request and response bodies as the waypoint passes them on.
pub type Body = BoxBody<Bytes, BodyError>;

/// Why a body could not be passed on: the peer's error, or a route's
/// deadline (the deadline module cuts bodies that outlive it).
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// What a stream carries, from its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 (or 1.0).
    Http1,
    /// HTTP/2 with prior knowledge.
    Http2,
    /// Anything else: bytes passed through.
    Opaque,
}

impl Protocol {
    /// The name used in metrics (`request_protocol`) and logs.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http1 => "http",
            Self::Http2 => "grpc_or_http2",
            Self::Opaque => "tcp",
        }
    }
}

/// One accepted HBONE stream: who sent it and where it was going.
#[derive(Debug)]
pub struct StreamInfo {
    /// The client's identity, from its agent's certificate.
    pub peer: SpiffeId,
    /// The client's address (its pod's, as its agent connects from it).
    pub client: SocketAddr,
    /// The cluster IP and port it dialled.
    pub dialled: SocketAddr,
    /// The service port behind it.
    pub served: ServedPort,
    /// The labels its requests' metrics share (source and destination),
    /// built once per stream.
    pub labels: RequestLabels,
}

impl StreamInfo {
    /// The stream's details, with its metrics' shared labels.
    #[must_use]
    pub fn new(
        peer: SpiffeId,
        client: SocketAddr,
        dialled: SocketAddr,
        served: ServedPort,
    ) -> Self {
        let labels = RequestLabels::for_stream(&peer, &served.service);
        Self {
            peer,
            client,
            dialled,
            served,
            labels,
        }
    }
}

/// Writes one access-log line (JSON) to standard output.
pub fn access_log(line: &serde_json::Value) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
}
