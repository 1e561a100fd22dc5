//! The ScyllaDB side of the [`ConsoleStore`] port: silences, nurse-to-bed assignments, census
//! beds and receipts in `console_rows` (migration `schemas/cql/0003_console.cql`), one
//! partition per kind (a census partition holds one row per occupied bed, read at start only),
//! read whole, so every node sees what any node wrote. Values are sealed like every other row.
//! Nothing here relies on TTL or on the cluster's order: a silence ends by its `until` on the
//! `Clock` port (`console/silences.rs`), and readers sort what they need.

use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use vigil_actors::StoreError;

use super::{ScyllaStore, ScyllaStoreConfig};
use crate::console::assignments::StoredReceipts;
use crate::console::store::assignment_key;
use crate::console::{Assignment, ConsoleStore, Silence};

const CONSOLE_ROWS: &str = "console_rows";
const SILENCE: &str = "silence";
const ASSIGNMENT: &str = "assignment";
const CENSUS: &str = "census";
const RECEIPTS: &str = "receipts";

/// The console statements, prepared once at connect.
pub(super) struct ConsoleStatements {
    insert: PreparedStatement,
    select: PreparedStatement,
    delete: PreparedStatement,
}

fn failed(op: &'static str) -> impl Fn(String) -> StoreError {
    move |e| StoreError::Engine(format!("{op}: {e}"))
}

impl ConsoleStatements {
    pub(super) async fn prepare(session: &Session, config: &ScyllaStoreConfig) -> Result<Self, StoreError> {
        let ks = &config.keyspace;
        let prepare = |cql: String| super::schema::prepare_statement(session, config, cql, true);
        Ok(ConsoleStatements {
            insert: prepare(format!("INSERT INTO {ks}.{CONSOLE_ROWS} (scope, key, body) VALUES (?, ?, ?)")).await?,
            select: prepare(format!("SELECT key, body FROM {ks}.{CONSOLE_ROWS} WHERE scope = ?")).await?,
            delete: prepare(format!("DELETE FROM {ks}.{CONSOLE_ROWS} WHERE scope = ? AND key = ?")).await?,
        })
    }
}

impl ScyllaStore {
    async fn put_console_row<T: serde::Serialize>(&self, scope: &str, key: &str, value: &T) -> Result<(), StoreError> {
        self.put_scoped_row(CONSOLE_ROWS, &self.shared.console_st.insert, scope, key, value).await
    }

    async fn remove_console_row(&self, scope: &str, key: &str) -> Result<(), StoreError> {
        let sh = &self.shared;
        sh.session
            .execute_unpaged(&sh.console_st.delete, (scope, key))
            .await
            .map_err(|e| failed("remove console row")(e.to_string()))?;
        Ok(())
    }

    async fn console_rows<T: serde::de::DeserializeOwned>(&self, scope: &str) -> Result<Vec<T>, StoreError> {
        self.scoped_rows(CONSOLE_ROWS, &self.shared.console_st.select, scope).await
    }
}

#[async_trait::async_trait]
impl ConsoleStore for ScyllaStore {
    async fn put_silence(&self, silence: &Silence) -> Result<(), StoreError> {
        self.put_console_row(SILENCE, &silence.id, silence).await
    }

    async fn remove_silence(&self, id: &str) -> Result<(), StoreError> {
        self.remove_console_row(SILENCE, id).await
    }

    async fn silences(&self) -> Result<Vec<Silence>, StoreError> {
        self.console_rows(SILENCE).await
    }

    async fn put_assignment(&self, assignment: &Assignment) -> Result<(), StoreError> {
        self.put_console_row(ASSIGNMENT, &assignment_key(&assignment.unit, &assignment.nurse), assignment).await
    }

    async fn remove_assignment(&self, unit: &str, nurse: &str) -> Result<(), StoreError> {
        self.remove_console_row(ASSIGNMENT, &assignment_key(unit, nurse)).await
    }

    async fn assignments(&self) -> Result<Vec<Assignment>, StoreError> {
        self.console_rows(ASSIGNMENT).await
    }

    async fn put_census_bed(&self, bed: &vigil_actors::CensusBed) -> Result<(), StoreError> {
        self.put_console_row(CENSUS, &bed.patient.0, bed).await
    }

    async fn remove_census_bed(&self, patient: &str) -> Result<(), StoreError> {
        self.remove_console_row(CENSUS, patient).await
    }

    async fn census_beds(&self) -> Result<Vec<vigil_actors::CensusBed>, StoreError> {
        self.console_rows(CENSUS).await
    }

    async fn put_receipts(&self, receipts: &StoredReceipts) -> Result<(), StoreError> {
        self.put_console_row(RECEIPTS, &receipts.alert_id, receipts).await
    }

    async fn remove_receipts(&self, alert_id: &str) -> Result<(), StoreError> {
        self.remove_console_row(RECEIPTS, alert_id).await
    }

    async fn receipts(&self) -> Result<Vec<StoredReceipts>, StoreError> {
        self.console_rows(RECEIPTS).await
    }
}
