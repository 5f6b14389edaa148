//! Offline messages (XEP-0160): a chat or normal message for an account with no available
//! resource is kept, with a delay stamp and its archive stanza-id, and delivered when a resource
//! next sends initial presence.

use super::{Module, Spec};
use crate::error::{Condition, StanzaError};
use crate::jid::{BareJid, FullJid};
use crate::server::Server;
use crate::session::{Deliver, Outgoing};
use crate::xml::{ns, Element};

pub const MODULE: Module = Module {
    name: "offline",
    specs: &[Spec { id: "XEP-0160", title: "Best Practices for Handling Offline Messages", note: "per-account quota" }],
    host_features: &["msgoffline"],
    account_features: &[],
    iq: &[],
};

/// Should this message wait for the account (XEP-0160 section 3, XEP-0334)? Chat and normal
/// messages with content worth keeping; chat states alone and no-store ones are not kept.
/// One lock per account (striped), held by whoever decides between the offline store and a
/// live resource: the router while it stores a message for an account with no available
/// resource, and an initial presence while it hands the stored messages to its session and
/// then makes it available. Without it a message could be stored just after the session read
/// the store, and messages routed live afterwards would overtake it: a client that syncs the
/// archive from its newest message would never see it. (An async lock, held across the
/// database write on purpose: that write is what must not interleave.)
pub struct Gates([tokio::sync::Mutex<()>; 64]);

impl Default for Gates {
    fn default() -> Self {
        Gates(std::array::from_fn(|_| tokio::sync::Mutex::new(())))
    }
}

impl Gates {
    pub async fn lock(&self, owner: &BareJid) -> tokio::sync::MutexGuard<'_, ()> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        owner.as_str().hash(&mut h);
        self.0[(h.finish() % self.0.len() as u64) as usize].lock().await
    }
}

pub fn storable(el: &Element) -> bool {
    if !matches!(el.get_attr("type").unwrap_or("normal"), "chat" | "normal") || super::mam::has_hint(el, "no-store") {
        return false;
    }
    el.find("body", ns::CLIENT).is_some()
        || super::mam::has_hint(el, "store")
        || el.find("received", super::mam::NS_RECEIPTS).is_some()
        || el.elements().any(|c| c.ns == super::mam::NS_MARKERS)
}

/// Keep `el` for `owner`. `Ok(false)`: not a message that is kept (dropped silently).
pub async fn store(server: &Server, owner: &BareJid, mut el: Element, stanza_id: Option<&str>) -> Result<bool, StanzaError> {
    if !storable(&el) {
        return Ok(false);
    }
    let quota = server.config.offline.max_per_account;
    if server.storage.offline_count(owner.as_str()).await? >= quota {
        // XEP-0160 section 3: a full offline queue is reported as service-unavailable.
        return Err(StanzaError::new(Condition::ServiceUnavailable).with_text("offline storage is full"));
    }
    let ts = super::mam::now_micros();
    let stamp = time::OffsetDateTime::from_unix_timestamp_nanos(ts as i128 * 1000).map(super::time::xmpp_datetime).unwrap_or_default();
    el.children.push(crate::xml::Node::Element(
        Element::new("delay", ns::DELAY).attr("from", owner.domain().as_str()).attr("stamp", stamp).text("Offline storage"),
    ));
    server.storage.offline_insert(owner.as_str(), stanza_id.unwrap_or(""), ts, &el.to_xml()).await?;
    Ok(true)
}

/// Deliver stored messages to a resource that just became available, then forget them.
pub async fn deliver(server: &Server, me: &FullJid) {
    let owner = me.to_bare();
    let msgs = match server.storage.offline_messages(owner.as_str()).await {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(error = %e, "loading offline messages");
            return;
        }
    };
    let Some(session) = server.sessions.get(me) else { return };
    let mut last = None;
    for (id, _, xml) in msgs {
        if let Some(mut el) = crate::xml::parse_stored(&xml).await {
            el.set_attr("to", me.to_string());
            // The session's mailbox is the hand-over point: past it, stream management (and the
            // archive for clients without it) keeps the message.
            if session.tx.send(Deliver::Stanza(Outgoing::new(el))).await.is_err() {
                break;
            }
        }
        last = Some(id);
    }
    if let Some(last) = last {
        if let Err(e) = server.storage.offline_delete_upto(owner.as_str(), last).await {
            tracing::error!(error = %e, "deleting delivered offline messages");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_waits_offline() {
        let chat = Element::new("message", ns::CLIENT).attr("type", "chat").child(Element::new("body", ns::CLIENT).text("hi"));
        assert!(storable(&chat));
        assert!(storable(&Element::new("message", ns::CLIENT).child(Element::new("body", ns::CLIENT).text("x"))));
        assert!(!storable(&chat.clone().child(Element::new("no-store", super::super::mam::NS_HINTS))));
        assert!(storable(&chat.clone().child(Element::new("no-permanent-store", super::super::mam::NS_HINTS))));
        assert!(!storable(
            &Element::new("message", ns::CLIENT)
                .attr("type", "chat")
                .child(Element::new("active", "http://jabber.org/protocol/chatstates"))
        ));
        assert!(!storable(&chat.attr("type", "headline")));
    }
}
