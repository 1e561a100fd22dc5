//! The [`ConsoleStore`] port: where silences and nurse-to-bed assignments are kept, so every
//! node of a deployment sees the same ones. The embedded store (`store/embedded.rs`, keyspace
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

use super::{Assignment, Silence};

/// Keeps silences (by id) and assignments (by unit and nurse). Each write is durable (or
/// acknowledged at the configured consistency) before it returns.
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
}

/// The key of an assignment row: unit and nurse (NUL occurs in neither: `Console::assign`
/// refuses it).
pub fn assignment_key(unit: &str, nurse: &str) -> String {
    format!("{unit}\u{0}{nurse}")
}

/// Silences and assignments in memory: tests and tools, and a console with no store.
#[derive(Default)]
pub struct MemoryConsoleStore {
    silences: Mutex<BTreeMap<String, Silence>>,
    assignments: Mutex<BTreeMap<String, Assignment>>,
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
