//! ambit's waypoint: the per-namespace L7 proxy. Node agents send it the
//! HBONE streams of clients that dialled a Service using it; it applies
//! HTTP authorization, routing, retries, timeouts and resilience, then
//! opens HBONE to the chosen backend pod's agent.
//!
//! - [`flow`]: the vocabulary (an accepted stream, its protocol, bodies,
//!   the access log); the bottom module, which imports none of the others.
//! - [`inbound`]: HBONE streams served, and protocol detection.
//! - [`http_proxy`]: one HTTP request, from authorization to response.
//! - [`deadline`]: response bodies cut at the route's timeouts.
//! - [`opaque`]: streams that are not HTTP, passed through under L4 policy.
//! - [`upstream`]: HBONE (through `mesh_proxy`'s pool) and plain
//!   connections to backends, and a worker's HTTP connections over them
//!   (`upstream::pool`).
//! - [`resilience`]: rate limits, retry budgets, circuit breakers, outlier
//!   detection and the least-request balancer.
//! - [`state`]: services, endpoints, policies and routes, from the
//!   configuration file.
//! - [`workers`]: the data path's threads, one event loop each, and the
//!   HBONE listener that hands them connections.
//! - [`worker_stats`]: what each worker has served, for `/config`.
//! - [`admin`] and [`readiness`]: metrics and readiness on the pod's
//!   address, the admin views on localhost.
//!
//! Modules import only downward (`cargo xtask lint` checks it); bottom first,
//! each line using only the lines above it:
//!
//! 1. `config`, `identity`, `metrics`, `readiness`, `resilience`, `state`,
//!    `trace`, `worker_stats`
//! 2. `admin`, `flow`, `runtime`
//! 3. `authz`, `deadline`, `upstream`
//! 4. `http_proxy`, `opaque`
//! 5. `inbound`
//! 6. `workers`

use std::sync::Arc;

pub mod admin;
pub mod authz;
pub mod config;
pub mod deadline;
pub mod flow;
pub mod http_proxy;
pub mod identity;
pub mod inbound;
pub mod metrics;
pub mod opaque;
pub mod readiness;
pub mod resilience;
pub mod runtime;
pub mod state;
pub mod trace;
pub mod upstream;
pub mod worker_stats;
pub mod workers;

/// Everything a stream or request of the waypoint needs: one per worker,
/// sharing all but the connections to backends.
pub struct Waypoint {
    /// Who the waypoint is, as services name it.
    pub name: state::WaypointName,
    /// Its identity and certificate.
    pub identity: Arc<identity::WaypointIdentity>,
    /// The current configuration.
    pub state: state::SharedState,
    /// Connections to backends, this worker's own.
    pub upstreams: upstream::Upstreams,
    /// Per-route and per-backend state that outlives configuration changes.
    pub runtime: Arc<runtime::Runtime>,
    /// Its metrics.
    pub metrics: Arc<metrics::Metrics>,
    /// The command line.
    pub config: Arc<config::Config>,
    /// Which worker this copy belongs to.
    pub worker: usize,
    /// What each worker has served.
    pub workers: Arc<worker_stats::WorkerStats>,
}

impl Waypoint {
    /// The copy worker `worker` uses: the same configuration, state and
    /// metrics, with connections to backends of its own.
    #[must_use]
    pub fn for_worker(&self, worker: usize) -> Self {
        Self {
            name: self.name.clone(),
            identity: self.identity.clone(),
            state: self.state.clone(),
            upstreams: upstream::Upstreams::new(
                self.identity.clone(),
                self.state.clone(),
                self.runtime.breakers(),
                self.metrics.backend_connections.clone(),
            ),
            runtime: self.runtime.clone(),
            metrics: self.metrics.clone(),
            config: self.config.clone(),
            worker,
            workers: self.workers.clone(),
        }
    }
}
