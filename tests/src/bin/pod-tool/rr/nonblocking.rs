//! `pod-tool rr-server --epoll` and `pod-tool rr --epoll`: request/response
//! latency with both ends on an event loop, one task per connection, for the
//! kernel splice's contract (see [`crate::epoll`]).

use std::io;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Args, RoundTrips, client_socket, request_buffer, request_len};
use crate::epoll::{self, within};
use crate::event::Event;
use crate::serve;

// === server ===

/// Serves until killed.
pub(super) fn run_server(addrs: &[SocketAddr], size: usize) -> ExitCode {
    serve::nonblocking::serve_on(addrs, move |stream| async move {
        // The client sees a failed exchange; nothing to add here.
        let _ = answer(stream, size).await;
    })
}

/// [`super::answer`], awaiting readiness instead of blocking.
async fn answer(mut stream: TcpStream, size: usize) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = request_buffer(size);
    loop {
        let read = if size == 0 {
            stream.read(&mut buf).await
        } else {
            stream.read_exact(&mut buf[..size]).await
        };
        let Some(n) = request_len(read, size)? else {
            return Ok(());
        };
        stream.write_all(&buf[..n]).await?;
    }
}

// === client ===

pub(super) fn run(args: &Args) -> ExitCode {
    epoll::block_on(async {
        let timeout = args.timeout();
        let mut streams = Vec::new();
        for _ in 0..args.conns {
            match connect(args.to, timeout).await {
                Ok(stream) => streams.push(stream),
                Err(error) => return Event::cannot_connect(args.to, error),
            }
        }
        let window = args.window();
        let tasks: Vec<_> = streams
            .into_iter()
            .map(|stream| tokio::spawn(round_trips(stream, args.round_trips(window), timeout)))
            .collect();
        let mut results = Vec::with_capacity(tasks.len());
        for task in tasks {
            results.push(
                task.await
                    .unwrap_or_else(|_| Err(io::Error::other("a client task panicked"))),
            );
        }
        args.report(results)
    })
}

/// [`super::connect`] through the event loop.
async fn connect(to: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    epoll::connect(client_socket(to)?, to, timeout).await
}

/// [`super::round_trips`], each write and read within `timeout`.
async fn round_trips(
    mut stream: TcpStream,
    mut trips: RoundTrips,
    timeout: Duration,
) -> io::Result<Vec<u64>> {
    while let Some(started) = trips.next_start() {
        within(timeout, stream.write_all(&trips.request)).await?;
        within(timeout, stream.read_exact(&mut trips.response)).await?;
        trips.done(started);
    }
    Ok(trips.samples)
}
