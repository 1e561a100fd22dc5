//! Send times kept to tens of microseconds.
//!
//! tokio's timer wakes on whole milliseconds: a sender asked to wake at an intended send time
//! wakes up to a millisecond late (about 0.9 ms on average, 2 ms at p99 on a busy 2-core
//! machine), and every sender due within the same millisecond wakes on the same tick, so the
//! load arrives in bursts, once a millisecond. Both are the harness's, not the server's, yet
//! both land in every ACK latency (measured from the intended send). [`Pacing::Precise`] wakes
//! senders from a thread of its own that sleeps to the earliest intended time (the kernel's
//! high-resolution timer), so a message is sent when it was meant to be.
//!
//! [`Pacing::Tick`] keeps tokio's timer, as the harness did before (for comparison with runs
//! made then). The report states which was used, and the send lag it left.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Condvar, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// How the harness waits for each intended send time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Pacing {
    /// A timer thread of its own: senders wake within tens of microseconds of the intended
    /// time.
    #[default]
    Precise,
    /// tokio's timer: senders wake on the next millisecond tick.
    Tick,
}

impl Pacing {
    /// Wait until `at`.
    pub async fn until(self, at: Instant) {
        match self {
            Pacing::Tick => tokio::time::sleep_until(at).await,
            Pacing::Precise => Until { at: at.into_std(), timer: timer() }.await,
        }
    }

    /// The name reports give it.
    pub fn name(self) -> &'static str {
        match self {
            Pacing::Precise => "precise",
            Pacing::Tick => "tick",
        }
    }
}

/// A waker due at a time.
struct Due {
    at: std::time::Instant,
    /// Order of registration: equal times wake in it.
    seq: u64,
    waker: Waker,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Due {}

impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Due {
    /// Reversed: the earliest is the greatest, at the top of the (max-)heap.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

#[derive(Default)]
struct Queue {
    due: BinaryHeap<Due>,
    seq: u64,
}

/// The timer thread's queue and its wake-up.
struct Timer {
    queue: Mutex<Queue>,
    changed: Condvar,
}

/// The process's timer, its thread started on first use. The queue holds one entry per
/// waiting sender (each waits for one time at a time), so it is bounded by the senders.
fn timer() -> &'static Timer {
    static TIMER: OnceLock<&'static Timer> = OnceLock::new();
    TIMER.get_or_init(|| {
        let timer: &'static Timer =
            Box::leak(Box::new(Timer { queue: Mutex::new(Queue::default()), changed: Condvar::new() }));
        std::thread::Builder::new().name("pacer".into()).spawn(move || timer.run()).expect("the pacer thread starts");
        timer
    })
}

impl Timer {
    fn run(&self) {
        // The kernel may defer a sleeping thread's wake-up by its timer slack (50 µs by
        // default) to batch wake-ups; this thread's are the measurement. Best effort: without
        // the file the slack stays at the default.
        let _ = std::fs::write("/proc/thread-self/timerslack_ns", "1");
        let mut ready = Vec::new();
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let now = std::time::Instant::now();
            while queue.due.peek().is_some_and(|d| d.at <= now) {
                if let Some(d) = queue.due.pop() {
                    ready.push(d.waker);
                }
            }
            if !ready.is_empty() {
                drop(queue);
                for waker in ready.drain(..) {
                    waker.wake();
                }
                queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
                continue;
            }
            queue = match queue.due.peek().map(|d| d.at) {
                None => self.changed.wait(queue).unwrap_or_else(|e| e.into_inner()),
                Some(at) => {
                    self.changed
                        .wait_timeout(queue, at.saturating_duration_since(now))
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        }
    }

    /// Wake `waker` at `at`.
    fn register(&self, at: std::time::Instant, waker: Waker) {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        queue.seq += 1;
        let seq = queue.seq;
        queue.due.push(Due { at, seq, waker });
        // The thread sleeps until the earliest time: tell it when that is now this one.
        if queue.due.peek().is_some_and(|d| d.seq == seq) {
            self.changed.notify_one();
        }
    }
}

/// A wait for the pacer thread.
struct Until {
    at: std::time::Instant,
    timer: &'static Timer,
}

impl Future for Until {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if std::time::Instant::now() >= self.at {
            return Poll::Ready(());
        }
        // Polled again before its time (a spurious wake): registered again, and the extra
        // entry only wakes it once more.
        self.timer.register(self.at, cx.waker().clone());
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn precise_pacing_never_wakes_early_and_keeps_the_order_of_times() {
        let start = Instant::now() + Duration::from_millis(20);
        let mut tasks = Vec::new();
        // Out of order, several on the same time.
        for offset in [9u64, 1, 5, 5, 3, 7, 0, 9] {
            let at = start + Duration::from_micros(offset * 700);
            tasks.push(tokio::spawn(async move {
                Pacing::Precise.until(at).await;
                (at, Instant::now())
            }));
        }
        for task in tasks {
            let (at, woke) = task.await.unwrap();
            assert!(woke >= at, "woke {:?} before its time", at - woke);
        }
    }

    #[tokio::test]
    async fn a_time_already_past_does_not_wait() {
        let past = Instant::now() - Duration::from_secs(1);
        tokio::time::timeout(Duration::from_secs(10), Pacing::Precise.until(past)).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), Pacing::Tick.until(past)).await.unwrap();
    }
}
