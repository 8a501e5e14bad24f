//! `pod-tool serve`: a TCP echo server on one or more addresses. With
//! `--banner TEXT` it speaks first, as server-first protocols such as SMTP
//! do: each connection gets `TEXT` and a newline before any echo. With
//! `--epoll` the same server runs on an event loop ([`crate::epoll`]).

pub(crate) mod nonblocking;

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

use crate::epoll;
use crate::event::{Event, show_addr};
use crate::open_files;

/// Pause after a failed accept (out of descriptors, say) before the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Bytes echoed per read.
const ECHO_CHUNK: usize = 64 * 1024;

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Addresses to listen on, comma-separated (e.g. `0.0.0.0:8080,[::]:8080`;
    /// IPv6 listeners are IPv6-only).
    #[arg(long, value_delimiter = ',', required = true)]
    listen: Vec<SocketAddr>,
    /// A line sent on every connection before anything is read.
    #[arg(long)]
    banner: Option<String>,
    #[command(flatten)]
    mode: epoll::Mode,
}

/// What one connection carried, for its `conn` event.
struct Conn {
    peer: String,
    local: String,
    bytes_in: u64,
    bytes_out: u64,
}

pub(crate) fn run(args: &Args) -> ExitCode {
    let banner = args.banner.as_ref().map(|text| format!("{text}\n"));
    if args.mode.epoll {
        return nonblocking::run(&args.listen, banner);
    }
    serve_on(&args.listen, move |stream| {
        echo_connection(stream, banner.as_deref());
    })
}

/// Listens on every address of `addrs` ([`bind_all`]) and accepts on a
/// thread of its own for each listener, handing each connection to `handle`
/// on a thread of its own, until the process is killed; fails at once if one
/// address cannot be bound.
pub(crate) fn serve_on(
    addrs: &[SocketAddr],
    handle: impl Fn(TcpStream) + Clone + Send + 'static,
) -> ExitCode {
    let listeners = match bind_all(addrs) {
        Ok(listeners) => listeners,
        Err(code) => return code,
    };
    let acceptors: Vec<_> = listeners
        .into_iter()
        .map(|listener| {
            let handle = handle.clone();
            std::thread::spawn(move || accept_each(&listener, handle))
        })
        .collect();
    for acceptor in acceptors {
        let _ = acceptor.join();
    }
    ExitCode::FAILURE
}

/// Binds a listener on every address of `addrs` and says where (a
/// `listening` event); reports the first that cannot be bound and returns
/// the failure exit code instead.
fn bind_all(addrs: &[SocketAddr]) -> Result<Vec<TcpListener>, ExitCode> {
    // A thread (or task) and a descriptor per connection: `hold` opens a
    // thousand.
    open_files::raise_to_hard_limit();
    let mut listeners = Vec::new();
    for addr in addrs {
        match listen(*addr) {
            Ok(listener) => listeners.push(listener),
            Err(error) => {
                return Err(Event::fail(format!("cannot listen on {addr}: {error}")));
            }
        }
    }
    let addrs = listeners
        .iter()
        .map(|listener| show_addr(listener.local_addr()))
        .collect();
    Event::Listening { addrs }.emit();
    Ok(listeners)
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

/// Accepts until the process is killed, each connection handled on a thread
/// of its own.
fn accept_each(listener: &TcpListener, handle: impl Fn(TcpStream) + Clone + Send + 'static) {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                let handle = handle.clone();
                std::thread::spawn(move || handle(stream));
            }
            Err(error) => {
                accept_failed(&error);
                std::thread::sleep(ACCEPT_BACKOFF);
            }
        }
    }
}

/// Reports a failed accept; the listener is tried again after
/// [`ACCEPT_BACKOFF`].
fn accept_failed(error: &io::Error) {
    Event::Error {
        error: format!("accept failed: {error}"),
    }
    .emit();
}

fn echo_connection(mut stream: TcpStream, banner: Option<&str>) {
    let mut conn = Conn::new(stream.peer_addr(), stream.local_addr());
    let result = echo(&mut stream, banner, &mut conn);
    // Report a connection only once it is closed on our side too.
    drop(stream);
    conn.closed(result);
}

/// Sends `banner`, then every byte read back, and half-closes after the
/// peer does.
fn echo(stream: &mut TcpStream, banner: Option<&str>, conn: &mut Conn) -> io::Result<()> {
    if let Some(banner) = banner {
        stream.write_all(banner.as_bytes())?;
        conn.sent(banner.len());
    }
    let mut buf = vec![0; ECHO_CHUNK];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        };
        conn.received(n);
        stream.write_all(&buf[..n])?;
        conn.sent(n);
    }
    stream.shutdown(Shutdown::Write)
}

// === impl Conn ===

impl Conn {
    /// A connection with these ends, as the application sees them (the
    /// mesh may rewrite the peer), nothing carried yet.
    fn new(peer: io::Result<SocketAddr>, local: io::Result<SocketAddr>) -> Self {
        Self {
            peer: show_addr(peer),
            local: show_addr(local),
            bytes_in: 0,
            bytes_out: 0,
        }
    }

    fn received(&mut self, n: usize) {
        self.bytes_in += n as u64;
    }

    fn sent(&mut self, n: usize) {
        self.bytes_out += n as u64;
    }

    /// Reports the connection, closed on both sides, and how it ended.
    fn closed(self, result: io::Result<()>) {
        Event::Conn {
            peer: self.peer,
            local: self.local,
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            error: result.err().map(|error| error.to_string()),
        }
        .emit();
    }
}
