//! When a pooled connection that carries nothing leaves the pool: after
//! its [`IdleRelease`] time, or at once once the pool is retired.

use std::{
    sync::{
        Arc, Mutex, PoisonError, Weak,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use super::{ConnectionLoad, Destinations, PoolKey, leave_pool};

/// How long a pooled connection may carry no stream before the pool lets
/// it go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdleRelease {
    /// For a connection beside others to the same destination.
    pub extra: Duration,
    /// For the last connection to a destination (the next stream there
    /// pays the TCP, TLS and HTTP/2 handshakes again).
    pub last: Duration,
}

impl IdleRelease {
    /// A burst's extra connections go 10 s after it.
    pub const EXTRA: Duration = Duration::from_secs(10);
    /// The last connection to a destination goes after 5 minutes unused.
    pub const LAST: Duration = Duration::from_mins(5);
}

impl Default for IdleRelease {
    fn default() -> Self {
        Self {
            extra: Self::EXTRA,
            last: Self::LAST,
        }
    }
}

/// Watches an open connection of the pool and takes it out once it has
/// carried no stream for its [`IdleRelease`] time (once the pool is
/// retired, for a tick), or once h2 has given up on it; ends with the
/// pool. Dropping the pool's handle, the last one of an idle connection,
/// closes it.
pub(super) async fn release_when_idle(
    destinations: Weak<Mutex<Destinations>>,
    key: PoolKey,
    load: Arc<ConnectionLoad>,
    (release, retired): (IdleRelease, Arc<AtomicBool>),
) {
    let tick = (release.extra.min(release.last) / 4).max(Duration::from_millis(10));
    let mut idle_for = Duration::ZERO;
    let mut seen = load.assigned.load(Ordering::Relaxed);
    loop {
        tokio::time::sleep(tick).await;
        let Some(destinations) = destinations.upgrade() else {
            return;
        };
        // Streams are assigned under the lock, so what is read here stays
        // true until the connection is out.
        let mut destinations = destinations.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(pooled) = destinations.get_mut(&key) else {
            return;
        };
        let Some(connection) = pooled.iter().find(|c| Arc::ptr_eq(&c.load, &load)) else {
            return;
        };
        let assigned = load.assigned.load(Ordering::Relaxed);
        if load.streams.load(Ordering::Relaxed) > 0 || assigned != seen {
            idle_for = Duration::ZERO;
            seen = assigned;
            continue;
        }
        idle_for += tick;
        let limit = if retired.load(Ordering::Relaxed) {
            Duration::ZERO
        } else if pooled.len() > 1 {
            release.extra
        } else {
            release.last
        };
        if idle_for >= limit || connection.is_closed() {
            leave_pool(&mut destinations, &key, &load);
            return;
        }
    }
}
