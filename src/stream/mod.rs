//! Stream negotiation pieces shared by links: TLS setup and transports, stream headers.

pub mod insecure;
pub mod record;
pub mod tls;

use crate::xml::escape;

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
