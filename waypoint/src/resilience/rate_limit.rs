//! A token bucket: `burst` tokens, refilled continuously at a rate; each
//! request takes one. It starts full.

use std::{
    sync::{Mutex, PoisonError},
    time::Instant,
};

/// A local rate limit, shared by a route's concurrent requests.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    state: Mutex<Option<(f64, Instant)>>,
}

// === impl TokenBucket ===

impl TokenBucket {
    /// A bucket of `burst` tokens (at least 1) refilled at
    /// `rate_per_second` (a rate that is not positive never refills).
    #[must_use]
    pub fn new(rate_per_second: f64, burst: u32) -> Self {
        let rate = if rate_per_second.is_finite() && rate_per_second > 0.0 {
            rate_per_second
        } else {
            0.0
        };
        Self {
            rate,
            burst: f64::from(burst.max(1)),
            state: Mutex::new(None),
        }
    }

    /// Takes a token if there is one.
    pub fn try_acquire(&self, now: Instant) -> bool {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (tokens, last) = state.unwrap_or((self.burst, now));
        let elapsed = now.saturating_duration_since(last).as_secs_f64();
        let tokens = (tokens + elapsed * self.rate).min(self.burst);
        let last = if now > last { now } else { last };
        if tokens >= 1.0 {
            *state = Some((tokens - 1.0, last));
            true
        } else {
            *state = Some((tokens, last));
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn bursts_then_refills_at_the_rate() {
        let bucket = TokenBucket::new(10.0, 5);
        let start = Instant::now();
        assert_eq!((0..8).filter(|_| bucket.try_acquire(start)).count(), 5);
        // 10/s: one token per 100 ms.
        assert!(!bucket.try_acquire(start + Duration::from_millis(50)));
        assert!(bucket.try_acquire(start + Duration::from_millis(110)));
        assert!(!bucket.try_acquire(start + Duration::from_millis(120)));
        // A long pause refills to the burst, not beyond.
        let later = start + Duration::from_mins(1);
        assert_eq!((0..8).filter(|_| bucket.try_acquire(later)).count(), 5);
    }

    #[test]
    fn time_going_backwards_mints_nothing() {
        let bucket = TokenBucket::new(1.0, 1);
        let earlier = Instant::now();
        let start = earlier + Duration::from_secs(10);
        assert!(bucket.try_acquire(start));
        assert!(!bucket.try_acquire(earlier));
        assert!(!bucket.try_acquire(start + Duration::from_millis(900)));
        assert!(bucket.try_acquire(start + Duration::from_secs(1)));
    }

    #[test]
    fn a_zero_rate_allows_the_burst_only() {
        let bucket = TokenBucket::new(0.0, 0);
        let start = Instant::now();
        assert!(bucket.try_acquire(start));
        assert!(!bucket.try_acquire(start + Duration::from_secs(100)));
        for rate in [f64::NAN, f64::INFINITY, -1.0] {
            let odd = TokenBucket::new(rate, 2);
            assert_eq!((0..4).filter(|_| odd.try_acquire(start)).count(), 2);
        }
    }
}
