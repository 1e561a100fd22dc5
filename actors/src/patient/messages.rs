//! Messages the patient actor accepts.

use ractor::RpcReplyPort;

use crate::model::{Alert, ClinicalEvent};
use crate::ports::{Durable, StoreError};

/// A message to a patient actor.
#[derive(Debug)]
pub enum PatientMsg {
    /// Accept an event: the reply carries the durability ticket the sender's ACK waits on.
    Ingest {
        /// The event.
        event: Box<ClinicalEvent>,
        /// Answered as soon as the append is queued.
        reply: RpcReplyPort<Result<Durable, StoreError>>,
    },
    /// The alerts of this patient that are not resolved.
    OpenAlerts {
        /// Answered with a copy.
        reply: RpcReplyPort<Vec<Alert>>,
    },
}
