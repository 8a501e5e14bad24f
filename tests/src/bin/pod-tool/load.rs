//! `pod-tool load`: steady traffic for the churn soak, which reports every
//! failure the moment it happens, with the time its operation started and
//! the time it failed, so the soak can tell which failures a policy or an
//! enrolment change explains. One thread per target, one operation at a
//! time, `--interval-ms` apart:
//!
//! - `crr`: a new connection per operation: connect, a 1-byte round trip
//!   (against `rr-server --size 1`), close;
//! - `rr`: one long-lived connection carrying a 1-byte round trip per
//!   operation, replaced by a new one after `--conn-lifetime-secs`;
//! - `stream`: one long-lived connection to an echo server (`serve`),
//!   `--chunk` bytes each way per operation, checked, replaced after
//!   `--conn-lifetime-secs` by a polite close (half-close, then the echo's
//!   end of stream);
//! - `http`: a new connection per operation carrying one HTTP/1.1 `GET`
//!   (`Connection: close`); any status but 200 is a failure.
//!
//! A long-lived connection that fails is reported and replaced after a
//! back-off that doubles from [`MIN_BACKOFF`] to [`MAX_BACKOFF`]; each
//! failed attempt is reported too.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use crate::event::Event;
use crate::{ping, rr};

/// The first pause before a failed long-lived connection is replaced.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// The longest pause before a failed long-lived connection is replaced.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// The largest `--chunk`.
const MAX_CHUNK: usize = 1 << 20;

/// What each target gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Mode {
    /// A new connection and a 1-byte round trip per operation.
    Crr,
    /// A 1-byte round trip per operation on a long-lived connection.
    Rr,
    /// `--chunk` bytes each way per operation on a long-lived connection.
    Stream,
    /// An HTTP/1.1 GET on a new connection per operation.
    Http,
}

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Targets, comma-separated, e.g. `10.10.2.11:7001,10.10.1.12:7001`.
    #[arg(long, value_delimiter = ',', required = true)]
    to: Vec<SocketAddr>,
    /// What each target gets.
    #[arg(long, value_enum)]
    mode: Mode,
    /// Pause after each operation, per target.
    #[arg(long, default_value_t = 200)]
    interval_ms: u64,
    /// `rr` and `stream`: a connection is replaced after this long.
    #[arg(long, default_value_t = 60)]
    conn_lifetime_secs: u64,
    /// How long to run.
    #[arg(long)]
    duration_secs: u64,
    /// `stream`: bytes each way per operation.
    #[arg(long, default_value_t = 16 * 1024, value_parser = parse_chunk)]
    chunk: usize,
    /// `http`: the request's path.
    #[arg(long, default_value = "/")]
    path: String,
    /// Limit for connecting and for each read or write.
    #[arg(long, default_value_t = 5)]
    timeout_secs: u64,
    /// A `load_progress` line this often.
    #[arg(long, default_value_t = 10)]
    progress_secs: u64,
}

/// Operations that succeeded and failed, over every target.
#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    failed: AtomicU64,
}

/// Why an operation failed.
#[derive(Debug)]
struct Failed {
    /// `connect`, `exchange`, `status` or `close`.
    phase: &'static str,
    /// `refused`, `reset`, `eof`, `timeout`, `status`, `corrupt` or `other`.
    kind: &'static str,
    error: String,
}

/// A long-lived connection and when it was opened.
struct Open {
    stream: TcpStream,
    since: Instant,
}

pub(crate) fn run(args: &Args) -> ExitCode {
    let started = Instant::now();
    let until = started + Duration::from_secs(args.duration_secs);
    let counts = Counts::default();
    std::thread::scope(|scope| {
        for &to in &args.to {
            let counts = &counts;
            scope.spawn(move || drive(to, args, counts, until));
        }
        let every = Duration::from_secs(args.progress_secs.max(1));
        let mut next = started + every;
        while next < until {
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
            Event::LoadProgress {
                at_ms: unix_ms(),
                ok: counts.ok.load(Ordering::Relaxed),
                failed: counts.failed.load(Ordering::Relaxed),
            }
            .emit();
            next += every;
        }
    });
    Event::LoadDone {
        ok: counts.ok.load(Ordering::Relaxed),
        failed: counts.failed.load(Ordering::Relaxed),
        seconds: started.elapsed().as_secs_f64(),
    }
    .emit();
    ExitCode::SUCCESS
}

/// Operations on `to` until `until`.
fn drive(to: SocketAddr, args: &Args, counts: &Counts, until: Instant) {
    let interval = Duration::from_millis(args.interval_ms);
    let timeout = Duration::from_secs(args.timeout_secs);
    let lifetime = Duration::from_secs(args.conn_lifetime_secs);
    let request = http_request(&to, &args.path);
    let mut open: Option<Open> = None;
    let mut backoff = MIN_BACKOFF;
    let mut buffers = (pattern(args.chunk), vec![0; args.chunk]);
    while Instant::now() < until {
        let started_ms = unix_ms();
        let result = match args.mode {
            Mode::Crr => new_connection(to, timeout),
            Mode::Http => http_get(to, &request, timeout),
            Mode::Rr | Mode::Stream => {
                long_lived(to, args.mode, &mut open, lifetime, timeout, &mut buffers)
            }
        };
        match result {
            Ok(()) => {
                counts.ok.fetch_add(1, Ordering::Relaxed);
                backoff = MIN_BACKOFF;
                std::thread::sleep(interval);
            }
            Err(failed) => {
                counts.failed.fetch_add(1, Ordering::Relaxed);
                open = None;
                Event::LoadFailure {
                    to: to.to_string(),
                    mode: args.mode.name(),
                    phase: failed.phase,
                    kind: failed.kind,
                    error: failed.error,
                    started_ms,
                    at_ms: unix_ms(),
                }
                .emit();
                let pause = if matches!(args.mode, Mode::Rr | Mode::Stream) {
                    backoff
                } else {
                    interval
                };
                std::thread::sleep(pause);
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
    if let Some(open) = open {
        // The end of the run is no failure of the connection's.
        let _ = close(open.stream, args.mode);
    }
}

/// One operation on the long-lived connection in `open`: replaced first
/// when its lifetime is up, opened when there is none.
fn long_lived(
    to: SocketAddr,
    mode: Mode,
    open: &mut Option<Open>,
    lifetime: Duration,
    timeout: Duration,
    (chunk, echo): &mut (Vec<u8>, Vec<u8>),
) -> Result<(), Failed> {
    if let Some(done) = open.take_if(|open| open.since.elapsed() >= lifetime) {
        close(done.stream, mode).map_err(|e| Failed::io("close", &e))?;
    }
    let current = match open {
        Some(current) => current,
        None => open.insert(Open {
            stream: rr::connect(to, timeout).map_err(|e| Failed::io("connect", &e))?,
            since: Instant::now(),
        }),
    };
    let stream = &mut current.stream;
    let exchanged = if mode == Mode::Stream {
        stream
            .write_all(chunk)
            .and_then(|()| stream.read_exact(echo))
    } else {
        round_trip(stream)
    };
    exchanged.map_err(|e| Failed::io("exchange", &e))?;
    if mode == Mode::Stream && chunk != echo {
        return Err(Failed {
            phase: "exchange",
            kind: "corrupt",
            error: "the echo differs from what was sent".to_owned(),
        });
    }
    Ok(())
}

/// Ends a long-lived connection: a stream half-closes and waits for the
/// echo server's end of stream, so bytes still in flight are not reset.
fn close(mut stream: TcpStream, mode: Mode) -> io::Result<()> {
    if mode != Mode::Stream {
        return Ok(());
    }
    stream.shutdown(Shutdown::Write)?;
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest)?;
    if rest.is_empty() {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} bytes after the last exchange", rest.len()),
        ))
    }
}

/// A new connection, one 1-byte round trip, close.
fn new_connection(to: SocketAddr, timeout: Duration) -> Result<(), Failed> {
    let mut stream = rr::connect(to, timeout).map_err(|e| Failed::io("connect", &e))?;
    round_trip(&mut stream).map_err(|e| Failed::io("exchange", &e))
}

/// A 1-byte request and its 1-byte answer.
fn round_trip(stream: &mut TcpStream) -> io::Result<()> {
    stream.write_all(&[1])?;
    stream.read_exact(&mut [0])
}

/// One `GET` on a new connection; the answer must be a 200.
fn http_get(to: SocketAddr, request: &[u8], timeout: Duration) -> Result<(), Failed> {
    let mut stream = rr::connect(to, timeout).map_err(|e| Failed::io("connect", &e))?;
    let mut response = Vec::new();
    stream
        .write_all(request)
        .and_then(|()| stream.read_to_end(&mut response))
        .map_err(|e| Failed::io("exchange", &e))?;
    check_status(&response)
}

/// A 200 status line, or the line that came instead.
fn check_status(response: &[u8]) -> Result<(), Failed> {
    let head = String::from_utf8_lossy(&response[..response.len().min(200)]);
    let status_line = head.lines().next().unwrap_or_default();
    let status = status_line.split(' ').nth(1);
    if status_line.starts_with("HTTP/1.") && status == Some("200") {
        return Ok(());
    }
    Err(Failed {
        phase: "status",
        kind: "status",
        error: if status_line.is_empty() {
            "no response".to_owned()
        } else {
            status_line.to_owned()
        },
    })
}

fn http_request(to: &SocketAddr, path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {to}\r\nConnection: close\r\n\r\n").into_bytes()
}

/// `len` bytes that are not all alike, so a shifted echo shows.
fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| u8::try_from(i % 251).unwrap_or_default())
        .collect()
}

fn parse_chunk(text: &str) -> Result<usize, String> {
    let chunk: usize = text
        .parse()
        .map_err(|error| format!("{text:?} is not a byte count: {error}"))?;
    if (1..=MAX_CHUNK).contains(&chunk) {
        Ok(chunk)
    } else {
        Err(format!("{chunk} is outside 1..={MAX_CHUNK}"))
    }
}

/// Milliseconds since the epoch: the soak compares them with the times
/// of its own changes.
fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

// === impl Mode ===

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Self::Crr => "crr",
            Self::Rr => "rr",
            Self::Stream => "stream",
            Self::Http => "http",
        }
    }
}

// === impl Failed ===

impl Failed {
    fn io(phase: &'static str, error: &io::Error) -> Self {
        let kind = if error.kind() == io::ErrorKind::ConnectionRefused {
            "refused"
        } else {
            ping::describe(error)
        };
        Self {
            phase,
            kind,
            error: error.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_200_passes() {
        assert!(check_status(b"HTTP/1.1 200 OK\r\nx: y\r\n\r\nbody").is_ok());
        let failed = check_status(b"HTTP/1.1 503 Service Unavailable\r\n\r\n").unwrap_err();
        assert_eq!(
            (failed.phase, failed.kind, failed.error.as_str()),
            ("status", "status", "HTTP/1.1 503 Service Unavailable")
        );
        assert_eq!(check_status(b"").unwrap_err().error, "no response");
        assert!(check_status(b"SSH-2.0 200").is_err());
    }

    #[test]
    fn refused_is_told_apart() {
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert_eq!(Failed::io("connect", &refused).kind, "refused");
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        assert_eq!(Failed::io("exchange", &reset).kind, "reset");
    }
}
