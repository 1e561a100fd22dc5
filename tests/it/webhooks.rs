//! Outbound webhooks over real sockets: a receiver on 127.0.0.1:0 checks every signature and
//! the payload schema; one endpoint fails twice per change before accepting (retries), one
//! always fails (dead letters, visible to admins at the API), one wants only critical alerts
//! (filtered out); an alert of another unit is not sent to a unit's endpoint; a change in
//! flight at shutdown is sent again after restart and nothing is skipped or repeated.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use serde_json::Value;
use vigil::auth::Role;
use vigil::config::{Config, ServeArgs};
use vigil_actors::{AlertStore, Severity};
use vigil_loadtest::mllp::{MllpClient, ack_code};

use crate::support::*;

const WAIT: Duration = Duration::from_secs(20);
const SECRET_A: &str = "icu-pager-secret-0123456789";
const SECRET_B: &str = "broken-endpoint-secret-0123";

#[derive(Debug, Clone)]
struct Received {
    endpoint: String,
    seq: u64,
    unit: String,
    signature_ok: bool,
    schema_ok: bool,
}

#[derive(Default)]
struct Log {
    requests: Vec<Received>,
    /// (endpoint, seq) answered 2xx, in arrival order.
    accepted: Vec<(String, u64)>,
    /// Endpoint `a` leaves requests unanswered (after its two failures) while set.
    hang: bool,
}

#[derive(Clone)]
struct Receiver {
    log: Arc<Mutex<Log>>,
    schema: Arc<jsonschema::Validator>,
}

struct LocalSchemas;

impl jsonschema::Retrieve for LocalSchemas {
    fn retrieve(&self, uri: &jsonschema::Uri<String>) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        let name = uri.as_str().rsplit('/').next().unwrap_or_default();
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/ws").join(name);
        Ok(serde_json::from_str(&std::fs::read_to_string(path)?)?)
    }
}

/// The receiver's own check, independent of Vigil's signing code.
fn signature_ok(secret: &str, headers: &HeaderMap, body: &[u8]) -> bool {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let Ok(timestamp) = header("x-vigil-timestamp").parse::<i64>() else { return false };
    if (time::OffsetDateTime::now_utc().unix_timestamp() - timestamp).abs() > 300 {
        return false;
    }
    let Some(hex_mac) = header("x-vigil-signature").strip_prefix("sha256=").map(str::to_string) else { return false };
    let Ok(mac_bytes) = hex::decode(hex_mac) else { return false };
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(body);
    mac.verify_slice(&mac_bytes).is_ok()
}

async fn hook(
    State(receiver): State<Receiver>,
    UrlPath(endpoint): UrlPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let secret = if endpoint == "b" { SECRET_B } else { SECRET_A };
    let frame: Value = serde_json::from_slice(&body).unwrap_or_default();
    let seq = frame["seq"].as_u64().unwrap_or_default();
    let header_seq = headers.get("x-vigil-seq").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    let json = headers.get("content-type").is_some_and(|v| v == "application/json");
    let received = Received {
        endpoint: endpoint.clone(),
        seq,
        unit: frame["alert"]["patient"]["unit"].as_str().unwrap_or_default().to_string(),
        signature_ok: signature_ok(secret, &headers, &body),
        schema_ok: json && header_seq == Some(seq) && seq > 0 && receiver.schema.is_valid(&frame),
    };
    let hang = {
        let mut log = receiver.log.lock().unwrap();
        let earlier = log.requests.iter().filter(|r| r.endpoint == endpoint && r.seq == seq).count();
        log.requests.push(received);
        match endpoint.as_str() {
            "a" if earlier < 2 => return StatusCode::SERVICE_UNAVAILABLE,
            "a" if log.hang => true,
            "b" => return StatusCode::INTERNAL_SERVER_ERROR,
            _ => {
                log.accepted.push((endpoint.clone(), seq));
                return StatusCode::NO_CONTENT;
            }
        }
    };
    if hang {
        std::future::pending::<()>().await;
    }
    unreachable!()
}

async fn start_receiver() -> (std::net::SocketAddr, Receiver) {
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/ws/server-frame.json")).unwrap(),
    )
    .unwrap();
    let receiver = Receiver {
        log: Arc::default(),
        schema: Arc::new(jsonschema::options().with_retriever(LocalSchemas).build(&schema).unwrap()),
    };
    let app = axum::Router::new().route("/hook/{endpoint}", axum::routing::post(hook)).with_state(receiver.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, receiver)
}

fn webhook_config(dir: &Path, receiver: std::net::SocketAddr) -> Config {
    std::fs::write(dir.join("a.secret"), format!("{SECRET_A}\n")).unwrap();
    std::fs::write(dir.join("b.secret"), SECRET_B).unwrap();
    let d = dir.display();
    let toml = format!(
        r#"
[[webhooks]]
name = "icu-pager"
url = "http://{receiver}/hook/a"
secret_file = "{d}/a.secret"
units = ["ICU"]
min_severity = "high"
timeout_ms = 5000
max_attempts = 6
backoff_base_ms = 20
backoff_max_ms = 200

[[webhooks]]
name = "broken"
url = "http://{receiver}/hook/b"
secret_file = "{d}/b.secret"
units = ["*"]
max_attempts = 3
backoff_base_ms = 20
backoff_max_ms = 100

[[webhooks]]
name = "critical-only"
url = "http://{receiver}/hook/c"
secret_file = "{d}/a.secret"
units = ["*"]
min_severity = "critical"
"#
    );
    let path = dir.join("vigil.toml");
    std::fs::write(&path, toml).unwrap();
    Config::load(&ServeArgs {
        mllp_addr: Some("127.0.0.1:0".parse().unwrap()),
        http_addr: Some("127.0.0.1:0".parse().unwrap()),
        data_dir: Some(dir.to_path_buf()),
        rules_dir: Some(config_qsofa_only(dir).rules_dir),
        config: Some(path),
    })
    .unwrap()
}

async fn send(server: &vigil::app::Running, message: &str) {
    let mut mllp = MllpClient::connect(&server.mllp_addr.to_string(), WAIT).await.unwrap();
    let ack = mllp.send(message).await.unwrap();
    assert_eq!(ack_code(&ack), Some("AA"), "{ack}");
}

/// Poll `check` every 20 ms until it returns `Some`, or panic with `what` after `WAIT`.
async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn get(http: &reqwest::Client, url: String, token: &str) -> (u16, String) {
    let response = http.get(url).bearer_auth(token).send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

async fn dead_letters(http: &reqwest::Client, server: &vigil::app::Running, admin: &str) -> Vec<Value> {
    let (status, body) = get(http, format!("http://{}/api/webhooks/dead-letters", server.http_addr), admin).await;
    assert_eq!(status, 200, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    body["dead_letters"].as_array().unwrap().clone()
}

fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_sign_retry_filter_dead_letter_and_resume_after_restart() {
    let dir = tempdir("webhooks");
    let (receiver_addr, receiver) = start_receiver().await;
    let config = webhook_config(&dir, receiver_addr);
    vigil::alerts::webhooks::install_tls_provider();
    let http = reqwest::Client::new();
    let log = Arc::clone(&receiver.log);
    let accepted = move |endpoint: &str| -> Vec<u64> {
        log.lock().unwrap().accepted.iter().filter(|(e, _)| e == endpoint).map(|(_, s)| *s).collect()
    };

    // Phase 1: an ICU alert (retried, delivered) and a WARD3 alert (not for the ICU pager).
    let server = vigil::app::start(&config).await.unwrap();
    let admin = server.auth.issue("admin-1", Role::Admin, vec!["*".into()], time::Duration::hours(1));
    let rrt = server.auth.issue("rrt-1", Role::Rrt, vec!["*".into()], time::Duration::hours(1));
    send(&server, &septic_oru("WH-0001", "MRN-WH-1", "Icu")).await;
    send(&server, &septic_oru("WH-0002", "MRN-WH-2", "Ward").replace("PV1||I|ICU^04^B", "PV1||I|WARD3^02^A")).await;
    eventually("the ICU alert accepted by icu-pager", async || (!accepted("a").is_empty()).then_some(())).await;
    let letters = eventually("two dead letters of the broken endpoint", async || {
        let letters = dead_letters(&http, &server, &admin).await;
        (letters.len() >= 2).then_some(letters)
    })
    .await;
    assert_eq!(letters.len(), 2, "{letters:?}");
    for letter in &letters {
        assert_eq!(letter["endpoint"], "broken");
        assert_eq!(letter["attempts"], 3);
        assert_eq!(letter["last_error"], "http 500");
        assert!(!letter["alert_id"].as_str().unwrap().is_empty());
    }
    let (status, _) = get(&http, format!("http://{}/api/webhooks/dead-letters", server.http_addr), &rrt).await;
    assert_eq!(status, 403, "dead letters are for admins");
    let (status, _) = get(&http, format!("http://{}/api/webhooks/dead-letters", server.http_addr), "forged").await;
    assert_eq!(status, 401);
    // Counters: icu-pager 1 delivered after 2 retries; broken 2 retries for each of 2 changes.
    let metrics_url = format!("http://{}/metrics", server.http_addr);
    eventually("webhook counters", async || {
        let (_, text) = get(&http, metrics_url.clone(), &admin).await;
        let counts =
            ["vigil_webhook_delivered_total", "vigil_webhook_retried_total", "vigil_webhook_dead_lettered_total"]
                .map(|name| metric(&text, name));
        (counts == [Some(1), Some(6), Some(2)]).then_some(())
    })
    .await;

    // Phase 2: a change in flight at shutdown. icu-pager fails twice, then hangs; stop then.
    receiver.log.lock().unwrap().hang = true;
    send(&server, &septic_oru("WH-0003", "MRN-WH-3", "Flight")).await;
    let in_flight = eventually("icu-pager's third attempt, left hanging", async || {
        let log = receiver.log.lock().unwrap();
        let mut per_seq = BTreeMap::<u64, usize>::new();
        for r in log.requests.iter().filter(|r| r.endpoint == "a") {
            *per_seq.entry(r.seq).or_default() += 1;
        }
        let done = |seq: u64| log.accepted.iter().any(|(e, s)| e == "a" && *s == seq);
        per_seq.into_iter().find(|&(seq, n)| n >= 3 && !done(seq)).map(|(seq, _)| seq)
    })
    .await;
    server.shutdown().await;
    receiver.log.lock().unwrap().hang = false;

    // Phase 3: restart on the same data: the in-flight change is sent again and accepted.
    let server = vigil::app::start(&config).await.unwrap();
    eventually("the in-flight change accepted after restart", async || {
        accepted("a").contains(&in_flight).then_some(())
    })
    .await;
    eventually("the broken endpoint's third dead letter", async || {
        (dead_letters(&http, &server, &admin).await.len() >= 3).then_some(())
    })
    .await;
    server.shutdown().await;

    // The durable record: the alert log and each endpoint's cursor and dead letters.
    let store = open_store(&dir);
    let changes = store.alerts_after(0, 1000).await.unwrap();
    let last = store.last_seq();
    let ledger = vigil::alerts::webhooks::Ledger::open(store.database()).unwrap();
    let all: Vec<u64> = changes.iter().map(|c| c.seq).collect();
    let icu_high: Vec<u64> = changes
        .iter()
        .filter(|c| c.alert.patient.unit == "ICU" && c.alert.severity >= Severity::High)
        .map(|c| c.seq)
        .collect();
    assert_eq!(icu_high.len(), 2, "two ICU alerts were raised: {all:?}");
    assert!(changes.iter().any(|c| c.alert.patient.unit == "WARD3"), "the WARD3 alert is in the log");
    assert_eq!(accepted("a"), icu_high, "every ICU change accepted once, in order, none skipped");
    assert!(accepted("c").is_empty() && accepted("b").is_empty());
    let log = receiver.log.lock().unwrap();
    assert!(log.requests.iter().all(|r| r.signature_ok), "every request verifies: {:?}", log.requests);
    assert!(log.requests.iter().all(|r| r.schema_ok), "every body is an alert frame: {:?}", log.requests);
    assert!(
        log.requests.iter().filter(|r| r.endpoint == "a").all(|r| r.unit == "ICU"),
        "no other unit to the ICU pager"
    );
    assert!(!log.requests.iter().any(|r| r.endpoint == "c"), "no high alert to the critical-only endpoint");
    let dead: Vec<u64> = ledger.dead_letters(Some("broken"), 100).unwrap().iter().map(|l| l.seq).collect();
    assert_eq!(dead, all, "every change dead-lettered once by the broken endpoint");
    for name in ["icu-pager", "broken", "critical-only"] {
        assert_eq!(ledger.cursor(name).unwrap(), Some(last), "{name} caught up");
    }
}
