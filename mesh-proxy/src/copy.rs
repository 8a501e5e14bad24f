//! Reading from a socket without holding a buffer while it is idle.
//!
//! A proxy holds two sockets per connection and most connections are idle
//! most of the time; a buffer parked in every pending read costs its full
//! size per connection (512 KiB with tokio's bidirectional copy at 256 KiB
//! per direction). [`ChunkReader`] waits for readability with no buffer,
//! takes one while data flows, and lets it go as soon as the socket runs dry.

use std::{
    io,
    net::Shutdown,
    os::fd::AsFd as _,
    sync::atomic::{AtomicU64, Ordering},
};

use bytes::{Bytes, BytesMut};
use tokio::{io::Interest, net::TcpStream};

use crate::sys;

/// Reads a socket in chunks of up to `chunk` bytes.
///
/// It borrows the socket, so the connection's owner keeps it: when a relay
/// is abandoned (a policy revoked the connection), the owner can still
/// reset the socket rather than close it quietly.
pub struct ChunkReader<'a> {
    from: &'a TcpStream,
    buf: BytesMut,
    chunk: usize,
}

// === impl ChunkReader ===

impl<'a> ChunkReader<'a> {
    /// A reader over `from` that reads up to `chunk` bytes at a time.
    #[must_use]
    pub fn new(from: &'a TcpStream, chunk: usize) -> Self {
        Self {
            from,
            buf: BytesMut::new(),
            chunk,
        }
    }

    /// The next bytes available, or `None` at end of stream.
    ///
    /// A read that fills less than the buffer drained the socket: it clears
    /// the socket's readiness in the same step, as tokio's own `poll_read`
    /// does, so the next call waits for the next readiness event instead of
    /// making a `recv` that can only fail with `EAGAIN` (one system call less
    /// per message on the request/response path).
    pub async fn next_chunk(&mut self) -> io::Result<Option<Bytes>> {
        loop {
            if self.buf.capacity() == 0 {
                self.from.readable().await?;
            }
            if self.buf.capacity() - self.buf.len() < self.chunk / 4 {
                self.buf.reserve(self.chunk);
            }
            let (buf, from) = (&mut self.buf, self.from);
            let mut drained = false;
            let outcome = from.try_io(Interest::READABLE, || {
                let room = buf.capacity() - buf.len();
                let n = sys::recv_into_spare(from.as_fd(), buf)?;
                if n > 0 && n < room {
                    // Drained: returning WouldBlock makes tokio clear the
                    // readiness it saw before this read.
                    drained = true;
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Ok(n)
            });
            match outcome {
                Ok(0) => return Ok(None),
                Ok(_) => return Ok(Some(self.buf.split().freeze())),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let chunk = drained.then(|| self.buf.split().freeze());
                    // Give the buffer back until there is more to read.
                    self.buf = BytesMut::new();
                    if chunk.is_some() {
                        return Ok(chunk);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Writes all of `bytes` to `to`.
pub async fn write_all(to: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        to.writable().await?;
        match to.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Half-closes `to`: the peer reads end of stream, and can still send.
pub fn shutdown_write(to: &TcpStream) -> io::Result<()> {
    match socket2::SockRef::from(to).shutdown(Shutdown::Write) {
        // The peer is already gone; nothing is left to tell it.
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
        other => other,
    }
}

/// Copies `from` to `to` until end of stream, then half-closes `to`;
/// adds each write's bytes to `copied` as it completes.
pub async fn pump(
    from: &TcpStream,
    to: &TcpStream,
    chunk: usize,
    copied: &AtomicU64,
) -> io::Result<()> {
    let mut reader = ChunkReader::new(from, chunk);
    while let Some(bytes) = reader.next_chunk().await? {
        write_all(to, &bytes).await?;
        copied.fetch_add(bytes.len() as u64, Ordering::Relaxed);
    }
    shutdown_write(to)
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
        let copied = std::sync::Arc::new(AtomicU64::new(0));
        let counter = copied.clone();
        let pumping =
            tokio::spawn(async move { pump(&proxy_in, &proxy_out, 64 * 1024, &counter).await });
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        app.write_all(&data).await.unwrap();
        app.shutdown().await.unwrap();
        let mut received = Vec::new();
        upstream.read_to_end(&mut received).await.unwrap();
        assert_eq!(received, data);
        pumping.await.unwrap().unwrap();
        assert_eq!(copied.load(Ordering::Relaxed), 3_000_000);
    }

    #[tokio::test]
    async fn an_idle_reader_holds_no_buffer() {
        let (mut app, proxy_in) = pair().await;
        let mut reader = ChunkReader::new(&proxy_in, 256 * 1024);
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
        let copied = AtomicU64::new(0);
        let future = pump(&proxy_in, &proxy_out, 256 * 1024, &copied);
        assert!(
            std::mem::size_of_val(&future) <= 512,
            "pump future is {} bytes",
            std::mem::size_of_val(&future)
        );
    }
}
