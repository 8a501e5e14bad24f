//! A worker's HBONE connections to backend agents: one per (peer identity,
//! HBONE address), each multiplexing up to the peer's stream limit.
//!
//! Opening one never holds the table's lock: the handshakes run on a task
//! of their own ([`SharedHandshake`]) while the table lists the connection
//! as connecting. Requests for the same peer wait for that handshake and
//! all get its outcome; requests for other peers go on at once, so an
//! unreachable endpoint delays only its own requests. A failed handshake
//! leaves the table: the next request tries afresh.

use std::{
    collections::HashMap,
    future::Future,
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError, Weak},
    task::{Context, Poll},
};

use bytes::Bytes;
use h2::client::SendRequest;
use mesh_core::{
    hbone::{SharedHandshake, shared_handshake::Outcome},
    identity::SpiffeId,
};

use super::UpstreamError;

#[cfg(test)]
mod tests;

/// A worker's HBONE connections, by peer identity and HBONE address.
#[derive(Default)]
pub(super) struct HboneConnections {
    table: Arc<Mutex<Table>>,
}

type Key = (SpiffeId, SocketAddr);

type Table = HashMap<Key, Connection>;

type Handshake = SharedHandshake<SendRequest<Bytes>, UpstreamError>;

#[derive(Clone)]
enum Connection {
    /// The handshakes are under way; requests wait for them.
    Connecting(Handshake),
    /// Ready for streams.
    Open(SendRequest<Bytes>),
}

// === impl HboneConnections ===

impl HboneConnections {
    /// A live connection to `addr` that proved `peer`'s identity: the open
    /// one, or the one connecting (opened with `connect` if there is none),
    /// whose handshakes this waits for.
    pub(super) async fn get<F>(
        &self,
        peer: &SpiffeId,
        addr: SocketAddr,
        connect: impl FnOnce() -> F,
    ) -> Result<SendRequest<Bytes>, UpstreamError>
    where
        F: Future<Output = Result<SendRequest<Bytes>, UpstreamError>> + Send + 'static,
    {
        match self.look_up((peer.clone(), addr), connect) {
            Connection::Open(send) => Ok(send),
            Connection::Connecting(handshake) => match handshake.outcome().await {
                Some(Ok(send)) => Ok(send),
                Some(Err(error)) => Err(UpstreamError::Shared(error)),
                None => Err(UpstreamError::Abandoned(addr)),
            },
        }
    }

    /// The table's connection to `key`, or a new one whose handshakes
    /// start now; the lock is held only here, never across a wait.
    fn look_up<F>(&self, key: Key, connect: impl FnOnce() -> F) -> Connection
    where
        F: Future<Output = Result<SendRequest<Bytes>, UpstreamError>> + Send + 'static,
    {
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(connection) = table.get(&key).filter(|c| !c.is_closed()) {
            return connection.clone();
        }
        let (handshake, starter) = Handshake::new();
        table.insert(key.clone(), Connection::Connecting(handshake.clone()));
        drop(table);
        let on_end = handshake_ended(Arc::downgrade(&self.table), key, handshake.clone());
        starter.start(connect(), on_end);
        Connection::Connecting(handshake)
    }
}

/// What the table does when a handshake ends: its connection becomes
/// open, or leaves (failed, timed out, abandoned).
fn handshake_ended(
    table: Weak<Mutex<Table>>,
    key: Key,
    handshake: Handshake,
) -> impl FnOnce(Option<&Outcome<SendRequest<Bytes>, UpstreamError>>) + Send + 'static {
    move |outcome| {
        let Some(table) = table.upgrade() else {
            return;
        };
        let mut table = table.lock().unwrap_or_else(PoisonError::into_inner);
        let ours = matches!(
            table.get(&key),
            Some(Connection::Connecting(listed)) if listed.is_same(&handshake)
        );
        if !ours {
            return;
        }
        match outcome {
            Some(Ok(send)) => {
                table.insert(key, Connection::Open(send.clone()));
            }
            Some(Err(_)) | None => {
                table.remove(&key);
            }
        }
    }
}

// === impl Connection ===

impl Connection {
    /// Whether h2 has given up on the connection; a connecting one is not
    /// closed (it leaves the table when its handshakes fail).
    fn is_closed(&self) -> bool {
        let Self::Open(send) = self else {
            return false;
        };
        let mut cx = Context::from_waker(std::task::Waker::noop());
        matches!(send.clone().poll_ready(&mut cx), Poll::Ready(Err(_)))
    }
}
