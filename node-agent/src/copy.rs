//! Reading from a socket without holding a buffer while it is idle.
//!
//! A proxy holds two sockets per connection and most connections are idle
//! most of the time; a buffer parked in every pending read costs its full
//! size per connection (512 KiB with tokio's bidirectional copy at 256 KiB
//! per direction). [`ChunkReader`] waits for readability with no buffer,
//! takes one while data flows, and lets it go as soon as the socket runs dry.

use std::io;

use bytes::{Bytes, BytesMut};
use tokio::{
    io::AsyncWriteExt as _,
    net::tcp::{OwnedReadHalf, OwnedWriteHalf},
};

/// Reads a socket in chunks of up to `chunk` bytes.
pub struct ChunkReader {
    from: OwnedReadHalf,
    buf: BytesMut,
    chunk: usize,
}

// === impl ChunkReader ===

impl ChunkReader {
    /// A reader over `from` that reads up to `chunk` bytes at a time.
    #[must_use]
    pub fn new(from: OwnedReadHalf, chunk: usize) -> Self {
        Self {
            from,
            buf: BytesMut::new(),
            chunk,
        }
    }

    /// The next bytes available, or `None` at end of stream.
    pub async fn next_chunk(&mut self) -> io::Result<Option<Bytes>> {
        loop {
            if self.buf.capacity() == 0 {
                self.from.readable().await?;
            }
            if self.buf.capacity() < self.chunk / 4 {
                self.buf.reserve(self.chunk);
            }
            match self.from.try_read_buf(&mut self.buf) {
                Ok(0) => return Ok(None),
                Ok(_) => return Ok(Some(self.buf.split().freeze())),
                // Drained: give the buffer back until there is more to read.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.buf = BytesMut::new(),
                Err(e) => return Err(e),
            }
        }
    }
}

/// Copies `from` to `to` until end of stream, then half-closes `to`;
/// returns the bytes copied.
pub async fn pump(from: OwnedReadHalf, mut to: OwnedWriteHalf, chunk: usize) -> io::Result<u64> {
    let mut reader = ChunkReader::new(from, chunk);
    let mut total = 0u64;
    while let Some(bytes) = reader.next_chunk().await? {
        to.write_all(&bytes).await?;
        total += bytes.len() as u64;
    }
    to.shutdown().await?;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::{TcpListener, TcpStream},
    };

    use super::*;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (client.unwrap(), accepted.unwrap().0)
    }

    #[tokio::test]
    async fn pump_copies_everything_and_passes_the_half_close_on() {
        let (mut app, proxy_in) = pair().await;
        let (proxy_out, mut upstream) = pair().await;
        let (from, _) = proxy_in.into_split();
        let (_, to) = proxy_out.into_split();
        let pumping = tokio::spawn(pump(from, to, 64 * 1024));
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        app.write_all(&data).await.unwrap();
        app.shutdown().await.unwrap();
        let mut received = Vec::new();
        upstream.read_to_end(&mut received).await.unwrap();
        assert_eq!(received, data);
        assert_eq!(pumping.await.unwrap().unwrap(), 3_000_000);
    }

    #[tokio::test]
    async fn an_idle_reader_holds_no_buffer() {
        let (mut app, proxy_in) = pair().await;
        let (from, _) = proxy_in.into_split();
        let mut reader = ChunkReader::new(from, 256 * 1024);
        app.write_all(b"hello").await.unwrap();
        assert_eq!(
            reader.next_chunk().await.unwrap().as_deref(),
            Some(&b"hello"[..])
        );
        // Nothing more to read: the next read drains, releases the buffer
        // and waits.
        let waiting =
            tokio::time::timeout(std::time::Duration::from_millis(50), reader.next_chunk()).await;
        assert!(waiting.is_err(), "no data: the read must wait");
        assert_eq!(
            reader.buf.capacity(),
            0,
            "an idle reader must not hold a buffer"
        );
    }

    #[tokio::test]
    async fn per_connection_futures_stay_small() {
        // A regression guard: at 100k connections, every KiB here is 100 MB.
        let (_app, proxy_in) = pair().await;
        let (proxy_out, _upstream) = pair().await;
        let (from, _) = proxy_in.into_split();
        let (_, to) = proxy_out.into_split();
        let future = pump(from, to, 256 * 1024);
        assert!(
            std::mem::size_of_val(&future) <= 512,
            "pump future is {} bytes",
            std::mem::size_of_val(&future)
        );
    }
}
