//! One paused single-threaded tokio runtime per input: timers fire as soon
//! as every task waits (a stream's linger, the detection timeout, a
//! handshake timeout), so an input that makes the code under test wait
//! costs no wall-clock time, and every task it spawned is dropped with the
//! runtime before the next input.

use std::{future::Future, time::Duration};

/// How long, in paused (virtual) time, an input may keep the code under
/// test busy. Far beyond every timeout the targets reach (the waypoint's
/// 5 s linger), so reaching it means the code hangs.
pub const VIRTUAL_TIME_LIMIT: Duration = Duration::from_hours(1);

/// Runs `future` to completion on a fresh paused runtime.
///
/// # Panics
///
/// When the runtime cannot be built, or when `future` is still running
/// after [`VIRTUAL_TIME_LIMIT`] of virtual time: a hang is a finding.
pub fn block_on<F: Future>(future: F) -> F::Output {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime");
    runtime
        .block_on(async { tokio::time::timeout(VIRTUAL_TIME_LIMIT, future).await })
        .expect("the input kept the code under test busy past the virtual time limit: a hang")
}
