//! The Rhai rule host behind the `RuleEngine` port: one hardened engine constructor, rule
//! loading with metadata and content-hash versions, and evaluation with every failure
//! isolated to the rule that caused it.

mod api;
mod engine;

pub use engine::{LoadedRule, RhaiRules, RuleError, hardened_engine, load_dir, load_rule};
