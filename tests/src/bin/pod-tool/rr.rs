//! `pod-tool rr-server` and `pod-tool rr`: request/response latency over
//! long-lived TCP connections, the way netperf's `TCP_RR` measures it.
//!
//! The client writes `size` bytes, the server reads exactly `size` bytes and
//! writes them back, the client reads them all: one round trip. Both ends set
//! `TCP_NODELAY`, so each message leaves at once.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

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
}

#[derive(clap::Args)]
pub(crate) struct Args {
    /// The `rr-server` to measure, e.g. `10.10.2.11:7001`.
    #[arg(long)]
    to: SocketAddr,
    /// Bytes per request and per response (the server's `--size`).
    #[arg(long, default_value_t = 1, value_parser = parse_size)]
    size: usize,
    /// Connections, each driven by its own thread, one request in flight each.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    conns: u16,
    /// How long to measure, after the warm-up.
    #[arg(long, value_parser = parse_seconds)]
    duration_secs: Duration,
    /// How long to exchange before measuring (caches, pools, TCP windows).
    #[arg(long, value_parser = parse_seconds, default_value = "0")]
    warmup_secs: Duration,
    /// Limit for connecting and for each read or write.
    #[arg(long, default_value_t = 10)]
    timeout_secs: u64,
}

// === server ===

/// Serves until killed.
pub(crate) fn run_server(args: &ServerArgs) -> ExitCode {
    let size = args.size;
    serve::serve_on(&args.listen, move |listener| accept_loop(&listener, size))
}

/// Accepts until the process is killed; one thread per connection keeps the
/// answer path free of any scheduling but the kernel's.
fn accept_loop(listener: &TcpListener, size: usize) {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                std::thread::spawn(move || {
                    // The client sees a failed exchange; nothing to add here.
                    let _ = answer(stream, size);
                });
            }
            Err(error) => {
                Event::Error {
                    error: format!("accept failed: {error}"),
                }
                .emit();
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Answers requests until the client closes.
fn answer(mut stream: TcpStream, size: usize) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = vec![0; size.max(64 * 1024)];
    loop {
        let n = if size == 0 {
            match stream.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(error),
            }
        } else {
            match stream.read_exact(&mut buf[..size]) {
                Ok(()) => size,
                Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(error) => return Err(error),
            }
        };
        stream.write_all(&buf[..n])?;
    }
}

// === client ===

pub(crate) fn run(args: &Args) -> ExitCode {
    let timeout = Duration::from_secs(args.timeout_secs);
    let mut streams = Vec::new();
    for _ in 0..args.conns {
        match connect(args.to, timeout) {
            Ok(stream) => streams.push(stream),
            Err(error) => {
                return Event::fail(format!("cannot connect to {}: {error}", args.to));
            }
        }
    }
    let window = Window::after_warmup(args.warmup_secs, args.duration_secs);
    let size = args.size;
    let results: Vec<io::Result<Vec<u64>>> = std::thread::scope(|scope| {
        let threads: Vec<_> = streams
            .into_iter()
            .map(|stream| scope.spawn(move || round_trips(stream, size, window)))
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
    let mut samples = Vec::new();
    for result in results {
        match result {
            Ok(mut thread_samples) => samples.append(&mut thread_samples),
            Err(error) => {
                return Event::fail(format!("exchange with {} failed: {error}", args.to));
            }
        }
    }
    let seconds = args.duration_secs.as_secs_f64();
    let count = samples.len() as u64;
    let percentiles = Percentiles::of(&mut samples);
    let cdf = latency::cdf(&samples);
    Event::Rr {
        samples: count,
        p50_us: percentiles.p50,
        p90_us: percentiles.p90,
        p99_us: percentiles.p99,
        rate: per_second(count, seconds),
        size,
        conns: usize::from(args.conns),
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

pub(crate) fn connect(to: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(to), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_tcp_nodelay(true)?;
    socket.connect_timeout(&to.into(), timeout)?;
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    Ok(stream)
}

/// Round trips on one connection until the window closes; returns the
/// duration of each one that started inside it, in nanoseconds.
fn round_trips(mut stream: TcpStream, size: usize, window: Window) -> io::Result<Vec<u64>> {
    let request = vec![0x5a; size];
    let mut response = vec![0; size];
    let mut samples = Vec::with_capacity(1 << 16);
    loop {
        let started = Instant::now();
        if started >= window.until {
            return Ok(samples);
        }
        stream.write_all(&request)?;
        stream.read_exact(&mut response)?;
        if started >= window.measure_from {
            samples.push(as_nanos(started.elapsed()));
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
