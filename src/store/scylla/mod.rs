//! The ScyllaDB adapter: the production store behind the same ports as the embedded one.
//!
//! Start-up creates the keyspace (replication from the configuration), applies the ordered
//! migrations of `schemas/cql/` that `schema_version` does not list, and prepares every
//! statement once. Patient actors queue writes; one committer task drains the queue, groups the
//! rows by partition into unlogged batches (one per partition), sends them concurrently, and
//! when the cluster has acknowledged them (at the configured consistency, LOCAL_QUORUM by
//! default) publishes the alert changes in sequence order and completes the tickets.
//!
//! Alert sequence numbers are assigned by this node's committer: one writing node per keyspace
//! (see docs/storage.md). PHI is sealed per column with the key ring, the associated data naming
//! table, row key and column.
//!
//! The module by concern: `config.rs` (cluster, keyspace, consistency), `schema.rs` (the
//! numbered migrations and the prepared statements), `ports.rs` (the `vigil-actors` ports:
//! sealing rows, queuing writes, reads), `devices.rs` (device placements, associations and
//! quarantined readings), `console.rs` (the console's silences and assignments), `backend.rs` (the commit pipeline's backend: rounds of
//! per-partition batches).

mod backend;
mod config;
mod console;
mod devices;
mod ports;
mod rows;
mod schema;

pub use config::{Replication, ScyllaStoreConfig, parse_consistency};
pub use schema::{MIGRATIONS, split_statements};

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::commit::{self, Pipeline, PipelineConfig};
use futures_util::StreamExt;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::value::CqlTimestamp;
use time::OffsetDateTime;
use tokio::sync::{Mutex, mpsc};
use vigil_actors::{AlertPublisher, ClinicalEvent, SequencedAlert, StoreError};

use crate::crypto::{Aad, KeyRing};
use backend::Cql;
use schema::{Statements, migrate};

/// Alert-log sequence numbers per partition.
const LOG_BUCKET: u64 = 1024;
/// Partitions of the open-alert table.
const OPEN_BUCKETS: u32 = 16;

/// A driver error (as text: the driver's error types differ per call) as a `StoreError` naming
/// the operation and keeping the cause (logged once, by whoever handles it).
fn engine(op: &'static str) -> impl Fn(String) -> StoreError {
    move |e| StoreError::failed(op, DriverError(e))
}

/// A ScyllaDB driver error, as text.
#[derive(Debug)]
struct DriverError(String);

impl std::fmt::Display for DriverError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DriverError {}

/// One event ready to write: the event, its sealed body and, for the first event of its
/// bundle, the message-log entries of its message (a message is logged once, however many
/// events it carries) and of the message's parts in the bundle.
struct SealedEvent {
    event: Box<ClinicalEvent>,
    body: Vec<u8>,
    messages: Vec<SealedMessage>,
    event_id: String,
}

/// A message-log row: the (feed-scoped) sender, the message id, when, and the sealed raw message.
struct SealedMessage {
    sender: String,
    id: String,
    received_at: CqlTimestamp,
    raw: Vec<u8>,
}

/// A write queued for the commit pipeline: the rows of the ScyllaDB tables.
type Job = commit::Job<Vec<SealedEvent>>;

struct Shared {
    session: Session,
    st: Statements,
    /// Device statements (`devices.rs`).
    device_st: devices::DeviceStatements,
    /// Console statements (`console.rs`).
    console_st: console::ConsoleStatements,
    keys: Arc<KeyRing>,
    last_seq: Arc<AtomicU64>,
}

/// The ScyllaDB-backed store. Cloning shares it.
#[derive(Clone)]
pub struct ScyllaStore {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Job>,
    committer: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

fn day_of(at: OffsetDateTime) -> i32 {
    at.unix_timestamp().div_euclid(86_400) as i32
}

fn timestamp(at: OffsetDateTime) -> CqlTimestamp {
    CqlTimestamp((at.unix_timestamp_nanos() / 1_000_000) as i64)
}

fn from_timestamp(ts: CqlTimestamp) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ts.0) * 1_000_000)
        .map_err(|e| StoreError::Corrupt(format!("timestamp: {e}")))
}

/// FNV-1a: a stable hash (the bucket must not change between releases).
fn open_bucket(alert_id: &str) -> i32 {
    let mut hash: u32 = 0x811c_9dc5;
    for b in alert_id.bytes() {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    (hash % OPEN_BUCKETS) as i32
}

fn event_row_key(patient: &str, day: i32, at: CqlTimestamp, event_id: &str) -> Vec<u8> {
    format!("{patient}\0{day}\0{}\0{event_id}", at.0).into_bytes()
}

fn seal(keys: &KeyRing, table: &str, key: &[u8], column: &str, plaintext: &[u8]) -> Result<Vec<u8>, StoreError> {
    keys.seal(Aad { table, key, column }, plaintext).map_err(|e| StoreError::Engine(format!("seal {table}: {e}")))
}

fn open_json<T: serde::de::DeserializeOwned>(
    keys: &KeyRing,
    table: &str,
    key: &[u8],
    column: &str,
    sealed: &[u8],
) -> Result<T, StoreError> {
    let plaintext =
        keys.open(Aad { table, key, column }, sealed).map_err(|e| StoreError::Corrupt(format!("{table}: {e}")))?;
    serde_json::from_slice(&plaintext).map_err(|e| StoreError::Corrupt(format!("{table}: {e}")))
}

impl ScyllaStore {
    /// Connect, create the keyspace, migrate, prepare, recover the last alert sequence number
    /// and start the committer.
    pub async fn connect(
        config: ScyllaStoreConfig,
        keys: Arc<KeyRing>,
        publisher: Arc<dyn AlertPublisher>,
    ) -> Result<Self, StoreError> {
        let mut builder = SessionBuilder::new()
            .auto_await_schema_agreement(config.await_schema_agreement)
            .connection_timeout(Duration::from_secs(5));
        for node in &config.nodes {
            builder = builder.known_node(node);
        }
        let session = builder.build().await.map_err(|e| engine("connect")(e.to_string()))?;
        migrate(&session, &config).await?;
        let st = Statements::prepare(&session, &config).await?;
        let device_st = devices::DeviceStatements::prepare(&session, &config).await?;
        let console_st = console::ConsoleStatements::prepare(&session, &config).await?;
        let shared =
            Arc::new(Shared { session, st, device_st, console_st, keys, last_seq: Arc::new(AtomicU64::new(0)) });
        let last = recover_last_seq(&shared).await?;
        shared.last_seq.store(last, Ordering::Release);
        let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
        let pipeline = Pipeline::new(
            Cql { sh: Arc::clone(&shared), hwm_bucket: None },
            publisher,
            Arc::clone(&shared.last_seq),
            PipelineConfig { max_batch: config.max_batch.max(1), ..PipelineConfig::default() },
        )
        .with_write_timer(config.write_timer.clone());
        let committer = tokio::spawn(pipeline.run(rx));
        Ok(ScyllaStore { shared, tx, committer: Arc::new(Mutex::new(Some(committer))) })
    }

    /// Stop taking writes and wait until everything queued has been acknowledged. Other clones
    /// can no longer write afterwards.
    pub async fn close(&self) {
        let Some(handle) = self.committer.lock().await.take() else { return };
        // A marker behind everything queued: the queue is FIFO, so when the committer reaches
        // it every earlier write has been acknowledged or failed.
        let (stopped, wait) = tokio::sync::oneshot::channel();
        if self.tx.send(Job::Close(stopped)).await.is_ok() {
            let _ = wait.await;
        }
        let _ = handle.await;
    }

    async fn submit(&self, job: Job) -> Result<(), StoreError> {
        self.tx.send(job).await.map_err(|_| StoreError::Unavailable("store is shutting down".into()))
    }

    async fn read_bucket(&self, bucket: i64, after: i64, limit: i32) -> Result<Vec<SequencedAlert>, StoreError> {
        let sh = &self.shared;
        let mut rows = sh
            .session
            .execute_iter(sh.st.select_alert_log_after.clone(), (bucket, after, limit))
            .await
            .map_err(|e| engine("read alert log")(e.to_string()))?
            .rows_stream::<(i64, Vec<u8>)>()
            .map_err(|e| engine("read alert log")(e.to_string()))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().await {
            let (seq, body) = row.map_err(|e| engine("read alert log")(e.to_string()))?;
            out.push(open_json(&sh.keys, "alert_log", &seq.to_be_bytes(), "body", &body)?);
        }
        Ok(out)
    }
}

/// The highest committed alert sequence number: the highest bucket opened, then the largest
/// number in it (or in the one before, when a bucket was opened but not written).
async fn recover_last_seq(sh: &Shared) -> Result<u64, StoreError> {
    let fail = |e: String| engine("recover alert sequence")(e);
    let hwm = sh
        .session
        .execute_unpaged(&sh.st.select_seq_bucket, ("alert_log",))
        .await
        .map_err(|e| fail(e.to_string()))?
        .into_rows_result()
        .map_err(|e| fail(e.to_string()))?
        .maybe_first_row::<(i64,)>()
        .map_err(|e| fail(e.to_string()))?
        .map(|(b,)| b);
    let Some(top) = hwm else { return Ok(0) };
    let mut bucket = top;
    loop {
        let mut rows = sh
            .session
            .execute_iter(sh.st.select_alert_log_bucket.clone(), (bucket,))
            .await
            .map_err(|e| fail(e.to_string()))?
            .rows_stream::<(i64,)>()
            .map_err(|e| fail(e.to_string()))?;
        let mut max = None;
        while let Some(row) = rows.next().await {
            let (seq,) = row.map_err(|e| fail(e.to_string()))?;
            max = max.max(Some(seq));
        }
        if let Some(max) = max {
            return Ok(max as u64);
        }
        if bucket == 0 || top - bucket >= 2 {
            return Ok((bucket as u64) * LOG_BUCKET);
        }
        bucket -= 1;
    }
}
