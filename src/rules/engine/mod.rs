//! Loading, versioning and running rules. A rule file defines `fn meta()` (a map: id, title,
//! severity, triggers, references) and `fn evaluate(p)` returning `alert(...)`, `resolve(...)`
//! or nothing.
//!
//! By concern: the one hardened engine constructor here; `load.rs` compiles a rule, reads its
//! metadata and lints it; `host.rs` is the rule set in use (`RhaiRules`: reload, replace, the
//! `RuleEngine` port, failure isolation); `verdict.rs` turns what a rule returned into verdicts
//! and details JSON.

mod host;
mod load;
mod verdict;

pub use super::error::RuleError;
pub use host::{ReplaceError, RhaiRules};
pub use load::{LoadedRule, lint_rule, load_dir, load_rule};

use rhai::Engine;

use super::api;
use super::data::SharedTables;

/// The one place the sandbox limits are set: every rule runs in an engine built here. Rules
/// see no tables; see [`hardened_engine_with`].
pub fn hardened_engine() -> Engine {
    hardened_engine_with(SharedTables::default())
}

/// The hardened engine whose `data(...)` and drug-class functions read `tables`.
pub fn hardened_engine_with(tables: SharedTables) -> Engine {
    let mut engine = Engine::new();
    // Enough for any scoring rule (a NEWS2 evaluation uses a few thousand); an endless loop
    // stops in milliseconds instead of stalling the patient's actor.
    engine.set_max_operations(200_000);
    engine.set_max_call_levels(32);
    engine.set_max_expr_depths(64, 32);
    engine.set_max_string_size(16 * 1024);
    engine.set_max_array_size(10_000);
    engine.set_max_map_size(1_000);
    engine.set_max_variables(256);
    engine.set_max_functions(256);
    engine.disable_symbol("eval");
    // Constant folding and eager evaluation of pure functions at compile time (table
    // functions are registered volatile, so they are never folded).
    engine.set_optimization_level(rhai::OptimizationLevel::Full);
    // Rules are not allowed to write to the server's output (PHI could leak through it).
    engine.on_print(|_| {});
    engine.on_debug(|_, _, _| {});
    // `no_module` is set for the crate, so there is no `import` and no file access; the
    // standard packages have no file or network functions.
    api::register(&mut engine, tables);
    engine
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn eval_is_not_available_to_rules() {
        let engine = hardened_engine();
        let src = r#"fn meta() { #{ id: "t.e", severity: "low", triggers: ["rr"] } }
            fn evaluate(p) { eval("1") }"#;
        assert!(load_rule(&engine, Path::new("e"), src).is_err());
    }
}
