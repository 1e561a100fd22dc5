//! Data-driven rule tests (`rules/tests/*.json`, run by `vigil rules test`): each case is a
//! sequence of timestamped events driven through the patient actor's own code path
//! (`PatientState::apply`, `view_at`, the rule host, `decide`), with the alerts expected and
//! not expected after any event and at the end. The file format is documented in
//! `rules/README.md`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;
use time::{Duration, OffsetDateTime};
use vigil_actors::patient::PatientState;
use vigil_actors::{
    Allergy, CensusAction, ClinicalEvent, Demographics, EventKind, Location, Medication, Observation, OrderAction,
    PatientId, PatientKey, Phi, ResultStatus, RuleEngine, Severity,
};

use super::RhaiRules;

/// A test file: cases sharing nothing but the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestFile {
    /// Free text for authors.
    #[serde(rename = "$comment", default)]
    pub comment: Option<Value>,
    /// The cases.
    pub cases: Vec<Case>,
}

/// One case: a patient, events in order, and expectations.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// What it shows.
    pub name: String,
    /// Source or reasoning for the expectation.
    #[serde(rename = "$comment", default)]
    pub comment: Option<Value>,
    /// Who.
    #[serde(default)]
    pub patient: PatientSpec,
    /// What happens.
    pub events: Vec<EventSpec>,
    /// Alerts open after the last event.
    #[serde(default)]
    pub expect: Vec<Expect>,
    /// Rules with no open alert after the last event.
    #[serde(default)]
    pub expect_not: Vec<String>,
}

/// The synthetic patient.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatientSpec {
    /// Age in years.
    pub age: Option<i64>,
    /// Administrative sex.
    #[serde(default)]
    pub sex: String,
    /// Nursing unit.
    #[serde(default)]
    pub unit: String,
    /// Settings (e.g. `spo2_scale`).
    #[serde(default)]
    pub settings: HashMap<String, String>,
}

/// One event; exactly one of the content fields is usually set.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventSpec {
    /// Minutes after the case start (default: the previous event's time).
    pub at: Option<f64>,
    /// Observations: canonical name to a number (vitals, labs) or text (coded values).
    pub obs: Option<serde_json::Map<String, Value>>,
    /// A medication order.
    pub order: Option<OrderSpec>,
    /// A medication administration.
    pub administration: Option<OrderSpec>,
    /// Allergies recorded.
    pub allergies: Option<Vec<AllergySpec>>,
    /// The allergy list replaces the one on record.
    #[serde(default)]
    pub replace_allergies: bool,
    /// A census action (`admit`, `transfer`, `discharge`, ...).
    pub census: Option<CensusAction>,
    /// Patient settings changed by a clinician (applied to the view; no event carries them yet).
    pub settings: Option<HashMap<String, String>>,
    /// A clinician acknowledges the open alerts of a rule (`"med.ddi"`) or of one finding
    /// (`"med.ddi#<finding>"`), before this event's content is applied.
    pub ack: Option<String>,
    /// A clinician resolves them ("reviewed, stable"), before this event's content is applied.
    pub clinician_resolve: Option<String>,
    /// Expectations after this event.
    #[serde(default)]
    pub expect: Vec<Expect>,
    /// Rules with no open alert after this event.
    #[serde(default)]
    pub expect_not: Vec<String>,
}

/// A medication on an order or administration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderSpec {
    /// Drug name.
    pub name: String,
    /// RxNorm ingredient code.
    pub rxnorm: Option<String>,
    /// Order id (default: derived from the name).
    pub order_id: Option<String>,
    /// `new` (default), `change`, `discontinue`, `cancel`.
    pub action: Option<OrderAction>,
}

/// A recorded allergy.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllergySpec {
    /// Allergen name.
    pub name: String,
    /// Code, `system|code`.
    pub code: Option<String>,
    /// Table 0127 type (default `DA`).
    pub kind: Option<String>,
    /// Table 0128 severity (default `U`).
    pub severity: Option<String>,
}

/// An alert expected open.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// Rule id.
    pub rule: String,
    /// The finding of the alert (for rules with one alert per finding).
    pub finding: Option<String>,
    /// How many alerts of the rule are open (any finding); with 0 no alert is expected.
    pub count: Option<usize>,
    /// `active` or `acknowledged`.
    pub status: Option<vigil_actors::AlertStatus>,
    /// Whether the alert says its data is stale.
    pub stale: Option<bool>,
    /// Whether the event just run notified consoles about this alert (a new alert, a rise, a
    /// reopen that needs acknowledging).
    pub notified: Option<bool>,
    /// Times the alert was reopened.
    pub reopened: Option<u32>,
    /// Severity.
    pub severity: Option<Severity>,
    /// Score.
    pub score: Option<f64>,
    /// A subset the alert's details must contain.
    pub details: Option<Value>,
    /// Text the summary must contain.
    pub summary_contains: Option<String>,
}

/// The outcome of one case.
#[derive(Debug)]
pub struct CaseResult {
    /// File.
    pub file: PathBuf,
    /// Case name.
    pub name: String,
    /// What did not hold (empty when it passed).
    pub failures: Vec<String>,
}

/// Base time of every case (minute offsets count from here).
fn base_time() -> OffsetDateTime {
    time::macros::datetime!(2026-03-01 08:00 UTC)
}

fn unit_of(name: &str) -> &'static str {
    match name {
        "hr" | "pulse" | "rr" => "/min",
        "spo2" | "fio2" | "bands" => "%",
        "sbp" | "dbp" | "map" | "paco2" => "mm[Hg]",
        "temp" => "Cel",
        "wbc" | "platelets" => "10*9/L",
        "lactate" | "potassium" | "sodium" => "mmol/L",
        "creatinine" | "bilirubin" | "glucose" => "mg/dL",
        "hemoglobin" => "g/dL",
        "troponin" => "ng/L",
        "o2_flow" => "L/min",
        _ => "",
    }
}

struct Harness<'a> {
    rules: &'a RhaiRules,
    state: PatientState,
    spec: &'a PatientSpec,
}

impl Harness<'_> {
    fn event(&self, at: OffsetDateTime, kind: EventKind) -> ClinicalEvent {
        let birth_date = self.spec.age.map(|a| format!("{:04}0101", 2026 - a)).unwrap_or_default();
        ClinicalEvent {
            patient_id: self.state.id.clone(),
            patient: PatientKey { authority: "TEST".into(), mrn: Phi("SYNTH-0001".into()) },
            demographics: Demographics {
                name: Phi("Synthetic, Patient".into()),
                birth_date: Phi(birth_date),
                sex: self.spec.sex.clone(),
            },
            location: Some(Location { unit: self.spec.unit.clone(), room: "1".into(), bed: "A".into() }),
            received_at: at,
            kind,
        }
    }

    fn kinds(spec: &EventSpec, at: OffsetDateTime) -> Result<Vec<EventKind>, String> {
        let mut kinds = Vec::new();
        if let Some(obs) = &spec.obs {
            let mut observations = Vec::new();
            for (name, value) in obs {
                let (value, text) = match value {
                    Value::Number(n) => (n.as_f64(), None),
                    Value::String(s) => (None, Some(s.clone())),
                    other => return Err(format!("obs `{name}`: a number or a text, not {other}")),
                };
                observations.push(Observation {
                    name: name.clone(),
                    value,
                    text,
                    unit: unit_of(name).into(),
                    observed_at: at,
                    source_code: format!("TEST|{name}"),
                    device: None,
                    status: ResultStatus::Final,
                    result_key: String::new(),
                    reference_range: None,
                    abnormal_flags: Vec::new(),
                });
            }
            kinds.push(EventKind::Observations { observations });
        }
        let medication = |o: &OrderSpec| Medication {
            order_id: o.order_id.clone().unwrap_or_else(|| format!("ORD-{}", o.name)),
            rxnorm: o.rxnorm.clone(),
            name: o.name.clone(),
        };
        if let Some(order) = &spec.order {
            kinds.push(EventKind::MedicationOrder {
                action: order.action.unwrap_or(OrderAction::New),
                medication: medication(order),
            });
        }
        if let Some(given) = &spec.administration {
            kinds.push(EventKind::Administration { medication: medication(given), given_at: at });
        }
        if let Some(allergies) = &spec.allergies {
            let allergies = allergies
                .iter()
                .map(|a| Allergy {
                    code: a.code.clone(),
                    name: a.name.clone(),
                    kind: a.kind.clone().unwrap_or_else(|| "DA".into()),
                    severity: a.severity.clone().unwrap_or_else(|| "U".into()),
                })
                .collect();
            kinds.push(EventKind::Allergies { allergies, replace: spec.replace_allergies });
        }
        if let Some(action) = spec.census {
            kinds.push(EventKind::Census { action, attending: None, encounter: None });
        }
        Ok(kinds)
    }
}

fn subset(expected: &Value, actual: &Value, path: &str, out: &mut Vec<String>) {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            for (k, v) in e {
                match a.get(k) {
                    Some(av) => subset(v, av, &format!("{path}.{k}"), out),
                    None => out.push(format!("details{path}.{k}: missing, expected {v}")),
                }
            }
        }
        (Value::Number(e), Value::Number(a)) => {
            if (e.as_f64().unwrap_or(f64::NAN) - a.as_f64().unwrap_or(f64::NAN)).abs() > 1e-9 {
                out.push(format!("details{path}: {a}, expected {e}"));
            }
        }
        (Value::Array(e), Value::Array(a)) if e.len() == a.len() => {
            // Same length; each element matched as a subset (objects may omit keys).
            for (i, (ev, av)) in e.iter().zip(a).enumerate() {
                subset(ev, av, &format!("{path}[{i}]"), out);
            }
        }
        (e, a) if e == a => {}
        (e, a) => out.push(format!("details{path}: {a}, expected {e}")),
    }
}

/// `rule` or `rule#finding`.
fn split_target(target: &str) -> (&str, Option<&str>) {
    match target.split_once('#') {
        Some((rule, finding)) => (rule, Some(finding)),
        None => (target, None),
    }
}

fn open_matching<'a>(state: &'a PatientState, rule: &'a str, finding: Option<&'a str>) -> Vec<&'a vigil_actors::Alert> {
    let mut open: Vec<_> =
        state.open_of(rule).filter(|a| finding.is_none_or(|f| a.finding.as_deref() == Some(f))).collect();
    open.sort_by(|a, b| a.finding.cmp(&b.finding));
    open
}

fn check(
    state: &PatientState,
    notified: &[vigil_actors::AlertId],
    expect: &[Expect],
    expect_not: &[String],
    when: &str,
    out: &mut Vec<String>,
) {
    for e in expect {
        let name = match &e.finding {
            Some(f) => format!("{}#{f}", e.rule),
            None => e.rule.clone(),
        };
        let open = open_matching(state, &e.rule, e.finding.as_deref());
        if let Some(count) = e.count
            && state.open_of(&e.rule).count() != count
        {
            let findings: Vec<_> = state.open_of(&e.rule).map(|a| a.finding.clone().unwrap_or_default()).collect();
            out.push(format!("{when}: {} open `{}` alerts {findings:?}, expected {count}", findings.len(), e.rule));
        }
        let Some(alert) = open.first() else {
            if e.count != Some(0) {
                out.push(format!("{when}: expected an open `{name}` alert, none"));
            }
            continue;
        };
        if let Some(severity) = e.severity
            && alert.severity != severity
        {
            out.push(format!("{when}: `{name}` severity {:?}, expected {:?}", alert.severity, severity));
        }
        if let Some(status) = e.status
            && alert.status != status
        {
            out.push(format!("{when}: `{name}` status {:?}, expected {status:?}", alert.status));
        }
        if let Some(stale) = e.stale
            && alert.stale != stale
        {
            out.push(format!("{when}: `{name}` stale {}, expected {stale}", alert.stale));
        }
        if let Some(expected) = e.notified {
            let was = notified.contains(&alert.id);
            if was != expected {
                out.push(format!("{when}: `{name}` notified {was}, expected {expected}"));
            }
        }
        if let Some(reopened) = e.reopened
            && alert.reopened != reopened
        {
            out.push(format!("{when}: `{name}` reopened {} times, expected {reopened}", alert.reopened));
        }
        if let Some(score) = e.score
            && alert.score.is_none_or(|s| (s - score).abs() > 1e-9)
        {
            out.push(format!("{when}: `{name}` score {:?}, expected {score}", alert.score));
        }
        if let Some(text) = &e.summary_contains
            && !alert.summary.contains(text.as_str())
        {
            out.push(format!("{when}: `{name}` summary {:?} lacks {text:?}", alert.summary));
        }
        if let Some(details) = &e.details {
            let mut diffs = Vec::new();
            subset(details, &alert.details.to_value(), "", &mut diffs);
            out.extend(diffs.into_iter().map(|d| format!("{when}: `{name}` {d}")));
        }
    }
    for target in expect_not {
        let (rule, finding) = split_target(target);
        if let Some(alert) = open_matching(state, rule, finding).first() {
            out.push(format!(
                "{when}: `{target}` open ({:?}, score {:?}: {}), expected none",
                alert.severity, alert.score, alert.summary
            ));
        }
    }
}

/// A clinician's action on the open alerts of `target` (`rule` or `rule#finding`).
fn clinician_acts(
    state: &mut PatientState,
    target: &str,
    action: &vigil_actors::AlertAction,
    at: OffsetDateTime,
) -> Result<(), String> {
    let (rule, finding) = split_target(target);
    let ids: Vec<_> = open_matching(state, rule, finding).iter().map(|a| a.id.clone()).collect();
    if ids.is_empty() {
        return Err(format!("no open `{target}` alert to act on"));
    }
    for id in ids {
        state.act(&id, action.clone(), at).map_err(|e| format!("`{target}`: {e}"))?;
    }
    Ok(())
}

/// Run one case against `rules`.
pub fn run_case(rules: &RhaiRules, case: &Case) -> Vec<String> {
    let mut harness =
        Harness { rules, state: PatientState::new(PatientId("synthetic-test".into())), spec: &case.patient };
    let mut failures = Vec::new();
    if !case.patient.settings.is_empty() {
        Arc::make_mut(&mut harness.state.view).settings.clone_from(&case.patient.settings);
    }
    let mut at = base_time();
    for (i, spec) in case.events.iter().enumerate() {
        if let Some(minutes) = spec.at {
            at = base_time() + Duration::seconds_f64(minutes * 60.0);
        }
        let when = format!("after event {} (t={}m)", i + 1, (at - base_time()).whole_seconds() as f64 / 60.0);
        if let Some(settings) = &spec.settings {
            Arc::make_mut(&mut harness.state.view).settings.extend(settings.clone());
        }
        let kinds = match Harness::kinds(spec, at) {
            Ok(k) => k,
            Err(e) => {
                failures.push(format!("{when}: {e}"));
                return failures;
            }
        };
        let clinician = [
            (&spec.ack, vigil_actors::AlertAction::Acknowledge { by: "test-nurse".into() }),
            (
                &spec.clinician_resolve,
                vigil_actors::AlertAction::Resolve { by: "test-nurse".into(), reason: "reviewed".into() },
            ),
        ];
        for (target, action) in clinician {
            if let Some(target) = target
                && let Err(e) = clinician_acts(&mut harness.state, target, &action, at)
            {
                failures.push(format!("{when}: {e}"));
            }
        }
        let mut notified = Vec::new();
        for kind in kinds {
            let event = harness.event(at, kind);
            harness.state.apply(&event);
            let view = harness.state.view_at(at, &event);
            let outcomes = harness.rules.evaluate(&view, &event.trigger_names());
            drop(view);
            let changes = harness.state.decide(outcomes, at);
            notified.extend(changes.into_iter().filter(|(_, notify)| *notify).map(|(a, _)| a.id));
        }
        check(&harness.state, &notified, &spec.expect, &spec.expect_not, &when, &mut failures);
    }
    check(&harness.state, &[], &case.expect, &case.expect_not, "at the end", &mut failures);
    let failing: Vec<String> = harness
        .rules
        .rules()
        .iter()
        .filter(|r| r.failures() > 0)
        .map(|r| format!("rule `{}` failed to evaluate: {}", r.id, r.last_error().unwrap_or_default()))
        .collect();
    failures.extend(failing);
    failures
}

/// Test files under `dir/tests`, sorted.
pub fn test_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("tests"))
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
}

/// Run every case of every test file for the rules in `dir`. Each case gets a fresh rule host
/// so failure counters do not leak between cases.
pub fn run_dir(dir: &Path) -> Result<Vec<CaseResult>, Vec<String>> {
    RhaiRules::from_dir(dir).map_err(|errors| errors.iter().map(ToString::to_string).collect::<Vec<_>>())?;
    let mut results = Vec::new();
    for file in test_files(dir) {
        let parsed = std::fs::read_to_string(&file).map_err(|e| e.to_string()).and_then(|text| {
            serde_json::from_str::<TestFile>(&text).map_err(|e| format!("{}:{}: {e}", e.line(), e.column()))
        });
        let test_file = match parsed {
            Ok(f) => f,
            Err(e) => {
                results.push(CaseResult { file: file.clone(), name: "(file)".into(), failures: vec![e] });
                continue;
            }
        };
        for case in &test_file.cases {
            let rules = RhaiRules::from_dir(dir)
                .map_err(|errors| errors.iter().map(ToString::to_string).collect::<Vec<_>>())?;
            results.push(CaseResult { file: file.clone(), name: case.name.clone(), failures: run_case(&rules, case) });
        }
    }
    Ok(results)
}
