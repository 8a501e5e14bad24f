//! Copying between an application's TCP connection and an HTTP/2 CONNECT
//! stream. Each direction ends on its own: the application's EOF becomes an
//! empty DATA frame with `END_STREAM`, the stream's end becomes a TCP
//! half-close. A reset stream or a TCP error ends both directions, and the
//! TCP connection is closed rather than left hanging.

use std::{future::poll_fn, io};

use bytes::Bytes;
use h2::{RecvStream, SendStream};
use tokio::{
    io::{AsyncWrite, AsyncWriteExt as _},
    net::{TcpStream, tcp::OwnedReadHalf},
};

use crate::copy::ChunkReader;

/// Bytes read from the application per DATA frame batch.
const READ_CHUNK: usize = 64 * 1024;

/// Relays until both directions are done; returns (bytes from the TCP side
/// into the stream, bytes from the stream to the TCP side).
/// `recv` yields the stream's receiving half once it is known (the client
/// side waits for the CONNECT response meanwhile; the TCP side is already
/// being read).
pub async fn relay(
    tcp: TcpStream,
    send: SendStream<Bytes>,
    recv: impl Future<Output = io::Result<RecvStream>>,
) -> io::Result<(u64, u64)> {
    let (read_half, write_half) = tcp.into_split();
    tokio::try_join!(tcp_to_stream(read_half, send), async {
        stream_to_tcp(recv.await?, write_half).await
    })
}

async fn tcp_to_stream(tcp: OwnedReadHalf, mut send: SendStream<Bytes>) -> io::Result<u64> {
    let mut total = 0u64;
    let mut reader = ChunkReader::new(tcp, READ_CHUNK);
    loop {
        let Some(mut chunk) = reader.next_chunk().await? else {
            send.send_data(Bytes::new(), true).map_err(h2_to_io)?;
            return Ok(total);
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
        total += n as u64;
    }
}

async fn stream_to_tcp(mut recv: RecvStream, mut tcp: impl AsyncWrite + Unpin) -> io::Result<u64> {
    let mut total = 0u64;
    while let Some(data) = recv.data().await {
        let data = data.map_err(h2_to_io)?;
        tcp.write_all(&data).await?;
        let _ = recv.flow_control().release_capacity(data.len());
        total += data.len() as u64;
    }
    // END_STREAM: pass the half-close on.
    tcp.shutdown().await?;
    Ok(total)
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
