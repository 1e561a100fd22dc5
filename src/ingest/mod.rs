//! Ingest: from a framed HL7 message to its acknowledgements. `Ingress::begin` parses, maps and
//! routes a message in arrival order (so a patient's events keep their order) and returns a
//! `Pending` reply; `Pending::finish` waits until every event of the message is durable and only
//! then builds the accepting ACK (and, in enhanced mode with MSH-16, the application ACK after
//! it). Errors become NAKs with an ERR segment saying where and why.

pub mod hl7;
pub mod map;
pub mod mllp;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use time::OffsetDateTime;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use vigil_actors::{ClinicalEvent, Clock, Durable, EventStore, Router};

use hl7::{AckCode, AckError, AckHeader, ErrLocation, ErrSeverity, Message, build_ack};
use map::{MapError, Mapper};

use crate::config::UnsupportedPolicy;

/// Counters exported on `/metrics`.
#[derive(Debug, Default)]
pub struct IngestMetrics {
    /// Messages answered with an accepting ACK (AA/CA).
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

/// (sender, control id): what a control id is unique within.
type MessageKey = (String, String);

/// Shared ingest state.
pub struct Ingress {
    router: Arc<Router>,
    events: Arc<dyn EventStore>,
    /// Messages begun but not yet durable, so that a resend arriving meanwhile (a sender that
    /// timed out and retried on another connection) waits for the first copy's outcome.
    inflight: DashMap<MessageKey, watch::Receiver<Option<bool>>>,
    mapper: Mapper,
    clock: Arc<dyn Clock>,
    permits: Arc<Semaphore>,
    application: String,
    facility: String,
    unsupported: UnsupportedPolicy,
    control_ids: AtomicU64,
    /// Counters.
    pub metrics: IngestMetrics,
}

/// How the sender asked to be acknowledged (MSH-15, MSH-16).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckMode {
    /// MSH-15 and MSH-16 empty: one application ACK, AA / AE / AR.
    Original,
    /// Enhanced mode: accept ACK CA / CE / CR sent according to MSH-15, then an application
    /// ACK AA / AE according to MSH-16.
    Enhanced {
        /// MSH-15 AL or SU.
        on_success: bool,
        /// MSH-15 AL or ER.
        on_error: bool,
        /// MSH-16 AL or SU.
        app_on_success: bool,
        /// MSH-16 AL or ER.
        app_on_error: bool,
    },
}

impl AckMode {
    fn of(msg: &Message) -> AckMode {
        let accept = msg.accept_ack_type();
        if accept.is_empty() && msg.app_ack_type().is_empty() {
            return AckMode::Original;
        }
        let (on_success, on_error) = match accept {
            "NE" => (false, false),
            "ER" => (false, true),
            "SU" => (true, false),
            // AL, empty with MSH-16 set, or unknown: always answer; silence is the worse error.
            _ => (true, true),
        };
        // MSH-16 empty or NE: no application ACK (the accept ACK already says it is durable).
        let (app_on_success, app_on_error) = match msg.app_ack_type() {
            "AL" => (true, true),
            "SU" => (true, false),
            "ER" => (false, true),
            _ => (false, false),
        };
        AckMode::Enhanced { on_success, on_error, app_on_success, app_on_error }
    }

    /// The application ACK code after a successful accept ACK, when MSH-16 asks for one.
    fn app_success(self) -> Option<AckCode> {
        match self {
            AckMode::Enhanced { app_on_success: true, .. } => Some(AckCode::AA),
            _ => None,
        }
    }

    /// The application ACK code after an application error, when MSH-16 asks for one.
    fn app_failure(self) -> Option<AckCode> {
        match self {
            AckMode::Enhanced { app_on_error: true, .. } => Some(AckCode::AE),
            _ => None,
        }
    }

    fn success(self) -> Option<AckCode> {
        match self {
            AckMode::Original => Some(AckCode::AA),
            AckMode::Enhanced { on_success, .. } => on_success.then_some(AckCode::CA),
        }
    }

    /// `reject` for messages we will not take (AR/CR), otherwise an error (AE/CE).
    fn failure(self, reject: bool) -> Option<AckCode> {
        match (self, reject) {
            (AckMode::Original, true) => Some(AckCode::AR),
            (AckMode::Original, false) => Some(AckCode::AE),
            (AckMode::Enhanced { on_error, .. }, true) => on_error.then_some(AckCode::CR),
            (AckMode::Enhanced { on_error, .. }, false) => on_error.then_some(AckCode::CE),
        }
    }
}

/// A reply that may still be waiting for durability.
pub enum Pending {
    /// Answer now with these frames, in order (none when the sender asked for no ACK).
    Ready(Vec<String>),
    /// Answer once every event of the message is durable.
    Durable {
        /// Resolve on commit, one per event, in routing order.
        tickets: Vec<Durable>,
        /// Header of the ACK.
        header: Box<AckHeader>,
        /// How the sender wants to be answered.
        mode: AckMode,
        /// Held until answered: bounds messages in flight across all connections.
        permit: OwnedSemaphorePermit,
        /// For the ACK.
        ingress: Arc<Ingress>,
        /// Tells resends waiting on this message how it ended.
        inflight: (MessageKey, watch::Sender<Option<bool>>),
    },
    /// A resend of a message still in flight: answered as the first copy is.
    Duplicate {
        /// Becomes `Some(durable)` when the first copy is answered.
        first: watch::Receiver<Option<bool>>,
        /// Header of the ACK.
        header: Box<AckHeader>,
        /// How the sender wants to be answered.
        mode: AckMode,
        /// For the ACK.
        ingress: Arc<Ingress>,
    },
}

impl Pending {
    /// The ACK frames (unframed text), in the order to send them, once they can be sent: the
    /// accept (or original-mode) ACK, then the application ACK when MSH-16 asks for one.
    pub async fn finish(self) -> Vec<String> {
        match self {
            Pending::Ready(acks) => acks,
            Pending::Durable { tickets, header, mode, permit, ingress, inflight } => {
                // Every event must be durable before anything is acknowledged.
                let mut result = Ok(());
                for ticket in tickets {
                    let r = ticket.wait().await;
                    if result.is_ok() {
                        result = r;
                    }
                }
                drop(permit);
                let (key, done) = inflight;
                let _ = done.send(Some(result.is_ok()));
                ingress.inflight.remove(&key);
                match result {
                    Ok(()) => {
                        ingress.metrics.accepted.fetch_add(1, Ordering::Relaxed);
                        ingress.accepted(&header, mode)
                    }
                    Err(e) => {
                        ingress.metrics.rejected.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(control_id = %header.control_id, error = %e, "message not stored; sender told to resend");
                        ingress.not_stored(&header, mode)
                    }
                }
            }
            Pending::Duplicate { mut first, header, mode, ingress } => {
                let stored = matches!(first.wait_for(Option::is_some).await.map(|v| *v), Ok(Some(true)));
                if stored {
                    ingress.metrics.duplicates.fetch_add(1, Ordering::Relaxed);
                    ingress.accepted(&header, mode)
                } else {
                    ingress.not_stored(&header, mode)
                }
            }
        }
    }
}

/// Why a message is answered with an error.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// Not taken at all (AR / CR): unparseable, bad header, unsupported type, too large.
    Reject,
    /// The content is wrong (AE / CE, then AE as the application ACK when MSH-16 asks).
    Content,
    /// Not stored through no fault of the sender, who should resend (AE / CE).
    Internal,
}

impl Ingress {
    /// Ingest over `router`. `permits` bounds messages in flight.
    pub fn new(
        router: Arc<Router>,
        events: Arc<dyn EventStore>,
        mapper: Mapper,
        clock: Arc<dyn Clock>,
        permits: usize,
        application: String,
        facility: String,
    ) -> Self {
        Ingress {
            router,
            events,
            inflight: DashMap::new(),
            mapper,
            clock,
            permits: Arc::new(Semaphore::new(permits.max(1))),
            application,
            facility,
            unsupported: UnsupportedPolicy::Reject,
            control_ids: AtomicU64::new(0),
            metrics: IngestMetrics::default(),
        }
    }

    /// The mapper (its dropped-value counters are exported on `/metrics`).
    pub fn mapper(&self) -> &Mapper {
        &self.mapper
    }

    /// What to do with message types Vigil does not map (`[hl7] unsupported`).
    pub fn with_unsupported(mut self, policy: UnsupportedPolicy) -> Self {
        self.unsupported = policy;
        self
    }

    /// Parse, map and route one message. Call in arrival order; await `finish` in any order.
    pub async fn begin(self: &Arc<Self>, frame: &[u8]) -> Pending {
        let msg = match Message::parse(frame) {
            Ok(msg) => msg,
            Err(e) => {
                tracing::info!(error = %e.kind, "unparseable message rejected");
                let header = self.header(AckHeader::fallback(frame));
                return self.reject(&header, AckMode::Original, Refusal::Reject, &[AckError::from_parse_error(&e)]);
            }
        };
        let header = self.header(AckHeader::from_message(&msg));
        let mode = AckMode::of(&msg);
        let problems = msg.header_problems();
        if !problems.is_empty() {
            let errors: Vec<_> = problems.iter().map(AckError::from_parse_error).collect();
            return self.reject(&header, mode, Refusal::Reject, &errors);
        }
        let received_at = self.clock.now();
        let key: MessageKey = (map::sender_of(&msg), msg.control_id().to_string());
        let done = match self.inflight.entry(key.clone()) {
            Entry::Occupied(first) => {
                return Pending::Duplicate {
                    first: first.get().clone(),
                    header: Box::new(header),
                    mode,
                    ingress: Arc::clone(self),
                };
            }
            Entry::Vacant(slot) => {
                let (done, first) = watch::channel(None);
                slot.insert(first);
                done
            }
        };
        // From here every return must clear the in-flight entry; `finish` does it for the
        // durable path, `settle` for the others.
        let settle = |pending: Pending, stored: bool| {
            let _ = done.send(Some(stored));
            self.inflight.remove(&key);
            pending
        };
        match self.events.accepted_message(&key.0, &key.1).await {
            Ok(Some(first)) if received_at - first.received_at <= DEDUP_WINDOW => {
                tracing::info!(control_id = %header.control_id, patient = %first.patient_id, "duplicate of an accepted message re-acknowledged, not reprocessed");
                self.metrics.duplicates.fetch_add(1, Ordering::Relaxed);
                return settle(Pending::Ready(self.accepted(&header, mode)), true);
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(control_id = %header.control_id, error = %e, "message log unreadable; sender told to resend");
                let err = AckError::new(207, ErrSeverity::Error, "application internal error: resend");
                return settle(self.reject(&header, mode, Refusal::Internal, &[err]), false);
            }
        }
        match self.route(&msg, &header, mode, received_at).await {
            Ok(Some((tickets, permit))) => Pending::Durable {
                tickets,
                header: Box::new(header),
                mode,
                permit,
                ingress: Arc::clone(self),
                inflight: (key, done),
            },
            // Accepted with nothing to store (an ignored type, only skipped order groups).
            Ok(None) => settle(Pending::Ready(self.accepted(&header, mode)), true),
            Err(reply) => settle(reply, false),
        }
    }

    /// The events of a message, or `None` for a type Vigil does not map.
    fn map(&self, msg: &Message, received_at: OffsetDateTime) -> Option<Result<Vec<ClinicalEvent>, MapError>> {
        let m = &self.mapper;
        let (code, trigger, _) = msg.message_type();
        Some(match (code, trigger) {
            ("ORU", "R01") => m.oru_r01(msg, received_at),
            ("ADT", "A40") => m.adt_merge(msg, received_at),
            ("ADT", "A60") => m.adt_a60(msg, received_at),
            ("ADT", trigger) => m.adt_census(msg, Mapper::census_action(trigger)?, received_at),
            ("RDE", "O11") => m.pharmacy_order(msg, "RXE", 2, received_at),
            ("OMP", "O09") => m.pharmacy_order(msg, "RXO", 1, received_at),
            ("RAS", "O17") => m.ras_o17(msg, received_at),
            _ => return None,
        })
    }

    /// Map and hand to the patients' actors in order: the durability tickets, `None` when
    /// there is nothing to store, or the reply now.
    async fn route(
        &self,
        msg: &Message,
        header: &AckHeader,
        mode: AckMode,
        received_at: OffsetDateTime,
    ) -> Result<Option<(Vec<Durable>, OwnedSemaphorePermit)>, Pending> {
        let (code, trigger, _) = msg.message_type();
        let Some(events) = self.map(msg, received_at) else {
            if self.unsupported == UnsupportedPolicy::Ignore {
                tracing::info!(control_id = %header.control_id, code, trigger, "unsupported message type accepted and ignored, not stored");
                return Ok(None);
            }
            tracing::info!(control_id = %header.control_id, code, trigger, "unsupported message type rejected");
            let err = AckError::new(200, ErrSeverity::Error, format!("unsupported message type {code}^{trigger}"))
                .at(ErrLocation { segment: "MSH".into(), sequence: 1, field: 9, component: 0 });
            return Err(self.reject(header, mode, Refusal::Reject, &[err]));
        };
        let events = match events {
            Ok(events) => events,
            Err(e) => {
                tracing::info!(control_id = %header.control_id, segment = e.segment, field = e.field, code = e.code, "message content refused");
                let mut err = AckError::new(e.code, ErrSeverity::Error, e.to_string());
                err = err.at(ErrLocation { segment: e.segment.into(), sequence: 1, field: e.field, component: 0 });
                return Err(self.reject(header, mode, Refusal::Content, &[err]));
            }
        };
        if events.is_empty() {
            tracing::info!(control_id = %header.control_id, code, trigger, "message carried nothing to store");
            return Ok(None);
        }
        let Ok(permit) = Arc::clone(&self.permits).acquire_owned().await else {
            let err = AckError::new(207, ErrSeverity::Error, "shutting down, resend");
            return Err(self.reject(header, mode, Refusal::Internal, &[err]));
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
        let mut tickets = Vec::with_capacity(bundles.len());
        for bundle in bundles {
            match self.router.ingest_all(bundle).await {
                Ok(ticket) => tickets.push(ticket),
                Err(e) => {
                    // Events already routed may become durable; the sender resends and the
                    // duplicate check answers for the message as a whole.
                    tracing::error!(control_id = %header.control_id, error = %e, "message not routed; sender told to resend");
                    let err = AckError::new(207, ErrSeverity::Error, "application internal error: resend");
                    return Err(self.reject(header, mode, Refusal::Internal, &[err]));
                }
            }
        }
        Ok(Some((tickets, permit)))
    }

    /// The reply to a frame over the size limit.
    pub fn oversized(&self, prefix: &[u8], len: usize, limit: usize) -> Pending {
        tracing::warn!(len, limit, "mllp frame over the size limit rejected");
        let header = self.header(AckHeader::fallback(prefix));
        let err =
            AckError::new(207, ErrSeverity::Error, format!("message of {len} bytes exceeds the {limit} byte limit"));
        self.reject(&header, AckMode::Original, Refusal::Reject, &[err])
    }

    fn reject(&self, header: &AckHeader, mode: AckMode, why: Refusal, errors: &[AckError]) -> Pending {
        self.metrics.rejected.fetch_add(1, Ordering::Relaxed);
        let mut acks: Vec<String> =
            mode.failure(why == Refusal::Reject).map(|code| self.ack(header, code, errors)).into_iter().collect();
        if why == Refusal::Content {
            acks.extend(mode.app_failure().map(|code| self.ack(header, code, errors)));
        }
        Pending::Ready(acks)
    }

    /// The ACKs of a durable (or deliberately ignored) message: AA, or CA then AA per MSH-16.
    fn accepted(&self, header: &AckHeader, mode: AckMode) -> Vec<String> {
        [mode.success(), mode.app_success()].into_iter().flatten().map(|code| self.ack(header, code, &[])).collect()
    }

    /// The NAK of a message that could not be stored: the sender should resend.
    fn not_stored(&self, header: &AckHeader, mode: AckMode) -> Vec<String> {
        let err = AckError::new(207, ErrSeverity::Error, "application internal error: message not stored, resend");
        mode.failure(false).map(|code| self.ack(header, code, &[err])).into_iter().collect()
    }

    fn header(&self, mut h: AckHeader) -> AckHeader {
        // We answer as ourselves whatever the sender addressed.
        h.sending_app.clone_from(&self.application);
        h.sending_facility.clone_from(&self.facility);
        h
    }

    fn ack(&self, header: &AckHeader, code: AckCode, errors: &[AckError]) -> String {
        let n = self.control_ids.fetch_add(1, Ordering::Relaxed);
        let now = self.clock.now();
        let control_id = format!("V{}{n}", now.unix_timestamp());
        build_ack(header, code, errors, &control_id, &hl7_timestamp(now), None)
    }
}

/// `YYYYMMDDHHMMSS+ZZZZ`.
pub fn hl7_timestamp(t: OffsetDateTime) -> String {
    let (h, m, _) = t.offset().as_hms();
    format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}{}{:02}{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        if h < 0 || m < 0 { '-' } else { '+' },
        h.unsigned_abs(),
        m.unsigned_abs()
    )
}
