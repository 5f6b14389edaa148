//! Counters the core keeps for monitoring (exposed by `http::metrics`): relaxed atomic
//! increments, nothing on the hot path but an add.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::stanza::Kind;

#[derive(Debug, Default)]
pub struct Counters {
    messages: AtomicU64,
    presences: AtomicU64,
    iqs: AtomicU64,
    pub logins: AtomicU64,
    pub login_failures: AtomicU64,
}

impl Counters {
    /// One stanza through the router.
    pub fn routed(&self, kind: Kind) {
        let c = match kind {
            Kind::Message => &self.messages,
            Kind::Presence => &self.presences,
            Kind::Iq => &self.iqs,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// (message, presence, iq) routed so far.
    pub fn routed_totals(&self) -> [(&'static str, u64); 3] {
        [
            ("message", self.messages.load(Ordering::Relaxed)),
            ("presence", self.presences.load(Ordering::Relaxed)),
            ("iq", self.iqs.load(Ordering::Relaxed)),
        ]
    }
}
