//! The waypoint's side towards backends. A meshed endpoint is reached over
//! HBONE: an HTTP/2 CONNECT stream, over mutual TLS with the waypoint's
//! identity, to the HBONE port of the endpoint's pod, whose agent checks L4
//! policy with the waypoint as the source. An endpoint outside the mesh is
//! reached over plain TCP. HTTP requests ride on the worker's pooled
//! connections per endpoint ([`pool`](crate::pool)), over HBONE connections
//! shared per (peer identity, address) ([`connections`]).

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use h2::client::SendRequest;
use http_body_util::combinators::BoxBody;
use mesh_core::{hbone, identity::SpiffeId, tls};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

use crate::{
    h2io::H2Io,
    identity::WaypointIdentity,
    pool::{Pool, SendError},
    state::SharedState,
};

mod connections;

use connections::HboneConnections;

/// How long a TCP connection (and an HBONE handshake) to a backend may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Request and response bodies as the waypoint passes them on.
pub type Body = BoxBody<Bytes, BodyError>;

/// Why a body could not be passed on: the peer's error, or a deadline
/// ([`crate::deadline`]).
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// Why a backend could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// TCP to the endpoint or its HBONE port failed.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address dialled.
        addr: SocketAddr,
        /// The error.
        source: io::Error,
    },
    /// Connecting took too long.
    #[error("connecting to {0} timed out")]
    Timeout(SocketAddr),
    /// The TLS handshake with the endpoint's agent failed.
    #[error("TLS handshake with {addr} failed: {reason}")]
    Tls {
        /// The HBONE address.
        addr: SocketAddr,
        /// What went wrong.
        reason: String,
    },
    /// HTTP/2 with the endpoint's agent failed.
    #[error("HBONE to {addr} failed: {source}")]
    H2 {
        /// The HBONE address.
        addr: SocketAddr,
        /// The error.
        source: h2::Error,
    },
    /// The endpoint's agent refused the CONNECT (policy, or nothing listening).
    #[error("the agent of {endpoint} refused the stream with status {status}")]
    Refused {
        /// The endpoint.
        endpoint: SocketAddr,
        /// The CONNECT response status.
        status: http::StatusCode,
    },
    /// The CONNECT request for the endpoint could not be built.
    #[error("not an endpoint address: {0}")]
    BadEndpoint(String),
    /// The endpoint's circuit breaker allows no more connections.
    #[error("{0}")]
    Overflow(#[from] crate::resilience::circuit::Overflow),
    /// The TLS or HTTP/2 handshake with the endpoint's agent failed.
    #[error(transparent)]
    Handshake(#[from] hbone::HandshakeError),
    /// No TLS configuration could be built.
    #[error(transparent)]
    TlsConfig(#[from] tls::TlsError),
    /// The HBONE handshakes this request waited for failed; every request
    /// that waited for them gets the same error.
    #[error(transparent)]
    Shared(Arc<UpstreamError>),
    /// The HBONE handshakes this request waited for ended with no outcome.
    #[error(
        "the HBONE handshake with {0} was abandoned (is the waypoint shutting down? its log tells whether the handshake panicked)"
    )]
    Abandoned(SocketAddr),
}

/// A worker's connections to backends: the HBONE connections and the
/// HTTP connections over them.
pub struct Upstreams {
    connector: Connector,
    pool: Pool,
}

impl Upstreams {
    /// Upstreams that look endpoints up in `state` and present `identity`,
    /// counting the HTTP connections they open in `opened`.
    #[must_use]
    pub fn new(
        identity: Arc<WaypointIdentity>,
        state: SharedState,
        breakers: crate::runtime::Breakers,
        opened: prometheus_client::metrics::counter::Counter,
    ) -> Self {
        let connector = Connector {
            inner: Arc::new(ConnectorInner {
                identity,
                state,
                breakers,
                hbone: HboneConnections::default(),
            }),
        };
        Self {
            pool: Pool::new(connector.clone(), opened),
            connector,
        }
    }

    /// Sends an HTTP request to `endpoint` on a pooled connection.
    pub async fn send(
        &self,
        endpoint: SocketAddr,
        request: http::Request<Body>,
        http2: bool,
    ) -> Result<http::Response<Body>, SendError> {
        self.pool.send(endpoint, request, http2).await
    }

    /// A byte stream to `endpoint` (opaque TCP).
    pub async fn connect(&self, endpoint: SocketAddr) -> Result<Tunnel, UpstreamError> {
        self.connector.connect(endpoint).await
    }
}

/// Opens byte streams to endpoints, within each endpoint's connection
/// limit.
#[derive(Clone)]
pub struct Connector {
    inner: Arc<ConnectorInner>,
}

impl Connector {
    /// A byte stream to `endpoint`: a CONNECT stream through its agent, or
    /// TCP for an endpoint outside the mesh.
    pub async fn connect(&self, endpoint: SocketAddr) -> Result<Tunnel, UpstreamError> {
        self.inner.connect(endpoint).await
    }
}

struct ConnectorInner {
    identity: Arc<WaypointIdentity>,
    state: SharedState,
    breakers: crate::runtime::Breakers,
    hbone: HboneConnections,
}

impl ConnectorInner {
    async fn connect(&self, endpoint: SocketAddr) -> Result<Tunnel, UpstreamError> {
        let breaker = self
            .breakers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&endpoint)
            .map(|(_, breaker)| breaker.clone());
        let permit = breaker.map(|b| b.try_connection()).transpose()?;
        let io = self.connect_io(endpoint).await?;
        Ok(Tunnel {
            io,
            _permit: permit,
        })
    }

    async fn connect_io(&self, endpoint: SocketAddr) -> Result<TunnelIo, UpstreamError> {
        let peer = self.state.current().identity_of(endpoint.ip());
        if let Some(peer) = peer {
            let hbone_addr = SocketAddr::new(endpoint.ip(), hbone::PORT);
            let stream = self.open_stream(&peer, hbone_addr, endpoint).await?;
            Ok(TunnelIo::Hbone(Box::new(stream)))
        } else {
            let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(endpoint))
                .await
                .map_err(|_| UpstreamError::Timeout(endpoint))?
                .map_err(|source| UpstreamError::Connect {
                    addr: endpoint,
                    source,
                })?;
            let _ = tcp.set_nodelay(true);
            Ok(TunnelIo::Tcp(tcp))
        }
    }

    /// A CONNECT stream to `endpoint` through its agent at `hbone_addr`.
    async fn open_stream(
        &self,
        peer: &SpiffeId,
        hbone_addr: SocketAddr,
        endpoint: SocketAddr,
    ) -> Result<H2Io, UpstreamError> {
        let h2_error = |source| UpstreamError::H2 {
            addr: hbone_addr,
            source,
        };
        let send = self.connection(peer, hbone_addr).await?;
        let mut ready = send.ready().await.map_err(h2_error)?;
        let request = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri(endpoint.to_string())
            .body(())
            .map_err(|_| UpstreamError::BadEndpoint(endpoint.to_string()))?;
        let (response, send) = ready.send_request(request, false).map_err(h2_error)?;
        let response = tokio::time::timeout(CONNECT_TIMEOUT, response)
            .await
            .map_err(|_| UpstreamError::Timeout(hbone_addr))?
            .map_err(h2_error)?;
        if response.status() != http::StatusCode::OK {
            return Err(UpstreamError::Refused {
                endpoint,
                status: response.status(),
            });
        }
        Ok(H2Io::new(send, response.into_body()))
    }

    /// A live HBONE connection to `addr`, opening one if there is none;
    /// a handshake in progress is shared with the other requests for it.
    async fn connection(
        &self,
        peer: &SpiffeId,
        addr: SocketAddr,
    ) -> Result<SendRequest<Bytes>, UpstreamError> {
        let connect = || {
            let (identity, peer) = (self.identity.clone(), peer.clone());
            async move {
                tokio::time::timeout(CONNECT_TIMEOUT, handshake(identity, peer, addr))
                    .await
                    .map_err(|_| UpstreamError::Timeout(addr))?
            }
        };
        self.hbone.get(peer, addr, connect).await
    }
}

/// TCP, TLS with `identity`, checking that the peer is `peer`, and HTTP/2
/// to the HBONE address `addr`.
async fn handshake(
    identity: Arc<WaypointIdentity>,
    peer: SpiffeId,
    addr: SocketAddr,
) -> Result<SendRequest<Bytes>, UpstreamError> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|source| UpstreamError::Connect { addr, source })?;
    let _ = tcp.set_nodelay(true);
    let config = tls::client_config(
        identity.id.clone(),
        peer,
        identity.clone(),
        identity.roots(),
    )?;
    let (send, connection) = hbone::connect(tcp, Arc::new(config), addr).await?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%addr, %error, "HBONE connection to a backend ended");
        }
    });
    Ok(send)
}

/// A byte stream to an endpoint, holding its slot of the endpoint's
/// connection limit.
pub struct Tunnel {
    io: TunnelIo,
    _permit: Option<crate::resilience::circuit::ConnectionPermit>,
}

/// An HBONE stream or a plain TCP connection.
enum TunnelIo {
    /// Through the endpoint's agent.
    Hbone(Box<H2Io>),
    /// Straight to an endpoint outside the mesh.
    Tcp(TcpStream),
}

impl AsyncRead for Tunnel {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            TunnelIo::Hbone(io) => Pin::new(io.as_mut()).poll_read(cx, buf),
            TunnelIo::Tcp(io) => Pin::new(io).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Tunnel {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            TunnelIo::Hbone(io) => Pin::new(io.as_mut()).poll_write(cx, buf),
            TunnelIo::Tcp(io) => Pin::new(io).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            TunnelIo::Hbone(io) => Pin::new(io.as_mut()).poll_flush(cx),
            TunnelIo::Tcp(io) => Pin::new(io).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            TunnelIo::Hbone(io) => Pin::new(io.as_mut()).poll_shutdown(cx),
            TunnelIo::Tcp(io) => Pin::new(io).poll_shutdown(cx),
        }
    }
}
