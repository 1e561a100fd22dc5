//! The patient actors' supervisor: every patient actor is spawned linked to it, so a failure
//! (a panic in a handler, caught by ractor) reaches one place instead of vanishing. It counts
//! the failure and logs it by opaque id; the router keeps the failed actor's entry, so the
//! patient's next event, console action or escalation step restarts it and rehydrates it from
//! the store (snapshot, log since, and its open alerts read again by index, so they carry on
//! as the same episodes). Nothing the failed actor had acknowledged is lost: an append is
//! queued before its sender is answered, and the messages still in its mailbox are answered
//! "actor stopped", which a sender takes as "resend" (HL7: AE).

use std::sync::Arc;

use dashmap::DashMap;
use metrics::Counter;
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};

use super::messages::PatientMsg;
use crate::model::PatientId;

/// The supervisor. Stateless itself; everything lives in [`SupervisorState`].
#[derive(Debug, Default)]
pub struct PatientSupervisor;

/// Its only message: none is sent (it acts on supervision events alone).
#[derive(Debug)]
pub enum SupervisorMsg {}

/// What it starts with and keeps.
pub struct SupervisorState {
    /// The router's patient id -> actor map (read to name a failed actor's patient).
    pub actors: Arc<DashMap<PatientId, ActorRef<PatientMsg>>>,
    /// Patient actors that failed.
    pub failures: Counter,
}

impl Actor for PatientSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorState;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: SupervisorState,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        Ok(args)
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        // Starts and clean stops (passivation, shutdown) need nothing: the router keeps its map.
        if let SupervisionEvent::ActorFailed(cell, _error) = event {
            state.failures.increment(1);
            // Failures are rare: finding the patient by a scan costs nothing per message.
            let failed = cell.get_id();
            let patient = state.actors.iter().find(|e| e.value().get_id() == failed).map(|e| e.key().clone());
            // The error's text (a panic's message) is not logged: it may quote the data the
            // handler held. The panic hook has printed where it happened.
            match patient {
                Some(patient) => {
                    tracing::error!(%patient, actor = %failed, "patient actor failed; its next event restarts it from the store");
                }
                None => tracing::error!(actor = %failed, "patient actor failed while starting"),
            }
        }
        Ok(())
    }
}
