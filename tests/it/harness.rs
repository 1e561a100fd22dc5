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
        pacing: None,
        consoles: None,
        fhir_rate: None,
        baseline: false,
        echo_only: false,
        fsync_dir: Some(dir.to_path_buf()),
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
    for name in ["decode", "parse", "map", "route", "commit_wait", "in_actor", "in_store", "ack_wake", "ack_write"] {
        assert!(stage(name) >= measured * 9 / 10, "{name}: {:?}", report.stages);
    }
    // The actor, the store and the task's wake-up after the write are the parts of the commit
    // wait, in turn: their means add up to its mean (each recorded once per stored message, the
    // parts cut from the same interval; 2 % for messages recorded across a read of /metrics).
    let mean = |name: &str| report.stages.iter().find(|s| s.name == name).map_or(f64::NAN, |s| s.mean_us);
    let parts = mean("in_actor") + mean("in_store") + mean("ack_wake");
    assert!((parts - mean("commit_wait")).abs() <= mean("commit_wait") * 0.02, "{:?}", report.stages);
    assert!(stage("rules") > 0, "{:?}", report.stages);
    // Group commits, timed once per batch (alert-only batches included).
    assert!(stage("store_write") > 0, "{:?}", report.stages);
    assert!(report.messages_per_store_write().is_some(), "{:?}", report.stages);
    assert!(report.server.as_ref().is_some_and(|s| s.peak_rss_mib > 0.0));
    // The harness's own lateness, part of every ACK latency, measured per measured message.
    assert_eq!(report.send_lag.as_ref().map(|l| l.count), Some(measured), "{}", report.to_table());
    // The disk's flush floor, probed in the server's data directory before the run.
    let floor = report.fsync_floor.as_ref().expect("the disk's flush floor probed");
    assert_eq!(floor.fsync.count, vigil_loadtest::cli::FSYNC_PROBES as u64);
    assert!(report.to_table().contains("fsync ms"), "{}", report.to_table());
    server.shutdown().await;
}

/// The FHIR gateway and the console fan-out against a real server, briefly: FHIR response
/// latency is measured with every POST stored, and each of several consoles times every
/// deterioration alert.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_fhir_gateway_and_console_fanout_are_measured() {
    let dir = tempdir("harness-fhir");
    let mut cfg = config(&dir);
    cfg.fhir.identifier_systems.insert("VIGIL_SIM".into(), vigil_loadtest::fhir::SIM_SYSTEM.into());
    let server = vigil::app::start(&cfg).await.unwrap();
    let console = server.auth.issue("loadtest", Role::Rrt, vec!["*".into()], time::Duration::hours(1));
    let gateway = server.auth.issue("gw", Role::Gateway, vec![], time::Duration::hours(1));
    let scenarios = Path::new(env!("CARGO_MANIFEST_DIR")).join("loadtest/scenarios");
    let target = Target {
        mllp: server.mllp_addr.to_string(),
        http: Some(server.http_addr.to_string()),
        console_token: Some(console),
        gateway_token: Some(gateway),
        pid: None,
        scrape_metrics: false,
        metrics_token: None,
    };
    let options = |file: &str, duration: f64, consoles: Option<usize>| RunOptions {
        scenario: scenarios.join(file),
        target: target.clone(),
        rate: Some(20.0),
        duration: Some(duration),
        warmup: Some(0.0),
        ramp: Some(0.0),
        connections: Some(2),
        pacing: None,
        consoles,
        fhir_rate: Some(10.0),
        baseline: false,
        echo_only: false,
        fsync_dir: None,
        slo: vec!["errors==0".parse().unwrap(), "alerts.missing==0".parse().unwrap()],
        json: None,
        html: None,
        progress: false,
    };
    let fhir = run_report(&options("fhir-gateway.toml", 3.0, None)).await.unwrap();
    assert!(fhir.slo.iter().all(|r| r.ok), "{}", fhir.to_table());
    assert_eq!(fhir.fhir.as_ref().map(|l| l.count), Some(30), "{}", fhir.to_table());
    assert!(fhir.fhir_throughput.is_some_and(|t| t > 9.0), "{}", fhir.to_table());

    let fanout = run_report(&options("console-fanout.toml", 7.0, Some(3))).await.unwrap();
    assert!(fanout.slo.iter().all(|r| r.ok), "{}", fanout.to_table());
    // Crossings at 6 s + k * 0.3 s that fit the 7 s run: 6.0, 6.3, 6.6, 6.9; each timed by
    // each of the 3 consoles.
    assert_eq!(fanout.alerts_expected, 4, "{}", fanout.to_table());
    assert_eq!(fanout.alert.as_ref().map(|l| l.count), Some(fanout.alerts_expected * 3), "{}", fanout.to_table());
    server.shutdown().await;
}
