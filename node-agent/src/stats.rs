//! Per-pod traffic counters, kept by the proxies and shown by the admin API.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::Serialize;

/// Counters of one traffic direction of one pod.
#[derive(Debug, Default)]
pub struct TrafficStats {
    opened: AtomicU64,
    closed: AtomicU64,
    failed: AtomicU64,
    denied: AtomicU64,
    revoked: AtomicU64,
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
}

/// A pod's counters, both directions.
#[derive(Debug, Default)]
pub struct PodStats {
    /// Connections the pod made (captured by `connect4/6`).
    pub outbound: TrafficStats,
    /// Connections made to the pod (steered by `sk_lookup`).
    pub inbound: TrafficStats,
}

/// A point-in-time copy of [`TrafficStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TrafficSnapshot {
    /// Connections accepted by the proxy.
    pub connections_opened: u64,
    /// Connections that finished (successfully or not).
    pub connections_closed: u64,
    /// Connections that failed: no original destination, upstream refused,
    /// I/O error, reset by a policy change.
    pub connections_failed: u64,
    /// Connections refused by an authorization policy.
    pub connections_denied: u64,
    /// Open connections reset because a policy change denies them.
    pub connections_revoked: u64,
    /// Bytes from the connecting side to the destination.
    pub bytes_sent: u64,
    /// Bytes from the destination back to the connecting side.
    pub bytes_received: u64,
}

/// A point-in-time copy of [`PodStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PodStatsSnapshot {
    /// Outbound counters.
    pub outbound: TrafficSnapshot,
    /// Inbound counters.
    pub inbound: TrafficSnapshot,
}

// === impl TrafficStats ===

impl TrafficStats {
    /// A connection was accepted.
    pub fn opened(&self) {
        self.opened.fetch_add(1, Relaxed);
    }

    /// A connection finished after relaying these byte counts.
    pub fn closed(&self, sent: u64, received: u64, failed: bool) {
        self.bytes_sent.fetch_add(sent, Relaxed);
        self.bytes_received.fetch_add(received, Relaxed);
        if failed {
            self.failed.fetch_add(1, Relaxed);
        }
        self.closed.fetch_add(1, Relaxed);
    }

    /// A connection was refused by an authorization policy.
    pub fn denied(&self) {
        self.denied.fetch_add(1, Relaxed);
    }

    /// An open connection was reset by a policy change.
    pub fn revoked(&self) {
        self.revoked.fetch_add(1, Relaxed);
    }

    /// Current values.
    #[must_use]
    pub fn snapshot(&self) -> TrafficSnapshot {
        TrafficSnapshot {
            connections_opened: self.opened.load(Relaxed),
            connections_closed: self.closed.load(Relaxed),
            connections_failed: self.failed.load(Relaxed),
            connections_denied: self.denied.load(Relaxed),
            connections_revoked: self.revoked.load(Relaxed),
            bytes_sent: self.bytes_sent.load(Relaxed),
            bytes_received: self.bytes_received.load(Relaxed),
        }
    }
}

// === impl PodStats ===

impl PodStats {
    /// The counters of one direction.
    #[must_use]
    pub fn direction(&self, direction: crate::flow::Direction) -> &TrafficStats {
        match direction {
            crate::flow::Direction::Outbound => &self.outbound,
            crate::flow::Direction::Inbound => &self.inbound,
        }
    }

    /// Current values.
    #[must_use]
    pub fn snapshot(&self) -> PodStatsSnapshot {
        PodStatsSnapshot {
            outbound: self.outbound.snapshot(),
            inbound: self.inbound.snapshot(),
        }
    }
}
