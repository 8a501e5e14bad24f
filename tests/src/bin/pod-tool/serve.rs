//! `pod-tool serve`: a TCP echo server on one or more addresses.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;

use socket2::{Domain, Protocol, Socket, Type};

use crate::event::Event;
use crate::open_files;

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Addresses to listen on, comma-separated (e.g. `0.0.0.0:8080,[::]:8080`;
    /// IPv6 listeners are IPv6-only).
    #[arg(long, value_delimiter = ',', required = true)]
    listen: Vec<SocketAddr>,
}

pub(crate) fn run(args: &Args) -> ExitCode {
    // A thread and a descriptor per connection: `hold` opens a thousand.
    open_files::raise_to_hard_limit();
    let mut listeners = Vec::new();
    for addr in &args.listen {
        match listen(*addr) {
            Ok(listener) => listeners.push(listener),
            Err(error) => {
                Event::Error {
                    error: format!("cannot listen on {addr}: {error}"),
                }
                .emit();
                return ExitCode::FAILURE;
            }
        }
    }
    let addrs = listeners
        .iter()
        .map(|listener| {
            listener
                .local_addr()
                .map_or_else(|error| error.to_string(), |addr| addr.to_string())
        })
        .collect();
    Event::Listening { addrs }.emit();
    let acceptors: Vec<_> = listeners
        .into_iter()
        .map(|listener| std::thread::spawn(move || accept_loop(&listener)))
        .collect();
    for acceptor in acceptors {
        let _ = acceptor.join();
    }
    ExitCode::FAILURE
}

/// Binds a listener with `SO_REUSEADDR`, IPv6 ones IPv6-only so `0.0.0.0`
/// and `[::]` on one port can coexist.
pub(crate) fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

fn accept_loop(listener: &TcpListener) {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                std::thread::spawn(move || echo_connection(stream));
            }
            Err(error) => {
                Event::Error {
                    error: format!("accept failed: {error}"),
                }
                .emit();
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
    }
}

fn echo_connection(stream: TcpStream) {
    // getpeername, as the application sees it (the mesh may rewrite it).
    let peer = stream
        .peer_addr()
        .map_or_else(|error| format!("error: {error}"), |addr| addr.to_string());
    let local = stream
        .local_addr()
        .map_or_else(|error| format!("error: {error}"), |addr| addr.to_string());
    let mut bytes_in = 0;
    let mut bytes_out = 0;
    let result = echo(&stream, &mut bytes_in, &mut bytes_out);
    // Report a connection only once it is closed on our side too.
    drop(stream);
    Event::Conn {
        peer,
        local,
        bytes_in,
        bytes_out,
        error: result.err().map(|error| error.to_string()),
    }
    .emit();
}

fn echo(mut stream: &TcpStream, bytes_in: &mut u64, bytes_out: &mut u64) -> io::Result<()> {
    let mut buf = vec![0; 64 * 1024];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        };
        *bytes_in += n as u64;
        stream.write_all(&buf[..n])?;
        *bytes_out += n as u64;
    }
    stream.shutdown(Shutdown::Write)
}
