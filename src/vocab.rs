//! The canonical vocabulary (schemas/codes/observations.json): maps IEEE 11073 MDC and LOINC
//! codes to the names rules use, and converts units to the canonical UCUM unit, per analyte.
//! Built once at start-up; lookups are hash-map reads on the ingest path.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Deserialize;

/// The table shipped with the binary.
pub const OBSERVATIONS_JSON: &str = include_str!("../schemas/codes/observations.json");

#[derive(Deserialize)]
struct Table {
    observations: Vec<Row>,
    units: Vec<UnitRow>,
    conversions: Vec<ConversionRow>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Row {
    #[serde(rename = "$comment", default)]
    _comment: Option<String>,
    name: String,
    unit: String,
    #[serde(rename = "type")]
    value_type: ValueType,
    mdc: Vec<String>,
    loinc: Vec<String>,
    #[serde(default)]
    no_unit: NoUnit,
    #[serde(default)]
    plausible: Option<[f64; 2]>,
    #[serde(default)]
    answers: BTreeMap<String, Vec<String>>,
}

#[derive(Deserialize)]
struct UnitRow {
    unit: String,
    aliases: Vec<String>,
}

#[derive(Deserialize)]
struct ConversionRow {
    names: Vec<String>,
    from: Vec<String>,
    to: String,
    scale: f64,
    offset: f64,
}

/// Whether an analyte's value is a number or a code / text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ValueType {
    /// A number in the canonical unit.
    Numeric,
    /// A code or text (e.g. ACVPU consciousness).
    Text,
}

/// What a numeric value sent without a unit is taken to be (`no_unit` in the table).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoUnit {
    /// Not usable: the analyte has more than one unit in use (°C/°F, mg/dL/mmol/L).
    #[default]
    Refuse,
    /// The canonical unit: the analyte has one unit in practice.
    Canonical,
    /// FiO2: a value <= 1 is a fraction (x100), above 1 a percentage.
    FractionOrPercent,
}

/// Which code system an observation code belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CodeSystem {
    /// IEEE 11073-10101 (HL7 v2 coding system `MDC`, FHIR `urn:iso:std:iso:11073:10101`).
    Mdc,
    /// LOINC (HL7 v2 `LN`, FHIR `http://loinc.org`).
    Loinc,
}

impl CodeSystem {
    /// How many systems there are (the vocabulary keeps a map per system).
    const COUNT: usize = 2;

    /// This system's place among [`CodeSystem::COUNT`] (a new system fails to compile here).
    fn slot(self) -> usize {
        match self {
            CodeSystem::Mdc => 0,
            CodeSystem::Loinc => 1,
        }
    }

    /// From an HL7 v2 coding-system name (CWE-3) or a FHIR system URI.
    pub fn parse(system: &str) -> Option<CodeSystem> {
        match system {
            "MDC" | "urn:iso:std:iso:11073:10101" => Some(CodeSystem::Mdc),
            "LN" | "LOINC" | "http://loinc.org" => Some(CodeSystem::Loinc),
            _ => None,
        }
    }
}

/// A canonical name and unit a code maps to.
#[derive(Clone, Debug, PartialEq)]
pub struct Canonical {
    /// Name rules use, e.g. `rr`.
    pub name: String,
    /// Canonical UCUM unit (empty for text values).
    pub unit: String,
    /// Numeric or text.
    pub value_type: ValueType,
    /// What a value without a unit is.
    pub no_unit: NoUnit,
    /// Lowest and highest value that can be measured at all, in the canonical unit.
    pub plausible: Option<(f64, f64)>,
}

/// How a value's unit relates to its analyte's canonical unit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum UnitMatch {
    /// The canonical unit: the value is used as sent.
    Canonical,
    /// Convert with `value * scale + offset`.
    Convert {
        /// Multiplier.
        scale: f64,
        /// Added after scaling.
        offset: f64,
    },
    /// No unit was sent; what that means is the analyte's [`NoUnit`].
    Missing,
    /// A unit we know that is wrong for this analyte: the value must not be used.
    Incompatible,
    /// A unit the table does not know.
    Unknown,
}

/// Why a value that reached a canonical name was not used. A bounded set: it labels the
/// `vigil_observations_dropped_total` counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// No unit, and the analyte's unit is ambiguous.
    UnitMissing,
    /// A known unit that is wrong for the analyte.
    UnitIncompatible,
    /// A unit the table does not know.
    UnitUnknown,
    /// Outside the analyte's plausibility range: cannot have been measured.
    Implausible,
    /// Not a number where one is needed (text, a range, a ratio).
    NotNumeric,
    /// A text analyte's value that maps to no known answer (e.g. consciousness "drowsy").
    UnknownAnswer,
}

impl DropReason {
    /// Every reason, in label order.
    pub const ALL: [DropReason; 6] = [
        DropReason::UnitMissing,
        DropReason::UnitIncompatible,
        DropReason::UnitUnknown,
        DropReason::Implausible,
        DropReason::NotNumeric,
        DropReason::UnknownAnswer,
    ];

    /// The Prometheus label value.
    pub const fn label(self) -> &'static str {
        match self {
            DropReason::UnitMissing => "unit_missing",
            DropReason::UnitIncompatible => "unit_incompatible",
            DropReason::UnitUnknown => "unit_unknown",
            DropReason::Implausible => "implausible",
            DropReason::NotNumeric => "not_numeric",
            DropReason::UnknownAnswer => "unknown_answer",
        }
    }

    const fn index(self) -> usize {
        self as usize
    }
}

/// A numeric value in its analyte's canonical unit, with the conversion applied (for the
/// reference range).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Measured {
    /// The value in the canonical unit.
    pub value: f64,
    /// Multiplier applied.
    pub scale: f64,
    /// Offset added after scaling.
    pub offset: f64,
}

/// What one spelling of a unit means: the canonical unit it is an alias of, and the
/// per-analyte conversions it has.
#[derive(Clone, Debug, Default, PartialEq)]
struct Spelling {
    alias: Option<String>,
    conversions: HashMap<String, (f64, f64)>,
}

/// The loaded table.
pub struct Vocabulary {
    /// Code -> analyte, one map per system ([`CodeSystem::slot`]), so a lookup borrows the
    /// code instead of allocating a key (one per OBX).
    codes: [HashMap<String, Canonical>; CodeSystem::COUNT],
    /// Every unit spelling the table mentions, as written.
    spellings: HashMap<String, Spelling>,
    /// Lowercase spelling -> its meaning when every spelling that lowercases to it means the
    /// same; `None` when they differ (`G/L` giga per litre, `g/L` grams per litre).
    folded: HashMap<String, Option<Spelling>>,
    /// Text analyte -> lowercase answer -> normalised value.
    answers: HashMap<String, HashMap<String, String>>,
    /// Canonical names in table order.
    names: Vec<String>,
}

fn invalid(message: String) -> serde_json::Error {
    serde::de::Error::custom(message)
}

/// Lowercase, single spaces: how answers and folded units are compared.
fn fold(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase()
}

impl Vocabulary {
    /// The shipped table. It is compiled in and tested, so failing here is a build defect.
    pub fn shipped() -> Self {
        Self::from_json(OBSERVATIONS_JSON).unwrap_or_else(|e| panic!("shipped vocabulary: {e}"))
    }

    /// Parse and check a table: a numeric analyte needs a plausibility range, a conversion
    /// must land on its analyte's canonical unit, and no code or answer may mean two things.
    pub fn from_json(json: &str) -> Result<Self, serde_json::Error> {
        let table: Table = serde_json::from_str(json)?;
        let mut codes = HashMap::new();
        let mut spellings: HashMap<String, Spelling> = HashMap::new();
        let mut answers = HashMap::new();
        let mut names = Vec::new();
        let mut alias = |spelling: &str, unit: &str| -> Result<(), serde_json::Error> {
            let entry = spellings.entry(spelling.to_string()).or_default();
            match &entry.alias {
                Some(other) if other != unit => {
                    Err(invalid(format!("unit {spelling:?} is an alias of both {other:?} and {unit:?}")))
                }
                _ => {
                    entry.alias = Some(unit.to_string());
                    Ok(())
                }
            }
        };
        for row in table.observations {
            if names.contains(&row.name) {
                return Err(invalid(format!("observation {:?} is listed twice", row.name)));
            }
            if !row.unit.is_empty() {
                alias(&row.unit, &row.unit)?;
            }
            let plausible = match (row.value_type, row.plausible) {
                (ValueType::Numeric, Some([low, high])) if low <= high => Some((low, high)),
                (ValueType::Numeric, _) => {
                    return Err(invalid(format!("{}: a numeric analyte needs `plausible: [low, high]`", row.name)));
                }
                (ValueType::Text, _) => None,
            };
            let mut by_answer = HashMap::new();
            for (value, texts) in &row.answers {
                for spelling in texts.iter().chain(std::iter::once(value)) {
                    if let Some(other) = by_answer.insert(fold(spelling), value.clone())
                        && other != *value
                    {
                        return Err(invalid(format!(
                            "{}: answer {spelling:?} means both {other:?} and {value:?}",
                            row.name
                        )));
                    }
                }
            }
            if !by_answer.is_empty() {
                answers.insert(row.name.clone(), by_answer);
            }
            names.push(row.name.clone());
            let canonical = Canonical {
                name: row.name,
                unit: row.unit,
                value_type: row.value_type,
                no_unit: row.no_unit,
                plausible,
            };
            for (system, list) in [(CodeSystem::Mdc, row.mdc), (CodeSystem::Loinc, row.loinc)] {
                for code in list {
                    if let Some(other) = codes.insert((system, code.clone()), canonical.clone()) {
                        return Err(invalid(format!(
                            "code {code} maps to both {:?} and {:?}",
                            other.name, canonical.name
                        )));
                    }
                }
            }
        }
        for row in table.units {
            alias(&row.unit, &row.unit)?;
            for a in &row.aliases {
                alias(a, &row.unit)?;
            }
        }
        for row in table.conversions {
            for name in &row.names {
                // A conversion must land on the analyte's canonical unit, or the table is wrong.
                if !codes.values().any(|c: &Canonical| c.name == *name && c.unit == row.to) {
                    return Err(invalid(format!(
                        "conversion for {name:?} targets {:?}, not its canonical unit",
                        row.to
                    )));
                }
                for from in &row.from {
                    let entry = spellings.entry(from.clone()).or_default();
                    if entry.conversions.insert(name.clone(), (row.scale, row.offset)).is_some() {
                        return Err(invalid(format!("{name:?} has two conversions from {from:?}")));
                    }
                }
            }
        }
        // Case-insensitive matching, but only where the case carries no meaning.
        let mut folded: HashMap<String, Option<Spelling>> = HashMap::new();
        for (spelling, meaning) in &spellings {
            match folded.entry(spelling.to_lowercase()) {
                std::collections::hash_map::Entry::Vacant(slot) => {
                    slot.insert(Some(meaning.clone()));
                }
                std::collections::hash_map::Entry::Occupied(mut slot) => {
                    let merged = slot.get().as_ref().and_then(|seen| merge(seen, meaning));
                    slot.insert(merged);
                }
            }
        }
        let mut by_system: [HashMap<String, Canonical>; CodeSystem::COUNT] = Default::default();
        for ((system, code), canonical) in codes {
            by_system[system.slot()].insert(code, canonical);
        }
        Ok(Vocabulary { codes: by_system, spellings, folded, answers, names })
    }

    /// The canonical name for a code.
    pub fn lookup(&self, system: CodeSystem, code: &str) -> Option<&Canonical> {
        self.codes[system.slot()].get(code)
    }

    /// Canonical names, in table order (a bounded set: the labels of the dropped counter).
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Whether `unit` is one the table mentions (canonical, alias or convertible), in any case.
    pub fn knows_unit(&self, unit: &str) -> bool {
        self.spellings.contains_key(unit) || self.folded.contains_key(&unit.to_lowercase())
    }

    /// How `unit` relates to `canonical.unit`. Conversions are per analyte: `mmol/L` converts
    /// for glucose and is incompatible for creatinine. Matched as written, else
    /// case-insensitively where that is unambiguous.
    pub fn unit_match(&self, canonical: &Canonical, unit: &str) -> UnitMatch {
        let unit = unit.trim();
        if unit.is_empty() {
            return UnitMatch::Missing;
        }
        let meaning = match self.spellings.get(unit) {
            Some(m) => m,
            None => match self.folded.get(&unit.to_lowercase()) {
                Some(Some(m)) => m,
                Some(None) => return UnitMatch::Incompatible,
                None => return UnitMatch::Unknown,
            },
        };
        if let Some(&(scale, offset)) = meaning.conversions.get(&canonical.name) {
            return UnitMatch::Convert { scale, offset };
        }
        match &meaning.alias {
            Some(to) if *to == canonical.unit => UnitMatch::Canonical,
            _ => UnitMatch::Incompatible,
        }
    }

    /// `value` as sent with `unit` (already matched by [`Vocabulary::unit_match`]) in the
    /// canonical unit, checked against the plausibility range; or why it cannot be used.
    pub fn measure(&self, canonical: &Canonical, value: f64, unit: UnitMatch) -> Result<Measured, DropReason> {
        let (scale, offset) = match unit {
            UnitMatch::Canonical => (1.0, 0.0),
            UnitMatch::Convert { scale, offset } => (scale, offset),
            UnitMatch::Missing => match canonical.no_unit {
                NoUnit::Canonical => (1.0, 0.0),
                NoUnit::FractionOrPercent if value <= 1.0 => (100.0, 0.0),
                NoUnit::FractionOrPercent => (1.0, 0.0),
                NoUnit::Refuse => return Err(DropReason::UnitMissing),
            },
            UnitMatch::Incompatible => return Err(DropReason::UnitIncompatible),
            UnitMatch::Unknown => return Err(DropReason::UnitUnknown),
        };
        let converted = value * scale + offset;
        if !converted.is_finite() {
            return Err(DropReason::NotNumeric);
        }
        match canonical.plausible {
            Some((low, high)) if converted < low || converted > high => Err(DropReason::Implausible),
            _ => Ok(Measured { value: converted, scale, offset }),
        }
    }

    /// `value` in `unit` expressed in `canonical.unit` and plausible; `None` when it cannot be
    /// used (the value is then dropped, never guessed).
    pub fn convert(&self, canonical: &Canonical, value: f64, unit: &str) -> Option<f64> {
        self.measure(canonical, value, self.unit_match(canonical, unit)).ok().map(|m| m.value)
    }

    /// Whether a text analyte has a list of answers (values outside it are dropped).
    pub fn has_answers(&self, canonical: &Canonical) -> bool {
        self.answers.contains_key(&canonical.name)
    }

    /// The normalised answer (`"A"`, `"C"`, ...) `text` (a code or a display text, any case)
    /// stands for; `None` when it is none of them.
    pub fn answer(&self, canonical: &Canonical, text: &str) -> Option<&str> {
        self.answers.get(&canonical.name)?.get(&fold(text)).map(String::as_str)
    }
}

/// Two spellings that differ only in case, merged when they mean the same: the same alias (or
/// none) and no analyte converted differently.
fn merge(a: &Spelling, b: &Spelling) -> Option<Spelling> {
    if a.alias != b.alias {
        return None;
    }
    let mut conversions = a.conversions.clone();
    for (name, factor) in &b.conversions {
        match conversions.insert(name.clone(), *factor) {
            Some(other) if other != *factor => return None,
            _ => {}
        }
    }
    Some(Spelling { alias: a.alias.clone(), conversions })
}

/// Values dropped at ingest, by canonical name and reason: a fixed grid of counters built
/// from the vocabulary, so the label set is bounded and counting takes no lock.
pub struct DroppedValues {
    index: HashMap<String, usize>,
    names: Vec<String>,
    counts: Vec<[AtomicU64; DropReason::ALL.len()]>,
}

impl DroppedValues {
    /// Counters for every canonical name of `vocab`.
    pub fn new(vocab: &Vocabulary) -> Self {
        let names = vocab.names().to_vec();
        let index = names.iter().enumerate().map(|(i, n)| (n.clone(), i)).collect();
        let counts = names.iter().map(|_| std::array::from_fn(|_| AtomicU64::new(0))).collect();
        DroppedValues { index, names, counts }
    }

    /// Count one dropped value (a name outside the vocabulary is not counted: it cannot
    /// reach here, and the label set stays bounded).
    pub fn count(&self, name: &str, reason: DropReason) {
        if let Some(row) = self.index.get(name).and_then(|&i| self.counts.get(i)) {
            row[reason.index()].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// How many values of `name` were dropped for `reason`.
    pub fn get(&self, name: &str, reason: DropReason) -> u64 {
        self.index
            .get(name)
            .and_then(|&i| self.counts.get(i))
            .map_or(0, |row| row[reason.index()].load(Ordering::Relaxed))
    }

    /// Every non-zero counter: (canonical name, reason, count), in table then reason order.
    pub fn nonzero(&self) -> Vec<(&str, DropReason, u64)> {
        let mut out = Vec::new();
        for (name, row) in self.names.iter().zip(&self.counts) {
            for reason in DropReason::ALL {
                let n = row[reason.index()].load(Ordering::Relaxed);
                if n > 0 {
                    out.push((name.as_str(), reason, n));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 0.01)
    }

    #[test]
    fn shipped_table_maps_mdc_and_loinc_and_converts_fahrenheit() {
        let v = Vocabulary::shipped();
        assert_eq!(v.lookup(CodeSystem::Mdc, "151562").map(|c| c.name.as_str()), Some("rr"));
        assert_eq!(v.lookup(CodeSystem::Loinc, "8480-6").map(|c| c.name.as_str()), Some("sbp"));
        assert_eq!(v.lookup(CodeSystem::Mdc, "150033").map(|c| c.name.as_str()), Some("sbp"));
        let temp = v.lookup(CodeSystem::Loinc, "8310-5").unwrap();
        assert!(close(v.convert(temp, 101.3, "[degF]"), 38.5));
        let sbp = v.lookup(CodeSystem::Mdc, "150021").unwrap();
        assert_eq!(v.convert(sbp, 120.0, "266016"), Some(120.0));
        assert_eq!(v.convert(sbp, 120.0, "[degF]"), None, "a temperature unit on a pressure is refused");
        assert!(close(v.convert(sbp, 16.0, "kPa"), 120.01));
    }

    #[test]
    fn conversions_are_per_analyte() {
        let v = Vocabulary::shipped();
        let get = |code: &str| v.lookup(CodeSystem::Loinc, code).unwrap().clone();
        let glucose = get("2345-7");
        let creatinine = get("2160-0");
        let lactate = get("2524-7");
        assert!(close(v.convert(&glucose, 5.5, "mmol/L"), 99.09));
        assert_eq!(v.convert(&creatinine, 5.5, "mmol/L"), None, "mmol/L is no creatinine unit we convert");
        assert!(close(v.convert(&creatinine, 88.42, "umol/L"), 1.0));
        assert!(close(v.convert(&get("1975-2"), 17.1, "µmol/L"), 1.0));
        assert!(close(v.convert(&lactate, 36.0, "mg/dL"), 4.0));
        assert_eq!(v.convert(&lactate, 2.0, "mmol/L"), Some(2.0));
        assert!(close(v.convert(&get("718-7"), 135.0, "g/L"), 13.5));
        assert_eq!(v.convert(&get("6690-2"), 12.0, "10*3/uL"), Some(12.0));
        assert!(close(v.convert(&get("10839-9"), 0.05, "ng/mL"), 50.0));
        assert_eq!(v.convert(&get("6690-2"), 12.0, "g/L"), None);
        assert_eq!(v.convert(&get("6690-2"), 12.0, "furlongs"), None, "an unknown unit is not guessed");
        assert_eq!(v.convert(&get("2823-3"), 4.1, ""), Some(4.1), "no unit: taken as canonical");
        assert_eq!(v.lookup(CodeSystem::Loinc, "67775-7").map(|c| c.value_type), Some(ValueType::Text));
    }

    #[test]
    fn units_match_case_insensitively_only_where_case_carries_no_meaning() {
        let v = Vocabulary::shipped();
        let get = |code: &str| v.lookup(CodeSystem::Loinc, code).unwrap().clone();
        let (glucose, wbc, hemoglobin) = (get("2345-7"), get("6690-2"), get("718-7"));
        assert!(close(v.convert(&glucose, 5.5, "MMOL/L"), 99.09));
        assert_eq!(v.convert(&glucose, 100.0, "MG/DL"), Some(100.0));
        assert_eq!(v.convert(&wbc, 12.0, "G/L"), Some(12.0), "giga per litre");
        assert_eq!(v.unit_match(&wbc, "g/L"), UnitMatch::Incompatible, "grams per litre is no cell count");
        assert!(close(v.convert(&hemoglobin, 135.0, "g/L"), 13.5));
        assert_eq!(v.unit_match(&hemoglobin, "G/l"), UnitMatch::Incompatible, "case-ambiguous spelling is not guessed");
        assert_eq!(v.unit_match(&glucose, ""), UnitMatch::Missing);
        assert_eq!(v.convert(&glucose, 5.5, ""), None, "glucose has two units in use: no unit is refused");
        let pco2 = get("2019-8");
        assert!(close(v.convert(&pco2, 6.0, "265987"), 45.0), "MDC_DIM_KILO_PASCAL");
        assert_eq!(v.unit_match(&pco2, "268800"), UnitMatch::Unknown, "the old, wrong kPa code");
    }

    #[test]
    fn fio2_as_fraction_or_percent_and_implausible_values_refused() {
        let v = Vocabulary::shipped();
        let fio2 = v.lookup(CodeSystem::Loinc, "3150-0").unwrap().clone();
        assert_eq!(v.convert(&fio2, 0.4, ""), Some(40.0));
        assert_eq!(v.convert(&fio2, 40.0, ""), Some(40.0));
        assert_eq!(v.convert(&fio2, 0.4, "{ratio}"), Some(40.0));
        assert_eq!(v.convert(&fio2, 0.4, "1"), Some(40.0));
        assert_eq!(v.measure(&fio2, 0.4, v.unit_match(&fio2, "%")), Err(DropReason::Implausible));
        let temp = v.lookup(CodeSystem::Loinc, "8310-5").unwrap().clone();
        assert_eq!(v.measure(&temp, 101.3, UnitMatch::Missing), Err(DropReason::UnitMissing));
        assert_eq!(v.measure(&temp, 101.3, v.unit_match(&temp, "Cel")), Err(DropReason::Implausible));
        assert_eq!(v.measure(&temp, 37.0, v.unit_match(&temp, "furlongs")), Err(DropReason::UnitUnknown));
    }

    #[test]
    fn answers_normalise_acvpu_from_text_loinc_and_snomed() {
        let v = Vocabulary::shipped();
        let c = v.lookup(CodeSystem::Loinc, "67775-7").unwrap().clone();
        for (text, want) in [
            ("Alert", "A"),
            ("new  confusion", "C"),
            ("CONFUSED", "C"),
            ("Voice", "V"),
            ("pain", "P"),
            ("Unresponsive", "U"),
            ("LA9340-6", "A"),
            ("LA6560-2", "C"),
            ("LA17108-4", "V"),
            ("LA17107-6", "P"),
            ("LA9343-0", "U"),
            ("248234008", "A"),
            ("130987000", "C"),
            ("300202002", "V"),
            ("450847001", "P"),
            ("422768004", "U"),
            ("u", "U"),
        ] {
            assert_eq!(v.answer(&c, text), Some(want), "{text}");
        }
        assert_eq!(v.answer(&c, "drowsy"), None);
        assert_eq!(v.answer(&c, "3"), None);
    }

    #[test]
    fn a_table_that_contradicts_itself_is_refused() {
        let row = |extra: &str| {
            format!(
                r#"{{ "observations": [ {{ "name": "x", "unit": "%", "type": "numeric", "mdc": [], "loinc": ["1-1"]{extra} }} ], "units": [], "conversions": [] }}"#
            )
        };
        assert!(Vocabulary::from_json(&row(r#", "plausible": [0, 100]"#)).is_ok());
        let err = |json: &str| Vocabulary::from_json(json).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err(&row("")).contains("needs `plausible"), "a numeric analyte without a plausibility range");
        assert!(err(&row(r#", "plausible": [100, 0]"#)).contains("needs `plausible"));
        let answers = r#"{ "observations": [ { "name": "c", "unit": "", "type": "text", "mdc": [], "loinc": ["1-1"], "answers": { "A": ["alert"], "V": ["ALERT"] } } ], "units": [], "conversions": [] }"#;
        assert!(err(answers).contains("means both"));
        let twice = r#"{ "observations": [ { "name": "a", "unit": "%", "type": "numeric", "mdc": [], "loinc": ["1-1"], "plausible": [0, 1] }, { "name": "b", "unit": "%", "type": "numeric", "mdc": [], "loinc": ["1-1"], "plausible": [0, 1] } ], "units": [], "conversions": [] }"#;
        assert!(err(twice).contains("maps to both"));
        assert!(err(&row(r#", "plausable": [0, 100]"#)).contains("unknown field"), "a misspelt key is not ignored");
    }

    #[test]
    fn dropped_values_are_a_bounded_grid() {
        let v = Vocabulary::shipped();
        let d = DroppedValues::new(&v);
        d.count("fio2", DropReason::Implausible);
        d.count("fio2", DropReason::Implausible);
        d.count("not-a-name", DropReason::Implausible);
        assert_eq!(d.get("fio2", DropReason::Implausible), 2);
        assert_eq!(d.nonzero(), vec![("fio2", DropReason::Implausible, 2)]);
    }

    #[test]
    fn every_canonical_name_is_a_rule_trigger_and_back() {
        let v = Vocabulary::shipped();
        let kinds = ["order", "administration", "allergy", "census", "merge"];
        let triggers: &[&str] = &crate::rules::KNOWN_TRIGGERS;
        for name in v.names() {
            assert!(triggers.contains(&name.as_str()), "{name} is mapped but no rule may trigger on it");
        }
        for t in triggers.iter().filter(|t| !kinds.contains(t)) {
            assert!(v.names().iter().any(|n| n == t), "trigger {t} names no analyte of observations.json");
        }
    }
}
