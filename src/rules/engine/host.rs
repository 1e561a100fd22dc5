//! The rule set in use: swapped whole on reload (`arc-swap`), one rule replaced after it
//! compiles and lints, every failure isolated to its rule and reported once; the `RuleEngine`
//! port the patient actors call.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use rhai::Engine;
use vigil_actors::{PatientView, RuleEngine, RuleOutcome, RuleVerdict};

use super::super::api::RulePatient;
use super::super::data::{SharedTables, Tables};
use super::load::{LoadedRule, lint_rule, load_dir, load_rule};
use super::verdict::verdicts;
use super::{RuleError, hardened_engine_with};

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
        let result = rule.call_evaluate(&self.engine, patient.clone()).map_err(|e| e.to_string())?;
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
    use super::super::hardened_engine;
    use super::*;
    use std::collections::VecDeque;
    use time::OffsetDateTime;
    use vigil_actors::{Details, Severity};
    use vigil_actors::{NameMap, Sample, Series};

    fn view(values: &[(&str, f64)]) -> Arc<PatientView> {
        let now = OffsetDateTime::now_utc();
        let mut series = NameMap::default();
        for (name, value) in values {
            series.insert(name.to_string(), Series::from_iter([Sample { at: now, value: *value }]));
        }
        Arc::new(PatientView { now: Some(now), series, ..PatientView::default() })
    }

    const OK_RULE: &str = r#"
        fn meta() { #{ id: "t.ok", title: "t", severity: "high", triggers: ["rr"] } }
        fn evaluate(p) { let rr = p.latest("rr", 60); if rr != () && rr >= 22.0 { alert("high", "rr", #{ score: rr }) } else { resolve("fine") } }
    "#;

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
    fn a_verdicts_details_are_written_when_first_read_with_what_the_rule_returned() {
        let engine = hardened_engine();
        let src = r#"fn meta() { #{ id: "t.l", severity: "low", triggers: ["rr"] } }
            fn evaluate(p) { let d = #{ score: 1, partial: true }; let r = resolve("fine", d); d.score = 7; r }"#;
        let host = RhaiRules::new(hardened_engine(), vec![load_rule(&engine, Path::new("l"), src).unwrap()]);
        let out = host.evaluate(&view(&[("rr", 20.0)]), &["rr"]);
        let RuleVerdict::Resolve { details, partial, .. } = &out[0].verdict else { panic!("{out:?}") };
        assert!(*partial, "partial is read when the verdict is made");
        assert!(!details.is_written(), "a resolve nobody reads is never written");
        assert_eq!(details.field("score"), Some(1.into()), "a field, as returned");
        assert_eq!((details.field("partial"), details.field("band")), (Some(true.into()), None));
        assert!(!details.is_written(), "reading a field writes nothing");
        assert_eq!(details.to_value(), serde_json::json!({ "score": 1, "partial": true }), "as returned");
        assert!(details.is_written());
    }

    #[test]
    fn window_statistics_and_coded_values() {
        let now = time::OffsetDateTime::now_utc();
        let mut series = NameMap::default();
        let samples =
            (0..5).map(|i| Sample { at: now - time::Duration::minutes(30 * (4 - i)), value: 100.0 + 10.0 * i as f64 });
        series.insert("sbp".to_string(), samples.collect::<Series>());
        let mut coded = NameMap::default();
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
