//! Ctrl-C and SIGTERM for long-running tools (the demo, the benchmark): the
//! signal sets a flag that the tool checks between steps and in every wait,
//! so it leaves through its normal path and removes its test bed.
//!
//! A handler rather than blocked signals and `sigwait`: a blocked mask is
//! inherited across `exec`, and the node agents must still stop on SIGTERM.

use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn note_request(_signal: libc::c_int) {
    REQUESTED.store(true, Ordering::SeqCst);
}

/// Installs the handler for SIGINT and SIGTERM. After the first signal the
/// default action returns, so a second Ctrl-C stops the tool at once (the
/// next run's stale cleanup removes what it leaves).
pub fn install() -> nix::Result<()> {
    crate::sys::on_interrupt(note_request)
}

/// Whether Ctrl-C or SIGTERM arrived.
#[must_use]
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}
