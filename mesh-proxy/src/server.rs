//! The server side of HBONE: one accepted connection served, each CONNECT
//! stream handed to the caller with the client's SPIFFE id, and a graceful
//! `GOAWAY` when the caller drains. What a stream may ask for (the CONNECT
//! authority) is checked by [`connect_authority`](crate::hbone::connect_authority);
//! what it is allowed is the caller's (the agent's L4 policy, the waypoint's
//! routes).

use std::{future::Future, sync::Arc};

use bytes::Bytes;
use mesh_core::identity::SpiffeId;
use rustls::ServerConfig;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};

use crate::hbone::accept;

/// Serves one accepted HBONE connection: [`accept`](crate::hbone::accept), then each CONNECT
/// stream handed to `on_stream` with the client's SPIFFE id and spawned in
/// the current span (whose `peer` field is filled in), until the
/// connection ends. A refused connection is logged.
pub async fn serve<F, S>(tcp: TcpStream, config: Arc<ServerConfig>, on_stream: F)
where
    F: FnMut(http::Request<h2::RecvStream>, h2::server::SendResponse<Bytes>, SpiffeId) -> S,
    S: Future<Output = ()> + Send + 'static,
{
    serve_until(tcp, config, std::future::pending(), on_stream).await;
}

/// [`serve`], and once `drain` completes, a graceful shutdown: the peer is
/// told (`GOAWAY`) to open no new stream here, the streams under way go on,
/// and the connection ends when they are done.
pub async fn serve_until<F, S>(
    tcp: TcpStream,
    config: Arc<ServerConfig>,
    drain: impl Future<Output = ()>,
    on_stream: F,
) where
    F: FnMut(http::Request<h2::RecvStream>, h2::server::SendResponse<Bytes>, SpiffeId) -> S,
    S: Future<Output = ()> + Send + 'static,
{
    let (peer, connection) = match accept(tcp, config).await {
        Ok(accepted) => accepted,
        Err(error) => {
            tracing::warn!(%error, "HBONE connection refused");
            return;
        }
    };
    serve_accepted(peer, connection, drain, on_stream).await;
}

/// The part of [`serve_until`] after the handshakes: each CONNECT stream of
/// `connection`, whose client proved `peer`, handed to `on_stream` and
/// spawned in the current span, with the graceful shutdown once `drain`
/// completes. Generic over the transport so that the fuzz targets
/// (`fuzz/`) serve an in-memory stream exactly as the TLS one is served.
pub async fn serve_accepted<T, F, S>(
    peer: SpiffeId,
    mut connection: h2::server::Connection<T, Bytes>,
    drain: impl Future<Output = ()>,
    mut on_stream: F,
) where
    T: AsyncRead + AsyncWrite + Unpin,
    F: FnMut(http::Request<h2::RecvStream>, h2::server::SendResponse<Bytes>, SpiffeId) -> S,
    S: Future<Output = ()> + Send + 'static,
{
    use tracing::Instrument as _;
    tracing::Span::current().record("peer", tracing::field::display(&peer));
    let mut drain = std::pin::pin!(drain);
    let mut draining = false;
    loop {
        let next = tokio::select! {
            next = connection.accept() => next,
            () = &mut drain, if !draining => {
                tracing::debug!("draining: the peer is asked to open no new stream here");
                connection.graceful_shutdown();
                draining = true;
                continue;
            }
        };
        let Some(next) = next else { break };
        match next {
            Ok((request, respond)) => {
                tokio::spawn(on_stream(request, respond, peer.clone()).in_current_span());
            }
            Err(error) => {
                tracing::debug!(%error, "HBONE connection ended");
                break;
            }
        }
    }
}
