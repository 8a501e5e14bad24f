//! Resilience primitives of the waypoint's request path. All are shared by
//! concurrent requests (atomics or short locks), never panic on any input,
//! and take the current time as an argument so tests are deterministic.
//!
//! - [`rate_limit`]: a token bucket per route (429 when empty).
//! - [`retry_budget`]: retries may add only a share of the load.
//! - [`circuit`]: per-endpoint limits on connections, requests in flight
//!   and requests waiting.
//! - [`outlier`]: passive health: consecutive failures eject an endpoint
//!   for a while.
//! - [`balancer`]: power of two choices on least requests, skipping
//!   ejected endpoints.

pub mod balancer;
pub mod circuit;
pub mod outlier;
pub mod rate_limit;
pub mod retry_budget;

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    /// Requests on a multi-threaded runtime share all of these.
    #[test]
    fn every_primitive_is_send_and_sync() {
        fn shared<T: Send + Sync>() {}
        shared::<rate_limit::TokenBucket>();
        shared::<retry_budget::RetryBudget>();
        shared::<circuit::CircuitBreaker>();
        shared::<circuit::RequestPermit>();
        shared::<circuit::ConnectionPermit>();
        shared::<outlier::EndpointHealth>();
        shared::<balancer::LeastRequest<SocketAddr>>();
        shared::<balancer::Pick<SocketAddr>>();
    }
}
