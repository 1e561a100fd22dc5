//! The audit log: who viewed which patient's data, who changed which alert, and every refused
//! request. Records carry user ids and opaque patient ids, never names or MRNs. Kept in the
//! embedded database (keyspace `audit`), keyed by time so a day is one range scan.

use std::sync::atomic::{AtomicU32, Ordering};

use fjall::{Database, Keyspace, KeyspaceCreateOptions};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

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

/// Appends audit records.
#[derive(Clone)]
pub struct AuditLog {
    db: Database,
    keyspace: Keyspace,
    counter: std::sync::Arc<AtomicU32>,
}

impl AuditLog {
    /// The audit keyspace of `db`.
    pub fn open(db: Database) -> Result<Self, fjall::Error> {
        let keyspace = db.keyspace("audit", KeyspaceCreateOptions::default)?;
        Ok(AuditLog { db, keyspace, counter: std::sync::Arc::new(AtomicU32::new(0)) })
    }

    /// Append a record. Audit writes go to the journal at once and reach disk with the next
    /// group commit (within milliseconds under load, or at the periodic/final persist).
    pub fn record(&self, user: &str, role: &str, action: &str, target: &str, outcome: &str) {
        let record = AuditRecord {
            at: OffsetDateTime::now_utc(),
            user: user.into(),
            role: role.into(),
            action: action.into(),
            target: target.into(),
            outcome: outcome.into(),
        };
        let mut key = record.at.unix_timestamp_nanos().to_be_bytes().to_vec();
        key.extend_from_slice(&self.counter.fetch_add(1, Ordering::Relaxed).to_be_bytes());
        let written = serde_json::to_vec(&record)
            .map_err(|e| e.to_string())
            .and_then(|v| self.keyspace.insert(key, v).map_err(|e| e.to_string()));
        if let Err(error) = written {
            // Losing an audit record is an operator's problem: say so loudly.
            tracing::error!(%error, action, "audit record not written");
        }
    }

    /// Records at or after `since`, oldest first, at most `limit`.
    pub fn since(&self, since: OffsetDateTime, limit: usize) -> Vec<AuditRecord> {
        self.keyspace
            .range(since.unix_timestamp_nanos().to_be_bytes()..)
            .take(limit)
            .filter_map(|g| g.into_inner().ok())
            .filter_map(|(_, v)| serde_json::from_slice(&v).ok())
            .collect()
    }

    /// Make every record so far durable.
    pub fn persist(&self) {
        if let Err(error) = self.db.persist(fjall::PersistMode::SyncAll) {
            tracing::error!(%error, "audit persist failed");
        }
    }
}
