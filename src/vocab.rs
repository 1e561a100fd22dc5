//! The canonical vocabulary (schemas/codes/observations.json): maps IEEE 11073 MDC and LOINC
//! codes to the names rules use, and converts units to the canonical UCUM unit. Built once
//! at start-up; lookups are hash-map reads on the ingest path.

use std::collections::HashMap;

use serde::Deserialize;

/// The table shipped with the binary.
pub const OBSERVATIONS_JSON: &str = include_str!("../schemas/codes/observations.json");

#[derive(Deserialize)]
struct Table {
    observations: Vec<Row>,
    units: Vec<UnitRow>,
}

#[derive(Deserialize)]
struct Row {
    name: String,
    unit: String,
    mdc: Vec<String>,
    loinc: Vec<String>,
}

#[derive(Deserialize)]
struct UnitRow {
    from: Vec<String>,
    to: String,
    scale: f64,
    offset: f64,
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
    /// Canonical UCUM unit.
    pub unit: String,
}

/// The loaded table.
pub struct Vocabulary {
    codes: HashMap<(CodeSystem, String), Canonical>,
    units: HashMap<String, (String, f64, f64)>,
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
        for row in table.observations {
            let canonical = Canonical { name: row.name, unit: row.unit };
            for code in row.mdc {
                codes.insert((CodeSystem::Mdc, code), canonical.clone());
            }
            for code in row.loinc {
                codes.insert((CodeSystem::Loinc, code), canonical.clone());
            }
        }
        let mut units = HashMap::new();
        for row in table.units {
            for from in row.from {
                units.insert(from, (row.to.clone(), row.scale, row.offset));
            }
        }
        Ok(Vocabulary { codes, units })
    }

    /// The canonical name for a code.
    pub fn lookup(&self, system: CodeSystem, code: &str) -> Option<&Canonical> {
        self.codes.get(&(system, code.to_string()))
    }

    /// Whether `unit` is one the table converts from.
    pub fn knows_unit(&self, unit: &str) -> bool {
        self.units.contains_key(unit)
    }

    /// `value` in `unit` expressed in `canonical.unit`; `None` when the unit is known to be
    /// different and no conversion exists (the value is then not used, never guessed).
    pub fn convert(&self, canonical: &Canonical, value: f64, unit: &str) -> Option<f64> {
        match self.units.get(unit) {
            Some((to, scale, offset)) if *to == canonical.unit => Some(value * scale + offset),
            Some(_) => None,
            // Units we do not convert are the canonical ones written any of several ways
            // (MDC unit codes, `/min`, `mmHg`); a value with an unknown unit is taken as sent.
            None => Some(value),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_table_maps_mdc_and_loinc_and_converts_fahrenheit() {
        let v = Vocabulary::shipped();
        assert_eq!(v.lookup(CodeSystem::Mdc, "151562").map(|c| c.name.as_str()), Some("rr"));
        assert_eq!(v.lookup(CodeSystem::Loinc, "8480-6").map(|c| c.name.as_str()), Some("sbp"));
        assert_eq!(v.lookup(CodeSystem::Mdc, "150033").map(|c| c.name.as_str()), Some("sbp"));
        let temp = v.lookup(CodeSystem::Loinc, "8310-5").unwrap();
        let c = v.convert(temp, 101.3, "[degF]").unwrap();
        assert!((c - 38.5).abs() < 0.01, "{c}");
        let sbp = v.lookup(CodeSystem::Mdc, "150021").unwrap();
        assert_eq!(v.convert(sbp, 120.0, "266016"), Some(120.0));
        assert_eq!(v.convert(sbp, 120.0, "[degF]"), None, "a temperature unit on a pressure is refused");
    }
}
