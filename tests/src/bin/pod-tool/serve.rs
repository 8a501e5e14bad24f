//! `pod-tool serve`: a TCP echo server on one or more addresses. With
//! `--banner TEXT` it speaks first, as server-first protocols such as SMTP
//! do: each connection gets `TEXT` and a newline before any echo.

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
    /// A line sent on every connection before anything is read.
    #[arg(long)]
    banner: Option<String>,
}

pub(crate) fn run(args: &Args) -> ExitCode {
    let banner = args.banner.clone();
    serve_on(&args.listen, move |listener| {
        accept_loop(&listener, banner.as_deref());
    })
}

/// Listens on every address of `addrs`, says where (a `listening` event),
/// and runs `accept` on a thread of its own for each listener, until the
/// process is killed; fails at once if one address cannot be bound.
pub(crate) fn serve_on(
    addrs: &[SocketAddr],
    accept: impl Fn(TcpListener) + Clone + Send + 'static,
) -> ExitCode {
    // A thread and a descriptor per connection: `hold` opens a thousand.
    open_files::raise_to_hard_limit();
    let mut listeners = Vec::new();
    for addr in addrs {
        match listen(*addr) {
            Ok(listener) => listeners.push(listener),
            Err(error) => {
                return Event::fail(format!("cannot listen on {addr}: {error}"));
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
        .map(|listener| {
            let accept = accept.clone();
            std::thread::spawn(move || accept(listener))
        })
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

fn accept_loop(listener: &TcpListener, banner: Option<&str>) {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                let banner = banner.map(|text| format!("{text}\n"));
                std::thread::spawn(move || echo_connection(stream, banner.as_deref()));
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

fn echo_connection(stream: TcpStream, banner: Option<&str>) {
    // getpeername, as the application sees it (the mesh may rewrite it).
    let peer = stream
        .peer_addr()
        .map_or_else(|error| format!("error: {error}"), |addr| addr.to_string());
    let local = stream
        .local_addr()
        .map_or_else(|error| format!("error: {error}"), |addr| addr.to_string());
    let mut bytes_in = 0;
    let mut bytes_out = 0;
    let result = banner
        .map_or(Ok(()), |banner| {
            (&stream).write_all(banner.as_bytes())?;
            bytes_out += banner.len() as u64;
            Ok(())
        })
        .and_then(|()| echo(&stream, &mut bytes_in, &mut bytes_out));
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
