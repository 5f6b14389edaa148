//! Client State Indication (XEP-0352, `urn:xmpp:csi:0`). While a client says it is inactive,
//! presence updates are held and collapsed (the newest per sender wins) and chat states and
//! other content-free messages wait with them; what matters to the user (messages with a body,
//! subscription requests, iq, archive results) goes out at once, after whatever was held, so
//! order is kept.

use std::sync::Arc;

use super::registry::Outgoing;
use crate::xml::{ns, Element};

pub const NS_CSI: &str = "urn:xmpp:csi:0";

/// Held stanzas beyond this are flushed: an inactive client still gets them eventually.
const MAX_HELD: usize = 500;

#[derive(Debug, Default)]
pub struct Csi {
    pub inactive: bool,
    held: Vec<Arc<Outgoing>>,
}

/// Must this reach an inactive client now?
fn urgent(el: &Element) -> bool {
    match el.name.as_str() {
        "iq" => true,
        "presence" => el.get_attr("type").is_some_and(|t| crate::stanza::is_subscription_type(t) || t == "error"),
        "message" => {
            if el.get_attr("type") == Some("error") || el.find("body", ns::CLIENT).is_some() {
                return true;
            }
            // Carbons and archive results: look inside.
            el.elements().any(|c| {
                c.ns == crate::modules::mam::NS_MAM
                    || (c.ns == crate::modules::carbons::NS_CARBONS
                        && c.find("forwarded", crate::modules::mam::NS_FORWARD)
                            .and_then(|f| f.find("message", ns::CLIENT))
                            .is_some_and(urgent))
            })
        }
        _ => true,
    }
}

impl Csi {
    /// What to send now for this outgoing stanza (possibly nothing, possibly the held backlog).
    pub fn filter(&mut self, o: Arc<Outgoing>) -> Vec<Arc<Outgoing>> {
        if !self.inactive {
            return vec![o];
        }
        if urgent(&o.el) || self.held.len() >= MAX_HELD {
            let mut out = std::mem::take(&mut self.held);
            out.push(o);
            return out;
        }
        if o.el.name == "presence" {
            let from = o.el.get_attr("from");
            self.held.retain(|h| !(h.el.name == "presence" && h.el.get_attr("from") == from));
        }
        self.held.push(o);
        Vec::new()
    }

    pub fn set_active(&mut self, active: bool) -> Vec<Arc<Outgoing>> {
        self.inactive = !active;
        if active {
            std::mem::take(&mut self.held)
        } else {
            Vec::new()
        }
    }

    /// Everything still held (the session is ending or moving).
    pub fn take(&mut self) -> Vec<Arc<Outgoing>> {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn presence(from: &str, show: &str) -> Arc<Outgoing> {
        Outgoing::new(Element::new("presence", ns::CLIENT).attr("from", from).child(Element::new("show", ns::CLIENT).text(show)))
    }

    fn names(v: &[Arc<Outgoing>]) -> Vec<String> {
        v.iter()
            .map(|o| {
                o.el.find("show", ns::CLIENT)
                    .map(|s| s.text_content())
                    .or_else(|| o.el.find("body", ns::CLIENT).map(|b| b.text_content()))
                    .unwrap_or_else(|| o.el.name.clone())
            })
            .collect()
    }

    #[test]
    fn holds_collapses_and_flushes_in_order() {
        let mut c = Csi::default();
        assert_eq!(c.filter(presence("a@x/1", "away")).len(), 1, "active: straight through");
        assert!(c.set_active(false).is_empty());
        assert!(c.filter(presence("a@x/1", "away")).is_empty());
        assert!(c.filter(presence("b@x/1", "dnd")).is_empty());
        assert!(c.filter(presence("a@x/1", "xa")).is_empty());
        let state =
            Outgoing::new(Element::new("message", ns::CLIENT).child(Element::new("composing", "http://jabber.org/protocol/chatstates")));
        assert!(c.filter(state).is_empty());
        let msg = Outgoing::new(Element::new("message", ns::CLIENT).child(Element::new("body", ns::CLIENT).text("hi")));
        let out = c.filter(msg);
        assert_eq!(names(&out), vec!["dnd", "xa", "message", "hi"]);
        assert!(c.filter(presence("c@x/1", "chat")).is_empty());
        assert_eq!(names(&c.set_active(true)), vec!["chat"]);
    }

    #[test]
    fn iq_and_subscriptions_are_urgent() {
        let mut c = Csi::default();
        c.set_active(false);
        assert_eq!(c.filter(Outgoing::new(Element::new("iq", ns::CLIENT).attr("type", "get"))).len(), 1);
        assert_eq!(c.filter(Outgoing::new(Element::new("presence", ns::CLIENT).attr("type", "subscribe"))).len(), 1);
    }
}
