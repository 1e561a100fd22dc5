//! The ScyllaDB side of the [`DeviceStore`] port: device placements and associations, bed
//! occupants (`device_links`, one small partition per scope, read whole at start-up) and
//! quarantined readings (`quarantine`, one partition per day). Migration
//! `schemas/cql/0002_devices.cql`. Values are sealed like every other row (an association
//! names a patient). Newest-first order of the quarantine is the table's clustering order on a
//! real cluster, and is also sorted here, so a reader never depends on it.

use futures_util::StreamExt;
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlTimestamp;
use time::OffsetDateTime;
use vigil_actors::StoreError;
use vigil_actors::device::{BedRecord, DeviceRecord, DeviceStore, QuarantinedReading};

use super::{ScyllaStore, ScyllaStoreConfig};

/// Days of quarantine the API's newest-first read looks back over.
const QUARANTINE_DAYS_READ: i32 = 7;
/// Readings read per day partition at most (newest first on a real cluster).
const QUARANTINE_READ_PER_DAY: usize = 1000;

/// The device statements, prepared once at connect.
pub(super) struct DeviceStatements {
    insert_link: PreparedStatement,
    select_links: PreparedStatement,
    insert_quarantine: PreparedStatement,
    select_quarantine: PreparedStatement,
    select_quarantine_keys: PreparedStatement,
    delete_quarantine_row: PreparedStatement,
}

fn failed(op: &'static str) -> impl Fn(String) -> StoreError {
    move |e| StoreError::Engine(format!("{op}: {e}"))
}

impl DeviceStatements {
    pub(super) async fn prepare(session: &Session, config: &ScyllaStoreConfig) -> Result<Self, StoreError> {
        let ks = &config.keyspace;
        let prepare = |cql: String| super::schema::prepare_statement(session, config, cql, true);
        Ok(DeviceStatements {
            insert_link: prepare(format!("INSERT INTO {ks}.device_links (scope, key, body) VALUES (?, ?, ?)")).await?,
            select_links: prepare(format!("SELECT key, body FROM {ks}.device_links WHERE scope = ?")).await?,
            insert_quarantine: prepare(format!(
                "INSERT INTO {ks}.quarantine (day, received_at, reading_id, body) VALUES (?, ?, ?, ?)"
            ))
            .await?,
            select_quarantine: prepare(format!(
                "SELECT received_at, reading_id, body FROM {ks}.quarantine WHERE day = ? LIMIT {QUARANTINE_READ_PER_DAY}"
            ))
            .await?,
            select_quarantine_keys: prepare(format!(
                "SELECT received_at, reading_id FROM {ks}.quarantine WHERE day = ?"
            ))
            .await?,
            delete_quarantine_row: prepare(format!(
                "DELETE FROM {ks}.quarantine WHERE day = ? AND received_at = ? AND reading_id = ?"
            ))
            .await?,
        })
    }
}

const DEVICE_LINKS: &str = "device_links";
const QUARANTINE: &str = "quarantine";

fn day_of(at: OffsetDateTime) -> i32 {
    i32::try_from(at.unix_timestamp().div_euclid(86_400)).unwrap_or(i32::MAX)
}

fn bed_key(bed: &vigil_actors::Location) -> String {
    format!("{}\u{1f}{}\u{1f}{}", bed.unit, bed.room, bed.bed)
}

impl ScyllaStore {
    async fn put_link<T: serde::Serialize>(&self, scope: &str, key: String, value: &T) -> Result<(), StoreError> {
        self.put_scoped_row(DEVICE_LINKS, &self.shared.device_st.insert_link, scope, &key, value).await
    }

    async fn links<T: serde::de::DeserializeOwned>(&self, scope: &str) -> Result<Vec<T>, StoreError> {
        self.scoped_rows(DEVICE_LINKS, &self.shared.device_st.select_links, scope).await
    }
}

#[async_trait::async_trait]
impl DeviceStore for ScyllaStore {
    async fn put_device(&self, record: &DeviceRecord) -> Result<(), StoreError> {
        self.put_link("device", record.id.0.clone(), record).await
    }

    async fn devices(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        self.links("device").await
    }

    async fn put_bed(&self, record: &BedRecord) -> Result<(), StoreError> {
        self.put_link("bed", bed_key(&record.bed), record).await
    }

    async fn beds(&self) -> Result<Vec<BedRecord>, StoreError> {
        self.links("bed").await
    }

    async fn quarantine(&self, reading: &QuarantinedReading) -> Result<(), StoreError> {
        let reading_id = format!("{}/{}/{:08x}", reading.device, reading.message, rand::random::<u32>());
        let body = self.seal_json(QUARANTINE, &reading_id, reading)?;
        let at = CqlTimestamp(i64::try_from(reading.received_at.unix_timestamp_nanos() / 1_000_000).unwrap_or(0));
        let sh = &self.shared;
        sh.session
            .execute_unpaged(&sh.device_st.insert_quarantine, (day_of(reading.received_at), at, reading_id, body))
            .await
            .map_err(|e| failed("write quarantine")(e.to_string()))?;
        Ok(())
    }

    async fn quarantined(&self, limit: usize) -> Result<Vec<QuarantinedReading>, StoreError> {
        let sh = &self.shared;
        let today = day_of(OffsetDateTime::now_utc());
        let mut out: Vec<QuarantinedReading> = Vec::new();
        // A reading stamped ahead of this node's clock (another node's) is in tomorrow's partition.
        for day in (today - QUARANTINE_DAYS_READ..=today + 1).rev() {
            if out.len() >= limit {
                break;
            }
            let mut rows = sh
                .session
                .execute_iter(sh.device_st.select_quarantine.clone(), (day,))
                .await
                .map_err(|e| failed("read quarantine")(e.to_string()))?
                .rows_stream::<(CqlTimestamp, String, Vec<u8>)>()
                .map_err(|e| failed("read quarantine")(e.to_string()))?;
            let mut of_day = Vec::new();
            while let Some(row) = rows.next().await {
                let (_, reading_id, body) = row.map_err(|e| failed("read quarantine")(e.to_string()))?;
                of_day.push(self.open_json::<QuarantinedReading>(QUARANTINE, &reading_id, &body)?);
            }
            of_day.sort_by_key(|r| std::cmp::Reverse(r.received_at));
            out.extend(of_day);
        }
        out.truncate(limit);
        Ok(out)
    }

    /// Reads the keys of the day partitions from a week before `older_than` to tomorrow
    /// (sorted here, newest first) and deletes, row by row, those older than `older_than` and
    /// those beyond the newest `keep`: a read of at most `keep` live keys per trim (readings
    /// of unassociated devices are rare). Partitions more than a week older were trimmed when
    /// they were that old.
    async fn trim_quarantine(&self, keep: usize, older_than: OffsetDateTime) -> Result<u64, StoreError> {
        let sh = &self.shared;
        let cutoff = CqlTimestamp(i64::try_from(older_than.unix_timestamp_nanos() / 1_000_000).unwrap_or(0));
        let today = day_of(OffsetDateTime::now_utc()).max(day_of(older_than));
        let mut keys: Vec<(i32, CqlTimestamp, String)> = Vec::new();
        for day in day_of(older_than) - QUARANTINE_DAYS_READ..=today + 1 {
            let mut rows = sh
                .session
                .execute_iter(sh.device_st.select_quarantine_keys.clone(), (day,))
                .await
                .map_err(|e| failed("read quarantine")(e.to_string()))?
                .rows_stream::<(CqlTimestamp, String)>()
                .map_err(|e| failed("read quarantine")(e.to_string()))?;
            while let Some(row) = rows.next().await {
                let (at, reading_id) = row.map_err(|e| failed("read quarantine")(e.to_string()))?;
                keys.push((day, at, reading_id));
            }
        }
        keys.sort_by(|a, b| (b.1.0, &b.2).cmp(&(a.1.0, &a.2)));
        let mut dropped = 0;
        for (n, (day, at, reading_id)) in keys.into_iter().enumerate() {
            if n < keep && at.0 >= cutoff.0 {
                continue;
            }
            sh.session
                .execute_unpaged(&sh.device_st.delete_quarantine_row, (day, at, reading_id))
                .await
                .map_err(|e| failed("trim quarantine")(e.to_string()))?;
            dropped += 1;
        }
        Ok(dropped)
    }
}
