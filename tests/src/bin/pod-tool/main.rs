//! `pod-tool`: the workload that ambit's integration tests run inside pods.
//!
//! Every subcommand prints one JSON object per line on stdout, so tests can
//! wait for `{"event":"listening"}` and read results without parsing prose.

mod connect_times;
mod crr;
mod epoll;
mod event;
mod hold;
mod http_serve;
mod latency;
mod load;
mod open_files;
mod original_dst;
mod ping;
mod rr;
mod send;
mod serve;
mod stall;
mod sys;
mod try_bind;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    about = "Test workload for ambit pods: echo server, echo client, bind probe, SO_ORIGINAL_DST proxy, latency load generators, idle connections, connection set-up times, soak traffic"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Echo server: sends every byte back, half-closes after the peer does.
    Serve(serve::Args),
    /// Echo client: sends a byte pattern, half-closes, checks the echo.
    Send(send::Args),
    /// Tries to bind a TCP listener and reports whether it worked.
    TryBind(try_bind::Args),
    /// Accepts one connection on a marked socket and reports `SO_ORIGINAL_DST`.
    OriginalDstProxy(original_dst::Args),
    /// Request/response server for `rr` and `crr`: answers each request of
    /// `--size` bytes with the same bytes.
    RrServer(rr::ServerArgs),
    /// Request/response latency on long-lived connections.
    Rr(rr::Args),
    /// Connect, one-byte request/response, close, repeated: connection rate
    /// and latency.
    Crr(crr::Args),
    /// Opens many connections, one round trip each, and holds them idle:
    /// what idle connections cost the proxies on their path.
    Hold(hold::Args),
    /// Many new connections at once, each timed to the end of its first
    /// 1-byte round trip: the set-up time an application sees.
    ConnectTimes(connect_times::Args),
    /// One connection, a 1-byte round trip at an interval, until it is cut
    /// or the time is up; reports how it ended.
    Ping(ping::Args),
    /// Steady traffic to many targets (new connections, long-lived
    /// round trips, streams or HTTP requests) for the churn soak, each
    /// failure reported with its time.
    Load(load::Args),
    /// HTTP/1.1 and HTTP/2 server that names itself, fails or slows on
    /// demand, and streams with trailers: the waypoint's backends.
    HttpServe(http_serve::Args),
    /// A server that never answers a new connection: its accept queue is
    /// full, so SYNs are dropped and connects hang.
    Stall(stall::Args),
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Serve(args) => serve::run(&args),
        Command::HttpServe(args) => http_serve::run(args),
        Command::Send(args) => send::run(&args),
        Command::TryBind(args) => try_bind::run(&args),
        Command::OriginalDstProxy(args) => original_dst::run(&args),
        Command::RrServer(args) => rr::run_server(&args),
        Command::Rr(args) => rr::run(&args),
        Command::Crr(args) => crr::run(&args),
        Command::Hold(args) => hold::run(&args),
        Command::Ping(args) => ping::run(&args),
        Command::ConnectTimes(args) => connect_times::run(&args),
        Command::Load(args) => load::run(&args),
        Command::Stall(args) => stall::run(&args),
    }
}
