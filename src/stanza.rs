//! The typed stanza envelope: kind, parsed `from` / `to`, and the raw element. Payloads stay raw
//! until the one module that cares parses them.

use crate::error::{Condition, StanzaError};
use crate::jid::{self, Jid};
use crate::xml::{ns, Element};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Message,
    Presence,
    Iq,
}

#[derive(Debug, Clone)]
pub struct Stanza {
    pub kind: Kind,
    pub from: Option<Jid>,
    pub to: Option<Jid>,
    pub el: Element,
}

impl Stanza {
    /// Is this top-level element a stanza of the client or server namespace?
    pub fn kind_of(el: &Element) -> Option<Kind> {
        if el.ns != ns::CLIENT && el.ns != ns::SERVER {
            return None;
        }
        match el.name.as_str() {
            "message" => Some(Kind::Message),
            "presence" => Some(Kind::Presence),
            "iq" => Some(Kind::Iq),
            _ => None,
        }
    }

    /// [`Stanza::parse`] for a link reading from its peer: the error is the serialized
    /// answer to send back (empty where none is due, as for an error stanza).
    pub fn parse_or_answer(el: Element) -> Result<Stanza, String> {
        Self::parse(el).map_err(|bad| {
            let (el, e) = *bad;
            e.reply_to(&el).map(|r| r.to_xml_in(ns::CLIENT)).unwrap_or_default()
        })
    }

    /// Parse the envelope. Addresses that are not JIDs give `jid-malformed`; an iq without an
    /// id or with a wrong type, or with a payload count other than one for get/set, gives
    /// `bad-request` (RFC 6120 section 8.2.3).
    pub fn parse(mut el: Element) -> Result<Stanza, Box<(Element, StanzaError)>> {
        let kind = match Self::kind_of(&el) {
            Some(k) => k,
            None => return Err(Box::new((el, Condition::BadRequest.into()))),
        };
        // Everything inside the server uses the client namespace; links translate at the edge.
        el.ns = ns::CLIENT.to_string();
        let addr = |name: &str| -> Result<Option<Jid>, Condition> {
            match el.get_attr(name) {
                None => Ok(None),
                Some(v) => jid::parse(v).map(Some).ok_or(Condition::JidMalformed),
            }
        };
        let from = match addr("from") {
            Ok(f) => f,
            Err(e) => return Err(Box::new((el, e.into()))),
        };
        let to = match addr("to") {
            Ok(t) => t,
            Err(e) => return Err(Box::new((el, e.into()))),
        };
        if kind == Kind::Iq {
            let t = el.get_attr("type").unwrap_or("");
            let payloads = el.elements().filter(|c| c.name != "error").count();
            let ok = el.get_attr("id").is_some()
                && match t {
                    "get" | "set" => payloads == 1,
                    "result" => payloads <= 1,
                    "error" => true,
                    _ => false,
                };
            if !ok {
                return Err(Box::new((el, Condition::BadRequest.into())));
            }
        }
        // Normalise addresses as written on the wire.
        if let Some(t) = &to {
            el.set_attr("to", t.to_string());
        }
        Ok(Stanza { kind, from, to, el })
    }

    pub fn typ(&self) -> Option<&str> {
        self.el.get_attr("type")
    }

    pub fn id(&self) -> Option<&str> {
        self.el.get_attr("id")
    }

    pub fn set_from(&mut self, from: Jid) {
        self.el.set_attr("from", from.to_string());
        self.from = Some(from);
    }

    pub fn set_to(&mut self, to: Jid) {
        self.el.set_attr("to", to.to_string());
        self.to = Some(to);
    }

    /// The single payload child of an iq get/set.
    pub fn payload(&self) -> Option<&Element> {
        self.el.elements().find(|c| c.name != "error")
    }

    pub fn is_error(&self) -> bool {
        self.typ() == Some("error")
    }

    /// Reply helper for iq: a result with `payload`.
    pub fn iq_result(&self, payload: Option<Element>) -> Element {
        let mut r = Element::new("iq", ns::CLIENT).attr("type", "result");
        if let Some(id) = self.id() {
            r.set_attr("id", id);
        }
        if let Some(f) = self.el.get_attr("from") {
            r.set_attr("to", f);
        }
        if let Some(t) = self.el.get_attr("to") {
            r.set_attr("from", t);
        }
        if let Some(p) = payload {
            r = r.child(p);
        }
        r
    }

    pub fn error_reply(&self, err: &StanzaError) -> Option<Element> {
        err.reply_to(&self.el)
    }
}

/// A fresh random id for a stream or a stanza the server makes (16 alphanumerics).
pub fn new_id() -> String {
    use rand::Rng;
    rand::thread_rng().sample_iter(&rand::distributions::Alphanumeric).take(16).map(char::from).collect()
}

/// Build a new stanza element.
pub fn presence(from: &Jid, to: &Jid, typ: Option<&str>) -> Element {
    Element::new("presence", ns::CLIENT).attr("from", from.to_string()).attr("to", to.to_string()).attr_opt("type", typ)
}

/// Presence types that manage subscriptions (RFC 6121 section 3).
pub fn is_subscription_type(t: &str) -> bool {
    matches!(t, "subscribe" | "subscribed" | "unsubscribe" | "unsubscribed")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let el = Element::new("iq", ns::CLIENT).attr("id", "1").attr("type", "get").child(Element::new("ping", ns::PING));
        let s = Stanza::parse(el).unwrap();
        assert_eq!(s.kind, Kind::Iq);
        let el = Element::new("iq", ns::CLIENT).attr("id", "1").attr("type", "get");
        assert_eq!(Stanza::parse(el).unwrap_err().1.condition, Condition::BadRequest);
        let el = Element::new("message", ns::CLIENT).attr("to", "a@b@c");
        assert_eq!(Stanza::parse(el).unwrap_err().1.condition, Condition::JidMalformed);
    }
}
