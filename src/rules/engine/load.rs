//! Compiling one rule: its metadata (`meta()`), content-hash version and alert policy, the lint
//! run against synthetic patients, and a directory of rules loaded whole or refused.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

use rhai::{AST, Caches, Dynamic, Engine, EvalAltResult, Map, Position, Scope};
use sha2::{Digest, Sha256};
use vigil_actors::{AlertPolicy, PatientView, Severity};

use super::super::api::RulePatient;
use super::super::triggers::is_known_trigger;
use super::RuleError;
use super::verdict::verdicts;

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
    /// Canonical names (or event kinds) whose arrival runs the rule.
    pub triggers: Vec<String>,
    /// Published sources the rule implements.
    pub references: Vec<String>,
    /// How the rule's alerts behave over time: `cooldown_s` (0 when absent), `clear_for_s`
    /// ([`DEFAULT_CLEAR_FOR_S`]) and `reopen_s` ([`DEFAULT_REOPEN_S`]) in `meta()`. Re-fires of
    /// an open alert are always deduplicated per (patient, rule, finding) by the patient actor.
    pub policy: AlertPolicy,
    /// The youngest age in whole years the rule is validated for (`min_age` in `meta()`);
    /// a younger patient is not scored by it. A patient without a birth date is scored.
    pub min_age: Option<i64>,
    /// Lint warnings (unknown trigger names, missing references).
    pub warnings: Vec<String>,
    /// Source file.
    pub path: PathBuf,
    /// The source text.
    pub source: String,
    pub(super) ast: AST,
    /// Function resolutions found by earlier evaluations (one set per evaluation running at
    /// once), so that an evaluation does not search the engine's modules for every call again.
    resolutions: Mutex<Vec<Caches>>,
    pub(super) failures: AtomicU64,
    pub(super) last_error: Mutex<Option<String>>,
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

    /// The last evaluation error (engine and rule text only, never patient data).
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }

    /// Run the rule's `evaluate(p)`: what `Engine::call_fn` does, with the same errors, but
    /// keeping the rule's function resolutions for its next evaluation. `call_fn` starts each
    /// call with an empty resolution cache, so every function a rule calls was looked up in
    /// every module of the engine on every event (12 % of the rule pack's instructions,
    /// docs/BENCHMARKS.md). A resolution depends only on the engine's functions (fixed once it
    /// is built) and the rule's own (fixed per `LoadedRule`), so it stays right for the rule.
    pub(super) fn call_evaluate(&self, engine: &Engine, patient: RulePatient) -> Result<Dynamic, Box<EvalAltResult>> {
        /// The most resolution sets kept (one per evaluation running at once; more are
        /// dropped after use).
        const KEPT: usize = 16;
        static CALL: LazyLock<AST> = LazyLock::new(|| {
            let mut engine = Engine::new_raw();
            engine.set_optimization_level(rhai::OptimizationLevel::None);
            engine.compile("evaluate(p)").expect("a function call compiles")
        });
        let mut caches = self.resolutions.lock().ok().and_then(|mut kept| kept.pop()).unwrap_or_else(|| {
            let mut caches = Caches::new();
            // A resolution cache below every block, so the blocks' own (popped at their end) are
            // not where resolutions go.
            caches.push_fn_resolution_cache();
            caches
        });
        // A new state per evaluation, as `call_fn`: the operation limit counts each alone.
        let mut global = engine.new_global_runtime_state();
        global.lib.push(self.ast.shared_lib().clone());
        let mut scope = Scope::new();
        scope.push("p", patient);
        #[allow(deprecated)] // the one entry point that takes the caches (rhai 1.x `internals`)
        let result = engine.eval_statements_raw(&mut global, &mut caches, &mut scope, CALL.statements());
        if let Ok(mut kept) = self.resolutions.lock()
            && kept.len() < KEPT
        {
            kept.push(caches);
        }
        // The errors `call_fn` gives: an error inside `evaluate` unwrapped; the others (the
        // sandbox's limits) carry the position of the call, which is not in the rule: cleared.
        result.map_err(|error| match *error {
            EvalAltResult::ErrorInFunctionCall(name, _, inner, _) if name == "evaluate" => inner,
            mut other => {
                other.set_position(Position::NONE);
                Box::new(other)
            }
        })
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

/// Hysteresis by default: a rule's alert closes once the rule has said "resolve" for five
/// minutes (a value bouncing across a threshold does not flap the alert).
pub const DEFAULT_CLEAR_FOR_S: i64 = 300;
/// By default a re-fire within 15 minutes of the rule closing an alert reopens that alert.
pub const DEFAULT_REOPEN_S: i64 = 900;

/// Compile one rule source and read its metadata.
pub fn load_rule(engine: &Engine, path: &Path, source: &str) -> Result<LoadedRule, RuleError> {
    let ast = engine.compile(source).map_err(|e| invalid(path, e.1, e.0.to_string()))?;
    let has_fn = |name: &str, params: usize| ast.iter_functions().any(|f| f.name == name && f.params.len() == params);
    if !has_fn("meta", 0) || !has_fn("evaluate", 1) {
        return Err(invalid(path, rhai::Position::new(1, 1), "a rule defines fn meta() and fn evaluate(p)"));
    }
    let meta: Map = engine
        .call_fn(&mut Scope::new(), &ast, "meta", ())
        .map_err(|e| invalid(path, e.position(), format!("meta(): {e}")))?;
    // Metadata errors point at `fn meta`.
    let meta_pos = source
        .lines()
        .position(|l| l.contains("fn meta"))
        .map_or(rhai::Position::NONE, |i| rhai::Position::new(u16::try_from(i + 1).unwrap_or(u16::MAX), 1));
    let text = |key: &str| -> Result<String, RuleError> {
        meta.get(key)
            .and_then(|v| v.clone().into_string().ok())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| invalid(path, meta_pos, format!("meta() needs a text `{key}`")))
    };
    let id = text("id")?;
    let severity_name = text("severity")?;
    let severity = Severity::parse(&severity_name)
        .ok_or_else(|| invalid(path, meta_pos, format!("unknown severity `{severity_name}`")))?;
    let names = |key: &str| {
        meta.get(key)
            .and_then(|v| v.clone().into_typed_array::<rhai::ImmutableString>().ok())
            .map(|a| a.into_iter().map(|s| s.to_string()).collect::<Vec<_>>())
    };
    let triggers = names("triggers")
        .filter(|t| !t.is_empty())
        .ok_or_else(|| invalid(path, meta_pos, "meta() needs `triggers`, a list of names"))?;
    let references = names("references").unwrap_or_default();
    let seconds = |key: &str, default: i64| match meta.get(key) {
        None => Ok(default),
        Some(v) => v
            .as_int()
            .ok()
            .filter(|s| *s >= 0)
            .ok_or_else(|| invalid(path, meta_pos, format!("meta() `{key}` is a whole number of seconds >= 0"))),
    };
    let policy = AlertPolicy {
        cooldown_s: seconds("cooldown_s", 0)?,
        clear_for_s: seconds("clear_for_s", DEFAULT_CLEAR_FOR_S)?,
        reopen_s: seconds("reopen_s", DEFAULT_REOPEN_S)?,
        hold_until_changed: match meta.get("hold_until_changed") {
            None => false,
            Some(v) => {
                v.as_bool().map_err(|_| invalid(path, meta_pos, "meta() `hold_until_changed` is true or false"))?
            }
        },
    };
    let min_age = match meta.get("min_age") {
        None => None,
        Some(v) => Some(
            v.as_int()
                .ok()
                .filter(|a| (0..=150).contains(a))
                .ok_or_else(|| invalid(path, meta_pos, "meta() `min_age` is a whole number of years, 0 to 150"))?,
        ),
    };
    let mut warnings: Vec<String> = triggers
        .iter()
        .filter(|t| !is_known_trigger(t))
        .map(|t| format!("trigger `{t}` is not a known canonical name or event kind"))
        .collect();
    if references.is_empty() {
        warnings.push("meta() has no `references`: cite the published source".into());
    }
    let digest = Sha256::digest(source.as_bytes());
    Ok(LoadedRule {
        title: text("title").unwrap_or_else(|_| id.clone()),
        id,
        version: hex::encode(&digest[..6]),
        severity,
        triggers,
        references,
        policy,
        min_age,
        warnings,
        path: path.to_path_buf(),
        source: source.to_string(),
        ast,
        resolutions: Mutex::new(Vec::new()),
        failures: AtomicU64::new(0),
        last_error: Mutex::new(None),
    })
}

/// Views a rule must evaluate without error before it is accepted: nothing recorded, a full
/// set of ordinary values, and a medication order. Catches misspelt functions, type errors
/// and runaway loops at load time instead of on a patient.
fn lint_views() -> Vec<(&'static str, Arc<PatientView>)> {
    use std::collections::VecDeque;
    use vigil_actors::{ActiveMedication, Allergy, CodedSample, Medication, Sample, Series};
    let now = time::OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000);
    let empty = PatientView { now: Some(now), ..PatientView::default() };
    let mut full = empty.clone();
    let normal = [
        ("hr", 80.0),
        ("pulse", 80.0),
        ("rr", 16.0),
        ("spo2", 97.0),
        ("sbp", 120.0),
        ("dbp", 70.0),
        ("map", 87.0),
        ("temp", 37.0),
        ("gcs", 15.0),
        ("fio2", 21.0),
        ("o2_flow", 0.0),
        ("wbc", 8.0),
        ("bands", 2.0),
        ("lactate", 1.0),
        ("creatinine", 0.9),
        ("bilirubin", 0.6),
        ("platelets", 250.0),
        ("inr", 1.0),
        ("paco2", 40.0),
        ("potassium", 4.0),
        ("sodium", 140.0),
        ("glucose", 100.0),
        ("hemoglobin", 13.0),
        ("troponin_i", 5.0),
    ];
    for (name, value) in normal {
        let samples = (0..3).map(|i| Sample { at: now - time::Duration::minutes(i * 30), value }).rev();
        full.series.insert(name.into(), samples.collect::<Series>());
    }
    full.coded.insert("consciousness".into(), VecDeque::from([CodedSample { at: now, text: "A".into() }]));
    full.age_years = Some(60);
    full.sex = "F".into();
    full.settings.insert("spo2_scale".into(), "1".into());
    let med = Medication { order_id: "lint-1".into(), rxnorm: Some("161".into()), name: "acetaminophen".into() };
    full.medications.push(ActiveMedication::ordered(med.clone(), now));
    full.allergies.push(Allergy {
        code: Some("RXNORM|7980".into()),
        name: "penicillin g".into(),
        kind: "DA".into(),
        severity: "SV".into(),
    });
    let mut order = full.clone();
    order.new_order = Some(Medication { order_id: "lint-2".into(), ..med });
    vec![("no data", Arc::new(empty)), ("ordinary values", Arc::new(full)), ("a new order", Arc::new(order))]
}

/// Run `rule` against the lint views; the first error, with its position, rejects it.
pub fn lint_rule(engine: &Engine, rule: &LoadedRule) -> Result<(), RuleError> {
    for (what, view) in lint_views() {
        let result = rule
            .call_evaluate(engine, RulePatient::new(view))
            .map_err(|e| invalid(&rule.path, e.position(), format!("evaluate(p) with {what}: {e}")))?;
        verdicts(result)
            .map_err(|e| invalid(&rule.path, rhai::Position::NONE, format!("evaluate(p) with {what}: {e}")))?;
    }
    Ok(())
}

fn rhai_files(dir: &Path) -> Result<Vec<PathBuf>, Vec<RuleError>> {
    let io = |e: std::io::Error| vec![RuleError::Io { file: dir.display().to_string(), message: e.to_string() }];
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "rhai"))
        .collect();
    paths.sort();
    Ok(paths)
}

/// Load and lint every `*.rhai` file directly under `dir`, sorted by name. Any error fails
/// the load.
pub fn load_dir(engine: &Engine, dir: &Path) -> Result<Vec<LoadedRule>, Vec<RuleError>> {
    let mut rules = Vec::new();
    let mut errors = Vec::new();
    for path in rhai_files(dir)? {
        let loaded = std::fs::read_to_string(&path)
            .map_err(|e| RuleError::Io { file: path.display().to_string(), message: e.to_string() })
            .and_then(|source| load_rule(engine, &path, &source))
            .and_then(|rule| lint_rule(engine, &rule).map(|()| rule));
        match loaded {
            Ok(rule) if rules.iter().any(|r: &LoadedRule| r.id == rule.id) => {
                errors.push(invalid(&path, rhai::Position::NONE, format!("duplicate rule id `{}`", rule.id)))
            }
            Ok(rule) => rules.push(rule),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() { Ok(rules) } else { Err(errors) }
}

#[cfg(test)]
mod tests {
    use super::super::hardened_engine;
    use super::*;

    #[test]
    fn syntax_errors_carry_line_and_column() {
        let engine = hardened_engine();
        let err = load_rule(&engine, Path::new("bad.rhai"), "fn meta() { #{ id: \"x\" }\nfn evaluate(p) { let = 1; }")
            .unwrap_err();
        let RuleError::Invalid { line, column, .. } = err else { panic!("{err}") };
        assert_eq!(line, 2);
        assert!(column > 0);
    }

    /// `call_evaluate` keeps resolutions between evaluations: what it returns, and every error
    /// (text and position), is what `Engine::call_fn` gives, on every evaluation, for rules whose
    /// helper functions share names but not bodies.
    #[test]
    fn evaluate_with_kept_resolutions_answers_as_call_fn_does() {
        let engine = hardened_engine();
        let rule = |id: &str, body: &str| {
            let src = format!("fn meta() {{ #{{ id: \"t.{id}\", severity: \"low\", triggers: [\"rr\"] }} }}\n{body}");
            load_rule(&engine, Path::new(id), &src).unwrap()
        };
        let rules = [
            rule("a", "fn helper(x) { x + 1 }\nfn evaluate(p) { helper(40) }"),
            rule("b", "fn helper(x) { `text ${x}` }\nfn evaluate(p) { helper(40) }"),
            rule("c", "fn helper(x) { x.nothing_here() }\nfn evaluate(p) {\n  helper(1)\n}"),
            rule("d", "fn evaluate(p) { throw \"boom\" }"),
            rule("e", "fn evaluate(p) { loop { } }"),
            rule("f", "fn evaluate(p) { let v = p.latest(\"rr\", 60); if v == () { \"none\" } else { v } }"),
            rule("g", "fn evaluate(p) { exit(7); 8 }"),
        ];
        let view = Arc::new(PatientView::default());
        for rule in &rules {
            let expected = engine.call_fn::<Dynamic>(
                &mut Scope::new(),
                &rule.ast,
                "evaluate",
                (RulePatient::new(Arc::clone(&view)),),
            );
            let expected = expected.map(|v| v.to_string()).map_err(|e| (e.to_string(), e.position()));
            for round in 0..3 {
                let got = rule.call_evaluate(&engine, RulePatient::new(Arc::clone(&view)));
                let got = got.map(|v| v.to_string()).map_err(|e| (e.to_string(), e.position()));
                assert_eq!(got, expected, "rule {}, evaluation {round}", rule.id);
            }
        }
        assert_eq!(rules[0].call_evaluate(&engine, RulePatient::new(view)).unwrap().as_int(), Ok(41), "its own helper");
        assert!(rules[0].resolutions.lock().unwrap().len() == 1, "one set kept, reused");
    }
}
