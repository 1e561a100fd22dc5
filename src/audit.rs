//! The audit log: who viewed which patient's data, who changed which alert, and every refused
//! request. Records carry user ids and opaque patient ids, never names or MRNs. Kept in the
//! node-local embedded database (keyspace `audit_chain`), append-only and chained: record `n`
//! is stored under its sequence number and carries an HMAC-SHA256 over its content and record
//! `n-1`'s MAC, keyed by a key kept outside the data directory (`store.audit_key_file`). A
//! second keyspace (`audit_head`) holds the last sequence number and MAC, under a MAC of its
//! own, written in the same batch, so removing records from the end is detected too.
//! `vigil audit verify` walks the chain and says where it breaks; `vigil audit list` reads it.
//!
//! What this does not detect: the whole data directory rolled back to an older copy (its chain
//! and head are consistent). Operators who need that keep the head that `verify` prints
//! elsewhere (a SIEM, a ticket) and compare.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use fjall::{Database, Keyspace, KeyspaceCreateOptions};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use time::OffsetDateTime;

const CHAIN: &str = "audit_chain";
const HEAD: &str = "audit_head";
const HEAD_KEY: &[u8] = b"head";
const RECORD_TAG: &[u8] = b"vigil/audit/record/v1";
const HEAD_TAG: &[u8] = b"vigil/audit/head/v1";

/// One audited act.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// Token subject, or `-` when there was no valid token.
    pub user: String,
    /// Role in the token.
    pub role: String,
    /// What was done: `view_alerts`, `view_alert`, `view_patient`, `subscribe`, `ack`, `resolve`,
    /// `comment`, `escalate`, `rule_update`, ...
    pub action: String,
    /// The object: an alert id, an opaque patient id, a unit list.
    pub target: String,
    /// `ok`, `denied: <reason>`, `failed: <reason>`.
    pub outcome: String,
}

/// A record as stored: its place in the chain and its MAC.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChainedRecord {
    /// Position in the chain, from 1.
    pub seq: u64,
    /// The record.
    #[serde(flatten)]
    pub record: AuditRecord,
    /// The previous record's MAC (hex; zeros for the first).
    pub prev: String,
    /// HMAC-SHA256 over `seq`, `prev` and the record (hex).
    pub mac: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Head {
    seq: u64,
    mac: String,
    head_mac: String,
}

/// Errors opening or reading the audit log.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The database failed.
    #[error("audit database: {0}")]
    Engine(#[from] fjall::Error),
    /// The MAC key could not be loaded.
    #[error("audit key: {0}")]
    Key(#[from] crate::crypto::CryptoError),
}

/// The chain's MAC key.
#[derive(Clone)]
pub struct AuditKey(Hmac<Sha256>);

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditKey(..)")
    }
}

impl AuditKey {
    /// A key from 32 bytes.
    pub fn new(key: &[u8; 32]) -> Self {
        // HMAC accepts keys of any length, so this cannot fail for 32 bytes.
        AuditKey(<Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!()))
    }

    /// The key in `path` (`store.audit_key_file`), created (0600) when absent.
    pub fn load_or_create(path: &Path) -> Result<Self, AuditError> {
        Ok(Self::new(&crate::crypto::load_or_create_key(path)?))
    }

    fn record_mac(&self, seq: u64, prev: &[u8; 32], record: &AuditRecord) -> [u8; 32] {
        let mut mac = self.0.clone();
        mac.update(RECORD_TAG);
        mac.update(&seq.to_be_bytes());
        mac.update(prev);
        mac.update(&record.at.unix_timestamp_nanos().to_be_bytes());
        // Length-prefixed, so no two different records feed the MAC the same bytes.
        for part in [&record.user, &record.role, &record.action, &record.target, &record.outcome] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part.as_bytes());
        }
        mac.finalize().into_bytes().into()
    }

    fn head_mac(&self, seq: u64, last: &[u8; 32]) -> [u8; 32] {
        let mut mac = self.0.clone();
        mac.update(HEAD_TAG);
        mac.update(&seq.to_be_bytes());
        mac.update(last);
        mac.finalize().into_bytes().into()
    }
}

/// Where the chain stands: the next record's number, the last MAC and time.
#[derive(Debug)]
struct Tip {
    next_seq: u64,
    last_mac: [u8; 32],
    last_at: OffsetDateTime,
}

/// Appends audit records. Clones share one chain: appends from every task are serialised by a
/// short lock (a MAC and a batch into the journal, no I/O wait), so they chain in one order.
#[derive(Clone)]
pub struct AuditLog {
    db: Database,
    chain: Keyspace,
    head: Keyspace,
    key: AuditKey,
    tip: Arc<Mutex<Tip>>,
}

/// The database holding the audit log for a configuration (the embedded store's, or the
/// node-local one beside ScyllaDB).
pub fn database_dir(config: &crate::config::Config) -> PathBuf {
    match config.store.backend {
        crate::config::Backend::Embedded => config.data_dir.join("fjall"),
        crate::config::Backend::Scylla => config.data_dir.join("local"),
    }
}

fn decode_mac(hex_text: &str) -> Option<[u8; 32]> {
    hex::decode(hex_text).ok()?.try_into().ok()
}

fn seq_of(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.try_into().ok()?))
}

impl AuditLog {
    /// The audit keyspaces of `db`, chained with `key`.
    pub fn open(db: Database, key: AuditKey) -> Result<Self, AuditError> {
        let chain = db.keyspace(CHAIN, KeyspaceCreateOptions::default)?;
        let head = db.keyspace(HEAD, KeyspaceCreateOptions::default)?;
        // The chain continues from its last record, whatever the head says; a mismatch is
        // reported now and by `vigil audit verify`, which also finds where.
        let mut tip = Tip { next_seq: 1, last_mac: [0; 32], last_at: OffsetDateTime::UNIX_EPOCH };
        if let Some(guard) = chain.last_key_value() {
            let (k, v) = guard.into_inner()?;
            let last: Option<ChainedRecord> = serde_json::from_slice(&v).ok();
            match (seq_of(&k), last.as_ref().and_then(|r| decode_mac(&r.mac))) {
                (Some(seq), Some(mac)) => {
                    tip = Tip {
                        next_seq: seq + 1,
                        last_mac: mac,
                        last_at: last.map(|r| r.record.at).unwrap_or(tip.last_at),
                    };
                }
                _ => tracing::error!("the last audit record is unreadable; run `vigil audit verify`"),
            }
        }
        let log = AuditLog { db, chain, head, key, tip: Arc::new(Mutex::new(tip)) };
        if let Err(problem) = log.head_matches_tip() {
            tracing::error!(%problem, "audit log head does not match its last record; run `vigil audit verify`");
        }
        Ok(log)
    }

    fn head_matches_tip(&self) -> Result<(), String> {
        let tip = self.tip.lock().unwrap_or_else(|p| p.into_inner());
        let stored = self.head.get(HEAD_KEY).map_err(|e| e.to_string())?;
        let Some(bytes) = stored else {
            return if tip.next_seq == 1 { Ok(()) } else { Err("no head".into()) };
        };
        let head: Head = serde_json::from_slice(&bytes).map_err(|_| "unreadable head".to_string())?;
        let (Some(mac), Some(head_mac)) = (decode_mac(&head.mac), decode_mac(&head.head_mac)) else {
            return Err("unreadable head".into());
        };
        if self.key.head_mac(head.seq, &mac) != head_mac {
            return Err("head MAC does not verify".into());
        }
        if head.seq + 1 != tip.next_seq || mac != tip.last_mac {
            return Err(format!("head names record {}, the last record is {}", head.seq, tip.next_seq - 1));
        }
        Ok(())
    }

    /// Append a record. Audit writes go to the journal at once and reach disk with the next
    /// group commit (within milliseconds under load, or at the periodic/final persist).
    pub fn record(&self, user: &str, role: &str, action: &str, target: &str, outcome: &str) {
        let mut tip = self.tip.lock().unwrap_or_else(|p| p.into_inner());
        // Time never runs backwards along the chain, so a time range is a range of records.
        let at = OffsetDateTime::now_utc().max(tip.last_at);
        let record = AuditRecord {
            at,
            user: user.into(),
            role: role.into(),
            action: action.into(),
            target: target.into(),
            outcome: outcome.into(),
        };
        let seq = tip.next_seq;
        let mac = self.key.record_mac(seq, &tip.last_mac, &record);
        let stored = ChainedRecord { seq, record, prev: hex::encode(tip.last_mac), mac: hex::encode(mac) };
        let head = Head { seq, mac: hex::encode(mac), head_mac: hex::encode(self.key.head_mac(seq, &mac)) };
        let written = serde_json::to_vec(&stored)
            .and_then(|r| Ok((r, serde_json::to_vec(&head)?)))
            .map_err(|e| e.to_string())
            .and_then(|(record_bytes, head_bytes)| {
                let mut batch = self.db.batch();
                batch.insert(&self.chain, seq.to_be_bytes(), record_bytes);
                batch.insert(&self.head, HEAD_KEY, head_bytes);
                batch.commit().map_err(|e| e.to_string())
            });
        match written {
            Ok(()) => {
                *tip = Tip { next_seq: seq + 1, last_mac: mac, last_at: at };
            }
            Err(error) => {
                // Losing an audit record is an operator's problem: say so loudly.
                tracing::error!(%error, action, "audit record not written");
            }
        }
    }

    /// Records at or after `since`, oldest first, at most `limit`.
    pub fn since(&self, since: OffsetDateTime, limit: usize) -> Vec<AuditRecord> {
        self.range(since, None, limit).into_iter().map(|r| r.record).collect()
    }

    /// Chained records with `from <= at < until`, oldest first, at most `limit`.
    pub fn range(&self, from: OffsetDateTime, until: Option<OffsetDateTime>, limit: usize) -> Vec<ChainedRecord> {
        let start = self.first_at_or_after(from);
        self.chain
            .range(start.to_be_bytes()..)
            .filter_map(|g| g.into_inner().ok())
            .filter_map(|(_, v)| serde_json::from_slice::<ChainedRecord>(&v).ok())
            .skip_while(|r| r.record.at < from)
            .take_while(|r| until.is_none_or(|u| r.record.at < u))
            .take(limit)
            .collect()
    }

    /// The first sequence number whose record is at or after `at`: a binary search, as times
    /// do not decrease along the chain.
    fn first_at_or_after(&self, at: OffsetDateTime) -> u64 {
        let (mut low, mut high) = (1u64, self.tip.lock().unwrap_or_else(|p| p.into_inner()).next_seq);
        while low < high {
            let mid = low + (high - low) / 2;
            let mid_at = self
                .chain
                .get(mid.to_be_bytes())
                .ok()
                .flatten()
                .and_then(|v| serde_json::from_slice::<ChainedRecord>(&v).ok())
                .map(|r| r.record.at);
            match mid_at {
                Some(t) if t < at => low = mid + 1,
                Some(_) => high = mid,
                // A hole (deleted record): scan from the low end rather than guess.
                None => return low,
            }
        }
        low
    }

    /// Make every record so far durable.
    pub fn persist(&self) {
        if let Err(error) = self.db.persist(fjall::PersistMode::SyncAll) {
            tracing::error!(%error, "audit persist failed");
        }
    }

    /// Walk the whole chain and the head; every problem found, in chain order.
    pub fn verify(&self) -> Verification {
        let mut report = Verification::default();
        let mut expected_seq = 1u64;
        let mut prev_mac = [0u8; 32];
        let mut prev_at: Option<OffsetDateTime> = None;
        for guard in self.chain.iter() {
            let (k, v) = match guard.into_inner() {
                Ok(kv) => kv,
                Err(e) => {
                    report.problems.push(Problem { seq: None, at: None, what: format!("unreadable: {e}") });
                    break;
                }
            };
            report.records += 1;
            let Some(key_seq) = seq_of(&k) else {
                report.problems.push(Problem {
                    seq: None,
                    at: None,
                    what: format!("inserted: key {} is not a record number", hex::encode(&k)),
                });
                continue;
            };
            let Ok(stored) = serde_json::from_slice::<ChainedRecord>(&v) else {
                report.problems.push(Problem {
                    seq: Some(key_seq),
                    at: None,
                    what: "edited: record unreadable".into(),
                });
                expected_seq = key_seq + 1;
                continue;
            };
            let at = Some(stored.record.at);
            let mut problem = |what: String| report.problems.push(Problem { seq: Some(key_seq), at, what });
            if key_seq > expected_seq {
                problem(format!("deleted: records {expected_seq}..{} are missing before this one", key_seq - 1));
            }
            if stored.seq != key_seq {
                problem(format!("moved: the record stored as {key_seq} says it is {}", stored.seq));
            }
            let mac = decode_mac(&stored.mac);
            let recomputed =
                self.key.record_mac(stored.seq, &decode_mac(&stored.prev).unwrap_or([0xff; 32]), &stored.record);
            if mac != Some(recomputed) {
                problem("edited or forged: the MAC does not match the record".into());
            }
            if decode_mac(&stored.prev) != Some(prev_mac) {
                problem(format!("chain broken: does not follow record {}", key_seq.saturating_sub(1)));
            }
            if prev_at.is_some_and(|p| stored.record.at < p) {
                problem("out of order: earlier than the record before it".into());
            }
            prev_at = at;
            prev_mac = mac.unwrap_or([0; 32]);
            expected_seq = key_seq + 1;
            report.last = Some((key_seq, hex::encode(prev_mac)));
        }
        let last_seq = expected_seq - 1;
        match self.head.get(HEAD_KEY) {
            Ok(None) if last_seq == 0 => {}
            Ok(None) => report.problems.push(Problem { seq: None, at: None, what: "head missing".into() }),
            Ok(Some(bytes)) => {
                let head = serde_json::from_slice::<Head>(&bytes).ok();
                let parsed = head.as_ref().and_then(|h| Some((h.seq, decode_mac(&h.mac)?, decode_mac(&h.head_mac)?)));
                match parsed {
                    None => report.problems.push(Problem { seq: None, at: None, what: "head unreadable".into() }),
                    Some((seq, mac, head_mac)) => {
                        if self.key.head_mac(seq, &mac) != head_mac {
                            report.problems.push(Problem {
                                seq: None,
                                at: None,
                                what: "head edited: its MAC does not match".into(),
                            });
                        } else if seq != last_seq || mac != prev_mac {
                            report.problems.push(Problem {
                                seq: Some(seq),
                                at: None,
                                what: format!("deleted: the head names record {seq}, the chain ends at {last_seq}"),
                            });
                        }
                    }
                }
            }
            Err(e) => report.problems.push(Problem { seq: None, at: None, what: format!("head unreadable: {e}") }),
        }
        report
    }
}

/// What [`AuditLog::verify`] found.
#[derive(Debug, Default)]
pub struct Verification {
    /// Records read.
    pub records: u64,
    /// The last record's number and MAC, to keep elsewhere.
    pub last: Option<(u64, String)>,
    /// Problems, in chain order.
    pub problems: Vec<Problem>,
}

/// One place where the chain does not verify.
#[derive(Debug)]
pub struct Problem {
    /// The record (its key's number), when the problem is at one.
    pub seq: Option<u64>,
    /// Its time, when readable.
    pub at: Option<OffsetDateTime>,
    /// What failed.
    pub what: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.seq {
            Some(seq) => write!(f, "record {seq}")?,
            None => write!(f, "log")?,
        }
        if let Some(at) = self.at.and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok()) {
            write!(f, " ({at})")?;
        }
        write!(f, ": {}", self.what)
    }
}

/// `vigil audit ...`
pub mod cli {
    use super::*;

    /// `vigil audit verify|list`
    #[derive(Debug, clap::Subcommand)]
    pub enum AuditCommand {
        /// Check the chain: exit 0 when every record verifies, 1 naming each break otherwise.
        Verify {
            #[command(flatten)]
            serve: crate::config::ServeArgs,
        },
        /// Print records as JSON lines, oldest first.
        List {
            /// Only records at or after this time (RFC 3339).
            #[arg(long)]
            since: Option<String>,
            /// Only records before this time (RFC 3339).
            #[arg(long)]
            until: Option<String>,
            /// At most this many records.
            #[arg(long, default_value_t = 100_000)]
            limit: usize,
            #[command(flatten)]
            serve: crate::config::ServeArgs,
        },
    }

    fn open(serve: &crate::config::ServeArgs) -> anyhow::Result<AuditLog> {
        use anyhow::Context;
        let config = crate::config::Config::load(serve)?;
        let dir = database_dir(&config);
        anyhow::ensure!(dir.exists(), "no database at {} (is --data-dir right?)", dir.display());
        let db = Database::builder(&dir)
            .open()
            .with_context(|| format!("opening {} (is the server still running?)", dir.display()))?;
        anyhow::ensure!(
            config.store.audit_key_file.exists(),
            "audit key {} not found (store.audit_key_file)",
            config.store.audit_key_file.display()
        );
        let key = AuditKey::load_or_create(&config.store.audit_key_file)?;
        Ok(AuditLog::open(db, key)?)
    }

    fn parse_time(text: &str, flag: &str) -> anyhow::Result<OffsetDateTime> {
        use anyhow::Context;
        OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
            .with_context(|| format!("{flag} must be an RFC 3339 time such as 2025-01-31T00:00:00Z, not {text:?}"))
    }

    /// Run a command; the process exit code.
    pub fn run(command: AuditCommand) -> anyhow::Result<i32> {
        match command {
            AuditCommand::Verify { serve } => {
                let log = open(&serve)?;
                let report = log.verify();
                for problem in &report.problems {
                    println!("{problem}");
                }
                let (last_seq, last_mac) = report.last.clone().unwrap_or((0, "-".into()));
                if report.problems.is_empty() {
                    println!("ok: {} records; head {last_seq} {last_mac}", report.records);
                    Ok(0)
                } else {
                    println!("FAILED: {} problems in {} records", report.problems.len(), report.records);
                    Ok(1)
                }
            }
            AuditCommand::List { since, until, limit, serve } => {
                let from = since.as_deref().map(|t| parse_time(t, "--since")).transpose()?;
                let until = until.as_deref().map(|t| parse_time(t, "--until")).transpose()?;
                let log = open(&serve)?;
                use std::io::Write;
                let mut out = std::io::BufWriter::new(std::io::stdout().lock());
                for record in log.range(from.unwrap_or(OffsetDateTime::UNIX_EPOCH), until, limit) {
                    serde_json::to_writer(&mut out, &record)?;
                    out.write_all(b"\n")?;
                }
                out.flush()?;
                Ok(0)
            }
        }
    }
}

/// Device associations are audited like console actions: `device.associate` (to a patient)
/// or `device.dissociate`, the device as target, the patients by opaque id and the cause.
impl vigil_actors::device::AssociationAudit for AuditLog {
    fn association_changed(&self, user: &str, role: &str, change: &vigil_actors::device::AssociationChange) {
        let describe = |side: &Option<(vigil_actors::PatientId, vigil_actors::device::AssociationSource)>| match side {
            Some((patient, source)) => format!("{patient} by {}", source.as_str()),
            None => "none".to_string(),
        };
        let action = if change.after.is_some() { "device.associate" } else { "device.dissociate" };
        let outcome = format!("ok: {} -> {} ({})", describe(&change.before), describe(&change.after), change.cause);
        self.record(user, role, action, &change.device.0, &outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_in(dir: &Path) -> AuditLog {
        let db = Database::builder(dir).open().unwrap();
        AuditLog::open(db, AuditKey::new(&[7; 32])).unwrap()
    }

    #[test]
    fn records_from_many_threads_chain_in_one_order_and_verify() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let log = log_in(&dir);
        std::thread::scope(|s| {
            for t in 0..4 {
                let log = log.clone();
                s.spawn(move || {
                    for n in 0..50 {
                        log.record(&format!("user-{t}"), "rrt", "view_alert", &format!("A-{n}"), "ok");
                    }
                });
            }
        });
        let report = log.verify();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert_eq!(report.records, 200);
        let all = log.range(OffsetDateTime::UNIX_EPOCH, None, 1000);
        assert_eq!(all.iter().map(|r| r.seq).collect::<Vec<_>>(), (1..=200).collect::<Vec<_>>());
        assert!(all.windows(2).all(|w| w[0].record.at <= w[1].record.at));
        // A time range is found by search, and `since` keeps its old shape.
        let middle = all[100].record.at;
        let later = log.range(middle, None, 1000);
        assert!(later.len() >= 100 && later.iter().all(|r| r.record.at >= middle));
        assert_eq!(log.since(middle, 5).len(), 5);
        drop(log);
        // Reopened, the chain continues where it stopped.
        let log = log_in(&dir);
        log.record("u", "rrt", "ack", "A-1", "ok");
        let report = log.verify();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert_eq!(report.last.map(|(seq, _)| seq), Some(201));
    }

    #[test]
    fn a_different_key_verifies_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let log = log_in(&dir);
        log.record("u", "rrt", "ack", "A-1", "ok");
        drop(log);
        let db = Database::builder(&dir).open().unwrap();
        let other = AuditLog::open(db, AuditKey::new(&[8; 32])).unwrap();
        let report = other.verify();
        assert!(report.problems.iter().any(|p| p.what.starts_with("edited or forged")), "{:?}", report.problems);
        assert!(report.problems.iter().any(|p| p.what.starts_with("head edited")), "{:?}", report.problems);
    }
}
