//! XMPP over WebSocket (RFC 7395) at `/xmpp-websocket`, for browsers (Converse.js, JSXC, ...).
//!
//! The client session is the ordinary one (`session::c2s`), run over one end of an in-memory
//! pipe; this module frames and unframes on the other end:
//!
//! - client to server: `<open/>` becomes a stream header (a new one after SASL success
//!   restarts the stream, as on TCP), `<close/>` the end of the stream, and every other
//!   message passes as it is: each is one complete element that declares its namespace
//!   (section 3.3.3).
//! - server to client: the server's stream is read back element by element, and each goes out
//!   as one text message with its namespaces declared (`<stream:features
//!   xmlns:stream='…'>`, `<message xmlns='jabber:client' …>`); its header becomes `<open/>`,
//!   its end `<close/>`. Whitespace keepalives are not sent (WebSocket pings are answered by
//!   the WebSocket layer).
//!
//! The link counts as secure (no STARTTLS inside it): TLS, where there is any, ends at this
//! listener's reverse proxy. Only the `xmpp` subprotocol is spoken (section 3.1).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncWriteExt, DuplexStream};

use crate::modules::{Module, Spec};
use crate::server::Server;
use crate::xml::{escape, ns, Element, Limits, StreamHeader, XmlEvent, XmlReader};

pub const NS_FRAMING: &str = "urn:ietf:params:xml:ns:xmpp-framing";

pub const MODULE: Module = Module {
    name: "websocket",
    specs: &[Spec {
        id: "RFC 7395",
        title: "XMPP Subprotocol for WebSocket",
        note: "`/xmpp-websocket` on the HTTP listeners; one element per message",
    }],
    host_features: &[],
    account_features: &[],
    iq: &[],
};
/// Bytes in flight in each direction of the pipe between the framing and the session.
const PIPE: usize = 64 * 1024;
/// Largest element the server itself writes to a client (a roster, a page of history).
const MAX_SERVER_ELEMENT: usize = 16 * 1024 * 1024;

pub async fn upgrade(
    State(server): State<Arc<Server>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let offered = headers
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == "xmpp");
    if !offered {
        return (StatusCode::BAD_REQUEST, "the WebSocket subprotocol \"xmpp\" is required (RFC 7395 section 3.1)\n").into_response();
    }
    // The session's own limit applies to what the client sends; this one only bounds a frame.
    let max = server.config.limits.max_stanza_size + 1024;
    ws.protocols(["xmpp"]).max_message_size(max).max_frame_size(max).on_upgrade(move |socket| serve(server, socket, peer))
}

async fn serve(server: Arc<Server>, socket: WebSocket, peer: SocketAddr) {
    let (ours, theirs) = tokio::io::duplex(PIPE);
    tokio::spawn(crate::session::c2s::serve_framed(server, theirs, peer));
    let (rd, wr) = tokio::io::split(ours);
    let (tx, rx) = socket.split();
    // Whichever side ends first ends the link: the pipe's ends are dropped, so the session sees
    // its stream end (or its writes fail) and cleans up as for a dropped TCP connection.
    tokio::select! {
        _ = from_client(rx, wr) => {}
        _ = to_client(rd, tx) => {}
    }
}

/// Client messages into the session's stream.
async fn from_client(mut rx: futures_util::stream::SplitStream<WebSocket>, mut wr: tokio::io::WriteHalf<DuplexStream>) {
    while let Some(Ok(msg)) = rx.next().await {
        let text = match msg {
            Message::Text(t) => unframe(t.as_str()).await,
            // Section 3.2: text only; the session's parser reports what is not XML.
            Message::Binary(b) => String::from_utf8_lossy(&b).into_owned(),
            Message::Close(_) => break,
            Message::Ping(_) | Message::Pong(_) => continue,
        };
        if wr.write_all(text.as_bytes()).await.is_err() {
            break;
        }
    }
    let _ = wr.shutdown().await;
}

/// A client message as the session reads it: `<open/>` and `<close/>` become the stream's
/// header and end; anything else is passed on.
async fn unframe(text: &str) -> String {
    let t = text.trim_start();
    if t.starts_with("<open") || t.starts_with("<close") {
        if let Some(el) = crate::xml::parse_stored(t).await.filter(|e| e.ns == NS_FRAMING) {
            if el.name == "close" {
                return "</stream:stream>".into();
            }
            if el.name == "open" {
                return client_header(el.attrs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            }
        }
    }
    text.to_string()
}

/// The session's stream out to the client, one message per element.
async fn to_client(rd: tokio::io::ReadHalf<DuplexStream>, mut tx: futures_util::stream::SplitSink<WebSocket, Message>) {
    let mut reader = XmlReader::new(rd, Limits { max_element_bytes: MAX_SERVER_ELEMENT, max_depth: 256 });
    loop {
        let (text, restart, last) = match reader.next().await {
            Ok(XmlEvent::StreamOpen(h)) => (open(&h), false, false),
            Ok(XmlEvent::Element(e)) => (frame(&e), e.is("success", ns::SASL), false),
            Ok(XmlEvent::StreamClose) => (format!("<close xmlns='{NS_FRAMING}'/>"), false, true),
            Err(_) => break,
        };
        if tx.send(Message::Text(text.into())).await.is_err() {
            return;
        }
        if last {
            break;
        }
        if restart {
            // After SASL success the session starts a new stream (RFC 6120 section 6.4.6).
            reader = reader.restart();
        }
    }
    // A normal closure (1000), the stream having ended.
    let _ = tx.send(Message::Close(Some(CloseFrame { code: 1000, reason: "".into() }))).await;
}

/// The session's stream header as `<open/>` (section 3.3.2).
fn open(h: &StreamHeader) -> String {
    let mut s = format!("<open xmlns='{NS_FRAMING}'");
    push_attrs(&mut s, h.attrs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    s.push_str("/>");
    s
}

/// The header of a client stream (`jabber:client`) with these attributes (`to`, `version`,
/// `xml:lang`...), as a link that frames streams writes it for the session.
pub(crate) fn client_header<'a>(attrs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut h = format!("<stream:stream xmlns='{}' xmlns:stream='{}'", ns::CLIENT, ns::STREAM);
    push_attrs(&mut h, attrs);
    h.push('>');
    h
}

/// ` name='value'` for each attribute, escaped.
fn push_attrs<'a>(s: &mut String, attrs: impl IntoIterator<Item = (&'a str, &'a str)>) {
    for (k, v) in attrs {
        s.push(' ');
        s.push_str(k);
        s.push_str("='");
        crate::xml::element::escape_into(s, v, true);
        s.push('\'');
    }
}

/// One element as a message of its own, its namespace declared; stream-level elements keep the
/// `stream:` prefix clients look for (section 3.3.3).
pub(crate) fn frame(e: &Element) -> String {
    if e.ns != ns::STREAM {
        return e.to_xml();
    }
    let mut s = format!("<stream:{} xmlns:stream='{}'", e.name, ns::STREAM);
    push_attrs(&mut s, e.attrs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    s.push('>');
    for c in &e.children {
        match c {
            crate::xml::Node::Element(c) => c.write_to(&mut s, ns::STREAM),
            crate::xml::Node::Text(t) => s.push_str(&escape(t)),
        }
    }
    s.push_str(&format!("</stream:{}>", e.name));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn open_and_close_become_the_stream_header_and_end() {
        let h = unframe("<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='localhost' version='1.0'/>").await;
        assert_eq!(h, "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>");
        assert_eq!(unframe("<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>").await, "</stream:stream>");
        // Not the framing namespace: passed on for the session to judge.
        assert_eq!(unframe("<open xmlns='x'/>").await, "<open xmlns='x'/>");
        let m = "<message xmlns='jabber:client' to='a@b'><body>hi</body></message>";
        assert_eq!(unframe(m).await, m);
    }

    #[test]
    fn stream_elements_keep_their_prefix() {
        let f = Element::new("features", ns::STREAM).child(Element::new("bind", ns::BIND));
        assert_eq!(
            frame(&f),
            "<stream:features xmlns:stream='http://etherx.jabber.org/streams'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></stream:features>"
        );
        let m = Element::new("message", ns::CLIENT).attr("to", "a@b");
        assert_eq!(frame(&m), "<message xmlns='jabber:client' to='a@b'/>");
    }
}
