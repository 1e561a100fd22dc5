//! The functions rules call: the patient view (`p.latest(name, max_age_s)`, ...) and the
//! verdict constructors `alert(severity, summary, details)` and `resolve(reason)`.

use std::sync::Arc;

use rhai::{Dynamic, Engine, ImmutableString, Map};
use vigil_actors::PatientView;

/// The patient as a rule sees it: values and location, never names or identifiers.
#[derive(Clone)]
pub struct RulePatient(pub Arc<PatientView>);

/// Key under which a verdict map records what it is.
pub const VERDICT_KEY: &str = "__verdict";

fn seconds(max_age: Dynamic) -> f64 {
    max_age.as_float().ok().or_else(|| max_age.as_int().ok().map(|i| i as f64)).unwrap_or(0.0)
}

/// Register the rule API on `engine`.
pub fn register(engine: &mut Engine) {
    engine.register_type_with_name::<RulePatient>("Patient");
    engine.register_fn("latest", |p: &mut RulePatient, name: &str, max_age: Dynamic| -> Dynamic {
        p.0.latest(name, seconds(max_age)).map_or(Dynamic::UNIT, Dynamic::from_float)
    });
    engine.register_fn("has", |p: &mut RulePatient, name: &str, max_age: Dynamic| -> bool {
        p.0.latest(name, seconds(max_age)).is_some()
    });
    engine.register_get("unit", |p: &mut RulePatient| -> ImmutableString {
        p.0.location.unit.as_str().into()
    });
    engine.register_get("sex", |p: &mut RulePatient| -> ImmutableString {
        p.0.sex.as_str().into()
    });
    engine.register_fn("alert", |severity: &str, summary: &str, details: Map| -> Map {
        let mut m = Map::new();
        m.insert(VERDICT_KEY.into(), "fire".into());
        m.insert("severity".into(), severity.into());
        m.insert("summary".into(), summary.into());
        m.insert("details".into(), details.into());
        m
    });
    engine.register_fn("resolve", |reason: &str| -> Map {
        let mut m = Map::new();
        m.insert(VERDICT_KEY.into(), "resolve".into());
        m.insert("reason".into(), reason.into());
        m
    });
}
