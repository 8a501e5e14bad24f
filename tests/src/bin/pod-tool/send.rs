//! `pod-tool send`: an echo client that checks every byte it gets back.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use crate::event::{Event, parse_u32};

const CHUNK: usize = 64 * 1024;

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Where to connect, e.g. `10.10.2.11:8080` or `[fd00:10:10:2::b]:8080`.
    #[arg(long)]
    to: SocketAddr,
    /// How many bytes to send (and expect back).
    #[arg(long)]
    bytes: u64,
    /// Limit for connecting and for each read or write.
    #[arg(long, default_value_t = 30)]
    timeout_secs: u64,
    /// Put this `SO_MARK` on the socket (e.g. 0x539, the mesh's own mark).
    #[arg(long, value_parser = parse_u32)]
    mark: Option<u32>,
    /// Read again when a blocking read returns `EAGAIN` before the timeout.
    /// A socket spliced by `sk_msg` does that when another thread's
    /// half-close wakes the reader (the kernel's `tcp_bpf_recvmsg` waits
    /// once and gives up); see docs/performance.md.
    #[arg(long)]
    retry_spurious_eagain: bool,
}

/// What the two halves of an exchange saw.
struct Exchange {
    sent: u64,
    received: u64,
    pattern_ok: bool,
    error: Option<String>,
}

pub(crate) fn run(args: &Args) -> ExitCode {
    let timeout = Duration::from_secs(args.timeout_secs);
    let started = Instant::now();
    let stream = match connect(args.to, args.mark, timeout) {
        Ok(stream) => stream,
        Err(error) => {
            return Event::fail(format!("cannot connect to {}: {error}", args.to));
        }
    };
    let local = stream
        .local_addr()
        .map_or_else(|error| format!("error: {error}"), |addr| addr.to_string());
    // getpeername, as the application sees it (the mesh may rewrite it).
    let peer = stream
        .peer_addr()
        .map_or_else(|error| format!("error: {error}"), |addr| addr.to_string());
    let exchange = exchange(
        &stream,
        args.bytes,
        args.retry_spurious_eagain.then_some(timeout),
    );
    let echo_ok = exchange.error.is_none()
        && exchange.pattern_ok
        && exchange.sent == args.bytes
        && exchange.received == args.bytes;
    Event::Sent {
        local,
        peer,
        bytes_sent: exchange.sent,
        bytes_received: exchange.received,
        echo_ok,
        millis: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        error: exchange.error,
    }
    .emit();
    if echo_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn connect(to: SocketAddr, mark: Option<u32>, timeout: Duration) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(to), Type::STREAM, Some(Protocol::TCP))?;
    if let Some(mark) = mark {
        socket.set_mark(mark)?;
    }
    socket.connect_timeout(&to.into(), timeout)?;
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    Ok(stream)
}

/// Sends `total` pattern bytes and half-closes on one thread while reading
/// the echo to its end on this one (retrying `EAGAIN` within `retry_until`
/// when given).
fn exchange(stream: &TcpStream, total: u64, retry_until: Option<Duration>) -> Exchange {
    let writer = match stream.try_clone() {
        Ok(writer) => writer,
        Err(error) => {
            return Exchange {
                sent: 0,
                received: 0,
                pattern_ok: false,
                error: Some(error.to_string()),
            };
        }
    };
    let sender = std::thread::spawn(move || send_pattern(writer, total));
    let (received, pattern_ok, read_error) = receive_pattern(stream, retry_until);
    let (sent, write_error) = sender
        .join()
        .unwrap_or((0, Some("sender thread panicked".to_owned())));
    Exchange {
        sent,
        received,
        pattern_ok,
        error: write_error.or(read_error),
    }
}

fn send_pattern(mut stream: TcpStream, total: u64) -> (u64, Option<String>) {
    let mut buf = vec![0; CHUNK];
    let mut sent = 0;
    while sent < total {
        let len = usize::try_from(total - sent).map_or(CHUNK, |left| left.min(CHUNK));
        fill_pattern(&mut buf[..len], sent);
        if let Err(error) = stream.write_all(&buf[..len]) {
            return (
                sent,
                Some(format!("write failed after {sent} bytes: {error}")),
            );
        }
        sent += len as u64;
    }
    let error = stream
        .shutdown(Shutdown::Write)
        .err()
        .map(|error| format!("half-close failed: {error}"));
    (sent, error)
}

fn receive_pattern(
    mut stream: &TcpStream,
    retry_until: Option<Duration>,
) -> (u64, bool, Option<String>) {
    let started = Instant::now();
    let mut buf = vec![0; CHUNK];
    let mut expected = vec![0; CHUNK];
    let mut received = 0;
    let mut pattern_ok = true;
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => return (received, pattern_ok, None),
            Ok(n) => n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error)
                if error.kind() == io::ErrorKind::WouldBlock
                    && retry_until.is_some_and(|limit| started.elapsed() < limit) =>
            {
                continue;
            }
            Err(error) => {
                return (
                    received,
                    pattern_ok,
                    Some(format!("read failed after {received} bytes: {error}")),
                );
            }
        };
        fill_pattern(&mut expected[..n], received);
        pattern_ok &= buf[..n] == expected[..n];
        received += n as u64;
    }
}

/// Byte `i` of the stream is `i * 31 + 7` (mod 256): cheap, and a shifted or
/// reordered chunk does not match.
fn fill_pattern(buf: &mut [u8], offset: u64) {
    for (i, byte) in (offset..).zip(buf.iter_mut()) {
        *byte = i.wrapping_mul(31).wrapping_add(7).to_le_bytes()[0];
    }
}
