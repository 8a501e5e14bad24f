//! A retry budget, so retries cannot multiply load: over a sliding window,
//! retries may add at most `ratio` × the original requests, plus
//! `min_per_second` × the window's seconds so that light traffic can still
//! retry. The window is kept in one-second slots that expire.

use std::{
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

/// Requests and retries of one second.
#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    second: u64,
    requests: u64,
    retries: u64,
}

/// One route's retry budget.
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    min_per_second: u32,
    origin: Instant,
    slots: Mutex<Vec<Slot>>,
}

impl RetryBudget {
    /// A budget of `ratio` (0.2: retries may add 20%) plus
    /// `min_per_second`, over `window` (whole seconds, at least 1).
    #[must_use]
    pub fn new(ratio: f64, min_per_second: u32, window: Duration) -> Self {
        let seconds = usize::try_from(window.as_secs().max(1)).unwrap_or(1);
        Self {
            ratio: if ratio.is_finite() {
                ratio.max(0.0)
            } else {
                0.0
            },
            min_per_second,
            origin: Instant::now(),
            slots: Mutex::new(vec![Slot::default(); seconds]),
        }
    }

    /// Counts an original request.
    pub fn record_request(&self, now: Instant) {
        self.with_slot(now, |slot| slot.requests += 1);
    }

    /// Takes one retry from the budget if it has one left.
    pub fn try_withdraw(&self, now: Instant) -> bool {
        let second = self.second(now);
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        let window = slots.len() as u64;
        let live = |slot: &Slot| slot.second + window > second && slot.second <= second;
        let (requests, retries) = slots
            .iter()
            .filter(|slot| live(slot))
            .fold((0u64, 0u64), |(q, r), s| (q + s.requests, r + s.retries));
        #[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
        let allowed = self.ratio * requests as f64 + f64::from(self.min_per_second) * window as f64;
        #[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
        if (retries as f64) + 1.0 > allowed {
            return false;
        }
        let slot = current(&mut slots, second);
        slot.retries += 1;
        true
    }

    fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.origin).as_secs()
    }

    fn with_slot(&self, now: Instant, f: impl FnOnce(&mut Slot)) {
        let second = self.second(now);
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        f(current(&mut slots, second));
    }
}

/// The slot of `second`, reset if it last held an older second.
fn current(slots: &mut [Slot], second: u64) -> &mut Slot {
    let len = slots.len() as u64;
    let index = usize::try_from(second % len).unwrap_or(0);
    let slot = &mut slots[index];
    if slot.second != second {
        *slot = Slot {
            second,
            ..Slot::default()
        };
    }
    slot
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(10);

    #[test]
    fn without_traffic_the_floor_allows_some_retries() {
        let budget = RetryBudget::new(0.2, 1, WINDOW);
        let now = Instant::now();
        assert_eq!((0..20).filter(|_| budget.try_withdraw(now)).count(), 10);
    }

    #[test]
    fn under_load_retries_are_a_share_of_requests() {
        let budget = RetryBudget::new(0.2, 0, WINDOW);
        let now = Instant::now();
        for _ in 0..1000 {
            budget.record_request(now);
        }
        assert_eq!((0..1000).filter(|_| budget.try_withdraw(now)).count(), 200);
    }

    #[test]
    fn old_requests_expire_with_the_window() {
        let budget = RetryBudget::new(0.5, 0, WINDOW);
        let start = Instant::now() + Duration::from_secs(1);
        for _ in 0..100 {
            budget.record_request(start);
        }
        assert!(budget.try_withdraw(start + Duration::from_secs(5)));
        let later = start + Duration::from_secs(30);
        assert!(!budget.try_withdraw(later), "requests 30 s old still count");
    }
}
