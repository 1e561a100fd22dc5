//! Durability across `kill -9`: every message that got an accepting ACK is in the store
//! after the process dies mid-flow, and the server restarts on the same data.

use std::collections::HashSet;
use std::time::Duration;

use vigil_actors::AlertStore;
use vigil_loadtest::mllp::{MllpClient, ack_code, ack_control_id};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acked_message_survives_kill_9_and_a_restart() {
    let dir = tempdir("crash");
    let data = dir.to_str().unwrap().to_string();
    let rules = rules_dir();
    let args = vigil_args("serve", &data, rules.to_str().unwrap(), &[]);
    let mut proc = spawn_vigil(&args);

    let mut acked = Vec::new();
    let mut client = MllpClient::connect(&proc.mllp.to_string(), Duration::from_secs(5)).await.unwrap();
    // Batches keep messages in flight so the kill lands while commits are under way.
    'flow: for batch in 0..1000 {
        let messages: Vec<String> =
            (0..20).map(|i| septic_oru(&format!("K-{batch}-{i}"), &format!("MRN-K{}", i % 5), "Kappa")).collect();
        if batch == 10 {
            proc.child.kill().unwrap(); // SIGKILL: no shutdown path runs
        }
        match client.send_pipelined(&messages).await {
            Ok(acks) => {
                for ack in acks {
                    assert_eq!(ack_code(&ack), Some("AA"));
                    acked.push(ack_control_id(&ack).unwrap().to_string());
                }
            }
            Err(_) => break 'flow,
        }
    }
    proc.child.wait().unwrap();
    assert!(acked.len() >= 200, "only {} acked before the kill", acked.len());

    // Read the store the dead process left behind.
    let mrns: Vec<String> = (0..5).map(|p| format!("MRN-K{p}")).collect();
    let stored: HashSet<String> = stored_control_ids(&dir, &mrns).await.into_iter().collect();
    let lost: Vec<_> = acked.iter().filter(|c| !stored.contains(*c)).collect();
    assert!(lost.is_empty(), "acknowledged but not stored: {lost:?}");
    let store = open_store(&dir);
    let alerts = store.open_alerts().await.unwrap();
    // The same vitals raise NEWS2 and SIRS alerts too; count the qSOFA ones.
    let qsofa = alerts.iter().filter(|a| a.alert.rule.id == "sepsis.qsofa").count();
    assert_eq!(qsofa, 5, "one open qSOFA alert per patient");
    // Every alert these vitals should raise (RR 26, SBP 92, HR 118: qSOFA 2, SIRS 2, NEWS2 7)
    // exists, for every patient, exactly once — and nothing else.
    let index = blind_index(&dir);
    for mrn in &mrns {
        let id = index.patient_id("HOSP", mrn);
        let mut rules: Vec<&str> =
            alerts.iter().filter(|a| a.alert.patient.id == id).map(|a| a.alert.rule.id.as_str()).collect();
        rules.sort_unstable();
        assert_eq!(rules, vec!["news2", "sepsis.qsofa", "sepsis.sirs"], "{mrn}");
    }
    let log = store.alerts_after(0, 100_000).await.unwrap();
    let raised: HashSet<&str> = log.iter().map(|c| c.alert.id.0.as_str()).collect();
    assert_eq!(raised.len(), 15, "each alert was raised once: no second episode after the kill");
    drop(store);

    // The server comes back on the same data and serves the alerts it had.
    let proc = spawn_vigil(&args);
    // A sender that never saw its ACK resends after the restart: re-acknowledged, not stored twice.
    let resent = acked.last().unwrap().clone();
    let (batch, i) = resent.trim_start_matches("K-").split_once('-').unwrap();
    let _ = batch;
    let mrn = format!("MRN-K{}", i.parse::<usize>().unwrap() % 5);
    let mut client = MllpClient::connect(&proc.mllp.to_string(), Duration::from_secs(5)).await.unwrap();
    let ack = client.send(&septic_oru(&resent, &mrn, "Kappa")).await.unwrap();
    assert_eq!(ack_code(&ack), Some("AA"));
    assert_eq!(ack_control_id(&ack), Some(resent.as_str()));
    let token = vigil_token(&dir, "ICU");
    let mut ws = ws_connect(proc.http, &token).await;
    ws_send(&mut ws, serde_json::json!({"type": "subscribe", "units": ["ICU"]})).await;
    let snapshot = ws_next(&mut ws, &["snapshot"], Duration::from_secs(10)).await;
    let qsofa_open =
        snapshot["alerts"].as_array().unwrap().iter().filter(|a| a["rule"]["id"] == "sepsis.qsofa").count();
    assert_eq!(qsofa_open, 5);
    drop(proc);
    let copies = stored_control_ids(&dir, &[mrn]).await.into_iter().filter(|c| *c == resent).count();
    assert_eq!(copies, 1, "a resend after restart is not stored again");
}
