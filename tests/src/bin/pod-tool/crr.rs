//! `pod-tool crr`: connection setup cost, the way netperf's `TCP_CRR`
//! measures it. Each iteration connects, sends one byte, reads the one-byte
//! answer (from `rr-server --size 1`) and closes; its duration is one sample.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::event::Event;
use crate::latency::{Percentiles, Window, as_nanos, parse_seconds, per_second};
use crate::rr;

/// A thread stops after this many failed connections: the target is down,
/// and hammering it proves nothing more.
const MAX_ERRORS_PER_THREAD: u64 = 1000;

/// Pause after a failed connection, so a refusing target is not spun on.
const ERROR_BACKOFF: Duration = Duration::from_millis(10);

#[derive(clap::Args)]
pub(crate) struct Args {
    /// The `rr-server --size 1` to connect to, e.g. `10.10.2.11:7001`.
    #[arg(long)]
    to: SocketAddr,
    /// Threads, each with one connection at a time.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    conns: u16,
    /// How long to measure, after the warm-up.
    #[arg(long, value_parser = parse_seconds)]
    duration_secs: Duration,
    /// How long to run before measuring.
    #[arg(long, value_parser = parse_seconds, default_value = "0")]
    warmup_secs: Duration,
    /// Limit for connecting and for each read or write.
    #[arg(long, default_value_t = 5)]
    timeout_secs: u64,
}

/// What one thread saw.
#[derive(Default)]
struct ThreadResult {
    samples: Vec<u64>,
    errors: u64,
    last_error: Option<String>,
}

pub(crate) fn run(args: &Args) -> ExitCode {
    let timeout = Duration::from_secs(args.timeout_secs);
    let window = Window::after_warmup(args.warmup_secs, args.duration_secs);
    let to = args.to;
    let results: Vec<ThreadResult> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..args.conns)
            .map(|_| scope.spawn(move || connections(to, timeout, window)))
            .collect();
        threads
            .into_iter()
            .map(|thread| {
                thread.join().unwrap_or_else(|_| ThreadResult {
                    errors: 1,
                    last_error: Some("a client thread panicked".to_owned()),
                    ..ThreadResult::default()
                })
            })
            .collect()
    });
    let mut samples = Vec::new();
    let mut errors = 0;
    let mut last_error = None;
    for mut result in results {
        samples.append(&mut result.samples);
        errors += result.errors;
        last_error = result.last_error.or(last_error);
    }
    let seconds = args.duration_secs.as_secs_f64();
    let count = samples.len() as u64;
    let percentiles = Percentiles::of(&mut samples);
    Event::Crr {
        samples: count,
        errors,
        last_error,
        p50_us: percentiles.p50,
        p90_us: percentiles.p90,
        p99_us: percentiles.p99,
        rate: per_second(count, seconds),
        conns: usize::from(args.conns),
        seconds,
    }
    .emit();
    if count == 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Connection after connection until the window closes.
fn connections(to: SocketAddr, timeout: Duration, window: Window) -> ThreadResult {
    let mut result = ThreadResult {
        samples: Vec::with_capacity(1 << 14),
        ..ThreadResult::default()
    };
    loop {
        let started = Instant::now();
        if started >= window.until || result.errors >= MAX_ERRORS_PER_THREAD {
            return result;
        }
        match one_connection(to, timeout) {
            Ok(()) if started >= window.measure_from => {
                result.samples.push(as_nanos(started.elapsed()));
            }
            Ok(()) => {}
            Err(error) => {
                result.errors += 1;
                result.last_error = Some(error.to_string());
                std::thread::sleep(ERROR_BACKOFF);
            }
        }
    }
}

/// Connect, one byte each way, close (the client closes first, as an HTTP/1.0
/// client would).
fn one_connection(to: SocketAddr, timeout: Duration) -> io::Result<()> {
    let mut stream = rr::connect(to, timeout)?;
    stream.write_all(&[1])?;
    let mut answer = [0];
    stream.read_exact(&mut answer)?;
    Ok(())
}
