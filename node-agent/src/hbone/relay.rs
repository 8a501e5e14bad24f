//! Copying between an application's TCP connection and an HTTP/2 CONNECT
//! stream. Each direction ends on its own: the application's EOF becomes an
//! empty DATA frame with `END_STREAM`, the stream's end becomes a TCP
//! half-close. A reset stream or a TCP error ends both directions, and the
//! TCP connection is closed rather than left hanging.

use std::{
    future::poll_fn,
    io,
    sync::atomic::{AtomicU64, Ordering},
};

use bytes::Bytes;
use h2::{RecvStream, SendStream};
use tokio::net::TcpStream;

use crate::copy::{ChunkReader, shutdown_write, write_all};

/// Bytes read from the application per DATA frame batch.
const READ_CHUNK: usize = 64 * 1024;

/// Relays until both directions are done, counting the bytes from the TCP
/// side into the stream in `from_tcp` and the others in `to_tcp`.
/// `recv` yields the stream's receiving half once it is known (the client
/// side waits for the CONNECT response meanwhile; the TCP side is already
/// being read). The TCP connection is borrowed: its owner decides whether
/// it ends with a close or a reset.
pub async fn relay(
    tcp: &TcpStream,
    send: SendStream<Bytes>,
    recv: impl Future<Output = io::Result<RecvStream>>,
    from_tcp: &AtomicU64,
    to_tcp: &AtomicU64,
) -> io::Result<()> {
    tokio::try_join!(tcp_to_stream(tcp, send, from_tcp), async {
        stream_to_tcp(recv.await?, tcp, to_tcp).await
    })
    .map(|_| ())
}

async fn tcp_to_stream(
    tcp: &TcpStream,
    mut send: SendStream<Bytes>,
    copied: &AtomicU64,
) -> io::Result<()> {
    let mut reader = ChunkReader::new(tcp, READ_CHUNK);
    loop {
        let Some(mut chunk) = reader.next_chunk().await? else {
            return send.send_data(Bytes::new(), true).map_err(h2_to_io);
        };
        let n = chunk.len();
        while !chunk.is_empty() {
            send.reserve_capacity(chunk.len());
            let granted = poll_fn(|cx| send.poll_capacity(cx))
                .await
                .ok_or_else(|| {
                    io::Error::new(io::ErrorKind::BrokenPipe, "the HBONE stream closed")
                })?
                .map_err(h2_to_io)?;
            let part = chunk.split_to(granted.min(chunk.len()));
            send.send_data(part, false).map_err(h2_to_io)?;
        }
        copied.fetch_add(n as u64, Ordering::Relaxed);
    }
}

async fn stream_to_tcp(
    mut recv: RecvStream,
    tcp: &TcpStream,
    copied: &AtomicU64,
) -> io::Result<()> {
    while let Some(data) = recv.data().await {
        let data = data.map_err(h2_to_io)?;
        write_all(tcp, &data).await?;
        let _ = recv.flow_control().release_capacity(data.len());
        copied.fetch_add(data.len() as u64, Ordering::Relaxed);
    }
    // END_STREAM: pass the half-close on.
    shutdown_write(tcp)
}

fn h2_to_io(error: h2::Error) -> io::Error {
    if error.is_io() {
        error
            .into_io()
            .unwrap_or_else(|| io::Error::other("HTTP/2 I/O error"))
    } else {
        io::Error::other(error)
    }
}
