//! The outbound side of HBONE. Each enrolled pod has its own [`HbonePool`]:
//! connections start in the pod's network namespace (so the source address
//! on the wire is the pod's own) and carry the pod's identity, so they are
//! shared only by that pod's connections to the same destination identity
//! and address. Streams go to the least busy connection; while every
//! connection is busy the pool opens another, up to
//! [`super::SPREAD_CONNECTIONS`], so concurrent bulk streams are encrypted on
//! different threads; past that, a connection carries up to
//! [`super::MAX_STREAMS_PER_CONNECTION`] streams before another is opened.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU32, Ordering},
    },
};

use bytes::Bytes;
use h2::{SendStream, client::SendRequest};
use mesh_core::identity::SpiffeId;

use super::{HboneError, MAX_STREAMS_PER_CONNECTION, SPREAD_CONNECTIONS};
use crate::{
    authz::Authorization,
    proxy::{ByteCounts, PodContext},
};

/// One pod's HBONE connections.
#[derive(Default)]
pub struct HbonePool {
    connections: tokio::sync::Mutex<HashMap<PoolKey, Vec<PooledConnection>>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct PoolKey {
    peer: SpiffeId,
    addr: SocketAddr,
}

struct PooledConnection {
    send: SendRequest<Bytes>,
    streams: Arc<AtomicU32>,
}

/// An open CONNECT stream; counts against its connection's stream limit
/// until dropped.
pub struct HboneStream {
    send: SendStream<Bytes>,
    response: h2::client::ResponseFuture,
    peer: SpiffeId,
    addr: SocketAddr,
    authority: SocketAddr,
    slot: StreamSlot,
}

/// How often a stream that a peer refused without processing it (it was
/// going away: a handoff or a restart) is opened again.
const REFUSED_STREAM_RETRIES: usize = 3;

/// The application's first bytes, kept until the CONNECT response so that a
/// refused stream can be opened again with them.
enum FirstBytes {
    /// Nothing read yet.
    Unread,
    /// This chunk was sent as early data.
    Data(Bytes),
    /// The application half-closed before sending anything.
    Eof,
}

struct StreamSlot(Arc<AtomicU32>);

// === impl HbonePool ===

impl HbonePool {
    /// Opens a CONNECT stream to `authority` through the HBONE port `addr`,
    /// whose certificate must be `peer`'s.
    pub async fn open_stream(
        &self,
        context: &PodContext,
        peer: &SpiffeId,
        addr: SocketAddr,
        authority: SocketAddr,
    ) -> Result<HboneStream, HboneError> {
        let key = PoolKey {
            peer: peer.clone(),
            addr,
        };
        let (send, streams) = self.connection(context, &key).await?;
        let request = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri(authority.to_string())
            .body(())
            .expect("an authority-form CONNECT request is valid");
        let h2_error = |source| HboneError::H2 { addr, source };
        let mut ready = send.ready().await.map_err(h2_error)?;
        let (response, send) = ready.send_request(request, false).map_err(h2_error)?;
        // The response is not awaited here: the application's first bytes
        // follow the CONNECT headers at once (HTTP/2 allows DATA before the
        // response), which saves a round trip per connection. A refusal
        // still ends the stream and closes the application's connection.
        Ok(HboneStream {
            send,
            response,
            peer: peer.clone(),
            addr,
            authority,
            slot: StreamSlot::take(streams),
        })
    }

    /// A live connection with a free stream slot, opening one if needed.
    async fn connection(
        &self,
        context: &PodContext,
        key: &PoolKey,
    ) -> Result<(SendRequest<Bytes>, Arc<AtomicU32>), HboneError> {
        let mut connections = self.connections.lock().await;
        let pooled = connections.entry(key.clone()).or_default();
        // A closed connection fails `ready()`; drop the ones h2 has given up on.
        pooled.retain(|c| {
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            !matches!(
                c.send.clone().poll_ready(&mut cx),
                std::task::Poll::Ready(Err(_))
            )
        });
        let loads: Vec<u32> = pooled
            .iter()
            .map(|c| c.streams.load(Ordering::Relaxed))
            .collect();
        if let Some(index) = pick_connection(&loads) {
            return Ok((pooled[index].send.clone(), pooled[index].streams.clone()));
        }
        let send = connect(context, key).await?;
        let streams = Arc::new(AtomicU32::new(0));
        pooled.push(PooledConnection {
            send: send.clone(),
            streams: streams.clone(),
        });
        Ok((send, streams))
    }
}

/// Opens a TCP + TLS + HTTP/2 connection to the peer's HBONE port.
async fn connect(context: &PodContext, key: &PoolKey) -> Result<SendRequest<Bytes>, HboneError> {
    let addr = key.addr;
    // A pod is captured before its certificate arrives: its connections
    // wait for it here (at once when it is there), never go without it.
    context
        .certs
        .wait_for_certificate(&context.identity, context.connect_timeout)
        .await?;
    let tcp = context
        .connect_upstream(addr, crate::proxy::UpstreamSource::Pod)
        .await
        .map_err(|e| match e {
            crate::proxy::ProxyError::Connect { source, .. } => {
                HboneError::Connect { addr, source }
            }
            crate::proxy::ProxyError::ConnectTimeout(_) => HboneError::Timeout(addr),
            other => HboneError::Socket(std::io::Error::other(other.to_string())),
        })?;
    let config = context.certs.client_config(&context.identity, &key.peer)?;
    let (send, connection) = mesh_core::hbone::connect(tcp, config, addr).await?;
    let pod = context.pod.clone();
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%pod, %addr, %error, "HBONE connection ended");
        }
    });
    tracing::debug!(pod = %context.pod, %addr, peer = %key.peer, "HBONE connection opened");
    Ok(send)
}

/// Which pooled connection a new stream goes on, given each connection's
/// open streams; `None` means open a new connection.
fn pick_connection(loads: &[u32]) -> Option<usize> {
    let (index, &streams) = loads
        .iter()
        .enumerate()
        .min_by_key(|(_, streams)| **streams)?;
    let spread = streams > 0 && loads.len() < SPREAD_CONNECTIONS;
    (streams < MAX_STREAMS_PER_CONNECTION && !spread).then_some(index)
}

// === impl HboneStream ===

impl HboneStream {
    /// Relays between `tcp` and this stream until both directions are done,
    /// counting bytes from `tcp` as sent and bytes to it as received. The
    /// verdict the destination's agent reports, if any, goes in `reported`.
    pub async fn relay(
        self,
        context: &PodContext,
        tcp: &tokio::net::TcpStream,
        counts: &ByteCounts,
        reported: &OnceLock<Authorization>,
    ) -> std::io::Result<()> {
        let (send, recv, _slot) = Box::pin(self.establish(context, tcp, counts, reported)).await?;
        super::relay::relay(
            tcp,
            send,
            std::future::ready(Ok(recv)),
            &counts.sent,
            &counts.received,
        )
        .await
    }

    /// Waits for the CONNECT response, sending the application's first
    /// bytes meanwhile as early data (and no more, so they can be sent
    /// again). A stream the peer refused without processing it, because it
    /// was going away (`GOAWAY` after a handoff, or `REFUSED_STREAM`), is
    /// opened again on a new connection with the same first bytes, up to
    /// [`REFUSED_STREAM_RETRIES`] times: a handoff must not fail a
    /// connection.
    async fn establish(
        mut self,
        context: &PodContext,
        tcp: &tokio::net::TcpStream,
        counts: &ByteCounts,
        reported: &OnceLock<Authorization>,
    ) -> std::io::Result<(SendStream<Bytes>, h2::RecvStream, StreamSlot)> {
        let mut first = FirstBytes::Unread;
        let mut retries = 0;
        loop {
            let response = if matches!(first, FirstBytes::Unread) {
                tokio::select! {
                    response = &mut self.response => response,
                    chunk = read_first_chunk(tcp) => {
                        first = match chunk? {
                            Some(data) => {
                                counts.sent.fetch_add(data.len() as u64, Ordering::Relaxed);
                                FirstBytes::Data(data)
                            }
                            None => FirstBytes::Eof,
                        };
                        self.send_first(&first)?;
                        continue;
                    }
                }
            } else {
                (&mut self.response).await
            };
            match response {
                Ok(response) => {
                    if let Some(authorization) = super::reported_authorization(response.headers()) {
                        let _ = reported.set(authorization);
                    }
                    let status = response.status();
                    if status != http::StatusCode::OK {
                        return Err(std::io::Error::other(HboneError::Refused {
                            addr: self.addr,
                            authority: self.authority,
                            status,
                        }));
                    }
                    return Ok((self.send, response.into_body(), self.slot));
                }
                Err(error) if refused_unprocessed(&error) && retries < REFUSED_STREAM_RETRIES => {
                    retries += 1;
                    tracing::debug!(addr = %self.addr, %error, retries, "the peer refused the stream unprocessed (going away); opening it again");
                    self = context
                        .hbone
                        .open_stream(context, &self.peer, self.addr, self.authority)
                        .await
                        .map_err(std::io::Error::other)?;
                    self.send_first(&first)?;
                }
                Err(source) => {
                    return Err(std::io::Error::other(HboneError::H2 {
                        addr: self.addr,
                        source,
                    }));
                }
            }
        }
    }

    /// Sends the first bytes read (again, on a reopened stream).
    fn send_first(&mut self, first: &FirstBytes) -> std::io::Result<()> {
        match first {
            FirstBytes::Unread => Ok(()),
            FirstBytes::Data(data) => self
                .send
                .send_data(data.clone(), false)
                .map_err(mesh_core::hbone::h2_to_io),
            FirstBytes::Eof => self
                .send
                .send_data(Bytes::new(), true)
                .map_err(mesh_core::hbone::h2_to_io),
        }
    }
}

/// Whether the peer refused the stream without processing it: a `GOAWAY`
/// from the peer fails only the streams it did not process, and
/// `REFUSED_STREAM` says so of one stream. Either is safe to send again.
fn refused_unprocessed(error: &h2::Error) -> bool {
    (error.is_go_away() && error.is_remote()) || error.reason() == Some(h2::Reason::REFUSED_STREAM)
}

/// The application's first bytes (at most one read), or `None` at EOF.
async fn read_first_chunk(tcp: &tokio::net::TcpStream) -> std::io::Result<Option<Bytes>> {
    let mut buf = bytes::BytesMut::with_capacity(FIRST_CHUNK);
    loop {
        tcp.readable().await?;
        match tcp.try_read_buf(&mut buf) {
            Ok(0) => return Ok(None),
            Ok(_) => return Ok(Some(buf.freeze())),
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(error) => return Err(error),
        }
    }
}

/// The most early data sent before the CONNECT response.
const FIRST_CHUNK: usize = 64 * 1024;

// === impl StreamSlot ===

impl StreamSlot {
    fn take(streams: Arc<AtomicU32>) -> Self {
        streams.fetch_add(1, Ordering::Relaxed);
        Self(streams)
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_streams_spread_over_connections_then_share() {
        assert_eq!(pick_connection(&[]), None, "no connection yet");
        assert_eq!(
            pick_connection(&[0]),
            Some(0),
            "an idle connection is reused"
        );
        assert_eq!(pick_connection(&[1]), None, "a busy one: open a second");
        assert_eq!(
            pick_connection(&[1, 0]),
            Some(1),
            "the least busy is chosen"
        );
        assert_eq!(pick_connection(&[1, 1, 1]), None);
        let spread = vec![1; SPREAD_CONNECTIONS];
        assert_eq!(
            pick_connection(&spread),
            Some(0),
            "enough connections: streams share"
        );
        let full = vec![MAX_STREAMS_PER_CONNECTION; SPREAD_CONNECTIONS];
        assert_eq!(pick_connection(&full), None, "all full: open another");
    }
}
