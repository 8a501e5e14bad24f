//! `pod-tool rr-server` and `pod-tool rr`: request/response latency over
//! long-lived TCP connections, the way netperf's `TCP_RR` measures it.
//!
//! The client writes `size` bytes, the server reads exactly `size` bytes and
//! writes them back, the client reads them all: one round trip. Both ends set
//! `TCP_NODELAY`, so each message leaves at once. With `--epoll` both run
//! on an event loop ([`crate::epoll`]).

mod nonblocking;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use crate::epoll;
use crate::event::Event;
use crate::latency::{self, Percentiles, Window, as_nanos, parse_seconds, per_second};
use crate::serve;

/// Largest request `rr` sends.
const MAX_SIZE: usize = 1 << 20;

#[derive(clap::Args)]
pub(crate) struct ServerArgs {
    /// Addresses to listen on, comma-separated (e.g. `0.0.0.0:7001`).
    #[arg(long, value_delimiter = ',', required = true)]
    listen: Vec<SocketAddr>,
    /// Bytes per request: read exactly this many, then answer with them in
    /// one write. 0 echoes whatever each read returns.
    #[arg(long, default_value_t = 0)]
    size: usize,
    #[command(flatten)]
    mode: epoll::Mode,
}

#[derive(clap::Args)]
pub(crate) struct Args {
    /// The `rr-server` to measure, e.g. `10.10.2.11:7001`.
    #[arg(long)]
    to: SocketAddr,
    /// Bytes per request and per response (the server's `--size`).
    #[arg(long, default_value_t = 1, value_parser = parse_size)]
    size: usize,
    /// Connections, each driven by its own thread (its own task with
    /// `--epoll`), one request in flight each.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    conns: u16,
    /// How long to measure, after the warm-up.
    #[arg(long, value_parser = parse_seconds)]
    duration_secs: Duration,
    /// How long to exchange before measuring (caches, pools, TCP windows).
    #[arg(long, value_parser = parse_seconds, default_value = "0")]
    warmup_secs: Duration,
    /// Stop each connection after this many measured round trips, even if
    /// the time is not up: a test that needs a count, not a rate.
    #[arg(long)]
    rounds: Option<usize>,
    /// Limit for connecting and for each read or write.
    #[arg(long, default_value_t = 10)]
    timeout_secs: u64,
    #[command(flatten)]
    mode: epoll::Mode,
}

/// One connection's round trips: its buffers and its samples.
struct RoundTrips {
    request: Vec<u8>,
    response: Vec<u8>,
    window: Window,
    /// At most this many samples, then the connection stops.
    rounds: usize,
    /// Nanoseconds per round trip that started inside the window.
    samples: Vec<u64>,
}

// === server ===

/// Serves until killed; one thread (or task) per connection keeps the
/// answer path free of any scheduling but the kernel's (or the event
/// loop's).
pub(crate) fn run_server(args: &ServerArgs) -> ExitCode {
    let size = args.size;
    if args.mode.epoll {
        return nonblocking::run_server(&args.listen, size);
    }
    serve::serve_on(&args.listen, move |stream| {
        // The client sees a failed exchange; nothing to add here.
        let _ = answer(stream, size);
    })
}

/// Answers requests until the client closes.
fn answer(mut stream: TcpStream, size: usize) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = request_buffer(size);
    loop {
        let read = if size == 0 {
            match stream.read(&mut buf) {
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                read => read,
            }
        } else {
            stream.read_exact(&mut buf[..size]).map(|()| size)
        };
        let Some(n) = request_len(read, size)? else {
            return Ok(());
        };
        stream.write_all(&buf[..n])?;
    }
}

/// A server connection's buffer: room for a request of `size` bytes, or
/// for a generous read when `size` is 0.
fn request_buffer(size: usize) -> Vec<u8> {
    vec![0; size.max(64 * 1024)]
}

/// The length of the request a read got (`size` bytes, or whatever one read
/// returned when `size` is 0), or `None` when the client closed before a
/// request began.
fn request_len(read: io::Result<usize>, size: usize) -> io::Result<Option<usize>> {
    match read {
        Ok(0) => Ok(None),
        Ok(n) => Ok(Some(n)),
        Err(error) if size > 0 && error.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
        Err(error) => Err(error),
    }
}

// === client ===

pub(crate) fn run(args: &Args) -> ExitCode {
    if args.mode.epoll {
        return nonblocking::run(args);
    }
    let timeout = args.timeout();
    let mut streams = Vec::new();
    for _ in 0..args.conns {
        match connect(args.to, timeout) {
            Ok(stream) => streams.push(stream),
            Err(error) => return Event::cannot_connect(args.to, error),
        }
    }
    let window = args.window();
    let results: Vec<io::Result<Vec<u64>>> = std::thread::scope(|scope| {
        let threads: Vec<_> = streams
            .into_iter()
            .map(|stream| {
                let trips = args.round_trips(window);
                scope.spawn(move || round_trips(stream, trips))
            })
            .collect();
        threads
            .into_iter()
            .map(|thread| {
                thread
                    .join()
                    .unwrap_or_else(|_| Err(io::Error::other("a client thread panicked")))
            })
            .collect()
    });
    args.report(results)
}

pub(crate) fn connect(to: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let socket = client_socket(to)?;
    socket.connect_timeout(&to.into(), timeout)?;
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    Ok(stream)
}

/// A client socket to `to` with `TCP_NODELAY`, not yet connected.
fn client_socket(to: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(to), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_tcp_nodelay(true)?;
    Ok(socket)
}

/// Round trips on one connection until the window closes; returns the
/// duration of each one that started inside it, in nanoseconds.
fn round_trips(mut stream: TcpStream, mut trips: RoundTrips) -> io::Result<Vec<u64>> {
    while let Some(started) = trips.next_start() {
        stream.write_all(&trips.request)?;
        stream.read_exact(&mut trips.response)?;
        trips.done(started);
    }
    Ok(trips.samples)
}

// === impl Args ===

impl Args {
    fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }

    /// One connection's round trips inside `window`.
    fn round_trips(&self, window: Window) -> RoundTrips {
        RoundTrips::new(self.size, window, self.rounds)
    }

    /// The measuring window, opening after the warm-up from now.
    fn window(&self) -> Window {
        Window::after_warmup(self.warmup_secs, self.duration_secs)
    }

    /// Reports every connection's samples together (an `rr` event), or the
    /// first connection that failed; success only with samples.
    fn report(&self, results: Vec<io::Result<Vec<u64>>>) -> ExitCode {
        let mut samples = Vec::new();
        for result in results {
            match result {
                Ok(mut conn_samples) => samples.append(&mut conn_samples),
                Err(error) => {
                    return Event::fail(format!("exchange with {} failed: {error}", self.to));
                }
            }
        }
        let seconds = self.duration_secs.as_secs_f64();
        let count = samples.len() as u64;
        let percentiles = Percentiles::of(&mut samples);
        let cdf = latency::cdf(&samples);
        Event::Rr {
            samples: count,
            p50_us: percentiles.p50,
            p90_us: percentiles.p90,
            p99_us: percentiles.p99,
            rate: per_second(count, seconds),
            size: self.size,
            conns: usize::from(self.conns),
            seconds,
            cdf,
        }
        .emit();
        if count == 0 {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        }
    }
}

// === impl RoundTrips ===

impl RoundTrips {
    fn new(size: usize, window: Window, rounds: Option<usize>) -> Self {
        Self {
            request: vec![0x5a; size],
            response: vec![0; size],
            window,
            rounds: rounds.unwrap_or(usize::MAX),
            samples: Vec::with_capacity(1 << 16),
        }
    }

    /// The start of the next round trip, `None` once the window is closed
    /// or the rounds are done.
    fn next_start(&self) -> Option<Instant> {
        let started = Instant::now();
        (started < self.window.until && self.samples.len() < self.rounds).then_some(started)
    }

    /// The round trip that began at `started` is over: a sample if it
    /// started after the warm-up.
    fn done(&mut self, started: Instant) {
        if started >= self.window.measure_from {
            self.samples.push(as_nanos(started.elapsed()));
        }
    }
}

fn parse_size(text: &str) -> Result<usize, String> {
    let size: usize = text
        .parse()
        .map_err(|error| format!("{text:?} is not a byte count: {error}"))?;
    if (1..=MAX_SIZE).contains(&size) {
        Ok(size)
    } else {
        Err(format!("{size} is outside 1..={MAX_SIZE} bytes"))
    }
}
