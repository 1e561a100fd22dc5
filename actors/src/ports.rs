//! Ports: the traits through which the core reaches storage, rules, publication and time.
//! Adapters live in the `vigil` crate (fjall, ScyllaDB, Rhai, the WebSocket hub); in-memory
//! fakes live in [`crate::fakes`].

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use async_trait::async_trait;
use time::OffsetDateTime;
use tokio::sync::oneshot;

pub use crate::series::{Reading, Readings, Samples, Series, seconds_between};

use crate::model::{
    AcceptedMessage, Alert, AlertId, Allergy, ClinicalEvent, Details, FromMessage, Location, Medication, MessageKey,
    Observation, PatientId, SequencedAlert, Severity,
};

/// A storage failure. Callers answer the sender with a negative acknowledgement; nothing
/// is reported as accepted unless it is durable.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The store is overloaded or shutting down and did not take the write.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The storage engine failed; the message names the operation.
    #[error("storage engine failed during {0}")]
    Engine(String),
    /// The storage engine failed during `op`, for the reason `source` (the engine's or the
    /// driver's own error, kept for whoever logs it: adapters do not log it themselves).
    #[error("storage engine failed during {op}: {source}")]
    Failed {
        /// The operation.
        op: String,
        /// The engine's error.
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
    /// Stored bytes could not be decoded.
    #[error("stored record is corrupt: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// The engine failed during `op` because of `source`.
    pub fn failed(op: impl Into<String>, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        StoreError::Failed { op: op.into(), source: Arc::new(source) }
    }
}

/// Resolves once a write is durable (the batch it went into has been fsynced).
#[derive(Debug)]
pub struct Durable<T = ()> {
    /// The outcome, and when the committer decided it.
    rx: oneshot::Receiver<(Result<T, StoreError>, Instant)>,
    /// When the ticket was made: the write was queued then.
    queued: Instant,
}

/// When a [`Durable`] ticket's write was queued, and when the committer completed it (`None`:
/// it went away without completing it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurableTiming {
    /// The ticket was made (its write queued).
    pub queued: Instant,
    /// The committer completed it.
    pub completed: Option<Instant>,
}

impl<T> Durable<T> {
    /// A ticket and the handle the committer completes it with.
    pub fn channel() -> (DurableSender<T>, Durable<T>) {
        let (tx, rx) = oneshot::channel();
        (DurableSender { tx }, Durable { rx, queued: Instant::now() })
    }

    /// A second ticket for the same write, for a holder that must act between the write and
    /// its waiter (the patient actor's snapshot): complete it with [`DurableSender::relay`], so
    /// it carries this ticket's times and the relay adds none of its own.
    pub fn relayed(&self) -> (DurableSender<T>, Durable<T>) {
        let (tx, rx) = oneshot::channel();
        (DurableSender { tx }, Durable { rx, queued: self.queued })
    }

    /// Wait until the write is durable, or learn that it failed.
    pub async fn wait(self) -> Result<T, StoreError> {
        self.wait_timed().await.0
    }

    /// As [`Durable::wait`], with when the write was queued and when the ticket was completed:
    /// from then to now is the waiter's own wake-up.
    pub async fn wait_timed(self) -> (Result<T, StoreError>, DurableTiming) {
        let queued = self.queued;
        match self.rx.await {
            Ok((result, completed)) => (result, DurableTiming { queued, completed: Some(completed) }),
            Err(_) => {
                (Err(StoreError::Unavailable("committer stopped".into())), DurableTiming { queued, completed: None })
            }
        }
    }
}

/// Messages taken in and not yet queued for the store: what a commit waits for under load (the
/// embedded store's commit interval), so one fsync serves the writes already on their way and
/// none waits for a write that is not coming. Counted by [`InTransit`] guards.
///
/// A message counts from when the ingress takes it in until the patient actor has queued its
/// write or it is abandoned (its guard dropped, either way). A message whose write is committed
/// and whose ACK is still being written no longer counts: nothing of it is coming.
#[derive(Debug, Default)]
pub struct Transit {
    /// Messages taken in, ever.
    entered: AtomicU64,
    /// Messages that have stopped counting, ever (never more than `entered`).
    left: AtomicU64,
    /// Woken when a message stops counting.
    departed: tokio::sync::Notify,
}

impl Transit {
    /// One message more on its way, until the guard is dropped.
    pub fn enter(self: &Arc<Self>) -> InTransit {
        self.entered.fetch_add(1, Ordering::AcqRel);
        InTransit { transit: Arc::clone(self) }
    }

    /// Messages taken in since the count began: once [`Transit::left`] reaches this, every one
    /// of them has stopped counting.
    pub fn entered(&self) -> u64 {
        self.entered.load(Ordering::Acquire)
    }

    /// Messages that have stopped counting since the count began.
    pub fn left(&self) -> u64 {
        self.left.load(Ordering::Acquire)
    }

    /// Messages on their way now.
    pub fn count(&self) -> u64 {
        // `left` first: read after it, `entered` is at least as large.
        let left = self.left();
        self.entered().saturating_sub(left)
    }

    /// Resolves once a message has stopped counting since the last time it resolved (or at
    /// once, when one did meanwhile): re-read the counts.
    pub async fn departed(&self) {
        self.departed.notified().await;
    }
}

/// One message counted by a [`Transit`], carried with it ([`FromMessage::in_transit`]): it
/// stops counting when this is dropped.
#[derive(Debug)]
pub struct InTransit {
    transit: Arc<Transit>,
}

impl Drop for InTransit {
    fn drop(&mut self) {
        self.transit.left.fetch_add(1, Ordering::AcqRel);
        self.transit.departed.notify_one();
    }
}

/// The committer's half of a [`Durable`] ticket.
#[derive(Debug)]
pub struct DurableSender<T = ()> {
    tx: oneshot::Sender<(Result<T, StoreError>, Instant)>,
}

impl<T> DurableSender<T> {
    /// Complete the ticket. A waiter that went away (a dropped connection) is not an error.
    pub fn complete(self, result: Result<T, StoreError>) {
        let _ = self.tx.send((result, Instant::now()));
    }

    /// Complete this ticket (made by [`Durable::relayed`]) with `ticket`'s outcome, as of when
    /// the committer completed `ticket`; whether the write is durable.
    pub async fn relay(self, ticket: Durable<T>) -> bool {
        let (result, timing) = ticket.wait_timed().await;
        let durable = result.is_ok();
        let _ = self.tx.send((result, timing.completed.unwrap_or_else(Instant::now)));
        durable
    }
}

/// Where accepted events go. `append` only queues (awaiting back-pressure when the committer
/// is behind); the returned ticket resolves once the event is durable, so one fsync can serve
/// many events and the patient actor never waits on the disk.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Queue the events of one message for one patient, with the alert changes the rules
    /// made of them, for durable append, atomically: one ticket, and after a crash either all
    /// of them are stored or none is — so an acknowledged message never lacks its alerts, and
    /// nothing needs replaying. Alert changes are numbered and published as by
    /// [`AlertStore::upsert_alert`] (`notify` with each).
    ///
    /// `message`, when given, is the message the events were mapped from: its message-log
    /// entry (the raw message, and the evidence the duplicate check reads) is written in the
    /// same atomic append, once. Events rebuilt or replayed carry none.
    async fn append_all(
        &self,
        message: Option<&FromMessage>,
        events: &[ClinicalEvent],
        alerts: &[(Alert, bool)],
    ) -> Result<Durable, StoreError>;

    /// Queue one event, with no message-log entry, for durable append.
    async fn append(&self, event: &ClinicalEvent) -> Result<Durable, StoreError> {
        self.append_all(None, std::slice::from_ref(event), &[]).await
    }

    /// Recent events of one patient, oldest first, received at or after `since`.
    async fn events_since(&self, patient: &PatientId, since: OffsetDateTime) -> Result<Vec<ClinicalEvent>, StoreError>;

    /// Keep the state snapshot of `patient` (opaque bytes, sealed at rest), replacing any
    /// earlier one. Written by an actor as it stops, after its events were queued.
    async fn save_snapshot(&self, patient: &PatientId, snapshot: &[u8]) -> Result<(), StoreError>;

    /// Read and remove the snapshot of `patient`. The removal is ordered before any later
    /// append (awaited, or in the same journal), so once a successor has appended, a crash
    /// never leaves this snapshot standing beside events it does not hold. A record that
    /// cannot be opened is removed too and reported as [`StoreError::Corrupt`].
    async fn take_snapshot(&self, patient: &PatientId) -> Result<Option<Vec<u8>>, StoreError>;

    /// Patients whose state snapshot is kept (their actor stopped cleanly and has not started
    /// since), at most `limit`: the actors a start-up may prewarm. The default lists none, and
    /// every actor then starts on its first event.
    async fn snapshotted_patients(&self, _limit: usize) -> Result<Vec<PatientId>, StoreError> {
        Ok(Vec::new())
    }
}

/// The message log, as the duplicate check reads it: which messages were accepted.
#[async_trait]
pub trait MessageLog: Send + Sync + 'static {
    /// The message `key`, if it was committed (with its events).
    async fn accepted_message(&self, key: &MessageKey) -> Result<Option<AcceptedMessage>, StoreError>;
}

/// Where alerts go. An upsert is assigned the next sequence number when it is committed and is
/// handed to the [`AlertPublisher`] only after it is durable, in sequence order.
#[async_trait]
pub trait AlertStore: Send + Sync + 'static {
    /// Queue an insert-or-update of an alert (keyed by its id). `notify` travels with the
    /// change to consoles (sound for new alerts, severity rises, escalations). Idempotent: an
    /// upsert equal to the alert's latest stored state resolves to that state's sequence
    /// number and is not published again, so replaying events after a crash never alerts twice.
    async fn upsert_alert(&self, alert: &Alert, notify: bool) -> Result<Durable<u64>, StoreError>;

    /// The latest state of one alert.
    async fn alert(&self, id: &AlertId) -> Result<Option<SequencedAlert>, StoreError>;

    /// Alert changes with `seq > after`, in order, at most `limit`.
    async fn alerts_after(&self, after: u64, limit: usize) -> Result<Vec<SequencedAlert>, StoreError>;

    /// The latest state of every alert that is not resolved, with its last sequence number.
    async fn open_alerts(&self) -> Result<Vec<SequencedAlert>, StoreError>;

    /// The open alerts of one patient. Alert ids begin with the patient's id and `-` (the
    /// patient actor makes them so), which a backend may use as an index; the default
    /// filters [`AlertStore::open_alerts`].
    async fn open_alerts_of(&self, patient: &PatientId) -> Result<Vec<Alert>, StoreError> {
        let open = self.open_alerts().await?;
        Ok(open.into_iter().filter(|c| &c.alert.patient.id == patient).map(|c| c.alert).collect())
    }

    /// The highest sequence number committed so far.
    fn last_seq(&self) -> u64;
}

/// Receives every alert change once it is durable, in sequence order. Must not block.
pub trait AlertPublisher: Send + Sync + 'static {
    /// Hand a durable alert change to subscribers.
    fn publish(&self, change: Arc<SequencedAlert>);
}

/// Live, non-durable feed of observations as patient actors apply them (for consoles that
/// have a patient open). Must not block; losing a frame here loses nothing (the store has it).
pub trait LiveFeed: Send + Sync + 'static {
    /// Observations just applied for `patient`.
    fn observations(&self, patient: &PatientId, location: &Location, observations: &[Observation]);
}

/// One numeric sample in a patient's window.
#[derive(Clone, Copy, PartialEq, Debug)]
pub struct Sample {
    /// When measured.
    pub at: OffsetDateTime,
    /// Value in the canonical unit.
    pub value: f64,
}

/// A coded or text value in a patient's window (e.g. consciousness `A`/`C`/`V`/`P`/`U`).
#[derive(Clone, PartialEq, Debug)]
pub struct CodedSample {
    /// When observed.
    pub at: OffsetDateTime,
    /// The code or text.
    pub text: String,
}

/// A medication the patient is on or was on recently: an order (active until discontinued), or
/// an administration with no order (a one-off dose, active for a time after the dose that the
/// drug tables set per class). A discontinued drug is kept, with when it stopped, for as long
/// as a washout may last ([`MEDICATION_MEMORY`]): an MAO inhibitor still interacts for 14 days.
/// Whether a drug is active or in its washout at a given time is decided by the rule host,
/// which holds the tables.
#[derive(Clone, PartialEq, Debug)]
pub struct ActiveMedication {
    /// The drug.
    pub medication: Medication,
    /// When the order (or first administration) arrived.
    pub since: OffsetDateTime,
    /// Known from administrations only (no order): a one-off dose.
    pub administered_only: bool,
    /// The latest administration, when any was recorded.
    pub last_given: Option<OffsetDateTime>,
    /// When the order was discontinued (or cancelled after a dose); `None` while it runs.
    pub stopped: Option<OffsetDateTime>,
}

impl ActiveMedication {
    /// An order that started at `since`.
    pub fn ordered(medication: Medication, since: OffsetDateTime) -> Self {
        ActiveMedication { medication, since, administered_only: false, last_given: None, stopped: None }
    }

    /// A dose given at `at` with no order on record.
    pub fn administered(medication: Medication, at: OffsetDateTime) -> Self {
        ActiveMedication { medication, since: at, administered_only: true, last_given: Some(at), stopped: None }
    }
}

/// How long a discontinued medication or a one-off dose is remembered after it stopped (or
/// was given): the longest washout plus active time the drug tables may declare (the tables
/// are refused at load when they exceed it). 60 days.
pub const MEDICATION_MEMORY: time::Duration = time::Duration::days(60);

/// At most this many medications (running, stopped or one-off) are kept per patient; the
/// oldest stopped ones go first.
pub const MAX_MEDICATIONS: usize = 256;

/// An open alert as a rule sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct OpenAlertRef {
    /// Rule id.
    pub rule: String,
    /// Finding key, empty for a rule's one alert.
    pub finding: String,
    /// Severity.
    pub severity: Severity,
}

/// The state a rule sees: bounded windows of recent values by canonical name, medications,
/// allergies, location, age and sex, settings, open alerts, and what triggered this run.
/// Names and identifiers are deliberately absent: rules never need them.
#[derive(Clone, Debug, Default)]
pub struct PatientView {
    /// Opaque id, for rule error reports.
    pub patient_id: Option<PatientId>,
    /// Evaluation time ("now" for freshness limits).
    pub now: Option<OffsetDateTime>,
    /// Location.
    pub location: Location,
    /// Whether the current encounter has been discharged.
    pub discharged: bool,
    /// Administrative sex.
    pub sex: String,
    /// Age in whole years at `now`, when the birth date is known.
    pub age_years: Option<i64>,
    /// Recent numeric samples per canonical name, oldest first, about 8 bytes each ([`Series`]).
    pub series: NameMap<Series>,
    /// Recent coded samples per canonical name, oldest first.
    pub coded: NameMap<VecDeque<CodedSample>>,
    /// Medications: running orders, one-off doses and recently stopped drugs (see
    /// [`ActiveMedication`]).
    pub medications: Vec<ActiveMedication>,
    /// Recorded allergies.
    pub allergies: Vec<Allergy>,
    /// The allergies the triggering event recorded that were not on record before (or whose
    /// severity changed); empty for other events.
    pub new_allergies: Vec<Allergy>,
    /// Per-patient settings set by clinicians (e.g. `spo2_scale` = `2` for NEWS2).
    pub settings: HashMap<String, String>,
    /// Open alerts: rule id, finding (empty for a rule's one alert) and severity.
    pub open_alerts: Vec<OpenAlertRef>,
    /// The medication order being evaluated, when an order triggered this run.
    pub new_order: Option<Medication>,
}

/// A map keyed by canonical observation names. The names come from the vocabulary (a bounded
/// set), never from a sender's text, so SipHash's resistance to flooding buys nothing here; a
/// fast hash (foldhash, randomly seeded per map) took the rules' reads from about 10 k
/// instructions per vitals event to a fraction of that (docs/BENCHMARKS.md).
pub type NameMap<V> = HashMap<String, V, foldhash::fast::RandomState>;

impl PatientView {
    /// Latest value of `name` no older than `max_age` seconds before `now`.
    pub fn latest(&self, name: &str, max_age_secs: f64) -> Option<f64> {
        let newest = self.series.get(name)?.newest()?;
        // On the reading's instant key: no date built for it.
        self.fresh(newest.unix_nanos(), max_age_secs).then_some(newest.value)
    }

    /// Latest coded value of `name` no older than `max_age` seconds before `now`.
    pub fn latest_coded(&self, name: &str, max_age_secs: f64) -> Option<&str> {
        let sample = self.coded.get(name)?.back()?;
        self.fresh(sample.at.unix_timestamp_nanos(), max_age_secs).then_some(sample.text.as_str())
    }

    /// Samples of `name` within the last `secs` seconds before `now`, oldest first.
    pub fn window(&self, name: &str, secs: f64) -> Readings<'_> {
        const EMPTY: &Series = &Series::new();
        let series = self.series.get(name).unwrap_or(EMPTY);
        // Samples are kept in time order: find the window's start by binary search (on the
        // series' millisecond keys, the cutoff converted once) instead of testing every
        // sample of a 24 h series.
        let start = match self.now {
            // A rule may pass any number: out of range or NaN means the whole series.
            Some(now) => time::Duration::checked_seconds_f64(secs.max(0.0))
                .and_then(|d| now.checked_sub(d))
                .map_or(0, |cutoff| series.count_before(cutoff)),
            None => 0,
        };
        series.readings(start..)
    }

    /// Whether a value taken at `at_nanos` (nanoseconds since the Unix epoch) is no older than
    /// `max_age_secs` at `now` (fresh when there is no `now`): one rule for numeric and coded
    /// values. [`seconds_between`] gives the seconds `(now - at).as_seconds_f64()` would.
    fn fresh(&self, at_nanos: i128, max_age_secs: f64) -> bool {
        let age = self.now.map_or(0.0, |now| seconds_between(now.unix_timestamp_nanos(), at_nanos));
        age <= max_age_secs
    }
}

/// What one rule concluded for one patient.
#[derive(Clone, PartialEq, Debug)]
pub enum RuleVerdict {
    /// Raise or update the rule's alert (for one finding, when the rule names it).
    Fire {
        /// The finding (e.g. the interacting pair), `None` for the rule's one alert.
        finding: Option<String>,
        /// Severity.
        severity: Severity,
        /// Score, when the rule computes one.
        score: Option<f64>,
        /// One line for the board.
        summary: String,
        /// Structured detail.
        details: Details,
        /// Computed from incomplete data (an input missing or aged out): may raise, never
        /// lowers an open alert's severity.
        partial: bool,
    },
    /// Close the rule's open alert for `finding`, or every open alert of the rule when `None`.
    Resolve {
        /// Which finding, `None` for all of the rule's alerts.
        finding: Option<String>,
        /// Why.
        reason: String,
        /// What the rule computed below its threshold (e.g. a NEWS2 breakdown), `Null` if
        /// nothing; shown in the patient view, never alerted on.
        details: Details,
        /// Computed from incomplete data: never resolves anything (the alert is marked stale).
        partial: bool,
    },
    /// The patient is outside the population the rule is validated for (e.g. a child and an
    /// adult score): not scored, and the patient view says so.
    NotApplicable {
        /// Why, for the patient view.
        reason: String,
    },
    /// Nothing to say.
    Quiet,
}

/// How a rule's alerts behave over time (from the rule's `meta()`).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct AlertPolicy {
    /// After an alert is resolved (by the rule or by a clinician), a re-fire at the same or a
    /// lower severity within this many seconds raises nothing. A higher severity always
    /// raises. 0: no cooldown.
    pub cooldown_s: i64,
    /// Hysteresis: a rule's resolve closes its alert only once the rule has said "resolve"
    /// (on complete data) continuously for this many seconds. 0: at once.
    pub clear_for_s: i64,
    /// A re-fire within this many seconds after the rule resolved an alert reopens that alert
    /// (same id, acknowledgement kept unless severity rose) instead of raising a new one.
    pub reopen_s: i64,
    /// After a clinician resolves an alert, a re-fire that says exactly what they saw (same
    /// summary and details: the same result) stays held beyond the cooldown; anything new
    /// raises. For rules whose findings are discrete results (critical labs).
    pub hold_until_changed: bool,
}

/// A rule's verdict with the rule's identity.
#[derive(Clone, PartialEq, Debug)]
pub struct RuleOutcome {
    /// Rule id.
    pub rule_id: String,
    /// Rule version (content hash).
    pub version: String,
    /// How the rule's alerts behave over time.
    pub policy: AlertPolicy,
    /// The verdict.
    pub verdict: RuleVerdict,
}

/// Evaluates every rule triggered by an event. Failing rules are isolated inside the engine
/// (counted and reported there); they never fail the caller.
pub trait RuleEngine: Send + Sync + 'static {
    /// Run the rules whose triggers include any of `triggers` against `view`.
    fn evaluate(&self, view: &Arc<PatientView>, triggers: &[&str]) -> Vec<RuleOutcome>;

    /// Run every rule against `view` (for the patient view's scores, not for alerting).
    fn evaluate_all(&self, view: &Arc<PatientView>) -> Vec<RuleOutcome>;
}

/// Time, injectable for tests.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> OffsetDateTime;
}

/// The wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// Every port a patient actor uses, shared by the router and each actor it starts.
#[derive(Clone)]
pub struct Ports {
    /// Event store.
    pub events: Arc<dyn EventStore>,
    /// Alert store.
    pub alerts: Arc<dyn AlertStore>,
    /// Rules.
    pub rules: Arc<dyn RuleEngine>,
    /// Time.
    pub clock: Arc<dyn Clock>,
    /// Live observation feed, when consoles want one.
    pub live: Option<Arc<dyn LiveFeed>>,
    /// Who is in which bed, with their current NEWS2 (the consoles' unit board).
    pub census: Arc<crate::census::Census>,
    /// A running patient actor writes its state snapshot after every this many events (once
    /// they are durable), besides when it stops cleanly; 0: only when it stops.
    pub snapshot_every: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A relayed ticket carries the first one's times: the relay's own wake-up is not counted
    /// as the store's, and its outcome is the first one's.
    #[tokio::test]
    async fn a_relayed_ticket_carries_the_times_of_the_write_it_relays() {
        let (done, first) = Durable::<()>::channel();
        let queued = first.queued;
        let (relay, second) = first.relayed();
        done.complete(Ok(()));
        let completed_before_relay = Instant::now();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(relay.relay(first).await);
        let (result, timing) = second.wait_timed().await;
        assert!(result.is_ok());
        assert_eq!(timing.queued, queued);
        assert!(timing.completed.is_some_and(|c| c <= completed_before_relay), "{timing:?}");

        let (done, first) = Durable::<()>::channel();
        let (relay, second) = first.relayed();
        done.complete(Err(StoreError::Unavailable("test".into())));
        assert!(!relay.relay(first).await);
        assert!(second.wait().await.is_err());
    }
}
