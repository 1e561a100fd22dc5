//! Scoped rows: the small tables keyed `(scope, key)` whose one column is a sealed JSON body
//! (`device_links`, `console_rows`). Written one row at a time, read a scope whole; the seal's
//! associated data names the table and `scope/key`, so a row copied elsewhere does not open.

use futures_util::StreamExt;
use scylla::statement::prepared::PreparedStatement;
use vigil_actors::StoreError;

use super::ScyllaStore;
use crate::crypto::Aad;

impl ScyllaStore {
    /// `value` as JSON, sealed for `table` under `key`.
    pub(super) fn seal_json<T: serde::Serialize>(
        &self,
        table: &str,
        key: &str,
        value: &T,
    ) -> Result<Vec<u8>, StoreError> {
        let plain = serde_json::to_vec(value).map_err(|e| StoreError::Engine(format!("encode {table}: {e}")))?;
        self.shared
            .keys
            .seal(Aad { table, key: key.as_bytes(), column: "body" }, &plain)
            .map_err(|e| StoreError::Engine(format!("seal {table}: {e}")))
    }

    /// A body sealed by [`ScyllaStore::seal_json`], opened and decoded.
    pub(super) fn open_json<T: serde::de::DeserializeOwned>(
        &self,
        table: &str,
        key: &str,
        sealed: &[u8],
    ) -> Result<T, StoreError> {
        let plain = self
            .shared
            .keys
            .open(Aad { table, key: key.as_bytes(), column: "body" }, sealed)
            .map_err(|e| StoreError::Corrupt(format!("{table}: {e}")))?;
        serde_json::from_slice(&plain).map_err(|e| StoreError::Corrupt(format!("{table}: {e}")))
    }

    /// Writes one row with `insert` (`INSERT INTO table (scope, key, body) VALUES (?, ?, ?)`).
    pub(super) async fn put_scoped_row<T: serde::Serialize>(
        &self,
        table: &str,
        insert: &PreparedStatement,
        scope: &str,
        key: &str,
        value: &T,
    ) -> Result<(), StoreError> {
        let body = self.seal_json(table, &format!("{scope}/{key}"), value)?;
        self.shared
            .session
            .execute_unpaged(insert, (scope, key, body))
            .await
            .map_err(|e| StoreError::Engine(format!("write {table}: {e}")))?;
        Ok(())
    }

    /// Every row of `scope`, read with `select` (`SELECT key, body FROM table WHERE scope = ?`).
    pub(super) async fn scoped_rows<T: serde::de::DeserializeOwned>(
        &self,
        table: &str,
        select: &PreparedStatement,
        scope: &str,
    ) -> Result<Vec<T>, StoreError> {
        let fail = |e: String| StoreError::Engine(format!("read {table}: {e}"));
        let mut rows = self
            .shared
            .session
            .execute_iter(select.clone(), (scope,))
            .await
            .map_err(|e| fail(e.to_string()))?
            .rows_stream::<(String, Vec<u8>)>()
            .map_err(|e| fail(e.to_string()))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().await {
            let (key, body) = row.map_err(|e| fail(e.to_string()))?;
            out.push(self.open_json(table, &format!("{scope}/{key}"), &body)?);
        }
        Ok(out)
    }
}
