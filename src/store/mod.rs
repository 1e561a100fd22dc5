//! Store adapters behind the `EventStore` / `AlertStore` ports of `vigil-actors`: the embedded
//! engine (fjall, the default) with group commit, and ScyllaDB (the `scylla` driver). Both seal
//! PHI with the field-encryption key ring; [`conformance`] is the suite both must pass.

pub mod conformance;
pub mod embedded;
pub mod scylla;

pub use embedded::{EmbeddedStore, EmbeddedStoreConfig};
pub use scylla::{ScyllaStore, ScyllaStoreConfig};
