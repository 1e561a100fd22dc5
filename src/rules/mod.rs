//! The Rhai rule host behind the `RuleEngine` port: one hardened engine constructor, rule
//! loading with metadata and content-hash versions, data tables, hot reload, the `vigil
//! rules` commands and the data-driven rule test harness; evaluation isolates every failure
//! to the rule that caused it.

mod api;
pub mod cli;
pub mod data;
mod engine;
mod error;
pub mod scores;
pub mod testing;
pub mod triggers;
pub mod watch;

pub use engine::{
    LoadedRule, ReplaceError, RhaiRules, RuleError, hardened_engine, hardened_engine_with, lint_rule, load_dir,
    load_rule,
};
pub use triggers::{KNOWN_TRIGGERS, is_known_trigger};
