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

use crate::hbone::h2_to_io;
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;

    use tokio::net::{TcpListener, TcpStream};

    use super::relay;

    #[tokio::test]
    async fn the_per_connection_relay_future_stays_small() {
        // A regression guard like `copy`'s: one relay future lives for every
        // open HBONE connection, so its size is paid per connection.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (app, _) = tokio::join!(
            TcpStream::connect(listener.local_addr().unwrap()),
            listener.accept()
        );
        let app = app.unwrap();
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(async move {
            let mut connection = h2::server::handshake(server_io).await.unwrap();
            let _ = connection.accept().await;
        });
        let (mut client, connection) = h2::client::handshake(client_io).await.unwrap();
        tokio::spawn(connection);
        let request = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri("10.0.0.1:80")
            .body(())
            .unwrap();
        let (response, send) = client.send_request(request, false).unwrap();
        let (from_tcp, to_tcp) = (AtomicU64::new(0), AtomicU64::new(0));
        let recv = async move {
            Ok::<_, std::io::Error>(response.await.map_err(std::io::Error::other)?.into_body())
        };
        let future = relay(&app, send, recv, &from_tcp, &to_tcp);
        let size = std::mem::size_of_val(&future);
        assert!(size <= 1024, "the HBONE relay future is {size} bytes");
        drop(future);
        server.abort();
    }
}
