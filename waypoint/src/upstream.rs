//! The waypoint's side towards backends. A meshed endpoint is reached over
//! HBONE: an HTTP/2 CONNECT stream, over mutual TLS with the waypoint's
//! identity, to the HBONE port of the endpoint's pod, whose agent checks L4
//! policy with the waypoint as the source. An endpoint outside the mesh is
//! reached over plain TCP. HTTP requests ride on the worker's pooled
//! connections per endpoint ([`pool`]), over the worker's
//! HBONE pool (`mesh_proxy::client`), whose connections are shared per
//! (peer identity, address).

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
use mesh_core::{identity::SpiffeId, tls};
use mesh_proxy::{
    HboneError,
    client::{Connect, EstablishedStream, HbonePool, PoolKey, StreamSlot},
    h2io::H2Io,
    hbone,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

use crate::{flow::Body, identity::WaypointIdentity, state::SharedState};

pub mod pool;

use pool::{Pool, SendError};

/// How long a TCP connection (and an HBONE handshake) to a backend may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a backend could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// TCP to an endpoint outside the mesh failed.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address dialled.
        addr: SocketAddr,
        /// The error.
        source: io::Error,
    },
    /// Connecting to an endpoint outside the mesh took too long.
    #[error("connecting to {0} timed out")]
    Timeout(SocketAddr),
    /// The endpoint's circuit breaker allows no more connections.
    #[error("{0}")]
    Overflow(#[from] crate::resilience::circuit::Overflow),
    /// HBONE to the endpoint's agent failed, or the agent refused the
    /// stream (policy, or nothing listening).
    #[error(transparent)]
    Hbone(#[from] HboneError),
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
                // A worker drives its connections on its own thread, so
                // more connections would not spread encryption over threads:
                // one per destination until it is full.
                hbone: HbonePool::with_spread(1),
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

    /// Closes the pooled HTTP connections idle too long (see
    /// [`pool::SWEEP_EVERY`]).
    pub fn close_expired(&self) {
        self.pool.close_expired();
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
    hbone: HbonePool,
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
            let (stream, slot) = self.open_stream(&peer, hbone_addr, endpoint).await?;
            Ok(TunnelIo::Hbone {
                io: Box::new(stream),
                _slot: slot,
            })
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

    /// A CONNECT stream to `endpoint` through its agent at `hbone_addr`,
    /// accepted within [`CONNECT_TIMEOUT`].
    async fn open_stream(
        &self,
        peer: &SpiffeId,
        hbone_addr: SocketAddr,
        endpoint: SocketAddr,
    ) -> Result<(H2Io, StreamSlot), HboneError> {
        let key = PoolKey {
            peer: peer.clone(),
            addr: hbone_addr,
        };
        let connector = WaypointConnector(&self.identity);
        let stream = self.hbone.open_stream(&connector, &key, endpoint).await?;
        let EstablishedStream { send, recv, slot } = stream
            .established(&self.hbone, &connector, CONNECT_TIMEOUT)
            .await?;
        Ok((H2Io::new(send, recv), slot))
    }
}

/// Opens the waypoint's HBONE connections: with its identity, within
/// [`CONNECT_TIMEOUT`].
struct WaypointConnector<'a>(&'a Arc<WaypointIdentity>);

impl Connect for WaypointConnector<'_> {
    fn connect(
        &self,
        key: &PoolKey,
    ) -> impl Future<Output = Result<SendRequest<Bytes>, HboneError>> + Send + 'static {
        let (identity, peer, addr) = (self.0.clone(), key.peer.clone(), key.addr);
        async move {
            tokio::time::timeout(CONNECT_TIMEOUT, handshake(identity, peer, addr))
                .await
                .map_err(|_| HboneError::Timeout(addr))?
        }
    }
}

/// TCP, TLS with `identity`, checking that the peer is `peer`, and HTTP/2
/// to the HBONE address `addr`.
async fn handshake(
    identity: Arc<WaypointIdentity>,
    peer: SpiffeId,
    addr: SocketAddr,
) -> Result<SendRequest<Bytes>, HboneError> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|source| HboneError::Connect { addr, source })?;
    let _ = tcp.set_nodelay(true);
    let config = tls::client_config(
        identity.id.clone(),
        peer,
        identity.clone(),
        identity.roots(),
    )
    .map_err(|error| HboneError::Identity(Box::new(error)))?;
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
    /// Through the endpoint's agent, holding its place on its HBONE
    /// connection.
    Hbone {
        /// The stream.
        io: Box<H2Io>,
        /// Its place on its connection.
        _slot: StreamSlot,
    },
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
            TunnelIo::Hbone { io, .. } => Pin::new(io.as_mut()).poll_read(cx, buf),
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
            TunnelIo::Hbone { io, .. } => Pin::new(io.as_mut()).poll_write(cx, buf),
            TunnelIo::Tcp(io) => Pin::new(io).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            TunnelIo::Hbone { io, .. } => Pin::new(io.as_mut()).poll_flush(cx),
            TunnelIo::Tcp(io) => Pin::new(io).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            TunnelIo::Hbone { io, .. } => Pin::new(io.as_mut()).poll_shutdown(cx),
            TunnelIo::Tcp(io) => Pin::new(io).poll_shutdown(cx),
        }
    }
}
