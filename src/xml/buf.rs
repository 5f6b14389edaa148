//! A buffered reader that holds no buffer while it waits.
//!
//! `tokio::io::BufReader` keeps its whole buffer for the life of the connection: 4 KiB per
//! idle client, most of what an idle session would otherwise cost. `IdleBuf` reads into a
//! buffer on the poll's stack and keeps only the bytes actually received, on the heap, until
//! they are consumed; when the socket has nothing to give, it frees what it kept.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncBufRead, AsyncRead, ReadBuf};

/// Largest single read.
const READ_SIZE: usize = 4096;

pub struct IdleBuf<R> {
    inner: R,
    buf: Vec<u8>,
    pos: usize,
}

impl<R> IdleBuf<R> {
    pub fn new(inner: R) -> Self {
        IdleBuf { inner, buf: Vec::new(), pos: 0 }
    }

    /// Bytes received and not consumed yet.
    pub fn buffer(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// The inner reader; bytes still buffered are dropped.
    pub fn into_inner(self) -> R {
        self.inner
    }

    /// Heap bytes held (for tests).
    #[cfg(test)]
    fn held(&self) -> usize {
        self.buf.capacity()
    }
}

impl<R: AsyncRead + Unpin> AsyncBufRead for IdleBuf<R> {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        let this = self.get_mut();
        if this.pos >= this.buf.len() {
            // Not zeroed: only what the read fills is ever looked at (zeroing 4 KiB per read
            // cost more than the bytes of a typical stanza).
            let mut stack = [std::mem::MaybeUninit::<u8>::uninit(); READ_SIZE];
            let mut rb = ReadBuf::uninit(&mut stack);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Pending => {
                    // Nothing buffered and nothing to read: hold no memory while waiting.
                    this.buf = Vec::new();
                    this.pos = 0;
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {
                    this.buf.clear();
                    this.buf.extend_from_slice(rb.filled());
                    this.pos = 0;
                }
            }
        }
        Poll::Ready(Ok(&this.buf[this.pos..]))
    }

    fn consume(self: Pin<&mut Self>, amt: usize) {
        let this = self.get_mut();
        this.pos = (this.pos + amt).min(this.buf.len());
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for IdleBuf<R> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.pos >= self.buf.len() && out.remaining() >= READ_SIZE {
            // Large reads bypass the buffer.
            return Pin::new(&mut self.get_mut().inner).poll_read(cx, out);
        }
        let available = ready!(self.as_mut().poll_fill_buf(cx))?;
        let n = available.len().min(out.remaining());
        out.put_slice(&available[..n]);
        self.consume(n);
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn holds_nothing_while_waiting() {
        let (mut tx, rx) = tokio::io::duplex(64 * 1024);
        let mut r = IdleBuf::new(rx);
        tx.write_all(b"<a/><b/>").await.unwrap();
        assert_eq!(r.fill_buf().await.unwrap(), b"<a/><b/>");
        assert_eq!(r.held(), 8, "only the bytes received are kept");
        r.consume(4);
        assert_eq!(r.buffer(), b"<b/>");
        r.consume(4);
        // Nothing left and nothing to read: the poll is pending and the buffer is freed.
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(Pin::new(&mut r).poll_fill_buf(&mut cx).is_pending());
        assert_eq!(r.held(), 0);
        // Reads larger than one buffer arrive whole, in order.
        let big: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        tx.write_all(&big).await.unwrap();
        drop(tx);
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, big);
    }
}
