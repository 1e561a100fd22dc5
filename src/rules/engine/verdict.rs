//! What a rule returned (`alert(...)`, `resolve(...)`, a list of them, or nothing) as
//! verdicts: bounded findings, partial data, scores, and details written as JSON text when
//! first read.

use rhai::{Dynamic, Map};
use vigil_actors::{Details, RuleVerdict, Severity, WriteDetails};

use super::super::api::Verdict;
use super::super::scores::Scored;

/// What `evaluate` returned: nothing, one verdict, or an array of verdicts (one per finding).
pub(super) fn verdicts(result: Dynamic) -> Result<Vec<RuleVerdict>, String> {
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
                details: details_json(details),
            })
        }
        Verdict::Resolve { finding: f, reason, details } => Ok(RuleVerdict::Resolve {
            finding: finding(f)?,
            reason: reason.to_string(),
            partial: is_partial(&details),
            details: details_json(details),
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

/// A rule's details, written as JSON text straight from the script's values when first read:
/// a verdict nobody reads (a score rule resolving with no alert open) is never written.
fn details_json(details: Dynamic) -> Details {
    Details::lazy(ScriptDetails(details))
}

/// The script value a rule returned as its details, written by [`DynJson`] on first read.
/// `DynJson` has no failing case for what a script can hold (an unknown custom type is written
/// through Rhai's serde as its type name).
struct ScriptDetails(Dynamic);

impl WriteDetails for ScriptDetails {
    fn write_json(&self) -> Result<Box<serde_json::value::RawValue>, serde_json::Error> {
        serde_json::value::to_raw_value(&DynJson(&self.0))
    }

    fn field(&self, name: &str) -> Option<serde_json::Value> {
        let value = if let Some(map) = self.0.read_lock::<Map>() {
            map.get(name)?.clone()
        } else if let Some(scored) = self.0.read_lock::<Scored>() {
            scored.field(name)?
        } else {
            // Not an object when written: no fields.
            return None;
        };
        serde_json::to_value(DynJson(&value)).ok()
    }
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
