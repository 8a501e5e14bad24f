//! Outlier detection: passive health per endpoint. After
//! `consecutive_failures` failures in a row (a 5xx answer or a failed
//! connection) the endpoint is ejected for `base_ejection` × the number of
//! times it has been ejected (at most 10×). When that time is up it is
//! re-admitted with a clean count; one more failure streak ejects it for
//! longer. A success resets the streak.

use std::{
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

/// Longest ejection, in multiples of the base.
const MAX_EJECTION_MULTIPLIER: u32 = 10;

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

/// One endpoint's health.
#[derive(Debug)]
pub struct EndpointHealth {
    config: Config,
    state: Mutex<State>,
    ejections: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    consecutive: u32,
    times_ejected: u32,
    ejected_until: Option<Instant>,
}

impl EndpointHealth {
    /// A healthy endpoint.
    #[must_use]
    pub fn new(config: Config) -> Self {
        Self {
            config,
            state: Mutex::new(State::default()),
            ejections: AtomicU64::new(0),
        }
    }

    /// Records an attempt; returns whether it ejected the endpoint.
    pub fn record(&self, outcome: Outcome, now: Instant) -> bool {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        readmit_if_due(&mut state, now);
        if outcome == Outcome::Success {
            state.consecutive = 0;
            return false;
        }
        state.consecutive = state.consecutive.saturating_add(1);
        let threshold = self.config.consecutive_failures;
        if threshold == 0 || state.consecutive < threshold || state.ejected_until.is_some() {
            return false;
        }
        state.times_ejected = state.times_ejected.saturating_add(1);
        let multiplier = state.times_ejected.min(MAX_EJECTION_MULTIPLIER);
        state.ejected_until = Some(now + self.config.base_ejection * multiplier);
        state.consecutive = 0;
        self.ejections.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Whether the endpoint is ejected now.
    #[must_use]
    pub fn is_ejected(&self, now: Instant) -> bool {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        readmit_if_due(&mut state, now);
        state.ejected_until.is_some()
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
}

fn readmit_if_due(state: &mut State, now: Instant) {
    if state.ejected_until.is_some_and(|until| until <= now) {
        state.ejected_until = None;
        state.consecutive = 0;
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
}
