//! An HTTP/2 CONNECT stream as a byte stream (`AsyncRead` + `AsyncWrite`),
//! so that hyper can speak HTTP/1.1 or HTTP/2 inside an HBONE tunnel and
//! opaque TCP can be copied through it. Flow control is honoured both ways:
//! received bytes release their window once read; writes wait for capacity.
//!
//! A stream ends as a TCP connection does: shutting down writing sends
//! `END_STREAM`, and [`H2Io::finish`] then waits for the peer's end before
//! letting the stream go, so that a response is never followed by a reset
//! the client's agent would turn into a reset of the client's connection.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use crate::hbone::h2_to_io;
use bytes::{Buf, Bytes};
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Largest chunk written into one DATA frame batch.
const WRITE_CHUNK: usize = 64 * 1024;

/// One CONNECT stream, both halves, with bytes already read but not yet
/// consumed kept in front (protocol detection peeks at them).
pub struct H2Io {
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// Bytes received and not yet handed to the reader.
    pending: Bytes,
    /// The peer ended its side.
    eof: bool,
    /// We ended our side.
    shut: bool,
}

impl H2Io {
    /// Wraps a stream's halves.
    #[must_use]
    pub fn new(send: SendStream<Bytes>, recv: RecvStream) -> Self {
        Self {
            send,
            recv,
            pending: Bytes::new(),
            eof: false,
            shut: false,
        }
    }

    /// Reads until at least `min` bytes are buffered or the peer ends its
    /// side, without consuming them; returns what is buffered.
    pub async fn peek(&mut self, min: usize) -> io::Result<&[u8]> {
        while self.pending.len() < min && !self.eof {
            match std::future::poll_fn(|cx| self.recv.poll_data(cx)).await {
                Some(Ok(data)) => {
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    if self.pending.is_empty() {
                        self.pending = data;
                    } else {
                        let mut joined = Vec::with_capacity(self.pending.len() + data.len());
                        joined.extend_from_slice(&self.pending);
                        joined.extend_from_slice(&data);
                        self.pending = Bytes::from(joined);
                    }
                }
                Some(Err(error)) => return Err(h2_to_io(error)),
                None => self.eof = true,
            }
        }
        Ok(&self.pending)
    }

    /// Lets the stream go once its exchange is over. When our side has
    /// ended (`poll_shutdown`: `END_STREAM` is queued behind what was
    /// written) and the peer's has not, the peer's further bytes are read
    /// and dropped until it ends its side too, for at most `linger`; the
    /// stream then closes without a reset. This is the lingering close of
    /// a TCP server: the HTTP/1.1 server may answer (400) before the client
    /// has sent all it meant to, and dropping the stream at once would
    /// reset it (`RST_STREAM`). The client's agent relays a TCP connection
    /// and cannot pass a reset on as anything but a failure: its next
    /// forwarded write fails, it resets the client's connection and may
    /// drop the response it has not written to the client yet. A stream
    /// whose side has not ended (an error, a refusal) is reset on drop.
    pub async fn finish(mut self, linger: Duration) {
        if !self.shut || self.eof {
            return;
        }
        self.pending = Bytes::new();
        let drained = tokio::time::timeout(linger, async {
            while let Some(Ok(data)) = self.recv.data().await {
                let _ = self.recv.flow_control().release_capacity(data.len());
            }
        })
        .await;
        if drained.is_err() {
            tracing::debug!(
                linger = ?linger,
                "the client did not end the stream after its response; resetting it"
            );
        }
    }
}

impl AsyncRead for H2Io {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        while this.pending.is_empty() && !this.eof {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    this.pending = data;
                }
                Some(Err(error)) => return Poll::Ready(Err(h2_to_io(error))),
                None => this.eof = true,
            }
        }
        let n = this.pending.len().min(buf.remaining());
        buf.put_slice(&this.pending[..n]);
        this.pending.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Io {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let this = &mut *self;
        let want = buf.len().min(WRITE_CHUNK);
        this.send.reserve_capacity(want);
        let granted = match ready!(this.send.poll_capacity(cx)) {
            Some(Ok(granted)) => granted,
            Some(Err(error)) => return Poll::Ready(Err(h2_to_io(error))),
            None => {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "the HBONE stream closed",
                )));
            }
        };
        let n = granted.min(want);
        if n == 0 {
            // Capacity was reassigned; ask again.
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        this.send
            .send_data(Bytes::copy_from_slice(&buf[..n]), false)
            .map_err(h2_to_io)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.shut {
            self.shut = true;
            self.send.send_data(Bytes::new(), true).map_err(h2_to_io)?;
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for H2Io {
    /// A stream dropped before its end is reset, so the peer does not wait
    /// (what it was sent and not yet written to the connection is
    /// discarded: it is an abnormal end).
    fn drop(&mut self) {
        if !self.shut {
            self.send.send_reset(h2::Reason::CANCEL);
        }
    }
}
