//! Durability across `kill -9`: every message that got an accepting ACK is in the store
//! after the process dies mid-flow, and the server restarts on the same data — once, and over
//! many kill/restart cycles at random moments under load (`VIGIL_CRASH_CYCLES`, default 5;
//! `tests/crash_cycles.sh` runs 100).

use std::collections::{HashMap, HashSet};
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

/// Sends pipelined batches for one patient on one connection until the connection breaks;
/// returns the send indexes that were acknowledged AA, in order. `next` numbers the messages
/// of this patient across cycles.
async fn patient_flow(
    mllp: String,
    patient: usize,
    mut next: usize,
    progress: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> (Vec<usize>, usize) {
    let mut acked = Vec::new();
    // The first reply after a restart waits for the patient's actor to rebuild from its
    // history, which grows with every cycle (over 5 s after ~60 cycles in a debug build).
    let mut client = match MllpClient::connect(&mllp, Duration::from_secs(30)).await {
        Ok(client) => client,
        Err(e) => {
            eprintln!("patient {patient}: no connection this cycle: {e}");
            return (acked, next);
        }
    };
    loop {
        let indexes: Vec<usize> = (next..next + 10).collect();
        next += 10;
        let messages: Vec<String> = indexes
            .iter()
            .map(|n| septic_oru(&format!("CY-{patient}-{n}"), &format!("MRN-CY{patient}"), "Cycle"))
            .collect();
        match client.send_pipelined(&messages).await {
            Ok(acks) => {
                for (ack, n) in acks.iter().zip(&indexes) {
                    assert_eq!(ack_code(ack), Some("AA"), "{ack}");
                    assert_eq!(ack_control_id(ack), Some(format!("CY-{patient}-{n}").as_str()));
                    acked.push(*n);
                }
                progress.fetch_add(acks.len(), std::sync::atomic::Ordering::Relaxed);
            }
            Err(e) => {
                if acked.is_empty() {
                    // Expected once the process is killed; before any ACK it says why.
                    eprintln!("patient {patient}: no ACK this cycle: {e}");
                }
                return (acked, next);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_messages_survive_repeated_kill_9_at_random_moments_in_order_and_alerts_are_not_duplicated() {
    let cycles: usize = std::env::var("VIGIL_CRASH_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    const PATIENTS: usize = 4;
    let dir = tempdir("crash-cycles");
    let data = dir.to_str().unwrap().to_string();
    let rules = rules_dir();
    let args = vigil_args("serve", &data, rules.to_str().unwrap(), &[]);
    let mut acked: HashMap<usize, Vec<usize>> = HashMap::new();
    let mut next = [0usize; PATIENTS];
    for cycle in 0..cycles {
        let mut proc = spawn_vigil(&args);
        let progress = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let flows: Vec<_> = (0..PATIENTS)
            .map(|p| tokio::spawn(patient_flow(proc.mllp.to_string(), p, next[p], std::sync::Arc::clone(&progress))))
            .collect();
        // Under load (the first batches acknowledged), then a random moment: commits are in
        // flight on every connection.
        let loaded = std::time::Instant::now();
        while progress.load(std::sync::atomic::Ordering::Relaxed) < 10 && loaded.elapsed() < Duration::from_secs(60) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let after = Duration::from_millis(rand::random::<u64>() % 1500);
        tokio::time::sleep(after).await;
        proc.child.kill().unwrap(); // SIGKILL: no shutdown path runs
        proc.child.wait().unwrap();
        let mut in_cycle = 0;
        for (p, flow) in flows.into_iter().enumerate() {
            let (ids, sent_up_to) = tokio::time::timeout(Duration::from_secs(30), flow).await.unwrap().unwrap();
            in_cycle += ids.len();
            acked.entry(p).or_default().extend(ids);
            next[p] = sent_up_to;
        }
        eprintln!("crash cycle {cycle}: killed {after:?} after the first ACKs, {in_cycle} messages acknowledged");
        assert!(in_cycle >= 10, "cycle {cycle}: the load never started");
    }
    for p in 0..PATIENTS {
        let events = stored_events(&dir, "HOSP", &format!("MRN-CY{p}")).await;
        // Each message's events, collapsed to one entry per message in stored order.
        let mut stored: Vec<usize> = Vec::new();
        for event in &events {
            let id = &event.message.as_ref().expect("every received event names its message").id;
            let n: usize = id.rsplit('-').next().unwrap().parse().unwrap();
            if stored.last() != Some(&n) {
                stored.push(n);
            }
        }
        let stored_set: HashSet<usize> = stored.iter().copied().collect();
        assert_eq!(stored_set.len(), stored.len(), "patient {p}: a message stored twice or interleaved: {stored:?}");
        let lost: Vec<_> = acked[&p].iter().filter(|n| !stored_set.contains(n)).collect();
        assert!(lost.is_empty(), "patient {p}: acknowledged but not stored: {lost:?}");
        assert!(stored.windows(2).all(|w| w[0] < w[1]), "patient {p}: stored out of order: {stored:?}");
    }
    let store = open_store(&dir);
    let log = store.alerts_after(0, 1_000_000).await.unwrap();
    let mut episodes: HashMap<(String, String), HashSet<String>> = HashMap::new();
    for change in &log {
        let a = &change.alert;
        episodes.entry((a.patient.id.0.clone(), a.rule.id.clone())).or_default().insert(a.id.0.clone());
    }
    assert_eq!(episodes.len(), 3 * PATIENTS, "qSOFA, SIRS and NEWS2 for every patient: {:?}", episodes.keys());
    for (key, ids) in &episodes {
        assert_eq!(ids.len(), 1, "{key:?} raised {} times across crashes", ids.len());
    }
    let total: usize = acked.values().map(Vec::len).sum();
    eprintln!(
        "crash cycles: {cycles} kill -9 cycles, {total} messages acknowledged, 0 lost, per-patient order kept, {} alerts each raised once",
        episodes.len()
    );
}
