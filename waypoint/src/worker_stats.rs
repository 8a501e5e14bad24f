//! What each worker has served (connections accepted, requests handled),
//! for the admin API's `/config`. Counted by the workers and the request
//! path, held by every worker's [`crate::Waypoint`]; it uses no other module.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// What each worker has served, for `/config`.
#[derive(Debug, Default)]
pub struct WorkerStats {
    workers: Vec<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    connections: AtomicU64,
    requests: AtomicU64,
}

/// One worker's counts as `/config` shows them.
#[derive(Debug, Serialize)]
pub struct WorkerView {
    /// The worker's number.
    pub worker: usize,
    /// HBONE connections it accepted.
    pub connections: u64,
    /// HTTP requests it handled.
    pub requests: u64,
}

impl WorkerStats {
    /// Counts for `count` workers, all zero.
    #[must_use]
    pub fn new(count: usize) -> Self {
        Self {
            workers: (0..count).map(|_| Counts::default()).collect(),
        }
    }

    /// Worker `worker` accepted a connection.
    pub fn connection(&self, worker: usize) {
        if let Some(counts) = self.workers.get(worker) {
            counts.connections.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Worker `worker` handled a request.
    pub fn request(&self, worker: usize) {
        if let Some(counts) = self.workers.get(worker) {
            counts.requests.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Every worker's counts.
    #[must_use]
    pub fn view(&self) -> Vec<WorkerView> {
        self.workers
            .iter()
            .enumerate()
            .map(|(worker, counts)| WorkerView {
                worker,
                connections: counts.connections.load(Ordering::Relaxed),
                requests: counts.requests.load(Ordering::Relaxed),
            })
            .collect()
    }
}
