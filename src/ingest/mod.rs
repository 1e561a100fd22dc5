//! Ingest, whatever the feed: [`Ingress`] takes one received message — its [`Envelope`]
//! (feed, sender, the key that recognises a resend, raw bytes, received-at) and the events
//! mapped from it — and owns what every feed shares: duplicates, the bound on messages in
//! flight, one atomic bundle per patient, and the wait for durability. It answers with an
//! [`Outcome`] that the feed turns into its own reply (an HL7 ACK in [`hl7::feed`], a FHIR
//! response later). See README.md in this folder for the path of a message.

pub mod fhir;
pub mod hl7;
pub mod map;
pub mod mllp;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use vigil_actors::{ClinicalEvent, Clock, Envelope, FromMessage, MessageKey, MessageLog, Routed, Router};

pub use hl7::hl7_timestamp;

/// Counters exported on `/metrics`.
#[derive(Debug, Default)]
pub struct IngestMetrics {
    /// Messages answered with an accepting reply (stored, or accepted with nothing to store).
    pub accepted: AtomicU64,
    /// Messages answered with an error or reject.
    pub rejected: AtomicU64,
    /// Resends of accepted messages, re-acknowledged without processing.
    pub duplicates: AtomicU64,
    /// Bytes received outside MLLP frames, discarded.
    pub discarded_bytes: AtomicU64,
}

/// A resend within this window of an accepted message is re-acknowledged, not reprocessed.
pub const DEDUP_WINDOW: time::Duration = time::Duration::days(7);

/// How a submitted message ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every event is durable, with the message-log entry.
    Stored,
    /// Accepted with nothing to store (no events).
    Empty,
    /// A resend of an accepted message: answered as accepted, not processed again.
    Duplicate,
    /// Not stored through no fault of the sender, who should resend (a store or actor error,
    /// shutting down). Nothing of it is acknowledged.
    NotStored,
}

impl Outcome {
    /// Whether the sender may consider the message delivered.
    pub fn accepted(self) -> bool {
        !matches!(self, Outcome::NotStored)
    }
}

/// A submitted message, answered now or once durable.
pub enum Submission {
    /// Decided already.
    Done(Outcome),
    /// Waiting for every bundle of the message to be durable.
    Durable {
        /// Resolve on commit, one per patient bundle, in routing order.
        tickets: Vec<Routed>,
        /// Held until answered: bounds messages in flight across all connections and feeds.
        permit: OwnedSemaphorePermit,
        /// Tells resends waiting on this message how it ended.
        inflight: InFlight,
    },
    /// A resend of a message still in flight: answered as the first copy is.
    InFlightDuplicate {
        /// Becomes `Some(outcome)` when the first copy is decided.
        first: watch::Receiver<Option<Outcome>>,
        /// For the counters.
        ingress: Arc<Ingress>,
    },
}

/// A message in flight: its key, and the channel resends of it wait on.
pub struct InFlight {
    key: MessageKey,
    done: watch::Sender<Option<Outcome>>,
    ingress: Arc<Ingress>,
}

impl InFlight {
    fn settle(self, outcome: Outcome) -> Outcome {
        let _ = self.done.send(Some(outcome));
        self.ingress.inflight.remove(&self.key);
        self.ingress.count(outcome);
        outcome
    }
}

impl Submission {
    /// The outcome, once decided: for a stored message, once every event is durable.
    pub async fn outcome(self) -> Outcome {
        match self {
            Submission::Done(outcome) => outcome,
            Submission::Durable { tickets, permit, inflight } => {
                // Every event must be durable before anything is acknowledged.
                let mut stored = true;
                for ticket in tickets {
                    if let Err(e) = ticket.durable().await {
                        if stored {
                            tracing::error!(error = %e, "message not stored; sender told to resend");
                        }
                        stored = false;
                    }
                }
                drop(permit);
                inflight.settle(if stored { Outcome::Stored } else { Outcome::NotStored })
            }
            Submission::InFlightDuplicate { mut first, ingress } => {
                let outcome = match first.wait_for(Option::is_some).await.map(|v| *v) {
                    Ok(Some(o)) if o.accepted() => Outcome::Duplicate,
                    _ => Outcome::NotStored,
                };
                ingress.count(outcome);
                outcome
            }
        }
    }
}

/// The shared front door of every feed.
pub struct Ingress {
    router: Arc<Router>,
    log: Arc<dyn MessageLog>,
    /// Messages begun but not yet durable, so that a resend arriving meanwhile (a sender that
    /// timed out and retried on another connection) waits for the first copy's outcome.
    inflight: DashMap<MessageKey, watch::Receiver<Option<Outcome>>>,
    clock: Arc<dyn Clock>,
    permits: Arc<Semaphore>,
    /// Whether the store answers; without it, always assumed.
    gate: Option<crate::store::health::StoreGate>,
    /// Counters.
    pub metrics: IngestMetrics,
    /// Per-stage time histograms (records nowhere unless given by [`Ingress::with_stages`]).
    pub stages: crate::http::metrics::Stages,
}

impl Ingress {
    /// Ingest over `router`, recognising resends in `log`. `permits` bounds messages in flight.
    pub fn new(router: Arc<Router>, log: Arc<dyn MessageLog>, clock: Arc<dyn Clock>, permits: usize) -> Self {
        Ingress {
            router,
            log,
            inflight: DashMap::new(),
            clock,
            permits: Arc::new(Semaphore::new(permits.max(1))),
            gate: None,
            metrics: IngestMetrics::default(),
            stages: crate::http::metrics::Stages::default(),
        }
    }

    /// Time the stages of every message into `stages` (the server's `/metrics`).
    pub fn with_stages(mut self, stages: crate::http::metrics::Stages) -> Self {
        self.stages = stages;
        self
    }

    /// Hold, then refuse (AE), new messages while `gate` says the store is down.
    pub fn with_store_gate(mut self, gate: crate::store::health::StoreGate) -> Self {
        self.gate = Some(gate);
        self
    }

    /// The clock messages are received by.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Count a refusal a feed answered itself (unparseable, unsupported, invalid content).
    pub fn refused(&self) {
        self.metrics.rejected.fetch_add(1, Ordering::Relaxed);
    }

    fn count(&self, outcome: Outcome) {
        let counter = match outcome {
            Outcome::Stored | Outcome::Empty => &self.metrics.accepted,
            Outcome::Duplicate => &self.metrics.duplicates,
            Outcome::NotStored => &self.metrics.rejected,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Take one message and the events mapped from it. Call in arrival order (a patient's
    /// events keep their order); await [`Submission::outcome`] in any order.
    ///
    /// A message whose key was accepted within [`DEDUP_WINDOW`], or is in flight, is not
    /// processed again. Its events go to the patients' actors as one bundle per patient, each
    /// event row naming its message; the message-log entry (the raw message, and what
    /// recognises a resend) is written once, with the last bundle: a resend is recognised only once every bundle before it was
    /// queued, and the embedded store commits in queue order.
    pub async fn submit(self: &Arc<Self>, envelope: Envelope, events: Vec<ClinicalEvent>) -> Submission {
        // Nothing is acknowledged that cannot be made durable: while the store is down a new
        // message waits for it (its sender reads no ACK and sends no more), then is refused.
        if let Some(gate) = &self.gate
            && !gate.wait_until_up().await
        {
            self.count(Outcome::NotStored);
            return Submission::Done(Outcome::NotStored);
        }
        let done = match self.inflight.entry(envelope.key.clone()) {
            Entry::Occupied(first) => {
                return Submission::InFlightDuplicate { first: first.get().clone(), ingress: Arc::clone(self) };
            }
            Entry::Vacant(slot) => {
                let (done, first) = watch::channel(None);
                slot.insert(first);
                done
            }
        };
        // From here every path settles the in-flight entry: `outcome` for the durable path.
        let inflight = InFlight { key: envelope.key.clone(), done, ingress: Arc::clone(self) };
        match self.log.accepted_message(&envelope.key).await {
            Ok(Some(first)) if envelope.received_at - first.received_at <= DEDUP_WINDOW => {
                tracing::info!(patient = %first.patient_id, "duplicate of an accepted message re-acknowledged, not reprocessed");
                return Submission::Done(inflight.settle(Outcome::Duplicate));
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %e, "message log unreadable; sender told to resend");
                return Submission::Done(inflight.settle(Outcome::NotStored));
            }
        }
        if events.is_empty() {
            return Submission::Done(inflight.settle(Outcome::Empty));
        }
        let Ok(permit) = Arc::clone(&self.permits).acquire_owned().await else {
            return Submission::Done(inflight.settle(Outcome::NotStored));
        };
        // One bundle per patient, in message order: a patient's events of one message are
        // stored atomically (an A01 with its AL1 allergies, an RDE with several orders).
        let mut bundles: Vec<Vec<ClinicalEvent>> = Vec::new();
        for event in events {
            match bundles.last_mut() {
                Some(last) if last.first().is_some_and(|e| e.patient_id == event.patient_id) => last.push(event),
                _ => bundles.push(vec![event]),
            }
        }
        let last = bundles.len() - 1;
        let envelope = Arc::new(envelope);
        let mut tickets = Vec::with_capacity(bundles.len());
        for (i, bundle) in bundles.into_iter().enumerate() {
            let message = FromMessage { envelope: Arc::clone(&envelope), logs_message: i == last };
            // The last bundle (the one that logs the message) is handed over without waiting
            // for its actor, so the connection can begin its next message meanwhile (a
            // patient's messages still reach its actor in order). A bundle before it waits until
            // its actor has queued it: the log entry must never be queued ahead of a bundle of
            // its message, or a crash between the two would leave a resend recognised as a
            // duplicate with that bundle lost.
            let routed = match self.router.route_all(Some(message), bundle).await {
                Ok(routed) if i == last => Ok(routed),
                Ok(routed) => routed.taken().await.map(Routed::Taken),
                Err(e) => Err(e),
            };
            match routed {
                Ok(ticket) => tickets.push(ticket),
                Err(e) => {
                    // Events already routed may become durable; the sender resends and the
                    // duplicate check answers for the message as a whole.
                    tracing::error!(error = %e, "message not routed; sender told to resend");
                    return Submission::Done(inflight.settle(Outcome::NotStored));
                }
            }
        }
        Submission::Durable { tickets, permit, inflight }
    }
}
