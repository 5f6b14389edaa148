//! Message Carbons (XEP-0280, `urn:xmpp:carbons:2`): every carbons-enabled resource sees the
//! account's one-to-one conversations, sent and received, whichever resource took part.

use super::{IqFuture, IqHandler, IqRequest, Module, Spec};
use crate::error::Condition;
use crate::jid::{BareJid, FullJid};
use crate::server::Server;
use crate::session::{Deliver, Outgoing};
use crate::xml::{ns, Element};

pub const NS_CARBONS: &str = "urn:xmpp:carbons:2";

pub const MODULE: Module = Module {
    name: "carbons",
    specs: &[Spec { id: "XEP-0280", title: "Message Carbons", note: "v2; private and no-copy honoured" }],
    host_features: &[NS_CARBONS],
    account_features: &[],
    iq: &[IqHandler { ns: NS_CARBONS, on_host: false, on_account: true, handle }],
};

fn handle<'a>(server: &'a Server, req: IqRequest<'a>) -> IqFuture<'a> {
    Box::pin(async move {
        req.require_own()?;
        let on = match (req.is_set(), req.payload.name.as_str()) {
            (true, "enable") => true,
            (true, "disable") => false,
            _ => return Err(Condition::BadRequest.into()),
        };
        let full = req.from.clone().try_into_full().map_err(|_| Condition::BadRequest)?;
        let s = server.sessions.get(&full).ok_or(Condition::ItemNotFound)?;
        server.sessions.update(&full, s.id, |e| e.carbons = on);
        Ok(None)
    })
}

/// XEP-0280 section 6.
pub fn eligible(el: &Element) -> bool {
    if el.find("private", NS_CARBONS).is_some() || super::mam::has_hint(el, "no-copy") {
        return false;
    }
    // Already a carbon (or a MAM result): never copied again.
    if el.elements().any(|c| c.ns == NS_CARBONS || c.ns == super::mam::NS_MAM) {
        return false;
    }
    match el.get_attr("type").unwrap_or("normal") {
        "chat" => true,
        "normal" => {
            el.find("body", ns::CLIENT).is_some()
                || el.elements().any(|c| {
                    c.ns == super::mam::NS_RECEIPTS || c.ns == super::mam::NS_MARKERS || c.ns == "http://jabber.org/protocol/chatstates"
                })
                || el.find("x", "jabber:x:conference").is_some()
        }
        _ => false,
    }
}

fn wrap(kind: &str, owner: &BareJid, to: &FullJid, el: &Element) -> Element {
    Element::new("message", ns::CLIENT)
        .attr("from", owner.to_string())
        .attr("to", to.to_string())
        .attr_opt("type", el.get_attr("type"))
        .child(Element::new(kind, NS_CARBONS).child(Element::new("forwarded", super::mam::NS_FORWARD).child(el.clone())))
}

/// A local resource sent `el`: copy it to the account's other carbons-enabled resources.
pub fn sent(server: &Server, owner: &BareJid, from_session: Option<&FullJid>, el: &Element) {
    if !eligible(el) {
        return;
    }
    for s in server.sessions.sessions(owner, |s| s.carbons && Some(&s.jid) != from_session) {
        server.sessions.send(&s, Deliver::Stanza(Outgoing::new(wrap("sent", owner, &s.jid, el))));
    }
}

/// `el` was delivered to `delivered_to`: copy it to the other carbons-enabled resources.
pub fn received(server: &Server, owner: &BareJid, el: &Element, delivered_to: &[FullJid]) {
    if !eligible(el) {
        return;
    }
    for s in server.sessions.sessions(owner, |s| s.carbons && !delivered_to.contains(&s.jid)) {
        server.sessions.send(&s, Deliver::Stanza(Outgoing::new(wrap("received", owner, &s.jid, el))));
    }
}
