//! Ctrl-C and SIGTERM set a flag that the bench checks between tests and in
//! every wait, so it leaves through its normal path and removes its test bed.
//!
//! A handler rather than blocked signals and `sigwait`: a blocked mask is
//! inherited across `exec`, and the agents must still stop on SIGTERM.

use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

static REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn note_request(_signal: libc::c_int) {
    REQUESTED.store(true, Ordering::SeqCst);
}

/// Installs the handler for SIGINT and SIGTERM. After the first signal the
/// default action returns, so a second Ctrl-C stops the bench at once (the
/// next run's stale cleanup removes what it leaves).
pub fn install() -> nix::Result<()> {
    let action = SigAction::new(
        SigHandler::Handler(note_request),
        SaFlags::SA_RESTART | SaFlags::SA_RESETHAND,
        SigSet::empty(),
    );
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe, and nothing else in this process handles these
        // signals.
        unsafe { sigaction(signal, &action) }?;
    }
    Ok(())
}

/// Whether Ctrl-C or SIGTERM arrived.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}
