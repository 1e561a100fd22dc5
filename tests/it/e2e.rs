//! End to end over real sockets: MLLP in, durable ACK out, alert over WebSocket.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::json;
use vigil::auth::Role;
use vigil_loadtest::mllp::{MllpClient, ack_code, ack_control_id};

use crate::support::*;

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oru_with_qsofa_2_is_acked_after_commit_and_reaches_a_subscribed_console() {
    let dir = tempdir("e2e");
    let server = vigil::app::start(&config(&dir)).await.unwrap();
    let token = server.auth.issue("rrt-1", Role::Rrt, vec!["ICU".into()], time::Duration::hours(1));

    let mut ws = ws_connect(server.http_addr, &token).await;
    ws_send(&mut ws, json!({"type": "subscribe", "units": ["ICU"], "since": 0})).await;
    let subscribed = ws_next(&mut ws, &["subscribed"], WAIT).await;
    assert_eq!(subscribed["units"], json!(["ICU"]));

    let mut mllp = MllpClient::connect(&server.mllp_addr.to_string(), WAIT).await.unwrap();
    let ack = mllp.send(&septic_oru("CTRL-0001", "MRN-E2E-1", "Alpha")).await.unwrap();
    assert_eq!(ack_code(&ack), Some("AA"), "{ack}");
    assert_eq!(ack_control_id(&ack), Some("CTRL-0001"));

    // The same vitals also raise NEWS2 and SIRS alerts; this test follows the qSOFA one.
    let mut frame = ws_next(&mut ws, &["alert"], WAIT).await;
    while frame["alert"]["rule"]["id"] != "sepsis.qsofa" {
        frame = ws_next(&mut ws, &["alert"], WAIT).await;
    }
    assert!(frame["seq"].as_u64().unwrap() >= 1);
    let alert = &frame["alert"];
    assert!(!alert["id"].as_str().unwrap().is_empty());
    assert_eq!(alert["patient"]["mrn"], "MRN-E2E-1");
    assert_eq!(alert["patient"]["name"], "Alpha, Test");
    assert_eq!(alert["patient"]["unit"], "ICU");
    assert_eq!(alert["patient"]["room"], "04");
    assert_eq!(alert["patient"]["bed"], "B");
    assert_eq!(alert["rule"]["id"], "sepsis.qsofa");
    assert_eq!(alert["rule"]["version"].as_str().unwrap().len(), 12);
    assert_eq!(alert["severity"], "high");
    assert_eq!(alert["status"], "active");
    assert_eq!(alert["score"], 2.0);
    assert!(alert["summary"].as_str().unwrap().contains("qSOFA 2/3"));
    assert!(alert["details"].is_object());
    assert_eq!(alert["details"]["missing"], json!(["gcs"]), "a missing parameter is reported, not invented");
    for field in ["raised_at", "updated_at"] {
        let text = alert[field].as_str().unwrap();
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).unwrap();
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_console_only_sees_its_units_and_bad_tokens_are_refused() {
    let dir = tempdir("units");
    let server = vigil::app::start(&config(&dir)).await.unwrap();
    let ward = server.auth.issue("n-1", Role::Nurse, vec!["WARD3".into()], time::Duration::hours(1));

    let mut ws = ws_connect(server.http_addr, &ward).await;
    ws_send(&mut ws, json!({"type": "subscribe", "units": ["ICU"]})).await;
    let refused = ws_next(&mut ws, &["error", "subscribed"], WAIT).await;
    assert_eq!(refused["type"], "error");
    assert_eq!(refused["code"], "forbidden");

    for bad in ["not-a-token", &format!("{ward}x")] {
        let url = format!("ws://{}/ws?token={bad}", server.http_addr);
        let err = tokio_tungstenite::connect_async(url).await.unwrap_err();
        let tokio_tungstenite::tungstenite::Error::Http(resp) = err else { panic!("{err}") };
        assert_eq!(resp.status(), 401);
    }
    let expired = server.auth.issue("n-1", Role::Nurse, vec!["ICU".into()], time::Duration::hours(-1));
    let url = format!("ws://{}/ws?token={expired}", server.http_addr);
    assert!(tokio_tungstenite::connect_async(url).await.is_err());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_nak_with_err_and_the_connection_carries_on() {
    let dir = tempdir("nak");
    let server = vigil::app::start(&config(&dir)).await.unwrap();
    let mut mllp = MllpClient::connect(&server.mllp_addr.to_string(), WAIT).await.unwrap();

    let unsupported = "MSH|^~\\&|EMR|HOSP|VIGIL|HOSP|20260101||ZZZ^Z99|CTRL-U|P|2.6";
    let ack = mllp.send(unsupported).await.unwrap();
    assert_eq!(ack_code(&ack), Some("AR"));
    assert_eq!(ack_control_id(&ack), Some("CTRL-U"));
    assert!(ack.contains("\rERR|") && ack.contains("|200^"), "{ack}");

    let no_pid = "MSH|^~\\&|EMR|HOSP|VIGIL|HOSP|20260101||ORU^R01|CTRL-P|P|2.6\rOBX|1|NM|151562^RR^MDC||20";
    let ack = mllp.send(no_pid).await.unwrap();
    assert_eq!(ack_code(&ack), Some("AE"));
    assert!(ack.contains("ERR|"), "{ack}");

    let garbage = "this is not hl7";
    let ack = mllp.send(garbage).await.unwrap();
    assert_eq!(ack_code(&ack), Some("AR"));

    // Enhanced mode (PCD-01 uses MSH-15 AL): the accept ACK is CA.
    let pcd = septic_oru("CTRL-CA", "MRN-CA", "Beta").replacen("|P|2.6", "|P|2.6|||AL|NE", 1);
    let ack = mllp.send(&pcd).await.unwrap();
    assert_eq!(ack_code(&ack), Some("CA"), "{ack}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_messages_are_answered_in_order() {
    let dir = tempdir("pipe");
    let server = vigil::app::start(&config(&dir)).await.unwrap();
    let mut mllp = MllpClient::connect(&server.mllp_addr.to_string(), WAIT).await.unwrap();
    let messages: Vec<String> =
        (0..300).map(|i| septic_oru(&format!("P-{i:04}"), &format!("MRN-P{}", i % 7), "Gamma")).collect();
    let acks = mllp.send_pipelined(&messages).await.unwrap();
    for (i, ack) in acks.iter().enumerate() {
        assert_eq!(ack_code(ack), Some("AA"));
        assert_eq!(ack_control_id(ack), Some(format!("P-{i:04}").as_str()));
    }
    server.shutdown().await;
}

/// `mllp_send` from the Python `hl7` package: `pip install hl7` (CI installs it into .venv).
fn mllp_send() -> PathBuf {
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/mllp_send");
    if venv.exists() {
        return venv;
    }
    let on_path = std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|p| p.join("mllp_send")).find(|p| p.exists()));
    on_path.expect("mllp_send not found: run `python3 -m venv .venv && .venv/bin/pip install hl7` (as .ci/run does)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_external_mllp_send_client_gets_aa() {
    let dir = tempdir("ext");
    let server = vigil::app::start(&config(&dir)).await.unwrap();
    let file = dir.join("message.hl7");
    std::fs::write(&file, septic_oru("CTRL-EXT-1", "MRN-EXT-1", "Delta").replace('\r', "\n")).unwrap();
    let port = server.mllp_addr.port().to_string();
    let tool = mllp_send();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(tool).args(["--loose", "--file"]).arg(&file).args(["--port", &port, "127.0.0.1"]).output()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout).replace('\n', "\r");
    assert!(stdout.contains("MSA|AA|CTRL-EXT-1"), "{stdout}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_message_is_reacknowledged_and_not_processed_twice() {
    let dir = tempdir("dup");
    let server = vigil::app::start(&config(&dir)).await.unwrap();
    let addr = server.mllp_addr.to_string();
    let message = septic_oru("DUP-1", "MRN-DUP", "Epsilon");
    let mut a = MllpClient::connect(&addr, WAIT).await.unwrap();
    let mut b = MllpClient::connect(&addr, WAIT).await.unwrap();
    // Copies in flight together on one connection and on another, then a later resend.
    let twice = [message.clone(), message.clone()];
    let (first, other) = tokio::join!(a.send_pipelined(&twice), b.send(&message));
    let later = a.send(&message).await.unwrap();
    let mut acks = first.unwrap();
    acks.extend([other.unwrap(), later]);
    for ack in &acks {
        assert_eq!(ack_code(ack), Some("AA"), "{ack}");
        assert_eq!(ack_control_id(ack), Some("DUP-1"));
    }
    // The same control id from another sender is another message.
    let other_sender = message.replacen("|MONITOR|ICU|", "|MONITOR|WARD|", 1);
    assert_eq!(ack_code(&a.send(&other_sender).await.unwrap()), Some("AA"));
    server.shutdown().await;
    let ids = stored_control_ids(&dir, &["MRN-DUP".to_string()]).await;
    assert_eq!(ids, vec!["DUP-1".to_string(), "DUP-1".to_string()], "one per sender");
}
