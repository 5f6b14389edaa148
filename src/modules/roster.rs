//! Rosters and subscriptions (RFC 6121 sections 2 and 3, roster versioning XEP-0237,
//! pre-approval RFC 6121 section 3.4).
//!
//! Outbound subscription stanzas (from a local user) are processed by [`outbound`] before they
//! are routed; inbound ones (to a local user) by [`inbound`], called by the router.

use super::{IqFuture, IqHandler, IqRequest, Module, Spec};
use crate::error::{Condition, StanzaError};
use crate::jid::{self, BareJid, FullJid, Jid};
use crate::router;
use crate::server::Server;
use crate::session::{Deliver, Outgoing};
use crate::stanza::{self, Stanza};
use crate::storage::roster::{RosterItem, Subscription};
use crate::xml::{ns, Element};

pub const MODULE: Module = Module {
    name: "roster",
    specs: &[
        Spec { id: "XEP-0237", title: "Roster Versioning", note: "" },
        Spec { id: "RFC 6121 s3.4", title: "Subscription pre-approval", note: "" },
    ],
    host_features: &[],
    account_features: &[],
    iq: &[IqHandler { ns: ns::ROSTER, on_host: false, on_account: true, handle }],
};

pub fn item_element(item: &RosterItem) -> Element {
    let mut e = Element::new("item", ns::ROSTER).attr("jid", item.contact.clone()).attr("subscription", item.subscription.as_str());
    if let Some(n) = &item.name {
        e.set_attr("name", n.clone());
    }
    if item.ask {
        e.set_attr("ask", "subscribe");
    }
    if item.approved {
        e.set_attr("approved", "true");
    }
    for g in &item.groups {
        e = e.child(Element::new("group", ns::ROSTER).text(g.clone()));
    }
    e
}

/// Roster push to every resource that requested the roster (RFC 6121 section 2.1.6).
pub fn push(server: &Server, owner: &BareJid, item: Element, version: i64) {
    for s in server.sessions.sessions(owner, |s| s.roster_requested) {
        let iq = Element::new("iq", ns::CLIENT)
            .attr("type", "set")
            .attr("id", format!("push-{}", server.sessions.next_id()))
            .attr("to", s.jid.to_string())
            .child(Element::new("query", ns::ROSTER).attr("ver", version.to_string()).child(item.clone()));
        server.sessions.send(&s, Deliver::Stanza(Outgoing::new(iq)));
    }
}

async fn save_and_push(server: &Server, owner: &BareJid, item: &RosterItem) -> Result<(), StanzaError> {
    let v = server.storage.put_roster_item(owner.as_str(), item).await?;
    push(server, owner, item_element(item), v);
    Ok(())
}

fn handle<'a>(server: &'a Server, req: IqRequest<'a>) -> IqFuture<'a> {
    Box::pin(async move {
        let owner = req.require_own()?.clone();
        if req.payload.name != "query" {
            return Err(Condition::BadRequest.into());
        }
        if req.is_set() {
            set(server, &owner, req.payload).await?;
            return Ok(None);
        }
        if let Ok(full) = req.from.clone().try_into_full() {
            if let Some(s) = server.sessions.get(&full) {
                server.sessions.update(&full, s.id, |e| e.roster_requested = true);
            }
        }
        // XEP-0237: an up-to-date client gets an empty result, then pushes; a client without
        // a version gets the roster and its version in one query.
        let (version, items) = match req.payload.get_attr("ver") {
            Some(ver) => {
                let version = server.storage.roster_version(owner.as_str()).await?;
                if ver == version.to_string() {
                    return Ok(None);
                }
                (version, server.storage.roster(owner.as_str()).await?)
            }
            None => server.storage.roster_with_version(owner.as_str()).await?,
        };
        let mut q = Element::new("query", ns::ROSTER).attr("ver", version.to_string());
        for item in items {
            q = q.child(item_element(&item));
        }
        Ok(Some(q))
    })
}

/// Roster set (RFC 6121 section 2.3 and 2.5).
async fn set(server: &Server, owner: &BareJid, query: &Element) -> Result<(), StanzaError> {
    let items: Vec<&Element> = query.elements().filter(|e| e.is("item", ns::ROSTER)).collect();
    let [el] = items.as_slice() else {
        return Err(Condition::BadRequest.into());
    };
    let contact = el.get_attr("jid").ok_or(Condition::BadRequest)?;
    let contact = jid::parse(contact).ok_or(Condition::JidMalformed)?.to_bare();
    let contact_s = contact.to_string();
    let existing = server.storage.roster_item(owner.as_str(), &contact_s).await?;
    if el.get_attr("subscription") == Some("remove") {
        let Some(item) = existing else {
            return Err(Condition::ItemNotFound.into());
        };
        remove(server, owner, &item).await?;
        return Ok(());
    }
    if contact == *owner {
        return Err(StanzaError::new(Condition::NotAllowed).with_text("cannot add yourself"));
    }
    let mut groups: Vec<String> = Vec::new();
    for g in el.elements().filter(|e| e.is("group", ns::ROSTER)) {
        let name = g.text_content();
        // RFC 6121 section 2.3.3: an empty group is not-acceptable, a repeated one bad-request.
        if name.is_empty() {
            return Err(StanzaError::new(Condition::NotAcceptable).with_text("empty group name"));
        }
        if groups.contains(&name) {
            return Err(StanzaError::new(Condition::BadRequest).with_text("duplicate group"));
        }
        groups.push(name);
    }
    if existing.is_none() && server.storage.roster_len(owner.as_str()).await? >= server.config.limits.max_roster_items {
        return Err(StanzaError::new(Condition::NotAllowed).with_text("roster is full"));
    }
    let mut item = existing.unwrap_or_else(|| RosterItem::new(contact_s));
    item.name = el.get_attr("name").filter(|n| !n.is_empty()).map(String::from);
    item.groups = groups;
    save_and_push(server, owner, &item).await
}

/// Remove an item, cancelling subscriptions both ways (RFC 6121 section 2.5.2).
async fn remove(server: &Server, owner: &BareJid, item: &RosterItem) -> Result<(), StanzaError> {
    let contact = jid::parse(&item.contact).ok_or(Condition::JidMalformed)?;
    let from = Jid::from(owner.clone());
    let pending_in = server.storage.take_subscription_request(owner.as_str(), &item.contact).await?;
    let v = server.storage.delete_roster_item(owner.as_str(), &item.contact).await?;
    push(server, owner, Element::new("item", ns::ROSTER).attr("jid", item.contact.clone()).attr("subscription", "remove"), v);
    if item.subscription.to() || item.ask {
        router::route_element(server, stanza::presence(&from, &contact, Some("unsubscribe"))).await;
    }
    if item.subscription.from() || pending_in {
        router::route_element(server, stanza::presence(&from, &contact, Some("unsubscribed"))).await;
    }
    Ok(())
}

/// Presence of every available resource of `owner`, sent to `to`.
pub fn send_current_presence(server: &Server, owner: &BareJid, to: &Jid) -> Vec<Element> {
    server
        .sessions
        .sessions(owner, |s| s.available)
        .into_iter()
        .filter_map(|s| {
            let mut el = s.presence.as_ref()?.el.clone();
            el.set_attr("from", s.jid.to_string());
            el.set_attr("to", to.to_string());
            Some(el)
        })
        .collect()
}

/// A local user sends a subscription stanza: update the user's roster, then route it from the
/// bare JID (RFC 6121 sections 3.1.2, 3.2.2, 3.3.2, 3.4.2).
pub async fn outbound(server: &Server, from: &FullJid, mut st: Stanza) -> Result<(), StanzaError> {
    let owner = from.to_bare();
    let Some(to) = st.to.clone() else {
        return Err(Condition::BadRequest.into());
    };
    let contact = to.to_bare();
    if contact == owner {
        return Ok(());
    }
    let contact_s = contact.to_string();
    let typ = st.typ().unwrap_or("").to_string();
    let existing = server.storage.roster_item(owner.as_str(), &contact_s).await?;
    let mut item = existing.clone().unwrap_or_else(|| RosterItem::new(contact_s.clone()));
    let mut route_it = true;
    let mut send_presence = false;
    let mut send_unavailable = false;
    match typ.as_str() {
        "subscribe" => {
            if !item.subscription.to() {
                item.ask = true;
            }
        }
        "unsubscribe" => {
            item.subscription = Subscription::with(false, item.subscription.from());
            item.ask = false;
        }
        "subscribed" => {
            let pending = server.storage.take_subscription_request(owner.as_str(), &contact_s).await?;
            if item.subscription.from() {
                route_it = false;
            } else if pending {
                item.subscription = Subscription::with(item.subscription.to(), true);
                item.approved = false;
                send_presence = true;
            } else {
                // Pre-approval (RFC 6121 section 3.4): remembered, not routed.
                item.approved = true;
                route_it = false;
            }
        }
        "unsubscribed" => {
            let pending = server.storage.take_subscription_request(owner.as_str(), &contact_s).await?;
            if item.subscription.from() {
                send_unavailable = true;
            } else if !pending && !item.approved {
                route_it = false;
            }
            item.subscription = Subscription::with(item.subscription.to(), false);
            item.approved = false;
        }
        _ => return Err(Condition::BadRequest.into()),
    }
    if existing.as_ref() != Some(&item) && (existing.is_some() || typ == "subscribe" || typ == "subscribed") {
        save_and_push(server, &owner, &item).await?;
    }
    let contact_jid = Jid::from(contact.clone());
    // RFC 6121 section 3.2.2: on cancellation the contact first stops seeing the presence,
    // then gets the unsubscribed.
    if send_unavailable {
        for s in server.sessions.sessions(&owner, |s| s.available) {
            router::route_element(server, stanza::presence(&Jid::from(s.jid.clone()), &contact_jid, Some("unavailable"))).await;
        }
    }
    if route_it {
        // RFC 6121 section 3.1.2: stamped with the bare JID.
        st.set_from(Jid::from(owner.clone()));
        st.set_to(Jid::from(contact.clone()));
        router::route(server, st).await;
    }
    if send_presence {
        for p in send_current_presence(server, &owner, &contact_jid) {
            router::route_element(server, p).await;
        }
    }
    Ok(())
}

fn deliver_to_available(server: &Server, owner: &BareJid, el: Element) {
    let out = Outgoing::new(el);
    for s in server.sessions.sessions(owner, |s| s.available) {
        server.sessions.send(&s, Deliver::Stanza(out.clone()));
    }
}

/// A subscription stanza arrives for a local user (RFC 6121 sections 3.1.3, 3.1.5, 3.2.3,
/// 3.3.3).
pub async fn inbound(server: &Server, mut st: Stanza, owner: BareJid) -> Result<(), StanzaError> {
    let Some(from) = st.from.clone() else {
        return Ok(());
    };
    let contact = from.to_bare();
    let contact_s = contact.to_string();
    let owner_jid = Jid::from(owner.clone());
    let contact_jid = Jid::from(contact.clone());
    // Subscription stanzas are always from and to bare JIDs.
    st.set_from(contact_jid.clone());
    st.set_to(owner_jid.clone());
    let typ = st.typ().unwrap_or("").to_string();
    let existing = server.storage.roster_item(owner.as_str(), &contact_s).await?;
    if existing.is_none()
        && !server.sessions.is_online(&owner)
        && !server.storage.user_exists(owner.domain().as_str(), jid::node_str(&owner_jid)).await?
    {
        // RFC 6121 section 3.1.2: a request that cannot be delivered because the local contact
        // does not exist is answered with an error.
        if typ == "subscribe" {
            router::bounce(server, &st, Condition::ServiceUnavailable).await;
        }
        return Ok(());
    }
    let mut item = existing.clone().unwrap_or_else(|| RosterItem::new(contact_s.clone()));
    match typ.as_str() {
        "subscribe" => {
            if item.subscription.from() {
                router::route_element(server, stanza::presence(&owner_jid, &contact_jid, Some("subscribed"))).await;
                return Ok(());
            }
            if item.approved {
                item.approved = false;
                item.subscription = Subscription::with(item.subscription.to(), true);
                save_and_push(server, &owner, &item).await?;
                router::route_element(server, stanza::presence(&owner_jid, &contact_jid, Some("subscribed"))).await;
                for p in send_current_presence(server, &owner, &contact_jid) {
                    router::route_element(server, p).await;
                }
                return Ok(());
            }
            server.storage.put_subscription_request(owner.as_str(), &contact_s, &st.el.to_xml()).await?;
            deliver_to_available(server, &owner, st.el);
        }
        "subscribed" => {
            if !item.ask || existing.is_none() {
                return Ok(());
            }
            item.ask = false;
            item.subscription = Subscription::with(true, item.subscription.from());
            save_and_push(server, &owner, &item).await?;
            deliver_to_available(server, &owner, st.el);
        }
        "unsubscribe" => {
            let pending = server.storage.take_subscription_request(owner.as_str(), &contact_s).await?;
            if existing.is_some() && (item.subscription.from() || item.approved) {
                item.subscription = Subscription::with(item.subscription.to(), false);
                item.approved = false;
                save_and_push(server, &owner, &item).await?;
                deliver_to_available(server, &owner, st.el);
                // The contact no longer sees the user's presence.
                for s in server.sessions.sessions(&owner, |s| s.available) {
                    router::route_element(server, stanza::presence(&Jid::from(s.jid.clone()), &contact_jid, Some("unavailable"))).await;
                }
            } else if pending {
                deliver_to_available(server, &owner, st.el);
            }
        }
        "unsubscribed" => {
            if existing.is_none() || !(item.subscription.to() || item.ask) {
                return Ok(());
            }
            item.subscription = Subscription::with(false, item.subscription.from());
            item.ask = false;
            save_and_push(server, &owner, &item).await?;
            deliver_to_available(server, &owner, st.el.clone());
            // RFC 6121 section 3.2.3: the user stops seeing the contact's presence.
            for s in server.sessions.sessions(&owner, |s| s.available) {
                let mut p = stanza::presence(&contact_jid, &Jid::from(s.jid.clone()), Some("unavailable"));
                p.remove_attr("id");
                server.sessions.send(&s, Deliver::Stanza(Outgoing::new(p)));
            }
        }
        _ => {}
    }
    Ok(())
}
