//! `vigil-actors`: Vigil's domain core. Events arrive here from the adapters in `vigil`
//! (MLLP, FHIR), are routed to one actor per patient, persisted through the store ports,
//! evaluated by the rule port, and published as alerts. No sockets, no database, no Rhai.
#![warn(missing_docs)]

pub mod census;
pub mod device;
#[cfg(any(test, feature = "fakes"))]
pub mod fakes;
pub mod model;
pub mod patient;
pub mod ports;
pub mod prewarm;
pub mod router;
pub mod series;

pub use census::{Census, CensusBed, CensusChange, News2Now};
pub use model::*;
pub use ports::*;
pub use prewarm::{PrewarmConfig, PrewarmReport, prewarm};
pub use router::{IngestError, Routed, Router, StartTimings};
