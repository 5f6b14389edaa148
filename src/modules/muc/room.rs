//! One room: its state and the task that owns it (XEP-0045). Everything for the room arrives
//! through its mailbox, one stanza at a time, so the state needs no lock.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use tokio::sync::mpsc;

use super::config::{RoomConfig, Whois};
use super::{
    occupant_jid, user_x, Service, NS_ADMIN, NS_DATA, NS_MODERATE, NS_MUC, NS_OCCUPANT_ID, NS_OWNER, NS_RETRACT, NS_ROOMINFO, NS_USER,
};
use crate::error::{Condition, StanzaError};
use crate::jid::{BareJid, FullJid, Jid};
use crate::modules::mam;
use crate::modules::time::xmpp_datetime_micros;
use crate::server::Server;
use crate::session::mailbox::mailbox;
use crate::session::registry::{push, Mailbox};
use crate::session::{Deliver, Outgoing};
use crate::stanza::{Kind, Stanza};
use crate::storage::archive::ArchiveFilter;
use crate::storage::muc::StoredRoom;
use crate::xml::{ns, Element, Node};

/// Affiliations, lowest first (XEP-0045 section 5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Affiliation {
    Outcast,
    None,
    Member,
    Admin,
    Owner,
}

impl Affiliation {
    fn name(self) -> &'static str {
        match self {
            Affiliation::Outcast => "outcast",
            Affiliation::None => "none",
            Affiliation::Member => "member",
            Affiliation::Admin => "admin",
            Affiliation::Owner => "owner",
        }
    }

    fn parse(s: &str) -> Option<Affiliation> {
        Some(match s {
            "outcast" => Affiliation::Outcast,
            "none" => Affiliation::None,
            "member" => Affiliation::Member,
            "admin" => Affiliation::Admin,
            "owner" => Affiliation::Owner,
            _ => return None,
        })
    }
}

/// Roles, lowest first (XEP-0045 section 5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    None,
    Visitor,
    Participant,
    Moderator,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::None => "none",
            Role::Visitor => "visitor",
            Role::Participant => "participant",
            Role::Moderator => "moderator",
        }
    }

    fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "none" => Role::None,
            "visitor" => Role::Visitor,
            "participant" => Role::Participant,
            "moderator" => Role::Moderator,
            _ => return None,
        })
    }
}

/// One session of an occupant, with its mailbox kept so fan-out needs no registry lookup.
struct Seat {
    jid: FullJid,
    tx: Option<Mailbox>,
    /// Not a local session but an address the router reaches (an external component's or an
    /// HTTP bot's): `tx` is a relay that routes what the room sends it.
    relayed: bool,
}

impl Seat {
    /// The seat of `jid` joining: a local session's mailbox, or a relay for any other address.
    fn new(server: &Arc<Server>, jid: FullJid) -> Seat {
        if server.is_local_domain(jid.domain().as_str()) {
            return Seat { tx: server.sessions.get(&jid).map(|s| s.tx), jid, relayed: false };
        }
        let (tx, mut rx) = mailbox(server.config.c2s.mailbox_size);
        let (server, to) = (server.clone(), jid.to_string());
        // Ends when the seat is dropped (its last sender) or told to close (an overflow).
        tokio::spawn(async move {
            while let Some(Deliver::Stanza(out)) = rx.recv().await {
                let mut el = out.el.clone();
                el.set_attr("to", to.clone());
                crate::router::route_element(&server, el).await;
            }
        });
        Seat { jid, tx: Some(tx), relayed: true }
    }

    /// Still reachable, as far as the room can tell without sending. A relayed seat is not
    /// once its relay closed or its component is no longer connected: the occupant then
    /// leaves (333) like one whose session vanished.
    fn alive(&self, server: &Server) -> bool {
        match &self.tx {
            Some(tx) if self.relayed => {
                let d = self.jid.domain().as_str();
                !tx.is_closed() && (!server.components.serves(d) || server.components.is_connected(d))
            }
            _ => server.sessions.get(&self.jid).is_some(),
        }
    }
}

struct Occupant {
    nick: String,
    /// XEP-0421: the same for an account in this room whatever its nick, unlinkable elsewhere.
    id: String,
    real: BareJid,
    /// Usually one; more when the same account joins with the same nick from several clients.
    seats: Vec<Seat>,
    role: Role,
    /// The children of the occupant's last presence (show, status, caps), muc payloads removed.
    presence: Vec<Element>,
    /// Its current presence as others see it, without and with its real JID: shared by every
    /// newcomer's roster of occupants (a join would otherwise build N presences). Set by each
    /// plain broadcast of its presence, cleared by any other.
    shown: Option<[Arc<Outgoing>; 2]>,
}

struct History {
    out: Arc<Outgoing>,
    ts: i64,
}

#[derive(Default)]
struct Subject {
    text: String,
    /// The nick that set it (empty: the room).
    by: String,
    ts: i64,
}

pub struct Room {
    server: Arc<Server>,
    service: Arc<Service>,
    occupant_key: Arc<ring::hmac::Key>,
    jid: BareJid,
    config: RoomConfig,
    affiliations: HashMap<BareJid, (Affiliation, String)>,
    /// In join order.
    occupants: Vec<Occupant>,
    subject: Subject,
    history: VecDeque<History>,
    /// New and not configured yet: only owners may enter (section 10.1.1).
    locked: bool,
    /// Created by the join being handled: its self-presence carries 201.
    created: bool,
    /// Has a row in `muc_rooms`.
    stored: bool,
    destroyed: bool,
    /// Queries relayed to occupants, by the room's id: (asker, asker's id, occupant asked).
    relayed: HashMap<String, (Jid, String, FullJid)>,
    relay_order: VecDeque<String>,
    relay_seq: u64,
}

/// Relayed queries remembered per room; an answer later than this many newer queries is lost.
const MAX_RELAYED: usize = 256;

/// How a removed occupant left, for the status codes of its unavailable presence.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Removal {
    Left,
    Kicked,
    Banned,
    MembersOnly,
    Gone,
}

impl Removal {
    fn code(self) -> Option<u16> {
        match self {
            Removal::Left => None,
            Removal::Kicked => Some(307),
            Removal::Banned => Some(301),
            Removal::MembersOnly => Some(321),
            Removal::Gone => Some(333),
        }
    }
}

fn forbidden(text: &str) -> StanzaError {
    StanzaError::new(Condition::Forbidden).with_type("auth").with_text(text)
}

impl Room {
    /// A room with no one in it yet.
    fn empty(server: Arc<Server>, service: Arc<Service>, occupant_key: Arc<ring::hmac::Key>, jid: BareJid, config: RoomConfig) -> Room {
        Room {
            server,
            service,
            occupant_key,
            jid,
            config,
            affiliations: HashMap::new(),
            occupants: Vec::new(),
            subject: Subject::default(),
            history: VecDeque::new(),
            locked: false,
            created: false,
            stored: false,
            destroyed: false,
            relayed: HashMap::new(),
            relay_order: VecDeque::new(),
            relay_seq: 0,
        }
    }

    /// A new room, locked until its creator (its owner) configures it (section 10.1).
    pub fn create(server: Arc<Server>, service: Arc<Service>, occupant_key: Arc<ring::hmac::Key>, jid: BareJid, creator: BareJid) -> Room {
        let config = RoomConfig::new_room(&server.config.muc);
        let mut room = Room::empty(server, service, occupant_key, jid, config);
        room.affiliations.insert(creator, (Affiliation::Owner, String::new()));
        room.locked = true;
        room.created = true;
        room
    }

    /// A stored room, with its affiliations, subject and the end of its archive as history.
    pub async fn load(
        server: Arc<Server>,
        service: Arc<Service>,
        occupant_key: Arc<ring::hmac::Key>,
        jid: BareJid,
        stored: StoredRoom,
    ) -> Result<Room, StanzaError> {
        let config: RoomConfig = serde_json::from_str(&stored.config).unwrap_or_else(|e| {
            tracing::error!(room = %jid, error = %e, "unreadable room configuration; defaults used");
            RoomConfig::new_room(&server.config.muc)
        });
        let mut room = Room::empty(server, service, occupant_key, jid, config);
        let (server, jid) = (room.server.clone(), room.jid.to_string());
        for (j, a, reason) in server.storage.muc_affiliations(&jid).await? {
            if let (Ok(j), Some(a)) = (BareJid::new(&j), Affiliation::parse(&a)) {
                room.affiliations.insert(j, (a, reason));
            }
        }
        let size = server.config.muc.history_size;
        if room.config.archive && size > 0 {
            let f = ArchiveFilter { owner: jid, backward: true, limit: size, ..Default::default() };
            for row in server.storage.archive_query(&f).await?.into_iter().rev() {
                if let Some(el) = crate::xml::parse_stored(&row.xml).await {
                    if el.find("body", ns::CLIENT).is_some() {
                        room.history.push_back(History { out: Outgoing::to_each(el), ts: row.ts });
                    }
                }
            }
        }
        room.subject = Subject { text: stored.subject, by: stored.subject_by, ts: stored.subject_ts };
        room.stored = true;
        Ok(room)
    }

    /// The room's task: one stanza at a time until the room is empty.
    pub async fn run(mut self, mut rx: mpsc::Receiver<Stanza>, n: u64) {
        self.list();
        loop {
            let Some(st) = rx.recv().await else { break };
            self.handle(st).await;
            if !self.occupants.is_empty() {
                continue;
            }
            // Empty: the task ends (a persistent room is stored; the next stanza loads it).
            if self.service.stopped(&self.jid, n) {
                self.service.unlist(&self.jid);
                if !self.config.persistent && self.stored {
                    self.unstore().await;
                }
                rx.close();
                let mut rest = Vec::new();
                while let Ok(st) = rx.try_recv() {
                    rest.push(st);
                }
                drop(rx);
                // Whatever arrived meanwhile goes to the room's next incarnation.
                let service = self.service.clone();
                for st in rest {
                    service.route(&self.server, st).await;
                }
                return;
            }
        }
        self.service.unlist(&self.jid);
    }

    fn list(&self) {
        if self.config.public && !self.locked && !self.destroyed {
            let name = if self.config.name.is_empty() {
                self.jid.node().map(|n| n.to_string()).unwrap_or_default()
            } else {
                self.config.name.clone()
            };
            self.service.list(&self.jid, name);
        } else {
            self.service.unlist(&self.jid);
        }
    }

    async fn handle(&mut self, st: Stanza) {
        let Some(from) = st.from.clone() else { return };
        let nick = st.to.as_ref().and_then(|t| t.resource()).map(|r| r.as_str().to_string());
        match st.kind {
            Kind::Presence => self.on_presence(st, from, nick).await,
            Kind::Message => self.on_message(st, from, nick).await,
            Kind::Iq => self.on_iq(st, from, nick).await,
        }
    }

    // ----------------------------------------------------------------------- helpers ----

    /// XEP-0421 section 4: an id from the room and the account, under the service's key.
    fn occupant_id(&self, real: &BareJid) -> String {
        use base64::Engine;
        let tag = ring::hmac::sign(&self.occupant_key, format!("{}\0{}", self.jid, real).as_bytes());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&tag.as_ref()[..18])
    }

    fn affiliation(&self, j: &BareJid) -> Affiliation {
        // The service's own address speaks for the server's administrators (the REST API):
        // only the server itself can send from it.
        if j.node().is_none() && j.domain() == self.jid.domain() {
            return Affiliation::Owner;
        }
        self.affiliations.get(j).map(|(a, _)| *a).unwrap_or(Affiliation::None)
    }

    fn default_role(&self, a: Affiliation) -> Role {
        match a {
            Affiliation::Owner | Affiliation::Admin => Role::Moderator,
            Affiliation::Member => Role::Participant,
            Affiliation::None if self.config.moderated => Role::Visitor,
            Affiliation::None => Role::Participant,
            Affiliation::Outcast => Role::None,
        }
    }

    fn by_nick(&self, nick: &str) -> Option<usize> {
        self.occupants.iter().position(|o| o.nick == nick)
    }

    /// The occupant one of whose sessions is `from`.
    fn by_seat(&self, from: &Jid) -> Option<usize> {
        self.occupants.iter().position(|o| o.seats.iter().any(|s| s.jid.as_str() == from.as_str()))
    }

    fn seat_index(&self, jid: &FullJid) -> Option<(usize, usize)> {
        self.occupants.iter().enumerate().find_map(|(i, o)| o.seats.iter().position(|s| &s.jid == jid).map(|s| (i, s)))
    }

    fn sees_jids(&self, viewer: &Occupant) -> bool {
        self.config.whois == Whois::Anyone || viewer.role == Role::Moderator
    }

    async fn send_error(&self, st: &Stanza, e: StanzaError) {
        if let Some(reply) = st.error_reply(&e) {
            crate::router::route_element(&self.server, reply).await;
        }
    }

    async fn send_result(&self, st: &Stanza, payload: Option<Element>) {
        crate::router::route_element(&self.server, st.iq_result(payload)).await;
    }

    /// Push to one seat; `false` when its session is gone.
    fn push_seat(server: &Server, seat: &mut Seat, out: &Arc<Outgoing>) -> bool {
        if seat.relayed && !seat.alive(server) {
            return false;
        }
        if let Some(tx) = &seat.tx {
            if push(tx, &seat.jid, Deliver::Stanza(out.clone())) {
                return true;
            }
        }
        if seat.relayed {
            return false;
        }
        // Not known yet, or closed: the resource may have a new session.
        match server.sessions.get(&seat.jid) {
            Some(s) => {
                seat.tx = Some(s.tx.clone());
                push(&s.tx, &seat.jid, Deliver::Stanza(out.clone()))
            }
            None => {
                seat.tx = None;
                false
            }
        }
    }

    /// Occupants whose every session is gone, found while sending: they leave (333).
    async fn drop_vanished(&mut self, vanished: Vec<String>) {
        for nick in vanished {
            if let Some(i) = self.by_nick(&nick) {
                let server = self.server.clone();
                self.occupants[i].seats.retain(|s| s.alive(&server));
                if self.occupants[i].seats.is_empty() {
                    self.remove(i, Removal::Gone, None, None).await;
                }
            }
        }
    }

    /// The room's fan-out: to each occupant what `pick` chooses for it (by index, and whether
    /// it sees real JIDs), one serialization shared by all who get the same. Occupants whose
    /// every session turns out to be gone then leave (333).
    async fn fan_out<'a>(&mut self, pick: impl Fn(usize, bool) -> &'a Arc<Outgoing>) {
        let server = self.server.clone();
        let sees: Vec<bool> = self.occupants.iter().map(|v| self.sees_jids(v)).collect();
        let mut vanished = Vec::new();
        for (j, o) in self.occupants.iter_mut().enumerate() {
            let out = pick(j, sees[j]);
            let mut any = false;
            for seat in &mut o.seats {
                any |= Self::push_seat(&server, seat, out);
            }
            if !any {
                vanished.push(o.nick.clone());
            }
        }
        if !vanished.is_empty() {
            Box::pin(self.drop_vanished(vanished)).await;
        }
    }

    /// One stanza to every occupant.
    async fn broadcast(&mut self, out: Arc<Outgoing>) {
        self.fan_out(|_, _| &out).await;
    }

    fn item(&self, o: &Occupant, with_jid: bool) -> Element {
        let mut item = Element::new("item", NS_USER).attr("affiliation", self.affiliation(&o.real).name()).attr("role", o.role.name());
        if with_jid {
            if let Some(s) = o.seats.first() {
                item = item.attr("jid", s.jid.to_string());
            }
        }
        item
    }

    /// Occupant `o`'s presence as seen by others (`with_jid` for those who see real JIDs).
    fn presence_of(&self, o: &Occupant, typ: Option<&str>, with_jid: bool, codes: &[u16], item_extra: &[Element]) -> Element {
        let mut p = Element::new("presence", ns::CLIENT).attr_opt("type", typ);
        if let Some(from) = occupant_jid(&self.jid, &o.nick) {
            p.set_attr("from", from.to_string());
        }
        for c in &o.presence {
            if typ.is_none() || c.name == "status" {
                p.children.push(Node::Element(c.clone()));
            }
        }
        p.children.push(Node::Element(Element::new("occupant-id", NS_OCCUPANT_ID).attr("id", o.id.clone())));
        let mut item = self.item(o, with_jid);
        for e in item_extra {
            item = item.child(e.clone());
        }
        let mut x = user_x(&[]).child(item);
        for c in codes {
            x = x.child(Element::new("status", NS_USER).attr("code", c.to_string()));
        }
        p.child(x)
    }

    /// Occupant `i`'s presence to everyone: others see it with or without the real JID, its
    /// own sessions with 110 and `self_codes`.
    async fn broadcast_presence(&mut self, i: usize, typ: Option<&str>, codes: &[u16], self_codes: &[u16], item_extra: &[Element]) {
        let o = &self.occupants[i];
        let anon = Outgoing::to_each(self.presence_of(o, typ, false, codes, item_extra));
        let named = Outgoing::to_each(self.presence_of(o, typ, true, codes, item_extra));
        let mut own_codes = codes.to_vec();
        own_codes.extend_from_slice(self_codes);
        own_codes.push(110);
        let own = Outgoing::to_each(self.presence_of(o, typ, true, &own_codes, item_extra));
        self.occupants[i].shown = (typ.is_none() && codes.is_empty() && item_extra.is_empty()).then(|| [anon.clone(), named.clone()]);
        self.fan_out(|j, sees| {
            if j == i {
                &own
            } else if sees {
                &named
            } else {
                &anon
            }
        })
        .await;
    }

    /// Remove occupant `i`, telling everyone why (section 7.14 and the removals of 8 and 9).
    async fn remove(&mut self, i: usize, how: Removal, actor: Option<&str>, reason: Option<&str>) {
        let mut extra = Vec::new();
        if let Some(a) = actor {
            extra.push(Element::new("actor", NS_USER).attr("nick", a));
        }
        if let Some(r) = reason.filter(|r| !r.is_empty()) {
            extra.push(Element::new("reason", NS_USER).text(r));
        }
        self.occupants[i].role = Role::None;
        let codes: Vec<u16> = how.code().into_iter().collect();
        if how == Removal::Gone {
            // The occupant cannot hear it: only the others are told.
            let o = self.occupants.remove(i);
            let anon = Outgoing::to_each(self.presence_of(&o, Some("unavailable"), false, &codes, &extra));
            let named = Outgoing::to_each(self.presence_of(&o, Some("unavailable"), true, &codes, &extra));
            Box::pin(self.fan_out(|_, sees| if sees { &named } else { &anon })).await;
        } else {
            let nick = self.occupants[i].nick.clone();
            Box::pin(self.broadcast_presence(i, Some("unavailable"), &codes, &[], &extra)).await;
            if let Some(i) = self.by_nick(&nick) {
                self.occupants.remove(i);
            }
        }
    }

    // ----------------------------------------------------------------------- presence ----

    async fn on_presence(&mut self, st: Stanza, from: Jid, nick: Option<String>) {
        match st.typ() {
            None => {}
            Some("unavailable") => return self.leave(&st, &from).await,
            Some("error") => {
                // An occupant's client refusing the room's presence: it is not there any more.
                if let Some(i) = self.by_seat(&from) {
                    self.occupants[i].seats.retain(|s| s.jid.as_str() != from.as_str());
                    if self.occupants[i].seats.is_empty() {
                        self.remove(i, Removal::Gone, None, None).await;
                    }
                }
                return;
            }
            _ => return,
        }
        let Some(nick) = nick.filter(|n| !n.trim().is_empty()) else {
            // Section 7.2.1: an occupant JID needs a nick.
            return self.send_error(&st, StanzaError::new(Condition::JidMalformed).with_text("a nickname is required")).await;
        };
        let Ok(from_full) = from.clone().try_into_full() else { return };
        let children: Vec<Element> = st.el.elements().filter(|c| c.ns != NS_MUC && c.ns != NS_USER).cloned().collect();
        match self.by_seat(&from) {
            Some(i) if self.occupants[i].nick == nick => {
                // Section 7.7: a new status for the room.
                self.occupants[i].presence = children;
                self.broadcast_presence(i, None, &[], &[], &[]).await;
            }
            Some(i) => self.change_nick(&st, i, nick, children).await,
            None => self.join(&st, from_full, nick, children).await,
        }
    }

    /// Section 7.2.
    async fn join(&mut self, st: &Stanza, from: FullJid, nick: String, presence: Vec<Element>) {
        let real = from.to_bare();
        let aff = self.affiliation(&real);
        let x = st.el.find("x", NS_MUC);
        let denied = if aff == Affiliation::Outcast {
            Some(forbidden("you are banned from this room"))
        } else if self.locked && aff != Affiliation::Owner {
            Some(StanzaError::new(Condition::ItemNotFound).with_text("the room is being set up"))
        } else if self.config.members_only && aff < Affiliation::Member {
            Some(StanzaError::new(Condition::RegistrationRequired).with_text("this room is for members only"))
        } else if !self.config.password.is_empty()
            && x.and_then(|x| x.find("password", NS_MUC)).map(|p| p.text_content()).as_deref() != Some(self.config.password.as_str())
        {
            Some(StanzaError::new(Condition::NotAuthorized).with_type("auth").with_text("a password is required"))
        } else {
            match self.by_nick(&nick) {
                Some(i) if self.occupants[i].real != real => {
                    Some(StanzaError::new(Condition::Conflict).with_text("that nickname is taken"))
                }
                None if self.occupants.len() >= self.config.max_users && aff < Affiliation::Admin => {
                    Some(StanzaError::new(Condition::ServiceUnavailable).with_type("wait").with_text("the room is full"))
                }
                _ => None,
            }
        };
        if let Some(e) = denied {
            return self.send_error(st, e).await;
        }
        let seat = Seat::new(&self.server, from);
        let (i, new_occupant) = match self.by_nick(&nick) {
            Some(i) => {
                // The same account again under the same nick, from another client.
                self.occupants[i].seats.push(seat);
                (i, false)
            }
            None => {
                let role = self.default_role(aff);
                let id = self.occupant_id(&real);
                self.occupants.push(Occupant { nick, id, real, seats: vec![seat], role, presence, shown: None });
                (self.occupants.len() - 1, true)
            }
        };
        let s = self.occupants[i].seats.len() - 1;
        let seat_jid = self.occupants[i].seats[s].jid.clone();
        // 1. Who is here (section 7.2.3).
        let sees = self.sees_jids(&self.occupants[i]);
        let others: Vec<Arc<Outgoing>> = self
            .occupants
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, o)| match &o.shown {
                Some(shown) => shown[sees as usize].clone(),
                None => Outgoing::to_each(self.presence_of(o, None, sees, &[], &[])),
            })
            .collect();
        let server = self.server.clone();
        for out in &others {
            Self::push_seat(&server, &mut self.occupants[i].seats[s], out);
        }
        // 2. The newcomer's presence: to everyone, its own with 110 (and 100, 170, 201).
        let mut self_codes = Vec::new();
        if self.config.whois == Whois::Anyone {
            self_codes.push(100);
        }
        if self.config.archive {
            self_codes.push(170);
        }
        if self.created {
            self_codes.push(201);
            self.created = false;
        }
        if new_occupant {
            self.broadcast_presence(i, None, &[], &self_codes, &[]).await;
        } else {
            let mut codes = self_codes.clone();
            codes.push(110);
            let own = Outgoing::to_each(self.presence_of(&self.occupants[i], None, true, &codes, &[]));
            Self::push_seat(&server, &mut self.occupants[i].seats[s], &own);
        }
        // Sending may have dropped vanished occupants: find the newcomer's seat again.
        let Some((i, s)) = self.seat_index(&seat_jid) else { return };
        // 3. History (section 7.2.14), 4. the subject, last (section 7.2.15).
        for out in self.history_for(x.and_then(|x| x.find("history", NS_MUC))) {
            Self::push_seat(&server, &mut self.occupants[i].seats[s], &out);
        }
        let subject = self.subject_message();
        Self::push_seat(&server, &mut self.occupants[i].seats[s], &subject);
    }

    /// The messages a newcomer gets, as its `<history/>` asks (at most the room's history).
    fn history_for(&self, h: Option<&Element>) -> Vec<Arc<Outgoing>> {
        let attr = |name: &str| h.and_then(|h| h.get_attr(name));
        let max_stanzas = attr("maxstanzas").and_then(|v| v.parse::<usize>().ok()).unwrap_or(usize::MAX);
        let max_chars = attr("maxchars").and_then(|v| v.parse::<usize>().ok()).unwrap_or(usize::MAX);
        let now = crate::storage::now_micros();
        let since = attr("seconds")
            .and_then(|v| v.parse::<u32>().ok())
            .map(|s| now - i64::from(s) * 1_000_000)
            .into_iter()
            .chain(
                attr("since")
                    .and_then(|v| time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339).ok())
                    .map(|t| (t.unix_timestamp_nanos() / 1000) as i64),
            )
            .max()
            .unwrap_or(i64::MIN);
        let mut picked = Vec::new();
        let mut chars = 0usize;
        for h in self.history.iter().rev() {
            if picked.len() >= max_stanzas || h.ts < since {
                break;
            }
            let mut el = h.out.el.clone();
            el.children.push(Node::Element(
                Element::new("delay", ns::DELAY).attr("from", self.jid.to_string()).attr("stamp", xmpp_datetime_micros(h.ts)),
            ));
            let out = Outgoing::to_each(el);
            chars += out.serialized_len();
            if chars > max_chars {
                break;
            }
            picked.push(out);
        }
        picked.reverse();
        picked
    }

    fn subject_message(&self) -> Arc<Outgoing> {
        let from = if self.subject.by.is_empty() { Some(Jid::from(self.jid.clone())) } else { occupant_jid(&self.jid, &self.subject.by) };
        let mut m = Element::new("message", ns::CLIENT).attr("type", "groupchat").attr("id", format!("subject-{}", self.subject.ts));
        if let Some(f) = from {
            m.set_attr("from", f.to_string());
        }
        let mut subject = Element::new("subject", ns::CLIENT);
        if !self.subject.text.is_empty() {
            subject = subject.text(self.subject.text.clone());
        }
        Outgoing::to_each(m.child(subject))
    }

    /// Section 7.6.
    async fn change_nick(&mut self, st: &Stanza, i: usize, nick: String, presence: Vec<Element>) {
        if self.by_nick(&nick).is_some() {
            return self.send_error(st, StanzaError::new(Condition::Conflict).with_text("that nickname is taken")).await;
        }
        // The item of the unavailable presence carries the new nick.
        let o = &self.occupants[i];
        let mk = |with_jid: bool, codes: &[u16]| {
            let mut p = self.presence_of(o, Some("unavailable"), with_jid, codes, &[]);
            if let Some(item) = p.find_mut("x", NS_USER).and_then(|x| x.find_mut("item", NS_USER)) {
                item.set_attr("nick", nick.clone());
            }
            Outgoing::to_each(p)
        };
        let (anon, named, own) = (mk(false, &[303]), mk(true, &[303]), mk(true, &[303, 110]));
        let me = self.occupants[i].nick.clone();
        self.fan_out(|j, sees| {
            if j == i {
                &own
            } else if sees {
                &named
            } else {
                &anon
            }
        })
        .await;
        // Sending may have dropped vanished occupants.
        let Some(i) = self.by_nick(&me) else { return };
        self.occupants[i].nick = nick;
        self.occupants[i].presence = presence;
        self.broadcast_presence(i, None, &[], &[], &[]).await;
    }

    /// Section 7.14: one session leaves; the occupant leaves with its last session.
    async fn leave(&mut self, st: &Stanza, from: &Jid) {
        let Some(i) = self.by_seat(from) else { return };
        let status: Vec<Element> = st.el.elements().filter(|c| c.name == "status").cloned().collect();
        if self.occupants[i].seats.len() > 1 {
            let o = &self.occupants[i];
            let own = Outgoing::to_each(self.presence_of(o, Some("unavailable"), true, &[110], &[]));
            let k = self.occupants[i].seats.iter().position(|s| s.jid.as_str() == from.as_str()).unwrap_or(0);
            let mut seat = self.occupants[i].seats.remove(k);
            Self::push_seat(&self.server.clone(), &mut seat, &own);
            return;
        }
        self.occupants[i].presence = status;
        self.remove(i, Removal::Left, None, None).await;
    }

    // ----------------------------------------------------------------------- messages ----

    async fn on_message(&mut self, st: Stanza, from: Jid, nick: Option<String>) {
        if st.is_error() {
            return;
        }
        let typ = st.typ().unwrap_or("normal").to_string();
        match (nick, typ.as_str()) {
            (None, "groupchat") => self.groupchat(st, from).await,
            (Some(_), "groupchat") => {
                // Section 7.5: private messages are not of type groupchat.
                self.send_error(&st, StanzaError::new(Condition::BadRequest).with_text("a private message cannot be groupchat")).await
            }
            (Some(to_nick), _) => self.private_message(st, from, to_nick).await,
            (None, _) => {
                if let Some(x) = st.el.find("x", NS_USER) {
                    if x.find("invite", NS_USER).is_some() {
                        return self.invite(&st, &from).await;
                    }
                    if let Some(d) = x.find("decline", NS_USER) {
                        return self.decline(&st, &from, d).await;
                    }
                }
                self.send_error(&st, StanzaError::new(Condition::BadRequest).with_text("send groupchat messages to the room")).await
            }
        }
    }

    /// Section 7.4 (and 8.1 for the subject).
    async fn groupchat(&mut self, st: Stanza, from: Jid) {
        let Some(i) = self.by_seat(&from) else {
            return self.send_error(&st, StanzaError::new(Condition::NotAcceptable).with_text("only occupants may send to the room")).await;
        };
        if self.occupants[i].role < Role::Participant {
            return self.send_error(&st, forbidden("you have no voice in this room")).await;
        }
        let subject = st.el.find("subject", ns::CLIENT).map(|s| s.text_content());
        let is_subject = subject.is_some() && st.el.find("body", ns::CLIENT).is_none();
        if is_subject && !self.config.change_subject && self.occupants[i].role != Role::Moderator {
            return self.send_error(&st, forbidden("only moderators may change the subject")).await;
        }
        let mut el = st.el;
        let nick = self.occupants[i].nick.clone();
        let Some(occupant) = occupant_jid(&self.jid, &nick) else { return };
        let room = self.jid.to_string();
        // Only the room stamps its own ids (XEP-0359) and occupant ids (XEP-0421 section 4).
        mam::strip_forged_ids(&mut el, &room);
        el.retain_children(|c| !c.is("occupant-id", NS_OCCUPANT_ID));
        el.children.push(Node::Element(Element::new("occupant-id", NS_OCCUPANT_ID).attr("id", self.occupants[i].id.clone())));
        el.set_attr("from", occupant.to_string());
        el.remove_attr("to");
        let keep = el.find("body", ns::CLIENT).is_some() && !mam::has_hint(&el, "no-store");
        let mut pending = None;
        if keep && self.config.archive && !is_subject {
            match mam::submit(&self.server, &self.jid, &occupant, false, &mut el, true) {
                Ok((_, p)) => pending = Some(p),
                Err(e) => tracing::error!(room = %self.jid, error = ?e, "archiving a room message"),
            }
        }
        if let Some(p) = pending {
            // Committed before anyone sees its id: a client that syncs the room's archive after
            // the newest id it holds must find that id.
            if let Err(e) = p.wait().await {
                tracing::error!(room = %self.jid, error = ?e, "archiving a room message");
                el.retain_children(|c| !(c.is("stanza-id", mam::NS_SID) && c.get_attr("by") == Some(room.as_str())));
            }
        }
        let out = Outgoing::to_each(el);
        if keep && !is_subject {
            self.history.push_back(History { out: out.clone(), ts: crate::storage::now_micros() });
            while self.history.len() > self.server.config.muc.history_size {
                self.history.pop_front();
            }
        }
        self.broadcast(out).await;
        if let Some(text) = subject.filter(|_| is_subject) {
            self.subject = Subject { text, by: nick, ts: crate::storage::now_micros() };
            self.store().await;
        }
    }

    /// Section 7.5: to an occupant, from the sender's occupant JID, through the router (so it
    /// is archived and carbon-copied like any one-to-one message).
    async fn private_message(&mut self, st: Stanza, from: Jid, to_nick: String) {
        let Some(i) = self.by_seat(&from) else {
            return self
                .send_error(&st, StanzaError::new(Condition::NotAcceptable).with_text("only occupants may send private messages"))
                .await;
        };
        if !self.config.allow_pm && self.occupants[i].role != Role::Moderator {
            return self.send_error(&st, forbidden("private messages are off in this room")).await;
        }
        let Some(t) = self.by_nick(&to_nick) else {
            return self.send_error(&st, StanzaError::new(Condition::ItemNotFound).with_text("no such occupant")).await;
        };
        let Some(sender) = occupant_jid(&self.jid, &self.occupants[i].nick) else { return };
        let mut el = st.el;
        el.set_attr("from", sender.to_string());
        el.retain_children(|c| !c.is("occupant-id", NS_OCCUPANT_ID));
        el.children.push(Node::Element(Element::new("occupant-id", NS_OCCUPANT_ID).attr("id", self.occupants[i].id.clone())));
        if el.find("x", NS_USER).is_none() {
            el.children.push(Node::Element(Element::new("x", NS_USER)));
        }
        let targets: Vec<FullJid> = self.occupants[t].seats.iter().map(|s| s.jid.clone()).collect();
        for to in targets {
            let mut m = el.clone();
            m.set_attr("to", to.to_string());
            crate::router::route_element(&self.server, m).await;
        }
    }

    /// Section 7.8.2: a mediated invitation.
    async fn invite(&mut self, st: &Stanza, from: &Jid) {
        let Some(i) = self.by_seat(from) else {
            return self.send_error(st, StanzaError::new(Condition::NotAcceptable).with_text("only occupants may invite")).await;
        };
        let aff = self.affiliation(&self.occupants[i].real);
        let may = self.config.allow_invites || aff >= Affiliation::Admin || self.occupants[i].role == Role::Moderator;
        if !may {
            return self.send_error(st, forbidden("you may not invite to this room")).await;
        }
        let Some(x) = st.el.find("x", NS_USER) else { return };
        let mut new_members = Vec::new();
        for inv in x.elements().filter(|e| e.is("invite", NS_USER)) {
            let Some(to) = inv.get_attr("to").and_then(crate::jid::parse) else {
                return self.send_error(st, StanzaError::new(Condition::JidMalformed).with_text("invite needs a 'to'")).await;
            };
            if self.service.serves(to.domain().as_str()) {
                // A room never waits on another room's (or its own) mailbox.
                return self.send_error(st, StanzaError::new(Condition::NotAcceptable).with_text("rooms cannot be invited")).await;
            }
            let reason = inv.find("reason", NS_USER).map(|r| r.text_content());
            let mut invite = Element::new("invite", NS_USER).attr("from", from.to_string());
            if let Some(r) = &reason {
                invite = invite.child(Element::new("reason", NS_USER).text(r.clone()));
            }
            let mut ux = Element::new("x", NS_USER).child(invite);
            if !self.config.password.is_empty() {
                ux = ux.child(Element::new("password", NS_USER).text(self.config.password.clone()));
            }
            let text =
                format!("{} invites you to the room {}{}", from.to_bare(), self.jid, reason.map(|r| format!(": {r}")).unwrap_or_default());
            let m = Element::new("message", ns::CLIENT)
                .attr("from", self.jid.to_string())
                .attr("to", to.to_string())
                .attr_opt("id", st.id())
                .child(ux)
                .child(Element::new("body", ns::CLIENT).text(text));
            if self.config.members_only && self.affiliation(&to.to_bare()) == Affiliation::None {
                new_members.push(to.to_bare());
            }
            crate::router::route_element(&self.server, m).await;
        }
        if !new_members.is_empty() {
            let changes: Vec<(BareJid, Affiliation, String)> =
                new_members.into_iter().map(|j| (j, Affiliation::Member, String::new())).collect();
            self.set_affiliations(changes, None).await;
        }
    }

    async fn decline(&mut self, st: &Stanza, from: &Jid, d: &Element) {
        let Some(to) = d.get_attr("to").and_then(crate::jid::parse).filter(|t| !self.service.serves(t.domain().as_str())) else { return };
        let mut decline = Element::new("decline", NS_USER).attr("from", from.to_bare().to_string());
        if let Some(r) = d.find("reason", NS_USER) {
            decline = decline.child(Element::new("reason", NS_USER).text(r.text_content()));
        }
        let m = Element::new("message", ns::CLIENT)
            .attr("from", self.jid.to_string())
            .attr("to", to.to_string())
            .attr_opt("id", st.id())
            .child(Element::new("x", NS_USER).child(decline));
        crate::router::route_element(&self.server, m).await;
    }

    // ----------------------------------------------------------------------------- iq ----

    async fn on_iq(&mut self, st: Stanza, from: Jid, nick: Option<String>) {
        if !matches!(st.typ(), Some("get") | Some("set")) {
            return self.relay_answer(st, from).await;
        }
        let Some(payload) = st.payload().cloned() else { return };
        if let Some(nick) = nick {
            // XEP-0410: a client checks it is still joined by pinging its own occupant JID.
            let me = self.by_seat(&from);
            let r = match me {
                None => Err(StanzaError::new(Condition::NotAcceptable).with_text("not an occupant")),
                Some(i) if self.occupants[i].nick == nick && payload.is("ping", ns::PING) => Ok(None),
                Some(_) if self.by_nick(&nick).is_none() => Err(StanzaError::new(Condition::ItemNotFound)),
                Some(i) => return self.relay(st, i, &nick).await,
            };
            return self.answer(&st, r).await;
        }
        let get = st.typ() == Some("get");
        let r = match (payload.ns.as_str(), get) {
            (ns::DISCO_INFO, true) => Ok(Some(self.disco_info())),
            (ns::DISCO_ITEMS, true) => Ok(Some(Element::new("query", ns::DISCO_ITEMS))),
            (ns::PING, true) => Ok(None),
            (NS_OWNER, _) => self.owner(&st, &from, &payload).await,
            (NS_ADMIN, _) => self.admin(&st, &from, &payload).await,
            (mam::NS_MAM, _) => self.archive_query(&from, &payload, get).await,
            (NS_MODERATE, false) => self.moderate(&from, &payload).await,
            (ns::VCARD, true) => Ok(Some(Element::new("vCard", ns::VCARD))),
            _ => Err(Condition::ServiceUnavailable.into()),
        };
        self.answer(&st, r).await;
    }

    /// A query (vCard, software version...) addressed to `room/nick` goes to
    /// that occupant's first session, from the asker's occupant JID, under an id of the room's;
    /// the answer comes back to the asker the same way.
    async fn relay(&mut self, st: Stanza, asker: usize, nick: &str) {
        let Some(t) = self.by_nick(nick) else { return };
        let (Some(from), Some(to)) =
            (occupant_jid(&self.jid, &self.occupants[asker].nick), self.occupants[t].seats.first().map(|s| s.jid.clone()))
        else {
            return;
        };
        self.relay_seq += 1;
        let id = format!("muc-relay-{}", self.relay_seq);
        let (Some(asker_jid), Some(asker_id)) = (st.from.clone(), st.id().map(String::from)) else { return };
        self.relayed.insert(id.clone(), (asker_jid, asker_id, to.clone()));
        self.relay_order.push_back(id.clone());
        while self.relay_order.len() > MAX_RELAYED {
            if let Some(old) = self.relay_order.pop_front() {
                self.relayed.remove(&old);
            }
        }
        let mut el = st.el;
        el.set_attr("from", from.to_string());
        el.set_attr("to", to.to_string());
        el.set_attr("id", id);
        crate::router::route_element(&self.server, el).await;
    }

    /// The answer to a relayed query.
    async fn relay_answer(&mut self, st: Stanza, from: Jid) {
        let Some(id) = st.id() else { return };
        let Some((asker, asker_id, answerer)) = self.relayed.remove(id) else { return };
        if answerer.as_str() != from.as_str() {
            self.relayed.insert(id.to_string(), (asker, asker_id, answerer));
            return;
        }
        let Some(i) = self.by_seat(&from) else { return };
        let Some(occupant) = occupant_jid(&self.jid, &self.occupants[i].nick) else { return };
        let mut el = st.el;
        el.set_attr("from", occupant.to_string());
        el.set_attr("to", asker.to_string());
        el.set_attr("id", asker_id);
        crate::router::route_element(&self.server, el).await;
    }

    async fn answer(&self, st: &Stanza, r: Result<Option<Element>, StanzaError>) {
        match r {
            Ok(p) => self.send_result(st, p).await,
            Err(e) => self.send_error(st, e).await,
        }
    }

    /// Section 6.4.
    fn disco_info(&self) -> Element {
        let name =
            if self.config.name.is_empty() { self.jid.node().map(|n| n.to_string()).unwrap_or_default() } else { self.config.name.clone() };
        let mut q = Element::new("query", ns::DISCO_INFO)
            .child(Element::new("identity", ns::DISCO_INFO).attr("category", "conference").attr("type", "text").attr("name", name));
        for f in self.config.features() {
            q = q.child(Element::new("feature", ns::DISCO_INFO).attr("var", f));
        }
        let field = |var: &str, v: String| Element::new("field", NS_DATA).attr("var", var).child(Element::new("value", NS_DATA).text(v));
        q.child(
            Element::new("x", NS_DATA)
                .attr("type", "result")
                .child(field("FORM_TYPE", NS_ROOMINFO.to_string()).attr("type", "hidden"))
                .child(field("muc#roominfo_description", self.config.description.clone()))
                .child(field("muc#roominfo_occupants", self.occupants.len().to_string()))
                .child(field("muc#roominfo_subject", self.subject.text.clone()))
                .child(field("muc#roomconfig_roomname", self.config.name.clone())),
        )
    }

    /// XEP-0313 section 6: the room's archive, for occupants (and members of a members-only
    /// room); anyone may read an open room's.
    async fn archive_query(&self, from: &Jid, q: &Element, get: bool) -> Result<Option<Element>, StanzaError> {
        if !self.config.archive {
            return Err(StanzaError::new(Condition::ServiceUnavailable).with_text("this room keeps no archive"));
        }
        let member = self.affiliation(&from.to_bare()) >= Affiliation::Member;
        if self.config.members_only && !member && self.by_seat(from).is_none() {
            return Err(forbidden("the archive is for members"));
        }
        if get {
            return Ok(Some(mam::form()));
        }
        mam::query(&self.server, &self.jid, from, q).await
    }

    /// XEP-0425: a moderator retracts a message. Occupants are told (a retraction, archived
    /// like any room message, so clients that sync later learn of it too); the archived message
    /// becomes a tombstone and leaves the history new occupants get.
    async fn moderate(&mut self, from: &Jid, q: &Element) -> Result<Option<Element>, StanzaError> {
        let Some(i) = self.by_seat(from).filter(|i| self.occupants[*i].role == Role::Moderator) else {
            return Err(StanzaError::new(Condition::Forbidden).with_text("only moderators may retract messages"));
        };
        if q.find("retract", NS_RETRACT).is_none() {
            return Err(StanzaError::new(Condition::FeatureNotImplemented).with_text("only retraction is offered"));
        }
        let sid = q.get_attr("id").ok_or_else(|| StanzaError::new(Condition::BadRequest).with_text("which message?"))?.to_string();
        let room = self.jid.to_string();
        let no_such = || StanzaError::new(Condition::ItemNotFound).with_text("no such message in this room");
        let row = self.server.storage.archive_row_id(&room, &sid).await?.ok_or_else(no_such)?;
        let (_, xml) = self.server.storage.archive_row(&room, row).await?.ok_or_else(no_such)?;
        let original = crate::xml::parse_stored(&xml).await.ok_or_else(no_such)?;
        if original.get_attr("type") != Some("groupchat") || original.find("body", ns::CLIENT).is_none() {
            return Err(StanzaError::new(Condition::NotAcceptable).with_text("only messages can be retracted"));
        }
        let Some(by) = occupant_jid(&self.jid, &self.occupants[i].nick) else { return Err(no_such()) };
        let reason = q.find("reason", NS_MODERATE).map(|r| r.text_content()).filter(|r| !r.is_empty());
        let moderated = Element::new("moderated", NS_MODERATE)
            .attr("by", by.to_string())
            .child(Element::new("occupant-id", NS_OCCUPANT_ID).attr("id", self.occupants[i].id.clone()));
        let with_reason = |mut e: Element| {
            if let Some(r) = &reason {
                e = e.child(Element::new("reason", NS_RETRACT).text(r.clone()));
            }
            e
        };
        // The tombstone: the envelope, its ids and author, and what happened to it.
        let mut tomb = Element::new("message", ns::CLIENT);
        tomb.attrs = original.attrs.iter().filter(|(k, _)| k != "xmlns").cloned().collect();
        for c in original.elements().filter(|c| c.is("stanza-id", mam::NS_SID) || c.is("occupant-id", NS_OCCUPANT_ID)) {
            tomb.children.push(Node::Element(c.clone()));
        }
        let now = crate::storage::now_micros();
        tomb.children.push(Node::Element(with_reason(
            Element::new("retracted", NS_RETRACT).attr("stamp", xmpp_datetime_micros(now)).child(moderated.clone()),
        )));
        self.server.storage.archive_replace(&room, row, &tomb.to_xml()).await?;
        let tomb = Outgoing::to_each(tomb);
        for h in self.history.iter_mut() {
            if h.out.el.elements().any(|c| c.is("stanza-id", mam::NS_SID) && c.get_attr("id") == Some(sid.as_str())) {
                h.out = tomb.clone();
            }
        }
        // The retraction, archived, then to everyone.
        let mut m = Element::new("message", ns::CLIENT)
            .attr("type", "groupchat")
            .attr("from", room.clone())
            .attr("id", format!("retract-{now:x}"))
            .child(with_reason(Element::new("retract", NS_RETRACT).attr("id", sid.clone()).child(moderated)))
            .child(Element::new("store", mam::NS_HINTS));
        if self.config.archive {
            mam::submit(&self.server, &self.jid, &Jid::from(self.jid.clone()), false, &mut m, true)?.1.wait().await?;
        }
        self.broadcast(Outgoing::to_each(m)).await;
        Ok(None)
    }

    // -------------------------------------------------------------------------- owner ----

    /// Section 10.
    async fn owner(&mut self, st: &Stanza, from: &Jid, q: &Element) -> Result<Option<Element>, StanzaError> {
        if self.affiliation(&from.to_bare()) != Affiliation::Owner {
            return Err(forbidden("only owners may configure the room"));
        }
        let muc = self.server.config.muc.clone();
        if st.typ() == Some("get") {
            return Ok(Some(Element::new("query", NS_OWNER).child(self.config.form(&muc))));
        }
        if let Some(d) = q.find("destroy", NS_OWNER) {
            self.destroy(d).await;
            return Ok(None);
        }
        let Some(x) = q.find("x", NS_DATA) else {
            return Err(StanzaError::new(Condition::BadRequest).with_text("expected a form or <destroy/>"));
        };
        match x.get_attr("type") {
            Some("cancel") => {
                if self.locked {
                    // Section 10.1.3: cancelling the initial configuration destroys the room.
                    self.destroy(&Element::new("destroy", NS_OWNER)).await;
                }
                Ok(None)
            }
            Some("submit") => {
                let before = self.config.clone();
                self.config.apply(x, &muc)?;
                let was_locked = std::mem::replace(&mut self.locked, false);
                self.configured(&before, was_locked).await;
                Ok(None)
            }
            _ => Err(StanzaError::new(Condition::BadRequest).with_text("the form must be submitted or cancelled")),
        }
    }

    /// Consequences of a new configuration (section 10.2).
    async fn configured(&mut self, before: &RoomConfig, was_locked: bool) {
        if self.config.persistent {
            let was_stored = self.stored;
            self.store().await;
            if !self.stored || was_stored {
                return self.after_configuration(before, was_locked).await;
            }
            let all: Vec<(String, String, String)> =
                self.affiliations.iter().map(|(j, (a, r))| (j.to_string(), a.name().to_string(), r.clone())).collect();
            if let Err(e) = self.server.storage.muc_set_affiliations(self.jid.as_str(), &all, true).await {
                tracing::error!(room = %self.jid, error = %e, "storing affiliations");
            }
        } else if before.persistent {
            self.unstore().await;
        }
        self.after_configuration(before, was_locked).await;
    }

    /// What a new configuration means for the listing and the occupants.
    async fn after_configuration(&mut self, before: &RoomConfig, was_locked: bool) {
        self.list();
        if self.config.members_only && !before.members_only {
            while let Some(i) = self.occupants.iter().position(|o| self.affiliation(&o.real) < Affiliation::Member) {
                self.remove(i, Removal::MembersOnly, None, None).await;
            }
        }
        if self.config.moderated != before.moderated {
            for i in 0..self.occupants.len() {
                let aff = self.affiliation(&self.occupants[i].real);
                let role = self.default_role(aff);
                if self.occupants[i].role != role && self.occupants[i].role != Role::Moderator {
                    self.occupants[i].role = role;
                    self.broadcast_presence(i, None, &[], &[], &[]).await;
                }
            }
        }
        if !was_locked {
            // Section 10.2.1: occupants hear of the change (104), and what it means for privacy.
            let mut codes = vec![104];
            if self.config.whois != before.whois {
                codes.push(if self.config.whois == Whois::Anyone { 172 } else { 173 });
            }
            if self.config.archive != before.archive {
                codes.push(if self.config.archive { 170 } else { 171 });
            }
            let m = Element::new("message", ns::CLIENT).attr("type", "groupchat").attr("from", self.jid.to_string()).child(user_x(&codes));
            self.broadcast(Outgoing::to_each(m)).await;
        }
    }

    /// Section 10.9.
    async fn destroy(&mut self, d: &Element) {
        let mut destroy = Element::new("destroy", NS_USER);
        if let Some(alt) = d.get_attr("jid") {
            destroy.set_attr("jid", alt);
        }
        if let Some(r) = d.find("reason", NS_OWNER) {
            destroy = destroy.child(Element::new("reason", NS_USER).text(r.text_content()));
        }
        let server = self.server.clone();
        for o in &mut self.occupants {
            let Some(from) = occupant_jid(&self.jid, &o.nick) else { continue };
            let p = Element::new("presence", ns::CLIENT).attr("from", from.to_string()).attr("type", "unavailable").child(
                Element::new("x", NS_USER)
                    .child(Element::new("item", NS_USER).attr("affiliation", "none").attr("role", "none"))
                    .child(destroy.clone()),
            );
            let out = Outgoing::to_each(p);
            for seat in &mut o.seats {
                Self::push_seat(&server, seat, &out);
            }
        }
        self.occupants.clear();
        self.destroyed = true;
        self.config.persistent = false;
        self.service.unlist(&self.jid);
        if let Err(e) = self.server.storage.muc_delete_room(self.jid.as_str(), true).await {
            tracing::error!(room = %self.jid, error = %e, "deleting a destroyed room");
        }
        self.stored = false;
    }

    /// Write the room's row (persistent rooms only).
    async fn store(&mut self) {
        if !self.config.persistent {
            return;
        }
        let row = StoredRoom {
            config: serde_json::to_string(&self.config).unwrap_or_default(),
            subject: self.subject.text.clone(),
            subject_by: self.subject.by.clone(),
            subject_ts: self.subject.ts,
        };
        match self.server.storage.muc_save_room(self.jid.as_str(), &row).await {
            Ok(()) => self.stored = true,
            Err(e) => tracing::error!(room = %self.jid, error = %e, "storing the room"),
        }
    }

    /// The room is no longer persistent: its row and affiliations go (its archive stays).
    async fn unstore(&mut self) {
        if let Err(e) = self.server.storage.muc_delete_room(self.jid.as_str(), false).await {
            tracing::error!(room = %self.jid, error = %e, "unstoring the room");
        }
        self.stored = false;
    }

    // -------------------------------------------------------------------------- admin ----

    /// Sections 8 (moderators: roles) and 9 (admins: affiliations).
    async fn admin(&mut self, st: &Stanza, from: &Jid, q: &Element) -> Result<Option<Element>, StanzaError> {
        let Some(actor_i) = self.by_seat(from) else {
            // Affiliation lists are also for admins and owners not in the room.
            return self.admin_absent(st, from, q).await;
        };
        let actor_aff = self.affiliation(&from.to_bare());
        let actor_role = self.occupants[actor_i].role;
        let actor_nick = self.occupants[actor_i].nick.clone();
        let items: Vec<&Element> = q.elements().filter(|e| e.is("item", NS_ADMIN)).collect();
        if items.is_empty() {
            return Err(StanzaError::new(Condition::BadRequest).with_text("no item"));
        }
        if st.typ() == Some("get") {
            return self.admin_list(items[0], actor_aff, actor_role);
        }
        // Check every item first: all are applied or none.
        let mut roles = Vec::new();
        let mut affs = Vec::new();
        for item in &items {
            let reason = item.find("reason", NS_ADMIN).map(|r| r.text_content()).unwrap_or_default();
            if let Some(role) = item.get_attr("role") {
                let role = Role::parse(role).ok_or(Condition::BadRequest)?;
                let nick =
                    item.get_attr("nick").ok_or_else(|| StanzaError::new(Condition::BadRequest).with_text("a role is set by nick"))?;
                let t = self.by_nick(nick).ok_or_else(|| StanzaError::new(Condition::ItemNotFound).with_text("no such occupant"))?;
                let target_aff = self.affiliation(&self.occupants[t].real);
                let current = self.occupants[t].role;
                if actor_role != Role::Moderator {
                    return Err(forbidden("only moderators may change roles"));
                }
                if (role == Role::Moderator || current == Role::Moderator) && actor_aff < Affiliation::Admin {
                    return Err(forbidden("only admins and owners may grant or revoke moderation"));
                }
                if role < Role::Participant && target_aff >= Affiliation::Admin || role < current && target_aff > actor_aff {
                    return Err(StanzaError::new(Condition::NotAllowed).with_text("admins and owners cannot be kicked or silenced"));
                }
                roles.push((nick.to_string(), role, reason));
            } else if let Some(a) = item.get_attr("affiliation") {
                let a = Affiliation::parse(a).ok_or(Condition::BadRequest)?;
                let target = match (item.get_attr("jid"), item.get_attr("nick")) {
                    (Some(j), _) => crate::jid::parse(j).ok_or(Condition::JidMalformed)?.to_bare(),
                    (None, Some(n)) => self.occupants[self.by_nick(n).ok_or(Condition::ItemNotFound)?].real.clone(),
                    _ => return Err(StanzaError::new(Condition::BadRequest).with_text("an affiliation is set by jid")),
                };
                let current = self.affiliation(&target);
                if actor_aff < Affiliation::Admin {
                    return Err(forbidden("only admins and owners may change affiliations"));
                }
                if actor_aff == Affiliation::Admin && (current >= Affiliation::Admin || a >= Affiliation::Admin) {
                    return Err(StanzaError::new(Condition::NotAllowed).with_text("only owners may change admins and owners"));
                }
                affs.push((target, a, reason));
            } else {
                return Err(StanzaError::new(Condition::BadRequest).with_text("an item needs a role or an affiliation"));
            }
        }
        if !affs.is_empty() {
            // Section 10.4: the room keeps an owner.
            let mut after: HashMap<BareJid, Affiliation> = self.affiliations.iter().map(|(j, (a, _))| (j.clone(), *a)).collect();
            for (j, a, _) in &affs {
                after.insert(j.clone(), *a);
            }
            if !after.values().any(|a| *a == Affiliation::Owner) {
                return Err(StanzaError::new(Condition::Conflict).with_text("the room needs an owner"));
            }
        }
        for (nick, role, reason) in roles {
            let Some(t) = self.by_nick(&nick) else { continue };
            if role == Role::None {
                self.remove(t, Removal::Kicked, Some(&actor_nick), Some(&reason)).await;
            } else if self.occupants[t].role != role {
                self.occupants[t].role = role;
                let extra: Vec<Element> = (!reason.is_empty()).then(|| Element::new("reason", NS_USER).text(reason)).into_iter().collect();
                self.broadcast_presence(t, None, &[], &[], &extra).await;
            }
        }
        if !affs.is_empty() {
            self.set_affiliations(affs, Some(&actor_nick)).await;
        }
        Ok(None)
    }

    /// An admin or owner who is not in the room may still read and change affiliations.
    async fn admin_absent(&mut self, st: &Stanza, from: &Jid, q: &Element) -> Result<Option<Element>, StanzaError> {
        let aff = self.affiliation(&from.to_bare());
        if aff < Affiliation::Admin {
            return Err(forbidden("only moderators, admins and owners may do that"));
        }
        let item = q.find("item", NS_ADMIN).ok_or(Condition::BadRequest)?;
        if st.typ() == Some("get") {
            return self.admin_list(item, aff, Role::None);
        }
        if item.get_attr("role").is_some() {
            return Err(StanzaError::new(Condition::NotAcceptable).with_text("roles are changed from inside the room"));
        }
        let a = item.get_attr("affiliation").and_then(Affiliation::parse).ok_or(Condition::BadRequest)?;
        let target = item.get_attr("jid").and_then(crate::jid::parse).ok_or(Condition::BadRequest)?.to_bare();
        let current = self.affiliation(&target);
        if aff == Affiliation::Admin && (current >= Affiliation::Admin || a >= Affiliation::Admin) {
            return Err(StanzaError::new(Condition::NotAllowed).with_text("only owners may change admins and owners"));
        }
        if current == Affiliation::Owner
            && a != Affiliation::Owner
            && self.affiliations.values().filter(|(x, _)| *x == Affiliation::Owner).count() == 1
        {
            return Err(StanzaError::new(Condition::Conflict).with_text("the room needs an owner"));
        }
        let reason = item.find("reason", NS_ADMIN).map(|r| r.text_content()).unwrap_or_default();
        self.set_affiliations(vec![(target, a, reason)], None).await;
        Ok(None)
    }

    /// Section 9.5 (members), 9.8 (admins), 10.5 (owners), 9.3 (outcasts), 8.5 (moderators)...
    fn admin_list(&self, item: &Element, aff: Affiliation, role: Role) -> Result<Option<Element>, StanzaError> {
        let mut q = Element::new("query", NS_ADMIN);
        if let Some(a) = item.get_attr("affiliation") {
            let a = Affiliation::parse(a).ok_or(Condition::BadRequest)?;
            if aff < Affiliation::Admin || a == Affiliation::None {
                return Err(forbidden("only admins and owners may list affiliations"));
            }
            let mut list: Vec<(&BareJid, &String)> =
                self.affiliations.iter().filter(|(_, (x, _))| *x == a).map(|(j, (_, r))| (j, r)).collect();
            list.sort_by(|x, y| x.0.as_str().cmp(y.0.as_str()));
            for (j, reason) in list {
                let mut i = Element::new("item", NS_ADMIN).attr("affiliation", a.name()).attr("jid", j.to_string());
                if !reason.is_empty() {
                    i = i.child(Element::new("reason", NS_ADMIN).text(reason.clone()));
                }
                q = q.child(i);
            }
        } else if let Some(r) = item.get_attr("role") {
            let r = Role::parse(r).ok_or(Condition::BadRequest)?;
            if role != Role::Moderator {
                return Err(forbidden("only moderators may list roles"));
            }
            for o in self.occupants.iter().filter(|o| o.role == r) {
                let mut i = Element::new("item", NS_ADMIN)
                    .attr("role", r.name())
                    .attr("nick", o.nick.clone())
                    .attr("affiliation", self.affiliation(&o.real).name());
                if let Some(s) = o.seats.first() {
                    i = i.attr("jid", s.jid.to_string());
                }
                q = q.child(i);
            }
        } else {
            return Err(StanzaError::new(Condition::BadRequest).with_text("list by affiliation or role"));
        }
        Ok(Some(q))
    }

    /// Apply affiliation changes: stored (persistent rooms), then their effect on occupants.
    async fn set_affiliations(&mut self, changes: Vec<(BareJid, Affiliation, String)>, actor: Option<&str>) {
        if self.stored {
            let rows: Vec<(String, String, String)> =
                changes.iter().map(|(j, a, r)| (j.to_string(), a.name().to_string(), r.clone())).collect();
            if let Err(e) = self.server.storage.muc_set_affiliations(self.jid.as_str(), &rows, false).await {
                tracing::error!(room = %self.jid, error = %e, "storing affiliations");
            }
        }
        for (j, a, reason) in changes {
            if a == Affiliation::None {
                self.affiliations.remove(&j);
            } else {
                self.affiliations.insert(j.clone(), (a, reason.clone()));
            }
            while let Some(i) = self.occupants.iter().position(|o| o.real == j && o.role != Role::None && self.must_leave(a)) {
                let how = if a == Affiliation::Outcast { Removal::Banned } else { Removal::MembersOnly };
                self.remove(i, how, actor, Some(&reason)).await;
            }
            for i in 0..self.occupants.len() {
                if self.occupants[i].real == j {
                    let role = match self.default_role(a) {
                        Role::Visitor if self.occupants[i].role == Role::Participant => Role::Participant,
                        r => r,
                    };
                    self.occupants[i].role = role;
                    self.broadcast_presence(i, None, &[], &[], &[]).await;
                }
            }
        }
    }

    fn must_leave(&self, a: Affiliation) -> bool {
        a == Affiliation::Outcast || self.config.members_only && a < Affiliation::Member
    }
}
