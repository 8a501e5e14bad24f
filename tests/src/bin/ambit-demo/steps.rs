//! What every act uses: the progress line, waiting with Ctrl-C in mind, why
//! a step failed, and byte counts for people. The bottom module: it uses no
//! other module of the demo.

use std::time::{Duration, Instant};

use ambit_tests::interrupt;

/// How often waits look again (and notice Ctrl-C).
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Why the demo could not run to its end.
pub enum DemoError {
    /// Ctrl-C or SIGTERM.
    Interrupted,
    /// A step failed; `detail` is the output of the process involved.
    Step { what: String, detail: String },
}

/// Calls `probe` until it returns `Some`, `timeout` passes (`Ok(None)`), it
/// fails, or the demo is interrupted.
pub fn wait_until<T>(
    timeout: Duration,
    mut probe: impl FnMut() -> Result<Option<T>, DemoError>,
) -> Result<Option<T>, DemoError> {
    let deadline = Instant::now() + timeout;
    loop {
        check_interrupted()?;
        if let Some(found) = probe()? {
            return Ok(Some(found));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// `Err(Interrupted)` once Ctrl-C or SIGTERM came.
pub fn check_interrupted() -> Result<(), DemoError> {
    if interrupt::requested() {
        Err(DemoError::Interrupted)
    } else {
        Ok(())
    }
}

/// A progress line on stderr, so stdout stays the report alone.
pub fn progress(message: &str) {
    eprintln!("▸ {message}");
}

// === impl DemoError ===

impl DemoError {
    /// A step that failed: what, and the output of the process involved.
    pub fn step(what: String, detail: String) -> Self {
        Self::Step { what, detail }
    }
}

/// `512 B`, `1.0 MiB`: binary units, one decimal.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    let mut unit_size: u128 = 1;
    let mut unit = None;
    for name in UNITS {
        if u128::from(bytes) < unit_size * 1024 {
            break;
        }
        unit_size *= 1024;
        unit = Some(name);
    }
    let Some(unit) = unit else {
        return format!("{bytes} B");
    };
    let tenths = (u128::from(bytes) * 10 + unit_size / 2) / unit_size;
    format!("{}.{} {unit}", tenths / 10, tenths % 10)
}
