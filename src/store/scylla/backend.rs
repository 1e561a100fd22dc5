//! ScyllaDB behind the commit pipeline (`store/commit.rs`): a batch becomes rounds of unlogged
//! batches, one per partition, sent concurrently.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use scylla::statement::Consistency;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlValue;
use vigil_actors::{AlertStatus, SequencedAlert, StoreError};

use super::super::commit::{Backend, Staged};
use super::{LOG_BUCKET, SealedEvent, Shared, day_of, engine, open_bucket, open_json, seal, timestamp};

/// One partition's rows of a commit round, and which jobs they belong to.
struct Group {
    statements: Vec<PreparedStatement>,
    values: Vec<Vec<CqlValue>>,
    jobs: Vec<usize>,
}

#[derive(Default)]
struct Round {
    groups: HashMap<String, Group>,
}

impl Round {
    fn add(&mut self, partition: String, statement: &PreparedStatement, values: Vec<CqlValue>, job: usize) {
        let group = self.groups.entry(partition).or_insert_with(|| Group {
            statements: Vec::new(),
            values: Vec::new(),
            jobs: Vec::new(),
        });
        group.statements.push(statement.clone());
        group.values.push(values);
        if !group.jobs.contains(&job) {
            group.jobs.push(job);
        }
    }
}

fn text(s: &str) -> CqlValue {
    CqlValue::Text(s.to_string())
}

pub(super) async fn stored_alert(sh: &Shared, id: &str) -> Result<Option<SequencedAlert>, StoreError> {
    let row = sh
        .session
        .execute_unpaged(&sh.st.select_alert, (id,))
        .await
        .map_err(|e| engine("read alert")(e.to_string()))?
        .into_rows_result()
        .map_err(|e| engine("read alert")(e.to_string()))?
        .maybe_first_row::<(i64, Vec<u8>)>()
        .map_err(|e| engine("read alert")(e.to_string()))?;
    match row {
        Some((_, body)) => open_json(&sh.keys, "alerts", id.as_bytes(), "body", &body).map(Some),
        None => Ok(None),
    }
}

/// ScyllaDB behind the commit pipeline. A batch is written in two rounds, each one unlogged
/// batch per partition sent concurrently: first the events and alert rows, then the
/// message-log rows — what marks a message as accepted (the duplicate check) — only for jobs
/// whose every row of the first round was acknowledged. A partial write therefore leaves the
/// message unaccepted, and the sender's resend is processed, not re-acknowledged.
pub(super) struct Cql {
    pub(super) sh: Arc<Shared>,
    /// The highest alert-log bucket recorded in `alert_seq`.
    pub(super) hwm_bucket: Option<u64>,
}

#[async_trait]
impl Backend for Cql {
    type Rows = Vec<SealedEvent>;

    async fn stored_alert(&self, id: &str) -> Result<Option<SequencedAlert>, StoreError> {
        stored_alert(&self.sh, id).await
    }

    async fn write(&mut self, jobs: &[Staged<'_, Vec<SealedEvent>>]) -> Vec<Result<(), StoreError>> {
        let sh = &self.sh;
        let st = &sh.st;
        let mut round = Round::default();
        let mut accept = Round::default();
        let mut results: Vec<Result<(), StoreError>> = Vec::with_capacity(jobs.len());
        for (i, job) in jobs.iter().enumerate() {
            // Sealed first: a job goes into the round whole or not at all.
            let mut rows = Vec::new();
            let sealed: Result<(), StoreError> = job.changes.iter().try_for_each(|c| alert_rows(sh, c, &mut rows));
            if let Err(e) = sealed {
                results.push(Err(e));
                continue;
            }
            for (partition, statement, values) in rows {
                round.add(partition, statement, values, i);
            }
            for sealed in job.rows.into_iter().flatten() {
                let SealedEvent { event, body, event_id, messages } = sealed;
                let patient = event.patient_id.0.as_str();
                let day = day_of(event.received_at);
                let at = timestamp(event.received_at);
                round.add(
                    format!("events/{patient}/{day}"),
                    &st.insert_event,
                    vec![
                        text(patient),
                        CqlValue::Int(day),
                        CqlValue::Timestamp(at),
                        text(event_id),
                        CqlValue::Blob(body.clone()),
                    ],
                    i,
                );
                round.add(
                    format!("patient_days/{patient}"),
                    &st.insert_patient_day,
                    vec![text(patient), CqlValue::Int(day)],
                    i,
                );
                for m in messages {
                    accept.add(
                        format!("message_log/{}\0{}", m.sender, m.id),
                        &st.insert_message,
                        vec![
                            text(&m.sender),
                            text(&m.id),
                            text(patient),
                            CqlValue::Timestamp(m.received_at),
                            CqlValue::Blob(m.raw.clone()),
                        ],
                        i,
                    );
                }
            }
            results.push(Ok(()));
        }
        // A new alert-log bucket is recorded before any change is written into it; if that
        // fails, nothing of the batch is written.
        let top = jobs.iter().flat_map(|j| j.changes.iter().map(|c| c.seq)).max();
        if let Some(top) = top.map(|seq| seq / LOG_BUCKET)
            && self.hwm_bucket.is_none_or(|b| b < top)
        {
            match sh.session.execute_unpaged(&st.upsert_seq_bucket, ("alert_log", top as i64)).await {
                Ok(_) => self.hwm_bucket = Some(top),
                Err(e) => {
                    let e = engine("record alert bucket")(e.to_string());
                    return results.into_iter().map(|r| r.and(Err(e.clone()))).collect();
                }
            }
        }
        let mut failed = send_round(sh, round).await;
        accept.groups.retain(|_, group| !group.jobs.iter().any(|j| failed.contains_key(j)));
        failed.extend(send_round(sh, accept).await);
        for (i, e) in failed {
            if let Some(r) = results.get_mut(i) {
                *r = r.clone().and(Err(e));
            }
        }
        results
    }
}

/// Send every partition's batch of a round concurrently; the jobs of failed batches, with why.
async fn send_round(sh: &Shared, round: Round) -> HashMap<usize, StoreError> {
    let st = &sh.st;
    let sends = round.groups.into_values().map(|group| async move {
        let mut batch = Batch::new(BatchType::Unlogged);
        for statement in group.statements {
            batch.append_statement(statement);
        }
        batch.set_consistency(st.insert_event.get_consistency().unwrap_or(Consistency::LocalQuorum));
        batch.set_is_idempotent(true);
        let result = sh.session.batch(&batch, group.values).await;
        (group.jobs, result.map(|_| ()).map_err(|e| e.to_string()))
    });
    let mut failed = HashMap::new();
    for (group_jobs, result) in futures_util::future::join_all(sends).await {
        if let Err(e) = result {
            let error = engine("write")(e);
            for i in group_jobs {
                failed.insert(i, error.clone());
            }
        }
    }
    failed
}

/// One statement of a round: partition, statement, values.
type Row<'a> = (String, &'a PreparedStatement, Vec<CqlValue>);

/// The rows of one alert change: its state, its copies by patient and by unit, the open-alert
/// index, the alert log.
fn alert_rows<'a>(sh: &'a Shared, change: &SequencedAlert, rows: &mut Vec<Row<'a>>) -> Result<(), StoreError> {
    let st = &sh.st;
    let keys = &sh.keys;
    let json = serde_json::to_vec(change).map_err(|e| StoreError::Engine(format!("encode alert: {e}")))?;
    let alert = &change.alert;
    let id = alert.id.0.as_str();
    let seq = change.seq as i64;
    let patient = alert.patient.id.0.as_str();
    let day = day_of(alert.updated_at);
    let unit_key = format!("{}\0{day}\0{seq}", alert.patient.unit);
    rows.push((
        format!("alerts/{id}"),
        &st.insert_alert,
        vec![text(id), CqlValue::BigInt(seq), CqlValue::Blob(seal(keys, "alerts", id.as_bytes(), "body", &json)?)],
    ));
    let patient_key = format!("{patient}\0{id}");
    rows.push((
        format!("alerts_by_patient/{patient}"),
        &st.insert_alert_by_patient,
        vec![
            text(patient),
            text(id),
            CqlValue::BigInt(seq),
            CqlValue::Blob(seal(keys, "alerts_by_patient", patient_key.as_bytes(), "body", &json)?),
        ],
    ));
    rows.push((
        format!("alerts_by_unit/{}/{day}", alert.patient.unit),
        &st.insert_alert_by_unit,
        vec![
            text(&alert.patient.unit),
            CqlValue::Int(day),
            CqlValue::BigInt(seq),
            text(id),
            CqlValue::Blob(seal(keys, "alerts_by_unit", unit_key.as_bytes(), "body", &json)?),
        ],
    ));
    let bucket = open_bucket(id);
    if alert.status == AlertStatus::Resolved {
        rows.push((format!("open_alerts/{bucket}"), &st.delete_open_alert, vec![CqlValue::Int(bucket), text(id)]));
    } else {
        rows.push((
            format!("open_alerts/{bucket}"),
            &st.insert_open_alert,
            vec![
                CqlValue::Int(bucket),
                text(id),
                CqlValue::BigInt(seq),
                CqlValue::Blob(seal(keys, "open_alerts", id.as_bytes(), "body", &json)?),
            ],
        ));
    }
    let log_bucket = (change.seq / LOG_BUCKET) as i64;
    rows.push((
        format!("alert_log/{log_bucket}"),
        &st.insert_alert_log,
        vec![
            CqlValue::BigInt(log_bucket),
            CqlValue::BigInt(seq),
            CqlValue::Blob(seal(keys, "alert_log", &change.seq.to_be_bytes(), "body", &json)?),
        ],
    ));
    Ok(())
}
