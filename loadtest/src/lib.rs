//! Vigil load-test toolkit: MLLP client, PCD-01, lab and pharmacy message builders, FHIR
//! Observations and client, demo ward simulator, the echo baseline server, and the scenario
//! runner (TOML scenarios, open-loop schedule, alert latency from the harness's own consoles,
//! reports as a table, JSON and HTML, objectives) with the echo baseline and the disk's flush
//! floor measured in the same run. Talks to Vigil only over the wire; all
//! patients are synthetic.

pub mod adt;
pub mod cli;
pub mod disk;
pub mod echo;
pub mod fhir;
pub mod flapwatch;
pub mod html;
pub mod load;
pub mod mllp;
pub mod orders;
pub mod pace;
pub mod pcd01;
pub mod rate;
pub mod report;
pub mod scenario;
pub mod server;
pub mod ward;
