//! The outbound side of HBONE. Each enrolled pod has its own [`HbonePool`]:
//! connections start in the pod's network namespace (so the source address
//! on the wire is the pod's own) and carry the pod's identity, so they are
//! shared only by that pod's connections to the same destination identity
//! and address. Streams go to the least busy connection; while every
//! connection is busy the pool opens another, up to
//! [`super::SPREAD_CONNECTIONS`], so concurrent bulk streams are encrypted on
//! different threads; past that, a connection carries up to
//! [`super::MAX_STREAMS_PER_CONNECTION`] streams before another is opened.
//!
//! Opening a connection never holds the pool's lock: the TCP, TLS and
//! HTTP/2 handshakes run on a task of their own ([`SharedHandshake`]) while
//! the pool lists the connection as connecting. Streams assigned to it wait
//! for it and share its outcome; streams to other destinations never wait
//! on it, so an unreachable destination delays only its own connections.
//! A connecting connection counts its waiting streams like an open one, so
//! the same spreading applies to handshakes: up to
//! [`super::SPREAD_CONNECTIONS`] run at once for one destination.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex, OnceLock, PoisonError, Weak,
        atomic::{AtomicU32, Ordering},
    },
};

use bytes::Bytes;
use h2::{SendStream, client::SendRequest};
use mesh_core::{
    hbone::{SharedHandshake, shared_handshake::Outcome},
    identity::SpiffeId,
};

use super::{HboneError, MAX_STREAMS_PER_CONNECTION, SPREAD_CONNECTIONS};
use crate::{
    authz::Authorization,
    copy::ChunkReader,
    proxy::{ByteCounts, PodContext},
};

#[cfg(test)]
mod tests;

/// One pod's HBONE connections.
#[derive(Default)]
pub struct HbonePool {
    destinations: Arc<Mutex<Destinations>>,
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

type Destinations = HashMap<PoolKey, Vec<PooledConnection>>;

type Handshake = SharedHandshake<SendRequest<Bytes>, HboneError>;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct PoolKey {
    peer: SpiffeId,
    addr: SocketAddr,
}

/// A connection of the pool, open or still connecting.
struct PooledConnection {
    /// Streams assigned to it, counted from the moment they are assigned,
    /// also while it is connecting. Identifies the connection in the pool.
    streams: Arc<AtomicU32>,
    state: ConnectionState,
}

#[derive(Clone)]
enum ConnectionState {
    /// The handshakes are under way; the streams assigned wait for them.
    Connecting(Handshake),
    /// Ready for streams.
    Open(SendRequest<Bytes>),
}

/// A stream's place on a connection, taken when the stream is assigned.
struct StreamSlot(Arc<AtomicU32>);

// === impl HbonePool ===

impl HbonePool {
    /// Opens a CONNECT stream to `authority` through the HBONE port `addr`,
    /// whose certificate must be `peer`'s.
    pub async fn open_stream(
        &self,
        context: &Arc<PodContext>,
        peer: &SpiffeId,
        addr: SocketAddr,
        authority: SocketAddr,
    ) -> Result<HboneStream, HboneError> {
        let key = PoolKey {
            peer: peer.clone(),
            addr,
        };
        let (send, slot) = self
            .connection(&key, || connect(context.clone(), key.clone()))
            .await?;
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
            slot,
        })
    }

    /// A live connection to `key` with this stream counted on it: an open
    /// one, or one connecting (opened with `connect` if every connection
    /// is busy), whose handshakes this waits for.
    async fn connection<F>(
        &self,
        key: &PoolKey,
        connect: impl FnOnce() -> F,
    ) -> Result<(SendRequest<Bytes>, StreamSlot), HboneError>
    where
        F: Future<Output = Result<SendRequest<Bytes>, HboneError>> + Send + 'static,
    {
        let (state, slot) = self.assign(key, connect);
        let send = match state {
            ConnectionState::Open(send) => send,
            ConnectionState::Connecting(handshake) => match handshake.outcome().await {
                Some(Ok(send)) => send,
                Some(Err(error)) => return Err(HboneError::Shared(error)),
                None => return Err(HboneError::Abandoned(key.addr)),
            },
        };
        Ok((send, slot))
    }

    /// Assigns a stream to the least busy connection to `key`, or to a new
    /// one whose handshakes start now; the lock is held only here, never
    /// across a wait.
    fn assign<F>(&self, key: &PoolKey, connect: impl FnOnce() -> F) -> (ConnectionState, StreamSlot)
    where
        F: Future<Output = Result<SendRequest<Bytes>, HboneError>> + Send + 'static,
    {
        let mut destinations = self
            .destinations
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let pooled = destinations.entry(key.clone()).or_default();
        // A closed connection fails `ready()`; drop the ones h2 has given up on.
        pooled.retain(|c| !c.is_closed());
        let loads: Vec<u32> = pooled
            .iter()
            .map(|c| c.streams.load(Ordering::Relaxed))
            .collect();
        if let Some(index) = pick_connection(&loads) {
            let chosen = &pooled[index];
            return (
                chosen.state.clone(),
                StreamSlot::take(chosen.streams.clone()),
            );
        }
        let (handshake, starter) = Handshake::new();
        let streams = Arc::new(AtomicU32::new(0));
        pooled.push(PooledConnection {
            streams: streams.clone(),
            state: ConnectionState::Connecting(handshake.clone()),
        });
        drop(destinations);
        let on_end = handshake_ended(
            Arc::downgrade(&self.destinations),
            key.clone(),
            streams.clone(),
        );
        starter.start(connect(), on_end);
        (
            ConnectionState::Connecting(handshake),
            StreamSlot::take(streams),
        )
    }
}

/// What the pool does when a connection's handshakes end: the connection
/// becomes open, or leaves the pool (failed, timed out, abandoned); a
/// destination left with no connection leaves too.
fn handshake_ended(
    destinations: Weak<Mutex<Destinations>>,
    key: PoolKey,
    streams: Arc<AtomicU32>,
) -> impl FnOnce(Option<&Outcome<SendRequest<Bytes>, HboneError>>) + Send + 'static {
    move |outcome| {
        let Some(destinations) = destinations.upgrade() else {
            return;
        };
        let mut destinations = destinations.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(pooled) = destinations.get_mut(&key) else {
            return;
        };
        let this = |c: &PooledConnection| Arc::ptr_eq(&c.streams, &streams);
        match outcome {
            Some(Ok(send)) => {
                if let Some(connection) = pooled.iter_mut().find(|c| this(c)) {
                    connection.state = ConnectionState::Open(send.clone());
                }
            }
            Some(Err(_)) | None => pooled.retain(|c| !this(c)),
        }
        if pooled.is_empty() {
            destinations.remove(&key);
        }
    }
}

/// Opens a TCP + TLS + HTTP/2 connection to the peer's HBONE port, from
/// the pod's network namespace.
async fn connect(context: Arc<PodContext>, key: PoolKey) -> Result<SendRequest<Bytes>, HboneError> {
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
/// streams (connecting ones count the streams waiting for them); `None`
/// means open a new connection.
fn pick_connection(loads: &[u32]) -> Option<usize> {
    let (index, &streams) = loads
        .iter()
        .enumerate()
        .min_by_key(|(_, streams)| **streams)?;
    let spread = streams > 0 && loads.len() < SPREAD_CONNECTIONS;
    (streams < MAX_STREAMS_PER_CONNECTION && !spread).then_some(index)
}

// === impl PooledConnection ===

impl PooledConnection {
    /// Whether h2 has given up on the connection; a connecting one is not
    /// closed (it leaves the pool when its handshakes fail).
    fn is_closed(&self) -> bool {
        let ConnectionState::Open(send) = &self.state else {
            return false;
        };
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        matches!(
            send.clone().poll_ready(&mut cx),
            std::task::Poll::Ready(Err(_))
        )
    }
}

// === impl HboneStream ===

impl HboneStream {
    /// Relays between `tcp` and this stream until both directions are done,
    /// counting bytes from `tcp` as sent and bytes to it as received. The
    /// verdict the destination's agent reports, if any, goes in `reported`.
    pub async fn relay(
        self,
        context: &Arc<PodContext>,
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
        context: &Arc<PodContext>,
        tcp: &tokio::net::TcpStream,
        counts: &ByteCounts,
        reported: &OnceLock<Authorization>,
    ) -> std::io::Result<(SendStream<Bytes>, h2::RecvStream, StreamSlot)> {
        let mut first = FirstBytes::Unread;
        let mut reader = ChunkReader::new(tcp, FIRST_CHUNK);
        let mut retries = 0;
        loop {
            let response = if matches!(first, FirstBytes::Unread) {
                tokio::select! {
                    response = &mut self.response => response,
                    chunk = reader.next_chunk() => {
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
