//! Observation values, whatever the feed: a code to its canonical analyte, a unit to the
//! canonical one, a number checked for plausibility, a coded answer normalised, a reference
//! range converted. HL7 OBX rows (`oru`) and FHIR Observations and their components
//! (`ingest::fhir`) take this one path through the vocabulary (schemas/codes), so a value
//! means the same whichever feed carried it.

use super::Mapper;
use crate::vocab::{Canonical, CodeSystem, DropReason, Measured, UnitMatch};

impl Mapper {
    /// The canonical analyte of the first `(system, code)` the vocabulary knows, with
    /// `system|code` as sent, for audit. Systems are HL7 coding-system names (`MDC`, `LN`) or
    /// FHIR URIs (`urn:iso:std:iso:11073:10101`, `http://loinc.org`).
    pub fn analyte<'s>(&self, codings: impl IntoIterator<Item = (&'s str, &'s str)>) -> Option<(&Canonical, String)> {
        codings.into_iter().find_map(|(system, code)| {
            let canonical = self.vocab.lookup(CodeSystem::parse(system.trim())?, code.trim())?;
            Some((canonical, [system, code].join("|")))
        })
    }

    /// How the units sent relate to the analyte's canonical unit: the first spelling that is
    /// canonical or convertible for it; `Missing` when none is sent; else `Incompatible` when
    /// one is a known unit, `Unknown` otherwise.
    pub fn unit_of<'s>(&self, canonical: &Canonical, units: impl IntoIterator<Item = &'s str>) -> UnitMatch {
        let mut verdict = UnitMatch::Missing;
        for unit in units {
            match self.vocab.unit_match(canonical, unit) {
                m @ (UnitMatch::Canonical | UnitMatch::Convert { .. }) => return m,
                UnitMatch::Incompatible => verdict = UnitMatch::Incompatible,
                UnitMatch::Unknown if verdict == UnitMatch::Missing => verdict = UnitMatch::Unknown,
                UnitMatch::Unknown | UnitMatch::Missing => {}
            }
        }
        verdict
    }

    /// A number in the canonical unit, checked against the plausibility range; or why it
    /// cannot be used.
    pub fn measure(&self, canonical: &Canonical, value: f64, unit: UnitMatch) -> Result<Measured, DropReason> {
        self.vocab.measure(canonical, value, unit)
    }

    /// Whether a text analyte has a list of answers (ACVPU): values outside it are dropped.
    pub fn has_answers(&self, canonical: &Canonical) -> bool {
        self.vocab.has_answers(canonical)
    }

    /// The normalised answer the first matching candidate (a code or a display text, in the
    /// order the sender gave them) stands for; `UnknownAnswer` when none does.
    pub fn answer(&self, canonical: &Canonical, candidates: &[String]) -> Result<String, DropReason> {
        candidates
            .iter()
            .find_map(|c| self.vocab.answer(canonical, c))
            .map(str::to_string)
            .ok_or(DropReason::UnknownAnswer)
    }

    /// Count a value of `name` that was not used (`vigil_observations_dropped_total`).
    pub fn count_dropped(&self, name: &str, reason: DropReason) {
        self.dropped.count(name, reason);
    }
}

/// A reference range in the canonical unit: `low-high`, `>low`, `<high` (and `<=`/`>=`)
/// converted; other shapes kept as sent when no conversion applies, dropped when one does (a
/// range in the wrong unit would mislead).
pub fn reference_range(text: &str, convert: &dyn Fn(f64) -> f64) -> Option<String> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    let num = |s: &str| s.trim().parse::<f64>().ok().filter(|v| v.is_finite()).map(|v| trim_float(convert(v)));
    for c in [">=", "<=", ">", "<"] {
        if let Some(rest) = text.strip_prefix(c) {
            return num(rest).map(|v| format!("{c}{v}"));
        }
    }
    // `low-high`; the split skips a leading sign.
    if let Some(i) = text.get(1..).and_then(|t| t.find('-')).map(|i| i + 1) {
        let (low, high) = (text.get(..i)?, text.get(i + 1..)?);
        if let (Some(l), Some(h)) = (num(low), num(high)) {
            return Some(format!("{l}-{h}"));
        }
    }
    if let Some(v) = num(text) {
        return Some(v);
    }
    (convert(1.0) == 1.0 && convert(0.0) == 0.0).then(|| text.to_string())
}

/// A float without noise: up to 4 decimals, trailing zeros removed.
pub fn trim_float(v: f64) -> String {
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" { "0".into() } else { s.to_string() }
}
