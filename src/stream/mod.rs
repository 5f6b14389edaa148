//! Stream negotiation pieces shared by links: TLS setup and transports, stream headers.

pub mod insecure;
pub mod record;
pub mod tls;
pub mod trust;

use std::time::Duration;

use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::xml::escape;

/// Write and flush `bytes` within `limit`: `Err` when the peer stopped reading or the
/// connection failed (the links' one way of writing a batch).
pub async fn write_within<W: AsyncWrite + Unpin>(w: &mut W, bytes: &[u8], limit: Duration) -> Result<(), ()> {
    match tokio::time::timeout(limit, async {
        w.write_all(bytes).await?;
        w.flush().await
    })
    .await
    {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
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
