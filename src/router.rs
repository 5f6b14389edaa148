//! THE routing decision. Every stanza, whatever link it came from, is routed here, once.
//!
//! | `to` address            | message                           | presence                          | iq                        |
//! |-------------------------|-----------------------------------|-----------------------------------|---------------------------|
//! | served host (or host/x) | `service-unavailable`             | ignored                           | server IQ handlers        |
//! | local bare JID          | available resources with priority >= 0, else offline hook | subscription handling, probes answered, else every available resource | account IQ handlers |
//! | local full JID, online  | that resource                     | that resource                     | that resource             |
//! | local full JID, offline | chat as bare, normal `service-unavailable`, headline dropped | subscription types as bare, others dropped | `service-unavailable` |
//! | unknown local account   | `service-unavailable`             | error to subscribe, `unsubscribed` to probe | `service-unavailable` |
//! | group chat service (conference.host, room, room/nick) | to the room's task (`modules::muc`) |||
//! | other domain            | federation (`s2s`): the link for (our domain, that domain); `remote-server-not-found` when off or unreachable |||
//!
//! Blocking (XEP-0191) is applied here too: outbound to a blocked JID gives `not-acceptable`
//! with `<blocked/>`; inbound from a blocked JID is dropped (`service-unavailable` for message
//! and iq get/set).

use std::sync::Arc;

use crate::error::{Condition, StanzaError};
use crate::jid::{self, BareJid, FullJid, Jid};
use crate::modules;
use crate::server::Server;
use crate::session::{Deliver, Outgoing};
use crate::stanza::{Kind, Stanza};
use crate::xml::{ns, Element};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// A domain this server serves (with or without a resource).
    Host(String),
    LocalBare(BareJid),
    LocalFull(FullJid),
    /// A local service with addresses of its own: group chat.
    Service,
    /// An external component's domain (XEP-0114), connected or not.
    Component(String),
    /// An HTTP bot's domain (`[[bots]]`).
    Bot(String),
    Remote(String),
}

pub fn classify(server: &Server, to: &Jid) -> Destination {
    let domain = to.domain().as_str();
    if server.muc.as_ref().is_some_and(|m| m.serves(domain)) {
        return Destination::Service;
    }
    if server.components.serves(domain) {
        return Destination::Component(domain.to_string());
    }
    if server.bots.serves(domain) {
        return Destination::Bot(domain.to_string());
    }
    if !server.is_local_domain(domain) {
        return Destination::Remote(domain.to_string());
    }
    if to.node().is_none() {
        return Destination::Host(domain.to_string());
    }
    match to.clone().try_into_full() {
        Ok(full) => Destination::LocalFull(full),
        Err(bare) => Destination::LocalBare(bare),
    }
}

/// Route a stanza whose `from` is set and trusted. (Boxed: delivery can route again, e.g. an
/// error reply or a presence answer.)
pub fn route(server: &Server, stanza: Stanza) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
    Box::pin(route_now(server, stanza))
}

async fn route_now(server: &Server, stanza: Stanza) {
    server.counters.routed(stanza.kind);
    let Some(to) = stanza.to.clone() else {
        tracing::debug!("dropping stanza without a destination");
        return;
    };
    if blocked_outbound(server, &stanza, &to) {
        return;
    }
    match classify(server, &to) {
        Destination::Host(host) => to_host(server, stanza, host).await,
        Destination::LocalBare(bare) => to_local(server, stanza, bare, None).await,
        Destination::LocalFull(full) => to_local(server, stanza, full.to_bare(), Some(full)).await,
        Destination::Service => match &server.muc {
            Some(muc) => muc.route(server, stanza).await,
            None => bounce(server, &stanza, Condition::ServiceUnavailable).await,
        },
        Destination::Component(domain) => crate::session::component::route(server, stanza, &domain).await,
        Destination::Bot(domain) => modules::bots::route(server, stanza, &domain).await,
        Destination::Remote(domain) => crate::s2s::route(server, stanza, &domain).await,
    }
}

/// A message a local account sends, from one of its sessions (`from_session`) or through the
/// REST API on its behalf. The sender's copy is archived (no stanza-id on the routed stanza)
/// and carbon-copied to its other sessions; its row is queued before routing and waited for
/// after, so it usually shares a commit with the recipient's copy, and this returns (a session
/// acks the stanza) only once both are stored.
pub async fn send_from_account(server: &Server, owner: &BareJid, from_session: Option<&FullJid>, mut st: Stanza) {
    modules::mam::strip_forged_ids(&mut st.el, owner.as_str());
    let mut pending = None;
    if let Some(peer) = st.to.clone().filter(|p| jid::bare_str(p) != owner.as_str()) {
        match modules::mam::archive_queued(server, owner, &peer, true, &mut st.el, false).await {
            Ok(p) => pending = p.map(|(_, p)| p),
            Err(e) => tracing::error!(error = ?e, "archiving an outgoing message"),
        }
    }
    modules::carbons::sent(server, owner, from_session, &st.el);
    route(server, st).await;
    if let Some(p) = pending {
        if let Err(e) = p.wait().await {
            tracing::error!(error = ?e, "archiving an outgoing message");
        }
    }
}

/// Route an element the server built itself (presence answers, subscription stanzas).
pub async fn route_element(server: &Server, el: Element) {
    match Stanza::parse(el) {
        Ok(s) => route(server, s).await,
        Err(bad) => tracing::error!(element = %bad.0, "the server built an invalid stanza"),
    }
}

/// Does the local account exist? Bounces `stanza` (service-unavailable, or
/// internal-server-error when storage fails) and returns `false` when it cannot be delivered.
async fn account_or_bounce(server: &Server, stanza: &Stanza, bare: &BareJid) -> bool {
    if server.sessions.is_online(bare) {
        return true;
    }
    match server.storage.user_exists(bare.domain().as_str(), jid::node_str(bare)).await {
        Ok(true) => true,
        Ok(false) => {
            bounce(server, stanza, Condition::ServiceUnavailable).await;
            false
        }
        Err(e) => {
            tracing::error!(error = %e, "checking account");
            bounce(server, stanza, Condition::InternalServerError).await;
            false
        }
    }
}

/// Send an error reply for `stanza` back to its sender (never for an error).
pub async fn bounce(server: &Server, stanza: &Stanza, err: impl Into<StanzaError>) {
    let err = err.into();
    if let Some(reply) = stanza.error_reply(&err) {
        if let Ok(s) = Stanza::parse(reply) {
            route(server, s).await;
        }
    }
}

/// XEP-0191 section 3.6: a local sender may not reach a JID it blocked.
fn blocked_outbound(server: &Server, stanza: &Stanza, to: &Jid) -> bool {
    let Some(from) = &stanza.from else {
        return false;
    };
    if from.node().is_none() || !server.is_local_domain(from.domain().as_str()) || stanza.is_error() {
        return false;
    }
    let Some(list) = server.sessions.blocklist(jid::bare_str(from)) else {
        return false;
    };
    if !list.iter().any(|item| jid::matches_item(item, to)) {
        return false;
    }
    if stanza.kind != Kind::Presence {
        let err = StanzaError::new(Condition::NotAcceptable).with_app(Element::new("blocked", ns::BLOCKING_ERRORS));
        if let Some(reply) = stanza.error_reply(&err) {
            deliver_to_sender(server, reply);
        }
    }
    true
}

/// Deliver an error straight back to the local session that sent a stanza.
fn deliver_to_sender(server: &Server, reply: Element) {
    let Some(to) = reply.get_attr("to").and_then(jid::parse) else {
        return;
    };
    if let Ok(full) = to.try_into_full() {
        if let Some(s) = server.sessions.get(&full) {
            server.sessions.send(&s, Deliver::Stanza(Outgoing::new(reply)));
        }
    }
}

async fn to_host(server: &Server, stanza: Stanza, host: String) {
    match stanza.kind {
        Kind::Iq => modules::handle_iq(server, stanza, modules::IqTarget::Host(host)).await,
        Kind::Message => {
            if !stanza.is_error() {
                bounce(server, &stanza, Condition::ServiceUnavailable).await;
            }
        }
        Kind::Presence => {}
    }
}

/// Is `from` blocked by the local account `owner`? Uses the in-memory list when the account is
/// online, the database otherwise.
async fn blocked_inbound(server: &Server, owner: &BareJid, from: &Jid) -> bool {
    let list = match server.sessions.blocklist(owner.as_str()) {
        Some(l) => l,
        None => match server.storage.blocklist(owner.as_str()).await {
            Ok(l) => Arc::new(l.iter().filter_map(|s| jid::parse(s)).collect()),
            Err(e) => {
                tracing::error!(error = %e, "reading block list");
                return false;
            }
        },
    };
    list.iter().any(|item| jid::matches_item(item, from))
}

async fn to_local(server: &Server, stanza: Stanza, bare: BareJid, full: Option<FullJid>) {
    if let Some(from) = &stanza.from {
        if jid::bare_str(from) != bare.as_str() && blocked_inbound(server, &bare, from).await {
            let get_or_set = matches!(stanza.typ(), Some("get") | Some("set"));
            if stanza.kind == Kind::Message && !stanza.is_error() || stanza.kind == Kind::Iq && get_or_set {
                bounce(server, &stanza, Condition::ServiceUnavailable).await;
            }
            return;
        }
    }
    if stanza.kind == Kind::Message {
        return message_in(server, stanza, bare, full).await;
    }
    // A resource that is bound gets full-JID stanzas directly, except subscription management,
    // which is always about the bare JID (RFC 6121 section 3).
    if let Some(full) = &full {
        let is_sub = stanza.kind == Kind::Presence && stanza.typ().is_some_and(crate::stanza::is_subscription_type);
        if !is_sub {
            if let Some(s) = server.sessions.get(full) {
                server.sessions.send(&s, Deliver::Stanza(Outgoing::new(stanza.el)));
                return;
            }
        }
    }
    match stanza.kind {
        Kind::Iq => {
            if full.is_some() {
                if !stanza.is_error() && stanza.typ() != Some("result") {
                    bounce(server, &stanza, Condition::ServiceUnavailable).await;
                }
                return;
            }
            // RFC 6121 section 8.5.1: no account, no answer on its behalf.
            if !account_or_bounce(server, &stanza, &bare).await {
                return;
            }
            modules::handle_iq(server, stanza, modules::IqTarget::Account(bare)).await
        }
        Kind::Presence => modules::presence::inbound(server, stanza, bare, full.is_some()).await,
        Kind::Message => {}
    }
}

/// A message for a local account: RFC 6121 section 8.5.2 (bare JID) and 8.5.3 (full JID).
/// Once accepted for the account it is archived (stamped with the account's stanza-id), and
/// only then are its destinations chosen: a session that binds after that point finds it in the
/// archive, one that bound before receives it, so a client syncing "after its newest id" cannot
/// miss it. Then it is delivered with carbons, or kept offline.
async fn message_in(server: &Server, mut stanza: Stanza, bare: BareJid, full: Option<FullJid>) {
    let typ = stanza.typ().unwrap_or("normal").to_string();
    let direct_online = full.as_ref().is_some_and(|f| server.sessions.get(f).is_some());
    if !direct_online {
        match typ.as_str() {
            "error" => return,
            "groupchat" => return bounce(server, &stanza, Condition::ServiceUnavailable).await,
            // RFC 6121 section 8.5.3.2.1: to a resource that is not online, only chat is
            // treated as if sent to the bare JID; normal is refused, headline dropped.
            "headline" if full.is_some() => return,
            "chat" => {}
            _ if full.is_some() => return bounce(server, &stanza, Condition::ServiceUnavailable).await,
            _ => {}
        }
        if typ == "headline" && !server.sessions.is_online(&bare) {
            return;
        }
        if !account_or_bounce(server, &stanza, &bare).await {
            return;
        }
    }
    modules::mam::strip_forged_ids(&mut stanza.el, bare.as_str());
    let peer = stanza.from.clone().unwrap_or_else(|| Jid::from(bare.clone()));
    let sid = match modules::mam::archive(server, &bare, &peer, false, &mut stanza.el, true).await {
        Ok(sid) => sid,
        Err(e) => {
            tracing::error!(error = ?e, "archiving an incoming message");
            None
        }
    };
    let find = || match full.as_ref().and_then(|f| server.sessions.get(f)) {
        Some(s) => vec![s],
        None if full.is_some() && typ != "chat" => Vec::new(),
        None => server.sessions.sessions(&bare, |s| s.available && s.priority >= 0),
    };
    let mut targets = find();
    if targets.is_empty() {
        if typ == "headline" || typ == "error" {
            return;
        }
        // Decided again under the account's gate: a resource may be coming up (offline::Gates).
        let _gate = server.offline_gates.lock(&bare).await;
        targets = find();
        if targets.is_empty() {
            if let Err(e) = modules::offline::store(server, &bare, stanza.el.clone(), sid.as_deref()).await {
                bounce(server, &stanza, e).await;
            }
            return;
        }
    }
    let delivered: Vec<FullJid> = targets.iter().map(|s| s.jid.clone()).collect();
    modules::carbons::received(server, &bare, &stanza.el, &delivered);
    let out = Outgoing::new(stanza.el);
    for s in &targets {
        server.sessions.send(s, Deliver::Stanza(out.clone()));
    }
}
