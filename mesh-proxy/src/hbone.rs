//! HBONE's vocabulary: TCP carried in HTTP/2 CONNECT streams over mutual
//! TLS 1.3 (port 15008), with the same limits and windows on every side.
//! The handshakes are here: [`accept`] on the server side, [`connect`] on
//! the client side, and [`connect_authority`] and [`connect_target`] for
//! what a CONNECT request asks for; so is [`HboneError`], what every HBONE
//! client reports.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use rustls::{ClientConfig, ServerConfig, pki_types::ServerName};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use mesh_core::{identity::SpiffeId, tls};

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

/// The server side of an HBONE connection, after the handshakes.
pub type ServerConnection =
    h2::server::Connection<tokio_rustls::server::TlsStream<TcpStream>, Bytes>;
/// The driver of the client side of an HBONE connection: it must be polled
/// (spawned) for the connection's streams to make progress.
pub type ClientConnection =
    h2::client::Connection<tokio_rustls::client::TlsStream<TcpStream>, Bytes>;

/// Why an accepted HBONE connection was refused.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// The TLS handshake failed (no client certificate, wrong CA...).
    #[error("TLS handshake failed: {0}")]
    Tls(String),
    /// The client's certificate names no SPIFFE id.
    #[error("the client certificate carries no SPIFFE id")]
    NoSpiffeId,
    /// The HTTP/2 handshake failed.
    #[error("HTTP/2 handshake failed: {0}")]
    H2(#[source] h2::Error),
    /// The handshakes took longer than [`HANDSHAKE_TIMEOUT`].
    #[error("the HBONE handshake timed out")]
    Timeout,
}

/// Why an HBONE connection or stream failed.
#[derive(Debug, thiserror::Error)]
pub enum HboneError {
    /// The TCP connection to the peer's HBONE port failed.
    #[error(
        "cannot connect to the HBONE port {addr}: {source} (is the destination's node agent running? does a NetworkPolicy block port 15008?)"
    )]
    Connect {
        /// The peer's HBONE address.
        addr: SocketAddr,
        /// The error.
        source: io::Error,
    },
    /// The TLS handshake failed (wrong CA, wrong identity, expired
    /// certificate...).
    #[error("TLS handshake with {addr} failed: {reason}")]
    Tls {
        /// The peer's HBONE address.
        addr: SocketAddr,
        /// What went wrong, naming the certificate problem.
        reason: String,
    },
    /// The HTTP/2 layer failed.
    #[error("HTTP/2 with {addr} failed: {source}")]
    H2 {
        /// The peer's HBONE address.
        addr: SocketAddr,
        /// The error.
        source: h2::Error,
    },
    /// Connecting, the handshakes or the CONNECT response took too long.
    #[error("the HBONE handshake with {0} timed out")]
    Timeout(SocketAddr),
    /// The peer answered the CONNECT with an error status.
    #[error("{addr} refused the CONNECT to {authority} with status {status}")]
    Refused {
        /// The peer's HBONE address.
        addr: SocketAddr,
        /// The requested destination.
        authority: SocketAddr,
        /// The status.
        status: http::StatusCode,
    },
    /// A CONNECT request for the authority could not be built.
    #[error("{0} cannot be the authority of a CONNECT request")]
    BadAuthority(SocketAddr),
    /// A socket for the connection could not be created.
    #[error("cannot create the HBONE socket: {0}")]
    Socket(#[source] io::Error),
    /// No certificate or TLS configuration for the local identity or the
    /// peer's.
    #[error(transparent)]
    Identity(Box<dyn std::error::Error + Send + Sync>),
    /// The handshakes this stream waited for failed; every stream that
    /// waited for them gets the same error.
    #[error(transparent)]
    Shared(Arc<HboneError>),
    /// The handshakes this stream waited for ended with no outcome.
    #[error(
        "the HBONE handshake with {0} was abandoned (is the proxy shutting down? its log tells whether the handshake panicked)"
    )]
    Abandoned(SocketAddr),
}

/// The server side: TLS with `config` (which requires a client
/// certificate), the client's SPIFFE id, then HTTP/2 with HBONE's limits
/// and windows, all within [`HANDSHAKE_TIMEOUT`].
pub async fn accept(
    tcp: TcpStream,
    config: Arc<ServerConfig>,
) -> Result<(SpiffeId, ServerConnection), AcceptError> {
    let handshake = async {
        let tls = TlsAcceptor::from(config)
            .accept(tcp)
            .await
            .map_err(|e| AcceptError::Tls(tls::handshake_failure(&e)))?;
        let peer = tls::peer_identity(tls.get_ref().1.peer_certificates())
            .ok_or(AcceptError::NoSpiffeId)?;
        let connection = server_builder()
            .handshake::<_, Bytes>(tls)
            .await
            .map_err(AcceptError::H2)?;
        Ok((peer, connection))
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| AcceptError::Timeout)?
}

/// The HTTP/2 server settings of HBONE: its header-list limit, stream
/// limit, windows and frame size. [`accept`] hands a TLS stream to it; the
/// fuzz targets (`fuzz/`) hand it an in-memory stream, so that they serve
/// exactly what a peer reaches after the TLS handshake.
#[must_use]
pub fn server_builder() -> h2::server::Builder {
    let mut builder = h2::server::Builder::new();
    builder
        .max_header_list_size(MAX_HEADER_LIST_SIZE)
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE);
    builder
}

/// The client side, over `tcp` to the peer's HBONE address `addr`: TLS
/// with `config` (which checks the peer's SPIFFE id), then HTTP/2 with
/// HBONE's windows, all within [`HANDSHAKE_TIMEOUT`]. The caller spawns the
/// returned connection driver.
pub async fn connect(
    tcp: TcpStream,
    config: Arc<ClientConfig>,
    addr: SocketAddr,
) -> Result<(h2::client::SendRequest<Bytes>, ClientConnection), HboneError> {
    let handshake = async {
        let tls = TlsConnector::from(config)
            .connect(ServerName::IpAddress(addr.ip().into()), tcp)
            .await
            .map_err(|error| HboneError::Tls {
                addr,
                reason: tls::handshake_failure(&error),
            })?;
        h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME_SIZE)
            .handshake::<_, Bytes>(tls)
            .await
            .map_err(|source| HboneError::H2 { addr, source })
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| HboneError::Timeout(addr))?
}

/// Where a CONNECT request asks to go: an IP address and port; else the
/// status to answer (405 for another method, 400 for a missing or
/// unparseable authority) and why.
pub fn connect_authority<B>(
    request: &http::Request<B>,
) -> Result<SocketAddr, (http::StatusCode, &'static str)> {
    if request.method() != http::Method::CONNECT {
        return Err((
            http::StatusCode::METHOD_NOT_ALLOWED,
            "only CONNECT is served on the HBONE port",
        ));
    }
    request
        .uri()
        .authority()
        .ok_or((
            http::StatusCode::BAD_REQUEST,
            "the CONNECT request has no authority",
        ))?
        .as_str()
        .parse()
        .map_err(|_| {
            (
                http::StatusCode::BAD_REQUEST,
                "the authority is not an IP address and port",
            )
        })
}

/// Where a CONNECT to a pod's HBONE port may go: [`connect_authority`],
/// then one of `own_ips` (the pod's addresses; an IPv4-mapped address
/// counts as IPv4) on a port not among `reserved` (the mesh's own ports
/// in the pod); else 400 and why. The node agent's inbound HBONE server
/// asks this of every stream, and so does the HBONE fuzz target.
pub fn connect_target<B>(
    request: &http::Request<B>,
    own_ips: &[IpAddr],
    reserved: &[u16],
) -> Result<SocketAddr, (http::StatusCode, &'static str)> {
    let dst = connect_authority(request)?;
    let dst = SocketAddr::new(dst.ip().to_canonical(), dst.port());
    if !own_ips.contains(&dst.ip()) {
        return Err((
            http::StatusCode::BAD_REQUEST,
            "the authority is not an address of this pod",
        ));
    }
    if reserved.contains(&dst.port()) {
        return Err((
            http::StatusCode::BAD_REQUEST,
            "the authority is a mesh port",
        ));
    }
    Ok(dst)
}

/// An h2 error as an I/O error: its own I/O error when it has one.
#[must_use]
pub fn h2_to_io(error: h2::Error) -> io::Error {
    if error.is_io() {
        error
            .into_io()
            .unwrap_or_else(|| io::Error::other("HTTP/2 I/O error"))
    } else {
        io::Error::other(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: http::Method, uri: &str) -> http::Request<()> {
        http::Request::builder()
            .method(method)
            .uri(uri)
            .body(())
            .unwrap()
    }

    #[test]
    fn a_connect_reaches_only_the_pods_own_addresses_off_the_mesh_ports() {
        let own: [IpAddr; 2] = ["10.10.2.11".parse().unwrap(), "fd00::11".parse().unwrap()];
        let reserved = [15001, 15006, 15008];
        let target = |method, uri: &str| connect_target(&request(method, uri), &own, &reserved);
        let connect = http::Method::CONNECT;
        assert_eq!(
            target(connect.clone(), "10.10.2.11:8080"),
            Ok("10.10.2.11:8080".parse().unwrap())
        );
        assert_eq!(
            target(connect.clone(), "[::ffff:10.10.2.11]:80"),
            Ok("10.10.2.11:80".parse().unwrap()),
            "an IPv4-mapped address is the IPv4 one"
        );
        assert_eq!(
            target(connect.clone(), "[fd00::11]:443"),
            Ok("[fd00::11]:443".parse().unwrap())
        );
        for (method, uri, status) in [
            (
                http::Method::GET,
                "10.10.2.11:8080",
                http::StatusCode::METHOD_NOT_ALLOWED,
            ),
            (connect.clone(), "/path", http::StatusCode::BAD_REQUEST),
            (
                connect.clone(),
                "backend.shop:8080",
                http::StatusCode::BAD_REQUEST,
            ),
            (
                connect.clone(),
                "10.10.2.12:8080",
                http::StatusCode::BAD_REQUEST,
            ),
            (
                connect.clone(),
                "10.10.2.11:15008",
                http::StatusCode::BAD_REQUEST,
            ),
        ] {
            assert_eq!(target(method, uri).map_err(|e| e.0), Err(status), "{uri}");
        }
    }
}
