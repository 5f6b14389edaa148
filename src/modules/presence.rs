//! Presence (RFC 6121 section 4): broadcast to subscribers and the account's own resources,
//! probes and their answers, directed presence, unavailable presence when a session ends.
//!
//! The per-session part (`SessionPresence`) lives in the client session; [`inbound`] is called
//! by the router for presence addressed to a local account.

use std::collections::HashSet;
use std::sync::Arc;

use super::{roster, Module};
use crate::jid::{BareJid, FullJid, Jid};
use crate::router;
use crate::server::Server;
use crate::session::{Deliver, Outgoing, SessionEntry};
use crate::stanza::{self, Stanza};
use crate::storage::now_secs;
use crate::storage::roster::RosterItem;
use crate::xml::{ns, Element};

pub const MODULE: Module = Module { name: "presence", specs: &[], host_features: &[], account_features: &[], iq: &[] };

/// Presence state of one client session.
#[derive(Debug, Default)]
pub struct SessionPresence {
    pub available: bool,
    /// Entities that got directed presence and are not subscribers (RFC 6121 section 4.6).
    pub directed: HashSet<Jid>,
}

fn priority_of(el: &Element) -> i8 {
    el.find("priority", ns::CLIENT).and_then(|p| p.text_content().trim().parse::<i8>().ok()).unwrap_or(0)
}

/// The account's roster for a presence broadcast (empty, and logged, when storage fails).
async fn load_roster(server: &Server, owner: &BareJid) -> Vec<RosterItem> {
    server.storage.roster(owner.as_str()).await.unwrap_or_else(|e| {
        tracing::error!(error = %e, "loading roster for presence");
        Vec::new()
    })
}

/// Contacts subscribed to the account's presence (subscription from or both).
fn subscribers(roster: &[RosterItem]) -> impl Iterator<Item = Jid> + '_ {
    roster.iter().filter(|i| i.subscription.from()).filter_map(|i| crate::jid::parse(&i.contact))
}

fn to_sessions(server: &Server, sessions: &[SessionEntry], el: &Element) {
    for s in sessions {
        let mut e = el.clone();
        e.set_attr("to", s.jid.to_string());
        server.sessions.send(s, Deliver::Stanza(Outgoing::new(e)));
    }
}

impl SessionPresence {
    /// Presence with no `to` from the client (RFC 6121 sections 4.2 - 4.5).
    pub async fn broadcast(&mut self, server: &Server, me: &FullJid, session_id: u64, mut el: Element) {
        let owner = me.to_bare();
        el.set_attr("from", me.to_string());
        el.remove_attr("to");
        match el.get_attr("type") {
            None => {
                let initial = !self.available;
                self.available = true;
                let priority = priority_of(&el);
                let caps = super::caps::announced(&el);
                let shared = Outgoing::new(el.clone());
                // Stored messages go to this session before it is available, under the
                // account's gate, so nothing routed live afterwards overtakes them
                // (offline::Gates).
                let gate = if initial {
                    let gate = server.offline_gates.lock(&owner).await;
                    super::offline::deliver(server, me, session_id).await;
                    Some(gate)
                } else {
                    None
                };
                server.sessions.update(me, session_id, |s| {
                    s.available = true;
                    s.priority = priority;
                    s.presence = Some(shared);
                    s.caps = caps.as_ref().map(|(_, ver)| Arc::from(ver.as_str()));
                });
                drop(gate);
                // RFC 6121 sections 4.2.2 and 4.4.2: to every available resource of the account,
                // including the one that sent it.
                let all = server.sessions.sessions(&owner, |s| s.available);
                to_sessions(server, &all, &el);
                let others: Vec<SessionEntry> = all.into_iter().filter(|s| &s.jid != me).collect();
                // One read serves the broadcast and, on initial presence, the probes.
                let roster = load_roster(server, &owner).await;
                for contact in subscribers(&roster) {
                    let mut e = el.clone();
                    e.set_attr("to", contact.to_string());
                    router::route_element(server, e).await;
                }
                if initial {
                    self.initial(server, me, &owner, &others, &roster).await;
                }
                // XEP-0163 section 4.3.2: the last items of the nodes it wants, once its
                // features are known (now, or when the client answers the caps query).
                if let Some((node, ver)) = caps {
                    if let Some(features) = super::caps::on_presence(server, me, &node, &ver).await {
                        if initial {
                            super::pep::came_online(server, me, &features).await;
                        }
                    }
                }
            }
            Some("unavailable") => {
                self.unavailable(server, me, session_id, Some(el)).await;
            }
            _ => {}
        }
    }

    /// After initial presence: probe contacts, show the other resources, redeliver pending
    /// subscription requests (RFC 6121 sections 3.1.3 and 4.2.2).
    async fn initial(&mut self, server: &Server, me: &FullJid, owner: &BareJid, others: &[SessionEntry], roster: &[RosterItem]) {
        let me_jid = Jid::from(me.clone());
        for s in others {
            if let Some(p) = &s.presence {
                let mut e = p.el.clone();
                e.set_attr("to", me.to_string());
                if let Some(t) = server.sessions.get(me) {
                    server.sessions.send(&t, Deliver::Stanza(Outgoing::new(e)));
                }
            }
        }
        for item in roster.iter().filter(|i| i.subscription.to()) {
            if let Some(c) = crate::jid::parse(&item.contact) {
                router::route_element(server, stanza::presence(&me_jid, &c, Some("probe"))).await;
            }
        }
        match server.storage.subscription_requests(owner.as_str()).await {
            Ok(reqs) => {
                if let Some(t) = server.sessions.get(me) {
                    for (_, xml) in reqs {
                        if let Some(el) = crate::xml::parse_stored(&xml).await {
                            server.sessions.send(&t, Deliver::Stanza(Outgoing::new(el)));
                        }
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "loading subscription requests"),
        }
    }

    /// The session becomes unavailable, by presence or because its stream ended.
    pub async fn unavailable(&mut self, server: &Server, me: &FullJid, session_id: u64, el: Option<Element>) {
        let owner = me.to_bare();
        let was_available = self.available;
        self.available = false;
        server.sessions.update(me, session_id, |s| {
            s.available = false;
            s.presence = None;
        });
        let el = el.unwrap_or_else(|| Element::new("presence", ns::CLIENT).attr("type", "unavailable").attr("from", me.to_string()));
        let mut targets: Vec<Jid> = std::mem::take(&mut self.directed).into_iter().collect();
        if was_available {
            let others = server.sessions.sessions(&owner, |s| s.available && &s.jid != me);
            to_sessions(server, &others, &el);
            targets.extend(subscribers(&load_roster(server, &owner).await));
            if others.is_empty() {
                let status = el.find("status", ns::CLIENT).map(|s| s.text_content()).unwrap_or_default();
                if let Err(e) = server.storage.set_last_activity(owner.as_str(), now_secs(), &status).await {
                    tracing::error!(error = %e, "storing last activity");
                }
            }
        }
        targets.sort_by_key(|j| j.to_string());
        targets.dedup();
        for t in targets {
            let mut e = el.clone();
            e.set_attr("to", t.to_string());
            router::route_element(server, e).await;
        }
    }

    /// Directed presence from the client (RFC 6121 section 4.6).
    pub async fn directed(&mut self, server: &Server, me: &FullJid, st: Stanza) {
        let Some(to) = st.to.clone() else { return };
        match st.typ() {
            None => {
                let item = server.storage.roster_item(me.to_bare().as_str(), to.to_bare().as_str()).await.ok().flatten();
                if !item.is_some_and(|i| i.subscription.from()) {
                    self.directed.insert(to);
                }
            }
            Some("unavailable") => {
                self.directed.remove(&to);
            }
            _ => {}
        }
        router::route(server, st).await;
    }
}

/// Presence addressed to a local account (the router already delivered full-JID presence to
/// online resources).
pub async fn inbound(server: &Server, st: Stanza, owner: BareJid, was_full: bool) {
    let typ = st.typ().map(String::from);
    match typ.as_deref() {
        Some(t) if stanza::is_subscription_type(t) => {
            if let Err(e) = roster::inbound(server, st, owner).await {
                tracing::warn!(error = ?e, "subscription processing failed");
            }
        }
        Some("probe") => answer_probe(server, st, owner).await,
        None | Some("unavailable") | Some("error") => {
            if was_full {
                return; // RFC 6121 section 8.5.3.2.2: resource not online, silently ignored
            }
            // A contact on another server: PEP notifications follow its presence and caps.
            super::pep::remote_presence(server, &owner, &st).await;
            let out = Outgoing::new(st.el);
            for s in server.sessions.sessions(&owner, |s| s.available) {
                server.sessions.send(&s, Deliver::Stanza(out.clone()));
            }
        }
        _ => {}
    }
}

/// RFC 6121 section 4.3.2.
async fn answer_probe(server: &Server, st: Stanza, owner: BareJid) {
    let Some(from) = st.from.clone() else { return };
    let owner_jid = Jid::from(owner.clone());
    let item = match server.storage.roster_item(owner.as_str(), from.to_bare().as_str()).await {
        Ok(i) => i,
        Err(e) => {
            tracing::error!(error = %e, "probe");
            return;
        }
    };
    if !item.is_some_and(|i| i.subscription.from()) {
        router::route_element(server, stanza::presence(&owner_jid, &from, Some("unsubscribed"))).await;
        return;
    }
    let current = roster::send_current_presence(server, &owner, &from);
    if current.is_empty() {
        let mut p = stanza::presence(&owner_jid, &from, Some("unavailable"));
        if let Ok(Some((seen, _))) = server.storage.last_activity(owner.as_str()).await {
            if let Ok(t) = time::OffsetDateTime::from_unix_timestamp(seen) {
                p = p.child(
                    Element::new("delay", ns::DELAY).attr("from", owner.domain().as_str()).attr("stamp", super::time::xmpp_datetime(t)),
                );
            }
        }
        router::route_element(server, p).await;
        return;
    }
    for p in current {
        router::route_element(server, p).await;
    }
}
