//! The router: owns the patient id -> actor map, starts (and rehydrates) patient actors on
//! first use, and hands each event to its patient's actor. Actor names carry only opaque ids.

use std::collections::HashMap;
use std::sync::Arc;

use dashmap::DashMap;
use ractor::{Actor, ActorRef, ActorStatus};
use time::OffsetDateTime;
use tokio::sync::{Mutex, oneshot};

use crate::model::{Alert, AlertAction, AlertId, ClinicalEvent, EventKind, PatientId, PatientSummary};
use crate::patient::{ActFailure, PatientActor, PatientArgs, PatientMsg, WINDOW_MAX_AGE};
use crate::ports::{AlertStore, Clock, Durable, EventStore, LiveFeed, Ports, RuleEngine, StoreError};

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

/// Routes events to patient actors.
pub struct Router {
    actors: DashMap<PatientId, ActorRef<PatientMsg>>,
    spawn_lock: Mutex<HashMap<PatientId, Vec<Alert>>>,
    ports: Ports,
}

impl Router {
    /// Send every patient's applied observations to `feed` (consoles' live vitals).
    pub fn with_live_feed(mut self, feed: Arc<dyn LiveFeed>) -> Self {
        self.ports.live = Some(feed);
        self
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
        let mut open: HashMap<PatientId, Vec<Alert>> = HashMap::new();
        for change in alerts.open_alerts().await? {
            open.entry(change.alert.patient.id.clone()).or_default().push(change.alert);
        }
        Ok(Router {
            actors: DashMap::new(),
            spawn_lock: Mutex::new(open),
            ports: Ports { events, alerts, rules, clock, live: None },
        })
    }

    /// Hand an event to its patient's actor; the ticket resolves once the event is durable.
    pub async fn ingest(&self, event: ClinicalEvent) -> Result<Durable, IngestError> {
        self.ingest_all(vec![event]).await
    }

    /// Hand the events of one message for one patient to its actor, to be stored atomically;
    /// the ticket resolves once all are durable.
    pub async fn ingest_all(&self, events: Vec<ClinicalEvent>) -> Result<Durable, IngestError> {
        let Some(patient) = events.first().map(|e| e.patient_id.clone()) else {
            let (done, ticket) = Durable::channel();
            done.complete(Ok(()));
            return Ok(ticket);
        };
        if events.iter().any(|e| e.patient_id != patient) {
            return Err(IngestError::MixedPatients);
        }
        for event in &events {
            if let EventKind::Merge { prior_id, .. } = &event.kind {
                // The retired record's actor stops; its history is read by the survivor.
                if let Some((_, prior)) = self.actors.remove(prior_id) {
                    let _ = prior.drain_and_wait(Some(std::time::Duration::from_secs(5))).await;
                }
            }
        }
        let actor = self.actor_for(&patient).await?;
        let (tx, rx) = oneshot::channel();
        actor
            .cast(PatientMsg::Ingest { events, reply: tx.into() })
            .map_err(|e| IngestError::Actor(e.to_string()))?;
        let ticket = rx.await.map_err(|_| IngestError::Actor("actor stopped".into()))??;
        Ok(ticket)
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
        actor
            .cast(PatientMsg::Act { alert_id, action, reply: tx.into() })
            .map_err(|e| unavailable(e.to_string()))?;
        rx.await.map_err(|_| unavailable("actor stopped".into()))?
    }

    /// Number of live patient actors.
    pub fn patient_count(&self) -> usize {
        self.actors.len()
    }

    /// Stop every patient actor and wait for each to finish its queued messages.
    pub async fn shutdown(&self) {
        let actors: Vec<_> = self.actors.iter().map(|e| e.value().clone()).collect();
        for actor in actors {
            let _ = actor.drain_and_wait(Some(std::time::Duration::from_secs(5))).await;
        }
        self.actors.clear();
    }

    async fn actor_for(&self, id: &PatientId) -> Result<ActorRef<PatientMsg>, IngestError> {
        if let Some(actor) = self.live(id) {
            return Ok(actor);
        }
        let mut open = self.spawn_lock.lock().await;
        if let Some(actor) = self.live(id) {
            return Ok(actor);
        }
        let since = self.ports.clock.now() - WINDOW_MAX_AGE;
        let history = self.ports.events.events_since(id, since.max(OffsetDateTime::UNIX_EPOCH)).await?;
        // First start: the open alerts loaded at start-up. A restart after the actor failed:
        // read them again, or its alerts would be re-raised as new episodes.
        let open_alerts = match open.remove(id) {
            Some(alerts) => alerts,
            None if self.actors.contains_key(id) => self
                .ports
                .alerts
                .open_alerts()
                .await?
                .into_iter()
                .filter(|c| &c.alert.patient.id == id)
                .map(|c| c.alert)
                .collect(),
            None => Vec::new(),
        };
        let args = PatientArgs { id: id.clone(), ports: self.ports.clone(), history, open_alerts };
        let (actor, _handle) = Actor::spawn(None, PatientActor, args)
            .await
            .map_err(|e| IngestError::Actor(e.to_string()))?;
        self.actors.insert(id.clone(), actor.clone());
        Ok(actor)
    }

    fn live(&self, id: &PatientId) -> Option<ActorRef<PatientMsg>> {
        let actor = self.actors.get(id)?.value().clone();
        matches!(actor.get_status(), ActorStatus::Running | ActorStatus::Starting)
            .then_some(actor)
    }
}
