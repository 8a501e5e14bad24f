//! Why the bench stops: [`BenchError`], and the interruption check every
//! long step makes. The bottom of the bench's modules: every other one
//! reports through it.

use ambit_tests::interrupt;

/// Why the bench stopped or a measurement failed.
#[derive(Debug)]
pub enum BenchError {
    /// Ctrl-C or SIGTERM.
    Interrupted,
    /// This machine cannot host a test bed (not root, no cgroup v2, a tool missing).
    CannotRun(String),
    /// A measurement or a setup step failed.
    Failed(String),
}

// === impl BenchError ===

impl BenchError {
    /// A failure with this message.
    pub fn failed(message: impl Into<String>) -> Self {
        Self::Failed(message.into())
    }
}

/// Fails with [`BenchError::Interrupted`] once Ctrl-C or SIGTERM arrived.
pub fn check_interrupted() -> Result<(), BenchError> {
    if interrupt::requested() {
        Err(BenchError::Interrupted)
    } else {
        Ok(())
    }
}
