//! Handing the allocator's free memory back to the kernel.
//!
//! glibc keeps the pages of freed memory resident: the start-up peak (aya
//! parsing the kernel's BTF) and whatever a burst of connections freed
//! (relay buffers, TLS sessions, HTTP/2 streams) would stay in the agent's
//! RSS for its whole life. The agent returns them once start-up is done
//! and then whenever enough new free memory has piled up since the last
//! time. It does not return them on a plain timer: each pass walks every
//! free chunk and makes one `madvise` per free page run (about a thousand
//! after 1,000 connections) while holding the arena locks that the data
//! path's allocations wait on.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How often the allocator's free memory is looked at.
const CHECK_INTERVAL: Duration = Duration::from_secs(10);

/// New free memory, since the last release, that makes another one worth
/// its cost.
const RELEASE_AFTER_BYTES: usize = 1 << 20;

/// Decides when free memory is handed back: when the allocator holds at
/// least [`RELEASE_AFTER_BYTES`] more free memory than it did after the
/// last release.
#[derive(Debug)]
pub struct ReleasePolicy {
    /// Free bytes when memory was last handed back, or the lowest since.
    baseline: usize,
}

// === impl ReleasePolicy ===

impl ReleasePolicy {
    /// A policy whose last release left `free` bytes free.
    #[must_use]
    pub fn released_at(free: usize) -> Self {
        Self { baseline: free }
    }

    /// Whether to release now that `free` bytes are free. Memory that was
    /// reused lowers the baseline, so what is freed later counts from there.
    pub fn should_release(&mut self, free: usize) -> bool {
        if free >= self.baseline.saturating_add(RELEASE_AFTER_BYTES) {
            self.baseline = free;
            return true;
        }
        self.baseline = self.baseline.min(free);
        false
    }
}

/// Hands free memory back once now (start-up is done), then whenever
/// [`ReleasePolicy`] says so, until `shutdown`.
pub async fn release_until_cancelled(shutdown: CancellationToken) {
    crate::sys::release_free_heap();
    let Some(free) = crate::sys::free_heap_bytes() else {
        return;
    };
    let mut policy = ReleasePolicy::released_at(free);
    let mut every = tokio::time::interval(CHECK_INTERVAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        if let Some(free) = crate::sys::free_heap_bytes()
            && policy.should_release(free)
        {
            crate::sys::release_free_heap();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    #[test]
    fn an_idle_agent_releases_nothing_again() {
        let mut policy = ReleasePolicy::released_at(3 * MIB);
        for _ in 0..100 {
            assert!(!policy.should_release(3 * MIB));
        }
        assert!(!policy.should_release(4 * MIB - 1));
    }

    #[test]
    fn a_burst_that_frees_memory_is_released_once() {
        let mut policy = ReleasePolicy::released_at(2 * MIB);
        assert!(policy.should_release(9 * MIB));
        assert!(!policy.should_release(9 * MIB));
        assert!(!policy.should_release(9 * MIB + MIB / 2));
        assert!(policy.should_release(10 * MIB));
    }

    #[test]
    fn reused_memory_lowers_the_baseline() {
        let mut policy = ReleasePolicy::released_at(8 * MIB);
        // The next connections take most of it again...
        assert!(!policy.should_release(2 * MIB));
        // ...and free it: that counts from 2 MiB, not 8.
        assert!(policy.should_release(7 * MIB));
    }
}
