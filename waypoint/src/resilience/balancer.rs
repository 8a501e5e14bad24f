//! Power of two choices on least requests: two distinct endpoints drawn at
//! random among those not ejected, the one with fewer requests in flight
//! wins. At most `max_ejection_percent` of the endpoints are kept out at
//! once: past that, the ejected ones whose ejection ends soonest are
//! eligible again (a panic threshold, so that a backend-wide failure does
//! not shrink it to nothing); with every endpoint ejected, all are
//! eligible. Counts and health live in `Arc`s, so a balancer rebuilt for a
//! new endpoint list keeps those of the endpoints still present.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Instant,
};

use super::outlier::{Config, EndpointHealth, Outcome};

/// One endpoint's shared state.
#[derive(Debug)]
struct Entry<T> {
    endpoint: T,
    in_flight: Arc<AtomicUsize>,
    attempts: Arc<AtomicU64>,
    health: Arc<EndpointHealth>,
}

impl<T: Clone> Clone for Entry<T> {
    fn clone(&self) -> Self {
        Self {
            endpoint: self.endpoint.clone(),
            in_flight: self.in_flight.clone(),
            attempts: self.attempts.clone(),
            health: self.health.clone(),
        }
    }
}

/// A balancer over one backend's endpoints.
#[derive(Debug)]
pub struct LeastRequest<T> {
    entries: Vec<Entry<T>>,
    config: Config,
}

/// A chosen endpoint; counts as in flight until dropped.
#[derive(Debug)]
pub struct Pick<T> {
    entry: Entry<T>,
}

/// What the admin view shows of one endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointStatus<T> {
    /// The endpoint.
    pub endpoint: T,
    /// Requests in flight.
    pub in_flight: usize,
    /// Attempts sent to it.
    pub attempts: u64,
    /// Whether it is ejected now.
    pub ejected: bool,
    /// Times it was ejected.
    pub ejections: u64,
}

impl<T: Clone + PartialEq> LeastRequest<T> {
    /// A balancer over `endpoints`, ejecting as `config` says.
    #[must_use]
    pub fn new(endpoints: Vec<T>, config: Config) -> Self {
        let entries = endpoints
            .into_iter()
            .map(|endpoint| Entry {
                endpoint,
                in_flight: Arc::default(),
                attempts: Arc::default(),
                health: Arc::new(EndpointHealth::new(config.clone())),
            })
            .collect();
        Self { entries, config }
    }

    /// A balancer over `endpoints` that keeps the counts and health of
    /// those this one has.
    #[must_use]
    pub fn rebuild(&self, endpoints: Vec<T>) -> Self {
        let entries = endpoints
            .into_iter()
            .map(|endpoint| {
                self.entries
                    .iter()
                    .find(|e| e.endpoint == endpoint)
                    .cloned()
                    .unwrap_or_else(|| Entry {
                        endpoint,
                        in_flight: Arc::default(),
                        attempts: Arc::default(),
                        health: Arc::new(EndpointHealth::new(self.config.clone())),
                    })
            })
            .collect();
        Self {
            entries,
            config: self.config.clone(),
        }
    }

    /// Chooses an endpoint; `None` only when there are none.
    #[must_use]
    pub fn pick(&self, now: Instant) -> Option<Pick<T>> {
        let eligible = self.eligible(now);
        let chosen = match eligible.len() {
            0 => return None,
            1 => eligible[0],
            n => {
                let a = fastrand::usize(..n);
                let mut b = fastrand::usize(..n - 1);
                if b >= a {
                    b += 1;
                }
                let (a, b) = (eligible[a], eligible[b]);
                if self.entries[b].in_flight.load(Ordering::Relaxed)
                    < self.entries[a].in_flight.load(Ordering::Relaxed)
                {
                    b
                } else {
                    a
                }
            }
        };
        let entry = self.entries[chosen].clone();
        entry.in_flight.fetch_add(1, Ordering::Relaxed);
        entry.attempts.fetch_add(1, Ordering::Relaxed);
        Some(Pick { entry })
    }

    /// Indexes of the endpoints a pick may choose.
    fn eligible(&self, now: Instant) -> Vec<usize> {
        let (mut healthy, mut ejected): (Vec<usize>, Vec<usize>) =
            (0..self.entries.len()).partition(|&i| !self.entries[i].health.is_ejected(now));
        if healthy.is_empty() {
            return ejected;
        }
        let total = self.entries.len();
        let max_ejected = total * self.config.max_ejection_percent.min(100) as usize / 100;
        if ejected.len() > max_ejected {
            ejected.sort_by_key(|&i| self.entries[i].health.ejected_until());
            let readmitted = ejected.len() - max_ejected;
            healthy.extend(ejected.into_iter().take(readmitted));
        }
        healthy
    }

    /// Every endpoint's counts and health.
    #[must_use]
    pub fn status(&self, now: Instant) -> Vec<EndpointStatus<T>> {
        self.entries
            .iter()
            .map(|entry| EndpointStatus {
                endpoint: entry.endpoint.clone(),
                in_flight: entry.in_flight.load(Ordering::Relaxed),
                attempts: entry.attempts.load(Ordering::Relaxed),
                ejected: entry.health.is_ejected(now),
                ejections: entry.health.ejections_total(),
            })
            .collect()
    }

    /// The endpoints, in order.
    pub fn endpoints(&self) -> impl Iterator<Item = &T> {
        self.entries.iter().map(|entry| &entry.endpoint)
    }
}

impl<T> Pick<T> {
    /// The chosen endpoint.
    #[must_use]
    pub fn endpoint(&self) -> &T {
        &self.entry.endpoint
    }

    /// Records how the attempt ended; returns whether that ejected the
    /// endpoint. The pick ends here.
    pub fn finish(self, outcome: Outcome, now: Instant) -> bool {
        self.entry.health.record(outcome, now)
    }
}

impl<T> Drop for Pick<T> {
    fn drop(&mut self) {
        self.entry.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn config(failures: u32, max_percent: u32) -> Config {
        Config {
            consecutive_failures: failures,
            base_ejection: Duration::from_secs(30),
            max_ejection_percent: max_percent,
        }
    }

    fn held_counts(balancer: &LeastRequest<u32>, picks: usize) -> Vec<usize> {
        let now = Instant::now();
        let held: Vec<_> = (0..picks).map(|_| balancer.pick(now).unwrap()).collect();
        let mut counts = vec![0; 4];
        for pick in &held {
            counts[*pick.endpoint() as usize] += 1;
        }
        counts
    }

    #[test]
    fn held_picks_spread_evenly() {
        let balancer = LeastRequest::new(vec![0, 1, 2, 3], config(5, 50));
        let counts = held_counts(&balancer, 1000);
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(max - min <= 4, "{counts:?}");
        // All released.
        assert!(
            balancer
                .status(Instant::now())
                .iter()
                .all(|s| s.in_flight == 0)
        );
    }

    #[test]
    fn a_loaded_endpoint_is_avoided() {
        let balancer = LeastRequest::new(vec![0, 1], config(5, 50));
        let now = Instant::now();
        let busy: Vec<_> = (0..50)
            .filter_map(|_| balancer.pick(now).filter(|p| *p.endpoint() == 0))
            .collect();
        let fresh = (0..20)
            .map(|_| *balancer.pick(now).unwrap().endpoint())
            .filter(|e| *e == 1)
            .count();
        assert!(!busy.is_empty());
        assert_eq!(fresh, 20);
    }

    #[test]
    fn ejected_endpoints_get_nothing_within_the_limit() {
        let balancer = LeastRequest::new(vec![0, 1, 2, 3], config(2, 50));
        let now = Instant::now();
        for _ in 0..2 {
            let pick = loop {
                let pick = balancer.pick(now).unwrap();
                if *pick.endpoint() == 3 {
                    break pick;
                }
            };
            pick.finish(Outcome::ConnectFailure, now);
        }
        assert!((0..400).all(|_| *balancer.pick(now).unwrap().endpoint() != 3));
        // Eject two more: only two of four may be out, so the one whose
        // ejection ends first is eligible again.
        for dead in [2, 1] {
            while balancer.status(now)[dead].ejections == 0 {
                if let Some(pick) = balancer.pick(now).filter(|p| *p.endpoint() == dead) {
                    pick.finish(Outcome::ServerError, now);
                }
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..400 {
            seen.insert(*balancer.pick(now).unwrap().endpoint());
        }
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert!(seen.contains(&0));
    }

    #[test]
    fn with_everything_ejected_picks_still_happen() {
        let balancer = LeastRequest::new(vec![0], config(1, 100));
        let now = Instant::now();
        balancer
            .pick(now)
            .unwrap()
            .finish(Outcome::ServerError, now);
        assert!(balancer.status(now)[0].ejected);
        assert!(balancer.pick(now).is_some());
        assert!(
            LeastRequest::<u32>::new(vec![], config(1, 100))
                .pick(now)
                .is_none()
        );
    }

    #[test]
    fn a_rebuild_keeps_what_is_known_of_remaining_endpoints() {
        let balancer = LeastRequest::new(vec![0, 1], config(1, 100));
        let now = Instant::now();
        let held = balancer.pick(now).unwrap();
        let kept = *held.endpoint();
        let rebuilt = balancer.rebuild(vec![kept, 7]);
        let status = rebuilt.status(now);
        assert_eq!(status[0].in_flight, 1);
        assert_eq!(status[1].in_flight, 0);
        drop(held);
        assert_eq!(rebuilt.status(now)[0].in_flight, 0);
    }
}
