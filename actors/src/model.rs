//! Model types shared by every layer: identities, clinical events, observations and alerts.
//! Adapters map wire formats into these; the patient actor and the rule port work on them.

use std::fmt;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// A value that is protected health information. `Debug` and `Display` redact it, so it can
/// never leak through a log line or a panic message by accident.
#[derive(Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Phi<T>(pub T);

impl<T> Phi<T> {
    /// The protected value, for the few places (the console payload, encryption) that need it.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Phi<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<phi>")
    }
}

/// The opaque patient id used in actor names, logs, metrics and store keys. It is derived
/// from the (assigning authority, MRN) pair by a keyed hash, so it reveals neither.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PatientId(pub String);

impl fmt::Display for PatientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An alert's stable id: one per (patient, rule) episode, kept across updates.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AlertId(pub String);

impl fmt::Display for AlertId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The identity a sending system gives a patient: PID-3 with its assigning authority.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct PatientKey {
    /// Assigning authority (PID-3.4), empty when the sender gave none.
    pub authority: String,
    /// Medical record number (PID-3.1).
    pub mrn: Phi<String>,
}

/// Where a patient is: unit, room and bed (HL7 PV1-3).
#[derive(Clone, PartialEq, Eq, Hash, Debug, Default, Serialize, Deserialize)]
pub struct Location {
    /// Nursing unit / point of care, e.g. `ICU`.
    pub unit: String,
    /// Room.
    pub room: String,
    /// Bed.
    pub bed: String,
}

/// Demographics carried by an event. Every field that identifies a person is [`Phi`].
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct Demographics {
    /// Display name, "Family, Given".
    pub name: Phi<String>,
    /// Birth date as sent (YYYYMMDD).
    pub birth_date: Phi<String>,
    /// Administrative sex (HL7 table 0001).
    pub sex: String,
}

/// Status of a result (HL7 OBX-11).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResultStatus {
    /// Final (F) or a monitor's real-time value (R).
    #[default]
    Final,
    /// Preliminary (P, I, S).
    Preliminary,
    /// Corrected (C): replaces the earlier result with the same key.
    Corrected,
    /// Deleted (D): retracts the earlier result with the same key.
    Deleted,
}

/// One value, already mapped to Vigil's canonical vocabulary.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct Observation {
    /// Canonical name, e.g. `hr`, `rr`, `sbp`, `lactate` (see `schemas/codes/observations.json`).
    pub name: String,
    /// Numeric value in the canonical unit; `None` for coded or text results.
    pub value: Option<f64>,
    /// Coded or text value (e.g. consciousness `A`/`C`/`V`/`P`/`U`, a CWE code); `None` when numeric.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Canonical UCUM unit.
    pub unit: String,
    /// When it was measured (specimen or observation time).
    #[serde(with = "time::serde::rfc3339")]
    pub observed_at: OffsetDateTime,
    /// The code it came from, `system|code`, for audit.
    pub source_code: String,
    /// The device that measured it (OBX-18), when known.
    pub device: Option<String>,
    /// Result status.
    #[serde(default)]
    pub status: ResultStatus,
    /// Identifies the result across corrections: filler order number, code and sub-id.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub result_key: String,
    /// Reference range as sent (OBX-7), in the canonical unit when converted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference_range: Option<String>,
    /// Abnormal flags (OBX-8: `H`, `L`, `HH`, `LL`, `A`, `AA`, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub abnormal_flags: Vec<String>,
}

/// An ADT census change (A01..A13).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CensusAction {
    /// A01 admit.
    Admit,
    /// A02 transfer.
    Transfer,
    /// A03 discharge.
    Discharge,
    /// A04 register (outpatient / emergency).
    Register,
    /// A08 update patient information.
    Update,
    /// A11 cancel admit / register.
    CancelAdmit,
    /// A12 cancel transfer (back to the prior location, PV1-6).
    CancelTransfer,
    /// A13 cancel discharge.
    CancelDischarge,
}

/// What happened to a medication order (ORC-1).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderAction {
    /// NW: new order.
    New,
    /// XO: change order (replaces the order with the same id).
    Change,
    /// DC: discontinue.
    Discontinue,
    /// CA: cancel.
    Cancel,
}

/// A medication on an order or administration.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Medication {
    /// Order id (placer or filler order number): identifies the order across changes.
    pub order_id: String,
    /// RxNorm code (RXCUI) as sent, when the sender coded it as RxNorm.
    pub rxnorm: Option<String>,
    /// Drug name, normalised: lowercase, single spaces, no strength or form.
    pub name: String,
}

/// A recorded allergy or intolerance (AL1, IAM).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Allergy {
    /// Allergen code as sent (RxNorm for drugs when coded so), `system|code`.
    pub code: Option<String>,
    /// Allergen name, normalised like medication names.
    pub name: String,
    /// Allergen type (HL7 table 0127: DA drug, FA food, MA miscellaneous, ...).
    pub kind: String,
    /// Severity (table 0128: SV severe, MO moderate, MI mild, U unknown).
    pub severity: String,
}

/// Where an alarm is in its life, as the alert reporter says (IHE PCD-04 event phase).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlarmPhase {
    /// The alarm condition began.
    Start,
    /// Still present (a periodic repeat).
    Continue,
    /// Over.
    End,
    /// Something about it changed (priority, inactivation, value).
    Update,
}

/// The alarm's state at the reporter (IEC 60601-1-8 / PCD-04 alarm state).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlarmState {
    /// No alarm condition.
    Off,
    /// Condition present, signal inactivated.
    Inactive,
    /// Condition present, signalling.
    Active,
    /// Condition over, signal latched until acknowledged at the device.
    Latched,
}

/// How urgent the reporter says the alarm is (PH, PM, PL, PN).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlarmPriority {
    /// PH: immediate response required.
    High,
    /// PM: prompt response required.
    Medium,
    /// PL: awareness required.
    Low,
    /// PN: no alarm priority (a message or advisory).
    None,
}

/// What the alarm is about (SP, ST, SA).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlarmKind {
    /// SP: about the patient.
    Physiologic,
    /// ST: about the equipment (leads off, probe off, battery).
    Technical,
    /// SA: advisory.
    Advisory,
}

/// One device alarm report (IHE PCD-04 ORU^R40, or a technical condition seen in PCD-01).
/// Facets the reporter did not send are `None`: said to be missing, never guessed.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct DeviceAlarm {
    /// The source device (EUI-64 or the sender's equipment id), when sent.
    pub device: Option<String>,
    /// The alarm's identity at the reporter, unique per alarm instance: the key of its
    /// Vigil alert (with the device).
    pub alarm_id: String,
    /// The reporter's update counter, when sent.
    pub update_counter: Option<u64>,
    /// The alarm event, `system|code` (e.g. `MDC|196876`).
    pub event_code: String,
    /// The event as named by the reporter (code text or OBX-5), for the board.
    pub event_text: String,
    /// The value that caused it, as sent (e.g. `SpO2 88 %`), when sent.
    pub value: Option<String>,
    /// Phase.
    pub phase: AlarmPhase,
    /// State, when sent.
    pub state: Option<AlarmState>,
    /// Inactivation state as sent (`enabled`, `audio-paused`, ...), when sent.
    pub inactivation: Option<String>,
    /// Priority, when sent.
    pub priority: Option<AlarmPriority>,
    /// Kind, when sent.
    pub kind: Option<AlarmKind>,
}

impl DeviceAlarm {
    /// The finding its Vigil alert is keyed by: device and alarm id (no patient data).
    pub fn finding(&self) -> String {
        format!("{}|{}", self.device.as_deref().unwrap_or(""), self.alarm_id)
    }
}

/// A device's id as senders name it (EUI-64 or equipment id): in actor names, logs and alert
/// findings; never patient data.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DeviceId(pub String);

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What happened, as far as the patient actor is concerned.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventKind {
    /// Vital signs or results (ORU^R01, FHIR Observation).
    Observations {
        /// The values.
        observations: Vec<Observation>,
    },
    /// Admission, transfer, discharge, registration, update or a cancel of one (ADT).
    Census {
        /// Which.
        action: CensusAction,
        /// Attending doctor id (PV1-7.1), an opaque staff id.
        attending: Option<String>,
        /// Visit / encounter number (PV1-19).
        encounter: Option<String>,
    },
    /// ADT^A40: the records of `prior` are merged into this patient.
    Merge {
        /// The identity being retired.
        prior: PatientKey,
        /// Its opaque id.
        prior_id: PatientId,
    },
    /// A medication order event (RDE^O11, OMP^O09).
    MedicationOrder {
        /// New, change, discontinue or cancel.
        action: OrderAction,
        /// The drug.
        medication: Medication,
    },
    /// A medication administration (RAS^O17).
    Administration {
        /// The drug given.
        medication: Medication,
        /// When.
        #[serde(with = "time::serde::rfc3339")]
        given_at: OffsetDateTime,
    },
    /// Allergies as sent (AL1 segments on ADT, or ADT^A60). `replace` when the message carries
    /// the complete list.
    Allergies {
        /// The allergies.
        allergies: Vec<Allergy>,
        /// The list replaces the one on record.
        replace: bool,
    },
    /// A device alarm report (IHE PCD-04): raises, updates or ends one alert, decided by the
    /// host (not a rule).
    DeviceAlarm {
        /// The alarm.
        alarm: DeviceAlarm,
    },
    /// A device attached to the patient went silent past its expected interval, or reports
    /// again: raises or resolves `device.offline`, decided by the host.
    DeviceSilence {
        /// The device.
        device: DeviceId,
        /// Silent (`true`) or reporting again (`false`).
        offline: bool,
        /// Seconds since it was last heard from.
        silent_s: i64,
        /// The interval it was expected to report at, in seconds.
        interval_s: i64,
    },
}

/// An event for one patient, as accepted from a sender.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct ClinicalEvent {
    /// Opaque patient id (keyed hash of [`PatientKey`]).
    pub patient_id: PatientId,
    /// The patient's identity as sent.
    pub patient: PatientKey,
    /// Demographics as sent.
    pub demographics: Demographics,
    /// Location as sent, when the message carried one.
    pub location: Option<Location>,
    /// When Vigil received it.
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
    /// The content.
    pub kind: EventKind,
}

impl ClinicalEvent {
    /// The names rules declare as triggers: the canonical names of the values an event
    /// carries, or `census`, `merge`, `order`, `administration`, `allergy`; none for device
    /// alarms, which the host turns into alerts itself.
    pub fn trigger_names(&self) -> Vec<&str> {
        match &self.kind {
            EventKind::Observations { observations } => observations.iter().map(|o| o.name.as_str()).collect(),
            EventKind::Census { .. } => vec!["census"],
            EventKind::Merge { .. } => vec!["merge"],
            EventKind::MedicationOrder { .. } => vec!["order"],
            EventKind::Administration { .. } => vec!["administration"],
            EventKind::Allergies { .. } => vec!["allergy"],
            // Decided by the host, not by rules.
            EventKind::DeviceAlarm { .. } | EventKind::DeviceSilence { .. } => Vec::new(),
        }
    }
}

/// The feed a message arrived on.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// HL7 v2 (over MLLP).
    Hl7,
    /// FHIR R4 (REST or a streaming feed).
    Fhir,
}

/// What recognises a resend of a message: unique per feed and sender within the duplicate
/// window. HL7: sending application and facility (MSH-3 / MSH-4) and the control id (MSH-10).
#[derive(Clone, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct MessageKey {
    /// The feed.
    pub source: Source,
    /// Who sent it, as the feed names senders.
    pub sender: String,
    /// The sender's identifier of the message.
    pub id: String,
}

impl MessageKey {
    /// An HL7 message's key: `sender` is MSH-3 and MSH-4 joined with `|`, `control_id` MSH-10.
    pub fn hl7(sender: impl Into<String>, control_id: impl Into<String>) -> Self {
        MessageKey { source: Source::Hl7, sender: sender.into(), id: control_id.into() }
    }

    /// The sender as stores key it: HL7 senders as they are (the key of every message log
    /// written before feeds were named), other feeds' senders prefixed by the feed.
    pub fn scoped_sender(&self) -> std::borrow::Cow<'_, str> {
        match self.source {
            Source::Hl7 => std::borrow::Cow::Borrowed(&self.sender),
            Source::Fhir => std::borrow::Cow::Owned(format!("fhir:{}", self.sender)),
        }
    }
}

/// One message as received, whatever the feed: what the message log keeps for audit and
/// replay, and what recognises a resend. The events mapped from it travel beside it.
#[derive(Clone, PartialEq, Debug)]
pub struct Envelope {
    /// What recognises a resend.
    pub key: MessageKey,
    /// The message as received.
    pub raw: Phi<String>,
    /// When Vigil received it.
    pub received_at: OffsetDateTime,
}

/// The message a bundle of events came from, as the store records it: every event row names
/// its message, and the one bundle that carries the message-log entry says so.
#[derive(Debug)]
pub struct FromMessage {
    /// The message.
    pub envelope: std::sync::Arc<Envelope>,
    /// Whether this bundle writes the message's log entry (one bundle per message does).
    pub logs_message: bool,
    /// Keys of the parts of the message whose events are in this bundle (the entries of a
    /// FHIR transaction, each of which may also be sent on its own): each is logged in the
    /// same atomic write as the events, so a resend of the part alone, or inside another
    /// message, is recognised — and never without the events it stands for.
    pub parts: Vec<MessageKey>,
    /// Counts the message as on its way to the store until its patient actor has queued its
    /// write (and drops this) or it is abandoned; `None` when nobody counts (replays, tests).
    /// Not `Clone` for that reason: one message, one count.
    pub in_transit: Option<crate::InTransit>,
}

/// A stored event with the message it came from (`None` for events stored before messages
/// were recorded with their events, and for events that were not a received message's).
#[derive(Clone, PartialEq, Debug)]
pub struct RecordedEvent {
    /// The event.
    pub event: ClinicalEvent,
    /// Its message.
    pub message: Option<MessageKey>,
}

/// A message the store has already accepted: the evidence for re-acknowledging a resend
/// without processing it again.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct AcceptedMessage {
    /// The patient it was for.
    pub patient_id: PatientId,
    /// When it was first received.
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
}

/// Alert severity, in rising order.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Informational.
    Info,
    /// Low.
    Low,
    /// Medium.
    Medium,
    /// High.
    High,
    /// Critical.
    Critical,
}

impl Severity {
    /// Parse the lowercase name used in rules and on the wire.
    pub fn parse(s: &str) -> Option<Severity> {
        Some(match s {
            "info" => Severity::Info,
            "low" => Severity::Low,
            "medium" => Severity::Medium,
            "high" => Severity::High,
            "critical" => Severity::Critical,
            _ => return None,
        })
    }
}

/// Where an alert is in its lifecycle.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertStatus {
    /// Raised and not yet acknowledged.
    Active,
    /// Acknowledged by a clinician.
    Acknowledged,
    /// Closed by the rule or a clinician.
    Resolved,
}

/// The patient as shown on an alert. The console needs the name to act on it; the type keeps
/// it out of logs.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct AlertPatient {
    /// Opaque id.
    pub id: PatientId,
    /// MRN as sent.
    pub mrn: Phi<String>,
    /// Display name.
    pub name: Phi<String>,
    /// Unit.
    pub unit: String,
    /// Room (PV1-3.2); empty when not sent. Absent in alerts stored before it existed.
    #[serde(default)]
    pub room: String,
    /// Bed.
    pub bed: String,
}

/// The rule that raised an alert.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct RuleRef {
    /// Rule id, e.g. `sepsis.qsofa`.
    pub id: String,
    /// Content hash of the rule source that produced the result.
    pub version: String,
}

/// An alert as persisted and as sent to consoles (`schemas/ws/alert.json`). Read through
/// `StoredAlert`, so that alerts stored before a field existed read with its default.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
#[serde(from = "StoredAlert")]
pub struct Alert {
    /// Stable id for this (patient, rule) episode.
    pub id: AlertId,
    /// Who.
    pub patient: AlertPatient,
    /// Which rule.
    pub rule: RuleRef,
    /// The finding this alert is about when the rule names one (the interacting pair, the
    /// drug-allergen match, the analyte): each finding of a rule is its own alert. `None` for
    /// rules with one alert per patient (the scores).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finding: Option<String>,
    /// How urgent.
    pub severity: Severity,
    /// When the alert reached its current severity: when it was raised, or when its severity
    /// last changed (a re-raise at the same severity keeps it). What "4 min ago" counts from.
    #[serde(with = "time::serde::rfc3339")]
    pub severity_since: OffsetDateTime,
    /// Lifecycle state.
    pub status: AlertStatus,
    /// The rule's score, when it computes one.
    pub score: Option<f64>,
    /// One line for the board.
    pub summary: String,
    /// Rule-specific detail (sub-scores, missing parameters, ...).
    pub details: Details,
    /// When first raised.
    #[serde(with = "time::serde::rfc3339")]
    pub raised_at: OffsetDateTime,
    /// When last changed.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// Who acknowledged it and when.
    #[serde(default)]
    pub acknowledged: Option<Actioned>,
    /// Who resolved it (a user, or `rule:<id>`), when and why.
    #[serde(default)]
    pub resolved: Option<Resolution>,
    /// Set once the alert went unacknowledged past its severity's window.
    #[serde(default)]
    pub escalation: Option<Escalation>,
    /// Comments from the care team, oldest first.
    #[serde(default)]
    pub comments: Vec<Comment>,
    /// The rule's latest evaluation lacked data (missing or aged out): what the alert shows
    /// may be out of date, and it was neither resolved nor lowered because of that.
    #[serde(default)]
    pub stale: bool,
    /// How many times the rule fired again soon after resolving it, reopening this alert
    /// instead of raising a new one.
    #[serde(default)]
    pub reopened: u32,
}

/// An [`Alert`] as stored or received: every field of it, with those added after alerts were
/// first stored optional. `severity_since` missing (an alert stored before it existed) reads
/// as `raised_at`.
#[derive(Deserialize)]
struct StoredAlert {
    id: AlertId,
    patient: AlertPatient,
    rule: RuleRef,
    #[serde(default)]
    finding: Option<String>,
    severity: Severity,
    #[serde(default, with = "time::serde::rfc3339::option")]
    severity_since: Option<OffsetDateTime>,
    status: AlertStatus,
    score: Option<f64>,
    summary: String,
    details: Details,
    #[serde(with = "time::serde::rfc3339")]
    raised_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    updated_at: OffsetDateTime,
    #[serde(default)]
    acknowledged: Option<Actioned>,
    #[serde(default)]
    resolved: Option<Resolution>,
    #[serde(default)]
    escalation: Option<Escalation>,
    #[serde(default)]
    comments: Vec<Comment>,
    #[serde(default)]
    stale: bool,
    #[serde(default)]
    reopened: u32,
}

impl From<StoredAlert> for Alert {
    fn from(s: StoredAlert) -> Self {
        Alert {
            id: s.id,
            patient: s.patient,
            rule: s.rule,
            finding: s.finding,
            severity: s.severity,
            severity_since: s.severity_since.unwrap_or(s.raised_at),
            status: s.status,
            score: s.score,
            summary: s.summary,
            details: s.details,
            raised_at: s.raised_at,
            updated_at: s.updated_at,
            acknowledged: s.acknowledged,
            resolved: s.resolved,
            escalation: s.escalation,
            comments: s.comments,
            stale: s.stale,
            reopened: s.reopened,
        }
    }
}

/// Who did something to an alert, and when.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct Actioned {
    /// User id (token subject).
    pub by: String,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// How an alert was closed.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct Resolution {
    /// User id, or `rule:<rule id>` when the rule resolved it.
    pub by: String,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// Why.
    pub reason: String,
}

/// An escalation of an unacknowledged alert.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct Escalation {
    /// 1 for the first escalation, and so on.
    pub level: u32,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// Units that now also see the alert.
    pub units: Vec<String>,
    /// Roles that now also see the alert.
    pub roles: Vec<String>,
}

/// A comment on an alert. Free text may hold PHI: it is never logged.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct Comment {
    /// User id.
    pub by: String,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// The text.
    pub text: Phi<String>,
}

/// A clinician's (or the escalation timer's) action on an alert.
#[derive(Clone, PartialEq, Debug)]
pub enum AlertAction {
    /// Acknowledge.
    Acknowledge {
        /// User id.
        by: String,
    },
    /// Resolve with a reason.
    Resolve {
        /// User id.
        by: String,
        /// Why.
        reason: String,
    },
    /// Add a comment.
    Comment {
        /// User id.
        by: String,
        /// Text.
        text: String,
    },
    /// Escalate to further units and roles.
    Escalate {
        /// Units.
        units: Vec<String>,
        /// Roles.
        roles: Vec<String>,
    },
}

impl Alert {
    /// Whether a session scoped to `units` with `role` sees this alert: its unit, or a unit or
    /// role it has been escalated to.
    pub fn visible_to(&self, may_see_unit: impl Fn(&str) -> bool, role: &str) -> bool {
        may_see_unit(&self.patient.unit)
            || self
                .escalation
                .as_ref()
                .is_some_and(|e| e.units.iter().any(|u| may_see_unit(u)) || e.roles.iter().any(|r| r == role))
    }
}

/// An alert with the sequence number its latest change was persisted under.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct SequencedAlert {
    /// Position in the alert log; strictly increasing, assigned at commit.
    pub seq: u64,
    /// Whether consoles should notify (sound): a new alert, a severity rise, an escalation.
    /// Updates of score or details are delivered quietly.
    #[serde(default)]
    pub notify: bool,
    /// The alert as of that change.
    pub alert: Alert,
}

/// The latest value of one canonical name.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct LatestValue {
    /// Numeric value, when numeric.
    pub value: Option<f64>,
    /// Coded value, when coded.
    pub text: Option<String>,
    /// When measured.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// A point of a trend: Unix seconds and value.
pub type TrendPoint = (i64, f64);

/// What the console's patient view shows: who and where, latest values, 24 h trends,
/// medications, allergies and open alerts. Contains PHI; serve only to authorised users and
/// audit each view.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct PatientSummary {
    /// Opaque id.
    pub id: PatientId,
    /// MRN.
    pub mrn: Phi<String>,
    /// Name.
    pub name: Phi<String>,
    /// Age in years.
    pub age_years: Option<i64>,
    /// Administrative sex.
    pub sex: String,
    /// Where.
    pub location: Location,
    /// Discharged.
    pub discharged: bool,
    /// Latest value per canonical name.
    pub latest: std::collections::BTreeMap<String, LatestValue>,
    /// Numeric trends over the window, at most a few hundred points each.
    pub trends: std::collections::BTreeMap<String, Vec<TrendPoint>>,
    /// Active medications (normalised names).
    pub medications: Vec<Medication>,
    /// Allergies.
    pub allergies: Vec<Allergy>,
    /// Open alerts.
    pub open_alerts: Vec<Alert>,
    /// What each rule computes now, alerting or not (e.g. the NEWS2 breakdown), by rule id.
    #[serde(default)]
    pub scores: std::collections::BTreeMap<String, Details>,
}

/// A rule's details: a JSON document kept as the text the rule host wrote. Compared as text,
/// stored and sent verbatim (no tree is built for a value that is only ever passed on), and
/// cheap to clone. `null` when a rule gives none.
///
/// A rule host may hand over details still to be written ([`Details::lazy`]): the text is
/// written the first time anything reads it (a comparison, the store, a console) and kept.
/// Most verdicts are read by nobody -- a score rule resolving on a patient with no open alert
/// -- and those are never written.
#[derive(Clone)]
pub struct Details(std::sync::Arc<DetailsText>);

/// The text of [`Details`], written now or on first read. A lazy source is dropped once it has
/// written the text: an open alert keeps its details as text, not the script's values too.
enum DetailsText {
    Written(Box<serde_json::value::RawValue>),
    Lazy {
        text: std::sync::OnceLock<Box<serde_json::value::RawValue>>,
        source: std::sync::Mutex<Option<Box<dyn WriteDetails>>>,
    },
}

/// Details a rule host writes as JSON when they are first read (see [`Details::lazy`]).
pub trait WriteDetails: Send + Sync {
    /// The details as JSON text. An error is written as `null` (the host checks what it can
    /// before handing the details over).
    fn write_json(&self) -> Result<Box<serde_json::value::RawValue>, serde_json::Error>;

    /// A top-level field of the details, as [`Details::field`] reads it from the written text
    /// (`None` when absent or when the details are not an object). A host that can answer
    /// without writing the whole document overrides this; by default the document is written
    /// (not kept) and parsed.
    fn field(&self, name: &str) -> Option<serde_json::Value> {
        let text = self.write_json().ok()?;
        fields_of(text.get(), [name]).into_iter().next().flatten()
    }
}

/// Top-level fields of the JSON object `text`, by name (one parse for all of them).
fn fields_of<const N: usize>(text: &str, names: [&str; N]) -> [Option<serde_json::Value>; N] {
    let mut object = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(text).unwrap_or_default();
    names.map(|name| object.remove(name))
}

fn null_text() -> Box<serde_json::value::RawValue> {
    serde_json::value::RawValue::from_string("null".into()).unwrap_or_else(|_| unreachable!("null is JSON"))
}

impl Details {
    /// `null`.
    pub fn null() -> Self {
        Details::from_raw(null_text())
    }

    /// Details from JSON text, checked.
    pub fn from_json_text(text: String) -> Result<Self, serde_json::Error> {
        serde_json::value::RawValue::from_string(text).map(Details::from_raw)
    }

    /// Details from JSON text already written by a serializer (not parsed again).
    pub fn from_raw(raw: Box<serde_json::value::RawValue>) -> Self {
        Details(DetailsText::Written(raw).into())
    }

    /// Details written by `source` the first time they are read.
    pub fn lazy(source: impl WriteDetails + 'static) -> Self {
        let source: Box<dyn WriteDetails> = Box::new(source);
        Details(DetailsText::Lazy { text: std::sync::OnceLock::new(), source: Some(source).into() }.into())
    }

    /// Details from a JSON value.
    pub fn from_value(value: &serde_json::Value) -> Self {
        serde_json::value::to_raw_value(value).map_or_else(|_| Details::null(), Details::from_raw)
    }

    fn raw(&self) -> &serde_json::value::RawValue {
        match &*self.0 {
            DetailsText::Written(raw) => raw,
            DetailsText::Lazy { text, source } => text.get_or_init(|| {
                // Runs once: the source is taken, written and dropped.
                let source = source.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
                source.and_then(|s| s.write_json().ok()).unwrap_or_else(null_text)
            }),
        }
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        self.raw().get()
    }

    /// Parsed (for tests and for reading a field).
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::from_str(self.as_str()).unwrap_or(serde_json::Value::Null)
    }

    /// The details read as `T`, which names only the fields it needs (the rest are skipped, not
    /// built); `None` when they do not fit.
    pub fn read<T: serde::de::DeserializeOwned>(&self) -> Option<T> {
        serde_json::from_str(self.as_str()).ok()
    }

    /// A top-level field (`None` when absent, or when the details are not an object). Details
    /// not yet written are asked for the field and stay unwritten: the unit board reads a
    /// NEWS2 verdict's score on every vitals event, and nothing else reads most of them.
    pub fn field(&self, name: &str) -> Option<serde_json::Value> {
        let [value] = self.fields([name]);
        value
    }

    /// Several top-level fields at once (see [`Details::field`]): written details are parsed
    /// once for all of them, unwritten ones are asked for each and stay unwritten.
    pub fn fields<const N: usize>(&self, names: [&str; N]) -> [Option<serde_json::Value>; N] {
        if let DetailsText::Lazy { text, source } = &*self.0
            && text.get().is_none()
        {
            let source = source.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(source) = source.as_ref() {
                return names.map(|name| source.field(name));
            }
            // Taken meanwhile: the text is being written; read it below.
        }
        fields_of(self.as_str(), names)
    }

    /// Whether the details are `null`.
    pub fn is_null(&self) -> bool {
        self.as_str() == "null"
    }

    /// Whether the text has been written (always, unless made [`Details::lazy`] and not read).
    pub fn is_written(&self) -> bool {
        match &*self.0 {
            DetailsText::Written(_) => true,
            DetailsText::Lazy { text, .. } => text.get().is_some(),
        }
    }
}

impl Default for Details {
    fn default() -> Self {
        Details::null()
    }
}

impl PartialEq for Details {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0) || self.as_str() == other.as_str()
    }
}

impl fmt::Debug for Details {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Details {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.raw().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Details {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Through a value, so any deserializer works (a raw value only comes from JSON text).
        let value = serde_json::Value::deserialize(d)?;
        Ok(Details::from_value(&value))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    struct Counted(Arc<AtomicUsize>, &'static str);

    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(100, Ordering::SeqCst);
        }
    }

    impl WriteDetails for Counted {
        fn write_json(&self) -> Result<Box<serde_json::value::RawValue>, serde_json::Error> {
            self.0.fetch_add(1, Ordering::SeqCst);
            serde_json::value::RawValue::from_string(self.1.to_string())
        }
    }

    #[test]
    fn lazy_details_are_written_once_when_first_read_and_compare_as_their_text() {
        let writes = Arc::new(AtomicUsize::new(0));
        let lazy = Details::lazy(Counted(Arc::clone(&writes), r#"{"score":3}"#));
        let copy = lazy.clone();
        assert!(!lazy.is_written());
        assert_eq!(writes.load(Ordering::SeqCst), 0, "nothing read, nothing written");
        assert_eq!(copy, Details::from_json_text(r#"{"score":3}"#.into()).unwrap());
        assert!(lazy.is_written(), "clones share the written text");
        assert_eq!(lazy.as_str(), r#"{"score":3}"#);
        assert_eq!(serde_json::to_string(&lazy).unwrap(), r#"{"score":3}"#, "stored verbatim");
        assert_eq!(writes.load(Ordering::SeqCst), 101, "written once, then the source dropped");
        assert_ne!(lazy, Details::null());
    }

    #[test]
    fn a_field_of_lazy_details_is_read_without_writing_them_and_as_the_text_has_it() {
        struct Fields(Arc<AtomicUsize>);
        impl WriteDetails for Fields {
            fn write_json(&self) -> Result<Box<serde_json::value::RawValue>, serde_json::Error> {
                self.0.fetch_add(1, Ordering::SeqCst);
                serde_json::value::RawValue::from_string(r#"{"score":3,"band":"low"}"#.into())
            }
            fn field(&self, name: &str) -> Option<serde_json::Value> {
                match name {
                    "score" => Some(3.into()),
                    "band" => Some("low".into()),
                    _ => None,
                }
            }
        }
        let writes = Arc::new(AtomicUsize::new(0));
        let lazy = Details::lazy(Fields(Arc::clone(&writes)));
        assert_eq!(lazy.field("score"), Some(3.into()));
        assert_eq!(lazy.field("band"), Some("low".into()));
        assert_eq!(lazy.field("partial"), None);
        assert!(!lazy.is_written() && writes.load(Ordering::SeqCst) == 0, "read without writing");
        // Written, the same fields from the text; a source without its own reader writes once per read.
        assert_eq!(lazy.as_str(), r#"{"score":3,"band":"low"}"#);
        assert_eq!(
            (lazy.field("score"), lazy.field("band"), lazy.field("partial")),
            (Some(3.into()), Some("low".into()), None)
        );
        assert_eq!(lazy.fields(["band", "score", "partial"]), [Some("low".into()), Some(3.into()), None], "one parse");
        let counted = Details::lazy(Counted(Arc::new(AtomicUsize::new(0)), r#"{"score":4}"#));
        assert_eq!(counted.field("score"), Some(4.into()));
        assert!(!counted.is_written());
        assert_eq!(Details::from_json_text("[1]".into()).unwrap().field("score"), None, "not an object");
    }

    #[test]
    fn lazy_details_that_fail_to_write_read_as_null() {
        struct Broken;
        impl WriteDetails for Broken {
            fn write_json(&self) -> Result<Box<serde_json::value::RawValue>, serde_json::Error> {
                serde_json::value::RawValue::from_string("{".into())
            }
        }
        let details = Details::lazy(Broken);
        assert!(details.is_null());
        assert_eq!(details.to_value(), serde_json::Value::Null);
    }
}
