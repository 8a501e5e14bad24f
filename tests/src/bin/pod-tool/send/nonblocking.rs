//! `pod-tool send --epoll`: the echo client on an event loop, for the kernel
//! splice's contract (see [`crate::epoll`]). The sending and the receiving half
//! run concurrently on one thread, as two futures joined in one task.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};

use super::{Args, Echo, Pattern, Sent};
use crate::epoll::{self, within};
use crate::event::Event;

pub(super) fn run(args: &Args) -> ExitCode {
    epoll::block_on(async {
        let timeout = args.timeout();
        let started = Instant::now();
        let connected = match args.socket() {
            Ok(socket) => epoll::connect(socket, args.to, timeout).await,
            Err(error) => Err(error),
        };
        let mut stream = match connected {
            Ok(stream) => stream,
            Err(error) => return Event::cannot_connect(args.to, error),
        };
        let local = stream.local_addr();
        let peer = stream.peer_addr();
        let (reader, writer) = stream.split();
        let (sent, echo) = tokio::join!(
            send_pattern(writer, args.bytes, timeout),
            receive_pattern(reader, timeout),
        );
        args.report(started, local, peer, sent, echo)
    })
}

/// [`super::send_pattern`], each write within `timeout`.
async fn send_pattern(mut writer: WriteHalf<'_>, total: u64, timeout: Duration) -> Sent {
    let mut pattern = Pattern::new(total);
    while let Some(chunk) = pattern.next_chunk() {
        if let Err(error) = within(timeout, writer.write_all(chunk)).await {
            return pattern.write_failed(&error);
        }
        pattern.written();
    }
    pattern.half_closed(writer.shutdown().await)
}

/// [`super::receive_pattern`], each read within `timeout`; `EAGAIN` never
/// reaches it, the event loop waits for the next readiness instead.
async fn receive_pattern(mut reader: ReadHalf<'_>, timeout: Duration) -> Echo {
    let mut echo = Echo::new();
    loop {
        match within(timeout, reader.read(&mut echo.buf)).await {
            Ok(0) => return echo,
            Ok(n) => echo.check(n),
            Err(error) => return echo.read_failed(&error),
        }
    }
}
