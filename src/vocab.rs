//! The canonical vocabulary (schemas/codes/observations.json): maps IEEE 11073 MDC and LOINC
//! codes to the names rules use, and converts units to the canonical UCUM unit, per analyte.
//! Built once at start-up; lookups are hash-map reads on the ingest path.

use std::collections::{HashMap, HashSet};

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
struct Row {
    name: String,
    unit: String,
    #[serde(rename = "type")]
    value_type: ValueType,
    mdc: Vec<String>,
    loinc: Vec<String>,
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

/// Which code system an observation code belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CodeSystem {
    /// IEEE 11073-10101 (HL7 v2 coding system `MDC`, FHIR `urn:iso:std:iso:11073:10101`).
    Mdc,
    /// LOINC (HL7 v2 `LN`, FHIR `http://loinc.org`).
    Loinc,
}

impl CodeSystem {
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
}

/// How a value's unit relates to its analyte's canonical unit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum UnitMatch {
    /// The canonical unit, or no unit sent: the value is used as sent.
    Canonical,
    /// Convert with `value * scale + offset`.
    Convert {
        /// Multiplier.
        scale: f64,
        /// Added after scaling.
        offset: f64,
    },
    /// A unit we know that is wrong for this analyte: the value must not be used.
    Incompatible,
    /// A unit the table does not know.
    Unknown,
}

/// The loaded table.
pub struct Vocabulary {
    codes: HashMap<(CodeSystem, String), Canonical>,
    /// Any spelling -> its canonical UCUM unit.
    aliases: HashMap<String, String>,
    /// (analyte name, unit as sent) -> (scale, offset).
    conversions: HashMap<(String, String), (f64, f64)>,
    /// Every unit spelling the table mentions.
    known: HashSet<String>,
}

impl Vocabulary {
    /// The shipped table. It is compiled in and tested, so failing here is a build defect.
    pub fn shipped() -> Self {
        Self::from_json(OBSERVATIONS_JSON).unwrap_or_else(|e| panic!("shipped vocabulary: {e}"))
    }

    /// Parse a table.
    pub fn from_json(json: &str) -> Result<Self, serde_json::Error> {
        let table: Table = serde_json::from_str(json)?;
        let mut codes = HashMap::new();
        let mut known = HashSet::new();
        let mut aliases = HashMap::new();
        for row in table.observations {
            if !row.unit.is_empty() {
                known.insert(row.unit.clone());
                aliases.insert(row.unit.clone(), row.unit.clone());
            }
            let canonical = Canonical { name: row.name, unit: row.unit, value_type: row.value_type };
            for code in row.mdc {
                codes.insert((CodeSystem::Mdc, code), canonical.clone());
            }
            for code in row.loinc {
                codes.insert((CodeSystem::Loinc, code), canonical.clone());
            }
        }
        for row in table.units {
            known.insert(row.unit.clone());
            aliases.insert(row.unit.clone(), row.unit.clone());
            for alias in row.aliases {
                known.insert(alias.clone());
                aliases.insert(alias, row.unit.clone());
            }
        }
        let mut conversions = HashMap::new();
        for row in table.conversions {
            for name in &row.names {
                // A conversion must land on the analyte's canonical unit, or the table is wrong.
                if !codes.values().any(|c: &Canonical| c.name == *name && c.unit == row.to) {
                    return Err(serde::de::Error::custom(format!("conversion for {name:?} targets {:?}, not its canonical unit", row.to)));
                }
                for from in &row.from {
                    known.insert(from.clone());
                    conversions.insert((name.clone(), from.clone()), (row.scale, row.offset));
                }
            }
        }
        Ok(Vocabulary { codes, aliases, conversions, known })
    }

    /// The canonical name for a code.
    pub fn lookup(&self, system: CodeSystem, code: &str) -> Option<&Canonical> {
        self.codes.get(&(system, code.to_string()))
    }

    /// Whether `unit` is one the table mentions (canonical, alias or convertible).
    pub fn knows_unit(&self, unit: &str) -> bool {
        self.known.contains(unit)
    }

    /// How `unit` relates to `canonical.unit`. Conversions are per analyte: `mmol/L` converts
    /// for glucose and is incompatible for creatinine.
    pub fn unit_match(&self, canonical: &Canonical, unit: &str) -> UnitMatch {
        let unit = unit.trim();
        if unit.is_empty() {
            return UnitMatch::Canonical;
        }
        if let Some(&(scale, offset)) = self.conversions.get(&(canonical.name.clone(), unit.to_string())) {
            return UnitMatch::Convert { scale, offset };
        }
        match self.aliases.get(unit) {
            Some(to) if *to == canonical.unit => UnitMatch::Canonical,
            _ if self.known.contains(unit) => UnitMatch::Incompatible,
            _ => UnitMatch::Unknown,
        }
    }

    /// `value` in `unit` expressed in `canonical.unit`; `None` when the unit is not the
    /// canonical one and no conversion for this analyte exists (the value is then not used,
    /// never guessed).
    pub fn convert(&self, canonical: &Canonical, value: f64, unit: &str) -> Option<f64> {
        match self.unit_match(canonical, unit) {
            UnitMatch::Canonical => Some(value),
            UnitMatch::Convert { scale, offset } => Some(value * scale + offset),
            UnitMatch::Incompatible | UnitMatch::Unknown => None,
        }
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
}
