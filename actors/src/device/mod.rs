//! Devices: alarms reported by devices (IHE PCD-04) become alerts of the patient the device
//! is attached to, decided host-side in the patient actor, not by a rule.

mod alarm;

pub use alarm::{DEVICE_ALARM_RULE, DEVICE_RULE_VERSION, DEVICE_TECHNICAL_RULE, alarm_outcome, alarm_severity};
