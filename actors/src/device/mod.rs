//! Devices: one actor per device (last seen, reporting interval, silence) owned by the
//! [`DeviceRegistry`], and alarms reported by devices (IHE PCD-04). Both become alerts of the
//! patient the device is attached to, decided host-side in the patient actor, not by a rule.

mod actor;
mod alarm;
pub mod links;
mod messages;
mod registry;
mod state;
pub mod technical;

pub use actor::{DeviceActor, DeviceArgs};
pub use alarm::{
    DEVICE_ALARM_RULE, DEVICE_OFFLINE_RULE, DEVICE_RULE_VERSION, DEVICE_TECHNICAL_RULE, alarm_outcome, alarm_severity,
    silence_outcome,
};
pub use links::{
    Association, AssociationAudit, AssociationChange, AssociationSource, BedRecord, DeviceRecord, DeviceStore,
    QuarantinedReading,
};
pub use messages::DeviceMsg;
pub use registry::{ChangedBy, DeviceError, DeviceRegistry, MAX_BEDS, Sighting};
pub use state::{Attachment, DeviceConfig, DeviceState};
pub use technical::{TechnicalCondition, TechnicalReport};
