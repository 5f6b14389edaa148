//! Stream negotiation pieces shared by links: TLS setup and transports, stream headers.

pub mod insecure;
pub mod record;
pub mod tls;
pub mod trust;

use std::future::Future;
use std::task::Poll;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::error::StreamError;
use crate::xml::{escape, StreamHeader, XmlError, XmlEvent, XmlReader};

/// A link's XML reader, boxed: it moves between negotiation, the session and its pending read.
pub type Reader = Box<XmlReader<tokio::io::ReadHalf<tls::Transport>>>;

/// Parse the next event off a connection. The future owns the reader and gives it back, so a
/// link's loop can keep one pending read across its turns (a read is never cancelled half-way)
/// without a second task or a channel per connection.
pub async fn read_next(mut reader: Reader) -> (Reader, Result<XmlEvent, XmlError>) {
    let ev = reader.next().await;
    (reader, ev)
}

/// The peer's stream header, as the receiving side of a link reads it: anything else is
/// `not-well-formed`, bad XML its stream error, and `Err(None)` means the peer went away.
pub async fn read_header<R: AsyncRead + Unpin>(reader: &mut XmlReader<R>) -> Result<StreamHeader, Option<StreamError>> {
    match reader.next().await {
        Ok(XmlEvent::StreamOpen(h)) => Ok(h),
        Ok(_) => Err(Some(StreamError::NotWellFormed)),
        Err(XmlError::Eof | XmlError::Io(_)) => Err(None),
        Err(e) => Err(Some(StreamError::from(&e))),
    }
}

/// Write and flush `bytes` within `limit`: `Err` when the peer stopped reading or the
/// connection failed (the links' one way of writing a batch). Most writes complete at once (the
/// socket's buffer has room), so the timer is armed only for one that has to wait: a timer
/// registered and removed around every batch cost a lock and a timer-wheel update each time,
/// once per delivery in a room's fan-out.
pub async fn write_within<W: AsyncWrite + Unpin>(w: &mut W, bytes: &[u8], limit: Duration) -> std::io::Result<()> {
    let mut write = std::pin::pin!(async {
        w.write_all(bytes).await?;
        w.flush().await
    });
    if let Poll::Ready(r) = std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await {
        return r;
    }
    tokio::time::timeout(limit, write).await.unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

/// The server's stream header for a client stream.
pub fn header(stream_ns: &str, id: &str, from: &str, to: Option<&str>) -> String {
    let mut s = format!(
        "<?xml version='1.0'?><stream:stream xmlns='{stream_ns}' xmlns:stream='http://etherx.jabber.org/streams' id='{}' from='{}'",
        escape(id),
        escape(from)
    );
    if let Some(t) = to {
        s.push_str(&format!(" to='{}'", escape(t)));
    }
    s.push_str(" version='1.0' xml:lang='en'>");
    s
}
