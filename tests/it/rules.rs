//! Rules end to end: `vigil rules check` and `vigil rules test` on the shipped pack, and hot
//! reload on a running server (a file edit is picked up within 2 s; a broken PUT is refused
//! with line and column while the running version keeps firing).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vigil::auth::Role;
use vigil::config::{Config, ServeArgs};
use vigil_loadtest::mllp::{MllpClient, ack_code};

use crate::support::*;

const WAIT: Duration = Duration::from_secs(10);

#[test]
fn the_shipped_pack_checks_and_its_tests_pass() {
    let dir = rules_dir();
    for command in ["check", "test"] {
        let out = Command::new(env!("CARGO_BIN_EXE_vigil")).args(["rules", command]).arg(&dir).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "vigil rules {command} failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        if command == "test" {
            let summary = stdout.lines().rev().find(|l| l.contains(" passed, ")).unwrap();
            let passed: usize = summary.split_whitespace().next().unwrap().parse().unwrap();
            assert!(passed >= 100, "{summary}");
            assert!(summary.contains(" 0 failed"), "{summary}");
        }
    }
}

#[test]
fn rules_check_reports_file_line_column_and_fails() {
    let dir = tempdir("rules-check");
    std::fs::write(
        dir.join("bad.rhai"),
        "fn meta() { #{ id: \"x\", severity: \"low\", triggers: [\"rr\"] } }\nfn evaluate(p) {\n  let = 1;\n}\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vigil")).args(["rules", "check"]).arg(&dir).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.rhai:3:7:"), "{stderr}");
    // A misspelt API function is caught by the lint run, with its position.
    std::fs::write(dir.join("bad.rhai"), "fn meta() { #{ id: \"x\", severity: \"low\", triggers: [\"rr\"] } }\nfn evaluate(p) {\n  p.lates(\"rr\", 60)\n}\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vigil")).args(["rules", "check"]).arg(&dir).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.rhai:3:") && stderr.contains("lates"), "{stderr}");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A minimal HTTP/1.1 client: status and JSON body.
async fn http(addr: SocketAddr, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, serde_json::Value) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response);
    let status: u16 = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        // One chunk is enough for these small bodies.
        body.split_once("\r\n")
            .map(|(_, rest)| rest.rsplit_once("\r\n0\r\n").map_or(rest, |(b, _)| b))
            .unwrap_or(body)
            .trim_end()
            .to_string()
    } else {
        body.to_string()
    };
    (status, serde_json::from_str(&body).unwrap_or(serde_json::Value::Null))
}

/// Send a qSOFA-2 message for `mrn` until an alert of `sepsis.qsofa` for it arrives whose
/// version satisfies `accept`, polling every 100 ms until `deadline`.
async fn qsofa_version_until(
    server: &vigil::app::Running,
    ws: &mut Ws,
    mrn: &str,
    deadline: Instant,
    accept: impl Fn(&str) -> bool,
) -> Option<String> {
    let mut mllp = MllpClient::connect(&server.mllp_addr.to_string(), WAIT).await.unwrap();
    let mut n = 0;
    while Instant::now() < deadline {
        n += 1;
        let ack = mllp.send(&septic_oru(&format!("{mrn}-{n}"), mrn, "Reload")).await.unwrap();
        assert_eq!(ack_code(&ack), Some("AA"), "{ack}");
        let poll_until = Instant::now() + Duration::from_millis(100);
        while Instant::now() < poll_until {
            let left = poll_until.saturating_duration_since(Instant::now());
            let Ok(frame) = tokio::time::timeout(left, ws_next(ws, &["alert"], WAIT)).await else { break };
            let alert = &frame["alert"];
            if alert["rule"]["id"] == "sepsis.qsofa" && alert["patient"]["mrn"] == mrn {
                let version = alert["rule"]["version"].as_str().unwrap().to_string();
                if accept(&version) {
                    return Some(version);
                }
            }
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_rule_is_picked_up_within_2_s_and_a_broken_put_is_refused() {
    let dir = tempdir("rules-reload");
    let rules: PathBuf = dir.join("rules");
    copy_dir(&rules_dir(), &rules);
    let config = Config::load(&ServeArgs {
        mllp_addr: Some("127.0.0.1:0".parse().unwrap()),
        http_addr: Some("127.0.0.1:0".parse().unwrap()),
        data_dir: Some(dir.join("data")),
        rules_dir: Some(rules.clone()),
        config: None,
    })
    .unwrap();
    let server = vigil::app::start(&config).await.unwrap();
    let rrt = server.auth.issue("rrt-1", Role::Rrt, vec!["ICU".into()], time::Duration::hours(1));
    let informaticist = server.auth.issue("inf-1", Role::Informaticist, vec!["*".into()], time::Duration::hours(1));
    let mut ws = ws_connect(server.http_addr, &rrt).await;
    ws_send(&mut ws, json!({"type": "subscribe", "units": ["ICU"]})).await;
    ws_next(&mut ws, &["subscribed"], WAIT).await;

    // Version 1 fires.
    let v1 = qsofa_version_until(&server, &mut ws, "MRN-RL-1", Instant::now() + WAIT, |_| true)
        .await
        .expect("no qSOFA alert");

    // Edit the file on disk: the watcher reloads it within 2 s and the new version fires.
    let file = rules.join("sepsis_qsofa.rhai");
    let edited = std::fs::read_to_string(&file).unwrap().replace("`qSOFA ${q.score}", "`qSOFA (edited) ${q.score}");
    assert!(edited.contains("(edited)"));
    std::fs::write(&file, &edited).unwrap();
    let edited_at = Instant::now();
    let v2 = qsofa_version_until(&server, &mut ws, "MRN-RL-1", edited_at + Duration::from_secs(2), |v| v != v1)
        .await
        .expect("the edited rule was not picked up within 2 s");
    assert_ne!(v1, v2);

    // PUT needs a token with the informaticist (or admin) role.
    let (status, body) = http(server.http_addr, "PUT", "/api/rules/sepsis.qsofa", None, &edited).await;
    assert_eq!(status, 401, "{body}");
    assert!(body["reason"].is_string());
    let (status, body) = http(server.http_addr, "PUT", "/api/rules/sepsis.qsofa", Some(&rrt), &edited).await;
    assert_eq!(status, 403, "{body}");

    // A broken version is refused with file, line and column; the running one stays.
    let broken = edited.replacen("let q = p.score(\"qsofa\");", "let q = ;", 1);
    let line = broken.lines().position(|l| l.contains("let q = ;")).unwrap() + 1;
    let (status, body) = http(server.http_addr, "PUT", "/api/rules/sepsis.qsofa", Some(&informaticist), &broken).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["line"], json!(line), "{body}");
    assert!(body["column"].as_u64().unwrap() > 0, "{body}");
    assert!(body["file"].as_str().unwrap().ends_with("sepsis_qsofa.rhai"), "{body}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), edited, "a refused version is not written");
    let still = qsofa_version_until(&server, &mut ws, "MRN-RL-2", Instant::now() + WAIT, |_| true).await.unwrap();
    assert_eq!(still, v2, "the previous version keeps firing");

    // A good PUT swaps at once and answers the new version.
    let v3_source = edited.replace("(edited)", "(put)");
    let (status, body) =
        http(server.http_addr, "PUT", "/api/rules/sepsis.qsofa", Some(&informaticist), &v3_source).await;
    assert_eq!(status, 200, "{body}");
    let v3 = body["version"].as_str().unwrap().to_string();
    let fired = qsofa_version_until(&server, &mut ws, "MRN-RL-3", Instant::now() + WAIT, |_| true).await.unwrap();
    assert_eq!(fired, v3);
    let (status, listing) = http(server.http_addr, "GET", "/api/rules", Some(&informaticist), "").await;
    assert_eq!(status, 200);
    assert!(
        listing["rules"].as_array().unwrap().iter().any(|r| r["id"] == "sepsis.qsofa" && r["version"] == json!(v3))
    );
    server.shutdown().await;
}
