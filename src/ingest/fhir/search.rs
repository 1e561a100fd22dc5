//! `GET /fhir/Observation?patient=&code=&date=`: a patient's recent values from the store, as a
//! searchset Bundle, for a console user who may see the patient (the same check and audit as
//! the console's patient view). Values are in Vigil's canonical units, with the code they
//! were sent under.

use axum::http::StatusCode;
use serde_json::{Value, json};
use time::format_description::well_known::Rfc3339;
use vigil_actors::{EventKind, Observation, PatientId, ResultStatus};

use super::FhirFeed;
use super::json::El;
use super::outcome::{FhirError, Issue};
use super::resources::{date_time, issued_patient_id, percent_decode};
use crate::auth::{Claims, Role};
use crate::http::AppState;
use crate::vocab::CodeSystem;

/// Search reaches this far back at most.
pub const SEARCH_WINDOW: time::Duration = time::Duration::days(7);

/// The searchset Bundle.
pub async fn observations(
    state: &AppState,
    feed: &FhirFeed,
    claims: &Claims,
    query: &[(String, String)],
) -> Result<Value, FhirError> {
    if claims.role == Role::Gateway {
        return Err(FhirError::new(
            StatusCode::FORBIDDEN,
            Issue::error("forbidden", "", "a gateway token writes; it reads no patient data"),
        ));
    }
    let param = |name: &str| param(query, name);
    let known = ["patient", "subject", "patient:identifier", "subject:identifier", "code", "date", "_count"];
    if let Some((unknown, _)) = query.iter().find(|(k, _)| !known.contains(&k.as_str())) {
        return Err(FhirError::bad_request(Issue::error(
            "not-supported",
            format!("Observation?{unknown}"),
            "unsupported search parameter; see /fhir/metadata",
        )));
    }
    let patient = patient_of(feed, query)?;
    let now = feed.ingress().clock().now();
    let (mut since, mut until) = (now - vigil_actors::patient::WINDOW_MAX_AGE, None);
    for date in param("date") {
        let (prefix, text) = match date.get(..2) {
            Some(p @ ("ge" | "gt" | "le" | "lt" | "eq")) => (p, date.get(2..).unwrap_or("")),
            _ => ("eq", date),
        };
        let holder = json!({ "date": text });
        let at = date_time(feed.mapper(), &El::root(&holder, "Observation?date"), "date")
            .map_err(FhirError::bad_request)?
            .ok_or_else(|| FhirError::bad_request(Issue::invalid("Observation?date", "a date is required")))?;
        match prefix {
            "ge" | "gt" => since = at,
            "le" | "lt" => until = Some(at),
            _ => {
                since = at;
                until = Some(at + time::Duration::days(1));
            }
        }
    }
    since = since.max(now - SEARCH_WINDOW);
    let count = match param("_count").first() {
        Some(n) => n
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| FhirError::bad_request(Issue::invalid("Observation?_count", "must be 1 to 1000")))?,
        None => 100,
    };
    let codes: Vec<String> = param("code").iter().flat_map(|c| c.split(',')).map(percent_decode).collect();
    // The console's own check: visible to this user, audited either way.
    state.console.patient_summary(claims, &patient.0).await.map_err(|e| match e {
        crate::console::ConsoleError::Unavailable => FhirError::retry(),
        e => FhirError::new(StatusCode::NOT_FOUND, Issue::error("not-found", "Observation?patient", e.to_string())),
    })?;
    let events = feed.events.events_since(&patient, since).await.map_err(|e| {
        tracing::error!(error = %e, "fhir search: store unreadable");
        FhirError::retry()
    })?;
    let mut found: Vec<&Observation> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Observations { observations } => Some(observations),
            _ => None,
        })
        .flatten()
        .filter(|o| o.status != ResultStatus::Deleted)
        .filter(|o| o.observed_at >= since && until.is_none_or(|u| o.observed_at <= u))
        .filter(|o| codes.is_empty() || codes.iter().any(|c| code_matches(c, o)))
        .collect();
    found.sort_by_key(|o| std::cmp::Reverse(o.observed_at));
    found.truncate(count);
    let entries: Vec<Value> = found.iter().map(|o| json!({ "resource": resource(&patient, o) })).collect();
    Ok(json!({ "resourceType": "Bundle", "type": "searchset", "total": entries.len(), "entry": entries }))
}

/// The values of a query parameter.
fn param<'q>(query: &'q [(String, String)], name: &str) -> Vec<&'q str> {
    query.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str()).collect()
}

fn patient_of(feed: &FhirFeed, query: &[(String, String)]) -> Result<PatientId, FhirError> {
    let param = |name: &str| param(query, name);
    for name in ["patient", "subject"] {
        if let Some(value) = param(name).first() {
            let reference = if value.starts_with("Patient/") { value.to_string() } else { format!("Patient/{value}") };
            return issued_patient_id(&reference).ok_or_else(|| {
                FhirError::bad_request(Issue::invalid(format!("Observation?{name}"), "not a patient id Vigil issued"))
            });
        }
    }
    for name in ["patient:identifier", "subject:identifier"] {
        if let Some(token) = param(name).first() {
            let token = percent_decode(token);
            let (system, value) = token.split_once('|').ok_or_else(|| {
                FhirError::bad_request(Issue::invalid(format!("Observation?{name}"), "must be system|value"))
            })?;
            let authority = feed.mapper().authorities().of_system(system).ok_or_else(|| {
                FhirError::new(
                    StatusCode::NOT_FOUND,
                    Issue::error(
                        "not-found",
                        format!("Observation?{name}"),
                        "the system names no authority Vigil knows",
                    ),
                )
            })?;
            let key = vigil_actors::PatientKey { authority, mrn: vigil_actors::Phi(value.to_string()) };
            return Ok(feed.mapper().patient_id(&key));
        }
    }
    Err(FhirError::bad_request(Issue::required("Observation?patient")))
}

/// `system|code`, a bare code, or a canonical name.
fn code_matches(wanted: &str, o: &Observation) -> bool {
    let (sent_system, sent_code) = o.source_code.split_once('|').unwrap_or(("", &o.source_code));
    match wanted.split_once('|') {
        Some((system, code)) => {
            code == sent_code && (system.is_empty() || CodeSystem::parse(system) == CodeSystem::parse(sent_system))
        }
        None => wanted == o.name || wanted == sent_code,
    }
}

fn system_uri(system: &str) -> &str {
    match CodeSystem::parse(system) {
        Some(CodeSystem::Mdc) => "urn:iso:std:iso:11073:10101",
        Some(CodeSystem::Loinc) => "http://loinc.org",
        None => system,
    }
}

fn resource(patient: &PatientId, o: &Observation) -> Value {
    use sha2::Digest;
    let (system, code) = o.source_code.split_once('|').unwrap_or(("", &o.source_code));
    let effective = o.observed_at.format(&Rfc3339).unwrap_or_default();
    let id_source = format!("{patient}|{}|{}|{effective}", o.name, o.source_code);
    let mut r = json!({
        "resourceType": "Observation",
        "id": hex::encode(&sha2::Sha256::digest(id_source.as_bytes())[..16]),
        "status": match o.status {
            ResultStatus::Final => "final",
            ResultStatus::Preliminary => "preliminary",
            ResultStatus::Corrected => "corrected",
            ResultStatus::Deleted => "entered-in-error",
        },
        "code": { "coding": [{ "system": system_uri(system), "code": code }], "text": o.name },
        "subject": { "reference": format!("Patient/{patient}") },
        "effectiveDateTime": effective,
    });
    match (o.value, &o.text) {
        (Some(v), _) => {
            r["valueQuantity"] =
                json!({ "value": v, "unit": o.unit, "system": "http://unitsofmeasure.org", "code": o.unit });
        }
        (None, Some(text)) => r["valueString"] = json!(text),
        (None, None) => {}
    }
    if let Some(device) = &o.device {
        r["device"] = json!({ "display": device });
    }
    r
}
