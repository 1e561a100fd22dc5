//! Store adapters behind the `EventStore` / `AlertStore` ports of `vigil-actors`: the embedded
//! engine (fjall, the default) with group commit; ScyllaDB arrives as a second adapter.

pub mod embedded;

pub use embedded::{EmbeddedStore, EmbeddedStoreConfig};
