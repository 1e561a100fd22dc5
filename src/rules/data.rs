//! Data tables next to the rules (`rules/data/*.json`): loaded by the host, exposed to rules
//! with `data(name)`, and indexed for drug-class membership so pharmacists edit tables, not code.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use rhai::{Dynamic, ImmutableString};

use super::error::RuleError;
use super::scores::ScoreTable;
use super::triggers::is_known_trigger;

/// Every table of a rules directory, converted once at load.
#[derive(Default)]
pub struct Tables {
    /// Table name (file stem) to its content, as a shared (cheaply cloned) Rhai value.
    raw: HashMap<String, Dynamic>,
    /// RxNorm ingredient code to the drug classes it belongs to.
    class_by_rx: HashMap<String, Vec<ImmutableString>>,
    /// Normalised drug name to the drug classes it belongs to.
    class_by_name: HashMap<String, Vec<ImmutableString>>,
    /// RxNorm ingredient code to the member's name (`Nardil` coded 8123 is phenelzine).
    name_by_rx: HashMap<String, ImmutableString>,
    /// `drug_classes.json` `combinations`: products by RxNorm code and by normalised name
    /// (and alias), to their ingredients.
    combination_by_rx: HashMap<String, Arc<[Ingredient]>>,
    combination_by_name: HashMap<String, Arc<[Ingredient]>>,
    /// Washout after a drug stops, seconds, by RxNorm code and by normalised name (the
    /// longest of its classes'; absent: none).
    washout_by_rx: HashMap<String, f64>,
    washout_by_name: HashMap<String, f64>,
    /// How long a one-off dose stays active, seconds, likewise (absent: the default).
    after_dose_by_rx: HashMap<String, f64>,
    after_dose_by_name: HashMap<String, f64>,
    /// `defaults.active_after_dose_h`, seconds (absent: [`DEFAULT_ACTIVE_AFTER_DOSE_H`]).
    default_after_dose_s: Option<f64>,
    /// `interactions.json` `interactions[]`, indexed once (see [`Tables::interaction_hits`]).
    interactions: Vec<Interaction>,
    /// `critical_values.json` `values`: analyte names in key order, and each analyte's limits.
    critical_names: rhai::Array,
    critical: HashMap<String, Dynamic>,
    /// The same limits, typed, in name order (for `p.critical_results`).
    critical_limits: Vec<CriticalLimits>,
    /// `scores.json` `scores`: score tables by name (see [`super::scores`]).
    scores: HashMap<String, ScoreTable>,
    /// Content fingerprint (for change detection and reporting).
    pub fingerprint: String,
}

/// One ingredient of a drug: its normalised name (the table's member name when its RxNorm
/// code is a member's) and its RxNorm ingredient code when known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ingredient {
    /// Normalised name.
    pub name: ImmutableString,
    /// RxNorm ingredient code (RXCUI).
    pub rxnorm: Option<ImmutableString>,
}

/// A one-off dose is active this long when the tables say nothing (`defaults.active_after_dose_h`).
pub const DEFAULT_ACTIVE_AFTER_DOSE_H: f64 = 24.0;

/// Marks that join the ingredients of a combination product's name.
const COMBINATION_MARKS: &[&str] = &["/", "+", "-", " and "];

/// The ingredients named in a combination product's name (`amoxicillin/clavulanate
/// potassium`, `sulfamethoxazole-trimethoprim`, `dextroamphetamine and amphetamine`), each
/// normalised; one part when the name joins nothing.
pub fn split_combination(name: &str) -> Vec<String> {
    let mut parts = vec![name.to_string()];
    for mark in COMBINATION_MARKS {
        parts = parts.iter().flat_map(|p| p.split(mark).map(str::to_string).collect::<Vec<_>>()).collect();
    }
    parts.iter().map(|p| normalise_drug_name(p)).filter(|p| !p.is_empty()).collect()
}

/// One interaction pair of `interactions.json`, with the fields a hit reports.
pub struct Interaction {
    /// Class ids on side a and side b.
    pub a: Vec<ImmutableString>,
    /// Class ids on side b.
    pub b: Vec<ImmutableString>,
    /// `id`, `title`, `risk`, `source` as Rhai values (`()` when absent).
    pub id: Dynamic,
    /// Title.
    pub title: Dynamic,
    /// Risk.
    pub risk: Dynamic,
    /// Source.
    pub source: Dynamic,
}

/// One analyte's limits of `critical_values.json`: `below`/`above` strict, `at_or_*` inclusive.
#[derive(Debug, Default)]
pub struct CriticalLimits {
    /// Canonical analyte name.
    pub analyte: ImmutableString,
    /// Canonical unit (for the finding's text).
    pub unit: ImmutableString,
    /// Critical when value < below.
    pub below: Option<f64>,
    /// Critical when value <= at_or_below.
    pub at_or_below: Option<f64>,
    /// Critical when value > above.
    pub above: Option<f64>,
    /// Critical when value >= at_or_above.
    pub at_or_above: Option<f64>,
}

impl CriticalLimits {
    /// The limit `value` breaks (`"> 6.2"`), the last of below, at_or_below, above,
    /// at_or_above that does; `None` when none does.
    pub fn broken(&self, value: f64) -> Option<String> {
        let checks = [
            (self.below, "<", value < self.below.unwrap_or(f64::NAN)),
            (self.at_or_below, "<=", value <= self.at_or_below.unwrap_or(f64::NAN)),
            (self.above, ">", value > self.above.unwrap_or(f64::NAN)),
            (self.at_or_above, ">=", value >= self.at_or_above.unwrap_or(f64::NAN)),
        ];
        checks
            .iter()
            .rev()
            .find(|(limit, _, hit)| limit.is_some() && *hit)
            .map(|(limit, op, _)| format!("{op} {}", limit.unwrap_or_default()))
    }
}

/// The tables in use, swapped whole on reload (lock-free reads). Rule functions read through
/// this handle.
pub type SharedTables = Arc<arc_swap::ArcSwap<Tables>>;

/// Lowercase, single spaces, common salt and form words removed (`sertraline hydrochloride`
/// matches `sertraline`).
pub fn normalise_drug_name(name: &str) -> String {
    normalised(name).into_owned()
}

/// [`normalise_drug_name`] without allocating when `name` is already normal (lowercase ASCII,
/// single spaces, no salt word).
pub fn normalised(name: &str) -> std::borrow::Cow<'_, str> {
    const SALTS: &[&str] = &[
        "hydrochloride",
        "hcl",
        "sodium",
        "potassium",
        "sulfate",
        "sulphate",
        "maleate",
        "citrate",
        "tartrate",
        "mesylate",
        "besylate",
        "calcium",
        "succinate",
        "fumarate",
        "hyclate",
        "trihydrate",
        "monohydrate",
        "magnesium",
        "acetate",
        "bromide",
        "phosphate",
        "dimesylate",
    ];
    let already = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || (b.is_ascii_punctuation()) || b == b' ')
        && !name.starts_with(' ')
        && !name.ends_with(' ')
        && !name.contains("  ")
        && !name.split(' ').any(|w| SALTS.contains(&w));
    if already {
        return std::borrow::Cow::Borrowed(name);
    }
    let lower = name.trim().to_lowercase();
    let words: Vec<&str> = lower.split_whitespace().collect();
    let kept: Vec<&str> = words.iter().copied().filter(|w| !SALTS.contains(w)).collect();
    std::borrow::Cow::Owned(if kept.is_empty() { words.join(" ") } else { kept.join(" ") })
}

/// The RxNorm code in an allergen or medication code: a bare code, or `system|code` whose
/// system names RxNorm. Other code systems give `None`.
pub fn rxnorm_code(code: &str) -> Option<&str> {
    let code = code.trim();
    match code.rsplit_once('|') {
        None => (!code.is_empty() && code.chars().all(|c| c.is_ascii_digit())).then_some(code),
        Some((system, value)) => {
            let system = system.to_ascii_lowercase();
            (system.contains("rxnorm") || system == "rxn" || system.ends_with("|rxnorm")).then_some(value)
        }
    }
}

impl Tables {
    /// Load every `*.json` under `dir` (a missing directory means no tables).
    pub fn load(dir: &Path) -> Result<Tables, Vec<RuleError>> {
        let mut tables = Tables::default();
        let Ok(entries) = std::fs::read_dir(dir) else { return Ok(tables) };
        let mut paths: Vec<_> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        paths.sort();
        let mut errors = Vec::new();
        let mut hasher_input = String::new();
        for path in paths {
            let file = path.display().to_string();
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) => {
                    errors.push(RuleError::Io { file, message: e.to_string() });
                    continue;
                }
            };
            let json: serde_json::Value = match serde_json::from_str(&text) {
                Ok(v) => v,
                Err(e) => {
                    errors.push(RuleError::Invalid {
                        file,
                        line: e.line(),
                        column: e.column(),
                        message: e.to_string(),
                    });
                    continue;
                }
            };
            let name = path.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
            if name == "drug_classes"
                && let Err(message) = tables.index_classes(&json)
            {
                errors.push(RuleError::Invalid { file: file.clone(), line: 0, column: 0, message });
            }
            if name == "interactions"
                && let Err(message) = tables.index_interactions(&json)
            {
                errors.push(RuleError::Invalid { file: file.clone(), line: 0, column: 0, message });
            }
            if name == "critical_values"
                && let Err(message) = tables.index_critical(&json)
            {
                errors.push(RuleError::Invalid { file: file.clone(), line: 0, column: 0, message });
            }
            if name == "scores"
                && let Err(message) = tables.index_scores(&json)
            {
                errors.push(RuleError::Invalid { file: file.clone(), line: 0, column: 0, message });
            }
            match rhai::serde::to_dynamic(&json) {
                Ok(value) => {
                    tables.raw.insert(name, value.into_shared());
                }
                Err(e) => errors.push(RuleError::Invalid { file, line: 0, column: 0, message: e.to_string() }),
            }
            hasher_input.push_str(&text);
        }
        use sha2::Digest;
        tables.fingerprint = hex::encode(&sha2::Sha256::digest(hasher_input.as_bytes())[..6]);
        if errors.is_empty() { Ok(tables) } else { Err(errors) }
    }

    fn index_classes(&mut self, json: &serde_json::Value) -> Result<(), String> {
        let classes =
            json.get("classes").and_then(|c| c.as_object()).ok_or("drug_classes.json needs an object `classes`")?;
        let memory_s = vigil_actors::MEDICATION_MEMORY.as_seconds_f64();
        // A time a table gives: a non-negative number, at most what the actor remembers.
        let hours = |v: Option<&serde_json::Value>, key: &str, per: f64, place: &str| -> Result<Option<f64>, String> {
            let Some(v) = v.filter(|v| !v.is_null()) else { return Ok(None) };
            let n = v.as_f64().filter(|n| n.is_finite() && *n >= 0.0).ok_or(format!("{place}.{key}: a number >= 0"))?;
            if n * per > memory_s {
                return Err(format!(
                    "{place}.{key}: {n} is longer than the {} days a stopped medication is remembered",
                    memory_s / 86400.0
                ));
            }
            Ok(Some(n * per))
        };
        let defaults = json.get("defaults");
        self.default_after_dose_s =
            hours(defaults.and_then(|d| d.get("active_after_dose_h")), "active_after_dose_h", 3600.0, "defaults")?;
        let default_after_dose_s = self.default_after_dose_s();
        for (class, body) in classes {
            let place = format!("classes.{class}");
            let class_washout = hours(body.get("washout_days"), "washout_days", 86400.0, &place)?;
            let class_after_dose = hours(body.get("active_after_dose_h"), "active_after_dose_h", 3600.0, &place)?;
            for (i, member) in body.get("members").and_then(|m| m.as_array()).into_iter().flatten().enumerate() {
                let place = format!("{place}.members[{i}]");
                let washout = hours(member.get("washout_days"), "washout_days", 86400.0, &place)?.or(class_washout);
                let after_dose = hours(member.get("active_after_dose_h"), "active_after_dose_h", 3600.0, &place)?
                    .or(class_after_dose);
                if washout.unwrap_or(0.0) + after_dose.unwrap_or(default_after_dose_s) > memory_s {
                    return Err(format!(
                        "{place}: active time and washout together exceed {} days",
                        memory_s / 86400.0
                    ));
                }
                let name = member.get("name").and_then(|n| n.as_str()).map(normalise_drug_name);
                let rx = member.get("rxnorm").and_then(|r| r.as_str());
                let longest = |map: &mut HashMap<String, f64>, key: String, value: f64| {
                    let slot = map.entry(key).or_insert(value);
                    *slot = slot.max(value);
                };
                for (value, by_rx, by_name) in [
                    (washout, &mut self.washout_by_rx, &mut self.washout_by_name),
                    (after_dose, &mut self.after_dose_by_rx, &mut self.after_dose_by_name),
                ] {
                    let Some(value) = value else { continue };
                    if let Some(name) = &name {
                        longest(by_name, name.clone(), value);
                    }
                    if let Some(rx) = rx {
                        longest(by_rx, rx.to_string(), value);
                    }
                }
                if let (Some(name), Some(rx)) = (&name, rx) {
                    self.name_by_rx.entry(rx.to_string()).or_insert_with(|| name.as_str().into());
                }
            }
        }
        self.index_combinations(json)?;
        for (class, body) in classes {
            let class_name: ImmutableString = class.as_str().into();
            let mut add = |key: String| {
                let (map, key) = match key.strip_prefix("rx:") {
                    Some(rx) => (&mut self.class_by_rx, rx.to_string()),
                    None => (&mut self.class_by_name, key.trim_start_matches("name:").to_string()),
                };
                let entry = map.entry(key).or_default();
                if !entry.contains(&class_name) {
                    entry.push(class_name.clone());
                }
            };
            add(format!("name:{}", normalise_drug_name(class)));
            for alias in body.get("aliases").and_then(|a| a.as_array()).into_iter().flatten() {
                let alias = alias.as_str().ok_or(format!("class `{class}`: aliases are text"))?;
                add(format!("name:{}", normalise_drug_name(alias)));
            }
            let members =
                body.get("members").and_then(|m| m.as_array()).ok_or(format!("class `{class}` needs `members`"))?;
            for member in members {
                let name = member
                    .get("name")
                    .and_then(|n| n.as_str())
                    .ok_or(format!("class `{class}`: a member needs a `name`"))?;
                add(format!("name:{}", normalise_drug_name(name)));
                if let Some(rx) = member.get("rxnorm").and_then(|r| r.as_str()) {
                    add(format!("rx:{rx}"));
                }
            }
        }
        Ok(())
    }

    /// `combinations[]`: `name`, optional `rxnorm` (the product's code) and `aliases`, and
    /// `ingredients` (`name`, optional `rxnorm`).
    fn index_combinations(&mut self, json: &serde_json::Value) -> Result<(), String> {
        let Some(list) = json.get("combinations") else { return Ok(()) };
        let list = list.as_array().ok_or("`combinations` is a list")?;
        for (i, combination) in list.iter().enumerate() {
            let place = format!("combinations[{i}]");
            let name = combination.get("name").and_then(|n| n.as_str()).ok_or(format!("{place}: a `name`"))?;
            let parts = combination
                .get("ingredients")
                .and_then(|n| n.as_array())
                .ok_or(format!("{place}: a list `ingredients`"))?;
            let mut ingredients = Vec::new();
            for (j, part) in parts.iter().enumerate() {
                let part_name =
                    part.get("name").and_then(|n| n.as_str()).ok_or(format!("{place}.ingredients[{j}]: a `name`"))?;
                let rxnorm = part.get("rxnorm").and_then(|r| r.as_str()).map(ImmutableString::from);
                ingredients.push(Ingredient { name: normalise_drug_name(part_name).into(), rxnorm });
            }
            if ingredients.len() < 2 {
                return Err(format!("{place}: a combination has two ingredients or more"));
            }
            let ingredients: Arc<[Ingredient]> = ingredients.into();
            self.combination_by_name.insert(normalise_drug_name(name), Arc::clone(&ingredients));
            for alias in combination.get("aliases").and_then(|a| a.as_array()).into_iter().flatten() {
                let alias = alias.as_str().ok_or(format!("{place}: aliases are text"))?;
                self.combination_by_name.insert(normalise_drug_name(alias), Arc::clone(&ingredients));
            }
            if let Some(rx) = combination.get("rxnorm").and_then(|r| r.as_str()) {
                self.combination_by_rx.insert(rx.to_string(), ingredients);
            }
        }
        Ok(())
    }

    fn index_interactions(&mut self, json: &serde_json::Value) -> Result<(), String> {
        let list = json
            .get("interactions")
            .and_then(|i| i.as_array())
            .ok_or("interactions.json needs an array `interactions`")?;
        let text = |v: Option<&serde_json::Value>| -> Result<Dynamic, String> {
            match v {
                None => Ok(Dynamic::UNIT),
                Some(v) => rhai::serde::to_dynamic(v).map_err(|e| e.to_string()),
            }
        };
        for (i, ix) in list.iter().enumerate() {
            let side = |key: &str| -> Result<Vec<ImmutableString>, String> {
                let items = ix
                    .get(key)
                    .and_then(|a| a.as_array())
                    .ok_or(format!("interaction {i}: `{key}` is a list of class ids"))?;
                items
                    .iter()
                    .map(|c| {
                        c.as_str().map(ImmutableString::from).ok_or(format!("interaction {i}: class ids are text"))
                    })
                    .collect()
            };
            self.interactions.push(Interaction {
                a: side("a")?,
                b: side("b")?,
                id: text(ix.get("id"))?,
                title: text(ix.get("title"))?,
                risk: text(ix.get("risk"))?,
                source: text(ix.get("source"))?,
            });
        }
        Ok(())
    }

    fn index_critical(&mut self, json: &serde_json::Value) -> Result<(), String> {
        let values =
            json.get("values").and_then(|v| v.as_object()).ok_or("critical_values.json needs an object `values`")?;
        let mut names: Vec<&String> = values.keys().collect();
        names.sort();
        self.critical_names = names.iter().map(|n| Dynamic::from(ImmutableString::from(n.as_str()))).collect();
        for name in names {
            let limits = &values[name.as_str()];
            // A critical limit is a clinical claim: it names where it comes from.
            match limits.get("source") {
                Some(serde_json::Value::String(s)) if !s.trim().is_empty() => {}
                _ => {
                    return Err(format!(
                        "values.{name}: `source` (the publication or laboratory list the limits come from) is required"
                    ));
                }
            }
            if limits.get("note").is_some_and(|n| !n.is_string()) {
                return Err(format!("values.{name}.note: text"));
            }
            // A misspelt analyte would never match a result and its limit would silently not apply.
            if !is_known_trigger(name) {
                return Err(format!("values.{name}: not a canonical name (schemas/codes/observations.json)"));
            }
            let number = |key: &str| -> Result<Option<f64>, String> {
                match limits.get(key) {
                    None | Some(serde_json::Value::Null) => Ok(None),
                    Some(v) => v.as_f64().map(Some).ok_or(format!("values.{name}.{key}: a number")),
                }
            };
            self.critical_limits.push(CriticalLimits {
                analyte: name.as_str().into(),
                unit: limits.get("unit").and_then(|u| u.as_str()).unwrap_or("").into(),
                below: number("below")?,
                at_or_below: number("at_or_below")?,
                above: number("above")?,
                at_or_above: number("at_or_above")?,
            });
            let limits = rhai::serde::to_dynamic(limits).map_err(|e| format!("values.{name}: {e}"))?;
            self.critical.insert(name.clone(), limits);
        }
        Ok(())
    }

    fn index_scores(&mut self, json: &serde_json::Value) -> Result<(), String> {
        let scores = json.get("scores").and_then(|s| s.as_object()).ok_or("scores.json needs an object `scores`")?;
        for (name, table) in scores {
            let table = ScoreTable::parse(name, table)?;
            // A misspelt input would read nothing and leave its item missing forever.
            if let Some(unknown) =
                table.input_names().find(|n| !super::scores::PSEUDO_INPUTS.contains(n) && !is_known_trigger(n))
            {
                return Err(format!(
                    "{name}: input `{unknown}` is not a canonical name (schemas/codes/observations.json)"
                ));
            }
            self.scores.insert(name.clone(), table);
        }
        Ok(())
    }

    /// A score table of `scores.json` by name.
    pub fn score(&self, name: &str) -> Option<&ScoreTable> {
        self.scores.get(name)
    }

    /// The analytes of `critical_values.json` with their limits, in name order.
    pub fn critical_limits(&self) -> &[CriticalLimits] {
        &self.critical_limits
    }

    /// Analytes of `critical_values.json` (`values` keys, sorted as a Rhai map's keys are).
    pub fn critical_names(&self) -> rhai::Array {
        self.critical_names.clone()
    }

    /// Limits of one analyte of `critical_values.json`, or `()`.
    pub fn critical_value(&self, name: &str) -> Dynamic {
        self.critical.get(name).cloned().unwrap_or(Dynamic::UNIT)
    }

    /// The indexed interactions of `interactions.json`, in table order.
    pub fn interactions(&self) -> &[Interaction] {
        &self.interactions
    }

    /// A table by name, or `()`.
    pub fn get(&self, name: &str) -> Dynamic {
        self.raw.get(name).cloned().unwrap_or(Dynamic::UNIT)
    }

    /// Table names.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.raw.keys().cloned().collect();
        names.sort();
        names
    }

    /// Classes of a drug given by name and/or RxNorm code: the classes of each of its
    /// ingredients ([`Tables::ingredients`]).
    pub fn classes_of(&self, name: &str, rxnorm: Option<&str>) -> Vec<ImmutableString> {
        let mut out: Vec<ImmutableString> = Vec::new();
        self.for_classes(name, rxnorm, |class| out.push(class.clone()));
        out
    }

    /// Whether a drug is a combination product: its code or name is one of `combinations`,
    /// or its name is no class member's and joins several (`a/b`, `a-b`, `a and b`, `a+b`).
    pub fn is_combination(&self, name: &str, rxnorm: Option<&str>) -> bool {
        if rxnorm.is_some_and(|r| self.combination_by_rx.contains_key(r)) {
            return true;
        }
        if rxnorm.is_some_and(|r| self.class_by_rx.contains_key(r)) {
            return false;
        }
        let name = normalised(name);
        self.combination_by_name.contains_key(name.as_ref())
            || (!self.class_by_name.contains_key(name.as_ref()) && COMBINATION_MARKS.iter().any(|m| name.contains(m)))
    }

    /// The ingredients of a drug: those of `combinations` for its code or name, else those
    /// its name joins (each by name), else the drug itself (by its member name when its code
    /// is a member's).
    pub fn ingredients(&self, name: &str, rxnorm: Option<&str>) -> Vec<Ingredient> {
        if let Some(list) = rxnorm.and_then(|r| self.combination_by_rx.get(r)) {
            return list.to_vec();
        }
        let normal = normalised(name);
        if let Some(list) = self.combination_by_name.get(normal.as_ref()) {
            return list.to_vec();
        }
        if self.is_combination(name, rxnorm) {
            let parts = split_combination(&normal);
            if parts.len() >= 2 {
                return parts.into_iter().map(|p| Ingredient { name: p.into(), rxnorm: None }).collect();
            }
        }
        let member = rxnorm.and_then(|r| self.name_by_rx.get(r));
        let name = member.cloned().unwrap_or_else(|| normal.as_ref().into());
        vec![Ingredient { name, rxnorm: rxnorm.map(ImmutableString::from) }]
    }

    /// How long after it stops a drug still interacts, seconds: the longest `washout_days`
    /// of its classes (or its member entry); 0 when none declares one.
    pub fn washout_s(&self, ingredient: &Ingredient) -> f64 {
        let by_rx = ingredient.rxnorm.as_ref().and_then(|r| self.washout_by_rx.get(r.as_str()));
        let by_name = self.washout_by_name.get(ingredient.name.as_str());
        by_rx.into_iter().chain(by_name).copied().fold(0.0, f64::max)
    }

    /// How long a one-off dose of a drug stays active, seconds: the longest
    /// `active_after_dose_h` of its classes (or member entry), else the default.
    pub fn active_after_dose_s(&self, ingredient: &Ingredient) -> f64 {
        let by_rx = ingredient.rxnorm.as_ref().and_then(|r| self.after_dose_by_rx.get(r.as_str()));
        let by_name = self.after_dose_by_name.get(ingredient.name.as_str());
        by_rx.into_iter().chain(by_name).copied().reduce(f64::max).unwrap_or_else(|| self.default_after_dose_s())
    }

    fn default_after_dose_s(&self) -> f64 {
        self.default_after_dose_s.unwrap_or(DEFAULT_ACTIVE_AFTER_DOSE_H * 3600.0)
    }

    /// Call `f` with each class of a drug (as [`Tables::classes_of`], without duplicates).
    pub fn for_classes(&self, name: &str, rxnorm: Option<&str>, mut f: impl FnMut(&ImmutableString)) {
        if self.is_combination(name, rxnorm) {
            let mut seen: Vec<ImmutableString> = Vec::new();
            for ingredient in self.ingredients(name, rxnorm) {
                self.for_ingredient_classes(&ingredient.name, ingredient.rxnorm.as_deref(), |class| {
                    if !seen.contains(class) {
                        seen.push(class.clone());
                        f(class);
                    }
                });
            }
        } else {
            self.for_ingredient_classes(name, rxnorm, f);
        }
    }

    /// Call `f` with each class of one ingredient, by code and by name, without duplicates.
    pub fn for_ingredient_classes(&self, name: &str, rxnorm: Option<&str>, mut f: impl FnMut(&ImmutableString)) {
        let by_rx = rxnorm.and_then(|r| self.class_by_rx.get(r)).map(Vec::as_slice).unwrap_or_default();
        let by_name = if name.is_empty() { None } else { self.class_by_name.get(normalised(name).as_ref()) };
        for class in by_rx {
            f(class);
        }
        for class in by_name.map(Vec::as_slice).unwrap_or_default() {
            if !by_rx.contains(class) {
                f(class);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_codes_normalise() {
        assert_eq!(normalise_drug_name("  Sertraline   Hydrochloride "), "sertraline");
        assert_eq!(normalise_drug_name("Methylene Blue"), "methylene blue");
        assert_eq!(rxnorm_code("RXNORM|7980"), Some("7980"));
        assert_eq!(rxnorm_code("http://www.nlm.nih.gov/research/umls/rxnorm|36437"), Some("36437"));
        assert_eq!(rxnorm_code("SNOMED|91936005"), None);
        assert_eq!(rxnorm_code("8123"), Some("8123"));
    }

    #[test]
    fn a_score_table_reading_an_unknown_name_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        std::fs::create_dir_all(&dir).unwrap();
        let table = r#"{ "scores": { "t": { "items": [ { "key": "a", "inputs": [ { "name": "spo", "max_age_s": 60, "points": [["else", 0]] } ] } ] } } }"#;
        std::fs::write(dir.join("scores.json"), table).unwrap();
        let errors = Tables::load(&dir).err().unwrap();
        assert!(errors[0].to_string().contains("`spo` is not a canonical name"), "{}", errors[0]);
    }

    #[test]
    fn a_critical_value_without_a_source_or_with_an_unknown_analyte_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        std::fs::create_dir_all(&dir).unwrap();
        let load = |table: &str| {
            std::fs::write(dir.join("critical_values.json"), table).unwrap();
            Tables::load(&dir).err().map(|e| e[0].to_string())
        };
        let no_source = load(r#"{ "values": { "potassium": { "unit": "mmol/L", "below": 2.8 } } }"#);
        assert!(no_source.as_deref().is_some_and(|e| e.contains("values.potassium: `source`")), "{no_source:?}");
        let empty_source = load(r#"{ "values": { "potassium": { "unit": "mmol/L", "below": 2.8, "source": " " } } }"#);
        assert!(empty_source.is_some(), "a blank source is no source");
        let unknown =
            load(r#"{ "values": { "potasium": { "unit": "mmol/L", "below": 2.8, "source": "Kost 1990" } } }"#);
        assert!(unknown.as_deref().is_some_and(|e| e.contains("potasium: not a canonical name")), "{unknown:?}");
        assert_eq!(
            load(
                r#"{ "values": { "potassium": { "unit": "mmol/L", "below": 2.8, "source": "Kost 1990", "note": "x" } } }"#
            ),
            None
        );
    }

    #[test]
    fn shipped_critical_values_each_name_a_source_and_cover_the_added_analytes() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules").join("data");
        let tables = Tables::load(&dir).unwrap();
        let names: Vec<&str> = tables.critical_limits().iter().map(|l| l.analyte.as_str()).collect();
        for analyte in [
            "calcium",
            "calcium_ionized",
            "ph",
            "pao2",
            "magnesium",
            "phosphorus",
            "pt",
            "inr",
            "aptt",
            "troponin_i",
            "troponin_t",
        ] {
            assert!(names.contains(&analyte), "{analyte} missing from critical_values.json");
        }
        let limit = |name: &str| tables.critical_limits().iter().find(|l| l.analyte == name).unwrap();
        // Troponin I and T are different analytes with different limits.
        assert_ne!(limit("troponin_i").at_or_above, limit("troponin_t").at_or_above);
        assert_eq!(limit("glucose").broken(39.6), Some("< 46".into()), "2.2 mmol/L of glucose is critical");
    }

    #[test]
    fn shipped_tables_load_and_index_classes() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules").join("data");
        let tables = Tables::load(&dir).unwrap();
        assert!(tables.names().contains(&"interactions".to_string()));
        let by_code = tables.classes_of("", Some("8123"));
        assert!(by_code.iter().any(|c| c == "maoi"), "{by_code:?}");
        assert!(tables.classes_of("Phenelzine Sulfate", None).iter().any(|c| c == "maoi"));
        assert!(tables.classes_of("amoxicillin", None).iter().any(|c| c == "penicillins"));
    }

    #[test]
    fn combination_names_split_into_normalised_ingredients() {
        assert_eq!(split_combination("amoxicillin / clavulanate potassium"), ["amoxicillin", "clavulanate"]);
        assert_eq!(split_combination("sulfamethoxazole-trimethoprim"), ["sulfamethoxazole", "trimethoprim"]);
        assert_eq!(split_combination("dextroamphetamine and amphetamine"), ["dextroamphetamine", "amphetamine"]);
        assert_eq!(split_combination("lopinavir+ritonavir"), ["lopinavir", "ritonavir"]);
        assert_eq!(split_combination("sertraline"), ["sertraline"]);
        assert_eq!(split_combination("/ - "), Vec::<String>::new());
    }

    #[test]
    fn shipped_tables_give_ingredients_and_times() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules").join("data");
        let tables = Tables::load(&dir).unwrap();
        let names = |name: &str, rx: Option<&str>| {
            tables.ingredients(name, rx).into_iter().map(|i| i.name.to_string()).collect::<Vec<_>>()
        };
        assert_eq!(
            names("Bactrim DS", Some("10831")),
            ["sulfamethoxazole", "trimethoprim"],
            "by the product's RxNorm code"
        );
        assert_eq!(names("co-amoxiclav", None), ["amoxicillin", "clavulanate"], "by a listed name");
        assert_eq!(names("Amoxicillin / Clavulanate Potassium", None), ["amoxicillin", "clavulanate"], "by splitting");
        assert_eq!(names("Nardil", Some("8123")), ["phenelzine"], "a member's code gives its name");
        assert_eq!(names("methylene blue", None), ["methylene blue"]);
        assert_eq!(tables.ingredients("co-trimoxazole", None)[0].rxnorm.as_deref(), Some("10180"));
        let classes = tables.classes_of("lopinavir/ritonavir", None);
        assert!(
            classes.iter().any(|c| c == "protease_inhibitors")
                && classes.iter().any(|c| c == "cyp3a4_strong_inhibitors"),
            "{classes:?}"
        );
        assert!(tables.is_combination("Bactrim", Some("10831")) && !tables.is_combination("sertraline", Some("36437")));
        let one = |name: &str, rx: Option<&str>| tables.ingredients(name, rx).remove(0);
        let day = 86400.0;
        assert_eq!(tables.washout_s(&one("", Some("8123"))), 14.0 * day, "phenelzine by code");
        assert_eq!(tables.washout_s(&one("linezolid", None)), day, "a member's own washout");
        assert_eq!(tables.washout_s(&one("fluoxetine", None)), 35.0 * day);
        assert_eq!(tables.washout_s(&one("sertraline", None)), 0.0);
        assert_eq!(tables.active_after_dose_s(&one("omeprazole", None)), 72.0 * 3600.0, "the class's");
        assert_eq!(tables.active_after_dose_s(&one("acetaminophen", None)), 24.0 * 3600.0, "the default");
    }

    #[test]
    fn a_washout_longer_than_the_actor_remembers_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        std::fs::create_dir_all(&dir).unwrap();
        let table = r#"{ "classes": { "x": { "washout_days": 90, "members": [ { "name": "x" } ] } } }"#;
        std::fs::write(dir.join("drug_classes.json"), table).unwrap();
        let errors = Tables::load(&dir).err().unwrap();
        assert!(
            errors[0].to_string().contains("classes.x.washout_days: 90 is longer than the 60 days"),
            "{}",
            errors[0]
        );
        let table = r#"{ "classes": { "x": { "members": [ { "name": "x", "active_after_dose_h": -1 } ] } } }"#;
        std::fs::write(dir.join("drug_classes.json"), table).unwrap();
        let errors = Tables::load(&dir).err().unwrap();
        assert!(
            errors[0].to_string().contains("classes.x.members[0].active_after_dose_h: a number >= 0"),
            "{}",
            errors[0]
        );
        let table = r#"{ "classes": {}, "combinations": [ { "name": "x/y", "ingredients": [ { "name": "x" } ] } ] }"#;
        std::fs::write(dir.join("drug_classes.json"), table).unwrap();
        let errors = Tables::load(&dir).err().unwrap();
        assert!(errors[0].to_string().contains("two ingredients or more"), "{}", errors[0]);
    }
}
