//! The functions rules call: the patient view (`p.latest(name, max_age_s)`, window statistics,
//! medications, allergies, settings, ...), the data tables (`data(name)`) and the verdict
//! constructors `alert(severity, summary, details)` and `resolve(reason)`. Documented for
//! authors in `rules/README.md`.

use std::sync::Arc;

use rhai::{Array, Dynamic, Engine, FuncRegistration, ImmutableString, Map};
use time::{Duration, OffsetDateTime};
use vigil_actors::{ActiveMedication, Allergy, Medication, PatientView, Reading};

use super::data::{Ingredient, SharedTables, Tables, rxnorm_code};
use super::scores::Scored;

/// The patient as a rule sees it: values and location, never names or identifiers. The second
/// field holds the score tables already evaluated for this view, shared by the rules of one
/// pass (SEP-1 reads the SIRS chart that the SIRS rule has just scored).
#[derive(Clone)]
pub struct RulePatient(pub Arc<PatientView>, pub ScoreMemo);

impl RulePatient {
    /// A patient for one evaluation pass over `view`.
    pub fn new(view: Arc<PatientView>) -> Self {
        RulePatient(view, ScoreMemo::default())
    }
}

/// Score tables evaluated for one view, by table name (a handful per pass), and what the
/// pass derives from the view's whole window ([`super::scores::Derived`]).
#[derive(Clone, Default)]
pub struct ScoreMemo(Arc<Memo>);

#[derive(Default)]
struct Memo {
    scored: std::sync::Mutex<Vec<(ImmutableString, Scored)>>,
    derived: super::scores::Derived,
}

impl ScoreMemo {
    fn get_or(
        &self,
        name: &str,
        evaluate: impl FnOnce() -> Result<Scored, Box<rhai::EvalAltResult>>,
    ) -> Result<Scored, Box<rhai::EvalAltResult>> {
        let Ok(mut memo) = self.0.scored.lock() else { return evaluate() };
        if let Some((_, s)) = memo.iter().find(|(n, _)| n == name) {
            return Ok(s.clone());
        }
        let scored = evaluate()?;
        memo.push((name.into(), scored.clone()));
        Ok(scored)
    }
}

/// What `evaluate(p)` returns: `alert(...)`, `alert_for(...)`, `resolve(...)`,
/// `resolve_for(...)` or an array of them (details are a map or a [`Scored`]).
#[derive(Clone)]
pub enum Verdict {
    /// `alert(severity, summary, details)` / `alert_for(finding, severity, summary, details)`.
    Fire {
        /// The finding, for `alert_for`.
        finding: Option<ImmutableString>,
        /// Severity name.
        severity: ImmutableString,
        /// One line for the console.
        summary: ImmutableString,
        /// Details.
        details: Dynamic,
    },
    /// `resolve(reason)` / `resolve(reason, details)` / `resolve_for(finding, reason)`.
    Resolve {
        /// The finding, for `resolve_for`; `None` closes every alert of the rule.
        finding: Option<ImmutableString>,
        /// Why.
        reason: ImmutableString,
        /// Details (`()` when none).
        details: Dynamic,
    },
}

/// Freshness of the oxygen values behind `p.on_oxygen()` when none is given: one hour.
const OXYGEN_MAX_AGE_S: f64 = 3600.0;

/// Register `p.name(canonical_name, seconds)` twice, for whole and decimal seconds.
fn secs_fn<R: Into<Dynamic>>(
    engine: &mut Engine,
    name: &str,
    f: impl Fn(&RulePatient, &str, f64) -> R + Send + Sync + Clone + 'static,
) {
    fn one<S: Num, R: Into<Dynamic>>(
        engine: &mut Engine,
        name: &str,
        f: impl Fn(&RulePatient, &str, f64) -> R + Send + Sync + 'static,
    ) {
        engine
            .register_fn(name, move |p: &mut RulePatient, n: &str, secs: S| -> Dynamic { f(p, n, secs.num()).into() });
    }
    one::<i64, R>(engine, name, f.clone());
    one::<f64, R>(engine, name, f);
}

/// A whole or decimal number a rule passed, as a decimal. Every function taking numbers is
/// registered once per whole/decimal combination (`secs_fn`, `numbers3`, `since_first`).
trait Num: Copy + Send + Sync + 'static {
    fn num(self) -> f64;
}

impl Num for i64 {
    fn num(self) -> f64 {
        self as f64
    }
}

impl Num for f64 {
    fn num(self) -> f64 {
        self
    }
}

/// Register `p.name(canonical_name, a, b, c)` for every whole/decimal combination of `a`, `b`
/// and `c`.
fn numbers3(
    engine: &mut Engine,
    name: &str,
    f: impl Fn(&RulePatient, &str, f64, f64, f64) -> Dynamic + Send + Sync + Clone + 'static,
) {
    fn one<A: Num, B: Num, C: Num>(
        engine: &mut Engine,
        name: &str,
        f: impl Fn(&RulePatient, &str, f64, f64, f64) -> Dynamic + Send + Sync + 'static,
    ) {
        engine.register_fn(name, move |p: &mut RulePatient, n: &str, a: A, b: B, c: C| {
            f(p, n, a.num(), b.num(), c.num())
        });
    }
    one::<i64, i64, i64>(engine, name, f.clone());
    one::<i64, i64, f64>(engine, name, f.clone());
    one::<i64, f64, i64>(engine, name, f.clone());
    one::<i64, f64, f64>(engine, name, f.clone());
    one::<f64, i64, i64>(engine, name, f.clone());
    one::<f64, i64, f64>(engine, name, f.clone());
    one::<f64, f64, i64>(engine, name, f.clone());
    one::<f64, f64, f64>(engine, name, f);
}

/// Seconds from `reading` to `now_nanos` (nanoseconds since the Unix epoch): the same number
/// as `(now - reading.at()).as_seconds_f64()` (the same exact duration), without building the
/// reading's date.
fn seconds_since(now_nanos: i128, reading: &Reading<'_>) -> f64 {
    vigil_actors::seconds_between(now_nanos, reading.unix_nanos())
}

fn opt_float(v: Option<f64>) -> Dynamic {
    v.map_or(Dynamic::UNIT, Dynamic::from_float)
}

fn opt_text(v: Option<&str>) -> Dynamic {
    v.map_or(Dynamic::UNIT, |s| Dynamic::from(ImmutableString::from(s)))
}

impl RulePatient {
    fn now(&self) -> Option<OffsetDateTime> {
        self.0.now
    }

    /// Samples of `name` no older than `secs`, newest first (the view's window, which finds its
    /// start by binary search, so a 24 h series costs only what the window holds).
    fn recent(&self, name: &str, secs: f64) -> impl Iterator<Item = Reading<'_>> {
        self.0.window(name, secs).rev()
    }

    fn stat(&self, name: &str, secs: f64, f: impl Fn(&mut dyn Iterator<Item = f64>) -> Option<f64>) -> Dynamic {
        let mut it = self.recent(name, secs).map(|s| s.value);
        opt_float(f(&mut it))
    }

    fn trend_per_hour(&self, name: &str, secs: f64) -> Option<f64> {
        let now = self.now()?.unix_timestamp_nanos();
        let points: Vec<(f64, f64)> =
            self.recent(name, secs).map(|s| (-seconds_since(now, &s) / 3600.0, s.value)).collect();
        if points.len() < 2 {
            return None;
        }
        let n = points.len() as f64;
        let (mx, my) = points.iter().fold((0.0, 0.0), |(a, b), (x, y)| (a + x / n, b + y / n));
        let (sxy, sxx) =
            points.iter().fold((0.0, 0.0), |(a, b), (x, y)| (a + (x - mx) * (y - my), b + (x - mx) * (x - mx)));
        (sxx > 0.0).then(|| sxy / sxx)
    }

    fn age_of(&self, name: &str) -> Option<f64> {
        let now = self.now()?;
        let numeric = self.0.series.get(name).and_then(|s| s.back()).map(|s| s.at);
        let coded = self.0.coded.get(name).and_then(|s| s.back()).map(|s| s.at);
        let at = numeric.into_iter().chain(coded).max()?;
        Some((now - at).as_seconds_f64())
    }

    fn on_oxygen(&self, max_age: f64) -> bool {
        self.0.latest("fio2", max_age).is_some_and(|f| f > 21.0)
            || self.0.latest("o2_flow", max_age).is_some_and(|f| f > 0.0)
    }

    fn sustained(
        &self,
        name: &str,
        threshold: f64,
        min_span: f64,
        window: f64,
        holds: impl Fn(f64, f64) -> bool,
    ) -> Dynamic {
        let Some(now) = self.now() else { return Dynamic::UNIT };
        let (mut count, mut oldest, mut all) = (0usize, None, true);
        for s in self.0.window(name, window) {
            count += 1;
            oldest.get_or_insert_with(|| s.at());
            all &= holds(s.value, threshold);
        }
        let span = oldest.map(|at| (now - at).as_seconds_f64());
        match span {
            Some(span) if all && count >= 2 && span >= min_span => Dynamic::from_float(span),
            _ => Dynamic::UNIT,
        }
    }

    /// The view as this pass reads it.
    fn pass(&self) -> super::scores::Pass<'_> {
        super::scores::Pass::new(&self.0, &self.1.0.derived)
    }

    fn since_s(&self, at: OffsetDateTime) -> Dynamic {
        self.now().map_or(Dynamic::UNIT, |now| Dynamic::from_float((now - at).as_seconds_f64()))
    }
}

fn classes(tables: &Tables, name: &str, rxnorm: Option<&str>) -> Array {
    let mut out = Array::new();
    tables.for_classes(name, rxnorm, |c| out.push(Dynamic::from(c.clone())));
    out
}

/// Where a medication stands at `now`: running, or stopped and (per ingredient) perhaps still
/// in its washout.
#[derive(Clone, Copy, PartialEq, Debug)]
enum MedStatus {
    /// An order that runs, or a one-off dose within its active time.
    Active,
    /// Discontinued (or a one-off dose past its active time) at this instant.
    Ended(OffsetDateTime),
}

/// The status of `m` at `now` given its ingredients: an order runs until discontinued; a dose
/// with no order is active for the longest `active_after_dose_h` of its ingredients.
fn med_status(
    tables: &Tables,
    m: &ActiveMedication,
    ingredients: &[Ingredient],
    now: Option<OffsetDateTime>,
) -> MedStatus {
    let end = match (m.stopped, m.administered_only) {
        (Some(stopped), _) => stopped,
        (None, true) => {
            let given = m.last_given.unwrap_or(m.since);
            let active_s = ingredients.iter().map(|i| tables.active_after_dose_s(i)).fold(0.0, f64::max);
            given.checked_add(Duration::seconds_f64(active_s)).unwrap_or(given)
        }
        (None, false) => return MedStatus::Active,
    };
    match now {
        Some(now) if now < end => MedStatus::Active,
        _ => MedStatus::Ended(end),
    }
}

/// Whether `m` is active at `now` (see [`med_status`]).
fn is_active(tables: &Tables, m: &ActiveMedication, now: Option<OffsetDateTime>) -> bool {
    if m.stopped.is_none() && !m.administered_only {
        return true;
    }
    let ingredients = tables.ingredients(&m.medication.name, m.medication.rxnorm.as_deref());
    med_status(tables, m, &ingredients, now) == MedStatus::Active
}

/// Whether two ingredients are the same drug: same RxNorm code, or same normalised name.
fn same_ingredient(a: &Ingredient, b: &Ingredient) -> bool {
    (a.rxnorm.is_some() && a.rxnorm == b.rxnorm) || a.name == b.name
}

fn ingredient_classes(tables: &Tables, i: &Ingredient) -> Vec<ImmutableString> {
    let mut out = Vec::new();
    tables.for_ingredient_classes(&i.name, i.rxnorm.as_deref(), |c| out.push(c.clone()));
    out
}

/// The finding key of an interaction: the two ingredients, sorted (`ddi:fluoxetine+linezolid`).
fn ddi_key(a: &str, b: &str) -> String {
    if a <= b { format!("ddi:{a}+{b}") } else { format!("ddi:{b}+{a}") }
}

/// `p.interactions()`: the hits of `interactions.json` between each ingredient of the new
/// order and each ingredient of every other medication that is active or, stopped, still in
/// its washout (not the order itself, not the same ingredient); one hit per pair of
/// ingredients, medications in order and interactions in table order:
/// `[#{ interaction, title, risk, ordered, active, ordered_ingredient, active_ingredient, key,
/// text, washout, stopped_s, source }]` (`text`: `ordered + active`, a combination with its
/// ingredient).
fn interaction_hits(tables: &Tables, view: &PatientView) -> Array {
    let mut hits = Array::new();
    let Some(order) = view.new_order.as_ref() else { return hits };
    let ordered: Vec<(Ingredient, Vec<ImmutableString>)> = tables
        .ingredients(&order.name, order.rxnorm.as_deref())
        .into_iter()
        .map(|i| {
            let classes = ingredient_classes(tables, &i);
            (i, classes)
        })
        .collect();
    // Interactions an ordered ingredient takes part in, and on which side.
    let mut relevant: Vec<(&super::data::Interaction, usize, bool, bool)> = Vec::new();
    for ix in tables.interactions() {
        for (n, (_, classes)) in ordered.iter().enumerate() {
            let on_a = classes.iter().any(|c| ix.a.contains(c));
            let on_b = classes.iter().any(|c| ix.b.contains(c));
            if on_a || on_b {
                relevant.push((ix, n, on_a, on_b));
            }
        }
    }
    if relevant.is_empty() {
        return hits;
    }
    let mut keys: Vec<String> = Vec::new();
    for med in &view.medications {
        let m = &med.medication;
        if m.order_id == order.order_id {
            continue;
        }
        let ingredients = tables.ingredients(&m.name, m.rxnorm.as_deref());
        let status = med_status(tables, med, &ingredients, view.now);
        for ingredient in &ingredients {
            // A stopped drug interacts until its washout is over.
            let stopped_s = match (status, view.now) {
                (MedStatus::Active, _) => None,
                (MedStatus::Ended(end), Some(now)) if (now - end).as_seconds_f64() < tables.washout_s(ingredient) => {
                    Some((now - end).as_seconds_f64())
                }
                (MedStatus::Ended(_), _) => continue,
            };
            let classes = ingredient_classes(tables, ingredient);
            for (ix, n, on_a, on_b) in &relevant {
                let Some((ordered_ingredient, _)) = ordered.get(*n) else { continue };
                if same_ingredient(ordered_ingredient, ingredient) {
                    continue;
                }
                let hit = (*on_a && classes.iter().any(|c| ix.b.contains(c)))
                    || (*on_b && classes.iter().any(|c| ix.a.contains(c)));
                let key = ddi_key(&ordered_ingredient.name, &ingredient.name);
                if !hit || keys.contains(&key) {
                    continue;
                }
                let mut found = Map::new();
                found.insert("interaction".into(), ix.id.clone());
                found.insert("title".into(), ix.title.clone());
                found.insert("risk".into(), ix.risk.clone());
                found.insert("ordered".into(), order.name.as_str().into());
                found.insert("active".into(), m.name.as_str().into());
                found.insert("ordered_ingredient".into(), ordered_ingredient.name.clone().into());
                found.insert("active_ingredient".into(), ingredient.name.clone().into());
                found.insert("key".into(), key.as_str().into());
                let ordered_text = drug_text(&order.name, ordered.len() > 1, &ordered_ingredient.name);
                let active_text = drug_text(&m.name, ingredients.len() > 1, &ingredient.name);
                found.insert("text".into(), format!("{ordered_text} + {active_text}").into());
                found.insert("washout".into(), stopped_s.is_some().into());
                found.insert("stopped_s".into(), opt_float(stopped_s));
                found.insert("source".into(), ix.source.clone());
                hits.push(Dynamic::from_map(found));
                keys.push(key);
            }
        }
    }
    hits
}

/// A drug for a summary: its name, with the ingredient concerned when it is a combination
/// (`lopinavir/ritonavir [ritonavir]`).
fn drug_text(name: &str, combination: bool, ingredient: &str) -> String {
    if combination { format!("{name} [{ingredient}]") } else { name.to_string() }
}

/// Whether a recorded reaction is severe: HL7 table 0128 `SV`, FHIR criticality `high` or
/// reaction severity `severe`.
fn is_severe(severity: &str) -> bool {
    ["sv", "severe", "high"].iter().any(|s| s.eq_ignore_ascii_case(severity.trim()))
}

/// One drug against one allergy: per ingredient of the drug, a match by ingredient (same
/// RxNorm code or name as an ingredient of the allergen) or else by class (a class shared
/// with the allergen, which may be a class name such as `penicillin`); one per finding key
/// `allergy:<ingredient>~<allergen>`.
fn match_allergy(
    tables: &Tables,
    drug: &Medication,
    drug_ingredients: &[Ingredient],
    allergy: &Allergy,
    keys: &mut Vec<String>,
    out: &mut Array,
) {
    let allergen = tables.ingredients(&allergy.name, allergy.code.as_deref().and_then(rxnorm_code));
    let allergen_classes: Vec<ImmutableString> = allergen.iter().flat_map(|a| ingredient_classes(tables, a)).collect();
    let allergen_name = super::data::normalise_drug_name(&allergy.name);
    for ingredient in drug_ingredients {
        let by_ingredient = allergen.iter().any(|a| same_ingredient(a, ingredient));
        let class = if by_ingredient {
            None
        } else {
            match ingredient_classes(tables, ingredient).into_iter().find(|c| allergen_classes.contains(c)) {
                Some(class) => Some(class),
                None => continue,
            }
        };
        let key = format!("allergy:{}~{allergen_name}", ingredient.name);
        if keys.contains(&key) {
            continue;
        }
        let mut m = Map::new();
        m.insert("drug".into(), drug.name.as_str().into());
        m.insert("order_id".into(), drug.order_id.as_str().into());
        m.insert("ingredient".into(), ingredient.name.clone().into());
        m.insert("drug_text".into(), drug_text(&drug.name, drug_ingredients.len() > 1, &ingredient.name).into());
        m.insert("allergen".into(), allergy.name.as_str().into());
        m.insert("match_by".into(), (if by_ingredient { "ingredient" } else { "class" }).into());
        m.insert("class".into(), class.map_or(Dynamic::UNIT, Dynamic::from));
        m.insert("reaction_severity".into(), allergy.severity.as_str().into());
        m.insert("severe".into(), is_severe(&allergy.severity).into());
        m.insert("key".into(), key.as_str().into());
        out.push(Dynamic::from_map(m));
        keys.push(key);
    }
}

/// `p.allergy_matches()`: for an order, the ordered drug against every recorded allergy; for
/// an allergies event, each newly recorded allergy against every active medication.
/// `[#{ drug, order_id, ingredient, drug_text, allergen, match_by, class, reaction_severity, severe,
/// key }]`.
fn allergy_matches(tables: &Tables, view: &PatientView) -> Array {
    let (mut out, mut keys) = (Array::new(), Vec::new());
    if let Some(order) = &view.new_order {
        let ingredients = tables.ingredients(&order.name, order.rxnorm.as_deref());
        for allergy in &view.allergies {
            match_allergy(tables, order, &ingredients, allergy, &mut keys, &mut out);
        }
        return out;
    }
    if view.new_allergies.is_empty() {
        return out;
    }
    for med in &view.medications {
        let m = &med.medication;
        let ingredients = tables.ingredients(&m.name, m.rxnorm.as_deref());
        if med_status(tables, med, &ingredients, view.now) != MedStatus::Active {
            continue;
        }
        for allergy in &view.new_allergies {
            match_allergy(tables, m, &ingredients, allergy, &mut keys, &mut out);
        }
    }
    out
}

fn allergy_map(tables: &Tables, a: &Allergy) -> Dynamic {
    let rx = a.code.as_deref().and_then(rxnorm_code);
    let mut m = Map::new();
    m.insert("name".into(), a.name.as_str().into());
    m.insert("code".into(), opt_text(a.code.as_deref()));
    m.insert("rxnorm".into(), opt_text(rx));
    m.insert("kind".into(), a.kind.as_str().into());
    m.insert("severity".into(), a.severity.as_str().into());
    m.insert("severe".into(), is_severe(&a.severity).into());
    m.insert("classes".into(), classes(tables, &a.name, rx).into());
    Dynamic::from_map(m)
}

/// `p.critical_results(max_age)`: `[#{ analyte, value, unit, limit, text }]` in analyte order;
/// an error when `critical_values.json` is absent (a silent empty list would hide it).
fn critical_results(tables: &Tables, view: &PatientView, secs: f64) -> Result<Array, Box<rhai::EvalAltResult>> {
    if tables.critical_limits().is_empty() {
        return Err("table critical_values.json is missing or empty".into());
    }
    let mut found = Array::new();
    for limits in tables.critical_limits() {
        let Some(value) = view.latest(&limits.analyte, secs) else { continue };
        let Some(limit) = limits.broken(value) else { continue };
        let text = if limits.unit.is_empty() {
            format!("{} {value} ({limit})", limits.analyte)
        } else {
            format!("{} {value} {} ({limit})", limits.analyte, limits.unit)
        };
        let mut m = Map::new();
        m.insert("analyte".into(), limits.analyte.clone().into());
        m.insert("value".into(), Dynamic::from_float(value));
        m.insert("unit".into(), limits.unit.clone().into());
        m.insert("limit".into(), limit.into());
        m.insert("text".into(), text.into());
        found.push(Dynamic::from_map(m));
    }
    Ok(found)
}

fn medication_map(tables: &Tables, m: &Medication) -> Map {
    let mut map = Map::new();
    map.insert("name".into(), m.name.as_str().into());
    map.insert("rxnorm".into(), opt_text(m.rxnorm.as_deref()));
    map.insert("order_id".into(), m.order_id.as_str().into());
    map.insert("classes".into(), classes(tables, &m.name, m.rxnorm.as_deref()).into());
    let ingredients: Array =
        tables.ingredients(&m.name, m.rxnorm.as_deref()).into_iter().map(|i| Dynamic::from(i.name)).collect();
    map.insert("ingredients".into(), ingredients.into());
    map
}

/// Whether `m` is `query` or contains it (by normalised name or RxNorm code of the drug or of
/// one of its ingredients).
fn drug_matches(tables: &Tables, m: &Medication, query: &str) -> bool {
    let query = query.trim();
    let wanted = super::data::normalise_drug_name(query);
    m.rxnorm.as_deref() == Some(query)
        || super::data::normalise_drug_name(&m.name) == wanted
        || (tables.is_combination(&m.name, m.rxnorm.as_deref())
            && tables
                .ingredients(&m.name, m.rxnorm.as_deref())
                .iter()
                .any(|i| i.rxnorm.as_deref() == Some(query) || i.name == wanted.as_str()))
}

fn current(tables: &SharedTables) -> Arc<Tables> {
    tables.load_full()
}

/// Register the rule API on `engine`; table functions read `tables`.
pub fn register(engine: &mut Engine, tables: SharedTables) {
    engine.register_type_with_name::<RulePatient>("Patient");

    // Values and freshness. Seconds are typed (whole or decimal), not `Dynamic`: a typed
    // signature resolves on the first lookup, and a text passed as seconds is an error at
    // load (lint) instead of a silent 0.
    secs_fn(engine, "latest", |p, name, secs| opt_float(p.0.latest(name, secs)));
    secs_fn(engine, "has", |p, name, secs| p.0.latest(name, secs).is_some() || p.0.latest_coded(name, secs).is_some());
    secs_fn(engine, "latest_coded", |p, name, secs| opt_text(p.0.latest_coded(name, secs)));
    engine.register_fn("age_of", |p: &mut RulePatient, name: &str| -> Dynamic { opt_float(p.age_of(name)) });

    // Windows.
    secs_fn(engine, "min", |p, name, secs| p.stat(name, secs, |it: &mut dyn Iterator<Item = f64>| it.reduce(f64::min)));
    secs_fn(engine, "max", |p, name, secs| p.stat(name, secs, |it: &mut dyn Iterator<Item = f64>| it.reduce(f64::max)));
    secs_fn(engine, "mean", |p, name, secs| {
        p.stat(name, secs, |it: &mut dyn Iterator<Item = f64>| {
            let (sum, n) = it.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
            (n > 0).then(|| sum / n as f64)
        })
    });
    secs_fn(engine, "count", |p, name, secs| p.recent(name, secs).count() as i64);
    secs_fn(engine, "delta", |p, name, secs| {
        // Newest minus oldest in the window; needs two samples.
        let mut it = p.recent(name, secs);
        let newest = it.next().map(|s| s.value);
        let oldest = it.last().map(|s| s.value);
        opt_float(newest.zip(oldest).map(|(n, o)| n - o))
    });
    secs_fn(engine, "trend", |p, name, secs| opt_float(p.trend_per_hour(name, secs)));
    secs_fn(engine, "span", |p, name, secs| {
        // Seconds from the oldest sample in the window to now.
        let now = p.now();
        opt_float(p.recent(name, secs).last().zip(now).map(|(s, n)| (n - s.at()).as_seconds_f64()))
    });
    secs_fn(engine, "window", |p, name, secs| -> Array {
        let now = p.now().map(OffsetDateTime::unix_timestamp_nanos);
        let mut out: Array = p
            .recent(name, secs)
            .map(|s| {
                let mut m = Map::new();
                let ago = now.map_or(0.0, |n| seconds_since(n, &s));
                m.insert("ago_s".into(), Dynamic::from_float(ago));
                m.insert("value".into(), Dynamic::from_float(s.value));
                Dynamic::from_map(m)
            })
            .collect();
        out.reverse();
        out
    });

    // Sustained: `p.sustained_below(name, threshold, min_span_s, window_s)` is the span in
    // seconds (oldest reading in the window to now) when there are >= 2 readings in the last
    // `window_s`, spanning >= `min_span_s`, all below `threshold`; `()` otherwise (persistent
    // hypotension, hypoxia, ...). `sustained_above` likewise.
    // Numbers are typed (whole or decimal: every combination is registered) for the same
    // reason as seconds above; a `Dynamic` parameter costs a search through every overload
    // shape on each call.
    numbers3(engine, "sustained_below", |p, name, threshold, min_span, window| {
        p.sustained(name, threshold, min_span, window, |v, t| v < t)
    });
    numbers3(engine, "sustained_above", |p, name, threshold, min_span, window| {
        p.sustained(name, threshold, min_span, window, |v, t| v > t)
    });

    // `p.since_first(name, window_s, op, threshold)`: seconds since the oldest reading of the
    // last `window_s` with `value op threshold` (op: < <= > >=), or `()` (clocks that start at
    // a first abnormal result, e.g. SEP-1's repeat lactate).
    fn since_first<W: Num, T: Num>(engine: &mut Engine) {
        engine.register_fn("since_first", |p: &mut RulePatient, name: &str, window: W, op: &str, threshold: T| {
            let test: fn(f64, f64) -> bool = match op {
                "<" => |v, t| v < t,
                "<=" => |v, t| v <= t,
                ">" => |v, t| v > t,
                ">=" => |v, t| v >= t,
                _ => return Err(format!("since_first: op is one of < <= > >=, not `{op}`").into()),
            };
            let threshold = threshold.num();
            let first = p.0.window(name, window.num()).find(|s| test(s.value, threshold));
            Ok::<_, Box<rhai::EvalAltResult>>(first.map_or(Dynamic::UNIT, |s| p.since_s(s.at())))
        });
    }
    since_first::<i64, i64>(engine);
    since_first::<i64, f64>(engine);
    since_first::<f64, i64>(engine);
    since_first::<f64, f64>(engine);

    // Oxygen.
    engine.register_fn("on_oxygen", |p: &mut RulePatient| -> bool { p.on_oxygen(OXYGEN_MAX_AGE_S) });
    engine.register_fn("on_oxygen", |p: &mut RulePatient, secs: i64| -> bool { p.on_oxygen(secs as f64) });
    engine.register_fn("on_oxygen", |p: &mut RulePatient, secs: f64| -> bool { p.on_oxygen(secs) });
    engine.register_fn("oxygen_recorded", |p: &mut RulePatient| -> bool {
        p.0.latest("fio2", OXYGEN_MAX_AGE_S).is_some() || p.0.latest("o2_flow", OXYGEN_MAX_AGE_S).is_some()
    });

    // Who and where (never names or identifiers).
    engine.register_get("unit", |p: &mut RulePatient| -> ImmutableString { p.0.location.unit.as_str().into() });
    engine.register_get("location", |p: &mut RulePatient| -> Map {
        let mut m = Map::new();
        m.insert("unit".into(), p.0.location.unit.as_str().into());
        m.insert("room".into(), p.0.location.room.as_str().into());
        m.insert("bed".into(), p.0.location.bed.as_str().into());
        m
    });
    engine.register_get("sex", |p: &mut RulePatient| -> ImmutableString { p.0.sex.as_str().into() });
    engine.register_get("age", |p: &mut RulePatient| -> Dynamic {
        p.0.age_years.map_or(Dynamic::UNIT, Dynamic::from_int)
    });
    engine.register_get("discharged", |p: &mut RulePatient| -> bool { p.0.discharged });

    // Settings and open alerts.
    engine.register_fn("setting", |p: &mut RulePatient, name: &str| -> Dynamic {
        opt_text(p.0.settings.get(name).map(String::as_str))
    });
    // The highest severity among a rule's open alerts (any finding).
    engine.register_fn("open_alert", |p: &mut RulePatient, rule: &str| -> Dynamic {
        let found = p.0.open_alerts.iter().filter(|a| a.rule == rule).map(|a| a.severity).max();
        found.map_or(Dynamic::UNIT, |s| Dynamic::from(ImmutableString::from(severity_name(s))))
    });
    engine.register_get("open_alerts", |p: &mut RulePatient| -> Map {
        // The highest severity per rule (a rule with findings may have several open).
        let mut highest: std::collections::BTreeMap<&str, vigil_actors::Severity> = std::collections::BTreeMap::new();
        for a in &p.0.open_alerts {
            let s = highest.entry(a.rule.as_str()).or_insert(a.severity);
            *s = (*s).max(a.severity);
        }
        highest
            .into_iter()
            .map(|(rule, s)| (rule.into(), Dynamic::from(ImmutableString::from(severity_name(s)))))
            .collect()
    });
    // The findings of a rule's open alerts (empty text for a rule's one alert).
    engine.register_fn("open_findings", |p: &mut RulePatient, rule: &str| -> Array {
        p.0.open_alerts
            .iter()
            .filter(|a| a.rule == rule)
            .map(|a| Dynamic::from(ImmutableString::from(a.finding.as_str())))
            .collect()
    });

    // Medications.
    let t = Arc::clone(&tables);
    engine.register_get("medications", move |p: &mut RulePatient| -> Array {
        let tables = current(&t);
        p.0.medications
            .iter()
            .filter(|m| is_active(&tables, m, p.0.now))
            .map(|m| {
                let mut map = medication_map(&tables, &m.medication);
                map.insert("since_s".into(), p.since_s(m.since));
                map.insert("administered_only".into(), m.administered_only.into());
                Dynamic::from_map(map)
            })
            .collect()
    });
    let t = Arc::clone(&tables);
    engine.register_get("new_order", move |p: &mut RulePatient| -> Dynamic {
        let tables = current(&t);
        p.0.new_order.as_ref().map_or(Dynamic::UNIT, |m| Dynamic::from_map(medication_map(&tables, m)))
    });
    let t = Arc::clone(&tables);
    engine.register_fn("on_med", move |p: &mut RulePatient, drug: &str| -> bool {
        let tables = current(&t);
        p.0.medications.iter().any(|m| drug_matches(&tables, &m.medication, drug) && is_active(&tables, m, p.0.now))
    });
    let t = Arc::clone(&tables);
    engine.register_fn("on_class", move |p: &mut RulePatient, class: &str| -> bool {
        let tables = current(&t);
        p.0.medications.iter().any(|m| {
            tables.classes_of(&m.medication.name, m.medication.rxnorm.as_deref()).iter().any(|c| c == class)
                && is_active(&tables, m, p.0.now)
        })
    });
    let t = Arc::clone(&tables);
    engine.register_fn("meds_in_class", move |p: &mut RulePatient, class: &str| -> Array {
        let tables = current(&t);
        p.0.medications
            .iter()
            .filter(|m| is_active(&tables, m, p.0.now))
            .filter(|m| {
                let mut found = false;
                tables.for_classes(&m.medication.name, m.medication.rxnorm.as_deref(), |c| found |= c == class);
                found
            })
            .map(|m| Dynamic::from_map(medication_map(&tables, &m.medication)))
            .collect()
    });

    // Allergies.
    let t = Arc::clone(&tables);
    engine.register_get("allergies", move |p: &mut RulePatient| -> Array {
        let tables = current(&t);
        p.0.allergies.iter().map(|a| allergy_map(&tables, a)).collect()
    });
    let t = Arc::clone(&tables);
    engine.register_get("new_allergies", move |p: &mut RulePatient| -> Array {
        let tables = current(&t);
        p.0.new_allergies.iter().map(|a| allergy_map(&tables, a)).collect()
    });
    let t = Arc::clone(&tables);
    engine.register_fn("allergy_matches", move |p: &mut RulePatient| -> Array { allergy_matches(&current(&t), &p.0) });
    engine.register_fn("allergic_to", |p: &mut RulePatient, drug: &str| -> bool {
        let wanted = super::data::normalise_drug_name(drug);
        p.0.allergies.iter().any(|a| {
            super::data::normalise_drug_name(&a.name) == wanted
                || a.code.as_deref().and_then(rxnorm_code) == Some(drug.trim())
        })
    });

    // Tables.
    // Table functions are volatile: the optimizer must not fold them into a compiled rule.
    let t = Arc::clone(&tables);
    FuncRegistration::new("data")
        .with_volatility(true)
        .register_into_engine(engine, move |name: &str| -> Dynamic { current(&t).get(name) });
    let t = Arc::clone(&tables);
    FuncRegistration::new("drug_classes").with_volatility(true).register_into_engine(
        engine,
        move |name: &str, rxnorm: Dynamic| -> Array {
            let rx = rxnorm.into_immutable_string().ok();
            classes(&current(&t), name, rx.as_deref())
        },
    );
    let t = Arc::clone(&tables);
    FuncRegistration::new("critical_analytes")
        .with_volatility(true)
        .register_into_engine(engine, move || -> Array { current(&t).critical_names() });
    let t = Arc::clone(&tables);
    FuncRegistration::new("critical_value")
        .with_volatility(true)
        .register_into_engine(engine, move |name: &str| -> Dynamic { current(&t).critical_value(name) });
    // Score tables (`data/scores.json`), evaluated host-side: one call per chart.
    let t = Arc::clone(&tables);
    engine.register_type_with_name::<Scored>("Score");
    engine.register_indexer_get(|s: &mut Scored, name: &str| -> Dynamic { s.get(name) });
    // The scored properties as getters and setters (a property without one falls back to the
    // indexer, after a failed lookup that costs as much again: `s.partial = false`).
    for name in ["score", "partial", "ceiling", "subscores", "values", "met", "missing", "flagged"] {
        engine.register_get(name, move |s: &mut Scored| -> Dynamic { s.get(name) });
        engine.register_set(name, move |s: &mut Scored, value: Dynamic| s.set(name, value));
    }
    engine.register_indexer_set(|s: &mut Scored, name: &str, value: Dynamic| s.set(name, value));
    engine.register_fn("value", |s: &mut Scored, name: &str| -> Dynamic { s.value(name) });
    engine.register_fn("remove", |s: &mut Scored, name: &str| -> Dynamic { s.remove(name) });
    engine.register_fn("settle_below", |s: &mut Scored, threshold: i64| s.settle_below(threshold as f64));
    engine.register_fn("settle_below", |s: &mut Scored, threshold: f64| s.settle_below(threshold));
    engine.register_fn("add_missing", |s: &mut Scored, other: Scored| s.add_missing(&other));
    // `s += #{ stage: "...", ... }` / `s.mixin(map)`: set several properties in one step.
    engine.register_fn("mixin", |s: &mut Scored, map: Map| s.mixin(map));
    engine.register_fn("+=", |s: &mut Scored, map: Map| s.mixin(map));
    engine.register_fn("score", move |p: &mut RulePatient, name: &str| -> Result<Scored, Box<rhai::EvalAltResult>> {
        p.1.get_or(name, || {
            let tables = current(&t);
            let table = tables.score(name).ok_or_else(|| format!("no score table `{name}` in data/scores.json"))?;
            Ok(table.evaluate_in(p.pass()))
        })
    });
    // Latest results of the analytes in `critical_values.json` that break a limit.
    let t = Arc::clone(&tables);
    engine.register_fn(
        "critical_results",
        move |p: &mut RulePatient, secs: i64| -> Result<Array, Box<rhai::EvalAltResult>> {
            critical_results(&current(&t), &p.0, secs as f64)
        },
    );
    let t = Arc::clone(&tables);
    engine.register_fn(
        "critical_results",
        move |p: &mut RulePatient, secs: f64| -> Result<Array, Box<rhai::EvalAltResult>> {
            critical_results(&current(&t), &p.0, secs)
        },
    );
    let t = Arc::clone(&tables);
    engine.register_fn("interactions", move |p: &mut RulePatient| -> Array { interaction_hits(&current(&t), &p.0) });
    let t = Arc::clone(&tables);
    FuncRegistration::new("drug_ingredients").with_volatility(true).register_into_engine(
        engine,
        move |name: &str, rxnorm: Dynamic| -> Array {
            let rx = rxnorm.into_immutable_string().ok();
            current(&t).ingredients(name, rx.as_deref()).into_iter().map(|i| Dynamic::from(i.name)).collect()
        },
    );
    engine.register_fn("normalise_drug_name", |name: &str| -> ImmutableString {
        super::data::normalise_drug_name(name).into()
    });

    // Small helpers for table logic (in Rust: they run per order against every medication).
    engine.register_fn("intersects", |a: &mut Array, b: Array| -> bool {
        a.iter().any(|x| {
            let x = x.clone().into_immutable_string().ok();
            b.iter().any(|y| x.is_some() && y.clone().into_immutable_string().ok() == x)
        })
    });

    // `join(list, separator)`: a list's items as one text (summaries without closures).
    engine.register_fn("join", |list: &mut Array, separator: &str| -> ImmutableString {
        let mut out = String::new();
        for (i, item) in list.iter().enumerate() {
            if i > 0 {
                out.push_str(separator);
            }
            match item.read_lock::<ImmutableString>() {
                Some(s) => out.push_str(&s),
                None => out.push_str(&item.to_string()),
            }
        }
        out.into()
    });

    register_episode_clocks(engine, Arc::clone(&tables));

    // Verdicts.
    let fire = |severity: ImmutableString, summary: ImmutableString, details: Dynamic| Verdict::Fire {
        finding: None,
        severity,
        summary,
        details,
    };
    engine.register_fn("alert", move |severity: ImmutableString, summary: ImmutableString, details: Map| {
        fire(severity, summary, details.into())
    });
    engine.register_fn("alert", move |severity: ImmutableString, summary: ImmutableString, details: Scored| {
        fire(severity, summary, Dynamic::from(details))
    });
    // `alert_for(finding, ...)`: one alert per finding the rule names (an interacting pair, an
    // analyte), each raised, notified and acknowledged on its own.
    let fire_for = |finding: ImmutableString, severity: ImmutableString, summary: ImmutableString, details: Dynamic| {
        Verdict::Fire { finding: Some(finding), severity, summary, details }
    };
    engine.register_fn(
        "alert_for",
        move |finding: ImmutableString, severity: ImmutableString, summary: ImmutableString, details: Map| {
            fire_for(finding, severity, summary, details.into())
        },
    );
    engine.register_fn(
        "alert_for",
        move |finding: ImmutableString, severity: ImmutableString, summary: ImmutableString, details: Scored| {
            fire_for(finding, severity, summary, Dynamic::from(details))
        },
    );
    let resolve = |finding: Option<ImmutableString>, reason: ImmutableString, details: Dynamic| Verdict::Resolve {
        finding,
        reason,
        details,
    };
    engine.register_fn("resolve", move |reason: ImmutableString| resolve(None, reason, Dynamic::UNIT));
    // `resolve(reason, details)`: below threshold, with what the rule computed (shown in the
    // patient view, e.g. a low NEWS2 with its sub-scores).
    engine.register_fn("resolve", move |reason: ImmutableString, details: Map| resolve(None, reason, details.into()));
    engine.register_fn("resolve", move |reason: ImmutableString, details: Scored| {
        resolve(None, reason, Dynamic::from(details))
    });
    engine.register_fn("resolve_for", move |finding: ImmutableString, reason: ImmutableString| {
        resolve(Some(finding), reason, Dynamic::UNIT)
    });
}

fn severity_name(s: vigil_actors::Severity) -> &'static str {
    use vigil_actors::Severity::*;
    match s {
        Info => "info",
        Low => "low",
        Medium => "medium",
        High => "high",
        Critical => "critical",
    }
}

// ---------------------------------------------------------------------------------------------
// Episode clocks (SEP-1): time zero, runs of abnormal readings, treatments given, times as text.
// Host-side because each replaces a loop over a day of readings in script.
// ---------------------------------------------------------------------------------------------

fn register_episode_clocks(engine: &mut Engine, tables: SharedTables) {
    // `p.onset(table_a, min_a, table_b, min_b, within_s)`: seconds since the current episode's
    // time zero (`scores::onset`: >= min_a items of table_a and >= min_b of table_b met by
    // readings within `within_s` of each other, continuously since), looking back 2 x within_s;
    // `()` when not met together now.
    fn onset_fn<W: Num>(engine: &mut Engine, tables: SharedTables) {
        engine.register_fn(
            "onset",
            move |p: &mut RulePatient,
                  a: &str,
                  min_a: i64,
                  b: &str,
                  min_b: i64,
                  within: W|
                  -> Result<Dynamic, Box<rhai::EvalAltResult>> {
                let tables = current(&tables);
                let table =
                    |n: &str| tables.score(n).ok_or_else(|| format!("no score table `{n}` in data/scores.json"));
                let within = within.num();
                let at =
                    super::scores::onset_in(p.pass(), &[(table(a)?, min_a), (table(b)?, min_b)], within, 2.0 * within);
                Ok(at.map_or(Dynamic::UNIT, |at| p.since_s(at)))
            },
        );
    }
    onset_fn::<i64>(engine, Arc::clone(&tables));
    onset_fn::<f64>(engine, Arc::clone(&tables));

    // `p.abnormal_run(table, key, lookback_s)`: the current run of consecutive readings of the
    // item `key` scoring > 0 (readings at one instant are one reading): `#{ readings, since_s
    // (oldest of the run), last_s (newest), span_s (between them), initial_s (second of the
    // first two consecutive abnormal readings in the lookback) }`, `()` for what is absent.
    fn run_fn<W: Num>(engine: &mut Engine, tables: SharedTables) {
        engine.register_fn(
            "abnormal_run",
            move |p: &mut RulePatient, table: &str, key: &str, lookback: W| -> Result<Map, Box<rhai::EvalAltResult>> {
                let tables = current(&tables);
                let t = tables.score(table).ok_or_else(|| format!("no score table `{table}` in data/scores.json"))?;
                let run = t
                    .abnormal_run_in(p.pass(), key, lookback.num())
                    .ok_or_else(|| format!("score table `{table}` has no item `{key}`"))?;
                let ago = |at: Option<OffsetDateTime>| at.map_or(Dynamic::UNIT, |at| p.since_s(at));
                let mut m = Map::new();
                m.insert("readings".into(), Dynamic::from_int(run.readings as i64));
                m.insert("since_s".into(), ago(run.first));
                m.insert("last_s".into(), ago(run.last));
                let span = run.first.zip(run.last).map(|(f, l)| (l - f).as_seconds_f64());
                m.insert("span_s".into(), opt_float(span));
                m.insert("initial_s".into(), ago(run.initial));
                Ok(m)
            },
        );
    }
    run_fn::<i64>(engine, Arc::clone(&tables));
    run_fn::<f64>(engine, Arc::clone(&tables));

    // `p.iso_time(seconds_ago)`: that moment as RFC 3339 text (UTC), or `()`.
    fn iso_fn<S: Num>(engine: &mut Engine) {
        engine.register_fn("iso_time", |p: &mut RulePatient, ago: S| -> Dynamic {
            let at =
                p.now().zip(time::Duration::checked_seconds_f64(ago.num())).and_then(|(now, d)| now.checked_sub(d));
            let text = at.and_then(|at| at.format(&time::format_description::well_known::Rfc3339).ok());
            text.map_or(Dynamic::UNIT, |t| Dynamic::from(ImmutableString::from(t)))
        });
    }
    iso_fn::<i64>(engine);
    iso_fn::<f64>(engine);

    // `p.given(names)`: seconds since the earliest active medication whose normalised name is
    // in `names` (or starts with one of them followed by a space: `lactated ringer's 1000 ml`),
    // or one of whose classes (data/drug_classes.json) is; `()` when none.
    engine.register_fn("given", move |p: &mut RulePatient, names: Array| -> Dynamic {
        let tables = current(&tables);
        let raw: Vec<ImmutableString> =
            names.iter().filter_map(|n| n.read_lock::<ImmutableString>().map(|n| n.clone())).collect();
        let wanted: Vec<String> = raw.iter().map(|n| super::data::normalise_drug_name(n)).collect();
        let earliest =
            p.0.medications
                .iter()
                .filter(|m| {
                    let name = super::data::normalise_drug_name(&m.medication.name);
                    let mut hit = wanted.iter().any(|w| {
                        name.strip_prefix(w.as_str()).is_some_and(|rest| rest.is_empty() || rest.starts_with(' '))
                    });
                    tables.for_classes(&m.medication.name, m.medication.rxnorm.as_deref(), |c| hit |= raw.contains(c));
                    hit
                })
                .map(|m| m.since)
                .min();
        earliest.map_or(Dynamic::UNIT, |at| p.since_s(at))
    });
}
