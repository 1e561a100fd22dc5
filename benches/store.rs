//! Durable write throughput of the store adapters: records/s when many appenders share group
//! commits, against a baseline of one record per commit (one appender waiting for each ticket,
//! so every record pays its own fsync or cluster round trip).
//!
//!     cargo bench --bench store                 # embedded + ScyllaDB over kassandra
//!     VIGIL_BENCH_RECORDS=20000 cargo bench --bench store
//!
//! Plain `main` (harness = false): each line is one measurement, printed as it completes.

#[path = "../tests/it/kassandra.rs"]
mod kassandra;

use std::sync::Arc;
use std::time::Instant;

use time::OffsetDateTime;
use vigil::crypto::KeyRing;
use vigil::store::conformance::{RecordingPublisher, event, message};
use vigil::store::{EmbeddedStore, EmbeddedStoreConfig, ScyllaStore, ScyllaStoreConfig};
use vigil_actors::{EventStore, PatientId};

/// `appenders` tasks, each appending `per_commit` records and then waiting for all of their
/// tickets before the next round: at most appenders x per_commit records in flight.
async fn run(store: Arc<dyn EventStore>, total: usize, appenders: usize, per_commit: usize) -> f64 {
    let start = Instant::now();
    let per_task = total / appenders;
    let mut tasks = Vec::new();
    for a in 0..appenders {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let patient = PatientId(format!("bench-{a}-{}", rand::random::<u32>()));
            let t0 = OffsetDateTime::now_utc();
            let mut done = 0;
            while done < per_task {
                let mut tickets = Vec::with_capacity(per_commit);
                for _ in 0..per_commit.min(per_task - done) {
                    let at = t0 + time::Duration::microseconds(done as i64);
                    let e = event(&patient, "MRN-BENCH", at, 80.0);
                    let m = message(&format!("b-{a}-{done}-{}", rand::random::<u32>()), at);
                    tickets.push(store.append_all(Some(&m), &[e], &[]).await.unwrap());
                    done += 1;
                }
                for t in tickets {
                    t.wait().await.unwrap();
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (per_task * appenders) as f64 / start.elapsed().as_secs_f64()
}

fn keys() -> Arc<KeyRing> {
    Arc::new(KeyRing::from_keys(&[(1, [3; 32])]).unwrap())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let total: usize = std::env::var("VIGIL_BENCH_RECORDS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let dir = std::env::temp_dir().join(format!("vigil-bench-{}", rand::random::<u64>()));
    let store: Arc<dyn EventStore> = Arc::new(
        EmbeddedStore::open(&dir, EmbeddedStoreConfig::default(), keys(), Arc::new(RecordingPublisher::default()))
            .unwrap(),
    );
    println!("embedded (fjall, fsync per commit, AES-256-GCM sealed records)");
    let baseline = run(Arc::clone(&store), total.min(2_000), 1, 1).await;
    println!("  baseline: 1 appender, 1 record per commit      {baseline:>10.0} records/s");
    for (appenders, per_commit) in [(10, 1), (100, 1), (100, 10), (100, 100)] {
        let rate = run(Arc::clone(&store), total, appenders, per_commit).await;
        println!(
            "  {appenders:>3} appenders x {per_commit:>3} in flight each           {rate:>10.0} records/s ({:.1}x)",
            rate / baseline
        );
    }
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);

    let server = kassandra::serve().await;
    let mut config = ScyllaStoreConfig::single_node(&server.addr.to_string(), "vigil_bench");
    config.await_schema_agreement = false;
    let scylla = ScyllaStore::connect(config, keys(), Arc::new(RecordingPublisher::default())).await.unwrap();
    let store: Arc<dyn EventStore> = Arc::new(scylla.clone());
    println!(
        "scylla adapter over kassandra (in-memory, loopback, one mutex: a lower bound of the adapter, not of ScyllaDB)"
    );
    let baseline = run(Arc::clone(&store), total.min(2_000), 1, 1).await;
    println!("  baseline: 1 appender, 1 record per commit      {baseline:>10.0} records/s");
    for (appenders, per_commit) in [(10, 1), (100, 10), (100, 100)] {
        let rate = run(Arc::clone(&store), total.min(10_000), appenders, per_commit).await;
        println!(
            "  {appenders:>3} appenders x {per_commit:>3} in flight each           {rate:>10.0} records/s ({:.1}x)",
            rate / baseline
        );
    }
    scylla.close().await;
}
