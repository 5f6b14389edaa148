//! Offline messages (XEP-0160): a chat or normal message for an account with no available
//! resource is kept, with a delay stamp and its archive stanza-id, and delivered when a resource
//! next sends initial presence.

use std::collections::HashMap;

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
///
/// It also notes which stored messages are out with which session: a row stays in the store
/// until that session's client acknowledges it (XEP-0198), and meanwhile no other resource
/// is handed it.
pub struct Gates {
    locks: [tokio::sync::Mutex<()>; 64],
    /// Rows handed to a session and not yet acknowledged: owner -> row -> session id.
    held: std::sync::Mutex<HashMap<BareJid, HashMap<i64, u64>>>,
}

impl Default for Gates {
    fn default() -> Self {
        Gates { locks: std::array::from_fn(|_| tokio::sync::Mutex::new(())), held: Default::default() }
    }
}

impl Gates {
    pub async fn lock(&self, owner: &BareJid) -> tokio::sync::MutexGuard<'_, ()> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        owner.as_str().hash(&mut h);
        self.locks[(h.finish() % self.locks.len() as u64) as usize].lock().await
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<BareJid, HashMap<i64, u64>>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forget which rows `session` holds: all of them, or those in `rows`.
    fn release(&self, owner: &BareJid, session: u64, rows: Option<&[i64]>) {
        let mut held = self.held();
        if let Some(h) = held.get_mut(owner) {
            match rows {
                Some(rows) => rows.iter().for_each(|r| {
                    h.remove(r);
                }),
                None => h.retain(|_, s| *s != session),
            }
            if h.is_empty() {
                held.remove(owner);
            }
        }
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

/// The owner under which messages for a domain of its own (an external component, an HTTP bot)
/// wait in the offline store: the domain itself.
pub fn domain_queue(domain: &str) -> Option<BareJid> {
    BareJid::new(domain).ok()
}

/// Keep `el` for `owner`. `Ok(false)`: not a message that is kept (dropped silently).
pub async fn store(server: &Server, owner: &BareJid, el: Element, stanza_id: Option<&str>) -> Result<bool, StanzaError> {
    if !storable(&el) {
        return Ok(false);
    }
    keep(server, owner, el, stanza_id).await.map(|()| true)
}

/// Keep `el` for `owner` whatever its kind (within the quota): for a queue that is not a
/// client's, such as an HTTP bot's, which takes a room's messages too.
pub async fn keep(server: &Server, owner: &BareJid, mut el: Element, stanza_id: Option<&str>) -> Result<(), StanzaError> {
    let quota = server.config.offline.max_per_account;
    if server.storage.offline_count(owner.as_str()).await? >= quota {
        // XEP-0160 section 3: a full offline queue is reported as service-unavailable.
        return Err(StanzaError::new(Condition::ServiceUnavailable).with_text("offline storage is full"));
    }
    let ts = super::mam::now_micros();
    el.children.push(crate::xml::Node::Element(delay(owner, ts)));
    server.storage.offline_insert(owner.as_str(), stanza_id.unwrap_or(""), ts, &el.to_xml()).await?;
    Ok(())
}

/// Hand the stored messages no other session holds to `me` (session `session`), which just
/// became available. The caller holds the account's gate. The rows stay in the store until
/// the session reports them done ([`done`]) or ends ([`session_ended`]).
pub async fn deliver(server: &Server, me: &FullJid, session: u64) {
    let owner = me.to_bare();
    let msgs = match server.storage.offline_messages(owner.as_str()).await {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(error = %e, "loading offline messages");
            return;
        }
    };
    let Some(entry) = server.sessions.get(me).filter(|s| s.id == session) else { return };
    let taken: std::collections::HashSet<i64> =
        server.offline_gates.held().get(&owner).map(|h| h.keys().copied().collect()).unwrap_or_default();
    let mut handed = Vec::new();
    for (row, _, xml) in msgs.into_iter().filter(|(row, _, _)| !taken.contains(row)) {
        let Some(mut el) = crate::xml::parse_stored(&xml).await else {
            tracing::error!(row, "an offline message could not be read back; left in the store");
            continue;
        };
        el.set_attr("to", me.to_string());
        if entry.tx.send(Deliver::Stanza(Outgoing::from_offline(el, row))).await.is_err() {
            break;
        }
        handed.push(row);
    }
    if !handed.is_empty() {
        server.offline_gates.held().entry(owner).or_default().extend(handed.into_iter().map(|r| (r, session)));
    }
}

/// The client of `session` has these stored messages: delete them from the store.
pub async fn done(server: &Server, owner: &BareJid, session: u64, rows: &[i64]) {
    if let Err(e) = server.storage.offline_delete(owner.as_str(), rows).await {
        // Left in the store: delivered again at a later login rather than lost.
        tracing::error!(error = %e, "deleting acknowledged offline messages");
    }
    server.offline_gates.release(owner, session, Some(rows));
}

/// A session of `owner` ended with `unacked` messages its client never acknowledged. Stored
/// messages among them stay in the store; the others are stored now, in one transaction and
/// past the quota (they were accepted already). Then, if another resource is available, it
/// is handed everything stored.
pub async fn session_ended(server: &Server, owner: &BareJid, session: u64, unacked: Vec<std::sync::Arc<Outgoing>>) {
    let _gate = server.offline_gates.lock(owner).await;
    server.offline_gates.release(owner, session, None);
    let ts = super::mam::now_micros();
    let rows: Vec<(String, i64, String)> = unacked
        .iter()
        .filter(|o| o.offline_row.is_none() && o.el.name == "message" && storable(&o.el))
        .map(|o| {
            let sid =
                o.el.elements()
                    .find(|c| c.is("stanza-id", super::mam::NS_SID) && c.get_attr("by") == Some(owner.as_str()))
                    .and_then(|c| c.get_attr("id"))
                    .unwrap_or("")
                    .to_string();
            let mut el = o.el.clone();
            if el.find("delay", ns::DELAY).is_none() {
                el.children.push(crate::xml::Node::Element(delay(owner, ts)));
            }
            (sid, ts, el.to_xml())
        })
        .collect();
    if !rows.is_empty() {
        match server.storage.offline_insert_many(owner.as_str(), &rows).await {
            Ok(()) => tracing::info!(kept = rows.len(), "unacknowledged messages moved to offline storage"),
            // Still in the archive, where a client syncing from its newest message finds them.
            Err(e) => tracing::error!(error = %e, lost = rows.len(), "could not keep unacknowledged messages offline"),
        }
    }
    let next = server.sessions.sessions(owner, |s| s.available && s.priority >= 0).into_iter().max_by_key(|s| s.priority);
    if let Some(next) = next {
        deliver(server, &next.jid, next.id).await;
    }
}

fn delay(owner: &BareJid, ts: i64) -> Element {
    Element::new("delay", ns::DELAY)
        .attr("from", owner.domain().as_str())
        .attr("stamp", super::time::xmpp_datetime_micros(ts))
        .text("Offline storage")
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
