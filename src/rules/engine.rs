//! Loading, versioning and running rules. A rule file defines `fn meta()` (a map: id, title,
//! severity, triggers, references) and `fn evaluate(p)` returning `alert(...)`, `resolve(...)`
//! or nothing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use rhai::{AST, CallFnOptions, Dynamic, Engine, Map, Scope};
use sha2::{Digest, Sha256};
use vigil_actors::{AlertPolicy, Details, PatientView, RuleEngine, RuleOutcome, RuleVerdict, Severity};

use super::api::{self, RulePatient, Verdict};
use super::data::{SharedTables, Tables};
pub use super::error::RuleError;
use super::scores::Scored;
use super::triggers::is_known_trigger;

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
    ast: AST,
    failures: AtomicU64,
    last_error: Mutex<Option<String>>,
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
        failures: AtomicU64::new(0),
        last_error: Mutex::new(None),
    })
}

/// Views a rule must evaluate without error before it is accepted: nothing recorded, a full
/// set of ordinary values, and a medication order. Catches misspelt functions, type errors
/// and runaway loops at load time instead of on a patient.
fn lint_views() -> Vec<(&'static str, Arc<PatientView>)> {
    use std::collections::VecDeque;
    use vigil_actors::{ActiveMedication, Allergy, CodedSample, Medication, Sample};
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
        full.series.insert(name.into(), samples.collect::<VecDeque<_>>());
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
        let options = CallFnOptions::new().eval_ast(false).rewind_scope(true);
        let result = engine
            .call_fn_with_options::<Dynamic>(
                options,
                &mut Scope::new(),
                &rule.ast,
                "evaluate",
                (RulePatient::new(view),),
            )
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

/// Why a new version of a rule was not taken.
#[derive(Debug, thiserror::Error)]
pub enum ReplaceError {
    /// The source does not compile, lacks metadata or fails the lint.
    #[error(transparent)]
    Invalid(#[from] RuleError),
    /// The id in `meta()` is not the one addressed.
    #[error("meta() id `{found}` does not match `{expected}`")]
    IdMismatch {
        /// Addressed id.
        expected: String,
        /// Id in the source.
        found: String,
    },
    /// The new file could not be written.
    #[error("writing the rule file failed: {0}")]
    Io(String),
}

/// The rule set in use, swapped whole on reload.
pub struct RhaiRules {
    engine: Engine,
    tables: SharedTables,
    rules: ArcSwap<Vec<Arc<LoadedRule>>>,
    dir: Option<PathBuf>,
    /// Serialises reloads and replacements (evaluation never waits on it).
    reload: Mutex<()>,
    /// Errors of the last reload attempt that was refused (shown to informaticists).
    last_errors: Mutex<Vec<RuleError>>,
    /// Rule ids whose failure has been logged already: a rule failing on every event is
    /// reported once, not once per event.
    reported: Mutex<HashMap<String, String>>,
}

impl RhaiRules {
    /// A host running `rules` in `engine` (which must come from [`hardened_engine`]).
    pub fn new(engine: Engine, rules: Vec<LoadedRule>) -> Self {
        RhaiRules {
            engine,
            tables: SharedTables::default(),
            rules: ArcSwap::from_pointee(rules.into_iter().map(Arc::new).collect()),
            dir: None,
            reload: Mutex::new(()),
            last_errors: Mutex::new(Vec::new()),
            reported: Mutex::new(HashMap::new()),
        }
    }

    /// Load `dir` (rules `*.rhai`, tables `data/*.json`) with a hardened engine.
    pub fn from_dir(dir: &Path) -> Result<Self, Vec<RuleError>> {
        let tables = Tables::load(&dir.join("data"))?;
        let shared: SharedTables = Arc::new(ArcSwap::from_pointee(tables));
        let engine = hardened_engine_with(Arc::clone(&shared));
        let rules = load_dir(&engine, dir)?;
        let mut host = RhaiRules::new(engine, rules);
        host.tables = shared;
        host.dir = Some(dir.to_path_buf());
        Ok(host)
    }

    /// The directory the rules come from, when loaded from one.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// The rules in use.
    pub fn rules(&self) -> Arc<Vec<Arc<LoadedRule>>> {
        self.rules.load_full()
    }

    /// Names of the data tables in use.
    pub fn table_names(&self) -> Vec<String> {
        self.tables.load().names()
    }

    /// Errors of the last refused reload (empty after a successful one).
    pub fn last_errors(&self) -> Vec<RuleError> {
        self.last_errors.lock().map(|e| e.clone()).unwrap_or_default()
    }

    /// Reload the directory: every rule and table is compiled and linted first; only when all
    /// succeed are they swapped in together. On error the running set is untouched.
    pub fn reload(&self) -> Result<Vec<(String, String)>, Vec<RuleError>> {
        let Some(dir) = &self.dir else { return Ok(Vec::new()) };
        let _guard = self.reload.lock().unwrap_or_else(|p| p.into_inner());
        let outcome = Tables::load(&dir.join("data")).and_then(|tables| {
            // Rules are linted against the new tables: swap them in for the check and back
            // on failure (evaluations in between see a consistent old or new table set).
            let previous = self.swap_tables(Arc::new(tables));
            match load_dir(&self.engine, dir) {
                Ok(rules) => Ok(rules),
                Err(errors) => {
                    self.swap_tables(previous);
                    Err(errors)
                }
            }
        });
        match outcome {
            Ok(rules) => {
                let versions = rules.iter().map(|r| (r.id.clone(), r.version.clone())).collect();
                self.swap_rules(rules.into_iter().map(Arc::new).collect());
                if let Ok(mut e) = self.last_errors.lock() {
                    e.clear();
                }
                Ok(versions)
            }
            Err(errors) => {
                if let Ok(mut e) = self.last_errors.lock() {
                    e.clone_from(&errors);
                }
                Err(errors)
            }
        }
    }

    /// Replace (or add) rule `id` with `source`: compiled, linted and checked before an atomic
    /// swap; written to the rules directory (atomically, via a temporary file) so it survives
    /// a restart. A rejected source leaves the running version in place.
    pub fn replace(&self, id: &str, source: &str) -> Result<Arc<LoadedRule>, ReplaceError> {
        let _guard = self.reload.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.rules();
        let path = current
            .iter()
            .find(|r| r.id == id)
            .map(|r| r.path.clone())
            .or_else(|| self.dir.as_ref().map(|d| d.join(format!("{id}.rhai"))))
            .unwrap_or_else(|| PathBuf::from(format!("{id}.rhai")));
        let rule = load_rule(&self.engine, &path, source)?;
        lint_rule(&self.engine, &rule)?;
        if rule.id != id {
            return Err(ReplaceError::IdMismatch { expected: id.into(), found: rule.id });
        }
        if self.dir.is_some() {
            let tmp = path.with_extension("rhai.tmp");
            std::fs::write(&tmp, source)
                .and_then(|()| std::fs::rename(&tmp, &path))
                .map_err(|e| ReplaceError::Io(e.to_string()))?;
        }
        let rule = Arc::new(rule);
        let mut next: Vec<Arc<LoadedRule>> = current.iter().filter(|r| r.id != id).cloned().collect();
        next.push(Arc::clone(&rule));
        next.sort_by(|a, b| a.path.cmp(&b.path));
        self.swap_rules(next);
        Ok(rule)
    }

    fn swap_rules(&self, rules: Vec<Arc<LoadedRule>>) {
        self.rules.store(Arc::new(rules));
    }

    fn swap_tables(&self, tables: Arc<Tables>) -> Arc<Tables> {
        self.tables.swap(tables)
    }

    fn run(&self, rule: &LoadedRule, patient: &RulePatient) -> Result<Vec<RuleVerdict>, String> {
        let options = CallFnOptions::new().eval_ast(false).rewind_scope(true);
        let result: Dynamic = self
            .engine
            .call_fn_with_options(options, &mut Scope::new(), &rule.ast, "evaluate", (patient.clone(),))
            .map_err(|e| e.to_string())?;
        verdicts(result)
    }

    fn report_failure(&self, rule: &LoadedRule, error: &str) {
        rule.failures.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut last) = rule.last_error.lock() {
            *last = Some(error.to_string());
        }
        let Ok(mut reported) = self.reported.lock() else { return };
        if reported.get(&rule.id).is_some_and(|v| v == &rule.version) {
            return;
        }
        reported.insert(rule.id.clone(), rule.version.clone());
        // The error text comes from the rule and the engine, never from patient data.
        tracing::warn!(rule = %rule.id, version = %rule.version, error, "rule evaluation failed; other rules carry on");
    }
}

/// What `evaluate` returned: nothing, one verdict, or an array of verdicts (one per finding).
fn verdicts(result: Dynamic) -> Result<Vec<RuleVerdict>, String> {
    if result.is_unit() {
        return Ok(Vec::new());
    }
    if result.is_array() {
        let items: rhai::Array = result.cast();
        return items.into_iter().filter(|v| !v.is_unit()).map(verdict).collect();
    }
    verdict(result).map(|v| vec![v])
}

fn verdict(result: Dynamic) -> Result<RuleVerdict, String> {
    let verdict: Verdict =
        result.try_cast().ok_or("evaluate must return alert(...), resolve(...), an array of them, or nothing")?;
    // An empty finding is the rule's one alert (`resolve_for("", ...)` closes it alone).
    let finding = |f: Option<rhai::ImmutableString>| -> Result<Option<String>, String> {
        match f {
            Some(f) if f.len() > MAX_FINDING_LEN => Err(format!("a finding is at most {MAX_FINDING_LEN} bytes")),
            f => Ok(f.map(|f| f.to_string())),
        }
    };
    match verdict {
        Verdict::Fire { finding: f, severity, summary, details } => {
            let severity = Severity::parse(&severity).ok_or(format!("unknown severity `{severity}`"))?;
            let score = score_of(&details);
            Ok(RuleVerdict::Fire {
                finding: finding(f)?.filter(|f| !f.is_empty()),
                severity,
                score,
                summary: summary.to_string(),
                partial: is_partial(&details),
                details: details_json(&details)?,
            })
        }
        Verdict::Resolve { finding: f, reason, details } => Ok(RuleVerdict::Resolve {
            finding: finding(f)?,
            reason: reason.to_string(),
            partial: is_partial(&details),
            details: details_json(&details)?,
        }),
    }
}

/// A finding's name is a short key (a drug pair, an analyte), not a document.
const MAX_FINDING_LEN: usize = 200;

/// Whether the details say they were computed from incomplete data (`partial: true`, as a
/// [`Scored`] with a missing input says).
fn is_partial(details: &Dynamic) -> bool {
    let partial = match details.read_lock::<Map>() {
        Some(m) => m.get("partial").cloned(),
        None => details.read_lock::<Scored>().map(|s| s.get("partial")),
    };
    partial.is_some_and(|p| p.as_bool().unwrap_or(false))
}

/// The `score` of a rule's details (a number), if any.
fn score_of(details: &Dynamic) -> Option<f64> {
    let score = if let Some(m) = details.read_lock::<Map>() {
        m.get("score").cloned()?
    } else if let Some(s) = details.read_lock::<Scored>() {
        s.get("score")
    } else {
        return None;
    };
    score.as_float().ok().or_else(|| score.as_int().ok().map(|i| i as f64))
}

/// A rule's details as JSON text, written straight from the script's values.
fn details_json(details: &Dynamic) -> Result<Details, String> {
    serde_json::value::to_raw_value(&DynJson(details)).map(Details::from_raw).map_err(|e| format!("details: {e}"))
}

/// A script value as JSON: maps, arrays, text, numbers (non-finite as `null`), booleans,
/// `()` as `null`, a [`Scored`] as its properties; anything else through Rhai's serde.
pub(crate) struct DynJson<'a>(pub &'a Dynamic);

impl serde::Serialize for DynJson<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        let d = self.0;
        if d.is_unit() {
            return s.serialize_unit();
        }
        if let Ok(b) = d.as_bool() {
            return s.serialize_bool(b);
        }
        if let Ok(i) = d.as_int() {
            return s.serialize_i64(i);
        }
        if let Ok(f) = d.as_float() {
            return if f.is_finite() { s.serialize_f64(f) } else { s.serialize_unit() };
        }
        if let Some(t) = d.read_lock::<rhai::ImmutableString>() {
            return s.serialize_str(&t);
        }
        if let Some(a) = d.read_lock::<rhai::Array>() {
            let mut seq = s.serialize_seq(Some(a.len()))?;
            for x in a.iter() {
                seq.serialize_element(&DynJson(x))?;
            }
            return seq.end();
        }
        if let Some(m) = d.read_lock::<Map>() {
            let mut map = s.serialize_map(Some(m.len()))?;
            for (k, v) in m.iter() {
                map.serialize_entry(k.as_str(), &DynJson(v))?;
            }
            return map.end();
        }
        if let Some(scored) = d.read_lock::<Scored>() {
            return scored.serialize_with(s, DynJson);
        }
        d.serialize(s)
    }
}

impl RhaiRules {
    fn evaluate_where(&self, view: &Arc<PatientView>, runs: impl Fn(&LoadedRule) -> bool) -> Vec<RuleOutcome> {
        let rules = self.rules();
        let patient = RulePatient::new(Arc::clone(view));
        let mut outcomes = Vec::new();
        for rule in rules.iter() {
            if !runs(rule) {
                continue;
            }
            let outcome = |verdict| RuleOutcome {
                rule_id: rule.id.clone(),
                version: rule.version.clone(),
                policy: rule.policy,
                verdict,
            };
            if let (Some(min_age), Some(age)) = (rule.min_age, view.age_years)
                && age < min_age
            {
                let reason = format!("validated for patients aged {min_age} and over");
                outcomes.push(outcome(RuleVerdict::NotApplicable { reason }));
                continue;
            }
            match self.run(rule, &patient) {
                Ok(verdicts) => outcomes.extend(verdicts.into_iter().map(outcome)),
                Err(error) => self.report_failure(rule, &error),
            }
        }
        outcomes
    }
}

impl RuleEngine for RhaiRules {
    fn evaluate(&self, view: &Arc<PatientView>, triggers: &[&str]) -> Vec<RuleOutcome> {
        self.evaluate_where(view, |rule| rule.triggers.iter().any(|t| triggers.contains(&t.as_str())))
    }

    fn evaluate_all(&self, view: &Arc<PatientView>) -> Vec<RuleOutcome> {
        self.evaluate_where(view, |_| true)
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
        let err = load_rule(&engine, Path::new("bad.rhai"), "fn meta() { #{ id: \"x\" }\nfn evaluate(p) { let = 1; }")
            .unwrap_err();
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
        assert!(
            matches!(out[0].verdict, RuleVerdict::Fire { severity: Severity::High, score: Some(s), .. } if s == 30.0)
        );
        assert!(host.rules().iter().filter(|r| r.id != "t.ok").all(|r| r.failures() == 1));
        assert!(host.evaluate(&view(&[("hr", 30.0)]), &["hr"]).is_empty(), "untriggered rules do not run");
    }

    #[test]
    fn details_are_written_as_json_text_with_scores_nested_and_non_finite_numbers_as_null() {
        let engine = hardened_engine();
        let src = r#"fn meta() { #{ id: "t.j", severity: "low", triggers: ["rr"] } }
            fn evaluate(p) { alert("low", "j", #{ score: 2, text: "a \"quoted\"\nline", nan: 0.0 / 0.0, list: [1, 2.5, (), true], nested: #{ x: 1 } }) }"#;
        let host = RhaiRules::new(hardened_engine(), vec![load_rule(&engine, Path::new("j"), src).unwrap()]);
        let out = host.evaluate(&view(&[("rr", 20.0)]), &["rr"]);
        let RuleVerdict::Fire { details, score, .. } = &out[0].verdict else { panic!("{out:?}") };
        assert_eq!(*score, Some(2.0));
        let v = details.to_value();
        assert_eq!(v["text"], "a \"quoted\"\nline");
        assert!(v["nan"].is_null());
        assert_eq!(v["list"], serde_json::json!([1, 2.5, null, true]));
        assert_eq!(v["nested"]["x"], 1);
        assert_eq!(Details::from_json_text(details.as_str().to_string()).unwrap(), *details, "valid JSON text");
    }

    #[test]
    fn eval_is_not_available_to_rules() {
        let engine = hardened_engine();
        let src = r#"fn meta() { #{ id: "t.e", severity: "low", triggers: ["rr"] } }
            fn evaluate(p) { eval("1") }"#;
        assert!(load_rule(&engine, Path::new("e"), src).is_err());
    }

    #[test]
    fn window_statistics_and_coded_values() {
        let now = time::OffsetDateTime::now_utc();
        let mut series = HashMap::new();
        let samples =
            (0..5).map(|i| Sample { at: now - time::Duration::minutes(30 * (4 - i)), value: 100.0 + 10.0 * i as f64 });
        series.insert("sbp".to_string(), samples.collect::<VecDeque<_>>());
        let mut coded = HashMap::new();
        coded.insert(
            "consciousness".to_string(),
            VecDeque::from([vigil_actors::CodedSample { at: now, text: "V".into() }]),
        );
        let view = Arc::new(PatientView { now: Some(now), series, coded, ..PatientView::default() });
        let engine = hardened_engine();
        let src = r#"fn meta() { #{ id: "t.w", severity: "low", triggers: ["sbp"] } }
            fn evaluate(p) { alert("low", "w", #{ score: 0,
                min: p.min("sbp", 3600), max: p.max("sbp", 3600), mean: p.mean("sbp", 3600),
                count: p.count("sbp", 7200), delta: p.delta("sbp", 7200), trend: p.trend("sbp", 7200),
                none: p.mean("hr", 3600), acvpu: p.latest_coded("consciousness", 60), o2: p.on_oxygen(),
                low: p.sustained_below("sbp", 150, 3600.0, 7200), not_low: p.sustained_below("sbp", 135.5, 60, 7200.0),
                high_since: p.since_first("sbp", 7200.0, ">", 125), never: p.since_first("sbp", 7200, ">=", 140.5) }) }"#;
        let host = RhaiRules::new(hardened_engine(), vec![load_rule(&engine, Path::new("w"), src).unwrap()]);
        let out = host.evaluate(&view, &["sbp"]);
        let RuleVerdict::Fire { details, .. } = &out[0].verdict else { panic!("{out:?}") };
        let details = details.to_value();
        assert_eq!(details["min"], 120.0);
        assert_eq!(details["max"], 140.0);
        assert_eq!(details["mean"], 130.0);
        assert_eq!(details["count"], 5);
        assert_eq!(details["delta"], 40.0);
        assert!((details["trend"].as_f64().unwrap() - 20.0).abs() < 1e-9, "{details}");
        assert!(details["none"].is_null());
        assert_eq!(details["acvpu"], "V");
        assert_eq!(details["o2"], false);
        assert_eq!(details["low"], 7200.0, "all five readings below 150 over two hours");
        assert!(details["not_low"].is_null(), "140 is not below 135.5");
        assert_eq!(details["high_since"], 1800.0, "130 thirty minutes ago is the first above 125");
        assert!(details["never"].is_null());
    }

    #[test]
    fn rules_of_one_pass_share_a_score_but_never_each_others_changes_to_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/data/scores.json");
        std::fs::copy(shipped, dir.join("data/scores.json")).unwrap();
        // `a` runs first (files in name order) and rewrites its copy of the SIRS score.
        std::fs::write(
            dir.join("a.rhai"),
            r#"fn meta() { #{ id: "t.a", severity: "low", triggers: ["hr"], references: ["-"] } }
            fn evaluate(p) { let s = p.score("sirs"); s.remove("met"); s.score = 99; alert("low", "a", s) }"#,
        )
        .unwrap();
        std::fs::write(
            dir.join("b.rhai"),
            r#"fn meta() { #{ id: "t.b", severity: "low", triggers: ["hr"], references: ["-"] } }
            fn evaluate(p) { let s = p.score("sirs"); alert("low", "b " + s.met.len(), s) }"#,
        )
        .unwrap();
        let host = RhaiRules::from_dir(&dir).unwrap();
        let out = host.evaluate(&view(&[("hr", 120.0), ("temp", 39.0), ("rr", 12.0)]), &["hr"]);
        let fired = |id: &str| match &out.iter().find(|o| o.rule_id == id).unwrap().verdict {
            RuleVerdict::Fire { score, summary, details, .. } => (*score, summary.clone(), details.to_value()),
            other => panic!("{other:?}"),
        };
        let (a_score, _, a) = fired("t.a");
        assert_eq!(a_score, Some(99.0));
        assert!(a.get("met").is_none(), "{a}");
        let (b_score, b_summary, b) = fired("t.b");
        assert_eq!(b_score, Some(2.0), "hr > 90 and temp > 38: the chart as scored");
        assert_eq!(b_summary, "b 2");
        assert_eq!(b["met"].as_array().map(Vec::len), Some(2), "{b}");
    }

    #[test]
    fn replace_swaps_only_valid_versions_and_reload_keeps_the_old_set_on_error() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("t.rhai"), OK_RULE).unwrap();
        let host = RhaiRules::from_dir(&dir).unwrap();
        let v1 = host.rules()[0].version.clone();
        let err = host
            .replace(
                "t.ok",
                "fn meta() { #{ id: \"t.ok\", severity: \"low\", triggers: [\"rr\"] } }\nfn evaluate(p) { p.nope() }",
            )
            .unwrap_err();
        assert!(matches!(err, ReplaceError::Invalid(RuleError::Invalid { .. })), "{err}");
        let err = host.replace("t.ok", &OK_RULE.replace("t.ok", "t.other")).unwrap_err();
        assert!(matches!(err, ReplaceError::IdMismatch { .. }));
        assert_eq!(host.rules()[0].version, v1);
        let v2 = host.replace("t.ok", &OK_RULE.replace("\"rr\", 60", "\"rr\", 120")).unwrap().version.clone();
        assert_ne!(v1, v2);
        assert_eq!(host.rules()[0].version, v2);
        std::fs::write(dir.join("t.rhai"), "fn meta( {").unwrap();
        assert!(host.reload().is_err());
        assert_eq!(host.rules()[0].version, v2, "a broken file leaves the running version");
        assert_eq!(host.last_errors().len(), 1);
    }
}
