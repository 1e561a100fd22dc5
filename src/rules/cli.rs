//! `vigil rules check [DIR]` and `vigil rules test [DIR]`: what informaticists (and CI) run
//! before a rule reaches a patient. Errors print as `file:line:column: message`; the exit code
//! is non-zero when anything fails.

use std::path::PathBuf;

use super::{hardened_engine_with, lint_rule, load_rule};

/// The `rules` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum RulesCommand {
    /// Compile and lint every rule (and data table) in DIR.
    Check {
        /// Rules directory.
        #[arg(default_value = "rules")]
        dir: PathBuf,
    },
    /// Run the data-driven rule tests in DIR/tests/*.json.
    Test {
        /// Rules directory.
        #[arg(default_value = "rules")]
        dir: PathBuf,
        /// Only cases whose name contains this text.
        #[arg(long)]
        filter: Option<String>,
    },
}

/// Run a `rules` subcommand; returns the process exit code.
pub fn run(command: RulesCommand) -> i32 {
    match command {
        RulesCommand::Check { dir } => check(&dir),
        RulesCommand::Test { dir, filter } => test(&dir, filter.as_deref()),
    }
}

fn check(dir: &std::path::Path) -> i32 {
    let tables = match super::data::Tables::load(&dir.join("data")) {
        Ok(t) => t,
        Err(errors) => {
            errors.iter().for_each(|e| eprintln!("{e}"));
            return 1;
        }
    };
    let table_names = tables.names();
    let engine = hardened_engine_with(std::sync::Arc::new(arc_swap::ArcSwap::from_pointee(tables)));
    let mut paths: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "rhai"))
            .collect(),
        Err(e) => {
            eprintln!("{}: {e}", dir.display());
            return 1;
        }
    };
    paths.sort();
    let (mut ok, mut failed) = (0, 0);
    let mut ids: Vec<String> = Vec::new();
    for path in &paths {
        let outcome = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: {e}", path.display()))
            .and_then(|source| load_rule(&engine, path, &source).map_err(|e| e.to_string()))
            .and_then(|rule| lint_rule(&engine, &rule).map(|()| rule).map_err(|e| e.to_string()));
        match outcome {
            Ok(rule) if ids.contains(&rule.id) => {
                eprintln!("{}:0:0: duplicate rule id `{}`", path.display(), rule.id);
                failed += 1;
            }
            Ok(rule) => {
                for warning in &rule.warnings {
                    eprintln!("{}:0:0: warning: {warning}", path.display());
                }
                println!(
                    "ok    {} {} ({})  triggers: {}",
                    rule.id,
                    rule.version,
                    path.display(),
                    rule.triggers.join(", ")
                );
                ids.push(rule.id);
                ok += 1;
            }
            Err(message) => {
                eprintln!("{message}");
                failed += 1;
            }
        }
    }
    println!("{ok} rules ok, {failed} failed; tables: {}", table_names.join(", "));
    if failed > 0 || ok == 0 { 1 } else { 0 }
}

fn test(dir: &std::path::Path, filter: Option<&str>) -> i32 {
    let results = match super::testing::run_dir(dir) {
        Ok(r) => r,
        Err(errors) => {
            errors.iter().for_each(|e| eprintln!("{e}"));
            return 1;
        }
    };
    let (mut passed, mut failed) = (0, 0);
    for result in results.iter().filter(|r| filter.is_none_or(|f| r.name.contains(f))) {
        let file = result.file.file_name().map(|f| f.to_string_lossy().to_string()).unwrap_or_default();
        if result.failures.is_empty() {
            passed += 1;
            println!("pass  {file} :: {}", result.name);
        } else {
            failed += 1;
            println!("FAIL  {file} :: {}", result.name);
            for failure in &result.failures {
                println!("        {failure}");
            }
        }
    }
    println!("\n{passed} passed, {failed} failed, {} cases", passed + failed);
    if failed > 0 || passed == 0 { 1 } else { 0 }
}
