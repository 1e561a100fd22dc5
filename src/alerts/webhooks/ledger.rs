//! Durable webhook bookkeeping in the embedded database: per endpoint, the cursor (the last
//! alert-log sequence number delivered or dead-lettered; keyspace `webhook_cursors`), and the
//! dead letters (changes that exhausted their attempts; keyspace `webhook_dead_letters`,
//! keyed by endpoint then sequence number). A dead letter and the cursor move past it are one
//! batch, made durable at once: a change is always either delivered, dead-lettered, or still
//! ahead of the cursor.

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::WebhookError;

/// A change that could not be delivered. Carries ids only; the alert itself stays in the
/// alert log under `seq`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Endpoint name.
    pub endpoint: String,
    /// Alert-log sequence number of the change.
    pub seq: u64,
    /// The alert's opaque id.
    pub alert_id: String,
    /// Attempts made.
    pub attempts: u32,
    /// The last failure: `http <status>`, `timeout`, `connect`, `transport`, `abandoned`.
    pub last_error: String,
    /// When it was given up.
    #[serde(with = "time::serde::rfc3339")]
    pub failed_at: OffsetDateTime,
}

/// Cursors and dead letters. Cloning shares them.
#[derive(Clone)]
pub struct Ledger {
    db: Database,
    cursors: Keyspace,
    dead_letters: Keyspace,
}

fn dead_letter_key(endpoint: &str, seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(endpoint.len() + 9);
    key.extend_from_slice(endpoint.as_bytes());
    key.push(0);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

impl Ledger {
    /// The webhook keyspaces of `db`.
    pub fn open(db: Database) -> Result<Self, WebhookError> {
        let cursors = db.keyspace("webhook_cursors", KeyspaceCreateOptions::default)?;
        let dead_letters = db.keyspace("webhook_dead_letters", KeyspaceCreateOptions::default)?;
        Ok(Ledger { db, cursors, dead_letters })
    }

    /// The endpoint's cursor, if it has one.
    pub fn cursor(&self, endpoint: &str) -> Result<Option<u64>, WebhookError> {
        let Some(bytes) = self.cursors.get(endpoint.as_bytes())? else { return Ok(None) };
        let raw: [u8; 8] = bytes.as_ref().try_into().map_err(|_| WebhookError::Corrupt("webhook cursor"))?;
        Ok(Some(u64::from_be_bytes(raw)))
    }

    /// Move the endpoint's cursor to `seq`. Written to the journal now, durable with the next
    /// store commit: a crash before that only repeats deliveries (at-least-once).
    pub fn advance(&self, endpoint: &str, seq: u64) -> Result<(), WebhookError> {
        self.cursors.insert(endpoint.as_bytes(), seq.to_be_bytes())?;
        Ok(())
    }

    /// Record a dead letter and move the cursor past it, durably (one fsync; dead letters are
    /// rare). Blocking: call from `spawn_blocking`.
    pub fn dead_letter(&self, letter: &DeadLetter) -> Result<(), WebhookError> {
        let value = serde_json::to_vec(letter).map_err(|_| WebhookError::Corrupt("dead letter encode"))?;
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncAll));
        batch.insert(&self.dead_letters, dead_letter_key(&letter.endpoint, letter.seq), value);
        batch.insert(&self.cursors, letter.endpoint.as_bytes(), letter.seq.to_be_bytes());
        batch.commit()?;
        Ok(())
    }

    /// Dead letters, by endpoint then sequence number, of one endpoint or all, at most `limit`.
    pub fn dead_letters(&self, endpoint: Option<&str>, limit: usize) -> Result<Vec<DeadLetter>, WebhookError> {
        let mut out = Vec::new();
        let entries = match endpoint {
            Some(name) => {
                let mut prefix = name.as_bytes().to_vec();
                prefix.push(0);
                self.dead_letters.prefix(prefix)
            }
            None => self.dead_letters.iter(),
        };
        for guard in entries.take(limit) {
            let (_, value) = guard.into_inner()?;
            out.push(serde_json::from_slice(&value).map_err(|_| WebhookError::Corrupt("dead letter"))?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_and_dead_letters_survive_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let letter = |endpoint: &str, seq| DeadLetter {
            endpoint: endpoint.into(),
            seq,
            alert_id: format!("a{seq}"),
            attempts: 6,
            last_error: "http 500".into(),
            failed_at: OffsetDateTime::UNIX_EPOCH,
        };
        {
            let ledger = Ledger::open(Database::builder(&dir).open().unwrap()).unwrap();
            assert_eq!(ledger.cursor("a").unwrap(), None);
            ledger.advance("a", 3).unwrap();
            ledger.dead_letter(&letter("a", 4)).unwrap();
            ledger.dead_letter(&letter("ab", 2)).unwrap();
            ledger.dead_letter(&letter("a", 9)).unwrap();
        }
        let ledger = Ledger::open(Database::builder(&dir).open().unwrap()).unwrap();
        assert_eq!(ledger.cursor("a").unwrap(), Some(9), "a dead letter moves the cursor");
        assert_eq!(ledger.cursor("ab").unwrap(), Some(2));
        let a: Vec<u64> = ledger.dead_letters(Some("a"), 10).unwrap().iter().map(|l| l.seq).collect();
        assert_eq!(a, vec![4, 9], "a prefix of another endpoint's name does not leak in");
        assert_eq!(ledger.dead_letters(None, 10).unwrap().len(), 3);
        assert_eq!(ledger.dead_letters(None, 2).unwrap().len(), 2);
        assert_eq!(ledger.dead_letters(Some("a"), 10).unwrap()[0], letter("a", 4));
    }
}
