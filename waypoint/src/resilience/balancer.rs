//! Power of two choices on least requests: two distinct endpoints drawn at
//! random among the eligible ones, the one with fewer requests in flight
//! wins (a tie goes to the first drawn, itself random).
//!
//! Eligible are the endpoints outlier detection has not ejected, with two
//! exceptions so that a backend never routes to nothing:
//! - panic threshold: at most `max_ejection_percent` of the endpoints are
//!   kept out at once. Past that, the ejected endpoints whose ejection ends
//!   soonest (for equal lengths, the least recently ejected) are eligible
//!   again until only that share is out. With 0% every endpoint is always
//!   eligible.
//! - fail open: with every endpoint ejected, all are eligible.
//!
//! In-flight counts and health live in `Arc`s, so a balancer rebuilt for a
//! new endpoint list keeps those of the endpoints still present, and a
//! [`Pick`] made before the rebuild still releases its count.

use std::{
    collections::HashMap,
    hash::Hash,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Instant,
};

use super::outlier::{Config, EndpointHealth, Outcome};

#[cfg(test)]
mod tests;

/// A balancer over one backend's endpoints.
#[derive(Debug)]
pub struct LeastRequest<T> {
    entries: Vec<Entry<T>>,
    config: Config,
}

/// A chosen endpoint; counts as in flight until dropped or finished.
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

/// One endpoint's shared state.
#[derive(Debug)]
struct Entry<T> {
    endpoint: T,
    in_flight: Arc<AtomicUsize>,
    attempts: Arc<AtomicU64>,
    health: Arc<EndpointHealth>,
}

// === impl LeastRequest ===

impl<T: Clone> LeastRequest<T> {
    /// A balancer over `endpoints`, each with its own outlier detection as
    /// `config` says.
    #[must_use]
    pub fn new(endpoints: Vec<T>, config: Config) -> Self {
        let entries = endpoints
            .into_iter()
            .map(|endpoint| Entry::new(endpoint, &config))
            .collect();
        Self { entries, config }
    }

    /// Chooses an endpoint; `None` only when there are none.
    #[must_use]
    pub fn pick(&self, now: Instant) -> Option<Pick<T>> {
        // Most picks find no endpoint ejected; those allocate nothing.
        let chosen = if self.entries.iter().any(|e| e.health.is_ejected(now)) {
            let eligible = self.eligible(now);
            self.least_of_two(eligible.len(), |i| eligible[i])?
        } else {
            self.least_of_two(self.entries.len(), |i| i)?
        };
        Some(self.take(chosen))
    }

    /// Like [`pick`](Self::pick), but avoiding the endpoints in `tried`
    /// (a retry's earlier attempts) while any other is eligible.
    #[must_use]
    pub fn pick_avoiding(&self, now: Instant, tried: &[T]) -> Option<Pick<T>>
    where
        T: PartialEq,
    {
        if tried.is_empty() {
            return self.pick(now);
        }
        let eligible = self.eligible(now);
        let fresh: Vec<usize> = eligible
            .iter()
            .copied()
            .filter(|&i| !tried.contains(&self.entries[i].endpoint))
            .collect();
        let pool = if fresh.is_empty() { eligible } else { fresh };
        let chosen = self.least_of_two(pool.len(), |i| pool[i])?;
        Some(self.take(chosen))
    }

    /// Counts a pick of entry `chosen`.
    fn take(&self, chosen: usize) -> Pick<T> {
        let entry = self.entries[chosen].clone();
        entry.in_flight.fetch_add(1, Ordering::Relaxed);
        entry.attempts.fetch_add(1, Ordering::Relaxed);
        Pick { entry }
    }

    /// Of two distinct candidates among `n` (mapped to entries by `index`),
    /// the one with fewer requests in flight.
    fn least_of_two(&self, n: usize, index: impl Fn(usize) -> usize) -> Option<usize> {
        if n <= 1 {
            return (n == 1).then(|| index(0));
        }
        let first = fastrand::usize(..n);
        let mut second = fastrand::usize(..n - 1);
        if second >= first {
            second += 1;
        }
        let (first, second) = (index(first), index(second));
        let load = |i: usize| self.entries[i].in_flight.load(Ordering::Relaxed);
        Some(if load(second) < load(first) {
            second
        } else {
            first
        })
    }

    /// Indexes of the endpoints a pick may choose (see the module docs).
    fn eligible(&self, now: Instant) -> Vec<usize> {
        let (mut eligible, mut ejected): (Vec<usize>, Vec<usize>) =
            (0..self.entries.len()).partition(|&i| !self.entries[i].health.is_ejected(now));
        if eligible.is_empty() {
            return ejected;
        }
        let percent = usize::try_from(self.config.max_ejection_percent.min(100)).unwrap_or(100);
        let max_out = self.entries.len() * percent / 100;
        if ejected.len() > max_out {
            ejected.sort_by_key(|&i| self.entries[i].health.ejected_until());
            let readmitted = ejected.len() - max_out;
            eligible.extend(ejected.into_iter().take(readmitted));
        }
        eligible
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

    /// The outlier detection settings.
    #[must_use]
    pub fn config(&self) -> &Config {
        &self.config
    }
}

impl<T: Clone + Eq + Hash> LeastRequest<T> {
    /// A balancer over `endpoints` with the same settings, keeping the
    /// in-flight counts, attempts and health of those this one has; the
    /// others start afresh.
    #[must_use]
    pub fn rebuild(&self, endpoints: Vec<T>) -> Self {
        let known: HashMap<&T, &Entry<T>> = self
            .entries
            .iter()
            .map(|entry| (&entry.endpoint, entry))
            .collect();
        let entries = endpoints
            .into_iter()
            .map(|endpoint| match known.get(&endpoint) {
                Some(entry) => (*entry).clone(),
                None => Entry::new(endpoint, &self.config),
            })
            .collect();
        Self {
            entries,
            config: self.config.clone(),
        }
    }
}

// === impl Pick ===

impl<T> Pick<T> {
    /// The chosen endpoint.
    #[must_use]
    pub fn endpoint(&self) -> &T {
        &self.entry.endpoint
    }

    /// Records how the attempt ended with the endpoint's outlier detection;
    /// returns whether that ejected it. The pick ends here.
    pub fn finish(self, outcome: Outcome, now: Instant) -> bool {
        self.entry.health.record(outcome, now)
    }
}

impl<T> Drop for Pick<T> {
    fn drop(&mut self) {
        self.entry.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

// === impl Entry ===

impl<T> Entry<T> {
    fn new(endpoint: T, config: &Config) -> Self {
        Self {
            endpoint,
            in_flight: Arc::default(),
            attempts: Arc::default(),
            health: Arc::new(EndpointHealth::new(config.clone())),
        }
    }
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
