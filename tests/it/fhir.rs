//! The FHIR feed over real sockets: creates answered once durable and resends stored once,
//! one patient across HL7 and FHIR, a 1,000-Observation transaction stored atomically (or not
//! at all) and once, OperationOutcomes naming the element, the NDJSON stream, and the Python
//! `fhir.resources` client raising the same alerts as the equivalent HL7 message.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use vigil::auth::Role;
use vigil_loadtest::mllp::{MllpClient, ack_code};

use crate::support::*;

const SYSTEM: &str = "http://hospital.example.org/mrn";
const WAIT: Duration = Duration::from_secs(10);

async fn start(dir: &Path) -> vigil::app::Running {
    let mut cfg = config(dir);
    cfg.fhir.identifier_systems.insert("HOSP".into(), SYSTEM.into());
    vigil::app::start(&cfg).await.unwrap()
}

fn gateway(server: &vigil::app::Running) -> String {
    server.auth.issue("gw-1", Role::Gateway, Vec::new(), time::Duration::hours(1))
}

fn client() -> reqwest::Client {
    vigil::alerts::webhooks::install_tls_provider();
    reqwest::Client::new()
}

async fn post(
    http: &reqwest::Client,
    server: &vigil::app::Running,
    path: &str,
    token: &str,
    body: String,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut req = http
        .post(format!("http://{}{path}", server.http_addr))
        .bearer_auth(token)
        .header("content-type", "application/fhir+json")
        .body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    (status, headers, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn observation(mrn: &str, loinc: &str, value: f64, unit: &str, identifier: Option<&str>) -> Value {
    let mut o = json!({
        "resourceType": "Observation",
        "status": "final",
        "code": { "coding": [{ "system": "http://loinc.org", "code": loinc }] },
        "subject": { "identifier": { "system": SYSTEM, "value": mrn } },
        "effectiveDateTime": time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap(),
        "valueQuantity": { "value": value, "unit": unit },
    });
    if let Some(id) = identifier {
        o["identifier"] = json!([{ "system": "urn:ietf:rfc:3986", "value": id }]);
    }
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fhir_observation_is_answered_once_durable_and_a_resend_is_stored_once() {
    let dir = tempdir("fhir-create");
    let server = start(&dir).await;
    let (http, token) = (client(), gateway(&server));
    let obs = observation("MRN-F1", "9279-1", 24.0, "/min", Some("urn:uuid:obs-1")).to_string();
    let (status, headers, body) = post(&http, &server, "/fhir/Observation", &token, obs.clone(), &[]).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(headers["content-type"], "application/fhir+json");
    let location = headers["location"].to_str().unwrap().to_string();
    assert!(location.starts_with("Observation/"), "{location}");
    assert_eq!(body["resourceType"], "OperationOutcome");
    let (status, headers, _) = post(&http, &server, "/fhir/Observation", &token, obs, &[]).await;
    assert_eq!((status, headers["location"].to_str().unwrap()), (200, location.as_str()), "a resend: same answer");
    // If-None-Exist recognises a resend whatever the body's identifier.
    let conditional = observation("MRN-F1", "8867-4", 88.0, "/min", None).to_string();
    let ine = [("if-none-exist", "identifier=urn:ietf:rfc:3986|hr-7")];
    let (first, _, _) = post(&http, &server, "/fhir/Observation", &token, conditional.clone(), &ine).await;
    let (again, _, _) = post(&http, &server, "/fhir/Observation", &token, conditional, &ine).await;
    assert_eq!((first, again), (201, 200));
    let (status, _, body) =
        post(&http, &server, "/fhir/Observation", &token, "{}".into(), &[("prefer", "return=minimal")]).await;
    assert_eq!((status, body["issue"][0]["expression"][0].as_str()), (400, Some("resourceType")));
    let nurse = server.auth.issue("n-1", Role::Nurse, vec!["*".into()], time::Duration::hours(1));
    let (status, _, body) = post(&http, &server, "/fhir/Observation", &nurse, "{}".into(), &[]).await;
    assert_eq!((status, body["issue"][0]["code"].as_str()), (403, Some("forbidden")), "only gateways write");
    server.shutdown().await;
    let events = stored_events(&dir, "HOSP", "MRN-F1").await;
    assert_eq!(events.len(), 2, "each resource stored once");
    assert!(events.iter().all(|e| e.message.as_ref().is_some_and(|m| m.sender == "gw-1")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hl7_and_fhir_for_one_patient_land_on_one_patient_and_search_returns_both() {
    let dir = tempdir("fhir-one-patient");
    let server = start(&dir).await;
    let (http, token) = (client(), gateway(&server));
    let mut mllp = MllpClient::connect(&server.mllp_addr.to_string(), WAIT).await.unwrap();
    let ack = mllp.send(&septic_oru("ONE-1", "MRN-BOTH", "Both")).await.unwrap();
    assert_eq!(ack_code(&ack), Some("AA"), "{ack}");
    let spo2 = observation("MRN-BOTH", "59408-5", 91.0, "%", Some("urn:uuid:spo2-1"));
    let (status, _, body) = post(&http, &server, "/fhir/Observation", &token, spo2.to_string(), &[]).await;
    assert_eq!(status, 201, "{body}");
    let index = blind_index(&dir);
    let id = index.patient_id("HOSP", "MRN-BOTH");
    let rrt = server.auth.issue("rrt-1", Role::Rrt, vec!["ICU".into()], time::Duration::hours(1));
    let view: Value = http
        .get(format!("http://{}/api/patients/{id}", server.http_addr))
        .bearer_auth(&rrt)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
        .parse::<Value>()
        .unwrap();
    assert_eq!(view["latest"]["rr"]["value"], 26.0, "HL7 value in the patient view: {view}");
    assert_eq!(view["latest"]["spo2"]["value"], 91.0, "FHIR value in the same patient view");
    let search = |query: String, token: String| {
        let http = http.clone();
        let url = format!("http://{}/fhir/Observation?{query}", server.http_addr);
        async move {
            let resp = http.get(url).bearer_auth(token).send().await.unwrap();
            (resp.status().as_u16(), serde_json::from_str::<Value>(&resp.text().await.unwrap()).unwrap())
        }
    };
    let (status, bundle) = search(format!("patient=Patient/{id}"), rrt.clone()).await;
    assert_eq!(status, 200, "{bundle}");
    let codes: Vec<&str> =
        bundle["entry"].as_array().unwrap().iter().map(|e| e["resource"]["code"]["text"].as_str().unwrap()).collect();
    for name in ["rr", "sbp", "hr", "spo2"] {
        assert!(codes.contains(&name), "{name} missing from {codes:?}");
    }
    let (_, only) =
        search(format!("patient:identifier={SYSTEM}%7CMRN-BOTH&code=http://loinc.org%7C59408-5"), rrt).await;
    assert_eq!(only["total"], 1, "{only}");
    assert_eq!(only["entry"][0]["resource"]["valueQuantity"]["value"], 91.0);
    let (status, _) = search(format!("patient=Patient/{id}"), token).await;
    assert_eq!(status, 403, "a gateway reads no patient data");
    let listed = server.auth.issue("gw-2", Role::Gateway, vec!["*".into()], time::Duration::hours(1));
    let resp =
        http.get(format!("http://{}/api/patients/{id}", server.http_addr)).bearer_auth(&listed).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 404, "not even with units in its token");
    // A logical reference to the Patient as Vigil issued it resolves to the same patient.
    let mut by_id = observation("MRN-BOTH", "8310-5", 38.9, "Cel", Some("urn:uuid:temp-1"));
    by_id["subject"] = json!({ "reference": format!("Patient/{id}") });
    let (status, _, body) = post(&http, &server, "/fhir/Observation", &gateway(&server), by_id.to_string(), &[]).await;
    assert_eq!(status, 201, "{body}");
    server.shutdown().await;
    let events = stored_events(&dir, "HOSP", "MRN-BOTH").await;
    assert_eq!(events.len(), 3, "HL7 and FHIR events under one patient id");
}

fn transaction(mrn: &str, n: usize, tag: &str) -> Value {
    let entries: Vec<Value> = (0..n)
        .map(|i| {
            json!({
                "fullUrl": format!("urn:uuid:{tag}-{i}"),
                "resource": observation(mrn, "8867-4", 60.0 + (i % 60) as f64, "/min", Some(&format!("{tag}-{i}"))),
                "request": { "method": "POST", "url": "Observation" },
            })
        })
        .collect();
    json!({ "resourceType": "Bundle", "type": "transaction", "identifier": { "system": "urn:ietf:rfc:3986", "value": tag }, "entry": entries })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_of_1000_observations_is_stored_atomically_or_not_at_all_and_once() {
    let dir = tempdir("fhir-transaction");
    let server = start(&dir).await;
    let (http, token) = (client(), gateway(&server));
    let mut bad = transaction("MRN-TX", 1000, "tx-bad");
    bad["entry"][737]["resource"]["valueQuantity"]["unit"] = json!("furlongs");
    let (status, _, body) = post(&http, &server, "/fhir", &token, bad.to_string(), &[]).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["issue"][0]["expression"][0], "Bundle.entry[737].resource.valueQuantity.unit");
    assert_eq!(body["issue"].as_array().unwrap().len(), 1, "only the invalid entry is named");

    let good = transaction("MRN-TX", 1000, "tx-good").to_string();
    let (status, _, body) = post(&http, &server, "/fhir", &token, good.clone(), &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["type"], "transaction-response");
    let entries = body["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 1000);
    assert!(entries.iter().all(|e| e["response"]["status"] == "201 Created"));
    let (status, _, body) = post(&http, &server, "/fhir", &token, good, &[]).await;
    assert_eq!(status, 200);
    assert!(body["entry"].as_array().unwrap().iter().all(|e| e["response"]["status"] == "200 OK"), "a resend");

    let batch = json!({ "resourceType": "Bundle", "type": "batch", "entry": [
        { "resource": observation("MRN-BATCH", "8867-4", 70.0, "/min", Some("b-1")), "request": { "method": "POST", "url": "Observation" } },
        { "resource": observation("MRN-BATCH", "8867-4", 70.0, "furlongs", Some("b-2")), "request": { "method": "POST", "url": "Observation" } },
        { "resource": observation("MRN-BATCH", "8867-4", 70.0, "/min", Some("b-3")), "request": { "method": "PUT", "url": "Observation/x" } },
    ]});
    let (status, _, body) = post(&http, &server, "/fhir", &token, batch.to_string(), &[]).await;
    assert_eq!(status, 200, "{body}");
    let statuses: Vec<&str> =
        body["entry"].as_array().unwrap().iter().map(|e| e["response"]["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["201 Created", "422 Unprocessable Entity", "422 Unprocessable Entity"]);
    server.shutdown().await;

    let events = stored_events(&dir, "HOSP", "MRN-TX").await;
    assert_eq!(events.len(), 1000, "every entry stored once; the refused Bundle stored nothing");
    let messages: std::collections::BTreeSet<String> =
        events.iter().map(|e| e.message.as_ref().map(|m| m.id.clone()).unwrap_or_default()).collect();
    assert_eq!(
        messages.into_iter().collect::<Vec<_>>(),
        ["Bundle?identifier=urn:ietf:rfc:3986|tx-good"],
        "one message"
    );
    assert_eq!(stored_events(&dir, "HOSP", "MRN-BATCH").await.len(), 1, "batch entries stand alone");
}

/// A Bundle entry: POST of `resource`, conditional on `if_none_exist` when given.
fn entry(resource: Value, if_none_exist: Option<&str>) -> Value {
    let mut request = json!({ "method": "POST", "url": "Observation" });
    if let Some(query) = if_none_exist {
        request["ifNoneExist"] = json!(query);
    }
    json!({ "resource": resource, "request": request })
}

fn bundle(kind: &str, entries: Vec<Value>) -> String {
    json!({ "resourceType": "Bundle", "type": kind, "entry": entries }).to_string()
}

/// `(status, location)` of each entry of a response Bundle, and whether it says "a resend".
fn entry_answers(body: &Value) -> Vec<(String, String, bool)> {
    body["entry"]
        .as_array()
        .unwrap_or_else(|| panic!("no entries: {body}"))
        .iter()
        .map(|e| {
            let r = &e["response"];
            let resend = r["outcome"]["issue"].as_array().is_some_and(|issues| {
                issues.iter().any(|i| i["diagnostics"].as_str().is_some_and(|d| d.starts_with("a resend")))
            });
            (r["status"].as_str().unwrap().to_string(), r["location"].as_str().unwrap_or("").to_string(), resend)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_resent_alone_in_a_batch_or_in_another_transaction_is_stored_once() {
    let dir = tempdir("fhir-entries");
    let server = start(&dir).await;
    let (http, token) = (client(), gateway(&server));
    let obs = |id: &str, value: f64| observation("MRN-ENT", "8867-4", value, "/min", Some(id));
    let created = |location: &str| ("201 Created".to_string(), location.to_string(), false);
    let resent = |location: &str| ("200 OK".to_string(), location.to_string(), true);

    // Alone first, then inside a transaction beside a new one: the entry is a resend.
    let (status, headers, _) =
        post(&http, &server, "/fhir/Observation", &token, obs("e-1", 61.0).to_string(), &[]).await;
    assert_eq!(status, 201);
    let e1 = headers["location"].to_str().unwrap().to_string();
    let tx = bundle("transaction", vec![entry(obs("e-1", 61.0), None), entry(obs("e-2", 62.0), None)]);
    let (status, _, body) = post(&http, &server, "/fhir", &token, tx, &[]).await;
    assert_eq!(status, 200, "{body}");
    let answers = entry_answers(&body);
    let e2 = answers[1].1.clone();
    assert_eq!(answers, [resent(&e1), created(&e2)], "{body}");

    // The other way: an entry of that transaction sent alone, in a batch, in another transaction.
    let (status, headers, body) =
        post(&http, &server, "/fhir/Observation", &token, obs("e-2", 62.0).to_string(), &[]).await;
    assert_eq!((status, headers["location"].to_str().unwrap()), (200, e2.as_str()), "{body}");
    let batch = bundle("batch", vec![entry(obs("e-2", 62.0), None), entry(obs("e-3", 63.0), None)]);
    let (_, _, body) = post(&http, &server, "/fhir", &token, batch, &[]).await;
    let answers = entry_answers(&body);
    let e3 = answers[1].1.clone();
    assert_eq!(answers, [resent(&e2), created(&e3)], "{body}");
    let tx = bundle("transaction", vec![entry(obs("e-3", 63.0), None), entry(obs("e-4", 64.0), None)]);
    let (_, _, body) = post(&http, &server, "/fhir", &token, tx, &[]).await;
    let answers = entry_answers(&body);
    let e4 = answers[1].1.clone();
    assert_eq!(answers, [resent(&e3), created(&e4)], "{body}");

    // If-None-Exist naming an earlier entry, whatever the resource says: the match is the answer.
    let other = obs("e-4-bis", 99.0);
    let ine = Some("identifier=urn:ietf:rfc:3986|e-4");
    let (_, _, body) =
        post(&http, &server, "/fhir", &token, bundle("transaction", vec![entry(other.clone(), ine)]), &[]).await;
    assert_eq!(entry_answers(&body), [resent(&e4)], "{body}");
    let (_, _, body) = post(&http, &server, "/fhir", &token, bundle("batch", vec![entry(other, ine)]), &[]).await;
    assert_eq!(entry_answers(&body), [resent(&e4)], "{body}");
    // ... and naming an earlier entry of the same transaction: stored once, by the first.
    let tx = bundle(
        "transaction",
        vec![entry(obs("e-5", 65.0), None), entry(obs("e-5-bis", 98.0), Some("identifier=urn:ietf:rfc:3986|e-5"))],
    );
    let (_, _, body) = post(&http, &server, "/fhir", &token, tx, &[]).await;
    let answers = entry_answers(&body);
    let e5 = answers[0].1.clone();
    assert_eq!(answers, [created(&e5), resent(&e5)], "{body}");

    // At once: the same entries alone, in a batch and in two transactions, concurrently.
    let sends = [
        ("/fhir/Observation", obs("e-6", 66.0).to_string()),
        ("/fhir", bundle("transaction", vec![entry(obs("e-7", 67.0), None), entry(obs("e-6", 66.0), None)])),
        ("/fhir", bundle("batch", vec![entry(obs("e-6", 66.0), None), entry(obs("e-7", 67.0), None)])),
        ("/fhir", bundle("transaction", vec![entry(obs("e-6", 66.0), None), entry(obs("e-7", 67.0), None)])),
    ];
    let answers = futures_util::future::join_all(
        sends.iter().map(|(path, body)| post(&http, &server, path, &token, body.clone(), &[])),
    )
    .await;
    for (status, _, body) in &answers {
        assert!(*status == 200 || *status == 201, "{status} {body}");
    }
    server.shutdown().await;

    let mut values: Vec<f64> = stored_events(&dir, "HOSP", "MRN-ENT")
        .await
        .iter()
        .flat_map(|e| match &e.event.kind {
            vigil_actors::EventKind::Observations { observations } => {
                observations.iter().filter_map(|o| o.value).collect()
            }
            _ => Vec::new(),
        })
        .collect();
    values.sort_by(f64::total_cmp);
    assert_eq!(values, [61.0, 62.0, 63.0, 64.0, 65.0, 66.0, 67.0], "each Observation stored once, however sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_an_operation_outcome_naming_the_element_and_limits_hold() {
    let dir = tempdir("fhir-errors");
    let mut cfg = config(&dir);
    cfg.fhir.identifier_systems.insert("HOSP".into(), SYSTEM.into());
    cfg.fhir.max_body_bytes = 4096;
    let server = vigil::app::start(&cfg).await.unwrap();
    let (http, token) = (client(), gateway(&server));
    let big = format!("{{\"resourceType\":\"Observation\",\"note\":[{{\"text\":\"{}\"}}]}}", "x".repeat(5000));
    let cases: Vec<(String, String, u16, &str)> = vec![
        ("/fhir/Observation".into(), big, 413, ""),
        ("/fhir/Observation".into(), format!("{}{}", "[".repeat(40), "]".repeat(40)), 413, ""),
        ("/fhir/Observation".into(), "{\"resourceType\":".into(), 400, ""),
        ("/fhir/Specimen".into(), "{}".into(), 404, ""),
        ("/fhir/Patient".into(), observation("M", "8867-4", 1.0, "/min", None).to_string(), 400, "resourceType"),
        ("/fhir/Patient".into(), json!({"resourceType": "Patient"}).to_string(), 400, "Patient.identifier"),
        (
            "/fhir/Observation".into(),
            {
                let mut o = observation("M", "8867-4", 80.0, "/min", None);
                o["valueQuantity"]["value"] = json!("80");
                o.to_string()
            },
            400,
            "Observation.valueQuantity.value",
        ),
        (
            "/fhir/Observation".into(),
            {
                let mut o = observation("M", "8867-4", 80.0, "/min", None);
                o["subject"]["identifier"]["system"] = json!("http://nowhere.example");
                o.to_string()
            },
            422,
            "Observation.subject.identifier.system",
        ),
        (
            "/fhir/Observation".into(),
            observation("M", "8867-4", 900.0, "/min", None).to_string(),
            422,
            "Observation.valueQuantity.value",
        ),
        ("/fhir".into(), json!({"resourceType": "Bundle", "type": "history"}).to_string(), 422, "Bundle.type"),
    ];
    for (path, body, want, element) in cases {
        let (status, headers, outcome) = post(&http, &server, &path, &token, body, &[]).await;
        assert_eq!(status, want, "{path}: {outcome}");
        assert_eq!(headers["content-type"], "application/fhir+json");
        assert_eq!(outcome["resourceType"], "OperationOutcome", "{path}");
        if !element.is_empty() {
            assert_eq!(outcome["issue"][0]["expression"][0], element, "{outcome}");
        }
    }
    let resp = http
        .post(format!("http://{}/fhir/Observation", server.http_addr))
        .bearer_auth(&token)
        .header("content-type", "text/plain")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 415);
    for (method, path, want) in
        [("PUT", "/fhir/Observation", 405), ("GET", "/fhir/Observation/abc", 404), ("DELETE", "/fhir", 405)]
    {
        let resp = http
            .request(method.parse().unwrap(), format!("http://{}{path}", server.http_addr))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), want, "{method} {path}");
        let outcome: Value = resp.text().await.unwrap().parse().unwrap();
        assert_eq!(outcome["resourceType"], "OperationOutcome", "{method} {path}");
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ndjson_stream_answers_every_line_in_order_once_durable() {
    let dir = tempdir("fhir-stream");
    let mut cfg = config(&dir);
    cfg.fhir.identifier_systems.insert("HOSP".into(), SYSTEM.into());
    cfg.fhir.stream_in_flight = 4;
    cfg.fhir.stream_max_line_bytes = 2048;
    let server = vigil::app::start(&cfg).await.unwrap();
    let (http, token) = (client(), gateway(&server));
    let mut lines = Vec::new();
    for i in 0..50 {
        lines.push(observation("MRN-ND", "8867-4", 70.0 + f64::from(i), "/min", Some(&format!("nd-{i}"))).to_string());
    }
    lines.insert(10, "{not json".into());
    lines.insert(20, String::new());
    lines.insert(30, format!("{{\"pad\":\"{}\"}}", "y".repeat(3000)));
    lines.insert(40, observation("MRN-ND", "8867-4", 70.0, "/min", Some("nd-5")).to_string());
    let body = lines.join("\n");
    let resp = http
        .post(format!("http://{}/fhir/$stream", server.http_addr))
        .bearer_auth(&token)
        .header("content-type", "application/fhir+ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.headers()["content-type"], "application/fhir+ndjson");
    let text = resp.text().await.unwrap();
    let answers: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(answers.len(), 53, "one answer per non-blank line:\n{text}");
    let numbers: Vec<u64> = answers.iter().map(|a| a["line"].as_u64().unwrap()).collect();
    assert_eq!(numbers, (1..=53).collect::<Vec<_>>(), "in input order");
    let status = |n: usize| answers[n - 1]["status"].as_u64().unwrap();
    assert_eq!((status(1), status(11), status(30), status(40)), (201, 400, 413, 200));
    assert_eq!(answers[10]["outcome"]["resourceType"], "OperationOutcome");
    server.shutdown().await;
    assert_eq!(stored_events(&dir, "HOSP", "MRN-ND").await.len(), 50, "each line stored once");
}

/// A Python that can import `fhir.resources` (tests/requirements.txt).
fn python() -> std::path::PathBuf {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(
        venv.exists()
            && Command::new(&venv).args(["-c", "import fhir.resources.R4B"]).output().is_ok_and(|o| o.status.success()),
        "no .venv with fhir.resources: run `python3 -m venv .venv && .venv/bin/pip install -r tests/requirements.txt` \
         (tests/run does this)"
    );
    venv
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fhir_resources_from_python_raise_the_same_alerts_as_hl7_and_every_answer_validates() {
    let python = python();
    let dir = tempdir("fhir-python");
    let server = start(&dir).await;
    let http = client();
    let mut mllp = MllpClient::connect(&server.mllp_addr.to_string(), WAIT).await.unwrap();
    let ack = mllp.send(&septic_oru("PY-HL7-1", "MRN-PY-HL7", "Hl7")).await.unwrap();
    assert_eq!(ack_code(&ack), Some("AA"), "{ack}");
    // The same vitals over FHIR, for a patient of its own, admitted to the same bed by an
    // Encounter so the alerts compare whole.
    let token = gateway(&server);
    let encounter = json!({ "resourceType": "Encounter", "status": "in-progress", "class": { "code": "IMP" },
        "subject": { "identifier": { "system": SYSTEM, "value": "MRN-PY-FHIR" } },
        "location": [
            { "location": { "display": "ICU" }, "physicalType": { "coding": [{ "code": "wa" }] } },
            { "location": { "display": "04" }, "physicalType": { "coding": [{ "code": "ro" }] } },
            { "location": { "display": "B" }, "physicalType": { "coding": [{ "code": "bd" }] } } ] });
    let (status, _, body) = post(&http, &server, "/fhir/Encounter", &token, encounter.to_string(), &[]).await;
    assert_eq!(status, 201, "{body}");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/external/fhir_clients.py");
    let base = format!("http://{}/fhir", server.http_addr);
    let out = tokio::task::spawn_blocking(move || {
        Command::new(&python)
            .arg(&script)
            .args(["--base", &base, "--token", &token, "--system", SYSTEM, "--mrn", "MRN-PY-FHIR"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "fhir_clients.py failed:\n{stdout}\n{stderr}");
    let seen: Value = serde_json::from_str(stdout.trim()).unwrap();
    let listed: Vec<&str> = seen["capability_types"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    let table: Vec<&str> = vigil::ingest::fhir::RESOURCES.iter().map(|r| r.name).collect();
    assert_eq!(listed, table);
    assert_eq!(seen["transaction"], json!(["201 Created", "201 Created", "201 Created"]));
    assert_eq!(seen["missing_status"], "Observation.status");
    assert_eq!(seen["unknown_subject"], "Observation.subject.identifier.system");
    assert_eq!(seen["wrong_unit"], "Observation.valueQuantity.unit");

    let rrt = server.auth.issue("rrt-1", Role::Rrt, vec!["ICU".into()], time::Duration::hours(1));
    let alerts: Value = http
        .get(format!("http://{}/api/alerts", server.http_addr))
        .bearer_auth(&rrt)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
        .parse::<Value>()
        .unwrap();
    let of = |mrn: &str| {
        let mut rules: Vec<(String, String, String)> = alerts["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| &c["alert"])
            .filter(|a| a["patient"]["mrn"] == mrn)
            .map(|a| (a["rule"]["id"].to_string(), a["severity"].to_string(), a["score"].to_string()))
            .collect();
        rules.sort();
        rules
    };
    let hl7 = of("MRN-PY-HL7");
    assert!(hl7.iter().any(|(rule, _, _)| rule.contains("sepsis.qsofa")), "{hl7:?}");
    assert!(hl7.iter().any(|(rule, _, _)| rule.contains("news2")), "{hl7:?}");
    assert_eq!(of("MRN-PY-FHIR"), hl7, "the same alerts, severities and scores over FHIR as over HL7");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_wards_fhir_gateway_beds_alert_on_the_patients_the_emr_admitted_over_hl7() {
    let dir = tempdir("fhir-ward");
    let mut cfg = config(&dir);
    cfg.fhir.identifier_systems.insert("VIGIL_SIM".into(), vigil_loadtest::fhir::SIM_SYSTEM.into());
    let server = vigil::app::start(&cfg).await.unwrap();
    let rrt = server.auth.issue("rrt-1", Role::Rrt, vec!["ICU".into()], time::Duration::hours(1));
    let mut ws = ws_connect(server.http_addr, &rrt).await;
    ws_send(&mut ws, json!({"type": "subscribe", "units": ["ICU"], "since": 0})).await;
    ws_next(&mut ws, &["subscribed"], WAIT).await;
    let ward = vigil_loadtest::ward::WardConfig {
        beds: 2,
        interval: Duration::from_millis(200),
        deteriorating: 2,
        deterioration_period: Duration::from_secs(3),
        fhir: Some(vigil_loadtest::ward::FhirGateway {
            http_addr: server.http_addr.to_string(),
            token: gateway(&server),
            every: 1,
        }),
        ..Default::default()
    };
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(vigil_loadtest::ward::run_ward(server.mllp_addr.to_string(), ward, stop_rx));
    let frame = ws_next(&mut ws, &["alert"], Duration::from_secs(60)).await;
    let patient = frame["alert"]["patient"]["id"].as_str().unwrap().to_string();
    assert_eq!(frame["alert"]["patient"]["bed"].as_str().map(str::len), Some(1), "located by the HL7 admission");
    let _ = stop.send(true);
    let stats = running.await.unwrap().unwrap();
    assert_eq!(stats.naks + stats.errors, 0, "{stats:?}");
    server.shutdown().await;
    let store = open_store(&dir);
    let events =
        store.recorded_events(&vigil_actors::PatientId(patient), time::OffsetDateTime::UNIX_EPOCH).await.unwrap();
    let sources: std::collections::BTreeSet<String> =
        events.iter().filter_map(|e| e.message.as_ref().map(|m| format!("{:?}", m.source))).collect();
    assert_eq!(sources.into_iter().collect::<Vec<_>>(), ["Fhir", "Hl7"], "admitted over HL7, vitals over FHIR");
}
