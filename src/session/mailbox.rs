//! A session's mailbox: a bounded queue that routing pushes to and the session loop takes from.
//!
//! A tokio channel allocates a block of 32 slots up front, about 0.8 KiB per session even when
//! nothing is ever queued. This one is a `VecDeque` behind a mutex that is held only to push or
//! pop (never across an `.await`), with two `Notify`s: an empty mailbox costs about 150 bytes.
//! One receiver; any number of senders. The receiver sees the end (`None`) once every sender is
//! gone and the queue is drained.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use super::registry::Deliver;

struct Shared {
    state: Mutex<State>,
    /// Something was queued, or the last sender left.
    ready: Notify,
    /// Room was made.
    room: Notify,
    capacity: usize,
}

struct State {
    queue: VecDeque<Deliver>,
    senders: usize,
    /// The receiver closed (or is gone): sends fail.
    closed: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Why `try_send` refused; the item is given back.
#[derive(Debug)]
pub enum TrySendError {
    Full(Deliver),
    Closed(Deliver),
}

pub struct Sender {
    shared: Arc<Shared>,
}

pub struct Receiver {
    shared: Arc<Shared>,
}

/// A mailbox holding at most `capacity` items.
pub fn mailbox(capacity: usize) -> (Sender, Receiver) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State { queue: VecDeque::new(), senders: 1, closed: false }),
        ready: Notify::new(),
        room: Notify::new(),
        capacity: capacity.max(1),
    });
    (Sender { shared: shared.clone() }, Receiver { shared })
}

impl Sender {
    /// Queue without waiting.
    pub fn try_send(&self, d: Deliver) -> Result<(), TrySendError> {
        self.push(d, true)
    }

    fn push(&self, d: Deliver, bounded: bool) -> Result<(), TrySendError> {
        {
            let mut st = self.shared.lock();
            if st.closed {
                return Err(TrySendError::Closed(d));
            }
            if bounded && st.queue.len() >= self.shared.capacity {
                return Err(TrySendError::Full(d));
            }
            st.queue.push_back(d);
        }
        self.shared.ready.notify_one();
        Ok(())
    }

    /// Queue, waiting for room; gives the item back if the receiver is gone.
    pub async fn send(&self, mut d: Deliver) -> Result<(), Deliver> {
        loop {
            let room = self.shared.room.notified();
            match self.try_send(d) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Closed(back)) => return Err(back),
                Err(TrySendError::Full(back)) => d = back,
            }
            room.await;
        }
    }

    /// Queue even past the capacity: for the one item that tells a session to close.
    pub fn force_send(&self, d: Deliver) {
        let _ = self.push(d, false);
    }
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender").finish_non_exhaustive()
    }
}

impl Clone for Sender {
    fn clone(&self) -> Self {
        self.shared.lock().senders += 1;
        Sender { shared: self.shared.clone() }
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        let last = {
            let mut st = self.shared.lock();
            st.senders -= 1;
            st.senders == 0
        };
        if last {
            self.shared.ready.notify_one();
        }
    }
}

impl Receiver {
    /// The next item; `None` once every sender is gone (or the mailbox was closed) and nothing
    /// is left.
    pub async fn recv(&mut self) -> Option<Deliver> {
        loop {
            // A notification that lands between the check and the wait is kept as a permit.
            if let Some(r) = self.poll_state() {
                return r;
            }
            self.shared.ready.notified().await;
        }
    }

    fn poll_state(&mut self) -> Option<Option<Deliver>> {
        let mut st = self.shared.lock();
        if let Some(d) = st.queue.pop_front() {
            if st.queue.is_empty() {
                // Give the memory back once a burst is delivered.
                st.queue = VecDeque::new();
            }
            drop(st);
            // One item taken, room for one sender (a permit if none waits).
            self.shared.room.notify_one();
            return Some(Some(d));
        }
        if st.senders == 0 || st.closed {
            return Some(None);
        }
        None
    }

    pub fn try_recv(&mut self) -> Option<Deliver> {
        self.poll_state().flatten()
    }

    pub fn is_empty(&self) -> bool {
        self.shared.lock().queue.is_empty()
    }

    /// Refuse further items; what is queued can still be taken.
    pub fn close(&mut self) {
        self.shared.lock().closed = true;
        self.shared.room.notify_waiters();
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::StreamError;
    use std::time::Duration;

    fn close_item() -> Deliver {
        Deliver::Close(StreamError::Conflict)
    }

    #[tokio::test]
    async fn bounded_ordered_and_ends_when_senders_leave() {
        let (tx, mut rx) = mailbox(2);
        tx.try_send(close_item()).unwrap();
        tx.try_send(Deliver::Close(StreamError::PolicyViolation)).unwrap();
        assert!(matches!(tx.try_send(close_item()), Err(TrySendError::Full(_))));
        // Past the capacity only by force.
        tx.force_send(Deliver::Close(StreamError::SystemShutdown));
        assert!(matches!(rx.recv().await, Some(Deliver::Close(StreamError::Conflict))));
        assert!(matches!(rx.try_recv(), Some(Deliver::Close(StreamError::PolicyViolation))));
        assert!(matches!(rx.recv().await, Some(Deliver::Close(StreamError::SystemShutdown))));
        assert!(rx.is_empty());
        let tx2 = tx.clone();
        drop(tx);
        // One sender left: the receiver waits.
        assert!(tokio::time::timeout(Duration::from_millis(50), rx.recv()).await.is_err());
        drop(tx2);
        assert!(rx.recv().await.is_none());
    }

    #[tokio::test]
    async fn a_waiting_sender_gets_room_and_a_closed_mailbox_refuses() {
        let (tx, mut rx) = mailbox(1);
        tx.try_send(close_item()).unwrap();
        let sender = tokio::spawn(async move {
            let r = tx.send(Deliver::Close(StreamError::SystemShutdown)).await;
            (tx, r.is_ok())
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(matches!(rx.recv().await, Some(Deliver::Close(StreamError::Conflict))));
        let (tx, ok) = sender.await.unwrap();
        assert!(ok, "the send completes once there is room");
        assert!(matches!(rx.recv().await, Some(Deliver::Close(StreamError::SystemShutdown))));
        rx.close();
        assert!(matches!(tx.try_send(close_item()), Err(TrySendError::Closed(_))));
        assert!(tx.send(close_item()).await.is_err());
        assert!(rx.recv().await.is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_wakeup_is_lost_under_concurrency() {
        let (tx, mut rx) = mailbox(64);
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let tx = tx.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..1000 {
                    tx.send(close_item()).await.unwrap();
                }
            }));
        }
        drop(tx);
        let mut n = 0;
        while rx.recv().await.is_some() {
            n += 1;
        }
        assert_eq!(n, 4000);
        for t in tasks {
            t.await.unwrap();
        }
    }
}
