//! Ingest: from a framed HL7 message to an acknowledgement. `Ingress::begin` parses, maps and
//! routes a message in arrival order (so a patient's events keep their order) and returns a
//! `Pending` reply; `Pending::finish` waits until the message is durable and only then builds
//! the accepting ACK. Errors become NAKs with an ERR segment saying where and why.

pub mod hl7;
pub mod map;
pub mod mllp;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use time::OffsetDateTime;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use vigil_actors::{Clock, Durable, EventStore, Router};

use hl7::{AckCode, AckError, AckHeader, ErrLocation, ErrSeverity, Message, build_ack};
use map::Mapper;

/// Counters exported on `/metrics`.
#[derive(Debug, Default)]
pub struct IngestMetrics {
    /// Messages answered with an accepting ACK (AA/CA).
    pub accepted: AtomicU64,
    /// Messages answered with an error or reject.
    pub rejected: AtomicU64,
    /// Resends of accepted messages, re-acknowledged without processing.
    pub duplicates: AtomicU64,
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
    control_ids: AtomicU64,
    /// Counters.
    pub metrics: IngestMetrics,
}

/// How the sender asked to be acknowledged (MSH-15).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AckMode {
    /// MSH-15 and MSH-16 empty: one application ACK, AA / AE / AR.
    Original,
    /// Enhanced mode accept ACK: CA / CE / CR, sent according to MSH-15.
    Enhanced { on_success: bool, on_error: bool },
}

impl AckMode {
    fn of(msg: &Message) -> AckMode {
        let accept = msg.accept_ack_type();
        if accept.is_empty() && msg.app_ack_type().is_empty() {
            return AckMode::Original;
        }
        match accept {
            "NE" => AckMode::Enhanced { on_success: false, on_error: false },
            "ER" => AckMode::Enhanced { on_success: false, on_error: true },
            "SU" => AckMode::Enhanced { on_success: true, on_error: false },
            // AL, empty with MSH-16 set, or unknown: always answer; silence is the worse error.
            _ => AckMode::Enhanced { on_success: true, on_error: true },
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
    /// Answer now (or not at all, when the sender asked for no ACK).
    Ready(Option<String>),
    /// Answer once the message is durable.
    Durable {
        /// Resolves on commit.
        ticket: Durable,
        /// Header of the ACK.
        header: Box<AckHeader>,
        /// Success code, when the sender wants one.
        success: Option<AckCode>,
        /// Error code, when the sender wants one.
        failure: Option<AckCode>,
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
        /// Success code, when the sender wants one.
        success: Option<AckCode>,
        /// Error code, when the sender wants one.
        failure: Option<AckCode>,
        /// For the ACK.
        ingress: Arc<Ingress>,
    },
}

impl Pending {
    /// The ACK text (unframed), once it can be sent.
    pub async fn finish(self) -> Option<String> {
        match self {
            Pending::Ready(ack) => ack,
            Pending::Durable { ticket, header, success, failure, permit, ingress, inflight } => {
                let result = ticket.wait().await;
                drop(permit);
                let (key, done) = inflight;
                let _ = done.send(Some(result.is_ok()));
                ingress.inflight.remove(&key);
                match result {
                    Ok(()) => {
                        ingress.metrics.accepted.fetch_add(1, Ordering::Relaxed);
                        success.map(|code| ingress.ack(&header, code, &[]))
                    }
                    Err(e) => {
                        ingress.metrics.rejected.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(control_id = %header.control_id, error = %e, "message not stored; sender told to resend");
                        let err = AckError::new(207, ErrSeverity::Error, "application internal error: message not stored, resend");
                        failure.map(|code| ingress.ack(&header, code, &[err]))
                    }
                }
            }
            Pending::Duplicate { mut first, header, success, failure, ingress } => {
                let stored = matches!(first.wait_for(Option::is_some).await.map(|v| *v), Ok(Some(true)));
                if stored {
                    ingress.metrics.duplicates.fetch_add(1, Ordering::Relaxed);
                    success.map(|code| ingress.ack(&header, code, &[]))
                } else {
                    let err = AckError::new(207, ErrSeverity::Error, "application internal error: message not stored, resend");
                    failure.map(|code| ingress.ack(&header, code, &[err]))
                }
            }
        }
    }
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
            control_ids: AtomicU64::new(0),
            metrics: IngestMetrics::default(),
        }
    }

    /// Parse, map and route one message. Call in arrival order; await `finish` in any order.
    pub async fn begin(self: &Arc<Self>, frame: &[u8]) -> Pending {
        let msg = match Message::parse(frame) {
            Ok(msg) => msg,
            Err(e) => {
                tracing::info!(error = %e.kind, "unparseable message rejected");
                let header = self.header(AckHeader::fallback(frame));
                return self.reject(&header, AckMode::Original, true, &[AckError::from_parse_error(&e)]);
            }
        };
        let header = self.header(AckHeader::from_message(&msg));
        let mode = AckMode::of(&msg);
        let problems = msg.header_problems();
        if !problems.is_empty() {
            let errors: Vec<_> = problems.iter().map(AckError::from_parse_error).collect();
            return self.reject(&header, mode, true, &errors);
        }
        let received_at = self.clock.now();
        let key: MessageKey = (map::sender_of(&msg), msg.control_id().to_string());
        let done = match self.inflight.entry(key.clone()) {
            Entry::Occupied(first) => {
                return Pending::Duplicate {
                    first: first.get().clone(),
                    header: Box::new(header),
                    success: mode.success(),
                    failure: mode.failure(false),
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
                let ack = mode.success().map(|code| self.ack(&header, code, &[]));
                return settle(Pending::Ready(ack), true);
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(control_id = %header.control_id, error = %e, "message log unreadable; sender told to resend");
                let err = AckError::new(207, ErrSeverity::Error, "application internal error: resend");
                return settle(self.reject(&header, mode, false, &[err]), false);
            }
        }
        match self.route(&msg, &header, mode, received_at).await {
            Ok((ticket, permit)) => Pending::Durable {
                ticket,
                header: Box::new(header),
                success: mode.success(),
                failure: mode.failure(false),
                permit,
                ingress: Arc::clone(self),
                inflight: (key, done),
            },
            Err(reply) => settle(reply, false),
        }
    }

    /// Map and hand to the patient's actor: the durability ticket, or the reply now.
    async fn route(
        &self,
        msg: &Message,
        header: &AckHeader,
        mode: AckMode,
        received_at: OffsetDateTime,
    ) -> Result<(Durable, OwnedSemaphorePermit), Pending> {
        let event = match msg.message_type() {
            ("ORU", "R01", _) => self.mapper.oru_r01(msg, received_at),
            (code, trigger, _) => {
                tracing::info!(control_id = %header.control_id, code, trigger, "unsupported message type");
                let err = AckError::new(200, ErrSeverity::Error, format!("unsupported message type {code}^{trigger}"))
                    .at(ErrLocation { segment: "MSH".into(), sequence: 1, field: 9, component: 0 });
                return Err(self.reject(header, mode, true, &[err]));
            }
        };
        let event = match event {
            Ok(event) => event,
            Err(e) => {
                let err = AckError::new(e.code, ErrSeverity::Error, e.to_string()).at(ErrLocation {
                    segment: e.segment.into(),
                    sequence: 1,
                    field: e.field,
                    component: 0,
                });
                return Err(self.reject(header, mode, false, &[err]));
            }
        };
        let Ok(permit) = Arc::clone(&self.permits).acquire_owned().await else {
            let err = AckError::new(207, ErrSeverity::Error, "shutting down, resend");
            return Err(self.reject(header, mode, false, &[err]));
        };
        match self.router.ingest(event).await {
            Ok(ticket) => Ok((ticket, permit)),
            Err(e) => {
                tracing::error!(control_id = %header.control_id, error = %e, "message not routed; sender told to resend");
                let err = AckError::new(207, ErrSeverity::Error, "application internal error: resend");
                Err(self.reject(header, mode, false, &[err]))
            }
        }
    }

    /// The reply to a frame over the size limit.
    pub fn oversized(&self, prefix: &[u8], len: usize, limit: usize) -> Pending {
        tracing::warn!(len, limit, "mllp frame over the size limit rejected");
        let header = self.header(AckHeader::fallback(prefix));
        let err = AckError::new(207, ErrSeverity::Error, format!("message of {len} bytes exceeds the {limit} byte limit"));
        self.reject(&header, AckMode::Original, true, &[err])
    }

    fn reject(&self, header: &AckHeader, mode: AckMode, reject: bool, errors: &[AckError]) -> Pending {
        self.metrics.rejected.fetch_add(1, Ordering::Relaxed);
        Pending::Ready(mode.failure(reject).map(|code| self.ack(header, code, errors)))
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
