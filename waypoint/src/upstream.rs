//! The waypoint's side towards backends. A meshed endpoint is reached over
//! HBONE: an HTTP/2 CONNECT stream, over mutual TLS with the waypoint's
//! identity, to the HBONE port of the endpoint's pod, whose agent checks L4
//! policy with the waypoint as the source. An endpoint outside the mesh is
//! reached over plain TCP. HTTP requests ride on pooled connections per
//! endpoint (hyper's client: HTTP/1.1 keep-alive or one multiplexed HTTP/2
//! connection).

use std::{
    collections::HashMap,
    future::Future,
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
use hyper_util::{
    client::legacy::{
        Client,
        connect::{Connected, Connection},
    },
    rt::{TokioExecutor, TokioIo},
};
use mesh_core::{hbone, identity::SpiffeId, tls};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

use crate::{h2io::H2Io, identity::WaypointIdentity, state::SharedState};

/// How long a TCP connection (and an HBONE handshake) to a backend may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Request and response bodies as the waypoint passes them on.
pub type Body = BoxBody<Bytes, hyper::Error>;

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
    /// The URI handed to the connector names no endpoint.
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
}

/// Connections to backends: the HBONE connections and the HTTP clients.
#[derive(Clone)]
pub struct Upstreams {
    connector: Connector,
    http1: Client<Connector, Body>,
    http2: Client<Connector, Body>,
}

impl Upstreams {
    /// Upstreams that look endpoints up in `state` and present `identity`.
    #[must_use]
    pub fn new(
        identity: Arc<WaypointIdentity>,
        state: SharedState,
        breakers: crate::runtime::Breakers,
    ) -> Self {
        let connector = Connector {
            inner: Arc::new(ConnectorInner {
                identity,
                state,
                breakers,
                hbone: tokio::sync::Mutex::new(HashMap::new()),
            }),
        };
        let http1 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_mins(1))
            .build(connector.clone());
        let http2 = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .http2_initial_stream_window_size(hbone::STREAM_WINDOW)
            .http2_initial_connection_window_size(hbone::CONNECTION_WINDOW)
            .build(connector.clone());
        Self {
            connector,
            http1,
            http2,
        }
    }

    /// The HTTP client for a protocol version.
    #[must_use]
    pub fn http(&self, http2: bool) -> &Client<Connector, Body> {
        if http2 { &self.http2 } else { &self.http1 }
    }

    /// A byte stream to `endpoint` (opaque TCP).
    pub async fn connect(&self, endpoint: SocketAddr) -> Result<Tunnel, UpstreamError> {
        self.connector.inner.connect(endpoint).await
    }
}

/// Opens byte streams to endpoints for hyper's client.
#[derive(Clone)]
pub struct Connector {
    inner: Arc<ConnectorInner>,
}

struct ConnectorInner {
    identity: Arc<WaypointIdentity>,
    state: SharedState,
    breakers: crate::runtime::Breakers,
    /// One HBONE connection per (peer identity, HBONE address); each
    /// multiplexes up to the peer's stream limit.
    hbone: tokio::sync::Mutex<HashMap<(SpiffeId, SocketAddr), SendRequest<Bytes>>>,
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

    /// A live HBONE connection to `addr`, opening one if there is none.
    async fn connection(
        &self,
        peer: &SpiffeId,
        addr: SocketAddr,
    ) -> Result<SendRequest<Bytes>, UpstreamError> {
        let key = (peer.clone(), addr);
        let mut connections = self.hbone.lock().await;
        if let Some(send) = connections.get(&key) {
            let mut cx = Context::from_waker(std::task::Waker::noop());
            if !matches!(send.clone().poll_ready(&mut cx), Poll::Ready(Err(_))) {
                return Ok(send.clone());
            }
            connections.remove(&key);
        }
        let send = tokio::time::timeout(CONNECT_TIMEOUT, self.handshake(peer, addr))
            .await
            .map_err(|_| UpstreamError::Timeout(addr))??;
        connections.insert(key, send.clone());
        Ok(send)
    }

    async fn handshake(
        &self,
        peer: &SpiffeId,
        addr: SocketAddr,
    ) -> Result<SendRequest<Bytes>, UpstreamError> {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|source| UpstreamError::Connect { addr, source })?;
        let _ = tcp.set_nodelay(true);
        let config = tls::client_config(
            self.identity.id.clone(),
            peer.clone(),
            self.identity.clone(),
            self.identity.roots(),
        )?;
        let (send, connection) = hbone::connect(tcp, Arc::new(config), addr).await?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%addr, %error, "HBONE connection to a backend ended");
            }
        });
        Ok(send)
    }
}

impl tower_service::Service<http::Uri> for Connector {
    type Response = TokioIo<Tunnel>;
    type Error = UpstreamError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let inner = self.inner.clone();
        Box::pin(async move {
            let endpoint: SocketAddr = uri
                .authority()
                .and_then(|a| a.as_str().parse().ok())
                .ok_or_else(|| UpstreamError::BadEndpoint(uri.to_string()))?;
            inner.connect(endpoint).await.map(TokioIo::new)
        })
    }
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

impl Connection for Tunnel {
    fn connected(&self) -> Connected {
        Connected::new()
    }
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
