//! `pod-tool try-bind`: whether a TCP port can be bound here.

use std::net::{SocketAddr, TcpListener};
use std::process::ExitCode;

use crate::event::Event;

#[derive(clap::Args)]
pub(crate) struct Args {
    /// The address to bind, e.g. `0.0.0.0:15001`.
    #[arg(long)]
    addr: SocketAddr,
}

/// Exits 0 whether or not the bind worked: the JSON line is the result.
pub(crate) fn run(args: &Args) -> ExitCode {
    let event = match TcpListener::bind(args.addr) {
        Ok(listener) => Event::Bind {
            addr: listener.local_addr().unwrap_or(args.addr).to_string(),
            ok: true,
            errno: None,
            error: None,
        },
        Err(error) => Event::Bind {
            addr: args.addr.to_string(),
            ok: false,
            errno: error.raw_os_error(),
            error: Some(error.to_string()),
        },
    };
    event.emit();
    ExitCode::SUCCESS
}
