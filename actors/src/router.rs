//! The router: owns the patient id -> actor map, starts (and rehydrates) patient actors on
//! first use, and hands each event to its patient's actor. Actor names carry only opaque ids.

use std::sync::Arc;
use std::time::Instant;

use dashmap::DashMap;
use metrics::{Counter, Histogram};
use ractor::{Actor, ActorRef, ActorStatus};
use time::OffsetDateTime;
use tokio::sync::{Mutex, oneshot};

use crate::model::{Alert, AlertAction, AlertId, ClinicalEvent, EventKind, FromMessage, PatientId, PatientSummary};
use crate::patient::{
    ActFailure, PatientActor, PatientArgs, PatientMsg, PatientState, PatientSupervisor, SupervisorMsg, SupervisorState,
    WINDOW_MAX_AGE,
};
use crate::ports::{AlertStore, Clock, Durable, DurableTiming, EventStore, LiveFeed, Ports, RuleEngine, StoreError};

/// How long shutdown waits for patient actors to finish their queued messages.
const SHUTDOWN_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// Why an event was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The store refused or failed the append.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// One bundle held events of different patients.
    #[error("events of one bundle must be for one patient")]
    MixedPatients,
    /// No such patient (no live actor, no recent events).
    #[error("unknown patient")]
    UnknownPatient,
    /// The patient actor could not be started or reached.
    #[error("patient actor unavailable: {0}")]
    Actor(String),
}

/// Events handed to their patient's actor ([`Router::route_all`]).
#[derive(Debug)]
pub enum Routed {
    /// In the actor's mailbox: the actor answers with the ticket once it has queued the append.
    InMailbox(oneshot::Receiver<Result<Durable, StoreError>>),
    /// Queued for append already (or nothing to append).
    Taken(Durable),
}

impl Routed {
    /// The durability ticket, once the actor has applied the events, run the rules and queued
    /// the append.
    pub async fn taken(self) -> Result<Durable, IngestError> {
        match self {
            Routed::InMailbox(rx) => Ok(rx.await.map_err(|_| IngestError::Actor("actor stopped".into()))??),
            Routed::Taken(ticket) => Ok(ticket),
        }
    }

    /// Wait until the events are durable.
    pub async fn durable(self) -> Result<(), IngestError> {
        self.durable_timed().await.0
    }

    /// As [`Routed::durable`], with when the append was queued and when the committer
    /// completed it ([`Durable::wait_timed`]; `None` when no append was queued).
    pub async fn durable_timed(self) -> (Result<(), IngestError>, Option<DurableTiming>) {
        match self.taken().await {
            Ok(ticket) => {
                let (result, timing) = ticket.wait_timed().await;
                (result.map_err(IngestError::from), Some(timing))
            }
            Err(e) => (Err(e), None),
        }
    }
}

/// Where the time of a patient actor's start goes, one histogram per step (seconds), and how
/// the starts rebuilt their state. `StartTimings::default()` records nowhere (tests, tools);
/// the server hands in handles of its own recorder (`Router::with_start_timings`).
#[derive(Clone)]
pub struct StartTimings {
    /// Reading (and removing) the state snapshot, unsealing included.
    pub snapshot_read: Histogram,
    /// Decoding the snapshot into a state.
    pub snapshot_decode: Histogram,
    /// Reading the events logged since the snapshot (or the whole window without one).
    pub history_read: Histogram,
    /// Reading the patient's open alerts (only after an actor failed; otherwise preloaded).
    pub open_alerts: Histogram,
    /// Spawning the actor: applying the history to the rule window, restoring open alerts.
    pub spawn: Histogram,
    /// How long a message (or a console request) waited for its patient's actor to start,
    /// waiting behind another start of the same patient included.
    pub wait: Histogram,
    /// Starts that began from a snapshot.
    pub from_snapshot: Counter,
    /// Starts that replayed the event log (no usable snapshot).
    pub from_log: Counter,
    /// Patient actors that failed (each restarts, rehydrated, on its patient's next use).
    pub failures: Counter,
}

impl Default for StartTimings {
    fn default() -> Self {
        StartTimings {
            snapshot_read: Histogram::noop(),
            snapshot_decode: Histogram::noop(),
            history_read: Histogram::noop(),
            open_alerts: Histogram::noop(),
            spawn: Histogram::noop(),
            wait: Histogram::noop(),
            from_snapshot: Counter::noop(),
            from_log: Counter::noop(),
            failures: Counter::noop(),
        }
    }
}

/// Routes events to patient actors.
pub struct Router {
    actors: Arc<DashMap<PatientId, ActorRef<PatientMsg>>>,
    /// Every patient actor is linked to it; spawned with the first actor (after the builders
    /// have set the timings), stopped by [`Router::shutdown`] after the actors.
    supervisor: tokio::sync::OnceCell<ActorRef<SupervisorMsg>>,
    /// One start at a time per patient (never one for all: a start reads the patient's
    /// history, and other patients must not wait behind it).
    starting: DashMap<PatientId, Arc<Mutex<()>>>,
    /// Messages waiting for their patient's actor to start ([`Router::deliver`]).
    queued: DashMap<PatientId, Vec<PatientMsg>>,
    /// Open alerts read once at start-up, taken by each patient's first actor.
    preloaded: DashMap<PatientId, Vec<Alert>>,
    ports: Ports,
    timings: StartTimings,
}

impl Router {
    /// Send every patient's applied observations to `feed` (consoles' live vitals).
    pub fn with_live_feed(mut self, feed: Arc<dyn LiveFeed>) -> Self {
        self.ports.live = Some(feed);
        self
    }

    /// Each running patient actor writes its state snapshot every `events` events (once they
    /// are durable), so a rebuild after a crash reads a recent one; 0 (the default): only
    /// when an actor stops cleanly.
    pub fn with_snapshot_every(mut self, events: u32) -> Self {
        self.ports.snapshot_every = events;
        self
    }

    /// Record where the time of each actor start goes into `timings`.
    pub fn with_start_timings(mut self, timings: StartTimings) -> Self {
        self.timings = timings;
        self
    }

    /// Who is in which bed, with their current NEWS2 (kept across passivation).
    pub fn census(&self) -> &Arc<crate::census::Census> {
        &self.ports.census
    }

    /// The console's summary of a patient (starting its actor from the store if needed).
    /// An id with no live actor and no recent events is unknown: no actor is started for it.
    pub async fn summary(&self, patient: &PatientId) -> Result<PatientSummary, IngestError> {
        if self.live(patient).is_none() {
            let since = self.ports.clock.now() - WINDOW_MAX_AGE;
            if self.ports.events.events_since(patient, since).await?.is_empty() {
                return Err(IngestError::UnknownPatient);
            }
        }
        let actor = self.actor_for(patient).await?;
        let (tx, rx) = oneshot::channel();
        actor.cast(PatientMsg::Summary { reply: tx.into() }).map_err(|e| IngestError::Actor(e.to_string()))?;
        rx.await.map_err(|_| IngestError::Actor("actor stopped".into()))
    }

    /// A router over the given ports. Open alerts are loaded once so that each patient actor
    /// starts with its own.
    pub async fn new(
        events: Arc<dyn EventStore>,
        alerts: Arc<dyn AlertStore>,
        rules: Arc<dyn RuleEngine>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, StoreError> {
        let preloaded: DashMap<PatientId, Vec<Alert>> = DashMap::new();
        for change in alerts.open_alerts().await? {
            preloaded.entry(change.alert.patient.id.clone()).or_default().push(change.alert);
        }
        Ok(Router {
            actors: Arc::default(),
            supervisor: tokio::sync::OnceCell::new(),
            starting: DashMap::new(),
            queued: DashMap::new(),
            preloaded,
            ports: Ports { events, alerts, rules, clock, live: None, census: Arc::default(), snapshot_every: 0 },
            timings: StartTimings::default(),
        })
    }

    /// Hand an event to its patient's actor; the ticket resolves once the event is durable.
    pub async fn ingest(self: &Arc<Self>, event: ClinicalEvent) -> Result<Durable, IngestError> {
        self.ingest_all(None, vec![event]).await
    }

    /// Hand the events of one message for one patient to its actor, to be stored atomically
    /// with the message's log entry when `message` is given; the ticket resolves once all are
    /// durable.
    pub async fn ingest_all(
        self: &Arc<Self>,
        message: Option<FromMessage>,
        events: Vec<ClinicalEvent>,
    ) -> Result<Durable, IngestError> {
        self.route_all(message, events).await?.taken().await
    }

    /// Hand the events of one message for one patient to its actor and return as soon as they
    /// are in its mailbox, without waiting for the actor to apply them: events routed one after
    /// another reach each actor in that order, and a caller can route the next message while the
    /// actor works on this one. [`Routed::taken`] gives the durability ticket.
    pub async fn route_all(
        self: &Arc<Self>,
        message: Option<FromMessage>,
        events: Vec<ClinicalEvent>,
    ) -> Result<Routed, IngestError> {
        let Some(patient) = events.first().map(|e| e.patient_id.clone()) else {
            let (done, ticket) = Durable::channel();
            done.complete(Ok(()));
            return Ok(Routed::Taken(ticket));
        };
        if events.iter().any(|e| e.patient_id != patient) {
            return Err(IngestError::MixedPatients);
        }
        for event in &events {
            if let EventKind::Merge { prior_id, .. } = &event.kind {
                // The retired record's actor stops; its history is read by the survivor,
                // which takes its bed.
                self.ports.census.set(prior_id, None);
                if let Some((_, prior)) = self.actors.remove(prior_id) {
                    let _ = prior.drain_and_wait(Some(std::time::Duration::from_secs(5))).await;
                }
                // Its clean stop left a snapshot: dropped, so that a restart's prewarm does not
                // bring the retired record back into its old bed (a later event for it, if
                // any, rebuilds it from the log).
                if let Err(error) = self.ports.events.take_snapshot(prior_id).await {
                    tracing::warn!(patient = %prior_id, %error, "retired record's snapshot not dropped");
                }
            }
        }
        let (tx, rx) = oneshot::channel();
        self.deliver(&patient, PatientMsg::Ingest { message, events, reply: tx.into() })?;
        Ok(Routed::InMailbox(rx))
    }

    /// Put `message` in the mailbox of `patient`'s actor, in call order. When the actor is not
    /// live, the message waits in the patient's queue and the actor is started in a task of
    /// its own, which then hands the queue over in order: a new patient's store reads
    /// (snapshot, history) no longer hold up the caller (an MLLP connection's next message).
    /// Measured: 500 new patients in the first second of a run at 2,000 msg/s queued every
    /// connection behind their starts, one at a time (first second p99 288 ms, then 9 ms).
    fn deliver(self: &Arc<Self>, patient: &PatientId, mut message: PatientMsg) -> Result<(), IngestError> {
        if !self.queued.contains_key(patient)
            && let Some(actor) = self.live(patient)
        {
            // An actor may begin to stop (passivated) between being looked up and this send:
            // the send is refused with the message, which then goes to its successor (a
            // refused message comes back whole, reply port included).
            match actor.cast(message) {
                Ok(()) => return Ok(()),
                Err(ractor::MessagingErr::SendErr(refused)) => message = refused,
                Err(e) => return Err(IngestError::Actor(e.to_string())),
            }
        }
        match self.queued.entry(patient.clone()) {
            dashmap::Entry::Occupied(mut waiting) => {
                waiting.get_mut().push(message);
                return Ok(());
            }
            dashmap::Entry::Vacant(slot) => {
                slot.insert(vec![message]);
            }
        }
        let router = Arc::clone(self);
        let id = patient.clone();
        tokio::spawn(async move { router.start_queued(id).await });
        Ok(())
    }

    /// Start `id`'s actor and hand it the messages queued meanwhile, in order; a message sent
    /// after the queue is gone finds the actor live. When the start fails, the queued
    /// messages are dropped with their reply ports: their senders are told to resend.
    async fn start_queued(self: Arc<Self>, id: PatientId) {
        let started = self.actor_for(&id).await;
        if let Err(error) = &started {
            tracing::error!(patient = %id, %error, "patient actor not started; its queued messages are refused");
        }
        // Under the entry's lock: no message is queued or sent around the hand-over.
        let mut refused = Vec::new();
        self.queued.remove_if_mut(&id, |_, waiting| {
            if let Ok(actor) = &started {
                for message in waiting.drain(..) {
                    if let Err(ractor::MessagingErr::SendErr(m)) = actor.cast(message) {
                        refused.push(m);
                    }
                }
            }
            true
        });
        // Stopped meanwhile (passivated between its start and the hand-over): to its successor.
        for message in refused {
            let _ = self.deliver(&id, message);
        }
    }

    /// Stop the actors idle for `idle_for` that hold nothing the store does not (no open
    /// alert, no clock running); their next event rebuilds them from the store. Returns how
    /// many stopped.
    pub async fn passivate_idle(&self, idle_for: time::Duration) -> usize {
        let actors: Vec<_> = self.actors.iter().map(|e| (e.key().clone(), e.value().clone())).collect();
        let mut stopped = 0;
        for (id, actor) in actors {
            let (tx, rx) = oneshot::channel();
            if actor.cast(PatientMsg::Passivate { idle_for, reply: tx.into() }).is_err() {
                continue;
            }
            if rx.await == Ok(true) {
                // Kept in the map until it has stopped, so that a start meanwhile waits for it.
                let _ = actor.wait(Some(SHUTDOWN_DEADLINE)).await;
                self.actors.remove_if(&id, |_, a| a.get_id() == actor.get_id());
                stopped += 1;
            }
        }
        stopped
    }

    /// Apply a clinician's or the escalation timer's action to an open alert of `patient`.
    /// The change is queued for storage; the returned ticket carries its sequence number.
    pub async fn act(
        &self,
        patient: &PatientId,
        alert_id: AlertId,
        action: AlertAction,
    ) -> Result<(Alert, Durable<u64>), ActFailure> {
        let unavailable = |e: String| ActFailure::Store(StoreError::Unavailable(e));
        let actor = self.actor_for(patient).await.map_err(|e| unavailable(e.to_string()))?;
        let (tx, rx) = oneshot::channel();
        actor.cast(PatientMsg::Act { alert_id, action, reply: tx.into() }).map_err(|e| unavailable(e.to_string()))?;
        rx.await.map_err(|_| unavailable("actor stopped".into()))?
    }

    /// Number of live patient actors.
    pub fn patient_count(&self) -> usize {
        self.actors.len()
    }

    /// Stop every patient actor and wait, all at once and for at most five seconds, for each
    /// to finish its queued messages.
    pub async fn shutdown(&self) {
        let actors: Vec<_> = self.actors.iter().map(|e| e.value().clone()).collect();
        let mut draining = tokio::task::JoinSet::new();
        for actor in actors {
            draining.spawn(async move { actor.drain_and_wait(Some(SHUTDOWN_DEADLINE)).await });
        }
        // Each drain is bounded by the deadline; this bounds the whole.
        let _ = tokio::time::timeout(SHUTDOWN_DEADLINE + std::time::Duration::from_secs(1), draining.join_all()).await;
        self.actors.clear();
        // No actor starts after this: a start links to a stopped supervisor and is refused.
        if let Some(supervisor) = self.supervisor.get() {
            let _ = supervisor.stop_and_wait(None, Some(SHUTDOWN_DEADLINE)).await;
        }
    }

    /// The supervisor every patient actor is linked to, spawned on first use.
    async fn supervisor(&self) -> Result<&ActorRef<SupervisorMsg>, IngestError> {
        self.supervisor
            .get_or_try_init(|| async {
                let state =
                    SupervisorState { actors: Arc::clone(&self.actors), failures: self.timings.failures.clone() };
                let (supervisor, _handle) = Actor::spawn(None, PatientSupervisor, state)
                    .await
                    .map_err(|e| IngestError::Actor(format!("supervisor not started: {e}")))?;
                Ok(supervisor)
            })
            .await
    }

    async fn actor_for(&self, id: &PatientId) -> Result<ActorRef<PatientMsg>, IngestError> {
        if let Some(actor) = self.live(id) {
            return Ok(actor);
        }
        let waiting = Instant::now();
        let gate = Arc::clone(self.starting.entry(id.clone()).or_default().value());
        let started = self.start(id, &gate).await;
        self.starting.remove_if(id, |_, g| Arc::ptr_eq(g, &gate));
        self.timings.wait.record(waiting.elapsed());
        started
    }

    async fn start(&self, id: &PatientId, gate: &Mutex<()>) -> Result<ActorRef<PatientMsg>, IngestError> {
        let _one_start = gate.lock().await;
        if let Some(actor) = self.live(id) {
            return Ok(actor);
        }
        // A predecessor still finishing its queued messages (passivated, or stopping) finishes
        // before the history is read, so none of its events is missed.
        let predecessor = self.actors.get(id).map(|a| a.value().clone());
        if let Some(predecessor) = predecessor {
            let _ = predecessor.wait(Some(SHUTDOWN_DEADLINE)).await;
        }
        let window_start = (self.ports.clock.now() - WINDOW_MAX_AGE).max(OffsetDateTime::UNIX_EPOCH);
        // The snapshot the last clean stop wrote, topped up with the events received since its
        // newest (inclusive: re-applying that one replaces its samples); without a usable one,
        // the last 24 h of events.
        let timings = &self.timings;
        let step = Instant::now();
        let taken = self.ports.events.take_snapshot(id).await;
        timings.snapshot_read.record(step.elapsed());
        let restored = match taken {
            Ok(Some(bytes)) => match timed(&timings.snapshot_decode, || PatientState::restore(id, &bytes)) {
                Ok(restored) => Some(restored),
                Err(refused) => {
                    tracing::warn!(patient = %id, %refused, "state snapshot not used; replaying the log");
                    None
                }
            },
            Ok(None) => None,
            Err(StoreError::Corrupt(what)) => {
                tracing::warn!(patient = %id, what, "state snapshot unreadable; replaying the log");
                None
            }
            Err(e) => return Err(e.into()),
        };
        let since = restored.as_ref().map_or(window_start, |(_, through)| (*through).max(window_start));
        match restored {
            Some(_) => timings.from_snapshot.increment(1),
            None => timings.from_log.increment(1),
        }
        let step = Instant::now();
        let history = self.ports.events.events_since(id, since).await?;
        timings.history_read.record(step.elapsed());
        // First start: the open alerts loaded at start-up. A restart after the actor failed:
        // read them again, or its alerts would be re-raised as new episodes. A start after
        // passivation: none (an actor with open alerts is never passivated, and no other
        // actor raised any for it since).
        let open_alerts = match self.preloaded.remove(id) {
            Some((_, alerts)) => alerts,
            None if self.actors.contains_key(id) => {
                let step = Instant::now();
                let alerts = self.ports.alerts.open_alerts_of(id).await?;
                timings.open_alerts.record(step.elapsed());
                alerts
            }
            None => Vec::new(),
        };
        let restored = restored.map(|(state, _)| state);
        let args = PatientArgs { id: id.clone(), ports: self.ports.clone(), restored, history, open_alerts };
        let supervisor = self.supervisor().await?.get_cell();
        let step = Instant::now();
        let (actor, _handle) = Actor::spawn_linked(None, PatientActor, args, supervisor)
            .await
            .map_err(|e| IngestError::Actor(e.to_string()))?;
        timings.spawn.record(step.elapsed());
        self.actors.insert(id.clone(), actor.clone());
        Ok(actor)
    }

    /// Start the actor of `id` if it is not live (prewarm).
    pub(crate) async fn warm(&self, id: &PatientId) -> Result<(), IngestError> {
        self.actor_for(id).await.map(|_| ())
    }

    /// The patients whose snapshots the store keeps, at most `limit` (prewarm).
    pub(crate) async fn snapshotted_patients(&self, limit: usize) -> Result<Vec<PatientId>, StoreError> {
        self.ports.events.snapshotted_patients(limit).await
    }

    fn live(&self, id: &PatientId) -> Option<ActorRef<PatientMsg>> {
        let actor = self.actors.get(id)?.value().clone();
        matches!(actor.get_status(), ActorStatus::Running | ActorStatus::Starting).then_some(actor)
    }
}

/// Run `f`, recording how long it took into `into`.
fn timed<T>(into: &Histogram, f: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let out = f();
    into.record(started.elapsed());
    out
}
