//! Restart: the patient actors a clean stop left snapshots of are started again (prewarmed)
//! before the server takes a message, so the first messages after a restart find them warm.
//! The benchmark of what this buys is `loadtest/scripts/restart.sh` (docs/BENCHMARKS.md).

use std::time::Duration;

use vigil::auth::Role;
use vigil_loadtest::mllp::{MllpClient, ack_code};

use crate::support::*;

const WAIT: Duration = Duration::from_secs(10);

async fn send(server: &vigil::app::Running, message: &str) {
    let mut mllp = MllpClient::connect(&server.mllp_addr.to_string(), WAIT).await.unwrap();
    let ack = mllp.send(message).await.unwrap();
    assert_eq!(ack_code(&ack), Some("AA"), "{ack}");
}

/// The value of the sample `series` (name and labels, as rendered) in `/metrics`; 0 when absent.
async fn metric(server: &vigil::app::Running, series: &str) -> u64 {
    let token = server.auth.issue("admin-1", Role::Admin, vec!["*".into()], time::Duration::hours(1));
    let text = reqwest::Client::new()
        .get(format!("http://{}/metrics", server.http_addr))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_prewarms_the_actors_a_clean_stop_left_and_with_prewarm_off_starts_none() {
    vigil::alerts::webhooks::install_tls_provider();
    let dir = tempdir("restart");
    let mut config = config_qsofa_only(&dir);
    assert!(config.prewarm.is_some(), "prewarm is on by default");
    let server = vigil::app::start(&config).await.unwrap();
    for p in 0..3 {
        send(&server, &septic_oru(&format!("RS-{p}"), &format!("MRN-RS-{p}"), "Restart")).await;
    }
    assert_eq!(metric(&server, "vigil_patient_actors").await, 3);
    server.shutdown().await;

    // Prewarm: the three actors are live before the first message, rebuilt from snapshots.
    let server = vigil::app::start(&config).await.unwrap();
    assert_eq!(metric(&server, "vigil_patient_actors").await, 3, "live before any message");
    assert_eq!(metric(&server, r#"vigil_actor_starts_total{from="snapshot"}"#).await, 3);
    assert_eq!(metric(&server, r#"vigil_actor_starts_total{from="log"}"#).await, 0);
    // The first message after the restart finds its actor warm: no start.
    send(&server, &septic_oru("RS-3", "MRN-RS-0", "Restart")).await;
    assert_eq!(metric(&server, r#"vigil_actor_starts_total{from="snapshot"}"#).await, 3, "no further start");
    assert_eq!(metric(&server, r#"vigil_actor_starts_total{from="log"}"#).await, 0);
    server.shutdown().await;

    // Prewarm off: no actor before the first message, which starts its own from the snapshot.
    config.prewarm = None;
    let server = vigil::app::start(&config).await.unwrap();
    assert_eq!(metric(&server, "vigil_patient_actors").await, 0);
    send(&server, &septic_oru("RS-4", "MRN-RS-1", "Restart")).await;
    assert_eq!(metric(&server, "vigil_patient_actors").await, 1);
    assert_eq!(metric(&server, r#"vigil_actor_starts_total{from="snapshot"}"#).await, 1);
    server.shutdown().await;
}
