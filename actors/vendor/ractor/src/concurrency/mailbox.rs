// Copyright (c) Sean Lawlor
//
// This source code is licensed under both the MIT license found in the
// LICENSE-MIT file in the root directory of this source tree.

//! Vigil's patch (see VIGIL-PATCH.md): the unbounded channel behind each actor's supervision
//! and message ports.
//!
//! tokio's unbounded channel allocates its first block of 32 slots when it is created, and
//! keeps two cache-padded halves: for the supervision port (80-byte events) that is about
//! 3.4 KB, and for the message port about 1.2 KB, in every actor, whether or not anything is
//! ever sent. An actor that supervises nothing (most of them) paid for the supervision block
//! for nothing. This mailbox is a `VecDeque` behind a mutex and a [Notify]: it allocates
//! nothing until the first send, and its queue shrinks back once drained after a burst.
//!
//! The semantics are those of `tokio::sync::mpsc::unbounded_channel` that ractor relied on:
//! FIFO; `send` fails once the receiver is closed or dropped, giving the value back; `recv`
//! returns `None` once the queue is empty and either the receiver is closed or every sender is
//! dropped; `recv` is cancel safe (a value is only taken out of the queue by the call that
//! returns it).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::MutexGuard;

use tokio::sync::mpsc::error::SendError;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::Notify;

/// A drained queue keeps at most this capacity; a burst's larger buffer is given back.
const KEEP_CAPACITY: usize = 16;

struct State<T> {
    queue: VecDeque<T>,
    /// The receiver was closed or dropped: sends fail.
    closed: bool,
    /// Live senders; at zero an empty queue ends `recv`.
    senders: usize,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    /// Wakes the one receiver after a send, the last sender's drop or a close.
    ready: Notify,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A panic while holding this lock leaves the queue consistent (every operation is a
        // single push, pop or flag write), so a poisoned lock is taken as it is.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The sending half of a [mailbox].
pub struct MailboxSender<T> {
    shared: Arc<Shared<T>>,
}

/// The receiving half of a [mailbox]: one receiver.
pub struct MailboxReceiver<T> {
    shared: Arc<Shared<T>>,
}

/// An unbounded mailbox that allocates nothing until the first message.
pub fn mailbox<T>() -> (MailboxSender<T>, MailboxReceiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            queue: VecDeque::new(),
            closed: false,
            senders: 1,
        }),
        ready: Notify::new(),
    });
    (
        MailboxSender {
            shared: shared.clone(),
        },
        MailboxReceiver { shared },
    )
}

impl<T> std::fmt::Debug for MailboxSender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MailboxSender").finish_non_exhaustive()
    }
}

impl<T> std::fmt::Debug for MailboxReceiver<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MailboxReceiver").finish_non_exhaustive()
    }
}

impl<T> MailboxSender<T> {
    /// Queue a value; gives it back when the receiver is closed or gone.
    pub fn send(&self, value: T) -> Result<(), SendError<T>> {
        {
            let mut state = self.shared.lock();
            if state.closed {
                return Err(SendError(value));
            }
            state.queue.push_back(value);
        }
        self.shared.ready.notify_one();
        Ok(())
    }

    /// Whether the receiver is closed or gone.
    pub fn is_closed(&self) -> bool {
        self.shared.lock().closed
    }
}

impl<T> Clone for MailboxSender<T> {
    fn clone(&self) -> Self {
        self.shared.lock().senders += 1;
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<T> Drop for MailboxSender<T> {
    fn drop(&mut self) {
        let last = {
            let mut state = self.shared.lock();
            state.senders -= 1;
            state.senders == 0
        };
        if last {
            self.shared.ready.notify_one();
        }
    }
}

impl<T> MailboxReceiver<T> {
    /// The next value, waiting for one; `None` once the queue is empty and the mailbox is
    /// closed or has no sender left. Cancel safe.
    pub async fn recv(&mut self) -> Option<T> {
        // Take part in tokio's cooperative budget as its channels do: an actor whose mailbox
        // never runs dry still yields its worker to other tasks every so often.
        #[cfg(all(
            feature = "tokio_runtime",
            not(all(target_arch = "wasm32", target_os = "unknown"))
        ))]
        tokio::task::coop::consume_budget().await;
        loop {
            match self.try_recv() {
                Ok(value) => return Some(value),
                Err(TryRecvError::Disconnected) => return None,
                // `notify_one` stores a permit when nobody waits, so a send between the check
                // above and this wait is not missed.
                Err(TryRecvError::Empty) => self.shared.ready.notified().await,
            }
        }
    }

    /// The next value if one is queued.
    pub fn try_recv(&mut self) -> Result<T, TryRecvError> {
        let mut state = self.shared.lock();
        match state.queue.pop_front() {
            Some(value) => {
                if state.queue.is_empty() && state.queue.capacity() > KEEP_CAPACITY {
                    state.queue.shrink_to(KEEP_CAPACITY);
                }
                Ok(value)
            }
            None if state.closed || state.senders == 0 => Err(TryRecvError::Disconnected),
            None => Err(TryRecvError::Empty),
        }
    }

    /// Refuse further sends; what is queued can still be received.
    pub fn close(&mut self) {
        self.shared.lock().closed = true;
    }
}

impl<T> Drop for MailboxReceiver<T> {
    fn drop(&mut self) {
        // Take the values out under the lock, drop them after it: a value's own drop may send
        // to this mailbox again.
        let queued = {
            let mut state = self.shared.lock();
            state.closed = true;
            std::mem::take(&mut state.queue)
        };
        drop(queued);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn values_arrive_in_order_and_a_closed_mailbox_refuses_sends() {
        let (tx, mut rx) = mailbox::<u32>();
        for i in 0..100 {
            tx.send(i).unwrap();
        }
        for i in 0..100 {
            assert_eq!(rx.recv().await, Some(i));
        }
        assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
        tx.send(7).unwrap();
        rx.close();
        assert!(tx.is_closed());
        assert_eq!(tx.send(8).unwrap_err().0, 8);
        // What was queued before the close is still delivered, then the end.
        assert_eq!(rx.recv().await, Some(7));
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn recv_ends_when_the_last_sender_is_dropped() {
        let (tx, mut rx) = mailbox::<u32>();
        let tx2 = tx.clone();
        tx2.send(1).unwrap();
        drop(tx);
        assert_eq!(rx.recv().await, Some(1));
        let waiting = tokio::spawn(async move { rx.recv().await });
        tokio::task::yield_now().await;
        drop(tx2);
        assert_eq!(waiting.await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_dropped_receiver_refuses_sends() {
        let (tx, rx) = mailbox::<u32>();
        tx.send(1).unwrap();
        drop(rx);
        assert!(tx.is_closed());
        assert_eq!(tx.send(2).unwrap_err().0, 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_waiting_receiver_is_woken_by_senders_on_other_threads() {
        let (tx, mut rx) = mailbox::<u64>();
        let senders: Vec<_> = (0..4u64)
            .map(|s| {
                let tx = tx.clone();
                tokio::spawn(async move {
                    for i in 0..10_000u64 {
                        tx.send(s * 1_000_000 + i).unwrap();
                        if i % 100 == 0 {
                            tokio::task::yield_now().await;
                        }
                    }
                })
            })
            .collect();
        drop(tx);
        let mut last = [None::<u64>; 4];
        let mut count = 0;
        while let Some(v) = rx.recv().await {
            let s = (v / 1_000_000) as usize;
            // Each sender's values arrive in its order.
            assert!(last[s].is_none_or(|l| l < v));
            last[s] = Some(v);
            count += 1;
        }
        for s in senders {
            s.await.unwrap();
        }
        assert_eq!(count, 40_000);
    }

    #[tokio::test]
    async fn a_cancelled_recv_loses_nothing() {
        let (tx, mut rx) = mailbox::<u32>();
        // A recv dropped while waiting (as a `select!` drops the losing branch) ...
        let timed_out = tokio::time::timeout(std::time::Duration::from_millis(5), rx.recv()).await;
        assert!(timed_out.is_err());
        tx.send(3).unwrap();
        // ... takes nothing: the value waits for the next recv.
        assert_eq!(rx.recv().await, Some(3));
    }

    #[tokio::test]
    async fn a_mailbox_that_never_runs_dry_still_yields_to_other_tasks() {
        let (tx, mut rx) = mailbox::<u32>();
        for i in 0..10_000 {
            tx.send(i).unwrap();
        }
        let ran = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let other = ran.clone();
        tokio::spawn(async move { other.store(true, std::sync::atomic::Ordering::SeqCst) });
        // On this current-thread runtime the other task runs only when this one yields.
        let mut ran_before_the_end = false;
        for _ in 0..10_000 {
            rx.recv().await.unwrap();
            ran_before_the_end |= ran.load(std::sync::atomic::Ordering::SeqCst);
        }
        assert!(ran_before_the_end);
    }

    #[test]
    fn an_empty_mailbox_allocates_no_queue_and_a_drained_burst_shrinks() {
        let (tx, mut rx) = mailbox::<[u8; 80]>();
        assert_eq!(rx.shared.lock().queue.capacity(), 0);
        for _ in 0..1000 {
            tx.send([0; 80]).unwrap();
        }
        while rx.try_recv().is_ok() {}
        assert!(rx.shared.lock().queue.capacity() <= KEEP_CAPACITY);
    }
}
