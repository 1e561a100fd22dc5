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

use crate::store::commit::Expected;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use vigil_actors::{
    ClinicalEvent, Clock, DurableTiming, Envelope, FromMessage, MessageKey, MessageLog, Routed, Router,
};

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

/// A message in flight: its key and its parts' keys, and the channel resends of any of them
/// wait on.
pub struct InFlight {
    keys: Vec<MessageKey>,
    done: watch::Sender<Option<Outcome>>,
    ingress: Arc<Ingress>,
}

impl InFlight {
    fn settle(self, outcome: Outcome) -> Outcome {
        let _ = self.done.send(Some(outcome));
        self.ingress.count(outcome);
        outcome
    }
}

impl Drop for InFlight {
    /// Settled or abandoned (the request dropped), its keys are no longer in flight.
    fn drop(&mut self) {
        let ours = self.done.subscribe();
        for key in &self.keys {
            // Only our own entry: a key another message took over once ours was settled stays.
            self.ingress.inflight.remove_if(key, |_, first| first.same_channel(&ours));
        }
    }
}

/// One part of a message that may also be sent on its own, or inside another message (an
/// entry of a FHIR transaction): what recognises a resend of it, and its events.
pub struct Part {
    /// Its resend key; `None` when nothing recognises a resend of it (it is applied each time).
    pub key: Option<MessageKey>,
    /// Its events.
    pub events: Vec<ClinicalEvent>,
}

impl Submission {
    /// The outcome, once decided: for a stored message, once every event is durable.
    ///
    /// The message's keys stay in flight (other messages with a part in common wait on them)
    /// until this is awaited: a caller holding several submissions awaits them together, never
    /// one behind another, or two messages can wait on each other (the FHIR batch did).
    pub async fn outcome(self) -> Outcome {
        self.outcome_timed().await.0
    }

    /// As [`Submission::outcome`], with when the last of its writes to complete was queued and
    /// completed (`None` when no write of this message was waited on): the `in_actor`,
    /// `in_store` and `ack_wake` stages.
    pub async fn outcome_timed(self) -> (Outcome, Option<DurableTiming>) {
        match self {
            Submission::Done(outcome) => (outcome, None),
            Submission::Durable { tickets, permit, inflight } => {
                // Every event must be durable before anything is acknowledged.
                let mut stored = true;
                let mut last: Option<DurableTiming> = None;
                for ticket in tickets {
                    let (result, timing) = ticket.durable_timed().await;
                    if let Some(timing) = timing
                        && last.is_none_or(|l| timing.completed > l.completed)
                    {
                        last = Some(timing);
                    }
                    if let Err(e) = result {
                        if stored {
                            tracing::error!(error = %e, "message not stored; sender told to resend");
                        }
                        stored = false;
                    }
                }
                drop(permit);
                (inflight.settle(if stored { Outcome::Stored } else { Outcome::NotStored }), last)
            }
            Submission::InFlightDuplicate { mut first, ingress } => {
                let outcome = match first.wait_for(Option::is_some).await.map(|v| *v) {
                    Ok(Some(o)) if o.accepted() => Outcome::Duplicate,
                    _ => Outcome::NotStored,
                };
                ingress.count(outcome);
                (outcome, None)
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
    /// Counts each message on its way to the store, for the commit pipeline to wait for
    /// ([`Ingress::with_expected`]); nobody reads it unless given.
    transit: Arc<vigil_actors::Transit>,
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
            transit: Arc::default(),
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

    /// Count each message taken in on `expected` until its actor has queued its write, so the
    /// commit pipeline waits for the writes on their way, and only for those.
    pub fn with_expected(mut self, expected: &Expected) -> Self {
        self.transit = Arc::clone(expected.transit());
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
        self.submit_parts(envelope, vec![Part { key: None, events }]).await.0
    }

    /// [`Ingress::submit`] for a message made of parts that may also be sent on their own:
    /// besides the message's own key, each part's key recognises a part accepted before (alone
    /// or in another message) or in flight meanwhile; such a part is not stored again and is
    /// marked `true` in the answer (by position). The other parts' keys are logged in the same
    /// atomic write as their events. Parts sharing a key: the first is stored, the others are
    /// resends of it.
    pub async fn submit_parts(self: &Arc<Self>, envelope: Envelope, parts: Vec<Part>) -> (Submission, Vec<bool>) {
        let mut resent = vec![false; parts.len()];
        // Nothing is acknowledged that cannot be made durable: while the store is down a new
        // message waits for it (its sender reads no ACK and sends no more), then is refused.
        if let Some(gate) = &self.gate
            && !gate.wait_until_up().await
        {
            self.count(Outcome::NotStored);
            return (Submission::Done(Outcome::NotStored), resent);
        }
        let done = match self.inflight.entry(envelope.key.clone()) {
            Entry::Occupied(first) => {
                let first = first.get().clone();
                return (Submission::InFlightDuplicate { first, ingress: Arc::clone(self) }, resent);
            }
            Entry::Vacant(slot) => {
                let (done, first) = watch::channel(None);
                slot.insert(first);
                done
            }
        };
        // From here every path settles the in-flight entries: `outcome` for the durable path.
        let mut inflight = InFlight { keys: vec![envelope.key.clone()], done, ingress: Arc::clone(self) };
        match self.accepted(&envelope).await {
            Ok(true) => return (Submission::Done(inflight.settle(Outcome::Duplicate)), resent),
            Ok(false) => {}
            Err(()) => return (Submission::Done(inflight.settle(Outcome::NotStored)), resent),
        }
        let Ok(claimed) = self.claim_parts(&envelope, &parts, &mut inflight, &mut resent).await else {
            return (Submission::Done(inflight.settle(Outcome::NotStored)), resent);
        };
        // The events of the parts to store, each with the part it belongs to.
        let mut events: Vec<(ClinicalEvent, usize)> = Vec::new();
        for (i, part) in parts.into_iter().enumerate() {
            if !resent[i] {
                events.extend(part.events.into_iter().map(|e| (e, i)));
            }
        }
        if events.is_empty() {
            return (Submission::Done(inflight.settle(Outcome::Empty)), resent);
        }
        let Ok(permit) = Arc::clone(&self.permits).acquire_owned().await else {
            return (Submission::Done(inflight.settle(Outcome::NotStored)), resent);
        };
        // One bundle per patient, in message order: a patient's events of one message are
        // stored atomically (an A01 with its AL1 allergies, an RDE with several orders). A
        // part's key goes with the bundle of its last event: never logged before all of them.
        let mut bundles: Vec<(Vec<ClinicalEvent>, Vec<MessageKey>)> = Vec::new();
        let mut last_bundle_of = vec![None; claimed.len()];
        for (event, part) in events {
            match bundles.last_mut() {
                Some((last, _)) if last.first().is_some_and(|e| e.patient_id == event.patient_id) => last.push(event),
                _ => bundles.push((vec![event], Vec::new())),
            }
            last_bundle_of[part] = Some(bundles.len() - 1);
        }
        // In part order, so each bundle lists its parts' keys in message order.
        for (bundle, key) in last_bundle_of.into_iter().zip(claimed) {
            if let (Some(bundle), Some(key)) = (bundle, key) {
                bundles[bundle].1.push(key);
            }
        }
        let last = bundles.len() - 1;
        let envelope = Arc::new(envelope);
        let mut tickets = Vec::with_capacity(bundles.len());
        // The last bundle carries the count: the batch it may join is the one that answers.
        let mut in_transit = Some(self.transit.enter());
        for (i, (bundle, part_keys)) in bundles.into_iter().enumerate() {
            let in_transit = if i == last { in_transit.take() } else { None };
            let message =
                FromMessage { envelope: Arc::clone(&envelope), logs_message: i == last, parts: part_keys, in_transit };
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
                    return (Submission::Done(inflight.settle(Outcome::NotStored)), resent);
                }
            }
        }
        (Submission::Durable { tickets, permit, inflight }, resent)
    }

    /// Whether the message log holds `envelope`'s key, accepted within [`DEDUP_WINDOW`];
    /// `Err` when the log cannot be read (logged).
    async fn accepted(&self, envelope: &Envelope) -> Result<bool, ()> {
        self.key_accepted(&envelope.key, envelope.received_at).await
    }

    async fn key_accepted(&self, key: &MessageKey, received_at: time::OffsetDateTime) -> Result<bool, ()> {
        match self.log.accepted_message(key).await {
            Ok(Some(first)) if received_at - first.received_at <= DEDUP_WINDOW => {
                tracing::info!(patient = %first.patient_id, "duplicate of an accepted message re-acknowledged, not reprocessed");
                Ok(true)
            }
            Ok(_) => Ok(false),
            Err(e) => {
                tracing::error!(error = %e, "message log unreadable; sender told to resend");
                Err(())
            }
        }
    }

    /// Take the parts' keys in flight (in key order, so two messages sharing parts never wait
    /// on each other), waiting out a part another message has in flight; mark `resent` the
    /// parts accepted before or meanwhile, and those repeating an earlier part's key. Answers,
    /// by part, the keys this message is to log.
    async fn claim_parts(
        &self,
        envelope: &Envelope,
        parts: &[Part],
        inflight: &mut InFlight,
        resent: &mut [bool],
    ) -> Result<Vec<Option<MessageKey>>, ()> {
        let mut claimed = vec![None; parts.len()];
        let mut order: Vec<(&MessageKey, usize)> =
            parts.iter().enumerate().filter_map(|(i, p)| p.key.as_ref().map(|k| (k, i))).collect();
        let rank = |(k, i): &(&MessageKey, usize)| {
            (k.sender.clone(), k.id.clone(), k.source == vigil_actors::Source::Fhir, *i)
        };
        order.sort_by_key(rank);
        let mut previous: Option<&MessageKey> = None;
        for (key, i) in order {
            if previous == Some(key) || *key == envelope.key {
                resent[i] = true;
                continue;
            }
            previous = Some(key);
            resent[i] = !self.claim(key, inflight).await || self.key_accepted(key, envelope.received_at).await?;
            if !resent[i] {
                claimed[i] = Some(key.clone());
            }
        }
        Ok(claimed)
    }

    /// Take `key` in flight for `inflight`; `false` when another message holding it was
    /// accepted meanwhile (the part is a resend).
    async fn claim(&self, key: &MessageKey, inflight: &mut InFlight) -> bool {
        loop {
            let mut first = match self.inflight.entry(key.clone()) {
                Entry::Vacant(slot) => {
                    slot.insert(inflight.done.subscribe());
                    inflight.keys.push(key.clone());
                    return true;
                }
                Entry::Occupied(mut taken) => {
                    let settled = *taken.get().borrow();
                    match settled {
                        Some(outcome) if outcome.accepted() => return false,
                        // Waiting for the other message's outcome, below.
                        None if taken.get().has_changed().is_ok() => taken.get().clone(),
                        // Settled and not stored, or abandoned: its holder is leaving; the
                        // key is ours.
                        _ => {
                            taken.insert(inflight.done.subscribe());
                            inflight.keys.push(key.clone());
                            return true;
                        }
                    }
                }
            };
            // Holding no map lock.
            let _ = first.wait_for(Option::is_some).await;
        }
    }
}
