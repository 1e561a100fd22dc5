//! `GET /fhir/metadata`: the CapabilityStatement, generated from [`super::RESOURCES`] (the
//! table the routes dispatch on) and the limits in force, so it lists exactly what is
//! supported.

use serde_json::{Value, json};

use super::{RESOURCES, Resend};
use crate::config::FhirSettings;

/// Search parameters of `GET /fhir/Observation`, as [`super::search`] reads them.
pub const OBSERVATION_SEARCH: &[(&str, &str, &str)] = &[
    ("patient", "reference", "The patient: Patient/<id> as Vigil issued it, or patient:identifier=system|value"),
    ("code", "token", "system|code or code (MDC, LOINC), or Vigil's canonical name (hr, rr, sbp, ...)"),
    ("date", "date", "Effective time with ge, gt, le, lt prefixes; at most the last 7 days are kept for search"),
    ("_count", "number", "At most this many results, newest first (default 100, at most 1000)"),
];

/// The CapabilityStatement.
pub fn statement(settings: &FhirSettings) -> Value {
    let resources: Vec<Value> = RESOURCES
        .iter()
        .map(|r| {
            let mut interactions = vec![json!({ "code": "create" })];
            let mut resource = json!({
                "type": r.name,
                "documentation": r.documentation,
                "conditionalCreate": true,
            });
            if r.name == "Observation" {
                interactions.push(json!({ "code": "search-type" }));
                resource["searchParam"] = OBSERVATION_SEARCH
                    .iter()
                    .map(|(name, kind, doc)| json!({ "name": name, "type": kind, "documentation": doc }))
                    .collect();
            }
            resource["interaction"] = Value::Array(interactions);
            if r.resend == Resend::Once {
                resource["documentation"] = json!(format!(
                    "{} A resend (If-None-Exist, else the first identifier, else identical content) is stored once.",
                    r.documentation
                ));
            }
            resource
        })
        .collect();
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-01-01",
        "publisher": "Vigil",
        "kind": "instance",
        "software": { "name": "Vigil", "version": env!("CARGO_PKG_VERSION") },
        "implementation": { "description": "Vigil real-time clinical alerting: FHIR R4 ingest" },
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [{
            "mode": "server",
            "documentation": format!(
                "Writes need a bearer token with the gateway role. Limits: body {} bytes, JSON depth {}, {} \
                 entries per Bundle; $stream lines of {} bytes, {} lines per request, {} in flight. Answers \
                 are sent once the data is durable.",
                settings.max_body_bytes,
                settings.max_depth,
                settings.max_bundle_entries,
                settings.stream_max_line_bytes,
                settings.stream_max_lines,
                settings.stream_in_flight
            ),
            "security": {
                "cors": false,
                "description": "OAuth2-style bearer JWT (Authorization: Bearer); `vigil token --role gateway` issues one",
            },
            "resource": resources,
            "interaction": [{ "code": "transaction" }, { "code": "batch" }],
            "operation": [{
                "name": "stream",
                "definition": "urn:vigil:OperationDefinition:stream",
                "documentation": "POST /fhir/$stream with application/fhir+ndjson: one Observation per line, one \
                                  answer line per input line, in order, each sent once durable",
            }],
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_statement_lists_exactly_the_table() {
        let s = statement(&FhirSettings::default());
        let listed: Vec<&str> =
            s["rest"][0]["resource"].as_array().unwrap().iter().map(|r| r["type"].as_str().unwrap()).collect();
        let table: Vec<&str> = RESOURCES.iter().map(|r| r.name).collect();
        assert_eq!(listed, table);
        assert_eq!(s["fhirVersion"], "4.0.1");
        let observation = &s["rest"][0]["resource"][0];
        assert_eq!(observation["interaction"][1]["code"], "search-type");
        assert_eq!(observation["searchParam"].as_array().unwrap().len(), OBSERVATION_SEARCH.len());
        assert!(s["rest"][0]["resource"][1].get("searchParam").is_none(), "search on Observation only");
    }

    /// docs/fhir.md shows the statement with the default limits: it must be this one.
    #[test]
    fn the_documented_statement_is_the_generated_one() {
        let doc = include_str!("../../../docs/fhir.md");
        let block = doc
            .split("<!-- capability-statement -->")
            .nth(1)
            .and_then(|rest| rest.split("```json").nth(1))
            .and_then(|rest| rest.split("```").next())
            .unwrap_or_default();
        let documented: Value = serde_json::from_str(block).unwrap_or(Value::Null);
        let generated = statement(&FhirSettings::default());
        assert!(
            documented == generated,
            "docs/fhir.md is out of date; its CapabilityStatement block should read:\n{}",
            serde_json::to_string_pretty(&generated).unwrap_or_default()
        );
    }
}
