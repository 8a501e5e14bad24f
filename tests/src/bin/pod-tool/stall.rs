//! `pod-tool stall`: a server that never answers a new connection. It
//! listens with no accept queue to speak of and fills it with a connection
//! of its own over loopback, so the kernel drops every later SYN: a
//! connect to it hangs until its caller gives up, as to an overloaded
//! application.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

use crate::event::Event;

#[derive(clap::Args)]
pub(crate) struct Args {
    /// The port to listen on, on every IPv4 address of the pod.
    #[arg(long)]
    port: u16,
    /// How long to hold the port before exiting.
    #[arg(long, default_value_t = 60)]
    max_secs: u64,
}

pub(crate) fn run(args: &Args) -> ExitCode {
    match stall(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("pod-tool stall: {error}");
            ExitCode::FAILURE
        }
    }
}

fn stall(args: &Args) -> std::io::Result<()> {
    let listener = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    listener.set_reuse_address(true)?;
    listener.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, args.port)).into())?;
    // A backlog of 0 holds one connection; once it does, the queue is full
    // and SYNs are dropped (never answered, never refused).
    listener.listen(0)?;
    let _queued = TcpStream::connect((Ipv4Addr::LOCALHOST, args.port))?;
    Event::Listening {
        addrs: vec![SocketAddr::from((Ipv4Addr::UNSPECIFIED, args.port)).to_string()],
    }
    .emit();
    std::thread::sleep(Duration::from_secs(args.max_secs));
    Ok(())
}
