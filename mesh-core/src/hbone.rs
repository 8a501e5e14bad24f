//! HBONE's shared settings: TCP carried in HTTP/2 CONNECT streams over
//! mutual TLS 1.3 (port 15008). The node agent and the waypoint both speak
//! it, with the same limits and windows.

use std::time::Duration;

/// The HBONE port, in each meshed pod and on each waypoint.
pub const PORT: u16 = 15008;

/// Streams one HBONE connection may carry before the pool opens another.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 100;
/// Connections to one destination that busy streams are spread over before
/// they share: one TLS connection is encrypted on one thread at a time.
pub const SPREAD_CONNECTIONS: usize = 4;
/// Largest request header block the server accepts; a larger one gets 431.
pub const MAX_HEADER_LIST_SIZE: u32 = 16 * 1024;
/// Per-stream flow-control window: large enough for bulk transfer over one
/// stream without waiting on window updates.
pub const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
/// Per-connection flow-control window, shared by the streams.
pub const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
/// Largest HTTP/2 DATA frame sent.
pub const MAX_FRAME_SIZE: u32 = 256 * 1024;
/// How long a TLS + HTTP/2 handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// CONNECT response headers in which the destination's agent reports its
/// authorization verdict to the source's agent, for the source's logs. Only
/// agents holding mesh certificates see them.
pub mod verdict_headers {
    /// `allow` or `deny`.
    pub const DECISION: &str = "ambit-authz-decision";
    /// The deciding policy (namespace/name), `default allow` or `no ALLOW matched`.
    pub const POLICY: &str = "ambit-authz-policy";
    /// The node whose agent decided.
    pub const ENFORCED_BY: &str = "ambit-authz-enforced-by";
}
