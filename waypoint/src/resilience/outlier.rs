//! Outlier detection: passive health per endpoint. After
//! `consecutive_failures` failures in a row (a 5xx answer or a failed
//! connection) the endpoint is ejected for `base_ejection` × the number of
//! times it has been ejected (at most 10×). A success resets the streak.
//!
//! Re-admission: once the ejection time is up, the endpoint is eligible
//! again with a clean streak (no probe is needed; the next request is the
//! probe). Failures recorded while it is ejected (requests that were
//! already in flight) neither extend the ejection nor count towards the
//! next one. The ejection count is never forgotten, so an endpoint that
//! keeps failing is kept out longer each time, up to 10 × the base.
//!
//! Whether ejected endpoints are actually skipped is the balancer's call:
//! it keeps at most `max_ejection_percent` of a backend's endpoints out.

use std::{
    sync::{
        Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

/// Longest ejection, in multiples of the base.
const MAX_EJECTION_MULTIPLIER: u32 = 10;

/// Longest ejection whatever the base, so that the end is an `Instant`.
const MAX_EJECTION: Duration = Duration::from_hours(7 * 24);

/// Outlier detection settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Failures in a row that eject; 0 disables ejection.
    pub consecutive_failures: u32,
    /// The first ejection's length.
    pub base_ejection: Duration,
    /// At most this share (percent) of a backend's endpoints is ejected at
    /// once.
    pub max_ejection_percent: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(30),
            max_ejection_percent: 50,
        }
    }
}

/// How one attempt on an endpoint ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Any answer below 500.
    Success,
    /// A 5xx answer (or no answer in time).
    ServerError,
    /// The connection could not be made.
    ConnectFailure,
}

/// One endpoint's health, shared by every request to it (a balancer holds
/// one per endpoint in an `Arc`).
#[derive(Debug)]
pub struct EndpointHealth {
    config: Config,
    state: Mutex<State>,
    /// Set (under the lock) while `state` holds an ejection, so that the
    /// balancer's per-pick check of a healthy endpoint takes no lock.
    maybe_ejected: AtomicBool,
    ejections: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    consecutive: u32,
    times_ejected: u32,
    ejected_until: Option<Instant>,
}

// === impl EndpointHealth ===

impl EndpointHealth {
    /// A healthy endpoint.
    #[must_use]
    pub fn new(config: Config) -> Self {
        Self {
            config,
            state: Mutex::new(State::default()),
            maybe_ejected: AtomicBool::new(false),
            ejections: AtomicU64::new(0),
        }
    }

    /// Records how an attempt ended; returns whether that ejected the
    /// endpoint.
    pub fn record(&self, outcome: Outcome, now: Instant) -> bool {
        let mut state = self.lock(now);
        if outcome == Outcome::Success {
            state.consecutive = 0;
            return false;
        }
        if state.ejected_until.is_some() {
            return false;
        }
        state.consecutive = state.consecutive.saturating_add(1);
        let threshold = self.config.consecutive_failures;
        if threshold == 0 || state.consecutive < threshold {
            return false;
        }
        state.times_ejected = state.times_ejected.saturating_add(1);
        let multiplier = state.times_ejected.min(MAX_EJECTION_MULTIPLIER);
        let length = self
            .config
            .base_ejection
            .saturating_mul(multiplier)
            .min(MAX_EJECTION);
        state.ejected_until = Some(now.checked_add(length).unwrap_or(now));
        state.consecutive = 0;
        self.maybe_ejected.store(true, Ordering::Release);
        self.ejections.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Whether the endpoint is ejected at `now`; re-admits it if its time
    /// is up.
    #[must_use]
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.maybe_ejected.load(Ordering::Acquire) && self.lock(now).ejected_until.is_some()
    }

    /// When the current ejection ends, if ejected.
    #[must_use]
    pub fn ejected_until(&self) -> Option<Instant> {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .ejected_until
    }

    /// Ejections so far.
    #[must_use]
    pub fn ejections_total(&self) -> u64 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// Its settings.
    #[must_use]
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The state, after re-admitting the endpoint if its ejection is over.
    fn lock(&self, now: Instant) -> MutexGuard<'_, State> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.ejected_until.is_some_and(|until| until <= now) {
            state.ejected_until = None;
            state.consecutive = 0;
            self.maybe_ejected.store(false, Ordering::Release);
        }
        state
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(failures: u32) -> EndpointHealth {
        EndpointHealth::new(Config {
            consecutive_failures: failures,
            base_ejection: Duration::from_secs(10),
            max_ejection_percent: 50,
        })
    }

    #[test]
    fn consecutive_failures_eject_and_time_readmits() {
        let endpoint = health(3);
        let start = Instant::now();
        assert!(!endpoint.record(Outcome::ServerError, start));
        assert!(!endpoint.record(Outcome::ConnectFailure, start));
        assert!(endpoint.record(Outcome::ServerError, start));
        assert!(endpoint.is_ejected(start + Duration::from_secs(9)));
        assert!(!endpoint.is_ejected(start + Duration::from_secs(10)));
        // The second streak ejects for twice as long.
        let later = start + Duration::from_secs(11);
        for _ in 0..3 {
            endpoint.record(Outcome::ServerError, later);
        }
        assert!(endpoint.is_ejected(later + Duration::from_secs(19)));
        assert!(!endpoint.is_ejected(later + Duration::from_secs(20)));
        assert_eq!(endpoint.ejections_total(), 2);
    }

    #[test]
    fn a_success_resets_the_streak_and_zero_disables() {
        let endpoint = health(3);
        let now = Instant::now();
        for _ in 0..10 {
            endpoint.record(Outcome::ServerError, now);
            endpoint.record(Outcome::ServerError, now);
            endpoint.record(Outcome::Success, now);
        }
        assert!(!endpoint.is_ejected(now));
        let never = health(0);
        for _ in 0..100 {
            assert!(!never.record(Outcome::ConnectFailure, now));
        }
        assert!(!never.is_ejected(now));
    }

    #[test]
    fn failures_while_ejected_do_not_count_and_ejections_are_capped() {
        let endpoint = health(2);
        let mut now = Instant::now();
        for times in 1..=12u32 {
            // Re-admitted with a clean streak: one failure does not eject.
            assert!(!endpoint.record(Outcome::ServerError, now));
            assert!(endpoint.record(Outcome::ConnectFailure, now));
            // Failures of requests that were in flight change nothing.
            for _ in 0..5 {
                assert!(!endpoint.record(Outcome::ServerError, now));
            }
            let length = Duration::from_secs(10) * times.min(10);
            let almost = now + length.saturating_sub(Duration::from_millis(1));
            assert!(endpoint.is_ejected(almost), "ejection {times} too short");
            now += length;
            assert!(!endpoint.is_ejected(now), "ejection {times} too long");
        }
        assert_eq!(endpoint.ejections_total(), 12);
    }

    #[test]
    fn a_huge_base_ejection_does_not_panic() {
        let endpoint = EndpointHealth::new(Config {
            consecutive_failures: 1,
            base_ejection: Duration::MAX,
            max_ejection_percent: 100,
        });
        let now = Instant::now();
        assert!(endpoint.record(Outcome::ServerError, now));
        assert!(endpoint.is_ejected(now + Duration::from_hours(1)));
    }
}
