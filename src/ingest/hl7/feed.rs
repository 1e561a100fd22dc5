//! The HL7 v2 feed: from a framed message to its ACKs. [`Hl7Feed::begin`] parses, checks the
//! header, maps the message through the table of supported types ([`FEEDS`]) and submits the
//! envelope and its events to the shared [`Ingress`]; [`Pending::finish`] turns the outcome
//! into ACK frames ([`super::ack`]). Call `begin` in arrival order (a patient's events keep
//! their order); `finish` in any order.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use time::OffsetDateTime;
use vigil_actors::device::{Attachment, ChangedBy, DeviceRegistry, QuarantinedReading, Sighting, TechnicalReport};
use vigil_actors::{ClinicalEvent, DeviceId, Envelope, EventKind, MessageKey, Observation, Phi};

use super::ack::{AckCode, AckError, AckHeader, AckMode, ErrLocation, ErrSeverity, Refusal, build_ack};
use super::parse::Message;
use crate::config::UnsupportedPolicy;
use crate::http::metrics::Stages;
use crate::ingest::map::{MapError, Mapper};
use crate::ingest::{Ingress, Outcome, Submission};

/// What a supported message type maps to.
type MapFn = fn(&Mapper, &Message, OffsetDateTime) -> Result<Vec<ClinicalEvent>, MapError>;

/// One supported message type: MSH-9.1 code, MSH-9.2 trigger (`None`: any trigger the mapper
/// accepts), and its mapping. Adding a type: a row here, a mapping in `ingest/map/`, a fixture
/// in tests/fixtures/hl7/ with its expected outcome, and a row in docs/hl7.md.
pub struct Feed {
    /// MSH-9.1.
    pub code: &'static str,
    /// MSH-9.2.
    pub trigger: &'static str,
    /// The mapping.
    pub map: MapFn,
}

/// The message types Vigil maps, in the order they are looked up.
pub const FEEDS: &[Feed] = &[
    Feed { code: "ORU", trigger: "R01", map: Mapper::oru_r01 },
    Feed { code: "ORU", trigger: "R40", map: Mapper::oru_r40 },
    Feed { code: "ADT", trigger: "A40", map: Mapper::adt_merge },
    Feed { code: "ADT", trigger: "A60", map: Mapper::adt_a60 },
    Feed { code: "ADT", trigger: "A01", map: census },
    Feed { code: "ADT", trigger: "A02", map: census },
    Feed { code: "ADT", trigger: "A03", map: census },
    Feed { code: "ADT", trigger: "A04", map: census },
    Feed { code: "ADT", trigger: "A08", map: census },
    Feed { code: "ADT", trigger: "A11", map: census },
    Feed { code: "ADT", trigger: "A12", map: census },
    Feed { code: "ADT", trigger: "A13", map: census },
    Feed { code: "RDE", trigger: "O11", map: |m, msg, at| m.pharmacy_order(msg, "RXE", 2, at) },
    Feed { code: "OMP", trigger: "O09", map: |m, msg, at| m.pharmacy_order(msg, "RXO", 1, at) },
    Feed { code: "RAS", trigger: "O17", map: Mapper::ras_o17 },
];

/// The census triggers (A01 admit ... A13 cancel discharge): one mapping, the action named by
/// the trigger.
fn census(m: &Mapper, msg: &Message, at: OffsetDateTime) -> Result<Vec<ClinicalEvent>, MapError> {
    let (_, trigger, _) = msg.message_type();
    match Mapper::census_action(trigger) {
        Some(action) => m.adt_census(msg, action, at),
        None => Ok(Vec::new()),
    }
}

/// The HL7 v2 adapter in front of [`Ingress`].
pub struct Hl7Feed {
    ingress: Arc<Ingress>,
    mapper: Mapper,
    application: String,
    facility: String,
    unsupported: UnsupportedPolicy,
    control_ids: AtomicU64,
    devices: Option<Arc<DeviceRegistry>>,
}

/// Devices one message may report as seen, at most (a bound on the work one message causes).
const MAX_DEVICES_PER_MESSAGE: usize = 8;

/// The devices an ORU names: OBR-3.3 (the PCD-04 source EUI-64) and OBX-18.1, distinct.
fn devices_named(msg: &Message) -> Vec<DeviceId> {
    let mut devices: Vec<DeviceId> = Vec::new();
    if msg.message_type().0 != "ORU" {
        return devices;
    }
    let named = msg.segments().iter().filter_map(|s| match s.name() {
        "OBR" if msg.message_type().1 == "R40" => Some(s.value(3, 1, 3, 1)),
        "OBX" => Some(s.value(18, 1, 1, 1)),
        _ => None,
    });
    for name in named {
        let name = name.as_str().trim();
        if name.is_empty() || devices.iter().any(|d| d.0 == name) {
            continue;
        }
        if devices.len() == MAX_DEVICES_PER_MESSAGE {
            break;
        }
        devices.push(DeviceId(name.to_string()));
    }
    devices
}

/// What a PCD-01 report (ORU^R01) says of the technical state of each device it names, in
/// the order of `named`: the conditions (leads off, probe off) its OBX rows carry for it (rows
/// without OBX-18 belong to the first device), and whether it carried a valid measurement of
/// that device. Other messages say nothing.
fn technical_reports(msg: &Message, named: &[DeviceId], observations: &[Observation]) -> Vec<Option<TechnicalReport>> {
    let (code, trigger, _) = msg.message_type();
    if code != "ORU" || trigger != "R01" {
        return vec![None; named.len()];
    }
    let found = crate::ingest::map::technical::technical_conditions(msg);
    named
        .iter()
        .enumerate()
        .map(|(i, device)| {
            let ours = |sent: Option<&str>| sent.map_or(i == 0, |d| d.is_empty() && i == 0 || d == device.0);
            let conditions = found.iter().filter(|(d, _)| ours(Some(d))).map(|(_, c)| c.clone()).collect();
            let valid_data = observations.iter().any(|o| o.value.is_some() && ours(o.device.as_deref()));
            Some(TechnicalReport { conditions, valid_data })
        })
        .collect()
}

/// A PCD-01 report that names no patient: no PID, or a PID without an identifier. Its
/// readings belong to the patient its device is associated with, or are quarantined.
fn names_no_patient(msg: &Message) -> bool {
    msg.segment("PID").is_none_or(|pid| pid.text(3).trim().is_empty())
}

/// A reply that may still be waiting for durability.
pub enum Pending {
    /// Answer now with these frames, in order (none when the sender asked for no ACK).
    Ready(Vec<String>),
    /// Answer once the submission has an outcome.
    Submitted {
        /// The message in the shared ingest.
        submission: Submission,
        /// Header of the ACK.
        header: Box<AckHeader>,
        /// How the sender wants to be answered.
        mode: AckMode,
        /// For the ACK.
        feed: Arc<Hl7Feed>,
        /// The devices the message was heard from, to finish before the ACK.
        sightings: Vec<Sighting>,
    },
}

impl Pending {
    /// The ACK frames (unframed text), in the order to send them, once they can be sent: the
    /// accept (or original-mode) ACK, then the application ACK when MSH-16 asks for one.
    pub async fn finish(self) -> Vec<String> {
        match self {
            Pending::Ready(acks) => acks,
            Pending::Submitted { submission, header, mode, feed, sightings } => {
                let routed = std::time::Instant::now();
                let heard = async {
                    if let Some(devices) = &feed.devices {
                        for sighting in sightings {
                            sighting.finish(devices).await;
                        }
                    }
                };
                let ((outcome, timing), ()) = tokio::join!(submission.outcome_timed(), heard);
                let seen = std::time::Instant::now();
                let stages = &feed.ingress.stages;
                stages.commit_wait.record(seen.saturating_duration_since(routed));
                if let Some(vigil_actors::DurableTiming { queued, completed: Some(completed) }) = timing {
                    // The three parts of [routed, seen], in turn: an actor may queue the append
                    // before this future is first polled, so each instant is held inside it.
                    let queued = queued.clamp(routed, seen);
                    let completed = completed.clamp(queued, seen);
                    stages.in_actor.record(queued - routed);
                    stages.in_store.record(completed - queued);
                    stages.ack_wake.record(seen - completed);
                }
                if outcome == Outcome::NotStored {
                    tracing::error!(control_id = %header.control_id, "message not stored; sender told to resend");
                }
                feed.answer(&header, mode, outcome)
            }
        }
    }
}

impl Hl7Feed {
    /// The HL7 feed over `ingress`, answering as `application` at `facility` (MSH-3 / MSH-4
    /// of our ACKs).
    pub fn new(ingress: Arc<Ingress>, mapper: Mapper, application: String, facility: String) -> Self {
        Hl7Feed {
            ingress,
            mapper,
            application,
            facility,
            unsupported: UnsupportedPolicy::Reject,
            control_ids: AtomicU64::new(0),
            devices: None,
        }
    }

    /// Report the devices messages name to `devices` (last seen, silence, `device.offline`).
    pub fn with_devices(mut self, devices: Arc<DeviceRegistry>) -> Self {
        self.devices = Some(devices);
        self
    }

    /// What to do with message types Vigil does not map (`[hl7] unsupported`).
    pub fn with_unsupported(mut self, policy: UnsupportedPolicy) -> Self {
        self.unsupported = policy;
        self
    }

    /// The mapper (its dropped-value counters are exported on `/metrics`).
    pub fn mapper(&self) -> &Mapper {
        &self.mapper
    }

    /// The shared ingest behind this feed (its counters are exported on `/metrics`).
    pub fn ingress(&self) -> &Arc<Ingress> {
        &self.ingress
    }

    /// Parse, map and submit one message. Call in arrival order; await `finish` in any order.
    pub async fn begin(self: &Arc<Self>, frame: &[u8]) -> Pending {
        let stages = &self.ingress.stages;
        let parsing = std::time::Instant::now();
        let parsed = Message::parse(frame);
        Stages::since(&stages.parse, parsing);
        let msg = match parsed {
            Ok(msg) => msg,
            Err(e) => {
                tracing::info!(error = %e.kind, "unparseable message rejected");
                let header = self.header(AckHeader::fallback(frame));
                return self.refuse(&header, AckMode::Original, Refusal::Reject, &[AckError::from_parse_error(&e)]);
            }
        };
        let header = self.header(AckHeader::from_message(&msg));
        let mode = AckMode::of(&msg);
        let problems = msg.header_problems();
        if !problems.is_empty() {
            let errors: Vec<_> = problems.iter().map(AckError::from_parse_error).collect();
            return self.refuse(&header, mode, Refusal::Reject, &errors);
        }
        let received_at = self.ingress.clock().now();
        let (code, trigger, _) = msg.message_type();
        // The devices the message names, read once for the association and the reports.
        let named = if self.devices.is_some() { devices_named(&msg) } else { Vec::new() };
        if let Some(devices) = &self.devices
            && code == "ORU"
            && trigger == "R01"
            && !named.is_empty()
            && names_no_patient(&msg)
        {
            return self.device_reading(devices, &msg, header, mode, received_at, &named).await;
        }
        let mapping = std::time::Instant::now();
        let events = match FEEDS.iter().find(|f| f.code == code && f.trigger == trigger) {
            Some(feed) => {
                let events = (feed.map)(&self.mapper, &msg, received_at);
                Stages::since(&stages.map, mapping);
                events
            }
            None if self.unsupported == UnsupportedPolicy::Ignore => {
                tracing::info!(control_id = %header.control_id, code, trigger, "unsupported message type accepted and ignored, not stored");
                Ok(Vec::new())
            }
            None => {
                tracing::info!(control_id = %header.control_id, code, trigger, "unsupported message type rejected");
                let err = AckError::new(200, ErrSeverity::Error, format!("unsupported message type {code}^{trigger}"))
                    .at(ErrLocation { segment: "MSH".into(), sequence: 1, field: 9, component: 0 });
                return self.refuse(&header, mode, Refusal::Reject, &[err]);
            }
        };
        let events = match events {
            Ok(events) => events,
            Err(e) => {
                tracing::info!(control_id = %header.control_id, segment = e.segment, field = e.field, code = e.code, "message content refused");
                let err = AckError::new(e.code, ErrSeverity::Error, e.to_string()).at(ErrLocation {
                    segment: e.segment.into(),
                    sequence: 1,
                    field: e.field,
                    component: 0,
                });
                return self.refuse(&header, mode, Refusal::Content, &[err]);
            }
        };
        // A device's message that names a patient associates it with them. A keep-alive
        // names its device and no event: it still counts as heard from.
        let mut heard_by: Vec<(DeviceId, Option<TechnicalReport>)> = Vec::new();
        let named_patient = events.first().map(Attachment::of);
        if let Some(devices) = &self.devices {
            // ADT moves patients between beds: devices placed at those beds follow.
            for event in events.iter().filter(|e| matches!(e.kind, EventKind::Census { .. })) {
                if let Err(error) = devices.census(ChangedBy::HL7, event).await {
                    tracing::error!(control_id = %header.control_id, %error, "device associations not updated by census");
                }
            }
            let observations = match events.first().map(|e| &e.kind) {
                Some(EventKind::Observations { observations }) => observations.as_slice(),
                _ => &[],
            };
            let reports = technical_reports(&msg, &named, observations);
            heard_by = named.into_iter().zip(reports).collect();
        }
        if events.is_empty() {
            tracing::info!(control_id = %header.control_id, code, trigger, "message carried nothing to store");
        }
        // The devices hear of it in arrival order (the association it names made and
        // written, each device's actor told); the rest, the association made durable and the
        // actors' replies stored, is finished beside the commit, and the ACK waits for both.
        // Neither is on the path of the connection's next message: a device actor's reply
        // was a round trip per message in arrival order (measured at 5,000 msg/s), and a new
        // monitor's association an fsync per message (docs/BENCHMARKS.md).
        let mut sightings = Vec::with_capacity(heard_by.len());
        if let Some(devices) = &self.devices {
            for (device, report) in heard_by {
                sightings.push(devices.sight(ChangedBy::HL7, &device, named_patient.clone(), report).await);
            }
        }
        self.submit(&msg, header, mode, received_at, events, sightings).await
    }

    async fn submit(
        self: &Arc<Self>,
        msg: &Message,
        header: AckHeader,
        mode: AckMode,
        received_at: OffsetDateTime,
        events: Vec<ClinicalEvent>,
        sightings: Vec<Sighting>,
    ) -> Pending {
        let envelope = Envelope {
            key: MessageKey::hl7(format!("{}|{}", msg.sending_application(), msg.sending_facility()), msg.control_id()),
            raw: Phi(msg.raw().to_string()),
            received_at,
        };
        let routing = std::time::Instant::now();
        let submission = self.ingress.submit(envelope, events).await;
        Stages::since(&self.ingress.stages.route, routing);
        Pending::Submitted { submission, header: Box::new(header), mode, feed: Arc::clone(self), sightings }
    }

    /// A PCD-01 report naming no patient: its readings go to the patient the first device it
    /// names is associated with now, or are quarantined (stored durably before the ACK,
    /// counted, listed by `GET /api/quarantine`, never a patient's).
    async fn device_reading(
        self: &Arc<Self>,
        devices: &DeviceRegistry,
        msg: &Message,
        header: AckHeader,
        mode: AckMode,
        received_at: OffsetDateTime,
        named: &[DeviceId],
    ) -> Pending {
        let observations = self.mapper.oru_observations(msg, received_at);
        let reports = technical_reports(msg, named, &observations);
        let mut reports_for = None;
        for (i, (device, report)) in named.iter().zip(reports).enumerate() {
            let current = devices.seen(ChangedBy::HL7, device, None, report).await;
            if i == 0 {
                reports_for = current;
            }
        }
        let events = match (reports_for, named.first()) {
            _ if observations.is_empty() => Vec::new(),
            (Some(patient), _) => vec![patient.event(received_at, EventKind::Observations { observations })],
            (None, Some(device)) => {
                let reading = QuarantinedReading {
                    device: device.clone(),
                    received_at,
                    feed: "hl7".into(),
                    message: msg.control_id().to_string(),
                    observations,
                };
                if let Err(error) = devices.quarantine(reading).await {
                    tracing::error!(control_id = %header.control_id, %error, "quarantined reading not stored; sender told to resend");
                    self.ingress.refused();
                    return Pending::Ready(self.answer(&header, mode, Outcome::NotStored));
                }
                Vec::new()
            }
            (None, None) => Vec::new(),
        };
        self.submit(msg, header, mode, received_at, events, Vec::new()).await
    }

    /// The reply to a frame over the size limit.
    pub fn oversized(&self, prefix: &[u8], len: usize, limit: usize) -> Pending {
        tracing::warn!(len, limit, "mllp frame over the size limit rejected");
        let header = self.header(AckHeader::fallback(prefix));
        let err =
            AckError::new(207, ErrSeverity::Error, format!("message of {len} bytes exceeds the {limit} byte limit"));
        self.refuse(&header, AckMode::Original, Refusal::Reject, &[err])
    }

    fn refuse(&self, header: &AckHeader, mode: AckMode, why: Refusal, errors: &[AckError]) -> Pending {
        self.ingress.refused();
        Pending::Ready(mode.refusal(why, errors, |code, errors| self.ack(header, code, errors)))
    }

    /// The ACKs of an outcome.
    fn answer(&self, header: &AckHeader, mode: AckMode, outcome: Outcome) -> Vec<String> {
        mode.outcome(outcome, |code, errors| self.ack(header, code, errors))
    }

    fn header(&self, mut h: AckHeader) -> AckHeader {
        // We answer as ourselves whatever the sender addressed.
        h.sending_app.clone_from(&self.application);
        h.sending_facility.clone_from(&self.facility);
        h
    }

    fn ack(&self, header: &AckHeader, code: AckCode, errors: &[AckError]) -> String {
        let n = self.control_ids.fetch_add(1, Ordering::Relaxed);
        let now = self.ingress.clock().now();
        let control_id = format!("V{}{n}", now.unix_timestamp());
        build_ack(header, code, errors, &control_id, &hl7_timestamp(now), None)
    }
}

/// `YYYYMMDDHHMMSS+ZZZZ`. Written digit by digit: every ACK carries one, and `format!` cost
/// more than the rest of the ACK.
pub fn hl7_timestamp(t: OffsetDateTime) -> String {
    let (h, m, _) = t.offset().as_hms();
    let sign = if h < 0 || m < 0 { '-' } else { '+' };
    let Ok(year) = u32::try_from(t.year()) else {
        // A year before 1 (never from a clock): the general formatter, sign and all.
        let (month, day, (hh, mm, ss)) = (u8::from(t.month()), t.day(), t.to_hms());
        let (oh, om) = (h.unsigned_abs(), m.unsigned_abs());
        return format!("{:04}{month:02}{day:02}{hh:02}{mm:02}{ss:02}{sign}{oh:02}{om:02}", t.year());
    };
    let mut out = String::with_capacity(19);
    let push = |out: &mut String, value: u32, width: u32| {
        for place in (0..width).rev() {
            let digit = (value / 10u32.pow(place)) % 10;
            out.push(char::from_digit(digit, 10).unwrap_or('0'));
        }
    };
    push(&mut out, year, 4);
    push(&mut out, u32::from(u8::from(t.month())), 2);
    for part in [t.day(), t.hour(), t.minute(), t.second()] {
        push(&mut out, u32::from(part), 2);
    }
    out.push(sign);
    push(&mut out, u32::from(h.unsigned_abs()), 2);
    push(&mut out, u32::from(m.unsigned_abs()), 2);
    out
}
