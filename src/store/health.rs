//! Store health: a probe reads through the store's own port (the message log) every second;
//! readiness (`/readyz`) follows it, and ingest holds or refuses new messages while the store is
//! down ([`StoreGate`]), so nothing is acknowledged that cannot be made durable. Backend-agnostic:
//! for ScyllaDB it notices an unreachable cluster, for the embedded store an unreadable one.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use vigil_actors::{MessageKey, MessageLog};

/// How often the store is probed.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// A probe slower than this counts as a failure.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether the store answers, as ingest sees it, and what to do with a message meanwhile.
#[derive(Debug, Clone)]
pub struct StoreGate {
    up: watch::Receiver<bool>,
    /// How long a new message waits for the store to come back before it is answered AE
    /// (zero: AE at once). Meanwhile its connection reads nothing more: the sender is slowed.
    pub hold: Duration,
}

impl StoreGate {
    /// A gate over `up`, holding messages up to `hold`.
    pub fn new(up: watch::Receiver<bool>, hold: Duration) -> Self {
        StoreGate { up, hold }
    }

    /// Whether the store is up now, or comes back within the hold time.
    pub async fn wait_until_up(&self) -> bool {
        if *self.up.borrow() {
            return true;
        }
        let mut up = self.up.clone();
        matches!(tokio::time::timeout(self.hold, up.wait_for(|up| *up)).await, Ok(Ok(_)))
    }
}

/// Why a store takes no writes, if it does not (the embedded store after a failed commit).
pub type Writable = Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// Probe `log` (and `writable`) every [`PROBE_INTERVAL`] until `shutdown` is cancelled: publish the result on `up`, and keep
/// `ready` equal to it. A change is logged once (ERROR when the store goes down: what is not
/// durable is not acknowledged until it returns).
pub async fn probe(
    log: Arc<dyn MessageLog>,
    writable: Option<Writable>,
    up: watch::Sender<bool>,
    ready: Arc<AtomicBool>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let key = MessageKey::hl7("vigil|health", "probe");
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let answered = match tokio::time::timeout(PROBE_TIMEOUT, log.accepted_message(&key)).await {
            Ok(Ok(_)) => match writable.as_ref().and_then(|w| w()) {
                None => Ok(()),
                Some(failure) => Err(format!("writes refused: {failure}")),
            },
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {PROBE_TIMEOUT:?}")),
        };
        if shutdown.is_cancelled() {
            return;
        }
        let now_up = answered.is_ok();
        if now_up != *up.borrow() {
            match &answered {
                Ok(()) => tracing::warn!("store reachable again: readiness on, messages acknowledged again"),
                Err(e) => tracing::error!(
                    error = %e,
                    "store unreachable: readiness off, new messages held then answered AE until it returns"
                ),
            }
            let _ = up.send(now_up);
        }
        ready.store(now_up, Ordering::Release);
    }
}
