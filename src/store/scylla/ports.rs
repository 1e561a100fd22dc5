//! The ports of `vigil-actors` over the tables: event appends and alert upserts are sealed
//! and queued for the commit pipeline (`backend.rs`); reads go to the cluster directly.

use async_trait::async_trait;
use futures_util::StreamExt;
use scylla::value::CqlTimestamp;
use std::sync::atomic::Ordering;
use time::OffsetDateTime;
use vigil_actors::{
    AcceptedMessage, Alert, AlertId, AlertStatus, AlertStore, ClinicalEvent, Durable, EventStore, FromMessage,
    MessageKey, MessageLog, PatientId, SequencedAlert, StoreError,
};

use super::backend::stored_alert;
use super::{
    Job, LOG_BUCKET, OPEN_BUCKETS, ScyllaStore, SealedEvent, SealedMessage, day_of, engine, event_row_key,
    from_timestamp, open_json, seal, timestamp,
};
use crate::crypto::Aad;

#[async_trait]
impl EventStore for ScyllaStore {
    async fn append_all(
        &self,
        message: Option<&FromMessage>,
        events: &[ClinicalEvent],
        alerts: &[(Alert, bool)],
    ) -> Result<Durable, StoreError> {
        let keys = &self.shared.keys;
        let mut sealed = Vec::with_capacity(events.len());
        let mut log = message;
        for event in events {
            let event_id = format!("{:016x}", rand::random::<u64>());
            let at = timestamp(event.received_at);
            let day = day_of(event.received_at);
            let row_key = event_row_key(&event.patient_id.0, day, at, &event_id);
            let json = super::super::event_body(event, message)?;
            let body = seal(keys, "events", &row_key, "body", &json)?;
            let mut messages = Vec::new();
            if let Some(FromMessage { envelope: m, logs_message, parts, .. }) = log.take() {
                // The message's entry, then its parts' (their raw text: a pointer to the message).
                let entries = logs_message
                    .then(|| (&m.key, m.raw.expose().clone()))
                    .into_iter()
                    .chain(parts.iter().map(|part| (part, format!("part of {}", m.key.id))));
                for (key, raw) in entries {
                    let sender = key.scoped_sender().into_owned();
                    let row_key = format!("{sender}\0{}", key.id);
                    let raw = seal(keys, "message_log", row_key.as_bytes(), "raw", raw.as_bytes())?;
                    messages.push(SealedMessage {
                        sender,
                        id: key.id.clone(),
                        received_at: timestamp(m.received_at),
                        raw,
                    });
                }
            }
            sealed.push(SealedEvent { event: Box::new(event.clone()), body, messages, event_id });
        }
        let (done, ticket) = Durable::channel();
        let alerts = alerts.iter().map(|(a, n)| (Box::new(a.clone()), *n)).collect();
        self.submit(Job::Events { rows: sealed, alerts, done }).await?;
        Ok(ticket)
    }

    async fn events_since(&self, patient: &PatientId, since: OffsetDateTime) -> Result<Vec<ClinicalEvent>, StoreError> {
        let sh = &self.shared;
        let fail = |e: String| engine("read events")(e);
        let mut days_rows = sh
            .session
            .execute_iter(sh.st.select_days.clone(), (patient.0.as_str(), day_of(since)))
            .await
            .map_err(|e| fail(e.to_string()))?
            .rows_stream::<(i32,)>()
            .map_err(|e| fail(e.to_string()))?;
        let mut days = Vec::new();
        while let Some(row) = days_rows.next().await {
            days.push(row.map_err(|e| fail(e.to_string()))?.0);
        }
        days.sort_unstable();
        let mut out = Vec::new();
        for day in days {
            let mut rows = sh
                .session
                .execute_iter(sh.st.select_events.clone(), (patient.0.as_str(), day, timestamp(since)))
                .await
                .map_err(|e| fail(e.to_string()))?
                .rows_stream::<(CqlTimestamp, String, Vec<u8>)>()
                .map_err(|e| fail(e.to_string()))?;
            while let Some(row) = rows.next().await {
                let (at, event_id, body) = row.map_err(|e| fail(e.to_string()))?;
                let key = event_row_key(&patient.0, day, at, &event_id);
                out.push(open_json::<ClinicalEvent>(&sh.keys, "events", &key, "body", &body)?);
            }
        }
        Ok(out)
    }

    /// Written at once (acknowledged at the configured consistency), not through the commit
    /// pipeline: one that lands before the last events it holds holds events whose senders
    /// were not acknowledged; they resend, and the same samples replace themselves.
    async fn save_snapshot(&self, patient: &PatientId, snapshot: &[u8]) -> Result<(), StoreError> {
        let sh = &self.shared;
        let body = seal(&sh.keys, "patient_snapshots", patient.0.as_bytes(), "body", snapshot)?;
        let taken_at = timestamp(OffsetDateTime::now_utc());
        sh.session
            .execute_unpaged(&sh.st.insert_snapshot, (patient.0.as_str(), taken_at, body))
            .await
            .map_err(|e| engine("write snapshot")(e.to_string()))?;
        Ok(())
    }

    /// The delete is acknowledged before this returns, so before the successor appends.
    async fn take_snapshot(&self, patient: &PatientId) -> Result<Option<Vec<u8>>, StoreError> {
        let sh = &self.shared;
        let fail = |e: String| engine("read snapshot")(e);
        let row = sh
            .session
            .execute_unpaged(&sh.st.select_snapshot, (patient.0.as_str(),))
            .await
            .map_err(|e| fail(e.to_string()))?
            .into_rows_result()
            .map_err(|e| fail(e.to_string()))?
            .maybe_first_row::<(Vec<u8>,)>()
            .map_err(|e| fail(e.to_string()))?;
        let Some((sealed,)) = row else { return Ok(None) };
        sh.session
            .execute_unpaged(&sh.st.delete_snapshot, (patient.0.as_str(),))
            .await
            .map_err(|e| engine("remove snapshot")(e.to_string()))?;
        let aad = Aad { table: "patient_snapshots", key: patient.0.as_bytes(), column: "body" };
        sh.keys.open(aad, &sealed).map(Some).map_err(|e| StoreError::Corrupt(format!("patient_snapshots: {e}")))
    }
}

#[async_trait]
impl MessageLog for ScyllaStore {
    async fn accepted_message(&self, key: &MessageKey) -> Result<Option<AcceptedMessage>, StoreError> {
        let sh = &self.shared;
        let sender = key.scoped_sender();
        let row = sh
            .session
            .execute_unpaged(&sh.st.select_message, (sender.as_ref(), key.id.as_str()))
            .await
            .map_err(|e| engine("read message log")(e.to_string()))?
            .into_rows_result()
            .map_err(|e| engine("read message log")(e.to_string()))?
            .maybe_first_row::<(String, CqlTimestamp)>()
            .map_err(|e| engine("read message log")(e.to_string()))?;
        let Some((patient, at)) = row else { return Ok(None) };
        Ok(Some(AcceptedMessage { patient_id: PatientId(patient), received_at: from_timestamp(at)? }))
    }
}

#[async_trait]
impl AlertStore for ScyllaStore {
    async fn upsert_alert(&self, alert: &Alert, notify: bool) -> Result<Durable<u64>, StoreError> {
        let (done, ticket) = Durable::channel();
        self.submit(Job::Alert { alert: Box::new(alert.clone()), notify, done }).await?;
        Ok(ticket)
    }

    async fn alert(&self, id: &AlertId) -> Result<Option<SequencedAlert>, StoreError> {
        stored_alert(&self.shared, &id.0).await
    }

    async fn alerts_after(&self, after: u64, limit: usize) -> Result<Vec<SequencedAlert>, StoreError> {
        let last = self.last_seq();
        let mut out = Vec::new();
        let mut from = after.saturating_add(1);
        while out.len() < limit && from <= last {
            let bucket = from / LOG_BUCKET;
            let want = (limit - out.len()).min(i32::MAX as usize) as i32;
            let page = self.read_bucket(bucket as i64, from as i64 - 1, want).await?;
            out.extend(page.into_iter().filter(|c| c.seq >= from && c.seq <= last));
            from = (bucket + 1) * LOG_BUCKET;
        }
        out.truncate(limit);
        Ok(out)
    }

    async fn open_alerts(&self) -> Result<Vec<SequencedAlert>, StoreError> {
        let sh = &self.shared;
        let fail = |e: String| engine("read open alerts")(e);
        let mut out = Vec::new();
        for bucket in 0..OPEN_BUCKETS as i32 {
            let mut rows = sh
                .session
                .execute_iter(sh.st.select_open_alerts.clone(), (bucket,))
                .await
                .map_err(|e| fail(e.to_string()))?
                .rows_stream::<(String, i64, Vec<u8>)>()
                .map_err(|e| fail(e.to_string()))?;
            while let Some(row) = rows.next().await {
                let (id, _seq, body) = row.map_err(|e| fail(e.to_string()))?;
                let change: SequencedAlert = open_json(&sh.keys, "open_alerts", id.as_bytes(), "body", &body)?;
                if change.alert.status != AlertStatus::Resolved {
                    out.push(change);
                }
            }
        }
        out.sort_by_key(|c| c.seq);
        Ok(out)
    }

    fn last_seq(&self) -> u64 {
        self.shared.last_seq.load(Ordering::Acquire)
    }
}
