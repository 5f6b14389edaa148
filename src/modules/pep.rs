//! Personal Eventing Protocol (XEP-0163): every account is a pubsub service (XEP-0060) of its
//! own, for what clients publish about their user: avatars (XEP-0084), nicknames (XEP-0172),
//! bookmarks (XEP-0402), OMEMO device lists and bundles, and the like.
//!
//! - publish (the node is made by the first publish, `auto-create`), with publish-options
//!   (`pubsub#access_model`, `pubsub#max_items`, XEP-0223's `pubsub#persist_items`); items
//!   with the same id replace each other; a node keeps its `max_items` newest (1 unless asked).
//! - items: the newest `max_items`, or the ids asked for; retract (with `notify`); the owner's
//!   delete of a node.
//! - who may read: the owner; with access model `presence` (the default) also contacts
//!   subscribed to the owner's presence; `open` anyone; `roster` and `whitelist` the owner only.
//! - notifications (headline messages with a pubsub#event) go to the available resources of
//!   the owner and of the contacts who may read the node, that asked for the node with
//!   `<node>+notify` in their entity capabilities (XEP-0115, `modules::caps`); a resource
//!   coming online gets the last item of every such node (section 4.3.2).
//! - contacts on other servers (federation) are notified the same way: their resources are
//!   known from the presence they send the owner (`RemoteReaders`), their caps are asked for
//!   from the owner's domain, and they get the last items once those are known.
//!
//! Not here yet: subscriptions to single nodes, node configuration forms.

use std::collections::{HashMap, HashSet};

use super::{IqFuture, IqHandler, IqRequest, IqTarget, Module, Spec};
use crate::error::{Condition, StanzaError};
use crate::jid::{BareJid, FullJid};
use crate::server::Server;
use crate::storage::pep::PepNode;
use crate::xml::{ns, Element, Node};

pub const NS_PUBSUB: &str = "http://jabber.org/protocol/pubsub";
pub const NS_PUBSUB_OWNER: &str = "http://jabber.org/protocol/pubsub#owner";
pub const NS_PUBSUB_EVENT: &str = "http://jabber.org/protocol/pubsub#event";
pub const NS_PUBSUB_ERRORS: &str = "http://jabber.org/protocol/pubsub#errors";

pub const MODULE: Module = Module {
    name: "pep",
    specs: &[Spec {
        id: "XEP-0163",
        title: "Personal Eventing Protocol",
        note: "publish with publish-options, items, retract, delete; +notify by entity capabilities; last items on coming online",
    }],
    host_features: &[],
    account_features: &[
        NS_PUBSUB,
        "http://jabber.org/protocol/pubsub#access-open",
        "http://jabber.org/protocol/pubsub#access-presence",
        "http://jabber.org/protocol/pubsub#auto-create",
        "http://jabber.org/protocol/pubsub#delete-nodes",
        "http://jabber.org/protocol/pubsub#item-ids",
        "http://jabber.org/protocol/pubsub#persistent-items",
        "http://jabber.org/protocol/pubsub#publish",
        "http://jabber.org/protocol/pubsub#publish-options",
        "http://jabber.org/protocol/pubsub#retract-items",
        "http://jabber.org/protocol/pubsub#retrieve-items",
    ],
    iq: &[
        IqHandler { ns: NS_PUBSUB, on_host: false, on_account: true, handle },
        IqHandler { ns: NS_PUBSUB_OWNER, on_host: false, on_account: true, handle: owner },
    ],
};

/// Items a node may be asked to keep (`max`).
const MAX_ITEMS: i64 = 1000;
/// Largest item payload.
const MAX_PAYLOAD: usize = 256 * 1024;

fn pubsub_error(condition: Condition, app: &str) -> StanzaError {
    StanzaError::new(condition).with_app(Element::new(app, NS_PUBSUB_ERRORS))
}

fn node_of(e: &Element) -> Result<String, StanzaError> {
    match e.get_attr("node") {
        Some(n) if !n.is_empty() => Ok(n.to_string()),
        _ => Err(pubsub_error(Condition::BadRequest, "nodeid-required")),
    }
}

fn handle<'a>(server: &'a Server, req: IqRequest<'a>) -> IqFuture<'a> {
    Box::pin(async move {
        let IqTarget::Account(owner) = req.target else { return Err(Condition::ServiceUnavailable.into()) };
        let Some(op) = req.payload.elements().next() else { return Err(Condition::BadRequest.into()) };
        match (req.is_set(), op.name.as_str()) {
            (true, "publish") => publish(server, &req, op).await,
            (true, "retract") => retract(server, &req, op).await,
            (false, "items") => items(server, &req, owner, op).await,
            _ => Err(StanzaError::new(Condition::FeatureNotImplemented)
                .with_app(Element::new("unsupported", NS_PUBSUB_ERRORS).attr("feature", op.name.clone()))),
        }
    })
}

/// Node configuration from publish-options (XEP-0060 section 7.1.5), over the node's own.
fn options(req: &IqRequest<'_>, current: Option<PepNode>) -> Result<PepNode, StanzaError> {
    let mut cfg = current.unwrap_or(PepNode { access_model: "presence".into(), max_items: 1 });
    let form = req.payload.find("publish-options", NS_PUBSUB).and_then(|o| o.find("x", ns::DATA));
    for f in form.iter().flat_map(|x| x.elements().filter(|e| e.name == "field")) {
        let value = f.find("value", ns::DATA).map(|v| v.text_content()).unwrap_or_default();
        match f.get_attr("var") {
            Some("pubsub#access_model") => {
                if !matches!(value.as_str(), "open" | "presence" | "roster" | "whitelist") {
                    return Err(pubsub_error(Condition::Conflict, "precondition-not-met").with_text("unknown access model"));
                }
                cfg.access_model = value;
            }
            Some("pubsub#max_items") => {
                cfg.max_items = if value == "max" {
                    MAX_ITEMS
                } else {
                    value.parse::<i64>().ok().filter(|n| (1..=MAX_ITEMS).contains(n)).ok_or_else(|| {
                        pubsub_error(Condition::Conflict, "precondition-not-met").with_text("max_items: 1 to 1000, or max")
                    })?
                };
            }
            _ => {}
        }
    }
    Ok(cfg)
}

async fn publish(server: &Server, req: &IqRequest<'_>, op: &Element) -> Result<Option<Element>, StanzaError> {
    let owner = req.require_own()?;
    let node = node_of(op)?;
    let item = op.find("item", NS_PUBSUB);
    let Some(payload) = item.and_then(|i| i.elements().next()) else {
        return Err(pubsub_error(Condition::BadRequest, "item-required"));
    };
    if item.is_some_and(|i| i.elements().count() > 1) {
        return Err(pubsub_error(Condition::BadRequest, "invalid-payload"));
    }
    let id = item.and_then(|i| i.get_attr("id")).filter(|i| !i.is_empty()).map(str::to_string).unwrap_or_else(crate::stanza::new_id);
    let xml = payload.to_xml();
    if xml.len() > MAX_PAYLOAD {
        return Err(pubsub_error(Condition::NotAcceptable, "payload-too-big"));
    }
    let current = server.storage.pep_node(owner.as_str(), &node).await?;
    let cfg = options(req, current)?;
    server.storage.pep_publish(owner.as_str(), &node, &cfg, &id, &xml, super::mam::now_micros()).await?;
    let published = Element::new("item", NS_PUBSUB_EVENT).attr("id", id.clone()).child(payload.clone());
    notify(server, owner, &cfg, Element::new("items", NS_PUBSUB_EVENT).attr("node", node.clone()).child(published)).await;
    Ok(Some(
        Element::new("pubsub", NS_PUBSUB)
            .child(Element::new("publish", NS_PUBSUB).attr("node", node).child(Element::new("item", NS_PUBSUB).attr("id", id))),
    ))
}

async fn retract(server: &Server, req: &IqRequest<'_>, op: &Element) -> Result<Option<Element>, StanzaError> {
    let owner = req.require_own()?;
    let node = node_of(op)?;
    let Some(id) = op.find("item", NS_PUBSUB).and_then(|i| i.get_attr("id")) else {
        return Err(pubsub_error(Condition::BadRequest, "item-required"));
    };
    let Some(cfg) = server.storage.pep_node(owner.as_str(), &node).await? else { return Err(Condition::ItemNotFound.into()) };
    if !server.storage.pep_retract(owner.as_str(), &node, id).await? {
        return Err(Condition::ItemNotFound.into());
    }
    if matches!(op.get_attr("notify"), Some("true") | Some("1")) {
        let gone = Element::new("retract", NS_PUBSUB_EVENT).attr("id", id);
        notify(server, owner, &cfg, Element::new("items", NS_PUBSUB_EVENT).attr("node", node).child(gone)).await;
    }
    Ok(None)
}

/// May `who` read the nodes of `owner` under `access_model`?
async fn may_read(server: &Server, owner: &BareJid, who: &BareJid, access_model: &str) -> Result<bool, StanzaError> {
    if who == owner || access_model == "open" {
        return Ok(true);
    }
    if access_model != "presence" {
        return Ok(false);
    }
    let item = server.storage.roster_item(owner.as_str(), who.as_str()).await?;
    Ok(item.is_some_and(|i| i.subscription.from()))
}

async fn items(server: &Server, req: &IqRequest<'_>, owner: &BareJid, op: &Element) -> Result<Option<Element>, StanzaError> {
    let node = node_of(op)?;
    let Some(cfg) = server.storage.pep_node(owner.as_str(), &node).await? else { return Err(Condition::ItemNotFound.into()) };
    if !may_read(server, owner, &req.from.to_bare(), &cfg.access_model).await? {
        return Err(match cfg.access_model.as_str() {
            "presence" => pubsub_error(Condition::NotAuthorized, "presence-subscription-required").with_type("auth"),
            "roster" => pubsub_error(Condition::NotAuthorized, "not-in-roster-group").with_type("auth"),
            _ => pubsub_error(Condition::NotAllowed, "closed-node").with_type("cancel"),
        });
    }
    let ids: Vec<String> = op.elements().filter(|e| e.name == "item").filter_map(|e| e.get_attr("id").map(str::to_string)).collect();
    let max = op.get_attr("max_items").and_then(|m| m.parse::<i64>().ok()).filter(|m| *m > 0);
    let mut list = Element::new("items", NS_PUBSUB).attr("node", node.clone());
    for (id, xml) in server.storage.pep_items(owner.as_str(), &node, max, &ids).await? {
        list = list.child(stored_item(NS_PUBSUB, id, &xml).await);
    }
    Ok(Some(Element::new("pubsub", NS_PUBSUB).child(list)))
}

/// `pubsub#owner`: deleting a node (XEP-0060 section 8.4).
fn owner<'a>(server: &'a Server, req: IqRequest<'a>) -> IqFuture<'a> {
    Box::pin(async move {
        let owner = req.require_own()?;
        let Some(op) = req.payload.elements().next() else { return Err(Condition::BadRequest.into()) };
        if !(req.is_set() && op.name == "delete") {
            return Err(StanzaError::new(Condition::FeatureNotImplemented)
                .with_app(Element::new("unsupported", NS_PUBSUB_ERRORS).attr("feature", op.name.clone())));
        }
        let node = node_of(op)?;
        let Some(cfg) = server.storage.pep_node(owner.as_str(), &node).await? else { return Err(Condition::ItemNotFound.into()) };
        server.storage.pep_delete_node(owner.as_str(), &node).await?;
        notify(server, owner, &cfg, Element::new("delete", NS_PUBSUB_EVENT).attr("node", node)).await;
        Ok(None)
    })
}

/// An event to the owner's available resources and to those of the contacts who may read the
/// node (XEP-0163 section 4.3), as headline messages from the owner's bare JID.
async fn notify(server: &Server, owner: &BareJid, cfg: &PepNode, event: Element) {
    let Some(node) = event.get_attr("node").map(|n| format!("{n}+notify")) else { return };
    let mut readers = vec![owner.clone()];
    if matches!(cfg.access_model.as_str(), "presence" | "open") {
        match server.storage.roster(owner.as_str()).await {
            Ok(items) => readers.extend(items.iter().filter(|i| i.subscription.from()).filter_map(|i| BareJid::new(&i.contact).ok())),
            Err(e) => tracing::error!(error = %e, "loading the roster for PEP notifications"),
        }
    }
    let event = Element::new("event", NS_PUBSUB_EVENT).child(event);
    for reader in readers {
        if !server.is_local_domain(reader.domain().as_str()) {
            // A contact on another server: its resources whose presence reached the owner and
            // whose caps ask for the node.
            for to in server.pep_remote.wanting(server, owner, &reader, &node) {
                send_event(server, owner, &to, event.clone()).await;
            }
            continue;
        }
        let wants = |s: &crate::session::SessionEntry| {
            s.available && s.caps.as_ref().and_then(|v| server.caps.features(v)).is_some_and(|f| f.contains(&node))
        };
        for s in server.sessions.sessions(&reader, wants) {
            send_event(server, owner, &s.jid, event.clone()).await;
        }
    }
}

/// An item as stored, in namespace `ns` (pubsub for a query, pubsub#event for an event).
async fn stored_item(ns: &str, id: String, xml: &str) -> Element {
    let mut item = Element::new("item", ns).attr("id", id);
    if let Some(p) = crate::xml::parse_stored(xml).await {
        item.children.push(Node::Element(p));
    }
    item
}

/// A pubsub event from `owner` to one of a reader's resources, as a headline message.
async fn send_event(server: &Server, owner: &BareJid, to: &FullJid, event: Element) {
    let m = Element::new("message", ns::CLIENT)
        .attr("from", owner.to_string())
        .attr("to", to.to_string())
        .attr("type", "headline")
        .attr("id", crate::stanza::new_id())
        .child(event);
    crate::router::route_element(server, m).await;
}

/// A resource came online (or its features became known): the last item of every node it
/// wants (`+notify`), of its own account and of the contacts whose presence it receives and
/// whose nodes it may read (XEP-0163 section 4.3.2).
pub async fn came_online(server: &Server, who: &FullJid, features: &HashSet<String>) {
    if !features.iter().any(|f| f.ends_with("+notify")) {
        return;
    }
    if !server.is_local_domain(who.domain().as_str()) {
        // A contact on another server: the nodes of the local accounts it sent presence to.
        for owner in server.pep_remote.owners_seen_by(who) {
            last_items_of(server, &owner, who, features).await;
        }
        return;
    }
    let me = who.to_bare();
    let mut owners = vec![me.clone()];
    match server.storage.roster(me.as_str()).await {
        Ok(items) => owners.extend(
            items
                .iter()
                .filter(|i| i.subscription.to())
                .filter_map(|i| BareJid::new(&i.contact).ok())
                .filter(|j| j.node().is_some() && server.is_local_domain(j.domain().as_str())),
        ),
        Err(e) => tracing::error!(error = %e, "loading the roster for PEP last items"),
    }
    for owner in owners {
        last_items_of(server, &owner, who, features).await;
    }
}

/// The last item of each of `owner`'s nodes that `who` wants and may read.
async fn last_items_of(server: &Server, owner: &BareJid, who: &FullJid, features: &HashSet<String>) {
    let me = who.to_bare();
    let nodes = match server.storage.pep_nodes(owner.as_str()).await {
        Ok(n) => n,
        Err(e) => return tracing::error!(error = %e, "listing PEP nodes"),
    };
    for (node, cfg) in nodes.into_iter().filter(|(n, _)| features.contains(&format!("{n}+notify"))) {
        if !may_read(server, owner, &me, &cfg.access_model).await.unwrap_or(false) {
            continue;
        }
        let Ok(last) = server.storage.pep_items(owner.as_str(), &node, Some(1), &[]).await else { continue };
        for (id, xml) in last {
            let items =
                Element::new("items", NS_PUBSUB_EVENT).attr("node", node.clone()).child(stored_item(NS_PUBSUB_EVENT, id, &xml).await);
            send_event(server, owner, who, Element::new("event", NS_PUBSUB_EVENT).child(items)).await;
        }
    }
}

/// Resources of contacts on other servers whose presence reached local accounts, with the caps
/// `ver` they announced: what PEP knows of remote readers (XEP-0163 section 4.3.1 asks for
/// their full JIDs and `+notify` features, as for local ones).
#[derive(Default)]
pub struct RemoteReaders {
    /// Local account -> (remote resource -> its caps `ver`).
    seen: std::sync::Mutex<HashMap<BareJid, HashMap<FullJid, Option<String>>>>,
}

/// Remote resources remembered per local account; past it the oldest knowledge is dropped.
const MAX_REMOTE_PER_ACCOUNT: usize = 1_000;

impl RemoteReaders {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<BareJid, HashMap<FullJid, Option<String>>>> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Record `who`'s presence to `owner`: `Some(ver)` available (with caps or not), `None`
    /// gone. Returns whether it was not known as available before.
    fn update(&self, owner: &BareJid, who: &FullJid, available: Option<Option<String>>) -> bool {
        let mut seen = self.lock();
        match available {
            Some(ver) => {
                let m = seen.entry(owner.clone()).or_default();
                if m.len() >= MAX_REMOTE_PER_ACCOUNT && !m.contains_key(who) {
                    m.clear();
                }
                m.insert(who.clone(), ver).is_none()
            }
            None => {
                if let Some(m) = seen.get_mut(owner) {
                    m.remove(who);
                    if m.is_empty() {
                        seen.remove(owner);
                    }
                }
                false
            }
        }
    }

    /// `reader`'s resources known to `owner` whose features ask for `notify` (`node+notify`).
    fn wanting(&self, server: &Server, owner: &BareJid, reader: &BareJid, notify: &str) -> Vec<FullJid> {
        let seen = self.lock();
        let Some(m) = seen.get(owner) else { return Vec::new() };
        m.iter()
            .filter(|(j, _)| &j.to_bare() == reader)
            .filter(|(_, v)| v.as_ref().and_then(|v| server.caps.features(v)).is_some_and(|f| f.contains(notify)))
            .map(|(j, _)| j.clone())
            .collect()
    }

    /// No remote resource is known.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// The local accounts `who` sent its presence to.
    fn owners_seen_by(&self, who: &FullJid) -> Vec<BareJid> {
        self.lock().iter().filter(|(_, m)| m.contains_key(who)).map(|(o, _)| o.clone()).collect()
    }
}

/// Presence from a resource on another server reached `owner`: remember it (or forget it), ask
/// for its caps if they are new, and send it the last items it wants once they are known.
pub async fn remote_presence(server: &Server, owner: &BareJid, st: &crate::stanza::Stanza) {
    // Most presence is local: decided before anything is copied.
    let Some(from) = &st.from else { return };
    if crate::s2s::serves(server, from.domain().as_str()) {
        return;
    }
    let Ok(who) = from.clone().try_into_full() else { return };
    if st.typ().is_some() {
        server.pep_remote.update(owner, &who, None);
        return;
    }
    let caps = super::caps::announced(&st.el);
    let new = server.pep_remote.update(owner, &who, Some(caps.as_ref().map(|(_, v)| v.clone())));
    if let Some((node, ver)) = caps {
        if let Some(features) = super::caps::on_presence_from(server, owner.domain().as_str(), &who, &node, &ver).await {
            if new {
                last_items_of(server, owner, &who, &features).await;
            }
        }
    }
}
