//! `--epoll`: `serve`, `send`, `rr-server` and `rr` with non-blocking
//! sockets driven by an event loop (tokio's current-thread runtime, which
//! waits in `epoll_wait`), instead of blocking calls on threads.
//!
//! The mode exists for ambit's opt-in kernel splice (`sk_msg` socket
//! redirection, docs/performance.md). A socket in the splice's sock hash
//! receives through the kernel's `tcp_bpf_recvmsg`, which waits once and
//! returns `EAGAIN` when it is woken without data: a blocking reader woken by
//! another thread's half-close or write on the same socket gets an error no
//! plain TCP socket would give. An application that reads non-blocking,
//! waits for readiness with epoll and reads again on `EAGAIN` never notices;
//! that is the contract under which the splice is safe to turn on. These
//! modes are pod-tool's own clients and servers of that kind: the same
//! exchange and the same JSON as the blocking commands, every `EAGAIN` only
//! a reason to wait for the next readiness event.
//!
//! Each command's event-loop half lives beside its blocking half
//! (`serve/nonblocking.rs`, `send/nonblocking.rs`, `rr/nonblocking.rs`) and
//! shares its arguments, byte pattern, events and statistics; this module
//! holds what the event-loop halves have in common.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use socket2::Socket;
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::event::Event;

/// The `--epoll` flag, shared by the commands that have the mode.
#[derive(clap::Args)]
pub(crate) struct Mode {
    /// Use non-blocking sockets on an epoll event loop (one thread, one task
    /// per connection) instead of blocking calls on threads: the same
    /// exchange and output, read the way an application must read to be
    /// safe on ambit's kernel splice (wait for readiness, retry `EAGAIN`).
    #[arg(long)]
    pub(crate) epoll: bool,
}

/// Runs `command` to its end on a current-thread runtime with I/O and
/// timers; fails at once if the runtime cannot start.
pub(crate) fn block_on(command: impl Future<Output = ExitCode>) -> ExitCode {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(command),
        Err(error) => Event::fail(format!("cannot start the event loop: {error}")),
    }
}

/// Runs `io` within `limit`, as a blocking socket's `SO_RCVTIMEO` or
/// `SO_SNDTIMEO` bounds one call; a late one fails with `TimedOut`.
pub(crate) async fn within<T>(
    limit: Duration,
    io: impl Future<Output = io::Result<T>>,
) -> io::Result<T> {
    tokio::time::timeout(limit, io).await.unwrap_or_else(|_| {
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("timed out after {limit:?}"),
        ))
    })
}

/// Connects `socket` (its options already set by the caller: mark,
/// `TCP_NODELAY`) to `to` through the event loop, within `limit`.
pub(crate) async fn connect(
    socket: Socket,
    to: SocketAddr,
    limit: Duration,
) -> io::Result<TcpStream> {
    socket.set_nonblocking(true)?;
    let socket = TcpSocket::from_std_stream(socket.into());
    within(limit, socket.connect(to)).await
}

/// Hands a bound listener to the event loop; must run inside it.
pub(crate) fn listener(listener: std::net::TcpListener) -> io::Result<TcpListener> {
    listener.set_nonblocking(true)?;
    TcpListener::from_std(listener)
}
