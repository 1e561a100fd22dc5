//! The embedded store: fjall (an LSM engine) with a group-commit thread. Patient actors queue
//! appends; the committer drains whatever is queued into one write batch, makes it durable
//! with a single fsync, publishes the alert changes it contained in sequence order, and only
//! then completes the tickets that the senders' ACKs wait on.
//!
//! Every value is sealed with AES-256-GCM ([`KeyRing`]) before it reaches fjall, with the
//! keyspace and row key as associated data; keys are opaque (blind-index patient ids, sender +
//! control id, alert ids, sequence numbers), so no PHI reaches the disk in plaintext.
//! An alert upsert identical to the alert's stored state is a no-op (same sequence number, no
//! publication): replaying events after a crash never alerts twice.

use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::thread::JoinHandle;

use super::commit::{self, Backend, Expected, Pipeline, PipelineConfig, Staged, WriteTimer};
use crate::crypto::{Aad, KeyRing};
use async_trait::async_trait;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use time::OffsetDateTime;
use tokio::sync::mpsc;
use vigil_actors::device::{BedRecord, DeviceRecord, DeviceStore, QuarantinedReading};
use vigil_actors::{
    AcceptedMessage, Alert, AlertId, AlertPublisher, AlertStatus, AlertStore, ClinicalEvent, Durable, EventStore,
    FromMessage, MessageKey, MessageLog, PatientId, RecordedEvent, SequencedAlert, StoreError,
};
use vigil_actors::{DeviceId, Location};

/// Each keyspace's memtable size (fjall's default, stated here so one constant says it): a
/// flush writes a table of up to this much, and the host's writeback threshold is judged
/// against it (`super::writeback`). Kept by a store as created: an existing store keeps its
/// own.
pub const MEMTABLE_BYTES: u64 = 64 << 20;

/// How the store creates its keyspaces.
fn keyspace_options() -> KeyspaceCreateOptions {
    KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE_BYTES)
}

/// Tuning of the embedded store.
#[derive(Debug, Clone)]
pub struct EmbeddedStoreConfig {
    /// Writes queued ahead of the committer before appenders wait (back-pressure).
    pub queue_capacity: usize,
    /// Most writes made durable by one fsync.
    pub max_batch: usize,
    /// Times each batch's write and fsync (the `store_write` stage on /metrics).
    pub write_timer: WriteTimer,
    /// How long after a batch began the next may wait for the writes `expected` counts.
    pub commit_interval: std::time::Duration,
    /// Writes on their way (the ingress's messages in flight); none by default, and then no
    /// batch waits.
    pub expected: Expected,
}

impl Default for EmbeddedStoreConfig {
    fn default() -> Self {
        EmbeddedStoreConfig {
            queue_capacity: 16_384,
            max_batch: 4_096,
            write_timer: WriteTimer::default(),
            commit_interval: commit::DEFAULT_COMMIT_INTERVAL,
            expected: Expected::default(),
        }
    }
}

/// A write queued for the commit pipeline: the rows of the embedded engine.
type Job = commit::Job<Vec<EventRecord>>;

/// One event ready for the batch: sealed record and, for the first event of its bundle, the
/// sealed message-log entries: the message's (a message is logged once, however many events
/// it carries) and its parts' whose events are in the bundle.
struct EventRecord {
    key: Vec<u8>,
    value: Vec<u8>,
    messages: Vec<(Vec<u8>, Vec<u8>)>,
}

struct Keyspaces {
    db: Database,
    keys: Arc<KeyRing>,
    events: Keyspace,
    /// Message log: (sender, control id) -> when accepted, for whom, and the raw message.
    messages: Keyspace,
    alerts: Keyspace,
    alert_log: Keyspace,
    /// Ids of alerts that are not resolved (values empty), kept in the same batches as the
    /// alerts: reading the open ones never scans every alert ever raised.
    open_index: Keyspace,
    /// The first commit that failed. fjall poisons its database on a failed journal write
    /// (a full disk): no later write succeeds until the store is reopened.
    write_failure: std::sync::OnceLock<String>,
    /// Device placements and associations (`d\0<device>`), bed occupants (`b\0<bed>`).
    device_links: Keyspace,
    /// Readings of unassociated devices, by time received then a counter.
    quarantine: Keyspace,
    /// Readings in `quarantine` (counted at open, then kept up to date), and the lock one
    /// trim at a time holds.
    quarantine_len: std::sync::atomic::AtomicUsize,
    quarantine_trim: std::sync::Mutex<()>,
    /// Patient state snapshots (sealed), one per patient, written by actors as they stop.
    snapshots: Keyspace,
    /// Console silences (`s\0<id>`) and assignments (`a\0<unit>\0<nurse>`), sealed.
    console: Keyspace,
    /// How rows written outside the commit pipeline (devices, console) are made durable:
    /// they share fsyncs.
    journal: JournalSync,
}

/// Makes the journal durable for the rows written outside the commit pipeline (device and
/// console rows, written and then synced). The journal is one file for every keyspace, so one
/// fsync covers every write buffered before it began: a caller whose rows are in the journal
/// takes a ticket and waits for the first fsync that starts after it (its own, or one already
/// asked for by a caller beside it) instead of queueing one fsync per caller behind the
/// journal's lock. (The committer's batches fsync inside their commit, before they are
/// visible.) Without it, a burst of new devices (one association
/// row each, each durable before its message is answered) and new census beds queued one
/// fsync each, and a connection's messages waited on them in turn (about 100 messages/s on a
/// disk where an fsync takes several milliseconds).
#[derive(Default)]
struct JournalSync {
    state: std::sync::Mutex<SyncState>,
    turn: std::sync::Condvar,
}

#[derive(Default)]
struct SyncState {
    /// Tickets handed out (each after its caller's writes were buffered).
    requested: u64,
    /// Every ticket up to this one is durable.
    synced: u64,
    /// An fsync is running.
    syncing: bool,
}

impl JournalSync {
    fn lock(&self) -> std::sync::MutexGuard<'_, SyncState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Block until everything written before this call is durable (on the journal's fsync).
    fn sync(&self, db: &Database) -> Result<(), fjall::Error> {
        self.sync_with(|| db.persist(PersistMode::SyncAll))
    }

    /// [`JournalSync::sync`] over any fsync (`persist`), which runs at most once per call.
    fn sync_with<E>(&self, persist: impl FnOnce() -> Result<(), E>) -> Result<(), E> {
        let mut state = self.lock();
        state.requested += 1;
        let ticket = state.requested;
        loop {
            if state.synced >= ticket {
                return Ok(());
            }
            if !state.syncing {
                // Covers every ticket handed out so far: their writes were buffered before.
                let target = state.requested;
                state.syncing = true;
                drop(state);
                let synced = persist();
                let mut state = self.lock();
                state.syncing = false;
                if synced.is_ok() {
                    state.synced = state.synced.max(target);
                }
                // After a failed fsync each waiter tries its own and hears its own error.
                self.turn.notify_all();
                return synced;
            }
            state = self.turn.wait(state).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }
}

/// The fjall-backed store. Cloning shares it.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    ks: Arc<Keyspaces>,
    tx: mpsc::Sender<Job>,
    last_seq: Arc<AtomicU64>,
    event_counter: AtomicU32,
    committer: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    /// The last handle gone: close the queue so the committer makes what is queued durable,
    /// and wait for it, so a graceful shutdown never leaves an accepted write behind.
    fn drop(&mut self) {
        let (closed, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.tx, closed));
        if let Some(handle) = self.committer.lock().ok().and_then(|mut h| h.take()) {
            let _ = handle.join();
        }
    }
}

/// An engine error as a `StoreError` naming the operation and keeping the cause (logged once,
/// by whoever handles it).
fn engine(op: &str) -> impl Fn(fjall::Error) -> StoreError + '_ {
    move |e| StoreError::failed(op, e)
}

/// A recovered journal larger than this is flushed at open.
const FLUSH_AT_OPEN_BYTES: u64 = 8 * 1024 * 1024;

/// Flush what the journal recovered at open (up to fjall's 512 MiB of journal, replayed into
/// memtables) to tables before the store takes its first write. Left in memtables, it is
/// flushed (and compacted) while the first messages after a restart commit: on a store of
/// 1 M messages that put the first 10 s's ACK p99 at 20x the warm p99 (docs/BENCHMARKS.md,
/// issue 12 (a)). Every keyspace of the database is flushed (the audit log and the webhook
/// cursors share the journal), after a clean stop or a crash alike; the start takes longer
/// (before readiness) instead of the first messages.
fn flush_recovered_journal(db: &Database) -> Result<(), StoreError> {
    let journal = db.journal_disk_space().map_err(engine("journal size"))?;
    if journal <= FLUSH_AT_OPEN_BYTES {
        return Ok(());
    }
    let started = std::time::Instant::now();
    for name in db.list_keyspace_names() {
        let keyspace = db.keyspace(&name, KeyspaceCreateOptions::default).map_err(engine("open"))?;
        // fjall's own flush-and-wait (public, though hidden from its docs).
        keyspace.rotate_memtable_and_wait().map_err(engine("flush recovered journal"))?;
    }
    let flushed = started.elapsed();
    // The flushed tables start compactions that rewrite several times their size (measured:
    // about 720 MB written in the 5 s after flushing 244 MB): they finish here too, within a
    // deadline, rather than beside the first commits.
    let settled = await_compactions(db, COMPACTION_SETTLE_DEADLINE);
    tracing::info!(
        journal_mib = journal / (1024 * 1024),
        flush_ms = flushed.as_millis() as u64,
        compactions_ms = (started.elapsed() - flushed).as_millis() as u64,
        settled,
        "recovered journal flushed before the first write"
    );
    Ok(())
}

/// How long a start waits for the compactions its flush began.
const COMPACTION_SETTLE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

/// Wait until fjall has run no flush or compaction for a quiet half second (a compaction is
/// queued after each flush, so one idle look is not enough), at most `deadline`. `false`: the
/// deadline passed first (the rest then runs beside the first writes, as without the wait).
fn await_compactions(db: &Database, deadline: std::time::Duration) -> bool {
    const QUIET: std::time::Duration = std::time::Duration::from_millis(500);
    let started = std::time::Instant::now();
    let mut quiet_since = started;
    let mut completed = db.compactions_completed();
    loop {
        let now = std::time::Instant::now();
        let done = db.compactions_completed();
        if db.active_compactions() > 0 || db.outstanding_flushes() > 0 || done != completed {
            completed = done;
            quiet_since = now;
        }
        if now - quiet_since >= QUIET {
            return true;
        }
        if now - started >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// What `vigil store compact` did: the fjall directory's bytes before and after, and each
/// keyspace's rows and table bytes after.
#[derive(Debug, Clone)]
pub struct Compacted {
    /// Bytes before.
    pub before: u64,
    /// Bytes after.
    pub after: u64,
    /// The journal's bytes after: fjall keeps its active journal file (drops a journal only
    /// once it has been rotated, at 64 MB); a bounded cost, not one per row.
    pub journal: u64,
    /// Per keyspace: name, rows, bytes of its tables.
    pub keyspaces: Vec<(String, usize, u64)>,
}

/// `vigil store compact` (run with Vigil stopped: the store's lock refuses a second opener):
/// every keyspace's memtable flushed and its tables merged (fjall's major compaction), so the
/// journal is no longer needed and the directory holds what the store costs once settled
/// (issue 14's bytes per message). Needs no key: rows are moved, not opened.
pub fn compact(data_dir: &Path) -> Result<Compacted, StoreError> {
    let path = data_dir.join("fjall");
    if !path.is_dir() {
        return Err(StoreError::Engine(format!("{}: no embedded store here", path.display())));
    }
    let before = dir_bytes(&path);
    let db = Database::builder(&path).manual_journal_persist(true).open().map_err(engine("open"))?;
    let mut opened = Vec::new();
    for name in db.list_keyspace_names() {
        let keyspace = db.keyspace(&name, KeyspaceCreateOptions::default).map_err(engine("open"))?;
        keyspace.rotate_memtable_and_wait().map_err(engine("flush"))?;
        keyspace.major_compact().map_err(engine("compact"))?;
        opened.push((name.to_string(), keyspace));
    }
    await_compactions(&db, std::time::Duration::from_secs(120));
    db.persist(PersistMode::SyncAll).map_err(engine("persist"))?;
    let mut keyspaces = Vec::new();
    for (name, keyspace) in opened {
        keyspaces.push((name, keyspace.len().map_err(engine("count"))?, keyspace.disk_space()));
    }
    let journal = db.journal_disk_space().map_err(engine("journal size"))?;
    drop(db);
    Ok(Compacted { before, after: dir_bytes(&path), journal, keyspaces })
}

/// Bytes of the files under `dir` (unreadable entries count nothing).
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(_) => e.metadata().map(|m| m.len()).unwrap_or(0),
            Err(_) => 0,
        })
        .sum()
}

impl EmbeddedStore {
    /// Open (or create) the store under `dir` and start its committer. Values are sealed with
    /// `keys`; alert changes are handed to `publisher` once durable.
    pub fn open(
        dir: &Path,
        config: EmbeddedStoreConfig,
        keys: Arc<KeyRing>,
        publisher: Arc<dyn AlertPublisher>,
    ) -> Result<Self, StoreError> {
        let db = Database::builder(dir.join("fjall")).manual_journal_persist(true).open().map_err(engine("open"))?;
        let events = db.keyspace("events", keyspace_options).map_err(engine("open"))?;
        let messages = db.keyspace("messages", keyspace_options).map_err(engine("open"))?;
        let alerts = db.keyspace("alerts", keyspace_options).map_err(engine("open"))?;
        let alert_log = db.keyspace("alert_log", keyspace_options).map_err(engine("open"))?;
        let last_seq = match alert_log.last_key_value() {
            Some(guard) => {
                let key = guard.key().map_err(engine("recover"))?;
                u64::from_be_bytes(
                    key.as_ref()
                        .try_into()
                        .map_err(|_| StoreError::Corrupt("alert log key is not a sequence number".into()))?,
                )
            }
            None => 0,
        };
        let open_index = db.keyspace("open_alerts", keyspace_options).map_err(engine("open"))?;
        let device_links = db.keyspace(DEVICE_LINKS, keyspace_options).map_err(engine("open"))?;
        let quarantine = db.keyspace(QUARANTINE, keyspace_options).map_err(engine("open"))?;
        let snapshots = db.keyspace(SNAPSHOTS, keyspace_options).map_err(engine("open"))?;
        let console = db.keyspace(CONSOLE, keyspace_options).map_err(engine("open"))?;
        let quarantine_len = quarantine.len().map_err(engine("count quarantine"))?;
        flush_recovered_journal(&db)?;
        let ks = Arc::new(Keyspaces {
            db,
            keys,
            events,
            messages,
            alerts,
            alert_log,
            open_index,
            write_failure: std::sync::OnceLock::new(),
            device_links,
            quarantine,
            quarantine_len: std::sync::atomic::AtomicUsize::new(quarantine_len),
            quarantine_trim: std::sync::Mutex::new(()),
            snapshots,
            console,
            journal: JournalSync::default(),
        });
        let last_seq = Arc::new(AtomicU64::new(last_seq));
        let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
        let committer = {
            let backend = Fjall { ks: Arc::clone(&ks) };
            let pipeline = Pipeline::new(
                backend,
                publisher,
                Arc::clone(&last_seq),
                PipelineConfig {
                    max_batch: config.max_batch.max(1),
                    commit_interval: config.commit_interval,
                    ..PipelineConfig::default()
                },
            )
            .with_write_timer(config.write_timer.clone())
            .with_expected(config.expected.clone());
            // The engine's calls block (fsync): the pipeline runs on a thread of its own, with
            // a timer for the commit interval.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .map_err(|e| StoreError::Engine(format!("start committer: {e}")))?;
            std::thread::Builder::new()
                .name("vigil-committer".into())
                .spawn(move || runtime.block_on(pipeline.run(rx)))
                .map_err(|e| StoreError::Engine(format!("start committer: {e}")))?
        };
        Ok(EmbeddedStore {
            inner: Arc::new(Inner {
                ks,
                tx,
                last_seq,
                event_counter: AtomicU32::new(rand::random()),
                committer: std::sync::Mutex::new(Some(committer)),
            }),
        })
    }

    /// Why the store takes no more writes, once a commit has failed (until reopened).
    pub fn write_failure(&self) -> Option<String> {
        self.inner.ks.write_failure.get().cloned()
    }

    /// The underlying database, for adapters that keep their own keyspaces in it (audit,
    /// webhook cursors).
    pub fn database(&self) -> Database {
        self.inner.ks.db.clone()
    }

    async fn submit(&self, job: Job) -> Result<(), StoreError> {
        self.inner.tx.send(job).await.map_err(|_| StoreError::Unavailable("store is shutting down".into()))
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Keyspaces) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let ks = Arc::clone(&self.inner.ks);
        tokio::task::spawn_blocking(move || f(&ks)).await.map_err(|e| StoreError::Engine(format!("read task: {e}")))?
    }
}

const EVENTS: &str = "events";
const MESSAGES: &str = "messages";
const ALERTS: &str = "alerts";
const ALERT_LOG: &str = "alert_log";
const DEVICE_LINKS: &str = "device_links";
const QUARANTINE: &str = "quarantine";
const SNAPSHOTS: &str = "patient_snapshots";
const CONSOLE: &str = "console";

fn seal(keys: &KeyRing, table: &str, key: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, StoreError> {
    keys.seal(Aad { table, key, column: "record" }, plaintext)
        .map_err(|e| StoreError::Engine(format!("seal {table}: {e}")))
}

fn open_json<T: serde::de::DeserializeOwned>(
    keys: &KeyRing,
    table: &str,
    key: &[u8],
    sealed: &[u8],
) -> Result<T, StoreError> {
    let plaintext = keys
        .open(Aad { table, key, column: "record" }, sealed)
        .map_err(|e| StoreError::Corrupt(format!("{table}: {e}")))?;
    serde_json::from_slice(&plaintext).map_err(|e| StoreError::Corrupt(format!("{table}: {e}")))
}

/// The message log's key: the (feed-scoped) sender and the sender's message id.
fn message_key(key: &MessageKey) -> Vec<u8> {
    let sender = key.scoped_sender();
    let mut out = Vec::with_capacity(sender.len() + 1 + key.id.len());
    out.extend_from_slice(sender.as_bytes());
    out.push(0);
    out.extend_from_slice(key.id.as_bytes());
    out
}

/// A message-log row of the JSON form: when and for whom `raw` was accepted, and the message.
#[derive(serde::Deserialize)]
struct MessageRecord {
    #[serde(flatten)]
    accepted: AcceptedMessage,
    raw: String,
}

/// The first byte of a message-log row written since the thirteenth session: the acceptance as
/// JSON, then the raw message as it came, not escaped into a JSON string (escaping every
/// segment's `\r` and every `\\` of an HL7 message cost more than any other step of storing
/// it). Rows written before are one JSON object (`{...accepted, "raw": "..."}`, first byte
/// `{`) and are still read.
const MESSAGE_ROW_RAW: u8 = 0x02;

/// A message-log row (plaintext, before sealing): [`MESSAGE_ROW_RAW`], the length of the
/// acceptance's JSON (u32, big-endian), that JSON, then `raw`'s bytes to the end of the row.
pub(super) fn message_row(accepted: &AcceptedMessage, raw: &str) -> Result<Vec<u8>, StoreError> {
    let head = serde_json::to_vec(accepted).map_err(|e| StoreError::Engine(format!("encode message: {e}")))?;
    let len = u32::try_from(head.len()).map_err(|_| StoreError::Engine("encode message: header too long".into()))?;
    let mut row = Vec::with_capacity(1 + 4 + head.len() + raw.len());
    row.push(MESSAGE_ROW_RAW);
    row.extend_from_slice(&len.to_be_bytes());
    row.extend_from_slice(&head);
    row.extend_from_slice(raw.as_bytes());
    Ok(row)
}

/// Decode a message-log row of either form (see [`MESSAGE_ROW_RAW`]): the acceptance and the
/// raw message.
fn decode_message_row(row: &[u8]) -> Result<(AcceptedMessage, Cow<'_, str>), StoreError> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("{MESSAGES}: {what}"));
    match row.split_first() {
        Some((b'{', _)) => {
            let record: MessageRecord = serde_json::from_slice(row).map_err(|e| corrupt(&e.to_string()))?;
            Ok((record.accepted, Cow::Owned(record.raw)))
        }
        Some((&MESSAGE_ROW_RAW, rest)) => {
            let (len, rest) = rest.split_first_chunk::<4>().ok_or_else(|| corrupt("row too short"))?;
            let len = u32::from_be_bytes(*len) as usize;
            let (head, raw) = rest.split_at_checked(len).ok_or_else(|| corrupt("header longer than the row"))?;
            let accepted = serde_json::from_slice(head).map_err(|e| corrupt(&e.to_string()))?;
            let raw = std::str::from_utf8(raw).map_err(|_| corrupt("raw message not UTF-8"))?;
            Ok((accepted, Cow::Borrowed(raw)))
        }
        _ => Err(corrupt("unknown row format")),
    }
}

/// Open a sealed message-log row: its plaintext, for [`decode_message_row`].
fn open_message_row(keys: &KeyRing, key: &[u8], sealed: &[u8]) -> Result<Vec<u8>, StoreError> {
    keys.open(Aad { table: MESSAGES, key, column: "record" }, sealed)
        .map_err(|e| StoreError::Corrupt(format!("{MESSAGES}: {e}")))
}

/// Events are keyed by patient, then time, then a counter: one patient's recent window is a
/// single range scan in time order.
fn event_key(patient: &PatientId, at: OffsetDateTime, counter: u32) -> Vec<u8> {
    let mut key = Vec::with_capacity(patient.0.len() + 1 + 16 + 4);
    key.extend_from_slice(patient.0.as_bytes());
    key.push(0);
    key.extend_from_slice(&at.unix_timestamp_nanos().to_be_bytes());
    key.extend_from_slice(&counter.to_be_bytes());
    key
}

impl EmbeddedStore {
    /// The sealed rows of one message's events: an event row each, and with the first the
    /// message-log entry of `message`, when given (a message is logged once), and of each of
    /// its parts in this bundle (their raw text is the message's: only a pointer to it).
    fn records_of(
        &self,
        message: Option<&FromMessage>,
        events: &[ClinicalEvent],
    ) -> Result<Vec<EventRecord>, StoreError> {
        let keys = &self.inner.ks.keys;
        let mut records = Vec::with_capacity(events.len());
        let mut log = message;
        for event in events {
            let counter = self.inner.event_counter.fetch_add(1, Ordering::Relaxed);
            let key = event_key(&event.patient_id, event.received_at, counter);
            let value = super::event_body(event, message)?;
            let value = seal(keys, EVENTS, &key, &value)?;
            let mut messages = Vec::new();
            if let Some(FromMessage { envelope, logs_message, parts, .. }) = log.take() {
                let accepted =
                    AcceptedMessage { patient_id: event.patient_id.clone(), received_at: envelope.received_at };
                let mut entry = |key: &MessageKey, raw: &str| -> Result<(), StoreError> {
                    let value = message_row(&accepted, raw)?;
                    let key = message_key(key);
                    let value = seal(keys, MESSAGES, &key, &value)?;
                    messages.push((key, value));
                    Ok(())
                };
                if *logs_message {
                    entry(&envelope.key, envelope.raw.expose())?;
                }
                for part in parts {
                    entry(part, &format!("part of {}", envelope.key.id))?;
                }
            }
            records.push(EventRecord { key, value, messages });
        }
        Ok(records)
    }

    /// Every stored event of `patient` received at or after `since`, oldest first, with the
    /// message it came from: for audit, replay and the crash tests.
    pub async fn recorded_events(
        &self,
        patient: &PatientId,
        since: OffsetDateTime,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let rows: Vec<super::StoredEventBody> = self.event_rows(patient, since).await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    /// The event rows of `patient` received at or after `since`, oldest first: one range scan.
    async fn event_rows<T: serde::de::DeserializeOwned + Send + 'static>(
        &self,
        patient: &PatientId,
        since: OffsetDateTime,
    ) -> Result<Vec<T>, StoreError> {
        let from = event_key(patient, since, 0);
        let mut to = patient.0.as_bytes().to_vec();
        to.push(1);
        self.blocking(move |ks| {
            let mut out = Vec::new();
            for guard in ks.events.range(from..to) {
                let (key, value) = guard.into_inner().map_err(engine("read events"))?;
                out.push(open_json(&ks.keys, EVENTS, &key, &value)?);
            }
            Ok(out)
        })
        .await
    }
}

#[async_trait]
impl EventStore for EmbeddedStore {
    async fn append_all(
        &self,
        message: Option<&FromMessage>,
        events: &[ClinicalEvent],
        alerts: &[(Alert, bool)],
    ) -> Result<Durable, StoreError> {
        let records = self.records_of(message, events)?;
        let (done, ticket) = Durable::channel();
        let alerts = alerts.iter().map(|(a, n)| (Box::new(a.clone()), *n)).collect();
        self.submit(Job::Events { rows: records, alerts, done }).await?;
        Ok(ticket)
    }

    async fn events_since(&self, patient: &PatientId, since: OffsetDateTime) -> Result<Vec<ClinicalEvent>, StoreError> {
        self.event_rows(patient, since).await
    }

    /// Written straight to the keyspace, not through the commit pipeline; the next batch's
    /// fsync (or the final one at shutdown) makes it durable. A snapshot lost to a crash costs
    /// a replay of the log. One made durable before the last events it holds (still queued
    /// when it was written) holds events whose senders were not acknowledged: they resend,
    /// and the same samples applied again replace themselves.
    async fn save_snapshot(&self, patient: &PatientId, snapshot: &[u8]) -> Result<(), StoreError> {
        let key = patient.0.as_bytes().to_vec();
        let value = seal(&self.inner.ks.keys, SNAPSHOTS, &key, snapshot)?;
        self.blocking(move |ks| ks.snapshots.insert(key, value).map_err(engine("write snapshot"))).await
    }

    /// The removal goes to the journal before any append the successor makes, so it is
    /// durable no later than that append.
    async fn take_snapshot(&self, patient: &PatientId) -> Result<Option<Vec<u8>>, StoreError> {
        let key = patient.0.as_bytes().to_vec();
        self.blocking(move |ks| {
            let Some(sealed) = ks.snapshots.get(&key).map_err(engine("read snapshot"))? else { return Ok(None) };
            ks.snapshots.remove(key.as_slice()).map_err(engine("remove snapshot"))?;
            ks.keys
                .open(Aad { table: SNAPSHOTS, key: &key, column: "record" }, &sealed)
                .map(Some)
                .map_err(|e| StoreError::Corrupt(format!("{SNAPSHOTS}: {e}")))
        })
        .await
    }

    /// The snapshots' keys are the patients' ids: one scan of keys, no value unsealed.
    async fn snapshotted_patients(&self, limit: usize) -> Result<Vec<PatientId>, StoreError> {
        self.blocking(move |ks| {
            let mut out = Vec::new();
            for guard in ks.snapshots.iter().take(limit) {
                let key = guard.key().map_err(engine("list snapshots"))?;
                let id = std::str::from_utf8(&key).map_err(|_| StoreError::Corrupt("snapshot key".into()))?;
                out.push(PatientId(id.to_owned()));
            }
            Ok(out)
        })
        .await
    }
}

#[async_trait]
impl MessageLog for EmbeddedStore {
    async fn accepted_message(&self, key: &MessageKey) -> Result<Option<AcceptedMessage>, StoreError> {
        // A point read answered from memory or one bloom-filtered table: microseconds, so it
        // runs inline on the ingest path.
        let key = message_key(key);
        let Some(bytes) = self.inner.ks.messages.get(&key).map_err(engine("read message log"))? else {
            return Ok(None);
        };
        let row = open_message_row(&self.inner.ks.keys, &key, &bytes)?;
        Ok(Some(decode_message_row(&row)?.0))
    }
}

#[async_trait]
impl AlertStore for EmbeddedStore {
    async fn upsert_alert(&self, alert: &Alert, notify: bool) -> Result<Durable<u64>, StoreError> {
        let (done, ticket) = Durable::channel();
        self.submit(Job::Alert { alert: Box::new(alert.clone()), notify, done }).await?;
        Ok(ticket)
    }

    async fn alert(&self, id: &AlertId) -> Result<Option<SequencedAlert>, StoreError> {
        stored_alert(&self.inner.ks, &id.0)
    }

    async fn alerts_after(&self, after: u64, limit: usize) -> Result<Vec<SequencedAlert>, StoreError> {
        let Some(from) = after.checked_add(1) else { return Ok(Vec::new()) };
        self.blocking(move |ks| {
            let mut out = Vec::new();
            for guard in ks.alert_log.range(from.to_be_bytes()..).take(limit) {
                let (key, value) = guard.into_inner().map_err(engine("read alert log"))?;
                out.push(open_json(&ks.keys, ALERT_LOG, &key, &value)?);
            }
            Ok(out)
        })
        .await
    }

    async fn open_alerts(&self) -> Result<Vec<SequencedAlert>, StoreError> {
        self.blocking(|ks| {
            let mut out = Vec::new();
            for guard in ks.open_index.iter() {
                let id = guard.key().map_err(engine("read open alerts"))?;
                let id = std::str::from_utf8(&id).map_err(|_| StoreError::Corrupt("open alert id".into()))?;
                if let Some(change) = stored_alert(ks, id)? {
                    out.push(change);
                }
            }
            out.sort_by_key(|c| c.seq);
            Ok(out)
        })
        .await
    }

    async fn open_alerts_of(&self, patient: &PatientId) -> Result<Vec<vigil_actors::Alert>, StoreError> {
        // Alert ids begin with the patient's id (see `AlertStore::open_alerts_of`): one prefix
        // read of the open-alert index, not a scan of every open alert.
        let prefix = format!("{patient}-");
        let patient = patient.clone();
        self.blocking(move |ks| {
            let mut out = Vec::new();
            for guard in ks.open_index.prefix(prefix.as_bytes()) {
                let id = guard.key().map_err(engine("read open alerts"))?;
                let id = std::str::from_utf8(&id).map_err(|_| StoreError::Corrupt("open alert id".into()))?;
                if let Some(change) = stored_alert(ks, id)?
                    && change.alert.patient.id == patient
                {
                    out.push(change);
                }
            }
            out.sort_by_key(|c| c.seq);
            Ok(out.into_iter().map(|c| c.alert).collect())
        })
        .await
    }

    fn last_seq(&self) -> u64 {
        self.inner.last_seq.load(Ordering::Acquire)
    }
}

/// The embedded engine behind the commit pipeline: one fjall write batch and one fsync per
/// batch, so a batch is durable whole or not at all.
struct Fjall {
    ks: Arc<Keyspaces>,
}

/// An alert change's sealed rows: its latest state and its alert-log entry.
struct AlertRows<'a> {
    change: &'a SequencedAlert,
    state: Vec<u8>,
    log: Vec<u8>,
}

fn alert_rows<'a>(keys: &KeyRing, change: &'a SequencedAlert) -> Result<AlertRows<'a>, StoreError> {
    let bytes = serde_json::to_vec(change).map_err(|e| StoreError::Engine(format!("encode alert: {e}")))?;
    let state = seal(keys, ALERTS, change.alert.id.0.as_bytes(), &bytes)?;
    let log = seal(keys, ALERT_LOG, &change.seq.to_be_bytes(), &bytes)?;
    Ok(AlertRows { change, state, log })
}

#[async_trait]
impl Backend for Fjall {
    type Rows = Vec<EventRecord>;

    async fn stored_alert(&self, id: &str) -> Result<Option<SequencedAlert>, StoreError> {
        stored_alert(&self.ks, id)
    }

    async fn write(&mut self, jobs: &[Staged<'_, Vec<EventRecord>>]) -> Vec<Result<(), StoreError>> {
        let ks = &self.ks;
        // Durable before visible: fjall fsyncs the journal before it applies the batch to the
        // memtables, so no reader (a console's backfill by sequence number, the duplicate
        // check) sees a row that a crash could still take back. Not through `JournalSync`,
        // whose writers are visible before their fsync: an alert change read then and lost in
        // a crash would leave its sequence number to another alert after the restart.
        let mut batch = ks.db.batch().durability(Some(PersistMode::SyncAll));
        let mut results = Vec::with_capacity(jobs.len());
        for job in jobs {
            // Sealed first: a job goes into the batch whole or not at all.
            let sealed: Result<Vec<AlertRows<'_>>, StoreError> =
                job.changes.iter().map(|c| alert_rows(&ks.keys, c)).collect();
            let sealed = match sealed {
                Ok(sealed) => sealed,
                Err(e) => {
                    results.push(Err(e));
                    continue;
                }
            };
            for r in job.rows.into_iter().flatten() {
                batch.insert(&ks.events, r.key.as_slice(), r.value.as_slice());
                for (message_key, message_value) in &r.messages {
                    batch.insert(&ks.messages, message_key.as_slice(), message_value.as_slice());
                }
            }
            for AlertRows { change, state, log } in sealed {
                let id = change.alert.id.0.as_bytes();
                if change.alert.status == AlertStatus::Resolved {
                    batch.remove(&ks.open_index, id);
                } else {
                    batch.insert(&ks.open_index, id, []);
                }
                batch.insert(&ks.alerts, id, state);
                batch.insert(&ks.alert_log, change.seq.to_be_bytes(), log);
            }
            results.push(Ok(()));
        }
        match batch.commit() {
            Ok(()) => results,
            Err(e) => {
                if ks.write_failure.set(e.to_string()).is_ok() {
                    tracing::error!(error = %e, "the embedded store refused a write (disk full?): nothing more is acknowledged; free space and restart vigil");
                }
                let e = engine("commit")(e);
                results.into_iter().map(|r| r.and(Err(e.clone()))).collect()
            }
        }
    }

    async fn finish(&mut self) {
        if let Err(e) = self.ks.db.persist(PersistMode::SyncAll) {
            tracing::error!(error = %e, "final persist failed");
        }
    }
}

fn stored_alert(ks: &Keyspaces, id: &str) -> Result<Option<SequencedAlert>, StoreError> {
    match ks.alerts.get(id.as_bytes()).map_err(engine("read alert"))? {
        Some(bytes) => open_json(&ks.keys, ALERTS, id.as_bytes(), &bytes).map(Some),
        None => Ok(None),
    }
}

/// A device's key in `device_links`.
fn device_key(id: &DeviceId) -> Vec<u8> {
    let mut key = b"d\0".to_vec();
    key.extend_from_slice(id.0.as_bytes());
    key
}

/// A bed's key in `device_links` (unit, room and bed; NUL cannot occur in an HL7 field).
fn bed_key(bed: &Location) -> Vec<u8> {
    format!("b\0{}\0{}\0{}", bed.unit, bed.room, bed.bed).into_bytes()
}

impl EmbeddedStore {
    /// Seal and write one row outside the commit pipeline, then make it durable (device
    /// changes and quarantined readings are rare; each is acknowledged only once on disk).
    /// A device-link row written into the journal (and visible) now, not yet synced: the
    /// caller waits for [`DeviceStore::sync`] (the registry writes in the order of its
    /// changes, then waits outside its lock, so concurrent changes share one fsync). Written
    /// on the caller's thread, like an audit record: a memtable insert and a buffered journal
    /// append, no fsync; a trip to the blocking pool under the registry's lock cost more than
    /// the write (a burst of 500 new monitors queued behind 500 such trips).
    async fn put_now(&self, key: Vec<u8>, value: Vec<u8>) -> Result<(), StoreError> {
        let ks = &self.inner.ks;
        let sealed = seal(&ks.keys, DEVICE_LINKS, &key, &value)?;
        ks.device_links.insert(key, sealed).map_err(engine("write device row"))
    }

    async fn put_durably(&self, table: &'static str, key: Vec<u8>, value: Vec<u8>) -> Result<(), StoreError> {
        self.blocking(move |ks| {
            let sealed = seal(&ks.keys, table, &key, &value)?;
            let keyspace = match table {
                QUARANTINE => &ks.quarantine,
                CONSOLE => &ks.console,
                _ => &ks.device_links,
            };
            keyspace.insert(key, sealed).map_err(engine("write device row"))?;
            ks.journal.sync(&ks.db).map_err(engine("persist device row"))
        })
        .await
    }

    async fn links_with_prefix<T: serde::de::DeserializeOwned + Send + 'static>(
        &self,
        prefix: &'static [u8],
    ) -> Result<Vec<T>, StoreError> {
        self.blocking(move |ks| {
            let mut out = Vec::new();
            for guard in ks.device_links.prefix(prefix) {
                let (key, value) = guard.into_inner().map_err(engine("read device rows"))?;
                out.push(open_json(&ks.keys, DEVICE_LINKS, &key, &value)?);
            }
            Ok(out)
        })
        .await
    }
}

fn encode<T: serde::Serialize>(what: &str, value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Engine(format!("encode {what}: {e}")))
}

#[async_trait]
impl DeviceStore for EmbeddedStore {
    async fn put_device(&self, record: &DeviceRecord) -> Result<(), StoreError> {
        self.put_durably(DEVICE_LINKS, device_key(&record.id), encode("device", record)?).await
    }

    async fn devices(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        self.links_with_prefix(b"d\0").await
    }

    async fn put_bed(&self, record: &BedRecord) -> Result<(), StoreError> {
        self.put_durably(DEVICE_LINKS, bed_key(&record.bed), encode("bed", record)?).await
    }

    async fn write_device(&self, record: &DeviceRecord) -> Result<(), StoreError> {
        self.put_now(device_key(&record.id), encode("device", record)?).await
    }

    async fn write_bed(&self, record: &BedRecord) -> Result<(), StoreError> {
        self.put_now(bed_key(&record.bed), encode("bed", record)?).await
    }

    async fn sync(&self) -> Result<(), StoreError> {
        self.blocking(|ks| ks.journal.sync(&ks.db).map_err(engine("persist device row"))).await
    }

    async fn beds(&self) -> Result<Vec<BedRecord>, StoreError> {
        self.links_with_prefix(b"b\0").await
    }

    async fn quarantine(&self, reading: &QuarantinedReading) -> Result<(), StoreError> {
        let counter = self.inner.event_counter.fetch_add(1, Ordering::Relaxed);
        let mut key = reading.received_at.unix_timestamp_nanos().to_be_bytes().to_vec();
        key.extend_from_slice(&counter.to_be_bytes());
        self.put_durably(QUARANTINE, key, encode("quarantined reading", reading)?).await?;
        self.inner.ks.quarantine_len.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn quarantined(&self, limit: usize) -> Result<Vec<QuarantinedReading>, StoreError> {
        self.blocking(move |ks| {
            let mut out = Vec::new();
            for guard in ks.quarantine.iter().rev().take(limit) {
                let (key, value) = guard.into_inner().map_err(engine("read quarantine"))?;
                out.push(open_json(&ks.keys, QUARANTINE, &key, &value)?);
            }
            Ok(out)
        })
        .await
    }

    /// Keys are the time received first, so the oldest are the front of the keyspace. The
    /// removals are not fsynced: one lost to a crash is trimmed again (the count is taken
    /// afresh at open).
    async fn trim_quarantine(&self, keep: usize, older_than: OffsetDateTime) -> Result<u64, StoreError> {
        let cutoff = older_than.unix_timestamp_nanos().to_be_bytes();
        self.blocking(move |ks| {
            let _one_at_a_time =
                ks.quarantine_trim.lock().map_err(|_| StoreError::Engine("quarantine trim lock".into()))?;
            let len = ks.quarantine_len.load(Ordering::Relaxed);
            let mut doomed = Vec::new();
            for guard in ks.quarantine.iter() {
                let key = guard.key().map_err(engine("read quarantine"))?;
                let old = key.get(..cutoff.len()).is_some_and(|at| at < cutoff.as_slice());
                if !old && len.saturating_sub(doomed.len()) <= keep {
                    break;
                }
                doomed.push(key);
            }
            for key in &doomed {
                ks.quarantine.remove(key.clone()).map_err(engine("trim quarantine"))?;
                ks.quarantine_len.fetch_sub(1, Ordering::Relaxed);
            }
            Ok(doomed.len() as u64)
        })
        .await
    }
}

/// A silence's key in `console`.
fn silence_key(id: &str) -> Vec<u8> {
    format!("s\0{id}").into_bytes()
}

/// An assignment's key in `console`.
fn assignment_key(unit: &str, nurse: &str) -> Vec<u8> {
    format!("a\0{}", crate::console::store::assignment_key(unit, nurse)).into_bytes()
}

/// A census bed's key in `console`.
fn census_key(patient: &str) -> Vec<u8> {
    format!("c\0{patient}").into_bytes()
}

/// An alert's receipts' key in `console`.
fn receipts_key(alert_id: &str) -> Vec<u8> {
    format!("r\0{alert_id}").into_bytes()
}

impl EmbeddedStore {
    /// Remove one row of `console` and make the removal durable.
    async fn remove_console_row(&self, key: Vec<u8>) -> Result<(), StoreError> {
        self.blocking(move |ks| {
            ks.console.remove(key).map_err(engine("remove console row"))?;
            ks.journal.sync(&ks.db).map_err(engine("persist console row"))
        })
        .await
    }

    async fn console_rows<T: serde::de::DeserializeOwned + Send + 'static>(
        &self,
        prefix: &'static [u8],
    ) -> Result<Vec<T>, StoreError> {
        self.blocking(move |ks| {
            let mut out = Vec::new();
            for guard in ks.console.prefix(prefix) {
                let (key, value) = guard.into_inner().map_err(engine("read console rows"))?;
                out.push(open_json(&ks.keys, CONSOLE, &key, &value)?);
            }
            Ok(out)
        })
        .await
    }
}

/// Silences, assignments, census beds and receipts, sealed like every other row, each write
/// durable before it returns.
#[async_trait]
impl crate::console::ConsoleStore for EmbeddedStore {
    async fn put_silence(&self, silence: &crate::console::Silence) -> Result<(), StoreError> {
        self.put_durably(CONSOLE, silence_key(&silence.id), encode("silence", silence)?).await
    }

    async fn remove_silence(&self, id: &str) -> Result<(), StoreError> {
        self.remove_console_row(silence_key(id)).await
    }

    async fn silences(&self) -> Result<Vec<crate::console::Silence>, StoreError> {
        self.console_rows(b"s\0").await
    }

    async fn put_assignment(&self, assignment: &crate::console::Assignment) -> Result<(), StoreError> {
        let key = assignment_key(&assignment.unit, &assignment.nurse);
        self.put_durably(CONSOLE, key, encode("assignment", assignment)?).await
    }

    async fn remove_assignment(&self, unit: &str, nurse: &str) -> Result<(), StoreError> {
        self.remove_console_row(assignment_key(unit, nurse)).await
    }

    async fn assignments(&self) -> Result<Vec<crate::console::Assignment>, StoreError> {
        self.console_rows(b"a\0").await
    }

    async fn put_census_bed(&self, bed: &vigil_actors::CensusBed) -> Result<(), StoreError> {
        self.put_durably(CONSOLE, census_key(&bed.patient.0), encode("census bed", bed)?).await
    }

    async fn remove_census_bed(&self, patient: &str) -> Result<(), StoreError> {
        self.remove_console_row(census_key(patient)).await
    }

    async fn census_beds(&self) -> Result<Vec<vigil_actors::CensusBed>, StoreError> {
        self.console_rows(b"c\0").await
    }

    async fn put_receipts(&self, receipts: &crate::console::assignments::StoredReceipts) -> Result<(), StoreError> {
        let (key, value) = (receipts_key(&receipts.alert_id), encode("receipts", receipts)?);
        self.blocking(move |ks| {
            let sealed = seal(&ks.keys, CONSOLE, &key, &value)?;
            ks.console.insert(key, sealed).map_err(engine("write receipts"))?;
            // Handed to the operating system, not synced: a crash or a restart of the process
            // keeps it, a power cut may lose the last receipts. A sync per receipt held up the
            // consoles' sessions, which report one per alert they show.
            ks.db.persist(PersistMode::Buffer).map_err(engine("flush receipts"))
        })
        .await
    }

    async fn remove_receipts(&self, alert_id: &str) -> Result<(), StoreError> {
        self.remove_console_row(receipts_key(alert_id)).await
    }

    async fn receipts(&self) -> Result<Vec<crate::console::assignments::StoredReceipts>, StoreError> {
        self.console_rows(b"r\0").await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_actors::Envelope;
    use vigil_actors::fakes::CollectingPublisher;

    /// Writers that ask for durability while an fsync runs share the next one: eight callers
    /// arriving during a (slow) fsync make two in all, not nine; each is answered only after
    /// an fsync that began after its own call; a failed fsync is each waiter's own to retry.
    #[test]
    fn callers_during_an_fsync_share_the_next_one_and_none_returns_before_its_own_is_covered() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let journal = Arc::new(JournalSync::default());
        let fsyncs = Arc::new(AtomicUsize::new(0));
        let (entered_tx, entered_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        // The first caller's fsync holds until the others are all waiting.
        let first = {
            let (journal, fsyncs) = (Arc::clone(&journal), Arc::clone(&fsyncs));
            std::thread::spawn(move || {
                journal.sync_with(|| {
                    fsyncs.fetch_add(1, Ordering::SeqCst);
                    entered_tx.send(()).unwrap();
                    release_rx.recv().unwrap();
                    Ok::<(), ()>(())
                })
            })
        };
        entered_rx.recv().unwrap();
        let covered_by_first = Arc::new(AtomicUsize::new(0));
        let others: Vec<_> = (0..8)
            .map(|_| {
                let (journal, fsyncs, covered) =
                    (Arc::clone(&journal), Arc::clone(&fsyncs), Arc::clone(&covered_by_first));
                std::thread::spawn(move || {
                    let result = journal.sync_with(|| {
                        fsyncs.fetch_add(1, Ordering::SeqCst);
                        Ok::<(), ()>(())
                    });
                    // Answered while only the first fsync (begun before this call) had run?
                    if fsyncs.load(Ordering::SeqCst) < 2 {
                        covered.fetch_add(1, Ordering::SeqCst);
                    }
                    result
                })
            })
            .collect();
        // Every other caller holds a ticket and waits before the first fsync ends.
        while journal.state.lock().unwrap().requested < 9 {
            std::thread::yield_now();
        }
        release_tx.send(()).unwrap();
        assert_eq!(first.join().unwrap(), Ok(()));
        for other in others {
            assert_eq!(other.join().unwrap(), Ok(()));
        }
        assert_eq!(fsyncs.load(Ordering::SeqCst), 2, "one fsync for the first, one shared by the eight");
        assert_eq!(covered_by_first.load(Ordering::SeqCst), 0, "no caller answered by an fsync begun before it");

        // A failed fsync fails its caller; the next caller runs one of its own.
        assert_eq!(journal.sync_with(|| Err::<(), _>("disk")), Err("disk"));
        assert_eq!(journal.sync_with(|| Ok::<(), &str>(())), Ok(()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_appends_share_commits_and_survive_reopen() {
        let dir = tempdir();
        let publisher = Arc::new(CollectingPublisher::default());
        let store = EmbeddedStore::open(dir.path(), EmbeddedStoreConfig::default(), test_keys(), publisher).unwrap();
        let patient = PatientId("p1".into());
        let t0 = OffsetDateTime::now_utc();
        let mut tickets = Vec::new();
        for i in 0..200 {
            let event = test_event(&patient, t0 + time::Duration::milliseconds(i));
            tickets.push(store.append_all(Some(&test_message(&event)), &[event], &[]).await.unwrap());
        }
        for t in tickets {
            t.wait().await.unwrap();
        }
        let read = store.events_since(&patient, t0).await.unwrap();
        assert_eq!(read.len(), 200);
        assert!(read.windows(2).all(|w| w[0].received_at <= w[1].received_at));
        drop(store);
        let reopened = open_default(dir.path());
        assert_eq!(reopened.events_since(&patient, t0).await.unwrap().len(), 200);
        assert!(reopened.events_since(&PatientId("p2".into()), t0).await.unwrap().is_empty());
        let first = test_message(&read[0]).envelope.key.clone();
        let seen = reopened.accepted_message(&first).await.unwrap().unwrap();
        assert_eq!(seen.patient_id, patient);
        assert!(reopened.accepted_message(&MessageKey::hl7("S", "never-sent")).await.unwrap().is_none());
        assert!(reopened.accepted_message(&MessageKey::hl7("OTHER", &first.id)).await.unwrap().is_none());
        let fhir = MessageKey { source: vigil_actors::Source::Fhir, ..first };
        assert!(reopened.accepted_message(&fhir).await.unwrap().is_none(), "feeds do not share message ids");
    }

    /// `vigil store compact`: a store whose rows are all still in its journal is flushed and
    /// merged into tables, takes less room, and reads the same afterwards; a second opener
    /// while Vigil runs is refused (the store's lock).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn compaction_moves_the_journal_into_tables_and_every_row_reads_the_same() {
        let dir = tempdir();
        let store = open_default(dir.path());
        let patient = PatientId("p1".into());
        let t0 = OffsetDateTime::now_utc();
        for i in 0..300 {
            let event = test_event(&patient, t0 + time::Duration::milliseconds(i));
            store.append_all(Some(&test_message(&event)), &[event], &[]).await.unwrap().wait().await.unwrap();
        }
        let stored = store.events_since(&patient, t0).await.unwrap();
        assert!(compact(dir.path()).is_err(), "refused while the store is open");
        drop(store);

        let done = compact(dir.path()).unwrap();
        let rows = |name: &str| done.keyspaces.iter().find(|k| k.0 == name).map(|k| (k.1, k.2)).unwrap();
        assert_eq!(rows(EVENTS).0, 300, "{done:?}");
        assert_eq!(rows(MESSAGES).0, 300, "{done:?}");
        let tables: u64 = done.keyspaces.iter().map(|k| k.2).sum();
        assert!(tables > 0 && tables < done.before, "{done:?}");
        let reopened = open_default(dir.path());
        assert_eq!(reopened.events_since(&patient, t0).await.unwrap(), stored);
        assert!(compact(&dir.path().join("nowhere")).is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_message_with_ten_orders_is_logged_once_beside_its_ten_events() {
        let dir = tempdir();
        let store = open_default(dir.path());
        let patient = PatientId("p-rde".into());
        let t0 = OffsetDateTime::now_utc();
        // One RDE^O11 with ten orders: one message, ten events.
        let raw = format!(
            "MSH|^~\\&|PHARM|HOSP|VIGIL|VIGIL|20260101||RDE^O11|RDE-10|P|2.5\r{}",
            "ORC|NW\rRXE|...\r".repeat(10)
        );
        let events: Vec<ClinicalEvent> = (0..10)
            .map(|i| ClinicalEvent {
                kind: vigil_actors::EventKind::MedicationOrder {
                    action: vigil_actors::OrderAction::New,
                    medication: vigil_actors::Medication {
                        order_id: format!("ORD-{i}"),
                        rxnorm: None,
                        name: format!("drug {i}"),
                    },
                },
                ..test_event(&patient, t0)
            })
            .collect();
        let envelope =
            Envelope { key: MessageKey::hl7("S", "RDE-10"), raw: vigil_actors::Phi(raw.clone()), received_at: t0 };
        let message =
            FromMessage { envelope: Arc::new(envelope), logs_message: true, parts: Vec::new(), in_transit: None };
        let records = store.records_of(Some(&message), &events).unwrap();
        assert_eq!(records.len(), 10);
        assert_eq!(
            records.iter().map(|r| r.messages.len()).sum::<usize>(),
            1,
            "the raw message is sealed and written once"
        );
        store.append_all(Some(&message), &events, &[]).await.unwrap().wait().await.unwrap();
        // A second message: logged too.
        let second = test_event(&patient, t0 + time::Duration::seconds(1));
        store.append_all(Some(&test_message(&second)), &[second], &[]).await.unwrap().wait().await.unwrap();
        assert_eq!(store.events_since(&patient, t0).await.unwrap().len(), 11, "every event is stored");
        let recorded = store.recorded_events(&patient, t0).await.unwrap();
        let of_rde = recorded.iter().filter(|r| r.message.as_ref().is_some_and(|m| m.id == "RDE-10")).count();
        assert_eq!(of_rde, 10, "each event row names its message, the raw text is not repeated in it");
        let logged: Vec<(Vec<u8>, Vec<u8>)> = store
            .inner
            .ks
            .messages
            .iter()
            .map(|guard| {
                let (key, value) = guard.into_inner().unwrap();
                (key.to_vec(), value.to_vec())
            })
            .collect();
        assert_eq!(logged.len(), 2, "one message-log entry per message, not per event");
        let rde = logged.iter().find(|(key, _)| key.ends_with(b"RDE-10")).expect("the RDE is logged");
        let row = open_message_row(&store.inner.ks.keys, &rde.0, &rde.1).unwrap();
        assert_eq!(decode_message_row(&row).unwrap().1, raw, "the raw message, once");
        assert!(store.accepted_message(&MessageKey::hl7("S", "RDE-10")).await.unwrap().is_some());
    }

    /// A message-log row keeps the raw message byte for byte (segment `\r`s, HL7 escapes,
    /// non-ASCII text) after the acceptance, and a row of the JSON form written before still
    /// reads; a damaged row is reported corrupt, never a panic.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn message_rows_keep_the_raw_text_and_rows_written_as_json_still_read() {
        let at = time::macros::datetime!(2026-12-03 10:00 -5);
        let accepted = AcceptedMessage { patient_id: PatientId("p-7".into()), received_at: at };
        let raw = "MSH|^~\\&|MON|ICU|||20261203100000||ORU^R01|C1|P|2.6\rPID|||M1^^^H^MR||Zoë^Test\rOBX|1|NM|x\\T\\y||\"7\"\r";
        let row = message_row(&accepted, raw).unwrap();
        assert_eq!(row[0], MESSAGE_ROW_RAW);
        assert!(row.ends_with(raw.as_bytes()), "the raw text is stored as it came, not escaped");
        let (decoded, text) = decode_message_row(&row).unwrap();
        assert_eq!((decoded, text.as_ref()), (accepted.clone(), raw));

        // The JSON form (every row before this format), through the store's read path.
        let dir = tempdir();
        let store = open_default(dir.path());
        let legacy = serde_json::to_vec(&serde_json::json!({
            "patient_id": "p-7", "received_at": "2026-12-03T10:00:00-05:00", "raw": raw,
        }))
        .unwrap();
        assert_eq!(decode_message_row(&legacy).unwrap().1, raw);
        let key = message_key(&MessageKey::hl7("OLD", "C0"));
        let sealed = seal(&store.inner.ks.keys, MESSAGES, &key, &legacy).unwrap();
        store.inner.ks.messages.insert(&key, sealed).unwrap();
        assert_eq!(store.accepted_message(&MessageKey::hl7("OLD", "C0")).await.unwrap(), Some(accepted));

        // Damaged rows: an error each.
        let mut long_header = row.clone();
        long_header[1..5].copy_from_slice(&u32::MAX.to_be_bytes());
        let mut not_utf8 = row.clone();
        not_utf8.push(0xFF);
        for bad in [&[][..], &[MESSAGE_ROW_RAW, 0, 0][..], &long_header, &not_utf8, b"\x07abc", b"{not json"] {
            assert!(matches!(decode_message_row(bad), Err(StoreError::Corrupt(_))), "{bad:?}");
        }
    }

    pub(crate) fn test_keys() -> Arc<KeyRing> {
        Arc::new(KeyRing::from_keys(&[(1, [9; 32])]).unwrap())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conformance() {
        let publisher = Arc::new(crate::store::conformance::RecordingPublisher::default());
        let dir = tempdir();
        let store =
            EmbeddedStore::open(dir.path(), EmbeddedStoreConfig::default(), test_keys(), publisher.clone()).unwrap();
        let store = Arc::new(store);
        crate::store::conformance::run(store.clone(), publisher, crate::store::conformance::Capabilities::FULL).await;
        crate::store::conformance::devices(store.clone()).await;
        crate::store::conformance::console(store).await;
    }

    /// A transaction's entries are logged under their own keys in the rows of the job that
    /// carries their events — one fjall batch, committed (and fsynced) whole or not at all —
    /// so after a crash a part is never recognised as a resend without its events stored.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_transactions_entry_keys_ride_in_the_write_of_their_events_and_survive_reopen() {
        let dir = tempdir();
        let open = || {
            let publisher = Arc::new(CollectingPublisher::default());
            EmbeddedStore::open(dir.path(), EmbeddedStoreConfig::default(), test_keys(), publisher).unwrap()
        };
        let store = open();
        let patient = PatientId("p-tx".into());
        let t0 = OffsetDateTime::now_utc();
        let fhir = |id: &str| MessageKey { source: vigil_actors::Source::Fhir, sender: "gw".into(), id: id.into() };
        let parts = vec![fhir("Observation?identifier=u|1"), fhir("Observation?identifier=u|2")];
        let envelope = Envelope {
            key: fhir("Bundle?identifier=u|tx"),
            raw: vigil_actors::Phi("{\"resourceType\":\"Bundle\"}".into()),
            received_at: t0,
        };
        let message =
            FromMessage { envelope: Arc::new(envelope), logs_message: false, parts: parts.clone(), in_transit: None };
        let events = [test_event(&patient, t0), test_event(&patient, t0 + time::Duration::milliseconds(1))];
        let records = store.records_of(Some(&message), &events).unwrap();
        let logged: Vec<usize> = records.iter().map(|r| r.messages.len()).collect();
        assert_eq!(logged, [2, 0], "both entry keys in the job's rows, once; not the message's own");
        let mut keys: Vec<Vec<u8>> = records[0].messages.iter().map(|(k, _)| k.clone()).collect();
        keys.sort();
        assert_eq!(keys, parts.iter().map(message_key).collect::<Vec<_>>());
        store.append_all(Some(&message), &events, &[]).await.unwrap().wait().await.unwrap();
        drop(store);
        let reopened = open();
        assert_eq!(reopened.events_since(&patient, t0).await.unwrap().len(), 2);
        for part in &parts {
            let seen = reopened.accepted_message(part).await.unwrap().expect("an entry key survives with its events");
            assert_eq!(seen.patient_id, patient);
        }
        assert!(reopened.accepted_message(&message.envelope.key).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_snapshot_is_sealed_at_rest_survives_a_restart_and_an_unreadable_one_is_removed() {
        let dir = tempdir();
        let publisher = Arc::new(vigil_actors::fakes::CollectingPublisher::default());
        let open = || EmbeddedStore::open(dir.path(), EmbeddedStoreConfig::default(), test_keys(), publisher.clone());
        let patient = PatientId("p-snap".into());
        let plaintext = b"{\"name\":\"Snapshot^Sam\"}".to_vec();
        {
            let store = open().unwrap();
            store.save_snapshot(&patient, &plaintext).await.unwrap();
            let raw = store.inner.ks.snapshots.get(patient.0.as_bytes()).unwrap().unwrap();
            assert!(!raw.windows(8).any(|w| w == b"Snapshot"), "no PHI in plaintext at rest");
        }
        let store = open().unwrap();
        assert_eq!(store.take_snapshot(&patient).await.unwrap(), Some(plaintext), "durable across a restart");
        store.inner.ks.snapshots.insert(patient.0.as_bytes(), b"not sealed".as_slice()).unwrap();
        assert!(matches!(store.take_snapshot(&patient).await, Err(StoreError::Corrupt(_))));
        assert_eq!(store.take_snapshot(&patient).await.unwrap(), None, "an unreadable one is removed, not kept");
    }

    /// A directory removed when the test ends.
    /// The store in `dir` with the default settings and the test keys.
    fn open_default(dir: &Path) -> EmbeddedStore {
        EmbeddedStore::open(dir, EmbeddedStoreConfig::default(), test_keys(), Arc::new(CollectingPublisher::default()))
            .unwrap()
    }

    pub(crate) fn tempdir() -> tempfile::TempDir {
        tempfile::Builder::new().prefix("vigil-test-").tempdir().unwrap()
    }

    fn test_event(patient: &PatientId, at: OffsetDateTime) -> ClinicalEvent {
        ClinicalEvent {
            patient_id: patient.clone(),
            patient: vigil_actors::PatientKey { authority: "A".into(), mrn: vigil_actors::Phi("1".into()) },
            demographics: Default::default(),
            location: None,
            received_at: at,
            kind: vigil_actors::EventKind::Observations { observations: vec![] },
        }
    }

    /// The message `event` came in: one per event, named by its time.
    fn test_message(event: &ClinicalEvent) -> FromMessage {
        let id = format!("c-{}", event.received_at.unix_timestamp_nanos());
        let envelope = Envelope {
            key: MessageKey::hl7("S", id),
            raw: vigil_actors::Phi("MSH|...".into()),
            received_at: event.received_at,
        };
        FromMessage { envelope: Arc::new(envelope), logs_message: true, parts: Vec::new(), in_transit: None }
    }
}
