//! Stream Management (XEP-0198, `urn:xmpp:sm:3`): the counters and the queue of stanzas sent
//! but not yet acknowledged, kept free of IO, and the table of resumable sessions.
//!
//! All counters are `u32` and wrap (XEP-0198 section 4: "h" wraps at 2^32).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use rand::distributions::Alphanumeric;
use rand::Rng;
use tokio::sync::mpsc;

use super::registry::Outgoing;
use crate::jid::BareJid;

pub const NS_SM: &str = "urn:xmpp:sm:3";

#[derive(Debug, Default)]
pub struct SmState {
    pub enabled: bool,
    /// Resumption id, when the client asked for resumption.
    pub resume_id: Option<String>,
    /// Stanzas handled from the client (the "h" we report).
    pub inbound: u32,
    /// Stanzas the client acknowledged so far (its last "h").
    acked: u32,
    /// Sent and not yet acknowledged, oldest first.
    pub unacked: VecDeque<Arc<Outgoing>>,
    /// An `<r/>` is outstanding.
    pub requested: bool,
    /// Stanzas sent since the last `<r/>`: a new request only follows new stanzas, so a client
    /// answering with a low "h" is not asked again in a loop.
    pub sent_since_request: u32,
    /// Offline-store rows the client now has: acknowledged, or written to a stream without
    /// stream management. The session deletes them from the store.
    pub offline_done: Vec<i64>,
}

/// The peer claimed to have handled more than it was sent.
#[derive(Debug, PartialEq, Eq)]
pub struct TooHigh {
    pub h: u32,
    pub sent: u32,
}

impl SmState {
    pub fn enable(&mut self, resume: bool) -> Option<String> {
        self.enabled = true;
        if resume {
            let id: String = rand::thread_rng().sample_iter(&Alphanumeric).take(24).map(char::from).collect();
            self.resume_id = Some(id);
        }
        self.resume_id.clone()
    }

    /// Total sent, as the peer counts it.
    pub fn sent(&self) -> u32 {
        self.acked.wrapping_add(self.unacked.len() as u32)
    }

    pub fn on_sent(&mut self, o: Arc<Outgoing>) {
        if self.enabled {
            self.unacked.push_back(o);
            self.sent_since_request = self.sent_since_request.wrapping_add(1);
        } else if let Some(row) = o.offline_row {
            self.offline_done.push(row);
        }
    }

    /// Should an `<r/>` go out now? Marks it as sent.
    pub fn want_request(&mut self) -> bool {
        if self.enabled && !self.requested && self.sent_since_request > 0 {
            self.requested = true;
            self.sent_since_request = 0;
            return true;
        }
        false
    }

    pub fn on_handled(&mut self) {
        if self.enabled {
            self.inbound = self.inbound.wrapping_add(1);
        }
    }

    /// The peer acknowledged `h` stanzas in total: drop them from the queue.
    pub fn ack(&mut self, h: u32) -> Result<(), TooHigh> {
        let newly = h.wrapping_sub(self.acked) as usize;
        if newly > self.unacked.len() {
            return Err(TooHigh { h, sent: self.sent() });
        }
        self.offline_done.extend(self.unacked.drain(..newly).filter_map(|o| o.offline_row));
        self.acked = h;
        self.requested = false;
        Ok(())
    }

    /// For tests of wrap-around: start the counters near the top.
    #[cfg(test)]
    fn starting_at(n: u32) -> SmState {
        SmState { enabled: true, inbound: n, acked: n, ..Default::default() }
    }
}

/// A new connection asking to take over a hibernating (or ghost) session. Sent boxed, so the
/// channel that carries it and the session loop waiting on it stay pointer-sized.
pub struct ResumeRequest {
    pub reader: crate::stream::Reader,
    pub writer: super::c2s::Writer,
    /// The client's "h": stanzas it handled from the old stream.
    pub h: u32,
}

/// Where a resumption request for one session goes.
pub type ResumeSender = mpsc::Sender<Box<ResumeRequest>>;

/// Resumable sessions by resumption id.
#[derive(Default)]
pub struct ResumeTable {
    map: Mutex<HashMap<String, (BareJid, ResumeSender)>>,
}

impl ResumeTable {
    pub fn insert(&self, id: String, owner: BareJid, tx: ResumeSender) {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).insert(id, (owner, tx));
    }

    pub fn remove(&self, id: &str) {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }

    /// The session to hand a resumption to, if `id` belongs to `owner`.
    pub fn get(&self, id: &str, owner: &BareJid) -> Option<ResumeSender> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(id).filter(|(o, _)| o == owner).map(|(_, tx)| tx.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::Element;

    fn out(i: usize) -> Arc<Outgoing> {
        Outgoing::new(Element::new("message", "jabber:client").attr("id", i.to_string()))
    }

    #[test]
    fn acks_drop_from_the_queue() {
        let mut s = SmState::default();
        s.on_sent(out(0));
        assert!(s.unacked.is_empty(), "nothing is counted before enable");
        s.enable(true);
        for i in 0..5 {
            s.on_sent(out(i));
        }
        assert_eq!(s.sent(), 5);
        s.ack(3).unwrap();
        assert_eq!(s.unacked.len(), 2);
        assert_eq!(s.unacked[0].el.get_attr("id"), Some("3"));
        s.ack(3).unwrap();
        assert_eq!(s.unacked.len(), 2);
        assert_eq!(s.ack(9), Err(TooHigh { h: 9, sent: 5 }));
    }

    #[test]
    fn offline_rows_are_done_when_acknowledged_or_written_without_sm() {
        let stored = |row| Outgoing::from_offline(Element::new("message", "jabber:client"), row);
        let mut s = SmState::default();
        s.on_sent(stored(7));
        assert_eq!(s.offline_done, [7], "without stream management, written is done");
        s.offline_done.clear();
        s.enable(false);
        s.on_sent(stored(8));
        s.on_sent(out(0));
        s.on_sent(stored(9));
        assert!(s.offline_done.is_empty(), "sent is not done");
        s.ack(2).unwrap();
        assert_eq!(s.offline_done, [8]);
        s.ack(3).unwrap();
        assert_eq!(s.offline_done, [8, 9]);
    }

    #[test]
    fn a_low_ack_does_not_trigger_another_request() {
        let mut s = SmState::default();
        s.enable(false);
        s.on_sent(out(0));
        s.on_sent(out(1));
        assert!(s.want_request());
        assert!(!s.want_request(), "one outstanding request at a time");
        s.ack(1).unwrap();
        assert!(!s.want_request(), "nothing new was sent since the last request");
        s.on_sent(out(2));
        assert!(s.want_request());
    }

    #[test]
    fn counters_wrap_around() {
        let mut s = SmState::starting_at(u32::MAX - 2);
        for i in 0..6 {
            s.on_sent(out(i));
            s.on_handled();
        }
        assert_eq!(s.inbound, 3);
        assert_eq!(s.sent(), 3);
        s.ack(1).unwrap();
        assert_eq!(s.unacked.len(), 2);
        assert_eq!(s.unacked[0].el.get_attr("id"), Some("4"));
        s.ack(3).unwrap();
        assert!(s.unacked.is_empty());
    }
}
