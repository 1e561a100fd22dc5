//! The [`ConsoleStore`] port: where silences, nurse-to-bed assignments, the census (who is in
//! which bed) and alerts' delivery and read receipts are kept, so every node of a deployment
//! sees the same ones and a restart loses none. The embedded store (`store/embedded.rs`, keyspace
//! `console`) and the ScyllaDB adapter (`store/scylla/console.rs`, table `console_rows`)
//! implement it, sealing each row with the key ring; [`MemoryConsoleStore`] is the fake.
//! `store::conformance::console` is what each must pass.
//!
//! The store holds rows only: when a silence ends is decided by its `until` on the `Clock`
//! port (`silences.rs`), never by a row's TTL.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;
use vigil_actors::StoreError;

use vigil_actors::CensusBed;

use super::assignments::StoredReceipts;
use super::{Assignment, Silence};

/// Keeps silences (by id), assignments (by unit and nurse), census beds (by patient) and
/// receipts (by alert). Each write is durable (or acknowledged at the configured consistency)
/// before it returns, receipts as noted.
#[async_trait]
pub trait ConsoleStore: Send + Sync {
    /// Write `silence`, replacing the one with its id.
    async fn put_silence(&self, silence: &Silence) -> Result<(), StoreError>;
    /// Forget the silence `id` (absent is fine).
    async fn remove_silence(&self, id: &str) -> Result<(), StoreError>;
    /// Every silence kept, open and ended, in no promised order.
    async fn silences(&self) -> Result<Vec<Silence>, StoreError>;
    /// Write `assignment`, replacing the one of its unit and nurse.
    async fn put_assignment(&self, assignment: &Assignment) -> Result<(), StoreError>;
    /// Forget the assignment of `nurse` on `unit` (absent is fine).
    async fn remove_assignment(&self, unit: &str, nurse: &str) -> Result<(), StoreError>;
    /// Every assignment kept, lapsed ones included, in no promised order.
    async fn assignments(&self) -> Result<Vec<Assignment>, StoreError>;
    /// Write a patient's census bed (kept without its score), replacing the patient's.
    async fn put_census_bed(&self, bed: &CensusBed) -> Result<(), StoreError>;
    /// Forget `patient`'s census bed (absent is fine).
    async fn remove_census_bed(&self, patient: &str) -> Result<(), StoreError>;
    /// Every census bed kept, in no promised order.
    async fn census_beds(&self) -> Result<Vec<CensusBed>, StoreError>;
    /// Write an alert's receipts, replacing the ones kept for it: at least as durable as the
    /// process (a restart keeps them; the embedded store does not sync each to disk).
    async fn put_receipts(&self, receipts: &StoredReceipts) -> Result<(), StoreError>;
    /// Forget the receipts of `alert_id` (absent is fine).
    async fn remove_receipts(&self, alert_id: &str) -> Result<(), StoreError>;
    /// Every alert's receipts kept, in no promised order.
    async fn receipts(&self) -> Result<Vec<StoredReceipts>, StoreError>;
}

/// The key of an assignment row: unit and nurse (NUL occurs in neither: `Console::assign`
/// refuses it).
pub fn assignment_key(unit: &str, nurse: &str) -> String {
    format!("{unit}\u{0}{nurse}")
}

/// Silences, assignments, census and receipts in memory: tests and tools, and a console with
/// no store.
#[derive(Default)]
pub struct MemoryConsoleStore {
    silences: Mutex<BTreeMap<String, Silence>>,
    assignments: Mutex<BTreeMap<String, Assignment>>,
    census: Mutex<BTreeMap<String, CensusBed>>,
    receipts: Mutex<BTreeMap<String, StoredReceipts>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[async_trait]
impl ConsoleStore for MemoryConsoleStore {
    async fn put_silence(&self, silence: &Silence) -> Result<(), StoreError> {
        lock(&self.silences).insert(silence.id.clone(), silence.clone());
        Ok(())
    }

    async fn remove_silence(&self, id: &str) -> Result<(), StoreError> {
        lock(&self.silences).remove(id);
        Ok(())
    }

    async fn silences(&self) -> Result<Vec<Silence>, StoreError> {
        Ok(lock(&self.silences).values().cloned().collect())
    }

    async fn put_assignment(&self, assignment: &Assignment) -> Result<(), StoreError> {
        let key = assignment_key(&assignment.unit, &assignment.nurse);
        lock(&self.assignments).insert(key, assignment.clone());
        Ok(())
    }

    async fn remove_assignment(&self, unit: &str, nurse: &str) -> Result<(), StoreError> {
        lock(&self.assignments).remove(&assignment_key(unit, nurse));
        Ok(())
    }

    async fn assignments(&self) -> Result<Vec<Assignment>, StoreError> {
        Ok(lock(&self.assignments).values().cloned().collect())
    }

    async fn put_census_bed(&self, bed: &CensusBed) -> Result<(), StoreError> {
        lock(&self.census).insert(bed.patient.0.clone(), bed.clone());
        Ok(())
    }

    async fn remove_census_bed(&self, patient: &str) -> Result<(), StoreError> {
        lock(&self.census).remove(patient);
        Ok(())
    }

    async fn census_beds(&self) -> Result<Vec<CensusBed>, StoreError> {
        Ok(lock(&self.census).values().cloned().collect())
    }

    async fn put_receipts(&self, receipts: &StoredReceipts) -> Result<(), StoreError> {
        lock(&self.receipts).insert(receipts.alert_id.clone(), receipts.clone());
        Ok(())
    }

    async fn remove_receipts(&self, alert_id: &str) -> Result<(), StoreError> {
        lock(&self.receipts).remove(alert_id);
        Ok(())
    }

    async fn receipts(&self) -> Result<Vec<StoredReceipts>, StoreError> {
        Ok(lock(&self.receipts).values().cloned().collect())
    }
}

/// Keyspaces of the node-local database that held silences and assignments (plain JSON)
/// before they moved behind [`ConsoleStore`].
const LEGACY_SILENCES: &str = "console_silences";
const LEGACY_ASSIGNMENTS: &str = "console_assignments";

/// Move silences and assignments an earlier release kept in the node-local database `db` into
/// `to`, once: each row is written to `to`, then the old keyspace is deleted. A row that does
/// not parse is skipped (logged without its content). Returns how many rows moved.
pub async fn move_local_rows(db: &fjall::Database, to: &dyn ConsoleStore) -> Result<usize, StoreError> {
    let mut moved = 0;
    for name in [LEGACY_SILENCES, LEGACY_ASSIGNMENTS] {
        if !db.keyspace_exists(name) {
            continue;
        }
        let keyspace = db
            .keyspace(name, fjall::KeyspaceCreateOptions::default)
            .map_err(|e| StoreError::failed("open legacy console keyspace", e))?;
        let mut rows = Vec::new();
        for entry in keyspace.iter() {
            let (_, value) = entry.into_inner().map_err(|e| StoreError::failed("read legacy console row", e))?;
            rows.push(value.to_vec());
        }
        for value in rows {
            let written = if name == LEGACY_SILENCES {
                match serde_json::from_slice::<Silence>(&value) {
                    Ok(silence) => to.put_silence(&silence).await.map(|()| true),
                    Err(e) => {
                        tracing::error!(error = %e, "an unreadable silence was skipped");
                        Ok(false)
                    }
                }
            } else {
                match serde_json::from_slice::<Assignment>(&value) {
                    Ok(assignment) => to.put_assignment(&assignment).await.map(|()| true),
                    Err(e) => {
                        tracing::error!(error = %e, "an unreadable assignment was skipped");
                        Ok(false)
                    }
                }
            };
            moved += usize::from(written?);
        }
        db.delete_keyspace(keyspace).map_err(|e| StoreError::failed("remove legacy console keyspace", e))?;
        tracing::info!(keyspace = name, "console rows moved from the node-local database");
    }
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: time::OffsetDateTime = time::macros::datetime!(2026-01-01 03:00 UTC);

    #[tokio::test]
    async fn rows_of_the_node_local_database_are_moved_once_and_the_old_keyspaces_removed() {
        let dir = tempfile::tempdir().unwrap();
        let db = fjall::Database::builder(dir.path()).open().unwrap();
        let silence = serde_json::json!({
            "id": "sil-1", "patient": "p-1", "unit": "ICU", "severity": "high", "by": "nurse-4",
            "at": "2026-01-01T03:00:00Z", "until": "2026-01-01T03:15:00Z", "reason": "procedure"
        });
        let assignment = Assignment {
            nurse: "nurse-4".into(),
            unit: "ICU".into(),
            beds: vec!["07-A".into()],
            from: T0,
            until: T0 + time::Duration::hours(12),
            by: "charge-1".into(),
        };
        let old = db.keyspace(LEGACY_SILENCES, fjall::KeyspaceCreateOptions::default).unwrap();
        old.insert("sil-1", serde_json::to_vec(&silence).unwrap()).unwrap();
        old.insert("sil-bad", b"not json".as_slice()).unwrap();
        let old = db.keyspace(LEGACY_ASSIGNMENTS, fjall::KeyspaceCreateOptions::default).unwrap();
        old.insert("ICU\u{0}nurse-4", serde_json::to_vec(&assignment).unwrap()).unwrap();
        drop(old);

        let store = MemoryConsoleStore::default();
        assert_eq!(move_local_rows(&db, &store).await.unwrap(), 2, "an unreadable row is skipped");
        let moved = store.silences().await.unwrap();
        assert_eq!(moved.len(), 1);
        assert_eq!((moved[0].id.as_str(), moved[0].until), ("sil-1", T0 + time::Duration::minutes(15)));
        assert!(moved[0].ended.is_none());
        assert_eq!(store.assignments().await.unwrap(), vec![assignment]);
        assert!(!db.keyspace_exists(LEGACY_SILENCES) && !db.keyspace_exists(LEGACY_ASSIGNMENTS));
        assert_eq!(move_local_rows(&db, &store).await.unwrap(), 0, "read once");
        assert!(!db.keyspace_exists(LEGACY_SILENCES), "and not created again");
    }
}
