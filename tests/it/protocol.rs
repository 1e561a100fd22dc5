//! The console protocol: every server frame validates against schemas/ws/; a reconnect with
//! `since` returns exactly the changes missed; ack/resolve over WebSocket and REST, with roles,
//! unit scoping and audit.

use std::time::Duration;

use serde_json::{Value, json};
use vigil::auth::Role;
use vigil_loadtest::mllp::{MllpClient, ack_code};

use crate::support::*;

const WAIT: Duration = Duration::from_secs(10);

/// Resolves the schemas' `$id`s to the files in schemas/ws/.
struct LocalSchemas;

impl jsonschema::Retrieve for LocalSchemas {
    fn retrieve(&self, uri: &jsonschema::Uri<String>) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        let name = uri.as_str().rsplit('/').next().unwrap_or_default();
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/ws").join(name);
        Ok(serde_json::from_str(&std::fs::read_to_string(path)?)?)
    }
}

fn validator(file: &str) -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/ws").join(file))
            .unwrap(),
    )
    .unwrap();
    jsonschema::options().with_retriever(LocalSchemas).build(&schema).unwrap()
}

/// A WebSocket client that checks every frame it receives against the server-frame schema.
struct Console {
    ws: Ws,
    schema: jsonschema::Validator,
    client_schema: jsonschema::Validator,
}

impl Console {
    async fn connect(http: std::net::SocketAddr, token: &str) -> Console {
        Console {
            ws: ws_connect(http, token).await,
            schema: validator("server-frame.json"),
            client_schema: validator("client-frame.json"),
        }
    }

    async fn send(&mut self, frame: Value) {
        let errors: Vec<String> = self.client_schema.iter_errors(&frame).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "client frame {frame} does not match schemas/ws/client-frame.json: {errors:?}");
        ws_send(&mut self.ws, frame).await;
    }

    /// Send a frame the schema refuses (to see the server refuse it too).
    async fn ws_send_raw(&mut self, frame: Value) {
        assert!(!self.client_schema.is_valid(&frame), "{frame} should not match the client schema");
        ws_send(&mut self.ws, frame).await;
    }

    async fn next(&mut self, types: &[&str]) -> Value {
        use futures_util::StreamExt;
        tokio::time::timeout(WAIT, async {
            loop {
                let msg = self.ws.next().await.expect("closed").expect("ws error");
                let tokio_tungstenite::tungstenite::Message::Text(text) = msg else { continue };
                let frame: Value = serde_json::from_str(&text).unwrap();
                let errors: Vec<String> = self.schema.iter_errors(&frame).map(|e| e.to_string()).collect();
                assert!(errors.is_empty(), "frame {frame} does not match schemas/ws/server-frame.json: {errors:?}");
                if types.contains(&frame["type"].as_str().unwrap_or_default()) {
                    return frame;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no {types:?} frame"))
    }
}

async fn raise(mllp: &mut MllpClient, n: usize) {
    let control = format!("PR-{n}-{}", rand::random::<u32>());
    let ack = mllp.send(&septic_oru(&control, &format!("MRN-PR-{n}"), "Protocol")).await.unwrap();
    assert_eq!(ack_code(&ack), Some("AA"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_with_since_returns_exactly_the_missed_changes() {
    let dir = tempdir("since");
    let server = vigil::app::start(&config_qsofa_only(&dir)).await.unwrap();
    let token = server.auth.issue("rrt-1", Role::Rrt, vec!["ICU".into()], time::Duration::hours(1));
    let mut mllp = MllpClient::connect(&server.mllp_addr.to_string(), WAIT).await.unwrap();

    let mut console = Console::connect(server.http_addr, &token).await;
    console.send(json!({"type": "subscribe", "units": ["ICU"]})).await;
    let snapshot = console.next(&["snapshot"]).await;
    assert_eq!(snapshot["alerts"], json!([]));
    console.next(&["subscribed"]).await;
    raise(&mut mllp, 1).await;
    raise(&mut mllp, 2).await;
    let mut last = 0;
    for _ in 0..2 {
        last = console.next(&["alert"]).await["seq"].as_u64().unwrap();
    }
    drop(console); // the console goes away (network drop, laptop lid)

    for n in 3..8 {
        raise(&mut mllp, n).await;
    }
    let mut console = Console::connect(server.http_addr, &token).await;
    console.send(json!({"type": "subscribe", "units": ["ICU"], "since": last})).await;
    let mut seqs = Vec::new();
    let mut patients = Vec::new();
    for _ in 0..5 {
        let frame = console.next(&["alert"]).await;
        seqs.push(frame["seq"].as_u64().unwrap());
        patients.push(frame["alert"]["patient"]["mrn"].as_str().unwrap().to_string());
    }
    assert_eq!(seqs, ((last + 1)..=(last + 5)).collect::<Vec<_>>(), "no gap, no duplicate");
    assert_eq!(patients, (3..8).map(|n| format!("MRN-PR-{n}")).collect::<Vec<_>>());
    let subscribed = console.next(&["subscribed"]).await;
    assert_eq!(subscribed["seq"], last + 5);
    // And live again: the next change arrives with the next number.
    raise(&mut mllp, 8).await;
    assert_eq!(console.next(&["alert"]).await["seq"], last + 6);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_and_resolve_over_websocket_and_rest_with_roles_scoping_and_audit() {
    let dir = tempdir("ack");
    let server = vigil::app::start(&config_qsofa_only(&dir)).await.unwrap();
    let rrt = server.auth.issue("rrt-7", Role::Rrt, vec!["ICU".into()], time::Duration::hours(1));
    let other_unit = server.auth.issue("nurse-9", Role::Nurse, vec!["WARD3".into()], time::Duration::hours(1));
    let informaticist = server.auth.issue("inf-1", Role::Informaticist, vec!["*".into()], time::Duration::hours(1));
    let mut mllp = MllpClient::connect(&server.mllp_addr.to_string(), WAIT).await.unwrap();

    let mut a = Console::connect(server.http_addr, &rrt).await;
    a.send(json!({"type": "subscribe", "units": [], "since": 0})).await;
    a.next(&["subscribed"]).await;
    let mut b = Console::connect(server.http_addr, &rrt).await;
    b.send(json!({"type": "subscribe"})).await;
    b.next(&["subscribed"]).await;
    raise(&mut mllp, 1).await;
    let raised = a.next(&["alert"]).await;
    assert_eq!(raised["notify"], true, "a new alert notifies");
    let id = raised["alert"]["id"].as_str().unwrap().to_string();
    b.next(&["alert"]).await;

    a.send(json!({"type": "ack", "ref": "r1", "alert_id": id})).await;
    let reply = a.next(&["reply"]).await;
    assert_eq!((reply["ref"].as_str(), reply["ok"].as_bool()), (Some("r1"), Some(true)), "{reply}");
    assert_eq!(reply["alert"]["acknowledged"]["by"], "rrt-7");
    let seen = b.next(&["alert"]).await;
    assert_eq!(seen["alert"]["status"], "acknowledged");
    assert_eq!(seen["notify"], false);

    // The WebSocket path checks what REST checks: a resolve needs a reason.
    a.send(json!({"type": "resolve", "ref": "r0", "alert_id": id, "reason": " "})).await;
    let refused = a.next(&["reply"]).await;
    assert_eq!(refused["ok"], false);
    assert!(refused["error"].as_str().unwrap().contains("reason is required"), "{refused}");

    a.send(json!({"type": "ack", "ref": "r2", "alert_id": id})).await;
    let again = a.next(&["reply"]).await;
    assert_eq!(again["ok"], false);
    assert!(again["error"].as_str().unwrap().contains("already acknowledged"));

    let http = reqwest_like(server.http_addr);
    let (status, body) = http.post(&format!("/api/alerts/{id}/resolve"), &other_unit, json!({"reason": "x"})).await;
    assert_eq!(status, 404, "another unit's nurse cannot see it: {body}");
    assert_eq!((body["error"].as_str(), body["reason"].as_str()), (Some("not_found"), Some("no such alert")));
    let (status, body) = http.post(&format!("/api/alerts/{id}/resolve"), &informaticist, json!({"reason": "x"})).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"], "forbidden", "{body}");
    assert!(body["reason"].as_str().unwrap().contains("informaticist"), "{body}");
    let (status, body) = http.post(&format!("/api/alerts/{id}/resolve"), &rrt, json!({})).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "bad_request", "{body}");
    let (status, body) =
        http.post(&format!("/api/alerts/{id}/resolve"), &rrt, json!({"reason": "fluids given, reassessed"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["alert"]["status"], "resolved");
    assert_eq!(body["alert"]["resolved"]["reason"], "fluids given, reassessed");
    assert_eq!(b.next(&["alert"]).await["alert"]["status"], "resolved");

    let (status, body) = http.get("/api/alerts?status=resolved&since=0", &rrt).await;
    assert_eq!(status, 200);
    assert_eq!(body["alerts"].as_array().unwrap().len(), 1);
    let (status, _) = http.get("/api/alerts?unit=ICU", &other_unit).await;
    assert_eq!(status, 403);
    let (status, body) = http.get("/api/alerts", "forged.token.here").await;
    assert_eq!(status, 401);
    assert_eq!((body["error"].as_str(), body["reason"].as_str()), (Some("unauthorized"), Some("invalid token")));
    let (status, body) = http.get("/api/openapi.json", &rrt).await;
    assert_eq!(status, 200);
    assert!(body["paths"]["/api/alerts"].is_object());
    server.shutdown().await;

    let store = open_store(&dir);
    let audit_key =
        vigil::audit::AuditKey::load_or_create(&vigil::config::default_keys_dir(&dir).join("audit.key")).unwrap();
    let audit = vigil::audit::AuditLog::open(store.database(), audit_key).unwrap();
    let records = audit.since(time::OffsetDateTime::UNIX_EPOCH, 1000);
    let has =
        |action: &str, outcome: &str| records.iter().any(|r| r.action == action && r.outcome.starts_with(outcome));
    assert!(
        has("ack", "ok")
            && has("resolve", "ok")
            && has("resolve", "denied")
            && has("view_alerts", "denied")
            && has("subscribe", "ok")
    );
    assert!(records.iter().all(|r| !r.target.contains("Protocol")), "no names in the audit log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opened_patient_streams_live_vitals_only_to_those_who_may_see_it() {
    let dir = tempdir("watch");
    let server = vigil::app::start(&config_qsofa_only(&dir)).await.unwrap();
    let rrt = server.auth.issue("rrt-2", Role::Rrt, vec!["ICU".into()], time::Duration::hours(1));
    let ward = server.auth.issue("nurse-3", Role::Nurse, vec!["WARD3".into()], time::Duration::hours(1));
    let mut mllp = MllpClient::connect(&server.mllp_addr.to_string(), WAIT).await.unwrap();
    raise(&mut mllp, 1).await;

    let mut console = Console::connect(server.http_addr, &rrt).await;
    console.send(json!({"type": "subscribe"})).await;
    let snapshot = console.next(&["snapshot"]).await;
    let patient = snapshot["alerts"][0]["patient"]["id"].as_str().unwrap().to_string();
    console.send(json!({"type": "watch", "patient": patient})).await;
    let opened = console.next(&["patient"]).await;
    assert_eq!(opened["summary"]["latest"]["rr"]["value"], 26.0);
    assert_eq!(opened["summary"]["name"], "Protocol, Test");
    assert_eq!(opened["summary"]["trends"]["sbp"].as_array().unwrap().len(), 1);
    assert_eq!(opened["summary"]["open_alerts"][0]["rule"]["id"], "sepsis.qsofa");

    raise(&mut mllp, 1).await; // the same patient reports again (a new control id each time)
    let vitals = console.next(&["vitals"]).await;
    assert_eq!(vitals["patient"], patient.as_str());
    assert!(vitals["observations"].as_array().unwrap().iter().any(|o| o["name"] == "rr"));

    let mut other = Console::connect(server.http_addr, &ward).await;
    other.send(json!({"type": "watch", "patient": patient})).await;
    let refused = other.next(&["error", "patient"]).await;
    assert_eq!((refused["type"].as_str(), refused["code"].as_str()), (Some("error"), Some("not_found")));

    let http = reqwest_like(server.http_addr);
    let (status, body) = http.get(&format!("/api/patients/{patient}"), &rrt).await;
    assert_eq!(status, 200);
    assert_eq!(body["location"]["unit"], "ICU");
    let (status, _) = http.get(&format!("/api/patients/{patient}"), &ward).await;
    assert_eq!(status, 404);
    let (status, _) = http.get("/api/patients/0000000000000000000000000000dead", &rrt).await;
    assert_eq!(status, 404, "an unknown id starts no actor and reveals nothing");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unacknowledged_alert_escalates_visibly_to_the_rapid_response_team() {
    let dir = tempdir("escalate");
    let mut config = config_qsofa_only(&dir);
    for (severity, window) in config.escalation.windows.iter_mut() {
        if *severity == vigil_actors::Severity::High {
            *window = Some(time::Duration::seconds(1));
        }
    }
    config.escalation.period = Duration::from_millis(100);
    let server = vigil::app::start(&config).await.unwrap();
    let icu = server.auth.issue("nurse-1", Role::Nurse, vec!["ICU".into()], time::Duration::hours(1));
    let team = server.auth.issue("rrt-1", Role::Rrt, vec!["RRT".into()], time::Duration::hours(1));

    let mut rrt = Console::connect(server.http_addr, &team).await;
    rrt.send(json!({"type": "subscribe", "units": ["RRT"]})).await;
    assert_eq!(rrt.next(&["snapshot"]).await["alerts"], json!([]));
    let mut nurse = Console::connect(server.http_addr, &icu).await;
    nurse.send(json!({"type": "subscribe"})).await;
    nurse.next(&["subscribed"]).await;

    let mut mllp = MllpClient::connect(&server.mllp_addr.to_string(), WAIT).await.unwrap();
    raise(&mut mllp, 1).await;
    let raised = nurse.next(&["alert"]).await;
    assert!(raised["alert"]["escalation"].is_null());

    // Nobody acknowledges: after the high-severity window the team sees it, with a notification.
    let escalated = rrt.next(&["alert"]).await;
    assert_eq!(escalated["alert"]["id"], raised["alert"]["id"]);
    assert_eq!(escalated["alert"]["escalation"]["level"], 1);
    assert_eq!(escalated["alert"]["escalation"]["units"], json!(["RRT"]));
    assert_eq!(escalated["notify"], true);
    let seen_by_nurse = nurse.next(&["alert"]).await;
    assert_eq!(seen_by_nurse["alert"]["escalation"]["level"], 1);

    // The team acknowledges; escalation stops.
    let id = escalated["alert"]["id"].as_str().unwrap().to_string();
    rrt.send(json!({"type": "ack", "ref": "a", "alert_id": id})).await;
    assert_eq!(rrt.next(&["reply"]).await["ok"], true);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_console_that_falls_behind_gets_resync_and_every_change_exactly_once() {
    let dir = tempdir("lag");
    let mut config = config_qsofa_only(&dir);
    config.hub_capacity = 1; // any session slower than the committer lags at once
    let server = vigil::app::start(&config).await.unwrap();
    let token = server.auth.issue("rrt-9", Role::Rrt, vec!["ICU".into()], time::Duration::hours(1));
    let mut console = Console::connect(server.http_addr, &token).await;
    console.send(json!({"type": "subscribe", "units": ["ICU"], "since": 0})).await;
    console.next(&["subscribed"]).await;

    // 300 patients' alerts committed in a few group commits: published faster than one
    // session can write them out.
    let messages: Vec<String> =
        (0..300).map(|i| septic_oru(&format!("LAG-{i}"), &format!("MRN-LAG-{i}"), "Lag")).collect();
    let mut mllp = MllpClient::connect(&server.mllp_addr.to_string(), WAIT).await.unwrap();
    for ack in mllp.send_pipelined(&messages).await.unwrap() {
        assert_eq!(ack_code(&ack), Some("AA"));
    }
    let mut seqs = Vec::new();
    let mut resyncs = 0;
    while seqs.len() < 300 {
        let frame = console.next(&["alert", "resync"]).await;
        match frame["type"].as_str() {
            Some("resync") => resyncs += 1,
            _ => seqs.push(frame["seq"].as_u64().unwrap()),
        }
    }
    assert_eq!(seqs, (1..=300).collect::<Vec<u64>>(), "every change once, in order, after any resync");
    assert!(resyncs >= 1, "the session never lagged, so this test proved nothing");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_patient_summary_carries_the_news2_breakdown_even_below_alert_thresholds() {
    let dir = tempdir("news2");
    let server = vigil::app::start(&config(&dir)).await.unwrap(); // the shipped pack
    let rrt = server.auth.issue("rrt-4", Role::Rrt, vec!["ICU".into()], time::Duration::hours(1));
    let ts = now_dtm();
    let message = [
        format!("MSH|^~\\&|MONITOR|ICU|VIGIL|HOSP|{ts}||ORU^R01^ORU_R01|N2-1|P|2.6"),
        "PID|||MRN-N2^^^HOSP^MR||Calm^Test||19700101|F".to_string(),
        "PV1||I|ICU^09^A".to_string(),
        format!("OBX|1|NM|147842^MDC_ECG_HEART_RATE^MDC||80|264864^^MDC|||||R|||{ts}"),
        format!("OBX|2|NM|151562^MDC_RESP_RATE^MDC||16|264928^^MDC|||||R|||{ts}"),
        format!("OBX|3|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC||97|262688^^MDC|||||R|||{ts}"),
        format!("OBX|4|NM|150021^MDC_PRESS_BLD_NONINV_SYS^MDC||120|266016^^MDC|||||R|||{ts}"),
        format!("OBX|5|NM|150344^MDC_TEMP^MDC||37.0|268192^^MDC|||||R|||{ts}"),
        format!("OBX|6|CWE|67775-7^Level of consciousness^LN||A^Alert^HL70000||||||F|||{ts}"),
        // On air, charted: without it NEWS2 does not know and stays partial (never invented).
        format!("OBX|7|NM|3150-0^Inhaled oxygen concentration^LN||21|%|||||F|||{ts}"),
    ]
    .join("\r");
    let mut mllp = MllpClient::connect(&server.mllp_addr.to_string(), WAIT).await.unwrap();
    assert_eq!(ack_code(&mllp.send(&message).await.unwrap()), Some("AA"));
    let patient = blind_index(&dir).patient_id("HOSP", "MRN-N2");
    let (status, body) = reqwest_like(server.http_addr).get(&format!("/api/patients/{patient}"), &rrt).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["open_alerts"], json!([]), "a well patient raises nothing");
    let news2 = &body["scores"]["news2"];
    assert!(news2.is_object(), "no NEWS2 breakdown: latest {} scores {}", body["latest"], body["scores"]);
    assert_eq!(news2["score"], 0, "{news2}");
    assert_eq!(news2["band"], "low");
    assert_eq!(news2["partial"], false);
    assert_eq!(news2["subscores"]["rr"], 0);

    // A 12-year-old with septic vitals: the adult scores do not apply, raise nothing, and the
    // patient view says so (never a normal score).
    let child_born = format!("{}0101", time::OffsetDateTime::now_utc().year() - 12);
    let child = [
        format!("MSH|^~\\&|MONITOR|ICU|VIGIL|HOSP|{ts}||ORU^R01^ORU_R01|N2-2|P|2.6"),
        format!("PID|||MRN-CHILD^^^HOSP^MR||Young^Test||{child_born}|F"),
        "PV1||I|ICU^10^A".to_string(),
        format!("OBX|1|NM|147842^MDC_ECG_HEART_RATE^MDC||150|264864^^MDC|||||R|||{ts}"),
        format!("OBX|2|NM|151562^MDC_RESP_RATE^MDC||32|264928^^MDC|||||R|||{ts}"),
        format!("OBX|3|NM|150021^MDC_PRESS_BLD_NONINV_SYS^MDC||85|266016^^MDC|||||R|||{ts}"),
        format!("OBX|4|NM|150344^MDC_TEMP^MDC||39.2|268192^^MDC|||||R|||{ts}"),
    ]
    .join("\r");
    assert_eq!(ack_code(&mllp.send(&child).await.unwrap()), Some("AA"));
    let child_id = blind_index(&dir).patient_id("HOSP", "MRN-CHILD");
    let (status, body) = reqwest_like(server.http_addr).get(&format!("/api/patients/{child_id}"), &rrt).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["open_alerts"], json!([]), "no adult score alerts for a child");
    for rule in ["news2", "sepsis.qsofa", "sepsis.sirs", "sepsis.sep1"] {
        assert_eq!(body["scores"][rule]["applies"], false, "{rule}: {}", body["scores"]);
        assert!(body["scores"][rule]["reason"].as_str().unwrap().contains("16"), "{}", body["scores"][rule]);
    }
    server.shutdown().await;
}

/// A minimal HTTP/1.1 JSON client over a TcpStream, enough for the API tests.
struct Http(std::net::SocketAddr);

fn reqwest_like(addr: std::net::SocketAddr) -> Http {
    Http(addr)
}

impl Http {
    async fn request(&self, method: &str, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut stream = tokio::net::TcpStream::connect(self.0).await.unwrap();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.0,
            body.len()
        );
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();
        let text = String::from_utf8_lossy(&raw);
        let status: u16 = text.split_whitespace().nth(1).unwrap().parse().unwrap();
        let (head, rest) = text.split_once("\r\n\r\n").unwrap();
        let payload = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
            dechunk(rest)
        } else {
            rest.to_string()
        };
        (status, serde_json::from_str(&payload).unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        self.request("GET", path, token, None).await
    }

    async fn post(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        self.request("POST", path, token, Some(body)).await
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Issue 16: a charge nurse assigns a bed; the alert on it reaches the assigned nurse first,
/// then escalates along the chain (charge nurse, then the rapid response team), each step on
/// its own timer, with the chain, the next step and the receipts on the alert; a silence is
/// started, announced and refused outside its lists. Every frame both ways validates against
/// schemas/ws/.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assignment_then_an_escalation_along_the_chain_with_receipts_and_a_silence() {
    use vigil::alerts::escalation::ChainStep;
    let dir = tempdir("chain");
    let mut config = config_qsofa_only(&dir);
    let step = |label: &str, role: &str, units: &[&str]| ChainStep {
        label: label.into(),
        units: units.iter().map(|u| u.to_string()).collect(),
        roles: vec![role.into()],
        wait: Some(time::Duration::seconds(3)),
    };
    config.escalation.chain = vec![step("charge nurse", "charge", &[]), step("rapid response team", "rrt", &["RRT"])];
    config.escalation.period = Duration::from_millis(100);
    let server = vigil::app::start(&config).await.unwrap();
    let issue =
        |sub: &str, role: Role, unit: &str| server.auth.issue(sub, role, vec![unit.into()], time::Duration::hours(1));
    let (charge_token, nurse_token) = (issue("charge-1", Role::Charge, "ICU"), issue("nurse-4", Role::Nurse, "ICU"));
    let team_token = issue("rrt-1", Role::Rrt, "RRT");

    let mut charge = Console::connect(server.http_addr, &charge_token).await;
    charge.send(json!({"type": "subscribe"})).await;
    charge.next(&["subscribed"]).await;
    let assign = json!({"type": "assign", "ref": "as1", "nurse": "nurse-4", "unit": "ICU", "beds": ["04-B", "05-A"], "hours": 12});
    charge.send(assign).await;
    let reply = charge.next(&["reply"]).await;
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(reply["assignment"]["beds"], json!(["04-B", "05-A"]));

    let mut nurse = Console::connect(server.http_addr, &nurse_token).await;
    nurse.send(json!({"type": "subscribe"})).await;
    let subscribed = nurse.next(&["subscribed"]).await;
    assert_eq!((subscribed["user"].as_str(), subscribed["role"].as_str()), (Some("nurse-4"), Some("nurse")));
    assert_eq!(subscribed["assignments"][0]["nurse"], "nurse-4");
    assert!(subscribed["rule_titles"]["sepsis.qsofa"].as_str().unwrap().contains("qSOFA"));
    // A nurse may not assign.
    nurse
        .send(json!({"type": "assign", "ref": "as2", "nurse": "nurse-4", "unit": "ICU", "beds": ["01-A"], "hours": 8}))
        .await;
    let refused = nurse.next(&["reply"]).await;
    assert_eq!(refused["ok"], false);
    assert!(refused["error"].as_str().unwrap().contains("may not assign"), "{refused}");
    let mut team = Console::connect(server.http_addr, &team_token).await;
    team.send(json!({"type": "subscribe", "units": ["RRT"]})).await;
    team.next(&["subscribed"]).await;

    // Raised on bed 04-B: the assigned nurse first, the charge nurse next.
    let mut mllp = MllpClient::connect(&server.mllp_addr.to_string(), WAIT).await.unwrap();
    raise(&mut mllp, 1).await;
    let raised = nurse.next(&["alert"]).await;
    let id = raised["alert"]["id"].as_str().unwrap().to_string();
    let route = &raised["route"];
    assert_eq!(route["assigned"], json!(["nurse-4"]));
    assert_eq!(route["chain"], json!(["assigned nurse", "charge nurse", "rapid response team"]));
    assert_eq!(
        (route["current"].as_str(), route["next"]["label"].as_str()),
        (Some("assigned nurse"), Some("charge nurse"))
    );
    nurse.send(json!({"type": "receipt", "alert_id": id, "kind": "delivered"})).await;
    let receipts = charge.next(&["receipts"]).await;
    assert_eq!(
        (receipts["alert_id"].as_str(), receipts["receipts"][0]["user"].as_str()),
        (Some(id.as_str()), Some("nurse-4"))
    );
    assert_eq!(receipts["receipts"][0]["kind"], "delivered");

    // Nobody acknowledges: the charge nurse, then the team, each after its own 2 s.
    let to_charge = loop {
        let frame = charge.next(&["alert"]).await;
        if frame["alert"]["escalation"]["level"] == 1 {
            break frame;
        }
    };
    assert_eq!(to_charge["notify"], true);
    assert_eq!(to_charge["alert"]["escalation"]["roles"], json!(["charge"]));
    assert_eq!(
        (to_charge["route"]["current"].as_str(), to_charge["route"]["next"]["label"].as_str()),
        (Some("charge nurse"), Some("rapid response team"))
    );
    let to_team = team.next(&["alert"]).await;
    assert_eq!(to_team["alert"]["id"], id.as_str());
    assert_eq!(to_team["alert"]["escalation"]["level"], 2);
    assert_eq!(to_team["alert"]["escalation"]["roles"], json!(["charge", "rrt"]), "the charge nurse keeps it");
    assert_eq!(to_team["route"]["current"], "rapid response team");
    assert_eq!(to_team["route"]["receipts"][0]["user"], "nurse-4");

    // The team is at the bedside: silence the patient for 15 min; the nurse's console hears of it.
    let patient = to_team["alert"]["patient"]["id"].as_str().unwrap().to_string();
    team.send(json!({"type": "silence", "ref": "s1", "patient": patient, "minutes": 15, "reason": "rrt_at_bedside"}))
        .await;
    let silenced = team.next(&["reply"]).await;
    assert_eq!(silenced["ok"], true, "{silenced}");
    assert_eq!(
        (silenced["silence"]["by"].as_str(), silenced["silence"]["severity"].as_str()),
        (Some("rrt-1"), Some("high"))
    );
    let announced = nurse.next(&["silence"]).await;
    assert_eq!(announced["silence"]["id"], silenced["silence"]["id"]);
    team.send(json!({"type": "silence", "ref": "s2", "patient": patient, "minutes": 15, "reason": "transport"})).await;
    assert_eq!(team.next(&["reply"]).await["ok"], true);
    nurse
        .ws_send_raw(json!({"type": "silence", "ref": "s3", "patient": patient, "minutes": 7, "reason": "transport"}))
        .await;
    let bad = nurse.next(&["reply"]).await;
    assert_eq!(bad["ok"], false);
    nurse.send(json!({"type": "end_silence", "ref": "e1", "silence_id": silenced["silence"]["id"]})).await;
    let ended = nurse.next(&["reply"]).await;
    assert_eq!(ended["silence"]["ended"]["why"], "ended");
    let ended_frame = loop {
        let frame = team.next(&["silence"]).await;
        if !frame["silence"]["ended"].is_null() {
            break frame;
        }
    };
    assert_eq!(ended_frame["silence"]["ended"]["by"], "nurse-4");
    server.shutdown().await;
}

/// Issue 16 over REST: assignments (charge nurse only, the unit in the token) and silences
/// (the lists, a patient with an open alert), refusals as `{"error","reason"}`, and the audit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silences_and_assignments_over_rest_with_refusals_and_audit() {
    let dir = tempdir("rest-silence");
    let server = vigil::app::start(&config_qsofa_only(&dir)).await.unwrap();
    let issue = |sub: &str, role: Role| server.auth.issue(sub, role, vec!["ICU".into()], time::Duration::hours(1));
    let (charge, nurse) = (issue("charge-2", Role::Charge), issue("nurse-5", Role::Nurse));
    let http = reqwest_like(server.http_addr);

    let body = json!({"nurse": "nurse-5", "unit": "ICU", "beds": ["04-B"], "hours": 12});
    let (status, assigned) = http.request("PUT", "/api/assignments", &charge, Some(body.clone())).await;
    assert_eq!((status, assigned["by"].as_str()), (200, Some("charge-2")), "{assigned}");
    let (status, refused) = http.request("PUT", "/api/assignments", &nurse, Some(body)).await;
    assert_eq!((status, refused["error"].as_str()), (403, Some("forbidden")), "{refused}");
    assert!(refused["reason"].as_str().unwrap().contains("may not assign"));
    let elsewhere = json!({"nurse": "nurse-5", "unit": "5W", "beds": ["01-A"], "hours": 8});
    assert_eq!(http.request("PUT", "/api/assignments", &charge, Some(elsewhere)).await.0, 403);
    let (status, list) = http.get("/api/assignments", &nurse).await;
    assert_eq!((status, list["assignments"][0]["beds"].clone()), (200, json!(["04-B"])));

    let mut mllp = MllpClient::connect(&server.mllp_addr.to_string(), WAIT).await.unwrap();
    raise(&mut mllp, 1).await;
    let (_, alerts) = http.get("/api/alerts", &nurse).await;
    let patient = alerts["alerts"][0]["alert"]["patient"]["id"].as_str().unwrap().to_string();
    let (status, bad) =
        http.post("/api/silences", &nurse, json!({"patient": patient, "minutes": 7, "reason": "procedure"})).await;
    assert_eq!((status, bad["error"].as_str()), (400, Some("bad_request")), "{bad}");
    let (status, missing) =
        http.post("/api/silences", &nurse, json!({"patient": "nobody", "minutes": 15, "reason": "procedure"})).await;
    assert_eq!(status, 404, "{missing}");
    let (status, silence) =
        http.post("/api/silences", &nurse, json!({"patient": patient, "minutes": 15, "reason": "procedure"})).await;
    assert_eq!((status, silence["by"].as_str()), (200, Some("nurse-5")), "{silence}");
    let (_, open) = http.get("/api/silences", &charge).await;
    assert_eq!(open["silences"][0]["id"], silence["id"]);
    let id = silence["id"].as_str().unwrap();
    let (status, ended) = http.post(&format!("/api/silences/{id}/end"), &charge, json!({})).await;
    assert_eq!((status, ended["ended"]["by"].as_str()), (200, Some("charge-2")), "{ended}");
    assert_eq!(http.get("/api/silences", &charge).await.1["silences"], json!([]));

    let dir_db = vigil::audit::database_dir(&config_qsofa_only(&dir));
    server.shutdown().await;
    let db = fjall::Database::builder(dir_db).open().unwrap();
    let key = vigil::audit::AuditKey::load_or_create(&config_qsofa_only(&dir).store.audit_key_file).unwrap();
    let log = vigil::audit::AuditLog::open(db, key).unwrap();
    let acts: Vec<String> = log
        .since(time::OffsetDateTime::UNIX_EPOCH, 10_000)
        .into_iter()
        .filter(|r| ["assign", "silence", "end_silence"].contains(&r.action.as_str()))
        .map(|r| format!("{} {} {}", r.user, r.action, r.outcome))
        .collect();
    assert_eq!(
        acts,
        [
            "charge-2 assign ok: 1 beds",
            "nurse-5 assign denied: role not permitted",
            "charge-2 assign denied: unit not in token",
            "nurse-5 silence denied: no open alert to silence",
            "nurse-5 silence ok: 15 min, procedure",
            "charge-2 end_silence ok",
        ]
    );
}

/// The unit board's census (issue 16): a bed with no alert is on the board of the unit it is
/// on, with "no score" until vital signs give one, then its NEWS2; a transfer moves it to the
/// other unit's board; a discharge takes it off; a console on another unit never sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_census_gives_every_bed_its_news2_or_none_and_follows_admit_transfer_discharge() {
    let dir = tempdir("census");
    let server = vigil::app::start(&config(&dir)).await.unwrap(); // the shipped pack
    let icu = server.auth.issue("nurse-1", Role::Nurse, vec!["ICU".into()], time::Duration::hours(1));
    let ward = server.auth.issue("nurse-2", Role::Nurse, vec!["5W".into()], time::Duration::hours(1));
    let mut a = Console::connect(server.http_addr, &icu).await;
    a.send(json!({"type": "subscribe", "units": ["ICU"]})).await;
    assert_eq!(a.next(&["census"]).await["beds"], json!([]));
    let mut b = Console::connect(server.http_addr, &ward).await;
    b.send(json!({"type": "subscribe", "units": ["5W"]})).await;
    assert_eq!(b.next(&["census"]).await["beds"], json!([]));

    let mut mllp = MllpClient::connect(&server.mllp_addr.to_string(), WAIT).await.unwrap();
    let ts = now_dtm();
    let adt = |event: &str, n: u32, pv1: &str| {
        [
            format!("MSH|^~\\&|EMR|HOSP|VIGIL|HOSP|{ts}||ADT^{event}^ADT_A01|CEN-{n}|P|2.5.1"),
            "PID|||MRN-CEN^^^HOSP^MR||Census^Test||19700101|F".to_string(),
            pv1.to_string(),
        ]
        .join("\r")
    };
    assert_eq!(ack_code(&mllp.send(&adt("A01", 1, "PV1||I|ICU^11^A")).await.unwrap()), Some("AA"));
    let patient = blind_index(&dir).patient_id("HOSP", "MRN-CEN").0;
    let admitted = a.next(&["bed"]).await;
    let bed = &admitted["bed"];
    assert_eq!(
        (bed["patient"].as_str(), bed["unit"].as_str(), bed["bed"].as_str()),
        (Some(&*patient), Some("ICU"), Some("A"))
    );
    assert_eq!(bed["news2"], Value::Null, "no vital signs yet: no score, never a low one");
    assert!(bed["name"].as_str().unwrap().contains("Census"), "{bed}");

    let vitals = [
        format!("MSH|^~\\&|MONITOR|ICU|VIGIL|HOSP|{ts}||ORU^R01^ORU_R01|CEN-2|P|2.6"),
        "PID|||MRN-CEN^^^HOSP^MR||Census^Test||19700101|F".to_string(),
        "PV1||I|ICU^11^A".to_string(),
        format!("OBX|1|NM|147842^MDC_ECG_HEART_RATE^MDC||80|264864^^MDC|||||R|||{ts}"),
        format!("OBX|2|NM|151562^MDC_RESP_RATE^MDC||16|264928^^MDC|||||R|||{ts}"),
        format!("OBX|3|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC||97|262688^^MDC|||||R|||{ts}"),
        format!("OBX|4|NM|150021^MDC_PRESS_BLD_NONINV_SYS^MDC||120|266016^^MDC|||||R|||{ts}"),
        format!("OBX|5|NM|150344^MDC_TEMP^MDC||37.0|268192^^MDC|||||R|||{ts}"),
        format!("OBX|6|CWE|67775-7^Level of consciousness^LN||A^Alert^HL70000||||||F|||{ts}"),
        format!("OBX|7|NM|3150-0^Inhaled oxygen concentration^LN||21|%|||||F|||{ts}"),
    ]
    .join("\r");
    assert_eq!(ack_code(&mllp.send(&vitals).await.unwrap()), Some("AA"));
    let scored = a.next(&["bed"]).await;
    assert_eq!(scored["bed"]["news2"], json!({"score": 0, "band": "low", "partial": false}), "{scored}");

    // A console that subscribes now gets the bed in its census.
    let mut c = Console::connect(server.http_addr, &icu).await;
    c.send(json!({"type": "subscribe", "units": ["ICU"], "since": 0})).await;
    let census = c.next(&["census"]).await;
    assert_eq!(census["beds"], json!([scored["bed"]]), "{census}");
    assert_eq!(census["truncated"], false);

    assert_eq!(ack_code(&mllp.send(&adt("A02", 3, "PV1||I|5W^2^B|||ICU^11^A")).await.unwrap()), Some("AA"));
    let left = a.next(&["bed", "bed_left"]).await;
    assert_eq!(
        (left["type"].as_str(), left["patient"].as_str(), left["unit"].as_str()),
        (Some("bed_left"), Some(&*patient), Some("ICU"))
    );
    let moved = b.next(&["bed"]).await;
    assert_eq!((moved["bed"]["unit"].as_str(), moved["bed"]["bed"].as_str()), (Some("5W"), Some("B")));
    assert_eq!(moved["bed"]["news2"]["score"], 0, "the score moves with the patient");

    assert_eq!(ack_code(&mllp.send(&adt("A03", 4, "PV1||I|5W^2^B")).await.unwrap()), Some("AA"));
    let gone = b.next(&["bed", "bed_left"]).await;
    assert_eq!(
        (gone["type"].as_str(), gone["patient"].as_str(), gone["unit"].as_str()),
        (Some("bed_left"), Some(&*patient), Some("5W"))
    );
    // The ICU console heard nothing more of the patient after the transfer.
    a.send(json!({"type": "ping"})).await;
    let next = a.next(&["bed", "bed_left", "pong"]).await;
    assert_eq!(next["type"], "pong", "{next}");
    server.shutdown().await;
}

/// Issue 16: the census and the receipts are durable. Beds admitted before a restart are in the
/// census frame right after it, before any patient's actor starts again, each with no score
/// (never a low one) until vital signs arrive; a discharged patient is not; an alert's delivery
/// and read receipts are on its route after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_census_and_the_receipts_survive_a_restart_of_the_server() {
    let dir = tempdir("census-restart");
    let config = config_qsofa_only(&dir);
    let server = vigil::app::start(&config).await.unwrap();
    let nurse = server.auth.issue("nurse-4", Role::Nurse, vec!["ICU".into()], time::Duration::hours(1));
    let mut a = Console::connect(server.http_addr, &nurse).await;
    a.send(json!({"type": "subscribe", "units": ["ICU"]})).await;
    assert_eq!(a.next(&["census"]).await["beds"], json!([]));

    let mut mllp = MllpClient::connect(&server.mllp_addr.to_string(), WAIT).await.unwrap();
    let ts = now_dtm();
    let adt = |event: &str, n: u32, mrn: &str, pv1: &str| {
        [
            format!("MSH|^~\\&|EMR|HOSP|VIGIL|HOSP|{ts}||ADT^{event}^ADT_A01|CR-{n}|P|2.5.1"),
            format!("PID|||{mrn}^^^HOSP^MR||Census^Restart||19700101|F"),
            pv1.to_string(),
        ]
        .join("\r")
    };
    for (n, mrn, pv1) in
        [(1, "MRN-CR-1", "PV1||I|ICU^11^A"), (2, "MRN-CR-2", "PV1||I|ICU^12^B"), (3, "MRN-CR-3", "PV1||I|ICU^13^C")]
    {
        assert_eq!(ack_code(&mllp.send(&adt("A01", n, mrn, pv1)).await.unwrap()), Some("AA"));
        a.next(&["bed"]).await;
    }
    assert_eq!(ack_code(&mllp.send(&adt("A03", 4, "MRN-CR-3", "PV1||I|ICU^13^C")).await.unwrap()), Some("AA"));
    assert_eq!(a.next(&["bed_left"]).await["unit"], "ICU");
    // An alert on bed 04-B (scored: its bed has a NEWS2 before the restart), shown and opened.
    raise(&mut mllp, 1).await;
    let raised = a.next(&["alert"]).await;
    let id = raised["alert"]["id"].as_str().unwrap().to_string();
    a.send(json!({"type": "receipt", "alert_id": id, "kind": "delivered"})).await;
    a.next(&["receipts"]).await;
    a.send(json!({"type": "receipt", "alert_id": id, "kind": "opened"})).await;
    let before = loop {
        let frame = a.next(&["receipts"]).await;
        if frame["receipts"].as_array().unwrap().len() == 2 {
            break frame["receipts"].clone();
        }
    };
    let index = blind_index(&dir);
    let patients: Vec<String> =
        ["MRN-CR-1", "MRN-CR-2", "MRN-PR-1"].iter().map(|m| index.patient_id("HOSP", m).0).collect();
    drop(a);
    server.shutdown().await;

    let server = vigil::app::start(&config).await.unwrap();
    let nurse = server.auth.issue("nurse-4", Role::Nurse, vec!["ICU".into()], time::Duration::hours(1));
    let mut b = Console::connect(server.http_addr, &nurse).await;
    b.send(json!({"type": "subscribe", "units": ["ICU"]})).await;
    let snapshot = b.next(&["snapshot"]).await;
    let census = b.next(&["census"]).await;
    let beds = census["beds"].as_array().unwrap();
    let mut seen: Vec<(String, String, String)> = beds
        .iter()
        .map(|bed| {
            assert_eq!(bed["news2"], Value::Null, "no score until vital signs arrive, never a low one: {bed}");
            assert!(
                bed["name"].as_str().unwrap().contains("Restart") || bed["name"].as_str().unwrap().contains("Protocol")
            );
            (
                bed["patient"].as_str().unwrap().into(),
                bed["room"].as_str().unwrap().into(),
                bed["bed"].as_str().unwrap().into(),
            )
        })
        .collect();
    seen.sort();
    let mut expected = vec![
        (patients[0].clone(), "11".to_string(), "A".to_string()),
        (patients[1].clone(), "12".to_string(), "B".to_string()),
        (patients[2].clone(), "04".to_string(), "B".to_string()),
    ];
    expected.sort();
    assert_eq!(seen, expected, "every census bed, the discharged one not: {census}");
    assert_eq!(snapshot["routes"][&id]["receipts"], before, "the receipts, as recorded: {snapshot}");
    assert_eq!(
        before.as_array().unwrap().iter().map(|r| r["kind"].as_str().unwrap()).collect::<Vec<_>>(),
        ["delivered", "opened"]
    );
    server.shutdown().await;
}
