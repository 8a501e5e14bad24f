//! `pod-tool ping`: one connection that carries a 1-byte round trip every
//! `--interval-ms`, for at most `--max-secs`, and reports how it ended, so
//! a test can see an open connection being cut (by a policy change) and
//! when.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::event::Event;
use crate::latency::parse_seconds;
use crate::rr;

#[derive(clap::Args)]
pub(crate) struct Args {
    /// The echo server, e.g. `10.10.2.11:8080`.
    #[arg(long)]
    to: SocketAddr,
    /// Pause between round trips.
    #[arg(long, default_value_t = 50)]
    interval_ms: u64,
    /// Stop after this long even if the connection is still up.
    #[arg(long, value_parser = parse_seconds, default_value = "30")]
    max_secs: Duration,
    /// Limit for the connect and each round trip.
    #[arg(long, default_value_t = 5)]
    timeout_secs: u64,
}

pub(crate) fn run(args: &Args) -> ExitCode {
    let started = Instant::now();
    let mut stream = match rr::connect(args.to, Duration::from_secs(args.timeout_secs)) {
        Ok(stream) => stream,
        Err(error) => {
            return Event::cannot_connect(args.to, error);
        }
    };
    let local = stream
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let mut round_trips = 0u64;
    let error = loop {
        if started.elapsed() >= args.max_secs {
            break None;
        }
        if let Err(error) = round_trip(&mut stream) {
            break Some(error);
        }
        round_trips += 1;
        if round_trips == 1 {
            Event::PingUp {
                local: local.clone(),
                peer: args.to.to_string(),
            }
            .emit();
        }
        std::thread::sleep(Duration::from_millis(args.interval_ms));
    };
    Event::PingEnd {
        round_trips,
        kind: error.as_ref().map(|e| describe(e).to_owned()),
        error: error.as_ref().map(ToString::to_string),
        millis: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    }
    .emit();
    ExitCode::SUCCESS
}

fn round_trip(stream: &mut std::net::TcpStream) -> io::Result<()> {
    stream.write_all(b"p")?;
    let mut reply = [0u8; 1];
    stream.read_exact(&mut reply)
}

/// How the connection ended, in one word: `reset` (also an abort, which is
/// what the kernel reports when the mesh destroys a socket), `eof` or
/// `timeout`.
pub(crate) fn describe(error: &io::Error) -> &'static str {
    match error.kind() {
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => "reset",
        io::ErrorKind::UnexpectedEof => "eof",
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => "timeout",
        _ => "other",
    }
}
