//! Group chat (XEP-0045 Multi-User Chat), served at `conference.<host>`.
//!
//! The service is a router destination of its own (`router::Destination::Service`). Every
//! room that has occupants (or is being asked about) runs as one task with its own mailbox
//! (`room.rs`): the room's state belongs to that task alone, so a room needs no lock and rooms
//! never wait for each other. The service only finds, loads or creates the room a stanza is
//! for and hands the stanza over.
//!
//! A room fans a message out to its occupants' sessions directly: one serialization shared by
//! every recipient (`Outgoing::to_each`), one archive row per message (the room's archive, owner
//! = the room's JID), not one per occupant.
//!
//! Persistent rooms and their affiliations are stored (`storage::muc`); a room's task ends when
//! its last occupant leaves and is started again, from storage, by the next stanza for it.

pub mod config;
mod room;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::mpsc;

use super::{Module, Spec};
use crate::error::{Condition, StanzaError};
use crate::jid::{BareJid, Jid};
use crate::server::Server;
use crate::stanza::{Kind, Stanza};
use crate::xml::{ns, Element};

pub const NS_MUC: &str = "http://jabber.org/protocol/muc";
pub const NS_USER: &str = "http://jabber.org/protocol/muc#user";
pub const NS_ADMIN: &str = "http://jabber.org/protocol/muc#admin";
pub const NS_OWNER: &str = "http://jabber.org/protocol/muc#owner";
pub const NS_ROOMINFO: &str = "http://jabber.org/protocol/muc#roominfo";
pub const NS_DATA: &str = ns::DATA;
pub const NS_STABLE_ID: &str = "http://jabber.org/protocol/muc#stable_id";
pub const NS_SELF_PING: &str = "http://jabber.org/protocol/muc#self-ping-optimization";
pub const NS_OCCUPANT_ID: &str = "urn:xmpp:occupant-id:0";
pub const NS_MODERATE: &str = "urn:xmpp:message-moderate:1";
pub const NS_RETRACT: &str = "urn:xmpp:message-retract:1";

pub const MODULE: Module = Module {
    name: "muc",
    specs: &[
        Spec {
            id: "XEP-0045",
            title: "Multi-User Chat",
            note: "rooms as tasks; roles, affiliations, members-only, passwords, moderation, invitations, persistent rooms",
        },
        Spec { id: "XEP-0410", title: "MUC Self-Ping (Schrödinger's Chat)", note: "answered by the room" },
        Spec {
            id: "XEP-0421",
            title: "Anonymous unique occupant identifiers for MUCs",
            note: "HMAC of room and account under a stored key",
        },
        Spec {
            id: "XEP-0425",
            title: "Moderated Message Retraction",
            note: "v0.3 (message-moderate:1); the archived message becomes a tombstone",
        },
    ],
    host_features: &[],
    account_features: &[],
    iq: &[],
};

/// Room mailbox depth: a sender waits (back-pressure) when a room is this far behind.
const ROOM_MAILBOX: usize = 1024;

/// The group chat service of every served host.
pub struct Service {
    /// `conference.<host>` for each host.
    domains: HashSet<String>,
    /// Rooms with a running task, each with the number its task was started under.
    rooms: Mutex<HashMap<BareJid, (u64, mpsc::Sender<Stanza>)>>,
    started: std::sync::atomic::AtomicU64,
    /// Loading or creating a room happens once at a time, so two first stanzas for the same
    /// room do not start two tasks.
    starting: tokio::sync::Mutex<()>,
    /// Live public rooms and their names (disco#items), kept by the rooms themselves.
    public: Mutex<HashMap<BareJid, String>>,
    /// The key occupant ids (XEP-0421) are made with, loaded (or made) with the first room.
    occupant_key: tokio::sync::OnceCell<Arc<ring::hmac::Key>>,
    /// The server, for room tasks (set once it is built).
    server: std::sync::OnceLock<Weak<Server>>,
}

impl Service {
    pub fn new(cfg: &crate::config::Config) -> Option<Arc<Service>> {
        if !cfg.muc.enabled {
            return None;
        }
        let domains = cfg.server.hosts.iter().map(|h| format!("{}.{h}", cfg.muc.subdomain)).collect();
        Some(Arc::new(Service {
            domains,
            rooms: Default::default(),
            started: Default::default(),
            starting: Default::default(),
            public: Default::default(),
            occupant_key: Default::default(),
            server: Default::default(),
        }))
    }

    pub fn attach(&self, server: &Arc<Server>) {
        let _ = self.server.set(Arc::downgrade(server));
    }

    pub fn serves(&self, domain: &str) -> bool {
        self.domains.contains(domain)
    }

    pub fn domains(&self) -> impl Iterator<Item = &String> {
        self.domains.iter()
    }

    /// Rooms with a running task.
    pub fn live_count(&self) -> usize {
        self.rooms.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// The room has a running task (occupants, or stanzas being handled).
    pub fn is_live(&self, room: &BareJid) -> bool {
        self.room_tx(room).is_some()
    }

    fn room_tx(&self, room: &BareJid) -> Option<mpsc::Sender<Stanza>> {
        self.rooms.lock().unwrap_or_else(|p| p.into_inner()).get(room).map(|(_, tx)| tx.clone())
    }

    /// A stanza addressed to the service or to one of its rooms. (Boxed: a room that stops
    /// routes what it still holds to its successor, through here.)
    pub fn route<'a>(
        self: &'a Arc<Self>,
        server: &'a Server,
        stanza: Stanza,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>> {
        Box::pin(self.route_now(server, stanza))
    }

    async fn route_now(self: &Arc<Self>, server: &Server, stanza: Stanza) {
        let Some(to) = stanza.to.clone() else { return };
        let Some(node) = to.node() else {
            return self.to_service(server, stanza).await;
        };
        if stanza.kind == Kind::Presence && stanza.typ().is_none() && to.resource().is_none() {
            // XEP-0045 section 7.2.1: entering needs a nick.
            let e = StanzaError::new(Condition::JidMalformed).with_text("a nickname is required");
            return crate::router::bounce(server, &stanza, e).await;
        }
        let room = BareJid::from_parts(Some(node), to.domain());
        let mut stanza = stanza;
        // A room that stopped between lookup and send is started again (three tries).
        for _ in 0..3 {
            let tx = match self.room_tx(&room) {
                Some(tx) => tx,
                None => match self.start_room(server, &room, &stanza).await {
                    Ok(Some(tx)) => tx,
                    Ok(None) => return,
                    Err(e) => return crate::router::bounce(server, &stanza, e).await,
                },
            };
            match tx.send(stanza).await {
                Ok(()) => return,
                Err(mpsc::error::SendError(back)) => {
                    // The room's task is gone (stopped, or failed): forget it if it is still
                    // listed, so the next attempt starts the room again.
                    let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
                    if rooms.get(&room).is_some_and(|(_, t)| t.same_channel(&tx)) {
                        rooms.remove(&room);
                    }
                    stanza = back;
                }
            }
        }
        tracing::warn!(%room, "room kept stopping; stanza dropped");
    }

    /// Load a stored room, or create one for a join. `Ok(None)`: nothing to do (the stanza
    /// needs no answer).
    async fn start_room(
        self: &Arc<Self>,
        server: &Server,
        room: &BareJid,
        stanza: &Stanza,
    ) -> Result<Option<mpsc::Sender<Stanza>>, StanzaError> {
        let _starting = self.starting.lock().await;
        if let Some(tx) = self.room_tx(room) {
            return Ok(Some(tx));
        }
        if stanza.is_error() || stanza.kind == Kind::Iq && stanza.typ() == Some("result") {
            return Ok(None); // answers for a room that is gone
        }
        let Some(arc) = self.server.get().and_then(Weak::upgrade) else { return Ok(None) };
        let key = self
            .occupant_key
            .get_or_try_init(|| async {
                let secret = server.storage.server_key("muc-occupant-id").await?;
                Ok::<_, crate::storage::StorageError>(Arc::new(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes())))
            })
            .await?
            .clone();
        let state = match server.storage.muc_room(room.as_str()).await? {
            Some(stored) => room::Room::load(arc, self.clone(), key, room.clone(), stored).await?,
            None => {
                let join =
                    stanza.kind == Kind::Presence && stanza.typ().is_none() && stanza.to.as_ref().is_some_and(|t| t.resource().is_some());
                if !join {
                    if stanza.kind == Kind::Presence {
                        return Ok(None);
                    }
                    return Err(StanzaError::new(Condition::ItemNotFound).with_text("no such room"));
                }
                let Some(creator) = stanza.from.as_ref().filter(|f| f.node().is_some() && server.is_local_domain(f.domain().as_str()))
                else {
                    return Err(StanzaError::new(Condition::NotAllowed).with_text("rooms are created by local accounts"));
                };
                room::Room::create(arc, self.clone(), key, room.clone(), creator.to_bare())
            }
        };
        let (tx, rx) = mpsc::channel(ROOM_MAILBOX);
        let n = self.started.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.rooms.lock().unwrap_or_else(|p| p.into_inner()).insert(room.clone(), (n, tx.clone()));
        tokio::spawn(state.run(rx, n));
        Ok(Some(tx))
    }

    /// The room's task is ending: forget it, unless a newer task already took its place.
    fn stopped(&self, room: &BareJid, n: u64) -> bool {
        let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        if rooms.get(room).is_some_and(|(m, _)| *m == n) {
            rooms.remove(room);
            return true;
        }
        false
    }

    fn list(&self, room: &BareJid, name: String) {
        self.public.lock().unwrap_or_else(|p| p.into_inner()).insert(room.clone(), name);
    }

    fn unlist(&self, room: &BareJid) {
        self.public.lock().unwrap_or_else(|p| p.into_inner()).remove(room);
    }

    /// disco#info and disco#items of the service itself (XEP-0045 sections 6.1, 6.3).
    async fn to_service(&self, server: &Server, stanza: Stanza) {
        let reply: Result<Option<Element>, StanzaError> = match (stanza.kind, stanza.payload()) {
            (Kind::Iq, Some(q)) if stanza.typ() == Some("get") && q.is("query", ns::DISCO_INFO) && q.get_attr("node").is_none() => {
                Ok(Some(
                    Element::new("query", ns::DISCO_INFO)
                        .child(
                            Element::new("identity", ns::DISCO_INFO)
                                .attr("category", "conference")
                                .attr("type", "text")
                                .attr("name", "Chatrooms"),
                        )
                        .child(Element::new("feature", ns::DISCO_INFO).attr("var", ns::DISCO_INFO))
                        .child(Element::new("feature", ns::DISCO_INFO).attr("var", ns::DISCO_ITEMS))
                        .child(Element::new("feature", ns::DISCO_INFO).attr("var", NS_MUC))
                        .child(Element::new("feature", ns::DISCO_INFO).attr("var", NS_STABLE_ID))
                        .child(Element::new("feature", ns::DISCO_INFO).attr("var", NS_SELF_PING)),
                ))
            }
            (Kind::Iq, Some(q)) if stanza.typ() == Some("get") && q.is("query", ns::DISCO_ITEMS) && q.get_attr("node").is_none() => {
                self.public_rooms(server, stanza.to.as_ref().map(|t| t.domain().as_str()).unwrap_or("")).await
            }
            (Kind::Iq, _) if matches!(stanza.typ(), Some("get") | Some("set")) => Err(Condition::ServiceUnavailable.into()),
            (Kind::Message, _) if !stanza.is_error() => Err(Condition::ServiceUnavailable.into()),
            _ => return,
        };
        let reply = match reply {
            Ok(payload) => Some(stanza.iq_result(payload)),
            Err(e) => stanza.error_reply(&e),
        };
        if let Some(r) = reply {
            crate::router::route_element(server, r).await;
        }
    }

    /// Public rooms: stored persistent ones and live temporary ones.
    async fn public_rooms(&self, server: &Server, domain: &str) -> Result<Option<Element>, StanzaError> {
        let mut q = Element::new("query", ns::DISCO_ITEMS);
        let mut listed = HashSet::new();
        for (jid, cfg) in server.storage.muc_rooms_on(domain).await? {
            let cfg: config::RoomConfig = serde_json::from_str(&cfg).unwrap_or_default();
            if cfg.public {
                let name = if cfg.name.is_empty() { jid.split('@').next().unwrap_or("").to_string() } else { cfg.name };
                q = q.child(Element::new("item", ns::DISCO_ITEMS).attr("jid", jid.clone()).attr("name", name));
            }
            listed.insert(jid);
        }
        let live: Vec<(BareJid, String)> =
            self.public.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(j, n)| (j.clone(), n.clone())).collect();
        for (room, name) in live.into_iter().filter(|(r, _)| r.domain().as_str() == domain && !listed.contains(r.as_str())) {
            q = q.child(Element::new("item", ns::DISCO_ITEMS).attr("jid", room.to_string()).attr("name", name));
        }
        Ok(Some(q))
    }
}

/// `<x xmlns='http://jabber.org/protocol/muc#user'>` with status codes.
fn user_x(codes: &[u16]) -> Element {
    let mut x = Element::new("x", NS_USER);
    for c in codes {
        x = x.child(Element::new("status", NS_USER).attr("code", c.to_string()));
    }
    x
}

/// The occupant JID `room/nick`.
fn occupant_jid(room: &BareJid, nick: &str) -> Option<Jid> {
    crate::jid::parse(&format!("{room}/{nick}"))
}
