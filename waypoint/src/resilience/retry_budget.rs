//! A retry budget, so retries cannot multiply load: within a sliding
//! window, a retry is allowed while the retries already made are fewer than
//! `ratio` × the original requests plus `min_per_second` × the window's
//! seconds (the floor lets light traffic retry at all). The window is kept
//! in one-second slots, so counts older than the window expire.

use std::{
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

/// One route's retry budget.
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    min_per_second: u32,
    state: Mutex<Window>,
}

/// The slots, and the instant their seconds count from: the first one the
/// budget was shown, so slot boundaries follow the caller's clock.
#[derive(Debug)]
struct Window {
    origin: Option<Instant>,
    slots: Vec<Slot>,
}

/// Requests and retries of one second.
#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    second: u64,
    requests: u64,
    retries: u64,
}

// === impl RetryBudget ===

impl RetryBudget {
    /// A budget of `ratio` (0.2: retries may add 20%; a negative or
    /// non-finite ratio is 0) plus `min_per_second`, over `window` (whole
    /// seconds, at least 1).
    #[must_use]
    pub fn new(ratio: f64, min_per_second: u32, window: Duration) -> Self {
        let seconds = usize::try_from(window.as_secs().clamp(1, 3600)).unwrap_or(1);
        Self {
            ratio: if ratio.is_finite() {
                ratio.max(0.0)
            } else {
                0.0
            },
            min_per_second,
            state: Mutex::new(Window {
                origin: None,
                slots: vec![Slot::default(); seconds],
            }),
        }
    }

    /// Counts an original request (not a retry).
    pub fn record_request(&self, now: Instant) {
        let mut window = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        window.slot(now).requests += 1;
    }

    /// Takes one retry from the budget if it has one left; a refused retry
    /// is not counted.
    pub fn try_withdraw(&self, now: Instant) -> bool {
        let mut window = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let second = window.second(now);
        let len = window.slots.len() as u64;
        let (requests, retries) = window
            .slots
            .iter()
            .filter(|slot| slot.second <= second && second - slot.second < len)
            .fold((0u64, 0u64), |(q, r), s| {
                (q.saturating_add(s.requests), r.saturating_add(s.retries))
            });
        #[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
        let (requests, retries, len) = (requests as f64, retries as f64, len as f64);
        if retries >= self.ratio * requests + f64::from(self.min_per_second) * len {
            return false;
        }
        window.slot(now).retries += 1;
        true
    }
}

// === impl Window ===

impl Window {
    fn second(&mut self, now: Instant) -> u64 {
        let origin = *self.origin.get_or_insert(now);
        now.saturating_duration_since(origin).as_secs()
    }

    /// The slot of `now`'s second, cleared if it held an older second. A
    /// slot holding a newer second (a caller's `now` read before another's
    /// but counted after) is used as it is rather than losing its counts.
    fn slot(&mut self, now: Instant) -> &mut Slot {
        let second = self.second(now);
        let len = self.slots.len() as u64;
        let index = usize::try_from(second % len).unwrap_or(0);
        let slot = &mut self.slots[index];
        if slot.second < second {
            *slot = Slot {
                second,
                ..Slot::default()
            };
        }
        slot
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(10);

    fn allowed(budget: &RetryBudget, now: Instant, tries: usize) -> usize {
        (0..tries).filter(|_| budget.try_withdraw(now)).count()
    }

    #[test]
    fn without_traffic_the_floor_allows_min_per_second_over_the_window() {
        let budget = RetryBudget::new(0.2, 1, WINDOW);
        assert_eq!(allowed(&budget, Instant::now(), 20), 10);
    }

    #[test]
    fn under_load_retries_are_a_share_of_requests() {
        let budget = RetryBudget::new(0.2, 0, WINDOW);
        let now = Instant::now();
        for _ in 0..1000 {
            budget.record_request(now);
        }
        assert_eq!(allowed(&budget, now, 1000), 200);
        // One more request earns a fifth of a retry: enough for one more,
        // as the retries made (200) are below 200.2.
        budget.record_request(now);
        assert_eq!(allowed(&budget, now, 10), 1);
    }

    #[test]
    fn counts_expire_with_the_window() {
        let budget = RetryBudget::new(0.5, 0, WINDOW);
        let start = Instant::now();
        for _ in 0..100 {
            budget.record_request(start);
        }
        assert_eq!(allowed(&budget, start + Duration::from_secs(5), 10), 10);
        // Ten seconds on the requests have left the window, the retries
        // not yet; twenty seconds on, neither counts.
        let expired = start + Duration::from_secs(10);
        assert!(!budget.try_withdraw(expired), "requests 10 s old count");
        let later = start + Duration::from_secs(20);
        for _ in 0..10 {
            budget.record_request(later);
        }
        assert_eq!(allowed(&budget, later, 10), 5);
    }

    #[test]
    fn odd_inputs_do_not_panic() {
        let now = Instant::now();
        let budget = RetryBudget::new(f64::NAN, 0, Duration::ZERO);
        budget.record_request(now);
        assert!(!budget.try_withdraw(now));
        // A `now` older than one already seen counts in the current slots.
        let budget = RetryBudget::new(1.0, 0, WINDOW);
        budget.record_request(now + Duration::from_secs(3));
        budget.record_request(now);
        assert_eq!(allowed(&budget, now + Duration::from_secs(3), 5), 2);
    }
}
