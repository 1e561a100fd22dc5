//! Store adapters behind the `EventStore` / `AlertStore` ports of `vigil-actors`: the embedded
//! engine (fjall, the default) with group commit, and ScyllaDB (the `scylla` driver). Both seal
//! PHI with the field-encryption key ring; [`conformance`] is the suite both must pass.

pub mod commit;
#[cfg(any(test, feature = "testing"))]
pub mod conformance;
#[cfg(test)]
mod dictionary;
pub mod embedded;
pub mod health;
pub mod recover;
#[cfg(feature = "scylla")]
pub mod scylla;
pub mod writeback;

pub use embedded::{EmbeddedStore, EmbeddedStoreConfig};
#[cfg(feature = "scylla")]
pub use scylla::{ScyllaStore, ScyllaStoreConfig};

use serde::{Deserialize, Serialize};
use vigil_actors::{ClinicalEvent, FromMessage, MessageKey, RecordedEvent, Source, StoreError};

/// An event row's body as written: the event and, beside its fields, the message it came
/// from. `sender` and `control_id` are the names event rows carried when the event itself held
/// them, so rows old and new read alike.
#[derive(Serialize)]
struct EventBody<'a> {
    #[serde(flatten)]
    event: &'a ClinicalEvent,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<Source>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sender: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    control_id: Option<&'a str>,
}

/// An event row's body as read back with its message.
#[derive(Deserialize)]
struct StoredEventBody {
    #[serde(flatten)]
    event: ClinicalEvent,
    #[serde(default)]
    source: Option<Source>,
    #[serde(default)]
    sender: Option<String>,
    #[serde(default)]
    control_id: Option<String>,
}

impl From<StoredEventBody> for RecordedEvent {
    fn from(b: StoredEventBody) -> Self {
        let message = match (b.sender, b.control_id) {
            (Some(sender), Some(id)) => Some(MessageKey { source: b.source.unwrap_or(Source::Hl7), sender, id }),
            _ => None,
        };
        RecordedEvent { event: b.event, message }
    }
}

/// The JSON of an event row.
fn event_body(event: &ClinicalEvent, message: Option<&FromMessage>) -> Result<Vec<u8>, StoreError> {
    let key = message.map(|m| &m.envelope.key);
    let body = EventBody {
        event,
        source: key.map(|k| k.source),
        sender: key.map(|k| k.sender.as_str()),
        control_id: key.map(|k| k.id.as_str()),
    };
    serde_json::to_vec(&body).map_err(|e| StoreError::Engine(format!("encode event: {e}")))
}
