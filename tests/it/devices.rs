//! Device feeds over real sockets: IHE PCD-04 alert reports (ORU^R40) answered ORA^R41 after
//! commit, raising, updating and resolving one Vigil alert per device alarm.

use std::time::Duration;

use serde_json::{Value, json};
use vigil::auth::Role;
use vigil_loadtest::mllp::{MllpClient, ack_code, ack_control_id};

use crate::support::*;

const WAIT: Duration = Duration::from_secs(10);

/// An ORU^R40 in the IHE PCD-04 shape (MSH-15 AL, MSH-16 NE; facets in the 68480 family).
pub fn r40(
    control_id: &str,
    mrn: &str,
    alarm_id: &str,
    event: &str,
    phase: &str,
    priority: &str,
    kind: &str,
) -> String {
    let ts = now_dtm();
    [
        format!(
            "MSH|^~\\&|ACM|ICU|VIGIL|HOSP|{ts}||ORU^R40^ORU_R40|{control_id}|P|2.6|||AL|NE||8859/1|||IHE_PCD_ACM_001^IHE PCD^1.3.6.1.4.1.19376.1.6.4.4^ISO"
        ),
        format!("PID|||{mrn}^^^HOSP^MR||Device^Test||19600101|M"),
        "PV1||I|ICU^07^A".to_string(),
        format!("OBR|1||1^{alarm_id}^0012345678ABCDEF^EUI-64|196616^MDC_EVT_ALARM^MDC|||{ts}"),
        format!("OBX|1|ST|{event}|1.0.0.1|"),
        format!("OBX|2|ST|68481^MDC_ATTR_EVT_PHASE^MDC|1.0.0.2|{phase}"),
        "OBX|3|ST|68482^MDC_ATTR_ALARM_STATE^MDC|1.0.0.3|active".to_string(),
        format!("OBX|4|ST|68484^MDC_ATTR_ALARM_PRIORITY^MDC|1.0.0.4|{priority}"),
        format!("OBX|5|ST|68485^MDC_ATTR_ALERT_TYPE^MDC|1.0.0.5|{kind}"),
    ]
    .join("\r")
}

async fn next_alert(ws: &mut Ws, rule: &str) -> serde_json::Value {
    loop {
        let frame = ws_next(ws, &["alert"], WAIT).await;
        if frame["alert"]["rule"]["id"] == rule {
            return frame["alert"].clone();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pcd04_alarms_raise_update_and_resolve_one_alert_each_and_are_answered_ora_r41() {
    let dir = tempdir("pcd04");
    let server = vigil::app::start(&config_qsofa_only(&dir)).await.unwrap();
    let token = server.auth.issue("rn-1", Role::Rrt, vec!["ICU".into()], time::Duration::hours(1));
    let mut ws = ws_connect(server.http_addr, &token).await;
    ws_send(&mut ws, json!({"type": "subscribe", "units": ["ICU"], "since": 0})).await;
    ws_next(&mut ws, &["subscribed"], WAIT).await;
    let mut mllp = MllpClient::connect(&server.mllp_addr.to_string(), WAIT).await.unwrap();

    let spo2 = "196674^MDC_EVT_LO_VAL_LT_LIM^MDC";
    let leads = "196876^MDC_EVT_LEAD_DISCONN^MDC";
    let send = |id: &str, alarm: &str, event: &str, phase: &str, priority: &str, kind: &str| {
        r40(id, "MRN-DEV-1", alarm, event, phase, priority, kind)
    };
    // Physiologic: start (PM), continue (nothing new), update (PH), end.
    let ack = mllp.send(&send("R40-1", "AL-P", spo2, "start", "PM", "SP")).await.unwrap();
    assert_eq!(ack_code(&ack), Some("CA"), "{ack}");
    assert_eq!(ack_control_id(&ack), Some("R40-1"));
    assert!(ack.contains("|ORA^R41^ORA_R41|"), "{ack}");
    let raised = next_alert(&mut ws, "device.alarm").await;
    assert_eq!(raised["severity"], "medium");
    assert_eq!(raised["status"], "active");
    assert_eq!(raised["finding"], "0012345678ABCDEF|AL-P");
    assert_eq!(raised["patient"]["mrn"], "MRN-DEV-1");
    assert_eq!(raised["patient"]["bed"], "A");
    assert_eq!(raised["details"]["kind"], "physiologic");
    let id = raised["id"].clone();

    let ack = mllp.send(&send("R40-2", "AL-P", spo2, "continue", "PM", "SP")).await.unwrap();
    assert_eq!(ack_code(&ack), Some("CA"), "{ack}");
    let ack = mllp.send(&send("R40-3", "AL-P", spo2, "update", "PH", "SP")).await.unwrap();
    assert_eq!(ack_code(&ack), Some("CA"), "{ack}");
    let updated = next_alert(&mut ws, "device.alarm").await;
    assert_eq!((&updated["id"], &updated["severity"]), (&id, &json!("critical")), "the continue changed nothing");
    let ack = mllp.send(&send("R40-4", "AL-P", spo2, "end", "PH", "SP")).await.unwrap();
    assert_eq!(ack_code(&ack), Some("CA"), "{ack}");
    let ended = next_alert(&mut ws, "device.alarm").await;
    assert_eq!((&ended["id"], &ended["status"]), (&id, &json!("resolved")));
    assert_eq!(ended["resolved"]["by"], "rule:device.alarm");

    // Technical: start (PL), continue, end.
    for (n, phase) in ["start", "continue", "end"].into_iter().enumerate() {
        let ack = mllp.send(&send(&format!("R40-T{n}"), "AL-T", leads, phase, "PL", "ST")).await.unwrap();
        assert_eq!(ack_code(&ack), Some("CA"), "{ack}");
    }
    let technical = next_alert(&mut ws, "device.technical").await;
    assert_eq!((&technical["severity"], &technical["status"]), (&json!("low"), &json!("active")));
    assert_eq!(technical["details"]["event_text"], "MDC_EVT_LEAD_DISCONN");
    let resolved = next_alert(&mut ws, "device.technical").await;
    assert_eq!((&resolved["id"], &resolved["status"]), (&technical["id"], &json!("resolved")));

    // A keep-alive is acknowledged and stores nothing; a malformed report is refused.
    let keep_alive = send("R40-K", "HB", "196614^MDC_EVT_ACTIVE^MDC", "start", "PN", "SA");
    let ack = mllp.send(&keep_alive).await.unwrap();
    assert_eq!(ack_code(&ack), Some("CA"), "{ack}");
    let no_id = send("R40-BAD", "", spo2, "start", "PM", "SP").replace("|1^^0012345678ABCDEF^EUI-64|", "||");
    let ack = mllp.send(&no_id).await.unwrap();
    assert_eq!(ack_code(&ack), Some("CE"), "{ack}");
    assert!(ack.contains("|ORA^R41^ORA_R41|") && ack.contains("\rERR||OBR^1^3|101^"), "{ack}");
    let bad_phase = send("R40-BAD2", "AL-X", spo2, "sometimes", "PM", "SP");
    let ack = mllp.send(&bad_phase).await.unwrap();
    assert!(ack.contains("\rERR||OBX^1^5|103^"), "{ack}");
    server.shutdown().await;
}

/// The next alert change of `rule` for the patient `mrn`.
async fn next_alert_of(ws: &mut Ws, rule: &str, mrn: &str) -> Value {
    loop {
        let alert = next_alert(ws, rule).await;
        if alert["patient"]["mrn"] == mrn {
            return alert;
        }
    }
}

/// What a device alarm's alert says, whichever feed it came from (the device label aside).
fn alarm_alert(alert: &Value) -> Value {
    let details = &alert["details"];
    json!({
        "rule": alert["rule"]["id"], "severity": alert["severity"], "status": alert["status"],
        "summary": alert["summary"], "resolved_by": alert["resolved"]["by"],
        "alarm": alert["finding"].as_str().and_then(|f| f.split_once('|')).map(|(_, id)| id),
        "kind": details["kind"], "priority": details["priority"], "state": details["state"],
        "event": details["event"], "event_text": details["event_text"], "missing": details["missing"],
    })
}

/// Alarm reports as a FHIR gateway sends them, built and validated by `fhir.resources`
/// (tests/external/fhir_alarms.py).
fn fhir_alarms(system: &str, mrn: &str, device: &str, reports: &Value) -> Vec<Value> {
    use std::io::Write;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".venv/bin/python");
    assert!(
        python.exists(),
        "no .venv with fhir.resources: python3 -m venv .venv && .venv/bin/pip install -r tests/requirements.txt"
    );
    let mut child = std::process::Command::new(python)
        .arg(root.join("tests/external/fhir_alarms.py"))
        .args(["--system", system, "--mrn", mrn, "--device", device])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(reports.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "fhir_alarms.py: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fhir_alarm_observations_raise_update_and_resolve_the_same_alerts_as_pcd04() {
    const SYSTEM: &str = "http://hospital.example.org/mrn";
    let dir = tempdir("fhir-alarm");
    let mut config = config_qsofa_only(&dir);
    config.fhir.identifier_systems.insert("HOSP".into(), SYSTEM.into());
    let server = vigil::app::start(&config).await.unwrap();
    let rrt = server.auth.issue("rrt-fa", Role::Rrt, vec!["ICU".into()], time::Duration::hours(1));
    let gateway = server.auth.issue("gw-fa", Role::Gateway, Vec::new(), time::Duration::hours(1));
    let api = Api::new(&server);
    let mut ws = ws_connect(server.http_addr, &rrt).await;
    ws_send(&mut ws, json!({"type": "subscribe", "units": ["ICU"], "since": 0})).await;
    ws_next(&mut ws, &["subscribed"], WAIT).await;
    let mut mllp = MllpClient::connect(&server.mllp_addr.to_string(), WAIT).await.unwrap();
    let ack = mllp.send(&adt("FA-A01", "A01", "MRN-FA-FHIR", "ICU^11^B")).await.unwrap();
    assert_eq!(ack_code(&ack), Some("AA"), "{ack}");

    // (alarm, event, phase, priority, kind): a physiologic and a technical alarm's life, then
    // a keep-alive.
    let spo2 = ("196674", "MDC_EVT_LO_VAL_LT_LIM");
    let leads = ("196876", "MDC_EVT_LEAD_DISCONN");
    let steps = [
        ("AL-P", spo2, "start", "PM", "SP"),
        ("AL-P", spo2, "continue", "PM", "SP"),
        ("AL-P", spo2, "update", "PH", "SP"),
        ("AL-P", spo2, "end", "PH", "SP"),
        ("AL-T", leads, "start", "PL", "ST"),
        ("AL-T", leads, "continue", "PL", "ST"),
        ("AL-T", leads, "end", "PL", "ST"),
        ("HB", ("196614", "MDC_EVT_ACTIVE"), "start", "PN", "SA"),
    ];
    let reports: Vec<Value> = steps
        .iter()
        .map(|(alarm, (event, display), phase, priority, kind)| {
            json!({"alarm": alarm, "event": event, "display": display, "phase": phase, "state": "active",
                   "priority": priority, "kind": kind})
        })
        .collect();
    let observations = fhir_alarms(SYSTEM, "MRN-FA-FHIR", "00-12-34-56-78-AB-CD-EE", &json!(reports));
    let post = |body: &Value| {
        api.http
            .post(format!("{}/fhir/Observation", api.base))
            .bearer_auth(&gateway)
            .header("content-type", "application/fhir+json")
            .body(body.to_string())
            .send()
    };
    for (n, ((alarm, (event, display), phase, priority, kind), observation)) in
        steps.iter().zip(&observations).enumerate()
    {
        let r40 =
            r40(&format!("FA-R40-{n}"), "MRN-FA-HL7", alarm, &format!("{event}^{display}^MDC"), phase, priority, kind);
        let ack = mllp.send(&r40).await.unwrap();
        assert_eq!(ack_code(&ack), Some("CA"), "{ack}");
        let response = post(observation).await.unwrap();
        let status = response.status().as_u16();
        let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap_or(Value::Null);
        let want = if *alarm == "HB" { 200 } else { 201 };
        assert_eq!(status, want, "step {n}: {body}");
        if *phase == "continue" || *alarm == "HB" {
            continue; // nothing changes; the next change shows it
        }
        let rule = if *kind == "ST" { "device.technical" } else { "device.alarm" };
        let hl7 = next_alert_of(&mut ws, rule, "MRN-FA-HL7").await;
        let fhir = next_alert_of(&mut ws, rule, "MRN-FA-FHIR").await;
        assert_eq!(alarm_alert(&fhir), alarm_alert(&hl7), "step {n} ({alarm} {phase})");
        assert_eq!(fhir["finding"], format!("0012345678ABCDEE|{alarm}"));
        assert_eq!(fhir["patient"]["bed"], "B");
        let want_status = if *phase == "end" { "resolved" } else { "active" };
        assert_eq!(fhir["status"], want_status, "step {n}");
    }

    // A resend of a report is answered as then; a report without its phase is refused naming it.
    let response = post(&observations[0]).await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let mut no_phase = observations[0].clone();
    no_phase["component"].as_array_mut().unwrap().retain(|c| c["code"]["coding"][0]["code"] != "68481");
    let response = post(&no_phase).await.unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap_or(Value::Null);
    assert_eq!(body["issue"][0]["expression"][0], "Observation.component", "{body}");
    server.shutdown().await;
}

/// A PCD-01 report (ORU^R01, MSH-15 AL / MSH-16 NE) from `device` carrying one heart rate, for
/// the patient `pid` names (`None`: no PID segment, as a gateway that does not know the patient
/// sends it).
pub fn pcd01(control_id: &str, device: &str, pid: Option<&str>, hr: u32) -> String {
    let ts = now_dtm();
    let mut segments = vec![format!("MSH|^~\\&|GW|ICU|VIGIL|HOSP|{ts}||ORU^R01^ORU_R01|{control_id}|P|2.6|||AL|NE")];
    if let Some(mrn) = pid {
        segments.push(format!("PID|||{mrn}^^^HOSP^MR||Device^Named||19600101|M"));
        segments.push("PV1||I|ICU^09^C".to_string());
    }
    segments.push(format!("OBR|1||{control_id}^GW|182777000^monitoring of patient^SCT|||{ts}"));
    segments.push(format!(
        "OBX|1|NM|147842^MDC_ECG_HEART_RATE^MDC|1.1.1.1|{hr}|264864^MDC_DIM_BEAT_PER_MIN^MDC|||||R|||{ts}||||{device}"
    ));
    segments.join("\r")
}

fn adt(control_id: &str, trigger: &str, mrn: &str, bed: &str) -> String {
    let ts = now_dtm();
    [
        format!("MSH|^~\\&|EMR|HOSP|VIGIL|HOSP|{ts}||ADT^{trigger}^ADT_A01|{control_id}|P|2.5.1"),
        format!("PID|||{mrn}^^^HOSP^MR||Bed^Follow||19500101|F"),
        format!("PV1||I|{bed}||||D1^Attending||||||||||||V-{mrn}"),
    ]
    .join("\r")
}

struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    fn new(server: &vigil::app::Running) -> Self {
        vigil::alerts::webhooks::install_tls_provider();
        Api { http: reqwest::Client::new(), base: format!("http://{}", server.http_addr) }
    }

    async fn call(&self, method: reqwest::Method, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(token);
        if let Some(body) = body {
            request = request.header("content-type", "application/json").body(body.to_string());
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, token, None).await
    }

    async fn put(&self, device: &str, token: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::PUT, &format!("/api/devices/{device}/association"), token, Some(body)).await
    }

    async fn metric(&self, name: &str, token: &str) -> Option<f64> {
        let text =
            self.http.get(format!("{}/metrics", self.base)).bearer_auth(token).send().await.ok()?.text().await.ok()?;
        text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }
}

/// Association by bed, by the PID of PCD-01 and through the API; quarantine of readings from a
/// device with no patient; transfer ending a bed association; every change audited; all of it
/// persisted across a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unassociated_readings_are_quarantined_and_beds_transfers_and_the_api_decide_whose_a_reading_is() {
    let dir = tempdir("device-assoc");
    let config = config_qsofa_only(&dir);
    let server = vigil::app::start(&config).await.unwrap();
    let nurse = server.auth.issue("rn-assoc", Role::Nurse, vec!["ICU".into()], time::Duration::hours(1));
    let rrt = server.auth.issue("rrt-assoc", Role::Rrt, vec!["ICU".into()], time::Duration::hours(1));
    let gateway = server.auth.issue("gw-1", Role::Gateway, vec!["*".into()], time::Duration::hours(1));
    let api = Api::new(&server);
    let mut mllp = MllpClient::connect(&server.mllp_addr.to_string(), WAIT).await.unwrap();

    // 1. A reading from a device nobody placed or named: stored in quarantine, acknowledged,
    //    counted, visible, and nobody's.
    let ack = mllp.send(&pcd01("Q-1", "MON-7A", None, 71)).await.unwrap();
    assert_eq!(ack_code(&ack), Some("CA"), "{ack}");
    let (status, body) = api.get("/api/quarantine", &rrt).await;
    assert_eq!(status, 200, "{body}");
    let readings = body["readings"].as_array().unwrap();
    assert_eq!(readings.len(), 1, "{body}");
    assert_eq!((readings[0]["device"].as_str(), readings[0]["message"].as_str()), (Some("MON-7A"), Some("Q-1")));
    assert_eq!(readings[0]["observations"][0]["name"], "hr");
    assert_eq!(readings[0]["observations"][0]["value"], 71.0);
    assert_eq!(api.metric("vigil_device_quarantined_readings_total", &rrt).await, Some(1.0));
    assert_eq!(api.get("/api/quarantine", &gateway).await.0, 403, "a gateway reads no quarantine");

    // 2. Placed at a bed by a nurse (an RRT may not); ADT admits a patient to that bed: the
    //    device reports for them, and a reading without PID is theirs.
    let bed = json!({"bed": {"unit": "ICU", "room": "07", "bed": "A"}});
    assert_eq!(api.put("MON-7A", &rrt, bed.clone()).await.0, 403);
    let (status, placed) = api.put("MON-7A", &nurse, bed).await;
    assert_eq!(status, 200, "{placed}");
    assert_eq!((placed["bed"]["bed"].as_str(), &placed["association"]), (Some("A"), &Value::Null), "an empty bed");
    let ack = mllp.send(&adt("A01-1", "A01", "MRN-BED-1", "ICU^07^A")).await.unwrap();
    assert_eq!(ack_code(&ack), Some("AA"), "{ack}");
    let (_, device) = api.get("/api/devices/MON-7A", &rrt).await;
    assert_eq!(device["association"]["source"], "bed", "{device}");
    let patient_id = device["association"]["patient_id"].as_str().unwrap().to_string();
    let ack = mllp.send(&pcd01("Q-2", "MON-7A", None, 88)).await.unwrap();
    assert_eq!(ack_code(&ack), Some("CA"), "{ack}");
    let (status, summary) = api.get(&format!("/api/patients/{patient_id}"), &rrt).await;
    assert_eq!(status, 200, "{summary}");
    assert_eq!(summary["mrn"], "MRN-BED-1");
    assert_eq!(summary["latest"]["hr"]["value"], 88.0, "the reading went to the bed's patient: {summary}");
    assert_eq!(api.get("/api/quarantine", &rrt).await.1["readings"].as_array().unwrap().len(), 1);

    // 3. A transfer to another bed ends the bed association: the next reading is quarantined
    //    (the device stays at its bed; it reports for whoever ADT puts there next).
    let ack = mllp.send(&adt("A02-1", "A02", "MRN-BED-1", "ICU^08^B")).await.unwrap();
    assert_eq!(ack_code(&ack), Some("AA"), "{ack}");
    let (_, device) = api.get("/api/devices/MON-7A", &rrt).await;
    assert_eq!((&device["association"], device["bed"]["bed"].as_str()), (&Value::Null, Some("A")), "{device}");
    let ack = mllp.send(&pcd01("Q-3", "MON-7A", None, 99)).await.unwrap();
    assert_eq!(ack_code(&ack), Some("CA"), "{ack}");
    let (_, body) = api.get("/api/quarantine?limit=1", &rrt).await;
    assert_eq!(body["readings"][0]["message"], "Q-3", "newest first: {body}");
    let (_, summary) = api.get(&format!("/api/patients/{patient_id}"), &rrt).await;
    assert_eq!(summary["latest"]["hr"]["value"], 88.0, "the quarantined reading is nobody's");

    // 4. A PCD-01 naming a patient associates its device with them; then the API ends it.
    let ack = mllp.send(&pcd01("P-1", "PUMP-3", Some("MRN-PID-1"), 64)).await.unwrap();
    assert_eq!(ack_code(&ack), Some("CA"), "{ack}");
    let (_, device) = api.get("/api/devices/PUMP-3", &rrt).await;
    assert_eq!(device["association"]["source"], "message", "{device}");
    let ack = mllp.send(&pcd01("P-2", "PUMP-3", None, 66)).await.unwrap();
    assert_eq!(ack_code(&ack), Some("CA"), "{ack}");
    let pid_patient = device["association"]["patient_id"].as_str().unwrap().to_string();
    let (_, summary) = api.get(&format!("/api/patients/{pid_patient}"), &rrt).await;
    assert_eq!(summary["latest"]["hr"]["value"], 66.0, "{summary}");
    let (status, ended) = api.call(reqwest::Method::DELETE, "/api/devices/PUMP-3/association", &nurse, None).await;
    assert_eq!((status, &ended["association"]), (200, &Value::Null), "{ended}");

    // 5. Explicitly through the API, by patient identifier.
    let body = json!({"patient": {"authority": "HOSP", "mrn": "MRN-BED-1"}});
    let (status, device) = api.put("MON-7A", &nurse, body).await;
    assert_eq!(status, 200, "{device}");
    assert_eq!(device["association"]["source"], "api");
    assert_eq!(device["association"]["patient_id"], patient_id.as_str(), "the same patient as over HL7");
    assert_eq!(api.put("MON-7A", &nurse, json!({"bed": null})).await.0, 400, "patient or bed");
    let (_, list) = api.get("/api/devices", &rrt).await;
    assert_eq!(list["devices"].as_array().unwrap().len(), 2, "{list}");
    assert_eq!(api.metric("vigil_device_quarantined_readings_total", &rrt).await, Some(2.0));
    assert_eq!(api.metric("vigil_devices_live", &rrt).await, Some(2.0));
    server.shutdown().await;

    // Persisted: the association and placement survive a restart.
    let server = vigil::app::start(&config).await.unwrap();
    let rrt = server.auth.issue("rrt-assoc", Role::Rrt, vec!["ICU".into()], time::Duration::hours(1));
    let api = Api::new(&server);
    let (_, device) = api.get("/api/devices/MON-7A", &rrt).await;
    assert_eq!(device["association"]["source"], "api", "{device}");
    assert_eq!(device["bed"]["bed"], "A");
    assert_eq!(api.get("/api/quarantine", &rrt).await.1["readings"].as_array().unwrap().len(), 2);
    server.shutdown().await;

    // Every association change is in the HMAC-chained audit log, patients by opaque id only.
    let store = open_store(&dir);
    let audit_key =
        vigil::audit::AuditKey::load_or_create(&vigil::config::default_keys_dir(&dir).join("audit.key")).unwrap();
    let audit = vigil::audit::AuditLog::open(store.database(), audit_key).unwrap();
    let records = audit.since(time::OffsetDateTime::UNIX_EPOCH, 1000);
    let device_records: Vec<_> = records.iter().filter(|r| r.action.starts_with("device.")).collect();
    let has = |action: &str, user: &str, text: &str| {
        device_records.iter().any(|r| r.action == action && r.user == user && r.outcome.contains(text))
    };
    assert!(has("device.associate", "feed:hl7", "by bed (adt admit)"), "{device_records:#?}");
    assert!(has("device.dissociate", "feed:hl7", "(adt transfer)"), "{device_records:#?}");
    assert!(has("device.associate", "feed:hl7", "by message (named by its message)"), "{device_records:#?}");
    assert!(has("device.dissociate", "rn-assoc", "(api)"), "{device_records:#?}");
    assert!(has("device.associate", "rn-assoc", "by api (api)"), "{device_records:#?}");
    assert!(device_records.iter().all(|r| !r.outcome.contains("MRN-")), "no MRN in the audit log");
    assert!(audit.verify().problems.is_empty(), "the chain verifies");
}

/// Leads off inside a PCD-01 report (an OBX carrying `196876^MDC_EVT_LEAD_DISCONN^MDC`) raises
/// one `device.technical` alert for the device's patient; the next report with valid data and
/// no such row resolves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leads_off_in_pcd01_raises_a_technical_alert_that_valid_data_resolves() {
    let dir = tempdir("leads-off");
    let server = vigil::app::start(&config_qsofa_only(&dir)).await.unwrap();
    let token = server.auth.issue("rrt-lo", Role::Rrt, vec!["ICU".into()], time::Duration::hours(1));
    let mut ws = ws_connect(server.http_addr, &token).await;
    ws_send(&mut ws, json!({"type": "subscribe", "units": ["ICU"], "since": 0})).await;
    ws_next(&mut ws, &["subscribed"], WAIT).await;
    let mut mllp = MllpClient::connect(&server.mllp_addr.to_string(), WAIT).await.unwrap();
    let ts = now_dtm();
    let leads_off = format!(
        "OBX|2|ST|196876^MDC_EVT_LEAD_DISCONN^MDC|1.1.1.2|||||||R|||{ts}||||MON-LO\rOBX|3|CWE|68480^MDC_ATTR_ALERT_SOURCE^MDC|1.3.1.9|0^MDC_EVT_PROBE_DISCONN^MDC||||||R|||{ts}||||MON-LO"
    );
    let with_leads_off = format!("{}\r{leads_off}", pcd01("LO-1", "MON-LO", Some("MRN-LO-1"), 80));
    let ack = mllp.send(&with_leads_off).await.unwrap();
    assert_eq!(ack_code(&ack), Some("CA"), "{ack}");
    let first = next_alert(&mut ws, "device.technical").await;
    let second = next_alert(&mut ws, "device.technical").await;
    let mut raised = [first, second];
    raised.sort_by_key(|a| a["finding"].as_str().unwrap_or_default().to_string());
    assert_eq!(raised[0]["finding"], "MON-LO|tech:MDC|196876@1.1.1.2", "{}", raised[0]);
    assert_eq!(raised[1]["finding"], "MON-LO|tech:MDC|MDC_EVT_PROBE_DISCONN@1.3.1.9", "{}", raised[1]);
    assert_eq!(raised[0]["status"], "active");
    assert_eq!(raised[0]["severity"], "high", "no priority sent: shown as high");
    assert_eq!(raised[0]["details"]["event_text"], "MDC_EVT_LEAD_DISCONN");
    assert_eq!(raised[0]["patient"]["mrn"], "MRN-LO-1");
    // Repeated: nothing new. Then valid data without the condition: both resolve.
    let again = with_leads_off.replace("|LO-1|", "|LO-2|");
    assert_eq!(ack_code(&mllp.send(&again).await.unwrap()), Some("CA"));
    let ack = mllp.send(&pcd01("LO-3", "MON-LO", Some("MRN-LO-1"), 82)).await.unwrap();
    assert_eq!(ack_code(&ack), Some("CA"), "{ack}");
    let mut resolved = [next_alert(&mut ws, "device.technical").await, next_alert(&mut ws, "device.technical").await];
    resolved.sort_by_key(|a| a["finding"].as_str().unwrap_or_default().to_string());
    for (before, after) in raised.iter().zip(&resolved) {
        assert_eq!((&after["id"], &after["status"]), (&before["id"], &json!("resolved")), "{after}");
    }
    server.shutdown().await;
}

/// FHIR Observations feed the same device registry and actors as PCD-01: the device an
/// Observation names (an EUI-64 under the PHD system) reports for its subject from then on, an
/// Observation carrying a leads-off MDC code raises `device.technical`, and the next one with a
/// value resolves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fhir_observations_report_their_device_and_carry_technical_conditions() {
    const SYSTEM: &str = "http://hospital.example.org/mrn";
    const PHD: &str = "urn:oid:1.2.840.10004.1.1.1.0.0.1.0.0.1.2680";
    let dir = tempdir("fhir-device");
    let mut config = config_qsofa_only(&dir);
    config.fhir.identifier_systems.insert("HOSP".into(), SYSTEM.into());
    let server = vigil::app::start(&config).await.unwrap();
    let rrt = server.auth.issue("rrt-fd", Role::Rrt, vec!["ICU".into()], time::Duration::hours(1));
    let gateway = server.auth.issue("gw-fd", Role::Gateway, Vec::new(), time::Duration::hours(1));
    let api = Api::new(&server);
    let mut ws = ws_connect(server.http_addr, &rrt).await;
    ws_send(&mut ws, json!({"type": "subscribe", "units": ["ICU"], "since": 0})).await;
    ws_next(&mut ws, &["subscribed"], WAIT).await;
    let mut mllp = MllpClient::connect(&server.mllp_addr.to_string(), WAIT).await.unwrap();
    let ack = mllp.send(&adt("FD-A01", "A01", "MRN-FD-1", "ICU^10^A")).await.unwrap();
    assert_eq!(ack_code(&ack), Some("AA"), "{ack}");

    let now = time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap();
    let observation = |code: Value, value: Option<Value>| {
        let mut o = json!({
            "resourceType": "Observation",
            "status": "final",
            "code": code,
            "subject": {"identifier": {"system": SYSTEM, "value": "MRN-FD-1"}},
            "device": {"identifier": {"system": PHD, "value": "71-10-00-FE-FF-5F-49-B0"}},
            "effectiveDateTime": now,
        });
        if let Some(value) = value {
            o["valueQuantity"] = value;
        }
        o
    };
    let post = |body: Value| {
        api.http
            .post(format!("{}/fhir/Observation", api.base))
            .bearer_auth(&gateway)
            .header("content-type", "application/fhir+json")
            .body(body.to_string())
            .send()
    };
    let leads_off = observation(
        json!({"coding": [{"system": "urn:iso:std:iso:11073:10101", "code": "196876", "display": "MDC_EVT_LEAD_DISCONN"}]}),
        None,
    );
    let answer = post(leads_off).await.unwrap();
    assert_eq!(answer.status().as_u16(), 200, "nothing stored as an observation");
    let raised = next_alert(&mut ws, "device.technical").await;
    assert_eq!(raised["finding"], "711000FEFF5F49B0|tech:MDC|196876", "{raised}");
    assert_eq!(raised["patient"]["mrn"], "MRN-FD-1");
    let (_, device) = api.get("/api/devices/711000FEFF5F49B0", &rrt).await;
    assert_eq!(device["association"]["source"], "message", "{device}");

    let heart_rate = observation(
        json!({"coding": [{"system": "http://loinc.org", "code": "8867-4"}]}),
        Some(json!({"value": 72, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"})),
    );
    let answer = post(heart_rate).await.unwrap();
    assert_eq!(answer.status().as_u16(), 201);
    let resolved = next_alert(&mut ws, "device.technical").await;
    assert_eq!((&resolved["id"], &resolved["status"]), (&raised["id"], &json!("resolved")), "{resolved}");
    assert_eq!(api.metric("vigil_devices_live", &rrt).await, Some(1.0));
    server.shutdown().await;
}
