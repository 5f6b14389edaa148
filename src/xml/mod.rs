//! Bytes <-> elements, no socket IO: the incremental reader with its limits, the element tree
//! and its writer.

pub mod buf;
pub mod element;
pub mod reader;

pub use element::{escape, Element, Node};
pub use reader::{Limits, StreamHeader, XmlError, XmlEvent, XmlReader};

/// Parse one element this server serialized and stored itself (archive, offline, vCard...).
/// The reader over a byte slice never waits.
pub async fn parse_stored(xml: &str) -> Option<Element> {
    let doc = format!("<s xmlns='jabber:client'>{xml}</s>");
    let mut r = XmlReader::new(doc.as_bytes(), Limits { max_element_bytes: doc.len() + 1, max_depth: 256 });
    match r.next().await {
        Ok(XmlEvent::StreamOpen(_)) => {}
        _ => return None,
    }
    match r.next().await {
        Ok(XmlEvent::Element(e)) => Some(e),
        _ => None,
    }
}

pub mod ns {
    pub const CLIENT: &str = "jabber:client";
    pub const SERVER: &str = "jabber:server";
    pub const STREAM: &str = "http://etherx.jabber.org/streams";
    pub const STREAM_ERRORS: &str = "urn:ietf:params:xml:ns:xmpp-streams";
    pub const STANZA_ERRORS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
    pub const TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
    pub const SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
    pub const BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";
    pub const SESSION: &str = "urn:ietf:params:xml:ns:xmpp-session";
    pub const ROSTER: &str = "jabber:iq:roster";
    pub const ROSTER_VER: &str = "urn:xmpp:features:rosterver";
    pub const PREAPPROVAL: &str = "urn:xmpp:features:pre-approval";
    pub const SASL_CB: &str = "urn:xmpp:sasl-cb:0";
    pub const DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
    pub const DISCO_ITEMS: &str = "http://jabber.org/protocol/disco#items";
    pub const PING: &str = "urn:xmpp:ping";
    pub const VERSION: &str = "jabber:iq:version";
    pub const TIME: &str = "urn:xmpp:time";
    pub const VCARD: &str = "vcard-temp";
    pub const PRIVATE: &str = "jabber:iq:private";
    pub const BLOCKING: &str = "urn:xmpp:blocking";
    pub const BLOCKING_ERRORS: &str = "urn:xmpp:blocking:errors";
    pub const LAST: &str = "jabber:iq:last";
    pub const DELAY: &str = "urn:xmpp:delay";
    pub const DATA: &str = "jabber:x:data";
    pub const CAPS: &str = "http://jabber.org/protocol/caps";
}
