//! Store adapters behind the `EventStore` / `AlertStore` ports of `vigil-actors`: the embedded
//! engine (fjall, the default) with group commit, and ScyllaDB (the `scylla` driver). Both seal
//! PHI with the field-encryption key ring; [`conformance`] is the suite both must pass.

pub mod conformance;
pub mod embedded;
pub mod scylla;

pub use embedded::{EmbeddedStore, EmbeddedStoreConfig};
pub use scylla::{ScyllaStore, ScyllaStoreConfig};

/// Whether `events[i]` is the first of its message (sender + control id) among `events`: the
/// one that carries the message-log entry, so a message is logged once however many events it
/// has (the events of one append are one message's, so this looks back a few entries at most).
fn first_of_message(events: &[vigil_actors::ClinicalEvent], i: usize) -> bool {
    let event = &events[i];
    !events[..i].iter().any(|e| e.sender == event.sender && e.control_id == event.control_id)
}
