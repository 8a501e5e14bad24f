//! `pod-tool connect-times`: how long new connections take to carry their
//! first round trip, opened many at once.
//!
//! In a meshed pod, `connect` returns at once (the agent's outbound
//! listener accepts); the first byte comes back only once the agent has an
//! HBONE stream to the destination. So each sample runs from the start of
//! `connect` to the end of a 1-byte round trip (against `serve` or
//! `rr-server --size 1`): the set-up time the application sees.

use std::io;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::event::Event;
use crate::hold::round_trip;
use crate::latency::{Percentiles, as_nanos};
use crate::rr;

#[derive(clap::Args)]
pub(crate) struct Args {
    /// The echo server, e.g. `10.10.2.11:8080`.
    #[arg(long)]
    to: SocketAddr,
    /// Connections opened at once in each round, one thread each.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u16).range(1..=256))]
    conns: u16,
    /// Rounds, one after the other; a round with a failed connection is
    /// the last (a failing destination is not measured further).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=100))]
    rounds: u16,
    /// Limit for the connect and for each read or write; a connection that
    /// takes longer fails.
    #[arg(long, default_value_t = 15)]
    timeout_secs: u64,
}

pub(crate) fn run(args: &Args) -> ExitCode {
    let timeout = Duration::from_secs(args.timeout_secs);
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut failed_ms = Vec::new();
    let mut last_error = None;
    let mut rounds = 0;
    while rounds < args.rounds && failed_ms.is_empty() {
        rounds += 1;
        for (took, outcome) in one_round(args.to, args.conns, timeout) {
            match outcome {
                Ok(()) => samples.push(as_nanos(took)),
                Err(error) => {
                    failed_ms.push(as_nanos(took) / 1_000_000);
                    last_error = Some(error.to_string());
                }
            }
        }
    }
    failed_ms.sort_unstable();
    let count = samples.len() as u64;
    let percentiles = Percentiles::of(&mut samples);
    Event::ConnectTimes {
        to: args.to.to_string(),
        rounds,
        samples: count,
        p50_us: percentiles.p50,
        p99_us: percentiles.p99,
        max_us: samples.last().map_or(0, |nanos| nanos / 1000),
        failed_ms,
        last_error: last_error.clone(),
        seconds: started.elapsed().as_secs_f64(),
    }
    .emit();
    if last_error.is_none() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `conns` connections at once: how long each took, and how it went.
fn one_round(to: SocketAddr, conns: u16, timeout: Duration) -> Vec<(Duration, io::Result<()>)> {
    std::thread::scope(|scope| {
        let threads: Vec<_> = (0..conns)
            .map(|_| {
                scope.spawn(move || {
                    let started = Instant::now();
                    let outcome =
                        rr::connect(to, timeout).and_then(|mut stream| round_trip(&mut stream));
                    (started.elapsed(), outcome)
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|thread| {
                thread.join().unwrap_or_else(|_| {
                    (
                        Duration::ZERO,
                        Err(io::Error::other("a client thread panicked")),
                    )
                })
            })
            .collect()
    })
}
