//! Messages the patient actor accepts.

use ractor::RpcReplyPort;

use crate::model::{Alert, AlertAction, AlertId, ClinicalEvent, FromMessage, PatientSummary};
use crate::ports::{Durable, StoreError};

use super::state::ActError;

/// Why an action failed: refused by the alert's state, or not persisted.
#[derive(Debug, thiserror::Error)]
pub enum ActFailure {
    /// The alert's state refuses the action.
    #[error(transparent)]
    Refused(#[from] ActError),
    /// The change could not be queued for storage.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A message to a patient actor.
#[derive(Debug)]
pub enum PatientMsg {
    /// Accept the events of one message: the reply carries the durability ticket the
    /// sender's ACK waits on (one ticket: they are stored atomically).
    Ingest {
        /// The message they were mapped from, for the message log (`None` for events that
        /// are not a received message's).
        message: Option<FromMessage>,
        /// The events, in message order.
        events: Vec<ClinicalEvent>,
        /// Answered as soon as the append is queued.
        reply: RpcReplyPort<Result<Durable, StoreError>>,
    },
    /// A clinician's or the escalation timer's action on one of this patient's open alerts.
    Act {
        /// Which alert.
        alert_id: AlertId,
        /// What to do.
        action: AlertAction,
        /// The changed alert and the ticket of its persistence (carrying its sequence number).
        reply: RpcReplyPort<Result<(Alert, Durable<u64>), ActFailure>>,
    },
    /// Stop if idle: no event or action for `idle_for`, no open alert and no clock running
    /// (a cooldown or a reopen window of a closed alert). The reply says whether it stops;
    /// its next event rebuilds it from the store.
    Passivate {
        /// How long without an event or action counts as idle.
        idle_for: time::Duration,
        /// Whether the actor is stopping.
        reply: RpcReplyPort<bool>,
    },
    /// The console's summary of this patient.
    Summary {
        /// Answered with the summary.
        reply: RpcReplyPort<PatientSummary>,
    },
}
