//! Storage: PHI never reaches the disk in plaintext; the conformance suite on every adapter
//! (embedded, the in-memory fake, ScyllaDB over kassandra, a real cluster with
//! `VIGIL_TEST_SCYLLA=host:port`).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use vigil::crypto::KeyRing;
use vigil::store::conformance::{self, Capabilities, RecordingPublisher};
use vigil::store::{EmbeddedStore, EmbeddedStoreConfig, ScyllaStore, ScyllaStoreConfig};
use vigil_actors::EventStore;
use vigil_loadtest::mllp::{MllpClient, ack_code};

use crate::support::*;

/// Every file under `dir`, recursively, as raw bytes.
fn all_bytes(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push((path.display().to_string(), std::fs::read(&path).unwrap()));
            }
        }
    }
    out
}

/// Where any case variant of any needle occurs.
fn find_plaintext(dir: &Path, needles: &[&str]) -> Vec<String> {
    let mut variants = Vec::new();
    for n in needles {
        variants.extend([n.to_string(), n.to_lowercase(), n.to_uppercase()]);
    }
    variants.sort();
    variants.dedup();
    let mut hits = Vec::new();
    for (file, bytes) in all_bytes(dir) {
        for v in &variants {
            if bytes.windows(v.len()).any(|w| w == v.as_bytes()) {
                hits.push(format!("{v} in {file}"));
            }
        }
    }
    hits
}

fn test_keys() -> Arc<KeyRing> {
    Arc::new(KeyRing::from_keys(&[(1, rand::random())]).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patients_name_and_mrn_never_reach_the_data_dir_in_plaintext() {
    let dir = tempdir("phi");
    let mrn = format!("MRN{:012}", rand::random::<u64>() % 1_000_000_000_000);
    let server = vigil::app::start(&config(&dir)).await.unwrap();
    let mut mllp = MllpClient::connect(&server.mllp_addr.to_string(), Duration::from_secs(10)).await.unwrap();
    let message = septic_oru("PHI-0001", &mrn, "Quartermaine").replace("Quartermaine^Test", "Quartermaine^Zebulon");
    assert!(message.contains("Quartermaine^Zebulon"), "{message}");
    let ack = mllp.send(&message).await.unwrap();
    assert_eq!(ack_code(&ack), Some("AA"), "{ack}");
    server.shutdown().await;

    // The message was stored (an alert was raised too): something is there to leak.
    let ids = stored_control_ids(&dir, std::slice::from_ref(&mrn)).await;
    assert_eq!(ids, vec!["PHI-0001".to_string()]);
    let needles = ["Zebulon", "Quartermaine", mrn.as_str()];
    let hits = find_plaintext(&dir, &needles);
    assert!(hits.is_empty(), "plaintext PHI on disk: {hits:?}");
    assert!(!all_bytes(&dir).is_empty());

    // Control: the same scan finds them when they are written unsealed through fjall, the way
    // the store lays out its files (so neither compression nor the layout hides them).
    let control = tempdir("phi-control");
    {
        let db = fjall::Database::builder(control.join("fjall")).open().unwrap();
        let ks = db.keyspace("events", fjall::KeyspaceCreateOptions::default).unwrap();
        ks.insert(b"k", message.as_bytes()).unwrap();
        db.persist(fjall::PersistMode::SyncAll).unwrap();
    }
    let found = find_plaintext(&control, &needles);
    assert_eq!(found.len(), 3, "the scan finds each needle when it is there: {found:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_embedded() {
    let publisher = Arc::new(RecordingPublisher::default());
    let dir = tempdir("conf");
    let store =
        Arc::new(EmbeddedStore::open(&dir, EmbeddedStoreConfig::default(), test_keys(), publisher.clone()).unwrap());
    conformance::run(store.clone(), publisher, Capabilities::FULL).await;
    conformance::console(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_memory_fake() {
    let publisher = Arc::new(RecordingPublisher::default());
    let store = Arc::new(vigil_actors::fakes::MemoryStore::with_publisher(publisher.clone()));
    conformance::run(store.clone(), publisher, Capabilities::FULL).await;
    conformance::console(Arc::new(vigil::console::MemoryConsoleStore::default())).await;
}

async fn scylla_store(node: &str, keyspace: &str, kassandra: bool, publisher: Arc<RecordingPublisher>) -> ScyllaStore {
    let mut config = ScyllaStoreConfig::single_node(node, keyspace);
    config.await_schema_agreement = !kassandra;
    if kassandra {
        // One replica: LOCAL_QUORUM is one node's answer; kassandra accepts any consistency.
        config.consistency = scylla::statement::Consistency::LocalQuorum;
    }
    ScyllaStore::connect(config, test_keys(), publisher).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_scylla_over_kassandra() {
    let server = crate::kassandra::serve().await;
    let publisher = Arc::new(RecordingPublisher::default());
    let store = Arc::new(scylla_store(&server.addr.to_string(), "vigil_conf", true, publisher.clone()).await);
    conformance::run(store.clone(), publisher, Capabilities::KASSANDRA).await;
    conformance::devices(store.clone()).await;
    conformance::console(store.clone()).await;
    store.close().await;
    // A second start on the same keyspace: migrations are recorded, not applied twice, and
    // the alert sequence continues.
    let publisher = Arc::new(RecordingPublisher::default());
    let again = scylla_store(&server.addr.to_string(), "vigil_conf", true, publisher).await;
    assert!(vigil_actors::AlertStore::last_seq(&again) >= 24, "the sequence number is recovered");
    again.close().await;
    let event = conformance::event(&vigil_actors::PatientId("p".into()), "m", time::OffsetDateTime::now_utc(), 1.0);
    assert!(again.append(&event).await.is_err(), "a closed store takes no writes");
}

/// kassandra drops clustering ranges from prepared statements: the range reads of the
/// production queries fail there instead of returning wrong rows. Documented in
/// docs/storage.md; they run against a real cluster below.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kassandra_cannot_run_clustering_range_reads() {
    let server = crate::kassandra::serve().await;
    let store =
        scylla_store(&server.addr.to_string(), "vigil_ranges", true, Arc::new(RecordingPublisher::default())).await;
    let patient = vigil_actors::PatientId("p-range".into());
    let event = conformance::event(&patient, "m", time::OffsetDateTime::now_utc(), 1.0);
    store.append(&event).await.unwrap().wait().await.unwrap();
    assert!(store.events_since(&patient, time::OffsetDateTime::UNIX_EPOCH).await.is_err());
    store.close().await;
}

/// The full suite against a real ScyllaDB cluster: `VIGIL_TEST_SCYLLA=host:port`
/// (deploy/docker-compose.scylla.yml). Skipped (passes) when unset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_real_scylla_when_configured() {
    let Ok(node) = std::env::var("VIGIL_TEST_SCYLLA") else {
        eprintln!("VIGIL_TEST_SCYLLA not set: real-cluster conformance skipped");
        return;
    };
    let publisher = Arc::new(RecordingPublisher::default());
    let store = Arc::new(scylla_store(&node, "vigil_test", false, publisher.clone()).await);
    conformance::run(store.clone(), publisher, Capabilities::FULL).await;
    conformance::devices(store.clone()).await;
    conformance::console(store.clone()).await;
    store.close().await;
}

/// A flipped byte in a real journal, through the real binary: `serve` refuses to start and says
/// exactly what is damaged and what to run; `vigil store recover` keeps every intact batch; the
/// server starts again with every message but the damaged batch's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_journal_is_named_at_start_and_recovered_keeping_the_intact_batches() {
    let dir = tempdir("journal-damage");
    let data = dir.to_str().unwrap().to_string();
    let rules = rules_dir();
    let args = vigil_args("serve", &data, rules.to_str().unwrap(), &[]);
    let proc = spawn_vigil(&args);
    let mut client = MllpClient::connect(&proc.mllp.to_string(), Duration::from_secs(30)).await.unwrap();
    // One at a time: each message its own commit, so its own journal batch.
    let ids: Vec<String> = (0..30).map(|i| format!("JD-{i}")).collect();
    for id in &ids {
        let ack = client.send(&septic_oru(id, "MRN-JD", "Journal")).await.unwrap();
        assert_eq!(ack_code(&ack), Some("AA"));
    }
    drop(proc); // kill -9: the journal is not flushed into segments

    let journal = vigil::store::recover::journals(&dir).unwrap().pop().expect("a journal");
    let batches = vigil::store::recover::list_batches(&journal).unwrap();
    assert!(batches.len() >= 30, "{} batches", batches.len());
    let victim = batches[batches.len() / 2];
    let mut bytes = std::fs::read(&journal).unwrap();
    let at = usize::try_from(victim.offset + victim.len).unwrap() - 14;
    bytes[at] ^= 0x5a;
    std::fs::write(&journal, &bytes).unwrap();

    let mut serve = std::process::Command::new("timeout");
    serve.arg("60").arg(env!("CARGO_BIN_EXE_vigil")).args(&args).env("VIGIL_LOG", "warn");
    let refused = serve.output().unwrap();
    assert!(!refused.status.success(), "the server started on a damaged journal");
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains(&format!("at byte {}", victim.offset)), "{said}");
    assert!(said.contains(journal.to_str().unwrap()), "{said}");
    assert!(said.contains("vigil store recover --data-dir"), "{said}");

    let recover = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["store", "recover", "--data-dir", &data])
        .output()
        .unwrap();
    assert!(recover.status.success(), "{}", String::from_utf8_lossy(&recover.stderr));
    let proc = spawn_vigil(&args);
    drop(proc);
    let stored: std::collections::HashSet<String> =
        stored_control_ids(&dir, &["MRN-JD".to_string()]).await.into_iter().collect();
    let missing: Vec<&String> = ids.iter().filter(|id| !stored.contains(*id)).collect();
    assert!(missing.len() <= 1, "only the damaged batch's message may be missing: {missing:?}");
    assert!(stored.contains(&ids[0]) && stored.contains(&ids[29]), "batches before and after the damage are kept");
    println!(
        "journal damage: batch at byte {} dropped, {} of 30 messages kept ({missing:?} gone)",
        victim.offset,
        stored.len()
    );
}

/// The embedded store under a router, counting what rebuilds read and the snapshots written.
struct Counting {
    store: EmbeddedStore,
    read: std::sync::atomic::AtomicUsize,
    saved: tokio::sync::watch::Sender<usize>,
}

#[async_trait::async_trait]
impl EventStore for Counting {
    async fn append_all(
        &self,
        message: Option<&vigil_actors::FromMessage>,
        events: &[vigil_actors::ClinicalEvent],
        alerts: &[(vigil_actors::Alert, bool)],
    ) -> Result<vigil_actors::Durable, vigil_actors::StoreError> {
        self.store.append_all(message, events, alerts).await
    }

    async fn events_since(
        &self,
        patient: &vigil_actors::PatientId,
        since: time::OffsetDateTime,
    ) -> Result<Vec<vigil_actors::ClinicalEvent>, vigil_actors::StoreError> {
        let events = self.store.events_since(patient, since).await?;
        self.read.fetch_add(events.len(), std::sync::atomic::Ordering::Relaxed);
        Ok(events)
    }

    async fn save_snapshot(
        &self,
        patient: &vigil_actors::PatientId,
        snapshot: &[u8],
    ) -> Result<(), vigil_actors::StoreError> {
        self.store.save_snapshot(patient, snapshot).await?;
        self.saved.send_modify(|n| *n += 1);
        Ok(())
    }

    async fn take_snapshot(
        &self,
        patient: &vigil_actors::PatientId,
    ) -> Result<Option<Vec<u8>>, vigil_actors::StoreError> {
        self.store.take_snapshot(patient).await
    }
}

/// `[patients] snapshot_every_events` on the embedded store: a running actor's state is
/// written, sealed, every N events once they are durable; after a crash (the actor never
/// stops cleanly, so no snapshot at stop) the rebuild reads it and tops it up from the log,
/// fewer than N events, and its rules see the whole window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_after_a_crash_reads_the_running_snapshot_from_the_embedded_store() {
    use vigil_actors::fakes::{FnRules, ManualClock};
    use vigil_actors::{ClinicalEvent, EventKind, Observation, PatientId, PatientKey, Phi, ResultStatus, Router};
    const EVERY: u32 = 10;
    let dir = tempdir("running-snapshot");
    let publisher = Arc::new(RecordingPublisher::default());
    let store = EmbeddedStore::open(&dir, EmbeddedStoreConfig::default(), test_keys(), publisher).unwrap();
    let (saved, mut saves) = tokio::sync::watch::channel(0usize);
    let counting = Arc::new(Counting { store: store.clone(), read: Default::default(), saved });
    let now = time::OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
    let t0 = now - time::Duration::hours(3);
    let at = |minutes: i64| t0 + time::Duration::minutes(minutes);
    let clock = Arc::new(ManualClock(std::sync::Mutex::new(t0)));
    let seen: Arc<std::sync::Mutex<Vec<Vec<f64>>>> = Arc::default();
    let record = Arc::clone(&seen);
    let rules = Arc::new(FnRules(move |v: &vigil_actors::PatientView, _t: &[&str]| {
        record.lock().unwrap().push(v.window("rr", 86_400.0).map(|s| s.value).collect());
        Vec::new()
    }));
    let event = |rr: f64, at: time::OffsetDateTime| ClinicalEvent {
        patient_id: PatientId("p-snap".into()),
        patient: PatientKey { authority: "HOSP".into(), mrn: Phi("MRN-SNAP".into()) },
        demographics: Default::default(),
        location: None,
        received_at: at,
        kind: EventKind::Observations {
            observations: vec![Observation {
                name: "rr".into(),
                value: Some(rr),
                text: None,
                unit: "/min".into(),
                observed_at: at,
                source_code: "MDC|151562".into(),
                device: None,
                status: ResultStatus::Final,
                result_key: String::new(),
                reference_range: None,
                abnormal_flags: vec![],
            }],
        },
    };
    let router = Arc::new(
        Router::new(counting.clone(), Arc::new(store.clone()), rules.clone(), clock.clone())
            .await
            .unwrap()
            .with_snapshot_every(EVERY),
    );
    let values: Vec<f64> = (0..25).map(|i| 10.0 + f64::from(i)).collect();
    for (i, rr) in values.iter().enumerate() {
        *clock.0.lock().unwrap() = at(5 * i as i64);
        router.ingest(event(*rr, at(5 * i as i64))).await.unwrap().wait().await.unwrap();
    }
    // Written after the 10th and the 20th event, each once its events were durable.
    tokio::time::timeout(Duration::from_secs(20), saves.wait_for(|n| *n == 2)).await.unwrap().unwrap();

    // The crash: the actor never stops cleanly; a new router rebuilds the patient.
    let crashed = router;
    let router = Arc::new(
        Router::new(counting.clone(), Arc::new(store.clone()), rules, clock.clone())
            .await
            .unwrap()
            .with_snapshot_every(EVERY),
    );
    let read_before = counting.read.load(std::sync::atomic::Ordering::Relaxed);
    *clock.0.lock().unwrap() = at(125);
    router.ingest(event(99.0, at(125))).await.unwrap().wait().await.unwrap();
    let replayed = counting.read.load(std::sync::atomic::Ordering::Relaxed) - read_before;
    let mut window = values;
    window.push(99.0);
    assert_eq!(seen.lock().unwrap().last().unwrap(), &window, "the whole window");
    assert!(replayed < EVERY as usize, "{replayed} events replayed: the snapshot of the 20th was read");
    assert_eq!(replayed, 6, "the 20th (inside the reorder margin) and the five after it");
    router.shutdown().await;
    drop(crashed);
}
