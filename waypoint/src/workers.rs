//! The data path's threads, one event loop per core as Envoy's workers.
//! Each worker is a thread with a single-threaded tokio runtime and its
//! own connections to backends. The HBONE listener ([`Workers::serve`])
//! hands accepted connections to the workers in turn; from then on everything the
//! connection does (its streams, their requests, the backend connections
//! they use) runs on its worker's thread, so a request is never handed to
//! another thread, which would cost a wake-up per hand-off (on a
//! multi-threaded runtime, several per request). Configuration, the routes'
//! runtime state, circuit breakers, outlier detection and metrics are
//! shared by all workers.

use std::{
    io,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread::JoinHandle,
};

use mesh_proxy::accept::accept_until;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::{Waypoint, inbound};

/// An accepted HBONE connection on its way to a worker.
type Accepted = (std::net::TcpStream, SocketAddr);

/// Why the workers could not start.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// A worker's runtime could not be built.
    #[error("cannot start worker {worker}'s event loop: {source}")]
    Runtime {
        /// The worker.
        worker: usize,
        /// The error.
        source: io::Error,
    },
    /// A worker's thread could not be started.
    #[error("cannot start worker thread {worker}: {source}")]
    Thread {
        /// The worker.
        worker: usize,
        /// The error.
        source: io::Error,
    },
}

/// The running workers.
pub struct Workers {
    queues: Vec<mpsc::UnboundedSender<Accepted>>,
    next: AtomicU64,
    threads: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Starts `count` workers (at least one), each with its own copy of
    /// `base` (its own connections to backends), until `cancel`.
    pub fn start(
        base: &Waypoint,
        count: usize,
        cancel: &CancellationToken,
    ) -> Result<Self, WorkerError> {
        let count = count.max(1);
        let mut queues = Vec::with_capacity(count);
        let mut threads = Vec::with_capacity(count);
        for worker in 0..count {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|source| WorkerError::Runtime { worker, source })?;
            let (queue, accepted) = mpsc::unbounded_channel();
            let waypoint = Arc::new(base.for_worker(worker));
            let cancel = cancel.clone();
            let thread = std::thread::Builder::new()
                .name(format!("worker-{worker}"))
                .spawn(move || runtime.block_on(run(waypoint, accepted, cancel)))
                .map_err(|source| WorkerError::Thread { worker, source })?;
            queues.push(queue);
            threads.push(thread);
        }
        Ok(Self {
            queues,
            next: AtomicU64::new(0),
            threads,
        })
    }

    /// Accepts HBONE connections on `listener` until cancelled, handing
    /// each to a worker.
    pub async fn serve(&self, listener: tokio::net::TcpListener, cancel: CancellationToken) {
        let span = tracing::info_span!("hbone_listener");
        accept_until(&listener, cancel.cancelled(), |tcp, client| {
            self.dispatch(tcp, client);
        })
        .instrument(span)
        .await;
    }

    /// Hands an accepted connection to the next worker in turn. The
    /// connection is closed if the workers have stopped.
    pub fn dispatch(&self, tcp: tokio::net::TcpStream, client: SocketAddr) {
        let tcp = match tcp.into_std() {
            Ok(tcp) => tcp,
            Err(error) => {
                tracing::warn!(%client, %error, "cannot hand an HBONE connection to a worker");
                return;
            }
        };
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        let worker = usize::try_from(turn).unwrap_or_default() % self.queues.len();
        if self.queues[worker].send((tcp, client)).is_err() {
            tracing::debug!(%client, worker, "worker stopped; connection closed");
        }
    }

    /// Waits for every worker to stop (after the token given to
    /// [`start`](Self::start) is cancelled).
    pub fn join(self) {
        drop(self.queues);
        for thread in self.threads {
            if thread.join().is_err() {
                tracing::error!("a worker thread panicked");
            }
        }
    }
}

/// One worker's loop: serves each connection it is handed, on its thread,
/// and closes its pooled backend connections once idle too long.
async fn run(
    waypoint: Arc<Waypoint>,
    mut accepted: mpsc::UnboundedReceiver<Accepted>,
    cancel: CancellationToken,
) {
    let mut sweep = tokio::time::interval(crate::upstream::pool::SWEEP_EVERY);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let (tcp, client) = tokio::select! {
            () = cancel.cancelled() => return,
            _ = sweep.tick() => {
                waypoint.upstreams.close_expired();
                continue;
            }
            next = accepted.recv() => match next {
                Some(next) => next,
                None => return,
            },
        };
        let tcp = match tokio::net::TcpStream::from_std(tcp) {
            Ok(tcp) => tcp,
            Err(error) => {
                tracing::warn!(%client, %error, "worker cannot take an HBONE connection");
                continue;
            }
        };
        waypoint.workers.connection(waypoint.worker);
        inbound::spawn_connection(waypoint.clone(), tcp, client);
    }
}

/// The number of workers for `--workers N`: `N`, or with 0 one per CPU
/// the process may use.
#[must_use]
pub fn count(requested: usize) -> usize {
    if requested > 0 {
        return requested;
    }
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker_stats::WorkerStats;

    #[test]
    fn counts_per_worker_and_ignores_unknown_workers() {
        let stats = WorkerStats::new(2);
        stats.connection(1);
        stats.request(1);
        stats.request(1);
        stats.request(7);
        let view = stats.view();
        assert_eq!(view.len(), 2);
        assert_eq!((view[0].connections, view[0].requests), (0, 0));
        assert_eq!((view[1].connections, view[1].requests), (1, 2));
        assert_eq!(count(3), 3);
        assert!(count(0) >= 1);
    }
}
