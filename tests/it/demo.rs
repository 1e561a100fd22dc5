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
