//! The CI load run: `vigil-loadtest`'s `ci` scenario (20 s: vitals, lab panels, pharmacy
//! orders with interacting pairs, deteriorating patients, one console) against a real server
//! with real sockets and the embedded store, through the same function `vigil-loadtest run`
//! calls, with loose objectives that still catch a regression: no error of any kind, every
//! expected alert seen by the console, ACK and alert p99 far below what a broken pipeline
//! shows. The harness itself is tested in the loadtest crate.

use std::path::Path;

use vigil::auth::Role;
use vigil_loadtest::cli::{RunOptions, run_report};
use vigil_loadtest::load::Target;
use vigil_loadtest::report::Slo;

use crate::support::{config, tempdir};

/// Loose on purpose: a debug build on a shared 2-core CI machine (100 msg/s there gave an ACK
/// p99 of 12 s while other builds ran; the scenario offers 50). What they catch: lost or refused messages,
/// alerts that never arrive, a pipeline stalled or falling behind for good.
const CI_OBJECTIVES: [&str; 5] = ["errors==0", "alerts.missing==0", "ack.p99<=10s", "alert.p99<=15s", "throughput>=25"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_ci_scenario_meets_its_loose_objectives() {
    let dir = tempdir("harness");
    let server = vigil::app::start(&config(&dir)).await.unwrap();
    let token = server.auth.issue("loadtest", Role::Rrt, vec!["*".into()], time::Duration::hours(1));
    let options = RunOptions {
        scenario: Path::new(env!("CARGO_MANIFEST_DIR")).join("loadtest/scenarios/ci.toml"),
        target: Target {
            mllp: server.mllp_addr.to_string(),
            http: Some(server.http_addr.to_string()),
            console_token: Some(token),
            gateway_token: None,
            pid: Some(std::process::id()),
            scrape_metrics: true,
            metrics_token: None,
        },
        rate: None,
        duration: None,
        warmup: None,
        ramp: None,
        connections: None,
        consoles: None,
        baseline: false,
        echo_only: false,
        slo: CI_OBJECTIVES.iter().map(|s| s.parse::<Slo>().unwrap()).collect(),
        json: None,
        html: None,
        progress: false,
    };
    let report = run_report(&options).await.unwrap();
    println!("{}", report.to_table());
    for result in &report.slo {
        assert!(result.ok, "objective not met: {result:?}\n{}", report.to_table());
    }
    // The run really ran: every message answered, alerts timed, stages read from /metrics.
    assert_eq!(report.sent, report.acked);
    assert!(report.sent >= 950, "{}", report.sent);
    // Original mode (lab, pharmacy) answers AA; the monitors ask for an accept ACK (CA).
    assert!(report.by_code.keys().all(|code| code == "AA" || code == "CA"), "{:?}", report.by_code);
    let alert = report.alert.as_ref().expect("alert latency measured");
    assert!(report.alerts_expected >= 10, "deterioration patients at least: {}", report.alerts_expected);
    assert_eq!(alert.count, report.alerts_expected);
    let stage = |name: &str| report.stages.iter().find(|s| s.name == name).map_or(0, |s| s.count);
    // /metrics is read at the window's start and after the last reply: about the window's
    // messages, give or take those in flight at its start.
    let measured = report.ack.as_ref().unwrap().count;
    for name in ["decode", "parse", "map", "route", "commit_wait", "ack_write"] {
        assert!(stage(name) >= measured * 9 / 10, "{name}: {:?}", report.stages);
    }
    assert!(stage("rules") > 0, "{:?}", report.stages);
    assert!(report.server.as_ref().is_some_and(|s| s.peak_rss_mib > 0.0));
    server.shutdown().await;
}
