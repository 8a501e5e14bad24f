//! The client side of HBONE: one pool of connections per proxy (per pod for
//! the node agent, per worker for the waypoint), keyed by the peer's
//! identity and HBONE address ([`PoolKey`]). Streams go to the least busy
//! connection; while every connection is busy the pool opens another, up
//! to its spread ([`SPREAD_CONNECTIONS`] by default), so concurrent bulk
//! streams are encrypted on different threads; past that, a connection
//! carries up to [`MAX_STREAMS_PER_CONNECTION`] streams before another is
//! opened. How a connection is opened (which namespace, which socket
//! options, which certificate) is the caller's [`Connect`].
//!
//! Opening a connection never holds the pool's lock: the TCP, TLS and
//! HTTP/2 handshakes run on a task of their own ([`SharedHandshake`]) while
//! the pool lists the connection as connecting. Streams assigned to it wait
//! for it and share its outcome; streams to other destinations never wait
//! on it, so an unreachable destination delays only its own connections.
//! A connecting connection counts its waiting streams like an open one, so
//! the same spreading applies to handshakes: up to the spread run at once
//! for one destination.
//!
//! A stream sends the application's first bytes with its CONNECT (early
//! data), and a stream that the peer refused without processing it
//! (`GOAWAY`, `REFUSED_STREAM`) is opened again with the same first bytes.
//!
//! Connections that carry nothing leave the pool ([`IdleRelease`]): one
//! opened for a burst, beside another to the same destination, after
//! [`IdleRelease::EXTRA`] without a stream; the last one to a destination
//! after [`IdleRelease::LAST`]. Dropping a connection's last handle ends
//! it (h2 sends `GOAWAY` and closes), so an agent that carried a burst
//! returns to the connections, fds and tasks it held before.

use std::{
    collections::HashMap,
    future::Future,
    io,
    net::SocketAddr,
    sync::{
        Arc, Mutex, PoisonError, Weak,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use h2::{RecvStream, SendStream, client::SendRequest};
use mesh_core::identity::SpiffeId;
use tokio::net::TcpStream;

use crate::{
    copy::ChunkReader,
    hbone::{HboneError, MAX_STREAMS_PER_CONNECTION, SPREAD_CONNECTIONS, h2_to_io},
    shared_handshake::{Outcome, SharedHandshake},
};

mod idle;
#[cfg(test)]
mod tests;

pub use idle::IdleRelease;
use idle::release_when_idle;

/// One proxy's HBONE connections.
pub struct HbonePool {
    destinations: Arc<Mutex<Destinations>>,
    /// How many connections busy streams to one destination spread over
    /// before they share.
    spread: usize,
    /// When connections that carry nothing leave.
    idle_release: IdleRelease,
    /// Set by [`HbonePool::retire`]: no stream will come any more.
    retired: Arc<AtomicBool>,
}

/// Opens the TCP + TLS + HTTP/2 connection to a pool key's HBONE port: the
/// caller's part of the pool (where the socket starts, which certificate
/// it presents, how long connecting may take).
pub trait Connect {
    /// A connection to `key.addr` whose certificate is `key.peer`'s; its
    /// driver already spawned.
    fn connect(
        &self,
        key: &PoolKey,
    ) -> impl Future<Output = Result<SendRequest<Bytes>, HboneError>> + Send + 'static;
}

/// Which connections a stream may share: those to the same HBONE address
/// that proved the same identity.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// The identity the peer's certificate must carry.
    pub peer: SpiffeId,
    /// The peer's HBONE address.
    pub addr: SocketAddr,
}

/// An open CONNECT stream whose response has not been read yet; counts
/// against its connection's stream limit until dropped.
pub struct HboneStream {
    send: SendStream<Bytes>,
    response: h2::client::ResponseFuture,
    key: PoolKey,
    authority: SocketAddr,
    slot: StreamSlot,
}

/// A CONNECT stream the peer accepted (200), both halves, with its place on
/// its connection.
pub struct EstablishedStream {
    /// Towards the peer.
    pub send: SendStream<Bytes>,
    /// From the peer.
    pub recv: RecvStream,
    /// The stream's place on its connection; hold it as long as the stream.
    pub slot: StreamSlot,
}

/// A stream's place on a connection, taken when the stream is assigned:
/// the pool counts it until it is dropped.
pub struct StreamSlot(Arc<ConnectionLoad>);

/// What a pooled connection carries: streams now, and streams ever
/// assigned (so that one that came and went between two looks counts as
/// use). Identifies the connection in the pool.
#[derive(Debug, Default)]
struct ConnectionLoad {
    streams: AtomicU32,
    assigned: AtomicU64,
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

/// A connection of the pool, open or still connecting.
struct PooledConnection {
    /// Streams assigned to it, counted from the moment they are assigned,
    /// also while it is connecting. Identifies the connection in the pool.
    load: Arc<ConnectionLoad>,
    state: ConnectionState,
}

#[derive(Clone)]
enum ConnectionState {
    /// The handshakes are under way; the streams assigned wait for them.
    Connecting(Handshake),
    /// Ready for streams.
    Open(SendRequest<Bytes>),
}

// === impl HbonePool ===

impl HbonePool {
    /// A pool whose busy streams to one destination spread over up to
    /// `spread` connections before they share (at least one).
    #[must_use]
    pub fn with_spread(spread: usize) -> Self {
        Self {
            destinations: Arc::default(),
            spread: spread.max(1),
            idle_release: IdleRelease::default(),
            retired: Arc::default(),
        }
    }

    /// The proxy this pool serves opens no more streams (its pod left the
    /// mesh, or its agent handed the pod over and drains): each connection
    /// leaves as soon as it carries none, instead of after its
    /// [`IdleRelease`] time (for the last one to a destination, minutes in
    /// which it would hold its peer's socket, task and TLS state too).
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
    }

    /// The same pool, letting idle connections go after `idle_release`.
    #[must_use]
    pub fn with_idle_release(self, idle_release: IdleRelease) -> Self {
        Self {
            idle_release,
            ..self
        }
    }

    /// Opens a CONNECT stream to `authority` through the HBONE port
    /// `key.addr`, whose certificate must be `key.peer`'s; a new connection
    /// is opened with `connector`.
    ///
    /// A connection that turns out to be going away when the stream is sent
    /// on it (its `GOAWAY` arrived after the pool picked it, or right after
    /// its handshakes: a peer handing its pods over) leaves the pool, and
    /// the stream goes on another, up to [`REFUSED_STREAM_RETRIES`] times.
    pub async fn open_stream(
        &self,
        connector: &impl Connect,
        key: &PoolKey,
        authority: SocketAddr,
    ) -> Result<HboneStream, HboneError> {
        let request = || {
            http::Request::builder()
                .method(http::Method::CONNECT)
                .uri(authority.to_string())
                .body(())
                .map_err(|_| HboneError::BadAuthority(authority))
        };
        let mut retries = 0;
        loop {
            let (send, slot) = self.connection(key, || connector.connect(key)).await?;
            let connect_request = match send.ready().await {
                Ok(mut ready) => ready.send_request(request()?, false),
                Err(error) => Err(error),
            };
            match connect_request {
                // The response is not awaited here: the application's first
                // bytes may follow the CONNECT headers at once (HTTP/2 allows
                // DATA before the response), which saves a round trip per
                // connection. A refusal still ends the stream and closes the
                // application's connection.
                Ok((response, send)) => {
                    return Ok(HboneStream {
                        send,
                        response,
                        key: key.clone(),
                        authority,
                        slot,
                    });
                }
                Err(error) if refused_unprocessed(&error) && retries < REFUSED_STREAM_RETRIES => {
                    retries += 1;
                    tracing::debug!(addr = %key.addr, %error, retries, "the connection is going away; sending the stream on another");
                    self.forget(key, &slot);
                }
                Err(source) => {
                    return Err(HboneError::H2 {
                        addr: key.addr,
                        source,
                    });
                }
            }
        }
    }

    /// Takes the connection that `slot` is on out of the pool: it is going
    /// away, and no stream is to be assigned to it any more.
    fn forget(&self, key: &PoolKey, slot: &StreamSlot) {
        let mut destinations = self
            .destinations
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        leave_pool(&mut destinations, key, &slot.0);
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
            .map(|c| c.load.streams.load(Ordering::Relaxed))
            .collect();
        if let Some(index) = pick_connection(&loads, self.spread) {
            let chosen = &pooled[index];
            return (chosen.state.clone(), StreamSlot::take(chosen.load.clone()));
        }
        let (handshake, starter) = Handshake::new();
        let load = Arc::new(ConnectionLoad::default());
        pooled.push(PooledConnection {
            load: load.clone(),
            state: ConnectionState::Connecting(handshake.clone()),
        });
        drop(destinations);
        let on_end = handshake_ended(
            Arc::downgrade(&self.destinations),
            key.clone(),
            load.clone(),
            (self.idle_release, self.retired.clone()),
        );
        starter.start(connect(), on_end);
        (
            ConnectionState::Connecting(handshake),
            StreamSlot::take(load),
        )
    }
}

impl Default for HbonePool {
    /// A pool that spreads over [`SPREAD_CONNECTIONS`] connections.
    fn default() -> Self {
        Self::with_spread(SPREAD_CONNECTIONS)
    }
}

/// What the pool does when a connection's handshakes end: the connection
/// becomes open (and is let go once idle, see [`release_when_idle`]), or
/// leaves the pool (failed, timed out, abandoned); a destination left with
/// no connection leaves too.
fn handshake_ended(
    weak: Weak<Mutex<Destinations>>,
    key: PoolKey,
    load: Arc<ConnectionLoad>,
    idle_release: (IdleRelease, Arc<AtomicBool>),
) -> impl FnOnce(Option<&Outcome<SendRequest<Bytes>, HboneError>>) + Send + 'static {
    move |outcome| {
        let Some(destinations) = weak.upgrade() else {
            return;
        };
        let mut destinations = destinations.lock().unwrap_or_else(PoisonError::into_inner);
        match outcome {
            Some(Ok(send)) => {
                let connection = destinations
                    .get_mut(&key)
                    .and_then(|pooled| pooled.iter_mut().find(|c| Arc::ptr_eq(&c.load, &load)));
                if let Some(connection) = connection {
                    connection.state = ConnectionState::Open(send.clone());
                    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                        runtime.spawn(release_when_idle(weak.clone(), key, load, idle_release));
                    }
                }
            }
            Some(Err(_)) | None => leave_pool(&mut destinations, &key, &load),
        }
    }
}

/// Takes the connection whose load is `load` out of the pool, and its
/// destination too when no connection is left there.
fn leave_pool(destinations: &mut Destinations, key: &PoolKey, load: &Arc<ConnectionLoad>) {
    if let Some(pooled) = destinations.get_mut(key) {
        pooled.retain(|c| !Arc::ptr_eq(&c.load, load));
        if pooled.is_empty() {
            destinations.remove(key);
        }
    }
}

/// Which pooled connection a new stream goes on, given each connection's
/// streams (connecting ones count the streams waiting for them) and how
/// many connections busy streams spread over; `None` means open a new
/// connection.
fn pick_connection(loads: &[u32], spread: usize) -> Option<usize> {
    let (index, &streams) = loads
        .iter()
        .enumerate()
        .min_by_key(|(_, streams)| **streams)?;
    let spread = streams > 0 && loads.len() < spread;
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
    /// counting bytes from `tcp` in `sent` and bytes to it in `received`.
    /// The CONNECT response's headers go to `on_response` (the agent reads
    /// the destination's verdict from them). See [`Self::establish`].
    pub async fn relay<C: Connect>(
        self,
        pool: &HbonePool,
        connector: &C,
        tcp: &TcpStream,
        sent: &AtomicU64,
        received: &AtomicU64,
        on_response: impl FnOnce(&http::HeaderMap),
    ) -> io::Result<()> {
        let stream =
            Box::pin(self.establish(pool, connector, Some((tcp, sent)), on_response)).await?;
        let EstablishedStream { send, recv, slot } = stream;
        let relayed =
            crate::relay::relay(tcp, send, std::future::ready(Ok(recv)), sent, received).await;
        drop(slot);
        relayed
    }

    /// Waits, at most `timeout`, for the CONNECT response, for a caller
    /// with no first bytes to send (the waypoint's HTTP connections).
    pub async fn established<C: Connect>(
        self,
        pool: &HbonePool,
        connector: &C,
        timeout: Duration,
    ) -> Result<EstablishedStream, HboneError> {
        let addr = self.key.addr;
        tokio::time::timeout(timeout, self.establish(pool, connector, None, |_| {}))
            .await
            .map_err(|_| HboneError::Timeout(addr))?
            .map_err(|error| match error.downcast::<HboneError>() {
                Ok(error) => error,
                Err(error) => HboneError::Socket(error),
            })
    }

    /// Waits for the CONNECT response, sending the application's first
    /// bytes (read from `first`, if given, and counted there) meanwhile as
    /// early data, and no more, so they can be sent again. A stream the
    /// peer refused without processing it, because it was going away
    /// (`GOAWAY` after a handoff, or `REFUSED_STREAM`), is opened again on
    /// a new connection with the same first bytes, up to
    /// [`REFUSED_STREAM_RETRIES`] times: a handoff must not fail a
    /// connection.
    pub async fn establish<C: Connect>(
        mut self,
        pool: &HbonePool,
        connector: &C,
        first: Option<(&TcpStream, &AtomicU64)>,
        on_response: impl FnOnce(&http::HeaderMap),
    ) -> io::Result<EstablishedStream> {
        let mut sent_first = FirstBytes::Unread;
        let mut reader = first.map(|(tcp, counted)| (ChunkReader::new(tcp, FIRST_CHUNK), counted));
        let mut retries = 0;
        // Sending the first bytes fails when the peer has already answered
        // and closed the stream (a refusal races with the early data): its
        // response says why, so it is read before this error is returned.
        let mut send_failed = None;
        loop {
            let response = match (&mut reader, &sent_first) {
                (Some((reader, counted)), FirstBytes::Unread) => tokio::select! {
                    response = &mut self.response => response,
                    chunk = reader.next_chunk() => {
                        sent_first = match chunk? {
                            Some(data) => {
                                counted.fetch_add(data.len() as u64, Ordering::Relaxed);
                                FirstBytes::Data(data)
                            }
                            None => FirstBytes::Eof,
                        };
                        send_failed = self.send_first(&sent_first).err();
                        continue;
                    }
                },
                _ => (&mut self.response).await,
            };
            match response {
                Ok(response) => {
                    on_response(response.headers());
                    let status = response.status();
                    if status != http::StatusCode::OK {
                        return Err(io::Error::other(HboneError::Refused {
                            addr: self.key.addr,
                            authority: self.authority,
                            status,
                        }));
                    }
                    if let Some(error) = send_failed {
                        return Err(error);
                    }
                    return Ok(EstablishedStream {
                        send: self.send,
                        recv: response.into_body(),
                        slot: self.slot,
                    });
                }
                Err(error) if refused_unprocessed(&error) && retries < REFUSED_STREAM_RETRIES => {
                    retries += 1;
                    tracing::debug!(addr = %self.key.addr, %error, retries, "the peer refused the stream unprocessed (going away); opening it again");
                    self = pool
                        .open_stream(connector, &self.key, self.authority)
                        .await
                        .map_err(io::Error::other)?;
                    self.send_first(&sent_first)?;
                    send_failed = None;
                }
                Err(source) => {
                    return Err(io::Error::other(HboneError::H2 {
                        addr: self.key.addr,
                        source,
                    }));
                }
            }
        }
    }

    /// Sends the first bytes read (again, on a reopened stream).
    fn send_first(&mut self, first: &FirstBytes) -> io::Result<()> {
        match first {
            FirstBytes::Unread => Ok(()),
            FirstBytes::Data(data) => self.send.send_data(data.clone(), false).map_err(h2_to_io),
            FirstBytes::Eof => self.send.send_data(Bytes::new(), true).map_err(h2_to_io),
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
    fn take(load: Arc<ConnectionLoad>) -> Self {
        load.streams.fetch_add(1, Ordering::Relaxed);
        load.assigned.fetch_add(1, Ordering::Relaxed);
        Self(load)
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Ordering::Relaxed);
    }
}
