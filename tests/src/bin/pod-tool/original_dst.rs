//! `pod-tool original-dst-proxy`: plays a transparent proxy that asks the
//! kernel for `SO_ORIGINAL_DST`, as Envoy or an iptables-era proxy would.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::process::ExitCode;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

use crate::event::{Event, parse_u32, show_addr};
use crate::sys;

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Where to listen, e.g. `127.0.0.1:15001`.
    #[arg(long)]
    listen: SocketAddr,
    /// `SO_MARK` for the listening socket (ambit's proxies use 0x539).
    #[arg(long, value_parser = parse_u32, default_value = "0x539")]
    mark: u32,
}

pub(crate) fn run(args: &Args) -> ExitCode {
    let listener = match listen(args.listen, args.mark) {
        Ok(listener) => listener,
        Err(error) => {
            return Event::fail(format!("cannot listen on {}: {error}", args.listen));
        }
    };
    let local = listener
        .local_addr()
        .ok()
        .and_then(|addr| addr.as_socket())
        .unwrap_or(args.listen);
    Event::Listening {
        addrs: vec![local.to_string()],
    }
    .emit();
    let (socket, _) = match listener.accept() {
        Ok(accepted) => accepted,
        Err(error) => {
            return Event::fail(format!("accept failed: {error}"));
        }
    };
    let stream: TcpStream = socket.into();
    let peer = show_addr(stream.peer_addr());
    let local = show_addr(stream.local_addr());
    let ipv6 = stream.local_addr().is_ok_and(|addr| addr.is_ipv6());
    let (original_dst, error) = match sys::original_dst(stream.as_fd(), ipv6) {
        Ok(addr) => (Some(addr.to_string()), None),
        Err(error) => (None, Some(error.to_string())),
    };
    Event::OriginalDst {
        peer,
        local,
        original_dst,
        error,
    }
    .emit();
    reply_and_close(stream);
    ExitCode::SUCCESS
}

fn listen(addr: SocketAddr, mark: u32) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_mark(mark)?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(16)?;
    Ok(socket)
}

/// Answers `proxied`, then drains what the client sent before closing, so
/// unread input does not turn the close into a reset that eats the answer.
fn reply_and_close(mut stream: TcpStream) {
    let _ = stream.write_all(b"proxied");
    let _ = stream.shutdown(Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut sink = [0; 4096];
    while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
}
