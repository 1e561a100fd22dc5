//! Loading, versioning and running rules. A rule file defines `fn meta()` (a map: id, title,
//! severity, triggers, references) and `fn evaluate(p)` returning `alert(...)`, `resolve(...)`
//! or nothing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use rhai::{AST, CallFnOptions, Dynamic, Engine, Map, Scope};
use sha2::{Digest, Sha256};
use vigil_actors::{PatientView, RuleEngine, RuleOutcome, RuleVerdict, Severity};

use super::api::{self, RulePatient, VERDICT_KEY};

/// A rule that cannot be loaded, with where.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RuleError {
    /// The file could not be read.
    #[error("{file}: {message}")]
    Io {
        /// File.
        file: String,
        /// Why.
        message: String,
    },
    /// Syntax or metadata error at a position.
    #[error("{file}:{line}:{column}: {message}")]
    Invalid {
        /// File.
        file: String,
        /// 1-based line (0 when unknown).
        line: usize,
        /// 1-based column (0 when unknown).
        column: usize,
        /// What is wrong.
        message: String,
    },
}

/// The one place the sandbox limits are set: every rule runs in an engine built here.
pub fn hardened_engine() -> Engine {
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
    // Rules are not allowed to write to the server's output (PHI could leak through it).
    engine.on_print(|_| {});
    engine.on_debug(|_, _, _| {});
    api::register(&mut engine);
    engine
}

/// A compiled rule with its metadata.
pub struct LoadedRule {
    /// Rule id.
    pub id: String,
    /// Content hash of the source (first 12 hex digits of SHA-256).
    pub version: String,
    /// Title for humans.
    pub title: String,
    /// Default severity.
    pub severity: Severity,
    /// Canonical names whose arrival runs the rule.
    pub triggers: Vec<String>,
    /// Source file.
    pub path: PathBuf,
    ast: AST,
    failures: AtomicU64,
}

impl std::fmt::Debug for LoadedRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedRule").field("id", &self.id).field("version", &self.version).finish()
    }
}

impl LoadedRule {
    /// How many evaluations of this rule failed.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }
}

fn invalid(file: &Path, pos: rhai::Position, message: impl Into<String>) -> RuleError {
    RuleError::Invalid {
        file: file.display().to_string(),
        line: pos.line().unwrap_or(0),
        column: pos.position().unwrap_or(0),
        message: message.into(),
    }
}

/// Compile one rule source and read its metadata.
pub fn load_rule(engine: &Engine, path: &Path, source: &str) -> Result<LoadedRule, RuleError> {
    let ast = engine.compile(source).map_err(|e| invalid(path, e.1, e.0.to_string()))?;
    let has_fn = |name: &str, params: usize| {
        ast.iter_functions().any(|f| f.name == name && f.params.len() == params)
    };
    if !has_fn("meta", 0) || !has_fn("evaluate", 1) {
        return Err(invalid(path, rhai::Position::NONE, "a rule defines fn meta() and fn evaluate(p)"));
    }
    let meta: Map = engine
        .call_fn(&mut Scope::new(), &ast, "meta", ())
        .map_err(|e| invalid(path, e.position(), format!("meta(): {e}")))?;
    let text = |key: &str| -> Result<String, RuleError> {
        meta.get(key)
            .and_then(|v| v.clone().into_string().ok())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| invalid(path, rhai::Position::NONE, format!("meta() needs a text `{key}`")))
    };
    let id = text("id")?;
    let severity_name = text("severity")?;
    let severity = Severity::parse(&severity_name).ok_or_else(|| {
        invalid(path, rhai::Position::NONE, format!("unknown severity `{severity_name}`"))
    })?;
    let triggers = meta
        .get("triggers")
        .and_then(|v| v.clone().into_typed_array::<rhai::ImmutableString>().ok())
        .map(|a| a.into_iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| invalid(path, rhai::Position::NONE, "meta() needs `triggers`, a list of names"))?;
    let digest = Sha256::digest(source.as_bytes());
    Ok(LoadedRule {
        title: text("title").unwrap_or_else(|_| id.clone()),
        id,
        version: hex::encode(&digest[..6]),
        severity,
        triggers,
        path: path.to_path_buf(),
        ast,
        failures: AtomicU64::new(0),
    })
}

/// Load every `*.rhai` file directly under `dir`, sorted by name. Any error fails the load.
pub fn load_dir(engine: &Engine, dir: &Path) -> Result<Vec<LoadedRule>, Vec<RuleError>> {
    let io = |e: std::io::Error| vec![RuleError::Io { file: dir.display().to_string(), message: e.to_string() }];
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "rhai"))
        .collect();
    paths.sort();
    let mut rules = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        let loaded = std::fs::read_to_string(&path)
            .map_err(|e| RuleError::Io { file: path.display().to_string(), message: e.to_string() })
            .and_then(|source| load_rule(engine, &path, &source));
        match loaded {
            Ok(rule) if rules.iter().any(|r: &LoadedRule| r.id == rule.id) => errors.push(invalid(
                &path,
                rhai::Position::NONE,
                format!("duplicate rule id `{}`", rule.id),
            )),
            Ok(rule) => rules.push(rule),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() { Ok(rules) } else { Err(errors) }
}

/// The rule set in use, swapped whole on reload.
pub struct RhaiRules {
    engine: Engine,
    rules: RwLock<Arc<Vec<Arc<LoadedRule>>>>,
    /// Rule ids whose failure has been logged already: a rule failing on every event is
    /// reported once, not once per event.
    reported: Mutex<HashMap<String, String>>,
}

impl RhaiRules {
    /// A host running `rules` in `engine` (which must come from [`hardened_engine`]).
    pub fn new(engine: Engine, rules: Vec<LoadedRule>) -> Self {
        RhaiRules {
            engine,
            rules: RwLock::new(Arc::new(rules.into_iter().map(Arc::new).collect())),
            reported: Mutex::new(HashMap::new()),
        }
    }

    /// Load `dir` with a hardened engine.
    pub fn from_dir(dir: &Path) -> Result<Self, Vec<RuleError>> {
        let engine = hardened_engine();
        let rules = load_dir(&engine, dir)?;
        Ok(RhaiRules::new(engine, rules))
    }

    /// The rules in use.
    pub fn rules(&self) -> Arc<Vec<Arc<LoadedRule>>> {
        self.rules.read().map(|r| Arc::clone(&r)).unwrap_or_default()
    }

    fn run(&self, rule: &LoadedRule, view: &Arc<PatientView>) -> Result<RuleVerdict, String> {
        let options = CallFnOptions::new().eval_ast(false).rewind_scope(true);
        let result: Dynamic = self
            .engine
            .call_fn_with_options(options, &mut Scope::new(), &rule.ast, "evaluate", (RulePatient(Arc::clone(view)),))
            .map_err(|e| e.to_string())?;
        verdict(result)
    }

    fn report_failure(&self, rule: &LoadedRule, error: &str) {
        rule.failures.fetch_add(1, Ordering::Relaxed);
        let Ok(mut reported) = self.reported.lock() else { return };
        if reported.get(&rule.id).is_some_and(|v| v == &rule.version) {
            return;
        }
        reported.insert(rule.id.clone(), rule.version.clone());
        // The error text comes from the rule and the engine, never from patient data.
        tracing::warn!(rule = %rule.id, version = %rule.version, error, "rule evaluation failed; other rules carry on");
    }
}

fn verdict(result: Dynamic) -> Result<RuleVerdict, String> {
    if result.is_unit() {
        return Ok(RuleVerdict::Quiet);
    }
    let map: Map = result.try_cast().ok_or("evaluate must return alert(...), resolve(...) or nothing")?;
    let text = |key: &str| map.get(key).and_then(|v| v.clone().into_string().ok()).unwrap_or_default();
    match text(VERDICT_KEY).as_str() {
        "fire" => {
            let severity_name = text("severity");
            let severity = Severity::parse(&severity_name).ok_or(format!("unknown severity `{severity_name}`"))?;
            let details = map.get("details").cloned().unwrap_or(Dynamic::UNIT);
            let details: serde_json::Value =
                rhai::serde::from_dynamic(&details).map_err(|e| format!("details: {e}"))?;
            let score = details.get("score").and_then(serde_json::Value::as_f64);
            Ok(RuleVerdict::Fire { severity, score, summary: text("summary"), details })
        }
        "resolve" => Ok(RuleVerdict::Resolve { reason: text("reason") }),
        _ => Err("evaluate must return alert(...), resolve(...) or nothing".into()),
    }
}

impl RuleEngine for RhaiRules {
    fn evaluate(&self, view: &Arc<PatientView>, triggers: &[&str]) -> Vec<RuleOutcome> {
        let rules = self.rules();
        let mut outcomes = Vec::new();
        for rule in rules.iter() {
            if !rule.triggers.iter().any(|t| triggers.contains(&t.as_str())) {
                continue;
            }
            match self.run(rule, view) {
                Ok(verdict) => outcomes.push(RuleOutcome {
                    rule_id: rule.id.clone(),
                    version: rule.version.clone(),
                    verdict,
                }),
                Err(error) => self.report_failure(rule, &error),
            }
        }
        outcomes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, VecDeque};
    use time::OffsetDateTime;
    use vigil_actors::Sample;

    fn view(values: &[(&str, f64)]) -> Arc<PatientView> {
        let now = OffsetDateTime::now_utc();
        let mut series = HashMap::new();
        for (name, value) in values {
            series.insert(name.to_string(), VecDeque::from([Sample { at: now, value: *value }]));
        }
        Arc::new(PatientView { now: Some(now), series, ..PatientView::default() })
    }

    const OK_RULE: &str = r#"
        fn meta() { #{ id: "t.ok", title: "t", severity: "high", triggers: ["rr"] } }
        fn evaluate(p) { let rr = p.latest("rr", 60); if rr != () && rr >= 22.0 { alert("high", "rr", #{ score: rr }) } else { resolve("fine") } }
    "#;

    #[test]
    fn syntax_errors_carry_line_and_column() {
        let engine = hardened_engine();
        let err = load_rule(&engine, Path::new("bad.rhai"), "fn meta() { #{ id: \"x\" }\nfn evaluate(p) { let = 1; }").unwrap_err();
        let RuleError::Invalid { line, column, .. } = err else { panic!("{err}") };
        assert_eq!(line, 2);
        assert!(column > 0);
    }

    #[test]
    fn an_endless_or_failing_rule_is_isolated_from_the_others() {
        let engine = hardened_engine();
        let looping = r#"fn meta() { #{ id: "t.loop", severity: "low", triggers: ["rr"] } }
            fn evaluate(p) { loop { } }"#;
        let throwing = r#"fn meta() { #{ id: "t.throw", severity: "low", triggers: ["rr"] } }
            fn evaluate(p) { throw "boom" }"#;
        let rules = vec![
            load_rule(&engine, Path::new("a"), looping).unwrap(),
            load_rule(&engine, Path::new("b"), throwing).unwrap(),
            load_rule(&engine, Path::new("c"), OK_RULE).unwrap(),
        ];
        let host = RhaiRules::new(engine, rules);
        let out = host.evaluate(&view(&[("rr", 30.0)]), &["rr"]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].rule_id, "t.ok");
        assert!(matches!(out[0].verdict, RuleVerdict::Fire { severity: Severity::High, score: Some(s), .. } if s == 30.0));
        assert!(host.rules().iter().filter(|r| r.id != "t.ok").all(|r| r.failures() == 1));
        assert!(host.evaluate(&view(&[("hr", 30.0)]), &["hr"]).is_empty(), "untriggered rules do not run");
    }

    #[test]
    fn eval_is_not_available_to_rules() {
        let engine = hardened_engine();
        let src = r#"fn meta() { #{ id: "t.e", severity: "low", triggers: ["rr"] } }
            fn evaluate(p) { eval("1") }"#;
        assert!(load_rule(&engine, Path::new("e"), src).is_err());
    }
}
