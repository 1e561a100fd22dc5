//! The schema: the numbered CQL migrations of `schemas/cql/` applied at start-up, and every
//! statement prepared once.

use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use time::OffsetDateTime;
use vigil_actors::StoreError;

use super::{ScyllaStoreConfig, engine, timestamp};

/// The ordered migrations: (version, name, CQL with `{ks}` for the keyspace).
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "0001_init", include_str!("../../../schemas/cql/0001_init.cql")),
    (2, "0002_devices", include_str!("../../../schemas/cql/0002_devices.cql")),
    (3, "0003_console", include_str!("../../../schemas/cql/0003_console.cql")),
];

pub(super) struct Statements {
    pub(super) insert_event: PreparedStatement,
    pub(super) insert_patient_day: PreparedStatement,
    pub(super) insert_message: PreparedStatement,
    pub(super) select_message: PreparedStatement,
    pub(super) select_days: PreparedStatement,
    pub(super) select_events: PreparedStatement,
    pub(super) insert_alert: PreparedStatement,
    pub(super) select_alert: PreparedStatement,
    pub(super) insert_alert_by_patient: PreparedStatement,
    pub(super) insert_alert_by_unit: PreparedStatement,
    pub(super) insert_open_alert: PreparedStatement,
    pub(super) delete_open_alert: PreparedStatement,
    pub(super) select_open_alerts: PreparedStatement,
    pub(super) insert_alert_log: PreparedStatement,
    pub(super) select_alert_log_after: PreparedStatement,
    pub(super) select_alert_log_bucket: PreparedStatement,
    pub(super) upsert_seq_bucket: PreparedStatement,
    pub(super) select_seq_bucket: PreparedStatement,
    pub(super) insert_snapshot: PreparedStatement,
    pub(super) select_snapshot: PreparedStatement,
    pub(super) delete_snapshot: PreparedStatement,
}

/// One statement prepared at connect, at the configured consistency (every table's statements
/// go through here: `Statements`, `devices.rs`, `console.rs`).
pub(super) async fn prepare_statement(
    session: &Session,
    config: &ScyllaStoreConfig,
    cql: String,
    idempotent: bool,
) -> Result<PreparedStatement, StoreError> {
    let mut statement = session.prepare(cql.clone()).await.map_err(|e| {
        tracing::error!(error = %e, %cql, "prepare failed");
        StoreError::Engine("prepare".into())
    })?;
    statement.set_consistency(config.consistency);
    statement.set_is_idempotent(idempotent);
    Ok(statement)
}

impl Statements {
    pub(super) async fn prepare(session: &Session, config: &ScyllaStoreConfig) -> Result<Self, StoreError> {
        let ks = &config.keyspace;
        let events_ttl = u64::from(config.retention.observations_days) * 86_400;
        let raw_ttl = u64::from(config.retention.raw_messages_days) * 86_400;
        let prepare = |cql: String, idempotent: bool| prepare_statement(session, config, cql, idempotent);
        Ok(Statements {
            insert_event: prepare(format!("INSERT INTO {ks}.events (patient_id, day, received_at, event_id, body) VALUES (?, ?, ?, ?, ?) USING TTL {events_ttl}"), true).await?,
            insert_patient_day: prepare(format!("INSERT INTO {ks}.patient_days (patient_id, day) VALUES (?, ?) USING TTL {events_ttl}"), true).await?,
            insert_message: prepare(format!("INSERT INTO {ks}.message_log (sender, control_id, patient_id, received_at, raw) VALUES (?, ?, ?, ?, ?) USING TTL {raw_ttl}"), true).await?,
            select_message: prepare(format!("SELECT patient_id, received_at FROM {ks}.message_log WHERE sender = ? AND control_id = ?"), true).await?,
            select_days: prepare(format!("SELECT day FROM {ks}.patient_days WHERE patient_id = ? AND day >= ?"), true).await?,
            select_events: prepare(format!("SELECT received_at, event_id, body FROM {ks}.events WHERE patient_id = ? AND day = ? AND received_at >= ?"), true).await?,
            insert_alert: prepare(format!("INSERT INTO {ks}.alerts (alert_id, seq, body) VALUES (?, ?, ?) USING TTL {events_ttl}"), true).await?,
            select_alert: prepare(format!("SELECT seq, body FROM {ks}.alerts WHERE alert_id = ?"), true).await?,
            insert_alert_by_patient: prepare(format!("INSERT INTO {ks}.alerts_by_patient (patient_id, alert_id, seq, body) VALUES (?, ?, ?, ?) USING TTL {events_ttl}"), true).await?,
            insert_alert_by_unit: prepare(format!("INSERT INTO {ks}.alerts_by_unit (unit, day, seq, alert_id, body) VALUES (?, ?, ?, ?, ?) USING TTL {events_ttl}"), true).await?,
            insert_open_alert: prepare(format!("INSERT INTO {ks}.open_alerts (bucket, alert_id, seq, body) VALUES (?, ?, ?, ?)"), true).await?,
            delete_open_alert: prepare(format!("DELETE FROM {ks}.open_alerts WHERE bucket = ? AND alert_id = ?"), true).await?,
            select_open_alerts: prepare(format!("SELECT alert_id, seq, body FROM {ks}.open_alerts WHERE bucket = ?"), true).await?,
            insert_alert_log: prepare(format!("INSERT INTO {ks}.alert_log (bucket, seq, body) VALUES (?, ?, ?) USING TTL {events_ttl}"), true).await?,
            select_alert_log_after: prepare(format!("SELECT seq, body FROM {ks}.alert_log WHERE bucket = ? AND seq > ? LIMIT ?"), true).await?,
            select_alert_log_bucket: prepare(format!("SELECT seq FROM {ks}.alert_log WHERE bucket = ?"), true).await?,
            upsert_seq_bucket: prepare(format!("INSERT INTO {ks}.alert_seq (scope, bucket) VALUES (?, ?)"), true).await?,
            select_seq_bucket: prepare(format!("SELECT bucket FROM {ks}.alert_seq WHERE scope = ?"), true).await?,
            insert_snapshot: prepare(format!("INSERT INTO {ks}.patient_snapshots (patient_id, taken_at, body) VALUES (?, ?, ?) USING TTL {events_ttl}"), true).await?,
            select_snapshot: prepare(format!("SELECT body FROM {ks}.patient_snapshots WHERE patient_id = ?"), true).await?,
            delete_snapshot: prepare(format!("DELETE FROM {ks}.patient_snapshots WHERE patient_id = ?"), true).await?,
        })
    }
}

/// Apply the migrations `schema_version` does not list, in order.
pub(super) async fn migrate(session: &Session, config: &ScyllaStoreConfig) -> Result<(), StoreError> {
    let ks = &config.keyspace;
    let ddl = |cql: String| async move {
        session.query_unpaged(cql.clone(), ()).await.map(|_| ()).map_err(|e| {
            tracing::error!(error = %e, %cql, "schema statement failed");
            StoreError::Engine("migrate".into())
        })
    };
    ddl(format!("CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {}", config.replication.cql())).await?;
    ddl(format!(
        "CREATE TABLE IF NOT EXISTS {ks}.schema_version (scope text, version int, name text, applied_at timestamp, PRIMARY KEY ((scope), version))"
    ))
    .await?;
    let mut select = session
        .prepare(format!("SELECT version FROM {ks}.schema_version WHERE scope = ?"))
        .await
        .map_err(|e| engine("migrate")(e.to_string()))?;
    select.set_consistency(config.consistency);
    let applied: Vec<i32> = session
        .execute_unpaged(&select, ("vigil",))
        .await
        .map_err(|e| engine("migrate")(e.to_string()))?
        .into_rows_result()
        .map_err(|e| engine("migrate")(e.to_string()))?
        .rows::<(i32,)>()
        .map_err(|e| engine("migrate")(e.to_string()))?
        .map(|r| r.map(|(v,)| v))
        .collect::<Result<_, _>>()
        .map_err(|e| engine("migrate")(e.to_string()))?;
    let mut record = session
        .prepare(format!("INSERT INTO {ks}.schema_version (scope, version, name, applied_at) VALUES (?, ?, ?, ?)"))
        .await
        .map_err(|e| engine("migrate")(e.to_string()))?;
    record.set_consistency(config.consistency);
    for (version, name, text) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        for statement in split_statements(text) {
            ddl(statement.replace("{ks}", ks)).await?;
        }
        session
            .execute_unpaged(&record, ("vigil", *version, *name, timestamp(OffsetDateTime::now_utc())))
            .await
            .map_err(|e| engine("migrate")(e.to_string()))?;
        tracing::info!(version, name, "cql migration applied");
    }
    Ok(())
}

/// Statements of a migration file: `--` comment lines dropped, split at `;` ending a line.
pub fn split_statements(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with("--") {
            continue;
        }
        current.push_str(line.trim_end());
        current.push('\n');
        if trimmed.ends_with(';') {
            let statement = current.trim().trim_end_matches(';').trim().to_string();
            out.push(statement);
            current.clear();
        }
    }
    if !current.trim().is_empty() {
        out.push(current.trim().to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_migration_file_is_listed_in_order_and_parses_into_statements() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/cql");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".cql"))
            .collect();
        files.sort();
        let listed: Vec<String> = MIGRATIONS.iter().map(|(_, name, _)| format!("{name}.cql")).collect();
        assert_eq!(files, listed);
        assert!(MIGRATIONS.windows(2).all(|w| w[0].0 < w[1].0));
        for (_, name, text) in MIGRATIONS {
            let statements = split_statements(text);
            assert!(!statements.is_empty(), "{name}");
            for s in statements {
                assert!(s.starts_with("CREATE TABLE IF NOT EXISTS {ks}."), "{name}: {s}");
                assert!(!s.to_ascii_uppercase().contains("ALLOW FILTERING"));
                assert!(!s.contains(';'));
            }
        }
    }
}
