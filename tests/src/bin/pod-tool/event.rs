//! The JSON lines pod-tool prints, one object per line, tagged by `event`.

use std::fmt::Display;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::process::ExitCode;

use serde::Serialize;

/// Everything pod-tool reports.
#[derive(Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub(crate) enum Event {
    /// The listeners are bound; connections may come.
    Listening { addrs: Vec<String> },
    /// The server finished one connection.
    Conn {
        peer: String,
        local: String,
        bytes_in: u64,
        bytes_out: u64,
        error: Option<String>,
    },
    /// The client finished its exchange.
    Sent {
        local: String,
        peer: String,
        bytes_sent: u64,
        bytes_received: u64,
        echo_ok: bool,
        millis: u64,
        error: Option<String>,
    },
    /// A bind attempt's outcome.
    Bind {
        addr: String,
        ok: bool,
        errno: Option<i32>,
        error: Option<String>,
    },
    /// What `SO_ORIGINAL_DST` said about an accepted connection.
    OriginalDst {
        peer: String,
        local: String,
        original_dst: Option<String>,
        error: Option<String>,
    },
    /// Request/response latency over long-lived connections (`pod-tool rr`).
    Rr {
        /// Round trips measured (after the warm-up), over all connections.
        samples: u64,
        p50_us: f64,
        p90_us: f64,
        p99_us: f64,
        /// Round trips per second, all connections together.
        rate: f64,
        /// Bytes each way per round trip.
        size: usize,
        conns: usize,
        /// The measured window, warm-up excluded.
        seconds: f64,
        /// The distribution: `[fraction, µs]` points, the nearest-rank
        /// round-trip time at fractions 0.001, 0.005, 0.01 … 0.99, 0.995,
        /// 0.999 and 1 (the slowest).
        cdf: Vec<[f64; 2]>,
    },
    /// Connect, one-byte exchange, close, repeated (`pod-tool crr`).
    Crr {
        /// Connections that completed, after the warm-up.
        samples: u64,
        /// Connections that failed (connect, exchange), warm-up included.
        errors: u64,
        /// The last failure, if any.
        last_error: Option<String>,
        p50_us: f64,
        p90_us: f64,
        p99_us: f64,
        /// Completed connections per second, all threads together.
        rate: f64,
        conns: usize,
        seconds: f64,
    },
    /// New connections opened many at once (`pod-tool connect-times`),
    /// each timed from its connect to the end of its first round trip.
    ConnectTimes {
        to: String,
        /// Rounds run; a round with a failure is the last.
        rounds: u16,
        /// Connections that carried their round trip.
        samples: u64,
        p50_us: f64,
        p99_us: f64,
        max_us: u64,
        /// How long each failed connection took, sorted, in milliseconds.
        failed_ms: Vec<u64>,
        /// Why the last failed connection failed.
        last_error: Option<String>,
        /// All rounds, from start to end.
        seconds: f64,
    },
    /// Every connection of `pod-tool hold` is up and has carried a round
    /// trip; they stay idle from now on.
    Held {
        conns: u32,
        /// How long opening them all took.
        setup_ms: u64,
        /// This process's open-file limit (soft) while holding them.
        nofile_limit: u64,
    },
    /// `pod-tool hold` checked and closed its connections.
    Released {
        conns: u32,
        /// Connections that still carried a round trip after the hold.
        still_open: u32,
        /// Why the last one that did not failed.
        last_error: Option<String>,
        /// How long they were held idle.
        held_secs: f64,
    },
    /// `pod-tool ping`'s connection carried its first round trip.
    PingUp { local: String, peer: String },
    /// `pod-tool ping`'s connection ended, or the time was up.
    PingEnd {
        round_trips: u64,
        /// `reset`, `eof`, `timeout` or `other`; `null` when the time was up.
        kind: Option<String>,
        error: Option<String>,
        /// Since the connect started.
        millis: u64,
    },
    /// `pod-tool load`: one operation failed.
    LoadFailure {
        /// The target.
        to: String,
        /// `crr`, `rr`, `stream` or `http`.
        mode: &'static str,
        /// `connect`, `exchange`, `status` or `close`.
        phase: &'static str,
        /// `refused`, `reset`, `eof`, `timeout`, `status`, `corrupt` or
        /// `other`.
        kind: &'static str,
        error: String,
        /// When the operation started, ms since the epoch.
        started_ms: u64,
        /// When it failed, ms since the epoch.
        at_ms: u64,
    },
    /// `pod-tool load`'s operations so far, over every target.
    LoadProgress { at_ms: u64, ok: u64, failed: u64 },
    /// `pod-tool load` finished.
    LoadDone { ok: u64, failed: u64, seconds: f64 },
    /// Nothing could be done at all.
    Error { error: String },
}

// === impl Event ===

impl Event {
    /// Prints the event as one JSON line and flushes, so a test sees it at once.
    pub(crate) fn emit(&self) {
        let line = serde_json::to_string(self).expect("events always serialize");
        let mut stdout = std::io::stdout().lock();
        // A test that stopped reading is no reason to crash mid-connection.
        let _ = writeln!(stdout, "{line}");
        let _ = stdout.flush();
    }

    /// Emits `error` as an error event and returns the failure exit code,
    /// for a command that cannot go on.
    pub(crate) fn fail(error: String) -> ExitCode {
        Self::Error { error }.emit();
        ExitCode::FAILURE
    }

    /// [`Event::fail`] for a client that cannot connect to `to`.
    pub(crate) fn cannot_connect(to: SocketAddr, error: impl Display) -> ExitCode {
        Self::fail(format!("cannot connect to {to}: {error}"))
    }
}

/// A socket's address as an event shows it: `error: …` when the kernel
/// would not say.
pub(crate) fn show_addr(addr: io::Result<SocketAddr>) -> String {
    addr.map_or_else(|error| format!("error: {error}"), |addr| addr.to_string())
}

/// Parses `0x539` or `1337`.
pub(crate) fn parse_u32(text: &str) -> Result<u32, String> {
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|error| format!("{text:?} is not a number (decimal or 0x hex): {error}"))
}
