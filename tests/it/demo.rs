//! `vigil demo`: the simulated ward produces alerts that a console holding a `vigil token`
//! receives within the first minutes.

use std::time::Duration;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_alerts_reach_a_console_holding_a_vigil_token() {
    let dir = tempdir("demo");
    let data = dir.to_str().unwrap().to_string();
    let rules = rules_dir();
    // A faster deterioration than the default three minutes keeps the test short; the ward,
    // the monitors' MLLP and the rules are the same.
    let proc = spawn_vigil(&vigil_args(
        "demo",
        &data,
        rules.to_str().unwrap(),
        &["--interval-secs", "1", "--deterioration-secs", "30"],
    ));
    let token = vigil_token(&dir, "ICU");
    let mut ws = ws_connect(proc.http, &token).await;
    ws_send(&mut ws, serde_json::json!({"type": "subscribe", "units": ["ICU"], "since": 0})).await;
    let frame = ws_next(&mut ws, &["alert"], Duration::from_secs(120)).await;
    assert_eq!(frame["alert"]["patient"]["unit"], "ICU");
    assert_eq!(frame["alert"]["status"], "active");
    assert!(frame["alert"]["score"].as_f64().unwrap() >= 2.0);
}

/// `vigil demo`'s dropout monitor: it reports, goes silent past the `[devices]` threshold, and
/// returns, so a console sees `device.offline` raised for its patient and then resolved. The
/// thresholds and the dropout are shortened through the config file and the demo's flags; the
/// silence is judged by the server's own clock, as in production.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_dropout_monitor_goes_offline_and_comes_back_on_the_console() {
    let dir = tempdir("demo-dropout");
    let data = dir.to_str().unwrap().to_string();
    let rules = rules_dir();
    let config = dir.join("vigil.toml");
    std::fs::write(&config, "[devices]\noffline_floor_secs = 2\noffline_multiplier = 2\ncheck_every_secs = 1\n")
        .unwrap();
    let config = config.to_str().unwrap().to_string();
    let proc = spawn_vigil(&vigil_args(
        "demo",
        &data,
        rules.to_str().unwrap(),
        &[
            "--config",
            &config,
            "--beds",
            "2",
            "--deteriorating",
            "0",
            "--interval-secs",
            "1",
            "--dropout-after-secs",
            "5",
            "--dropout-secs",
            "8",
        ],
    ));
    let token = vigil_token(&dir, "ICU");
    let mut ws = ws_connect(proc.http, &token).await;
    ws_send(&mut ws, serde_json::json!({"type": "subscribe", "units": ["ICU"], "since": 0})).await;
    let mut offline = Vec::new();
    while offline.len() < 2 {
        let frame = ws_next(&mut ws, &["alert"], Duration::from_secs(60)).await;
        if frame["alert"]["rule"]["id"] == "device.offline" {
            offline.push(frame["alert"].clone());
        }
    }
    assert_eq!((offline[0]["status"].as_str(), offline[1]["status"].as_str()), (Some("active"), Some("resolved")));
    assert_eq!(offline[0]["id"], offline[1]["id"]);
    assert_eq!(offline[0]["patient"]["bed"], "A");
    assert_eq!(offline[0]["patient"]["room"], "99");
}
