//! The session table: bare JID -> account entry -> bound resources with their mailbox handles.
//!
//! It is a plain `std::sync::RwLock` map: every access is a short synchronous critical section,
//! never held across an `.await`. Sessions talk to each other only by pushing into mailboxes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use crate::error::StreamError;
use crate::jid::{BareJid, FullJid, Jid};
use crate::xml::Element;

/// A stanza on its way to a session. The bytes are serialized once, lazily, and shared by every
/// session the same stanza fans out to.
#[derive(Debug)]
pub struct Outgoing {
    pub el: Element,
    bytes: OnceLock<Box<str>>,
    /// The offline-store row this message came from: the row is deleted once the client has
    /// acknowledged it (or, without stream management, once it was written).
    pub offline_row: Option<i64>,
    /// `el` has no `to`: each session writes its own address in (a room's fan-out shares one
    /// serialization among all its occupants).
    to_each: bool,
}

impl Outgoing {
    pub fn new(el: Element) -> Arc<Outgoing> {
        Arc::new(Outgoing { el, bytes: OnceLock::new(), offline_row: None, to_each: false })
    }

    pub fn from_offline(el: Element, row: i64) -> Arc<Outgoing> {
        Arc::new(Outgoing { el, bytes: OnceLock::new(), offline_row: Some(row), to_each: false })
    }

    /// One stanza for many sessions: `el` carries no `to`; each session adds its own.
    pub fn to_each(mut el: Element) -> Arc<Outgoing> {
        el.remove_attr("to");
        Arc::new(Outgoing { el, bytes: OnceLock::new(), offline_row: None, to_each: true })
    }

    /// Append the stanza as session `to` sends it.
    pub fn write_for(&self, out: &mut String, to: &FullJid) {
        let bytes = self.bytes();
        if !self.to_each {
            out.push_str(bytes);
            return;
        }
        // The serialization starts with `<` and the element's name.
        let head = 1 + self.el.name.len();
        out.push_str(&bytes[..head]);
        out.push_str(" to='");
        crate::xml::element::escape_into(out, to.as_str(), true);
        out.push('\'');
        out.push_str(&bytes[head..]);
    }

    /// Append the stanza as a link that carries it whole writes it (an external component:
    /// stanzas for it always carry their own `to`).
    pub fn write_to_link(&self, out: &mut String) {
        out.push_str(self.bytes());
    }

    /// Length of the serialization sessions write (made once, here or at the first write).
    pub fn serialized_len(&self) -> usize {
        self.bytes().len()
    }

    fn bytes(&self) -> &str {
        self.bytes.get_or_init(|| self.el.to_xml_in(crate::xml::ns::CLIENT).into_boxed_str())
    }
}

/// What can be put into a session's mailbox.
#[derive(Debug)]
pub enum Deliver {
    Stanza(Arc<Outgoing>),
    /// Close the stream with this error (e.g. `conflict` when replaced by a new login).
    Close(StreamError),
}

pub type Mailbox = super::mailbox::Sender;

/// Push to a session's mailbox (see [`SessionRegistry::send`]). `false` when the session is
/// gone (its mailbox closed).
pub fn push(tx: &Mailbox, jid: &FullJid, d: Deliver) -> bool {
    match tx.try_send(d) {
        Ok(()) => true,
        Err(super::mailbox::TrySendError::Full(_)) => {
            tracing::warn!(%jid, "mailbox full; closing the session");
            tx.force_send(Deliver::Close(StreamError::PolicyViolation));
            true
        }
        Err(super::mailbox::TrySendError::Closed(_)) => false,
    }
}

/// One bound resource.
#[derive(Debug, Clone)]
pub struct SessionEntry {
    pub jid: FullJid,
    /// Unique per session, so a replaced session never removes its successor.
    pub id: u64,
    pub tx: Mailbox,
    /// Has sent initial presence and not yet unavailable.
    pub available: bool,
    pub priority: i8,
    /// Last broadcast presence, answered to probes.
    pub presence: Option<Arc<Outgoing>>,
    /// Has fetched the roster, so gets roster pushes (RFC 6121 section 2.1.6).
    pub roster_requested: bool,
    /// Has fetched the block list, so gets block pushes (XEP-0191 section 3.3).
    pub blocklist_requested: bool,
    /// Message Carbons enabled (XEP-0280).
    pub carbons: bool,
    /// The entity capabilities `ver` of its last presence (XEP-0115).
    pub caps: Option<Arc<str>>,
}

/// Per-account state shared by its resources.
#[derive(Debug, Default)]
pub struct AccountEntry {
    pub sessions: Vec<SessionEntry>,
    /// The block list, loaded when the first resource binds, kept current by the blocking module.
    pub blocked: Arc<Vec<Jid>>,
}

#[derive(Default)]
pub struct SessionRegistry {
    /// Keyed by the bare JID's string, so a lookup from a full JID borrows its bare part
    /// (`jid::bare_str`) instead of building a `BareJid`.
    accounts: RwLock<HashMap<Box<str>, AccountEntry>>,
    next_id: AtomicU64,
}

impl SessionRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Bind a resource. Returns the session it replaces (same full JID), which the caller
    /// closes with `conflict`.
    pub fn bind(&self, entry: SessionEntry, blocked: Vec<Jid>) -> Option<SessionEntry> {
        let mut map = self.accounts.write().unwrap_or_else(|p| p.into_inner());
        let acct = map.entry(crate::jid::bare_str(&entry.jid).into()).or_default();
        acct.blocked = Arc::new(blocked);
        let old = acct.sessions.iter().position(|s| s.jid == entry.jid).map(|i| acct.sessions.remove(i));
        acct.sessions.push(entry);
        old
    }

    /// Remove a session (only if it is still the one with this id). Returns the entry.
    pub fn unbind(&self, jid: &FullJid, id: u64) -> Option<SessionEntry> {
        let mut map = self.accounts.write().unwrap_or_else(|p| p.into_inner());
        let bare = crate::jid::bare_str(jid);
        let acct = map.get_mut(bare)?;
        let i = acct.sessions.iter().position(|s| s.id == id)?;
        let e = acct.sessions.remove(i);
        if acct.sessions.is_empty() {
            map.remove(bare);
        }
        Some(e)
    }

    pub fn update(&self, jid: &FullJid, id: u64, f: impl FnOnce(&mut SessionEntry)) {
        let mut map = self.accounts.write().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = map.get_mut(crate::jid::bare_str(jid)).and_then(|a| a.sessions.iter_mut().find(|s| s.id == id)) {
            f(s);
        }
    }

    pub fn get(&self, jid: &FullJid) -> Option<SessionEntry> {
        let map = self.accounts.read().unwrap_or_else(|p| p.into_inner());
        map.get(crate::jid::bare_str(jid))?.sessions.iter().find(|s| &s.jid == jid).cloned()
    }

    /// Every session of an account, filtered.
    pub fn sessions(&self, bare: &BareJid, filter: impl Fn(&SessionEntry) -> bool) -> Vec<SessionEntry> {
        let map = self.accounts.read().unwrap_or_else(|p| p.into_inner());
        map.get(bare.as_str()).map(|a| a.sessions.iter().filter(|s| filter(s)).cloned().collect()).unwrap_or_default()
    }

    pub fn is_online(&self, bare: &BareJid) -> bool {
        let map = self.accounts.read().unwrap_or_else(|p| p.into_inner());
        map.contains_key(bare.as_str())
    }

    /// The block list of an online account (`None` when no resource is bound).
    pub fn blocklist(&self, bare: &str) -> Option<Arc<Vec<Jid>>> {
        let map = self.accounts.read().unwrap_or_else(|p| p.into_inner());
        map.get(bare).map(|a| a.blocked.clone())
    }

    pub fn set_blocklist(&self, bare: &BareJid, list: Vec<Jid>) {
        let mut map = self.accounts.write().unwrap_or_else(|p| p.into_inner());
        if let Some(a) = map.get_mut(bare.as_str()) {
            a.blocked = Arc::new(list);
        }
    }

    /// Push to a session's mailbox. A session whose mailbox is full has stopped reading; it is
    /// told to close rather than letting its backlog grow without bound.
    pub fn send(&self, s: &SessionEntry, d: Deliver) {
        push(&s.tx, &s.jid, d);
    }

    /// Tell every session to close its stream with `e` (server shutdown), past any backlog.
    pub fn close_all(&self, e: StreamError) {
        let map = self.accounts.read().unwrap_or_else(|p| p.into_inner());
        for s in map.values().flat_map(|a| a.sessions.iter()) {
            s.tx.force_send(Deliver::Close(e));
        }
    }

    pub fn count(&self) -> usize {
        let map = self.accounts.read().unwrap_or_else(|p| p.into_inner());
        map.values().map(|a| a.sessions.len()).sum()
    }
}
