//! Vigil load-test toolkit: MLLP client, PCD-01 message builder, FHIR Observations and client, demo ward simulator and
//! open-loop load generator. Talks to Vigil only over the wire; all patients are synthetic.

pub mod adt;
pub mod fhir;
pub mod flapwatch;
pub mod mllp;
pub mod pcd01;
pub mod rate;
pub mod ward;
