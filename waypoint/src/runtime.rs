//! State of the waypoint's data path that outlives a configuration change:
//! each route's rate limiter and retry budget, each backend's balancer
//! (in-flight counts and outlier health), each endpoint's circuit breaker.
//! A configuration change that leaves a route's settings or a backend's
//! endpoints as they were keeps them; one that changes them starts afresh
//! (the balancer keeps the counts of endpoints still present).

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use http::StatusCode;
use mesh_core::{
    route::{Route, RouteKey, RoutePolicy},
    service::ServiceKey,
};

use crate::resilience::{
    balancer::LeastRequest,
    circuit::{CircuitBreaker, Limits},
    outlier,
    rate_limit::TokenBucket,
    retry_budget::RetryBudget,
};

/// How long a retry budget remembers requests and retries.
const RETRY_BUDGET_WINDOW: Duration = Duration::from_secs(10);

/// Which balancer: the route that chose the backend (its outlier settings
/// apply), the backend Service and its port.
type BalancerKey = (Option<RouteKey>, ServiceKey, u16);

/// A balancer and the endpoints it was built for.
type KnownBalancer = (Vec<SocketAddr>, Arc<LeastRequest<SocketAddr>>);

/// The data path's long-lived state.
#[derive(Default)]
pub struct Runtime {
    routes: Mutex<HashMap<RouteKey, Arc<RouteRuntime>>>,
    balancers: Mutex<HashMap<BalancerKey, KnownBalancer>>,
    breakers: Breakers,
}

/// Each endpoint's circuit breaker, shared with the connector (which
/// enforces `max-connections`).
pub type Breakers = Arc<Mutex<HashMap<SocketAddr, (Limits, Arc<CircuitBreaker>)>>>;

/// One route's limiter, budget and settings.
pub struct RouteRuntime {
    policy: RoutePolicy,
    rate_limit: Option<TokenBucket>,
    /// Retries may add at most this much load.
    pub retry_budget: RetryBudget,
    /// Circuit-breaker limits for each endpoint of its backends.
    pub limits: Limits,
    /// Outlier detection for its backends.
    pub outlier: outlier::Config,
}

impl RouteRuntime {
    fn new(policy: &RoutePolicy) -> Self {
        Self {
            rate_limit: policy
                .rate_limit
                .as_ref()
                .map(|limit| TokenBucket::new(limit.requests_per_second, limit.burst)),
            retry_budget: RetryBudget::new(
                policy.retry_budget.percent / 100.0,
                policy.retry_budget.min_per_second,
                RETRY_BUDGET_WINDOW,
            ),
            limits: Limits {
                max_connections: policy.circuit_breaker.max_connections,
                max_pending_requests: policy.circuit_breaker.max_pending_requests,
                max_requests: policy.circuit_breaker.max_requests,
            },
            outlier: outlier_config(Some(policy)),
            policy: policy.clone(),
        }
    }

    /// Whether the rate limit lets one more request through now.
    #[must_use]
    pub fn admit(&self, now: Instant) -> bool {
        self.rate_limit
            .as_ref()
            .is_none_or(|bucket| bucket.try_acquire(now))
    }

    /// The status to abort with, when the fault's dice say so.
    #[must_use]
    pub fn fault_abort(&self) -> Option<StatusCode> {
        let abort = self.policy.fault.abort.as_ref()?;
        (fastrand::f64() * 100.0 < abort.percent)
            .then(|| StatusCode::from_u16(abort.status).ok())
            .flatten()
    }

    /// The delay to inject, when the fault's dice say so.
    #[must_use]
    pub fn fault_delay(&self) -> Option<Duration> {
        let delay = self.policy.fault.delay.as_ref()?;
        (fastrand::f64() * 100.0 < delay.percent).then_some(delay.duration)
    }
}

/// Outlier detection as a route's policy (or the defaults) sets it.
fn outlier_config(policy: Option<&RoutePolicy>) -> outlier::Config {
    let defaults = RoutePolicy::default();
    let outlier = &policy.unwrap_or(&defaults).outlier;
    outlier::Config {
        consecutive_failures: outlier.consecutive_failures,
        base_ejection: outlier.base_ejection,
        max_ejection_percent: outlier.max_ejection_percent,
    }
}

impl Runtime {
    /// The runtime of `route`, made afresh when its settings changed.
    pub fn route(&self, route: &Route) -> Arc<RouteRuntime> {
        let mut routes = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(existing) = routes.get(&route.key)
            && existing.policy == route.policy
        {
            return existing.clone();
        }
        let fresh = Arc::new(RouteRuntime::new(&route.policy));
        routes.insert(route.key.clone(), fresh.clone());
        fresh
    }

    /// The balancer over `endpoints` of `service`'s `port`, as chosen by
    /// `route` (`None`: no route, the service itself).
    pub fn balancer(
        &self,
        route: Option<&RouteRuntimeRef<'_>>,
        service: &ServiceKey,
        port: u16,
        endpoints: &[SocketAddr],
    ) -> Arc<LeastRequest<SocketAddr>> {
        let key = (route.map(|r| r.key.clone()), service.clone(), port);
        let config = route.map_or_else(|| outlier_config(None), |r| r.runtime.outlier.clone());
        let mut balancers = self
            .balancers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match balancers.get_mut(&key) {
            Some((known, balancer))
                if known.as_slice() == endpoints && *balancer.config() == config =>
            {
                balancer.clone()
            }
            Some((known, balancer)) if *balancer.config() == config => {
                let rebuilt = Arc::new(balancer.rebuild(endpoints.to_vec()));
                *known = endpoints.to_vec();
                *balancer = rebuilt.clone();
                rebuilt
            }
            _ => {
                // New, or its outlier settings changed: start afresh.
                let fresh = Arc::new(LeastRequest::new(endpoints.to_vec(), config));
                balancers.insert(key, (endpoints.to_vec(), fresh.clone()));
                fresh
            }
        }
    }

    /// The breakers, for the connector.
    #[must_use]
    pub fn breakers(&self) -> Breakers {
        self.breakers.clone()
    }

    /// Every balanced endpoint: its backend, counts and health.
    #[must_use]
    pub fn endpoint_status(&self, now: Instant) -> Vec<serde_json::Value> {
        let balancers = self
            .balancers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut rows: Vec<serde_json::Value> = balancers
            .iter()
            .flat_map(|((route, service, port), (_, balancer))| {
                balancer.status(now).into_iter().map(move |status| {
                    serde_json::json!({
                        "route": route.as_ref().map(ToString::to_string),
                        "backend": format!("{service}:{port}"),
                        "endpoint": status.endpoint.to_string(),
                        "attempts": status.attempts,
                        "inFlight": status.in_flight,
                        "ejected": status.ejected,
                        "ejections": status.ejections,
                    })
                })
            })
            .collect();
        rows.sort_by_key(|row| (row["backend"].to_string(), row["endpoint"].to_string()));
        rows
    }

    /// The circuit breaker of `endpoint` with `limits`.
    pub fn breaker(&self, endpoint: SocketAddr, limits: &Limits) -> Arc<CircuitBreaker> {
        let mut breakers = self.breakers.lock().unwrap_or_else(PoisonError::into_inner);
        match breakers.get(&endpoint) {
            Some((known, breaker)) if known == limits => breaker.clone(),
            _ => {
                let fresh = Arc::new(CircuitBreaker::for_endpoint(endpoint, limits.clone()));
                breakers.insert(endpoint, (limits.clone(), fresh.clone()));
                fresh
            }
        }
    }
}

/// A route's key with its runtime, for choosing its balancer.
pub struct RouteRuntimeRef<'a> {
    /// The route.
    pub key: &'a RouteKey,
    /// Its runtime.
    pub runtime: &'a RouteRuntime,
}
