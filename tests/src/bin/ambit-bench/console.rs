//! Where ambit-bench writes: progress for people on the terminal's stderr,
//! everything the agents and workloads print into `bench.log`.
//!
//! The test bed echoes every line its processes write on stderr to this
//! process's stderr. An agent logs each proxied connection, and a connection
//! rate test makes tens of thousands of them, so the bench points its own
//! stderr (fd 2) at the log file and keeps a duplicate of the original for
//! its progress lines.

use std::fs::File;
use std::io::{self, Write as _};
use std::path::Path;
use std::sync::{Mutex, OnceLock, PoisonError};

/// The terminal's stderr, saved before fd 2 was pointed at the log.
static TERMINAL: OnceLock<Mutex<File>> = OnceLock::new();

/// How many lines of a panic message reach the terminal; the log has all.
const PANIC_LINES_SHOWN: usize = 30;

/// Points fd 2 at `log` (created or truncated) and keeps the old stderr for
/// [`say`]. A panic's message goes to both.
pub fn redirect_stderr(log: &Path) -> io::Result<()> {
    let terminal = File::from(nix::unistd::dup(io::stderr())?);
    let log_file = File::create(log)?;
    nix::unistd::dup2_stderr(&log_file)?;
    // Set once, from main, before any thread runs.
    let _ = TERMINAL.set(Mutex::new(terminal));
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info.to_string();
        let mut lines: Vec<&str> = message.lines().take(PANIC_LINES_SHOWN).collect();
        if message.lines().count() > PANIC_LINES_SHOWN {
            lines.push("[…]");
        }
        say(&format!("ambit-bench: {}", lines.join("\n")));
        default_hook(info);
    }));
    Ok(())
}

/// Writes a line on the terminal (and into the log, for context).
pub fn say(line: &str) {
    say_raw(&format!("{line}\n"));
    eprintln!("{line}");
}

/// A progress line, `▸ message`.
pub fn progress(message: &str) {
    say(&format!("▸ {message}"));
}

/// Starts a progress line that [`finish_line`] completes, so a test's name
/// shows while it runs.
pub fn start_line(message: &str) {
    say_raw(&format!("▸ {message} … "));
    eprintln!("▸ {message} …");
}

/// Completes the line [`start_line`] began.
pub fn finish_line(result: &str) {
    say_raw(&format!("{result}\n"));
    eprintln!("  {result}");
}

fn say_raw(text: &str) {
    match TERMINAL.get() {
        Some(terminal) => {
            let mut terminal = terminal.lock().unwrap_or_else(PoisonError::into_inner);
            let _ = terminal.write_all(text.as_bytes());
            let _ = terminal.flush();
        }
        None => eprint!("{text}"),
    }
}
