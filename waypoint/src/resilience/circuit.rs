//! Circuit breaking per backend endpoint: at most `max_connections`
//! connections, `max_requests` requests in flight, and `max_pending_requests`
//! requests waiting for a slot. Past a limit the request is refused at once
//! (503, `UO`) instead of queueing without bound behind a slow endpoint; the
//! refusal says which limit and which endpoint.

use std::{
    fmt,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[cfg(test)]
mod tests;

/// The limits; `None` is unlimited.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Limits {
    /// Connections open to the endpoint.
    pub max_connections: Option<u32>,
    /// Requests waiting for a slot.
    pub max_pending_requests: Option<u32>,
    /// Requests in flight.
    pub max_requests: Option<u32>,
}

/// Which limit refused a request or connection; the message is the body of
/// the 503.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Overflow {
    /// Every slot was taken and too many requests already waited for one.
    #[error(
        "circuit breaker open: {waiting} requests already waiting for a slot{} (max-pending-requests {max})",
        At("at", *.endpoint)
    )]
    PendingRequests {
        /// The endpoint, when the breaker knows it.
        endpoint: Option<SocketAddr>,
        /// Waiting now.
        waiting: u32,
        /// The limit.
        max: u32,
    },
    /// Every slot was taken and none freed up in time.
    #[error(
        "circuit breaker open: {max} requests in flight{} (max-requests {max}), none finished within {waited:?}",
        At("to", *.endpoint)
    )]
    Requests {
        /// The endpoint, when the breaker knows it.
        endpoint: Option<SocketAddr>,
        /// The limit.
        max: u32,
        /// How long the request waited.
        waited: Duration,
    },
    /// Too many connections.
    #[error(
        "circuit breaker open: {max} connections open{} (max-connections {max})",
        At("to", *.endpoint)
    )]
    Connections {
        /// The endpoint, when the breaker knows it.
        endpoint: Option<SocketAddr>,
        /// The limit.
        max: u32,
    },
}

/// One endpoint's breaker.
#[derive(Debug)]
pub struct CircuitBreaker {
    endpoint: Option<SocketAddr>,
    limits: Limits,
    /// Slots of `max_requests`; `None` when unlimited.
    slots: Option<Arc<Semaphore>>,
    active: Arc<AtomicU32>,
    pending: AtomicU32,
    connections: Arc<AtomicU32>,
}

/// A request slot, released on drop.
#[derive(Debug)]
pub struct RequestPermit {
    _slot: Option<OwnedSemaphorePermit>,
    active: Arc<AtomicU32>,
}

/// A connection slot, released on drop.
#[derive(Debug)]
pub struct ConnectionPermit {
    connections: Arc<AtomicU32>,
}

/// Counts one waiting request while alive, so a cancelled wait uncounts.
struct Waiting<'a>(&'a AtomicU32);

/// " to 10.1.0.4:80" in a message, or nothing when the endpoint is unknown.
struct At(&'static str, Option<SocketAddr>);

// === impl CircuitBreaker ===

impl CircuitBreaker {
    /// A breaker with `limits`; its refusals name no endpoint.
    #[must_use]
    pub fn new(limits: Limits) -> Self {
        let slots = limits.max_requests.map(|max| {
            let permits = usize::try_from(max).unwrap_or(usize::MAX);
            Arc::new(Semaphore::new(permits.min(Semaphore::MAX_PERMITS)))
        });
        Self {
            endpoint: None,
            limits,
            slots,
            active: Arc::default(),
            pending: AtomicU32::new(0),
            connections: Arc::default(),
        }
    }

    /// A breaker of `endpoint` with `limits`; its refusals name it.
    #[must_use]
    pub fn for_endpoint(endpoint: SocketAddr, limits: Limits) -> Self {
        Self {
            endpoint: Some(endpoint),
            ..Self::new(limits)
        }
    }

    /// The limits it enforces.
    #[must_use]
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// A request slot: at once if fewer than `max_requests` are in flight;
    /// else, if fewer than `max_pending_requests` already wait, after
    /// waiting at most `wait` for one to finish.
    pub async fn acquire_request(&self, wait: Duration) -> Result<RequestPermit, Overflow> {
        let slot = match &self.slots {
            None => None,
            Some(slots) => Some(match slots.clone().try_acquire_owned() {
                Ok(slot) => slot,
                Err(_) => self.wait_for_slot(slots, wait).await?,
            }),
        };
        self.active.fetch_add(1, Ordering::AcqRel);
        Ok(RequestPermit {
            _slot: slot,
            active: self.active.clone(),
        })
    }

    async fn wait_for_slot(
        &self,
        slots: &Arc<Semaphore>,
        wait: Duration,
    ) -> Result<OwnedSemaphorePermit, Overflow> {
        let waiting = self.pending.fetch_add(1, Ordering::AcqRel);
        let _waiting = Waiting(&self.pending);
        if let Some(max) = self.limits.max_pending_requests
            && waiting >= max
        {
            return Err(Overflow::PendingRequests {
                endpoint: self.endpoint,
                waiting,
                max,
            });
        }
        let timed_out = Overflow::Requests {
            endpoint: self.endpoint,
            max: self.limits.max_requests.unwrap_or_default(),
            waited: wait,
        };
        if wait.is_zero() {
            return Err(timed_out);
        }
        match tokio::time::timeout(wait, slots.clone().acquire_owned()).await {
            Ok(Ok(slot)) => Ok(slot),
            // The semaphore is never closed; treat it as no slot anyway.
            Ok(Err(_)) | Err(_) => Err(timed_out),
        }
    }

    /// A connection slot, if fewer than `max_connections` are open.
    pub fn try_connection(&self) -> Result<ConnectionPermit, Overflow> {
        let max = self.limits.max_connections.unwrap_or(u32::MAX);
        self.connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < max).then_some(open + 1)
            })
            .map(|_| ConnectionPermit {
                connections: self.connections.clone(),
            })
            .map_err(|_| Overflow::Connections {
                endpoint: self.endpoint,
                max,
            })
    }

    /// Requests in flight (holding a [`RequestPermit`]).
    #[must_use]
    pub fn active_requests(&self) -> u32 {
        self.active.load(Ordering::Acquire)
    }

    /// Requests waiting for a slot.
    #[must_use]
    pub fn pending(&self) -> u32 {
        self.pending.load(Ordering::Acquire)
    }

    /// Connections open (holding a [`ConnectionPermit`]).
    #[must_use]
    pub fn connections(&self) -> u32 {
        self.connections.load(Ordering::Acquire)
    }
}

// === impl RequestPermit ===

impl Drop for RequestPermit {
    fn drop(&mut self) {
        self.active.fetch_sub(1, Ordering::AcqRel);
    }
}

// === impl ConnectionPermit ===

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

// === impl Waiting ===

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

// === impl At ===

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.1 {
            Some(endpoint) => write!(f, " {} {endpoint}", self.0),
            None => Ok(()),
        }
    }
}
