//! The patient actor: one per patient, owning its live state. Events for a patient are handled
//! in arrival order: queued for durable append, applied to the window, then evaluated by rules.

mod actor;
mod messages;
mod snapshot;
mod state;
mod supervisor;

pub use actor::{PatientActor, PatientArgs};
pub use messages::{ActFailure, PatientMsg};
pub use snapshot::{REORDER_MARGIN, SNAPSHOT_VERSION, SnapshotRefused};
pub use state::{ActError, MAX_COMMENTS, PatientState, WINDOW_MAX_AGE, WINDOW_MAX_SAMPLES};
pub use supervisor::{PatientSupervisor, SupervisorMsg, SupervisorState};
