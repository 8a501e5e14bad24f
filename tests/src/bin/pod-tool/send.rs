//! `pod-tool send`: an echo client that checks every byte it gets back.
//! With `--epoll` the same exchange runs on an event loop ([`crate::epoll`]).

mod nonblocking;

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use crate::epoll;
use crate::event::{Event, parse_u32, show_addr};

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
    /// once and gives up); see docs/performance.md. `--epoll` always waits
    /// for the next readiness event instead.
    #[arg(long)]
    retry_spurious_eagain: bool,
    #[command(flatten)]
    mode: epoll::Mode,
}

/// What the sending half did.
struct Sent {
    sent: u64,
    error: Option<String>,
}

/// The pattern the sending half writes, one chunk at a time.
struct Pattern {
    buf: Vec<u8>,
    sent: u64,
    total: u64,
}

/// What the receiving half saw, checked against the pattern as it arrives.
struct Echo {
    buf: Vec<u8>,
    expected: Vec<u8>,
    received: u64,
    pattern_ok: bool,
    error: Option<String>,
}

pub(crate) fn run(args: &Args) -> ExitCode {
    if args.mode.epoll {
        return nonblocking::run(args);
    }
    let timeout = args.timeout();
    let started = Instant::now();
    let stream = match connect(args, timeout) {
        Ok(stream) => stream,
        Err(error) => return Event::cannot_connect(args.to, error),
    };
    let local = stream.local_addr();
    let peer = stream.peer_addr();
    let (sent, echo) = exchange(
        &stream,
        args.bytes,
        args.retry_spurious_eagain.then_some(timeout),
    );
    args.report(started, local, peer, sent, echo)
}

fn connect(args: &Args, timeout: Duration) -> io::Result<TcpStream> {
    let socket = args.socket()?;
    socket.connect_timeout(&args.to.into(), timeout)?;
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    Ok(stream)
}

/// Sends `total` pattern bytes and half-closes on one thread while reading
/// the echo to its end on this one (retrying `EAGAIN` within `retry_until`
/// when given).
fn exchange(stream: &TcpStream, total: u64, retry_until: Option<Duration>) -> (Sent, Echo) {
    let writer = match stream.try_clone() {
        Ok(writer) => writer,
        Err(error) => {
            let mut echo = Echo::new();
            echo.error = Some(error.to_string());
            return (Sent::nothing(), echo);
        }
    };
    let sender = std::thread::spawn(move || send_pattern(writer, total));
    let echo = receive_pattern(stream, retry_until);
    let sent = sender.join().unwrap_or_else(|_| Sent {
        error: Some("sender thread panicked".to_owned()),
        ..Sent::nothing()
    });
    (sent, echo)
}

fn send_pattern(mut stream: TcpStream, total: u64) -> Sent {
    let mut pattern = Pattern::new(total);
    while let Some(chunk) = pattern.next_chunk() {
        if let Err(error) = stream.write_all(chunk) {
            return pattern.write_failed(&error);
        }
        pattern.written();
    }
    pattern.half_closed(stream.shutdown(Shutdown::Write))
}

fn receive_pattern(mut stream: &TcpStream, retry_until: Option<Duration>) -> Echo {
    let started = Instant::now();
    let mut echo = Echo::new();
    loop {
        match stream.read(&mut echo.buf) {
            Ok(0) => return echo,
            Ok(n) => echo.check(n),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error)
                if error.kind() == io::ErrorKind::WouldBlock
                    && retry_until.is_some_and(|limit| started.elapsed() < limit) => {}
            Err(error) => return echo.read_failed(&error),
        }
    }
}

/// Byte `i` of the stream is `i * 31 + 7` (mod 256): cheap, and a shifted or
/// reordered chunk does not match.
fn fill_pattern(buf: &mut [u8], offset: u64) {
    for (i, byte) in (offset..).zip(buf.iter_mut()) {
        *byte = i.wrapping_mul(31).wrapping_add(7).to_le_bytes()[0];
    }
}

// === impl Args ===

impl Args {
    fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }

    /// The client socket, marked if asked, not yet connected.
    fn socket(&self) -> io::Result<Socket> {
        let socket = Socket::new(
            Domain::for_address(self.to),
            Type::STREAM,
            Some(Protocol::TCP),
        )?;
        if let Some(mark) = self.mark {
            socket.set_mark(mark)?;
        }
        Ok(socket)
    }

    /// Reports the exchange (a `sent` event) that started at `started` on a
    /// connection between `local` and `peer` (getpeername, as the
    /// application sees it: the mesh may rewrite it); success only if every
    /// byte came back as sent.
    fn report(
        &self,
        started: Instant,
        local: io::Result<SocketAddr>,
        peer: io::Result<SocketAddr>,
        sent: Sent,
        echo: Echo,
    ) -> ExitCode {
        let error = sent.error.or(echo.error);
        let echo_ok = error.is_none()
            && echo.pattern_ok
            && sent.sent == self.bytes
            && echo.received == self.bytes;
        Event::Sent {
            local: show_addr(local),
            peer: show_addr(peer),
            bytes_sent: sent.sent,
            bytes_received: echo.received,
            echo_ok,
            millis: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            error,
        }
        .emit();
        if echo_ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    }
}

// === impl Sent ===

impl Sent {
    fn nothing() -> Self {
        Self {
            sent: 0,
            error: None,
        }
    }
}

// === impl Pattern ===

impl Pattern {
    fn new(total: u64) -> Self {
        Self {
            buf: vec![0; CHUNK],
            sent: 0,
            total,
        }
    }

    /// The next chunk to write, `None` once all `total` bytes are written;
    /// call [`Pattern::written`] once it is.
    fn next_chunk(&mut self) -> Option<&[u8]> {
        let len = self.chunk_len();
        if len == 0 {
            return None;
        }
        fill_pattern(&mut self.buf[..len], self.sent);
        Some(&self.buf[..len])
    }

    /// The chunk [`Pattern::next_chunk`] gave is written.
    fn written(&mut self) {
        self.sent += self.chunk_len() as u64;
    }

    /// The length of the next chunk: a whole one, or what is left.
    fn chunk_len(&self) -> usize {
        usize::try_from(self.total - self.sent).map_or(CHUNK, |left| left.min(CHUNK))
    }

    fn write_failed(&self, error: &io::Error) -> Sent {
        Sent {
            sent: self.sent,
            error: Some(format!("write failed after {} bytes: {error}", self.sent)),
        }
    }

    /// Everything is written; `shutdown` is how the half-close went.
    fn half_closed(&self, shutdown: io::Result<()>) -> Sent {
        Sent {
            sent: self.sent,
            error: shutdown
                .err()
                .map(|error| format!("half-close failed: {error}")),
        }
    }
}

// === impl Echo ===

impl Echo {
    fn new() -> Self {
        Self {
            buf: vec![0; CHUNK],
            expected: vec![0; CHUNK],
            received: 0,
            pattern_ok: true,
            error: None,
        }
    }

    /// Checks the `n` bytes just read into `buf`.
    fn check(&mut self, n: usize) {
        fill_pattern(&mut self.expected[..n], self.received);
        self.pattern_ok &= self.buf[..n] == self.expected[..n];
        self.received += n as u64;
    }

    fn read_failed(mut self, error: &io::Error) -> Self {
        self.error = Some(format!(
            "read failed after {} bytes: {error}",
            self.received
        ));
        self
    }
}
