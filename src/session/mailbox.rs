//! A session's mailbox: a bounded queue that routing pushes to and the session loop takes from.
//!
//! A tokio channel allocates a block of 32 slots up front, about 0.8 KiB per session even when
//! nothing is ever queued. This one is a `VecDeque` behind a mutex that is held only to push or
//! pop (never across an `.await`), the receiver's waker kept beside it, and a `Notify` for
//! senders waiting for room: an empty mailbox costs about 150 bytes. The receiver is polled
//! (`poll_recv`), so the session loop needs no future for it.
//! One receiver; any number of senders. The receiver sees the end (`None`) once every sender is
//! gone and the queue is drained.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use tokio::sync::Notify;

use super::registry::Deliver;

struct Shared {
    state: Mutex<State>,
    /// Room was made.
    room: Notify,
    capacity: usize,
}

struct State {
    queue: VecDeque<Deliver>,
    senders: usize,
    /// The receiver closed (or is gone): sends fail.
    closed: bool,
    /// The receiver waiting for an item (or for the last sender to leave).
    waiting: Option<Waker>,
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
        state: Mutex::new(State { queue: VecDeque::new(), senders: 1, closed: false, waiting: None }),
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
        let waiting = {
            let mut st = self.shared.lock();
            if st.closed {
                return Err(TrySendError::Closed(d));
            }
            if bounded && st.queue.len() >= self.shared.capacity {
                return Err(TrySendError::Full(d));
            }
            st.queue.push_back(d);
            st.waiting.take()
        };
        if let Some(w) = waiting {
            w.wake();
        }
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

    /// Both handles lead to the same mailbox.
    pub fn same_as(&self, other: &Sender) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    /// The receiver is gone or closed: nothing sent would be taken.
    pub fn is_closed(&self) -> bool {
        self.shared.lock().closed
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
        let waiting = {
            let mut st = self.shared.lock();
            st.senders -= 1;
            if st.senders == 0 {
                st.waiting.take()
            } else {
                None
            }
        };
        if let Some(w) = waiting {
            w.wake();
        }
    }
}

impl Receiver {
    /// The next item; `None` once every sender is gone (or the mailbox was closed) and nothing
    /// is left.
    pub async fn recv(&mut self) -> Option<Deliver> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// `recv` as a poll: `Pending` registers the task to be woken by the next push (or by the
    /// last sender leaving).
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Deliver>> {
        let mut st = self.shared.lock();
        match Self::take(&mut st) {
            Some(r) => {
                drop(st);
                if r.is_some() {
                    // One item taken, room for one sender (a permit if none waits).
                    self.shared.room.notify_one();
                }
                Poll::Ready(r)
            }
            None => {
                // Checked and registered under the same lock: no push can slip between.
                match &mut st.waiting {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    w => *w = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
        }
    }

    fn take(st: &mut State) -> Option<Option<Deliver>> {
        if let Some(d) = st.queue.pop_front() {
            if st.queue.is_empty() {
                // Give the memory back once a burst is delivered.
                st.queue = VecDeque::new();
            }
            return Some(Some(d));
        }
        if st.senders == 0 || st.closed {
            return Some(None);
        }
        None
    }

    pub fn try_recv(&mut self) -> Option<Deliver> {
        let r = Self::take(&mut self.shared.lock()).flatten();
        if r.is_some() {
            self.shared.room.notify_one();
        }
        r
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
