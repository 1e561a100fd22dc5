//! Messages the device actor accepts.

use ractor::RpcReplyPort;
use time::OffsetDateTime;

use crate::model::ClinicalEvent;

use super::state::Attachment;
use super::technical::TechnicalReport;

/// A message to a device actor.
#[derive(Debug)]
pub enum DeviceMsg {
    /// A message from the device arrived.
    Seen {
        /// When.
        at: OffsetDateTime,
        /// The patient it reports for now, if any (boxed: it is large and often absent).
        attachment: Option<Box<Attachment>>,
        /// What the message said of its technical state (leads off ...), when it carried
        /// observations.
        report: Option<Box<TechnicalReport>>,
        /// The events to store: `device.offline` resolved when it was silent, technical
        /// conditions raised or resolved.
        reply: RpcReplyPort<Vec<ClinicalEvent>>,
    },
    /// Judge silence at `now`.
    Check {
        /// Now, by the clock port.
        now: OffsetDateTime,
        /// The event raising `device.offline`, when it just went silent.
        reply: RpcReplyPort<Option<ClinicalEvent>>,
    },
    /// Its association changed without a message from it.
    Attach {
        /// The patient it reports for now, if any.
        attachment: Option<Box<Attachment>>,
    },
}
