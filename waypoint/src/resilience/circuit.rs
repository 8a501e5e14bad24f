//! Circuit breaking per backend endpoint: at most `max_connections`
//! connections, `max_requests` requests in flight, and `max_pending_requests`
//! requests waiting for a slot. Past a limit the request is refused at once
//! (503, `UO`) instead of queueing without bound behind a slow endpoint.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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

/// Which limit refused a request or connection.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Overflow {
    /// Too many requests waiting.
    #[error(
        "circuit breaker open: {waiting} requests already wait for a slot (max-pending-requests {max})"
    )]
    PendingRequests {
        /// Waiting now.
        waiting: u32,
        /// The limit.
        max: u32,
    },
    /// No slot freed up in time.
    #[error(
        "circuit breaker open: {max} requests in flight (max-requests {max}) and none finished in time"
    )]
    Requests {
        /// The limit.
        max: u32,
    },
    /// Too many connections.
    #[error("circuit breaker open: {max} connections open (max-connections {max})")]
    Connections {
        /// The limit.
        max: u32,
    },
}

/// One endpoint's breaker.
#[derive(Debug)]
pub struct CircuitBreaker {
    limits: Limits,
    requests: Option<Arc<Semaphore>>,
    pending: AtomicU32,
    connections: Arc<AtomicU32>,
}

/// A request slot, released on drop.
#[derive(Debug)]
pub struct RequestPermit {
    _permit: Option<OwnedSemaphorePermit>,
}

/// A connection slot, released on drop.
#[derive(Debug)]
pub struct ConnectionPermit {
    connections: Arc<AtomicU32>,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counts one waiting request while alive.
struct Waiting<'a>(&'a AtomicU32);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl CircuitBreaker {
    /// A breaker with `limits`.
    #[must_use]
    pub fn new(limits: Limits) -> Self {
        let requests = limits
            .max_requests
            .map(|max| Arc::new(Semaphore::new(usize::try_from(max).unwrap_or(usize::MAX))));
        Self {
            limits,
            requests,
            pending: AtomicU32::new(0),
            connections: Arc::new(AtomicU32::new(0)),
        }
    }

    /// The limits it enforces.
    #[must_use]
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// A request slot: at once if one is free, else after waiting at most
    /// `wait` if fewer than `max_pending_requests` already wait.
    pub async fn acquire_request(&self, wait: Duration) -> Result<RequestPermit, Overflow> {
        let Some(semaphore) = &self.requests else {
            return Ok(RequestPermit { _permit: None });
        };
        if let Ok(permit) = semaphore.clone().try_acquire_owned() {
            return Ok(RequestPermit {
                _permit: Some(permit),
            });
        }
        let max = self.limits.max_requests.unwrap_or_default();
        let waiting = self.pending.fetch_add(1, Ordering::AcqRel);
        let _waiting = Waiting(&self.pending);
        if let Some(max_pending) = self.limits.max_pending_requests
            && waiting >= max_pending
        {
            return Err(Overflow::PendingRequests {
                waiting,
                max: max_pending,
            });
        }
        match tokio::time::timeout(wait, semaphore.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(RequestPermit {
                _permit: Some(permit),
            }),
            _ => Err(Overflow::Requests { max }),
        }
    }

    /// A connection slot, if fewer than `max_connections` are open.
    pub fn try_connection(&self) -> Result<ConnectionPermit, Overflow> {
        let open = self.connections.fetch_add(1, Ordering::AcqRel);
        let permit = ConnectionPermit {
            connections: self.connections.clone(),
        };
        match self.limits.max_connections {
            Some(max) if open >= max => Err(Overflow::Connections { max }),
            _ => Ok(permit),
        }
    }

    /// Requests in flight.
    #[must_use]
    pub fn active_requests(&self) -> u32 {
        match (&self.requests, self.limits.max_requests) {
            (Some(semaphore), Some(max)) => {
                max.saturating_sub(u32::try_from(semaphore.available_permits()).unwrap_or(max))
            }
            _ => 0,
        }
    }

    /// Requests waiting for a slot.
    #[must_use]
    pub fn pending(&self) -> u32 {
        self.pending.load(Ordering::Acquire)
    }

    /// Connections open.
    #[must_use]
    pub fn connections(&self) -> u32 {
        self.connections.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(requests: u32, pending: u32, connections: u32) -> Limits {
        Limits {
            max_connections: Some(connections),
            max_pending_requests: Some(pending),
            max_requests: Some(requests),
        }
    }

    #[tokio::test]
    async fn requests_past_the_limits_are_refused_and_slots_come_back() {
        let breaker = Arc::new(CircuitBreaker::new(limits(1, 1, 1)));
        let first = breaker.acquire_request(Duration::ZERO).await.unwrap();
        assert_eq!(breaker.active_requests(), 1);
        // One may wait; it gets the slot when the first ends.
        let waiter = {
            let breaker = breaker.clone();
            tokio::spawn(async move { breaker.acquire_request(Duration::from_secs(5)).await })
        };
        while breaker.pending() == 0 {
            tokio::task::yield_now().await;
        }
        // A third is refused at once: one already waits.
        assert_eq!(
            breaker
                .acquire_request(Duration::from_secs(5))
                .await
                .unwrap_err(),
            Overflow::PendingRequests { waiting: 1, max: 1 }
        );
        drop(first);
        let second = waiter.await.unwrap().unwrap();
        assert_eq!(breaker.pending(), 0);
        drop(second);
        assert_eq!(breaker.active_requests(), 0);
    }

    #[tokio::test]
    async fn waiting_too_long_overflows() {
        let breaker = CircuitBreaker::new(limits(1, 5, 1));
        let _held = breaker.acquire_request(Duration::ZERO).await.unwrap();
        let refused = breaker.acquire_request(Duration::from_millis(20)).await;
        assert_eq!(refused.unwrap_err(), Overflow::Requests { max: 1 });
        assert_eq!(breaker.pending(), 0);
    }

    #[test]
    fn connections_are_limited_and_released() {
        let breaker = CircuitBreaker::new(limits(1, 1, 2));
        let a = breaker.try_connection().unwrap();
        let _b = breaker.try_connection().unwrap();
        assert_eq!(
            breaker.try_connection().unwrap_err(),
            Overflow::Connections { max: 2 }
        );
        assert_eq!(breaker.connections(), 2);
        drop(a);
        assert!(breaker.try_connection().is_ok());
        let unlimited = CircuitBreaker::new(Limits::default());
        let held: Vec<_> = (0..100)
            .map(|_| unlimited.try_connection().unwrap())
            .collect();
        assert_eq!(held.len(), 100);
    }
}
