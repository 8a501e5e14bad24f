//! `pod-tool hold`: many idle connections at once, so a test can measure
//! what an idle connection costs whatever carries it (the mesh's agents).
//!
//! Each connection carries one 1-byte round trip before the next opens
//! (against `rr-server --size 1` or the `serve` echo server), so it is
//! established end to end, through every proxy on the way, before `held` is
//! printed. After the hold, each must carry another round trip: a proxy that
//! dropped idle connections shows in `still_open`.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::event::Event;
use crate::latency::{as_nanos, parse_seconds};
use crate::{open_files, rr};

/// Descriptors beyond one per connection: stdio, and what the runtime opens.
const SPARE_DESCRIPTORS: u64 = 64;

#[derive(clap::Args)]
pub(crate) struct Args {
    /// The server: `rr-server --size 1` or `serve`, e.g. `10.10.2.11:7001`.
    #[arg(long)]
    to: SocketAddr,
    /// Connections to open and hold.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=50_000))]
    conns: u32,
    /// How long to hold them idle once all are up.
    #[arg(long, value_parser = parse_seconds)]
    hold_secs: Duration,
    /// Limit for each connect and each read or write.
    #[arg(long, default_value_t = 5)]
    timeout_secs: u64,
    /// Limit for opening all of them.
    #[arg(long, value_parser = parse_seconds, default_value = "60")]
    setup_secs: Duration,
}

pub(crate) fn run(args: &Args) -> ExitCode {
    let nofile_limit = match open_files::raise_to(u64::from(args.conns) + SPARE_DESCRIPTORS) {
        Ok(limit) => limit,
        Err(error) => {
            return Event::fail(format!("cannot hold {} connections: {error}", args.conns));
        }
    };
    let timeout = Duration::from_secs(args.timeout_secs);
    let started = Instant::now();
    let deadline = started + args.setup_secs;
    let mut streams = Vec::with_capacity(usize::try_from(args.conns).unwrap_or(0));
    for index in 1..=args.conns {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Event::fail(format!(
                "only {} of {} connections to {} were up after {:?}",
                index - 1,
                args.conns,
                args.to,
                args.setup_secs
            ));
        }
        match open_established(args.to, timeout.min(remaining)) {
            Ok(stream) => streams.push(stream),
            Err(error) => {
                return Event::fail(format!(
                    "connection {index} of {} to {}: {error}",
                    args.conns, args.to
                ));
            }
        }
    }
    Event::Held {
        conns: args.conns,
        setup_ms: as_nanos(started.elapsed()) / 1_000_000,
        nofile_limit,
    }
    .emit();

    let held_from = Instant::now();
    std::thread::sleep(args.hold_secs);
    let held_secs = held_from.elapsed().as_secs_f64();
    let mut still_open = 0;
    let mut last_error = None;
    for stream in &mut streams {
        match round_trip(stream) {
            Ok(()) => still_open += 1,
            Err(error) => last_error = Some(error.to_string()),
        }
    }
    drop(streams);
    Event::Released {
        conns: args.conns,
        still_open,
        last_error,
        held_secs,
    }
    .emit();
    if still_open == args.conns {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Connects and makes one round trip, so every hop has the connection.
fn open_established(to: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let mut stream = rr::connect(to, timeout)?;
    round_trip(&mut stream)?;
    Ok(stream)
}

/// One byte there, one byte back.
pub(crate) fn round_trip(stream: &mut TcpStream) -> io::Result<()> {
    stream.write_all(&[1])?;
    let mut answer = [0];
    stream.read_exact(&mut answer)
}
