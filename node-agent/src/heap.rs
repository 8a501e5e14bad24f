//! Handing the allocator's free memory back to the kernel.
//!
//! glibc keeps the pages of freed memory resident: the start-up peak (aya
//! parsing the kernel's BTF) and whatever connections freed (relay
//! buffers, TLS sessions, HTTP/2 streams) would stay in the agent's RSS for
//! its whole life. Under steady churn it also spreads short-lived
//! allocations over more and more of its arenas, touching pages it never
//! gives back, so the RSS creeps up while the heap in use stays level.
//!
//! First of all the agent fixes glibc's thresholds for mapping large
//! allocations on their own and for trimming an arena's top, which glibc
//! would otherwise raise to megabytes after start-up, and keeps every
//! thread in one arena ([`tune_allocator`]).
//!
//! The agent returns free pages once start-up is done and then whenever
//! the free memory it keeps resident (its anonymous RSS less the heap in
//! use) has grown by [`RELEASE_AFTER_BYTES`] since the last time. It does
//! not return them on a plain timer: each pass walks every free chunk and
//! makes one `madvise` per free page run (about a thousand after 1,000
//! connections) while holding the arena locks that the data path's
//! allocations wait on. It looks every [`CHECK_INTERVAL`], so a pass costs
//! at most that often.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How often the allocator's resident free memory is looked at.
const CHECK_INTERVAL: Duration = Duration::from_secs(10);

/// Resident free memory, grown since the last release, that makes another
/// one worth its cost. Small enough that a slow creep (a churn soak's
/// agent touches about 0.15 MiB of new arena pages a minute) is handed
/// back within a couple of minutes, rather than showing as growth.
const RELEASE_AFTER_BYTES: usize = 256 << 10;

/// Allocations at least this large are mapped on their own, and unmapped
/// when freed (see [`tune_allocator`]): above the plaintext relays' 256 KiB
/// read buffers, which a connection takes and gives back at every message,
/// and which cost a `mmap`, a page fault and a `munmap` each when mapped.
pub const MMAP_THRESHOLD_BYTES: usize = 512 << 10;

/// Free memory at the top of the arena beyond this is handed back at once
/// (see [`tune_allocator`]): room for a few relay buffers in flight, so a
/// busy relay does not shrink and grow the heap at every message.
pub const TRIM_THRESHOLD_BYTES: usize = 1 << 20;

/// The allocator's arenas: one, the main arena, for every thread.
pub const ALLOCATOR_ARENAS: usize = 1;

/// Fixes glibc's thresholds at [`MMAP_THRESHOLD_BYTES`] and
/// [`TRIM_THRESHOLD_BYTES`]. Left to itself, glibc raises both after each
/// large mapped allocation is freed, up to 32 and 64 MiB: once start-up has
/// freed aya's parse of the kernel's BTF (megabytes), allocations of
/// megabytes would come from the arena, and it would keep megabytes of free
/// memory resident at its top.
///
/// It also keeps every thread in one arena ([`ALLOCATOR_ARENAS`]). With an
/// arena per thread, memory a data-plane worker allocates and another
/// frees (tokio moves tasks between workers) goes back to the first
/// worker's arena, so each arena keeps free holes only its own thread
/// reuses, and the holes add up. The data path's small allocations are
/// served from each thread's cache without taking the arena's lock. And
/// `malloc_trim` (the periodic release below) trims the top of the main
/// arena only: with one arena, that is all of it.
///
/// Call it first thing, before any thread starts.
pub fn tune_allocator() {
    if !crate::sys::fix_allocator_thresholds(MMAP_THRESHOLD_BYTES, TRIM_THRESHOLD_BYTES)
        || !crate::sys::limit_allocator_arenas(ALLOCATOR_ARENAS)
    {
        tracing::warn!("cannot tune the allocator (not glibc?): its free memory may stay resident");
    }
}

/// Decides when free memory is handed back: when the allocator keeps at
/// least [`RELEASE_AFTER_BYTES`] more free memory resident than it did
/// after the last release.
#[derive(Debug)]
pub struct ReleasePolicy {
    /// Resident free bytes after the last release, or the lowest since.
    baseline: usize,
}

// === impl ReleasePolicy ===

impl ReleasePolicy {
    /// A policy whose last release left `resident_free` bytes.
    #[must_use]
    pub fn released_at(resident_free: usize) -> Self {
        Self {
            baseline: resident_free,
        }
    }

    /// Whether to release now that `resident_free` bytes are kept. Memory
    /// that was reused lowers the baseline, so what is freed later counts
    /// from there.
    pub fn should_release(&mut self, resident_free: usize) -> bool {
        if resident_free >= self.baseline.saturating_add(RELEASE_AFTER_BYTES) {
            return true;
        }
        self.baseline = self.baseline.min(resident_free);
        false
    }
}

/// Hands free memory back once now (start-up is done), then whenever
/// [`ReleasePolicy`] says so, until `shutdown`.
pub async fn release_until_cancelled(shutdown: CancellationToken) {
    let Some(left) = release() else {
        return; // not glibc, or no /proc: nothing to measure
    };
    let mut policy = ReleasePolicy::released_at(left);
    let mut every = tokio::time::interval(CHECK_INTERVAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        if let Some(kept) = resident_free_bytes()
            && policy.should_release(kept)
            && let Some(left) = release()
        {
            policy = ReleasePolicy::released_at(left);
        }
    }
}

/// Releases free pages; the resident free memory left after it.
fn release() -> Option<usize> {
    crate::sys::release_free_heap();
    resident_free_bytes()
}

/// Free memory the allocator keeps resident: the anonymous RSS less the
/// heap in use. Thread stacks and the like count too, but they stay level.
fn resident_free_bytes() -> Option<usize> {
    let in_use = crate::sys::heap_usage()?.in_use;
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    Some(anonymous_rss(&status)?.saturating_sub(in_use))
}

/// `RssAnon` of a `/proc/<pid>/status` text, in bytes.
fn anonymous_rss(status: &str) -> Option<usize> {
    let line = status
        .lines()
        .find_map(|line| line.strip_prefix("RssAnon:"))?;
    let kib: usize = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    kib.checked_mul(1024)
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
        assert!(!policy.should_release(3 * MIB + RELEASE_AFTER_BYTES - 1));
    }

    #[test]
    fn a_burst_that_frees_memory_is_released_once() {
        let mut policy = ReleasePolicy::released_at(2 * MIB);
        assert!(policy.should_release(9 * MIB));
        // The release left 2 MiB resident again.
        let mut policy = ReleasePolicy::released_at(2 * MIB);
        assert!(!policy.should_release(2 * MIB + MIB / 8));
        assert!(policy.should_release(2 * MIB + MIB / 4));
    }

    #[test]
    fn a_slow_creep_is_released_once_it_adds_up() {
        let mut policy = ReleasePolicy::released_at(3 * MIB);
        let step = 16 << 10;
        let first = (1..=100)
            .find(|n| policy.should_release(3 * MIB + n * step))
            .expect("released");
        assert_eq!(first * step, RELEASE_AFTER_BYTES);
    }

    #[test]
    fn the_anonymous_rss_is_read_from_the_status_text() {
        let status = "Name:\tambit-node-agent\nVmRSS:\t   21504 kB\nRssAnon:\t    7168 kB\nRssFile:\t   14336 kB\n";
        assert_eq!(anonymous_rss(status), Some(7 * MIB));
        assert_eq!(anonymous_rss("VmRSS:\t1 kB\n"), None);
        assert_eq!(anonymous_rss("RssAnon:\tmany kB\n"), None);
    }

    #[test]
    fn freed_pages_handed_back_leave_less_resident() {
        let Some(before) = resident_free_bytes() else {
            eprintln!("SKIP: the allocator is not glibc's; nothing to measure");
            return;
        };
        // Touch 32 MiB in blocks under glibc's mmap threshold, then free
        // every other one: holes between live blocks, which glibc cannot
        // trim from the top of its heap, so it keeps their pages resident.
        let blocks: Vec<Vec<u8>> = (0..512).map(|_| vec![1_u8; 64 << 10]).collect();
        let live: Vec<Vec<u8>> = blocks.into_iter().step_by(2).collect();
        let kept = resident_free_bytes().expect("measured once already");
        assert!(kept >= before + 12 * MIB, "kept {kept}, before {before}");
        let left = release().expect("measured once already");
        assert!(left + 12 * MIB <= kept, "left {left}, kept {kept}");
        drop(std::hint::black_box(live));
    }
}
