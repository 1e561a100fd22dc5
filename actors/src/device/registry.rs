//! The device registry: owns the device id -> actor map (bounded), starts a device's actor on
//! first sight (again if it failed), keeps which patient each device reports for ([`Links`]:
//! by bed, by its own message, or through the API; persisted through [`DeviceStore`], every
//! change audited through [`AssociationAudit`]), quarantines readings of devices with no
//! patient, and stores the `device.offline` changes its actors decide through the patient
//! [`Router`], so they follow the patient's alert lifecycle.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use dashmap::DashMap;
use ractor::{ActorRef, ActorStatus};
use tokio::sync::{mpsc, oneshot};

use super::actor::{DeviceActor, DeviceArgs};
use super::links::{AssociationAudit, DeviceRecord, DeviceStore, LinkError, Links, QuarantinedReading, Touched};
use super::messages::DeviceMsg;
use super::state::{Attachment, DeviceConfig};
use super::technical::TechnicalReport;
use crate::model::{CensusAction, ClinicalEvent, DeviceId, EventKind, Location};
use crate::ports::{Clock, StoreError};
use crate::router::Router;

/// Occupied beds tracked at most.
pub const MAX_BEDS: usize = 100_000;

/// Changes queued for the writer at most ([`DeviceRegistry::apply`]): beyond it a change
/// waits for room.
const WRITE_QUEUE: usize = 4096;

/// One change's rows and audit records, for the writer.
struct WriteJob {
    touched: Touched,
    user: String,
    role: String,
    done: oneshot::Sender<Result<(), StoreError>>,
}

fn writer_gone() -> StoreError {
    StoreError::Unavailable("device row writer stopped".into())
}

/// The writer: takes every change queued, writes its rows and audit records in order, makes
/// them durable together with one sync, then answers each change.
async fn write_rows(
    mut jobs: mpsc::Receiver<WriteJob>,
    store: Arc<dyn DeviceStore>,
    audit: Option<Arc<dyn AssociationAudit>>,
) {
    let mut batch = Vec::new();
    while jobs.recv_many(&mut batch, WRITE_QUEUE).await > 0 {
        let mut results = Vec::with_capacity(batch.len());
        for job in &batch {
            let mut stored = Ok(());
            for record in &job.touched.devices {
                if let Err(e) = store.write_device(record).await {
                    stored = Err(e);
                }
            }
            for record in &job.touched.beds {
                if let Err(e) = store.write_bed(record).await {
                    stored = Err(e);
                }
            }
            if let Some(audit) = &audit {
                for change in &job.touched.changes {
                    audit.association_changed(&job.user, &job.role, change);
                }
            }
            results.push(stored);
        }
        let synced = store.sync().await;
        for (job, stored) in batch.drain(..).zip(results) {
            let _ = job.done.send(stored.and(synced.clone()));
        }
    }
}

/// Who changed an association: a user of the API, or a feed.
#[derive(Clone, Copy, Debug)]
pub struct ChangedBy<'a> {
    /// User id (`sub` of the token), or the feed (`feed:hl7`).
    pub user: &'a str,
    /// The user's role, or `system` for a feed.
    pub role: &'a str,
}

impl ChangedBy<'static> {
    /// The HL7 feed.
    pub const HL7: ChangedBy<'static> = ChangedBy { user: "feed:hl7", role: "system" };
    /// The FHIR feed.
    pub const FHIR: ChangedBy<'static> = ChangedBy { user: "feed:fhir", role: "system" };
}

/// Why an association change was not made.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// A bound was reached.
    #[error(transparent)]
    Bound(#[from] LinkError),
    /// The change was made in memory but not persisted.
    #[error("device association not stored: {0}")]
    Store(#[from] StoreError),
}

/// Routes device sightings and silence checks to one actor per device.
pub struct DeviceRegistry {
    actors: DashMap<DeviceId, ActorRef<DeviceMsg>>,
    config: DeviceConfig,
    clock: Arc<dyn Clock>,
    router: Arc<Router>,
    links: tokio::sync::Mutex<Links>,
    store: Arc<dyn DeviceStore>,
    audit: Option<Arc<dyn AssociationAudit>>,
    /// Association rows and audit records queue here for the one writer, in change order.
    writer: std::sync::OnceLock<mpsc::Sender<WriteJob>>,
    /// Sightings of devices beyond `max_devices`, not tracked (`/metrics`).
    pub untracked: AtomicU64,
    /// Readings quarantined since start (`/metrics`).
    pub quarantined: AtomicU64,
    /// Quarantined readings dropped since start, oldest first, to keep the quarantine within
    /// its bounds (`/metrics`).
    pub quarantine_dropped: AtomicU64,
    offline: AtomicI64,
}

impl DeviceRegistry {
    /// A registry storing its patients' device events through `router`, and its devices,
    /// beds and quarantined readings in `store`. Call [`DeviceRegistry::restore`] before use.
    pub fn new(router: Arc<Router>, clock: Arc<dyn Clock>, config: DeviceConfig, store: Arc<dyn DeviceStore>) -> Self {
        DeviceRegistry {
            actors: DashMap::new(),
            config,
            clock,
            router,
            links: tokio::sync::Mutex::new(Links::new(config.max_devices, MAX_BEDS)),
            store,
            audit: None,
            writer: std::sync::OnceLock::new(),
            untracked: AtomicU64::new(0),
            quarantined: AtomicU64::new(0),
            quarantine_dropped: AtomicU64::new(0),
            offline: AtomicI64::new(0),
        }
    }

    /// Audit association changes to `audit`.
    pub fn with_audit(mut self, audit: Arc<dyn AssociationAudit>) -> Self {
        self.audit = Some(audit);
        self
    }

    /// Load device placements, associations and bed occupants from the store.
    pub async fn restore(&self) -> Result<(), StoreError> {
        let devices = self.store.devices().await?;
        let beds = self.store.beds().await?;
        self.links.lock().await.restore(devices, beds);
        Ok(())
    }

    /// Devices with a live actor.
    pub fn device_count(&self) -> usize {
        self.actors.len()
    }

    /// Devices offline now (`device.offline` raised and not yet resolved by data).
    pub fn offline_count(&self) -> u64 {
        u64::try_from(self.offline.load(Ordering::Relaxed)).unwrap_or(0)
    }

    /// Every known device (placed, associated or seen with a patient), sorted by id.
    pub async fn list(&self) -> Vec<DeviceRecord> {
        self.links.lock().await.list()
    }

    /// One device's record.
    pub async fn record(&self, id: &DeviceId) -> Option<DeviceRecord> {
        self.links.lock().await.device(id).cloned()
    }

    /// The patient `device` reports for now.
    pub async fn current(&self, device: &DeviceId) -> Option<Attachment> {
        self.links.lock().await.current(device).cloned()
    }

    /// Apply a change to the links, persist what it touched, audit it and tell the device
    /// actors; returns once it is durable ([`DeviceRegistry::apply`]).
    async fn change(
        &self,
        by: ChangedBy<'_>,
        f: impl FnOnce(&mut Links) -> Result<Touched, LinkError>,
    ) -> Result<(), DeviceError> {
        match self.apply(by, f).await? {
            Some(written) => Ok(written.await.unwrap_or_else(|_| Err(writer_gone()))?),
            None => Ok(()),
        }
    }

    /// Apply a change to the links and tell the device actors under the links' lock, and
    /// queue what it touched (rows and audit records) to the registry's one writer in the
    /// same order; `None` when nothing changed, else what answers once the rows are durable.
    /// The writer writes each batch it finds queued and makes it durable with one fsync, so
    /// neither the lock nor the caller's next message waits for a disk: holding the lock
    /// through each fsync (and each journal write, which queues behind the committer's fsync)
    /// put a burst of new monitors in a row (500 in the first second of a load run: first
    /// second ACK p50 95-257 ms against 3 ms without devices). A row that fails to be written
    /// is reported through the answer; the change stays made in memory.
    async fn apply(
        &self,
        by: ChangedBy<'_>,
        f: impl FnOnce(&mut Links) -> Result<Touched, LinkError>,
    ) -> Result<Option<oneshot::Receiver<Result<(), StoreError>>>, DeviceError> {
        let mut links = self.links.lock().await;
        let touched = f(&mut links)?;
        if touched.is_empty() {
            return Ok(None);
        }
        for change in &touched.changes {
            let attachment = links.current(&change.device).cloned().map(Box::new);
            if let Some(actor) = self.actors.get(&change.device) {
                let _ = actor.cast(DeviceMsg::Attach { attachment });
            }
        }
        let (done, written) = oneshot::channel();
        let job = WriteJob { touched, user: by.user.to_string(), role: by.role.to_string(), done };
        if self.writer().send(job).await.is_err() {
            return Err(DeviceError::Store(writer_gone()));
        }
        Ok(Some(written))
    }

    /// The registry's writer, started on first use ([`DeviceRegistry::apply`]).
    fn writer(&self) -> &mpsc::Sender<WriteJob> {
        self.writer.get_or_init(|| {
            let (tx, rx) = mpsc::channel(WRITE_QUEUE);
            tokio::spawn(write_rows(rx, Arc::clone(&self.store), self.audit.clone()));
            tx
        })
    }

    /// Associate `device` with `patient` (the API).
    pub async fn associate(
        &self,
        by: ChangedBy<'_>,
        device: &DeviceId,
        patient: Attachment,
    ) -> Result<(), DeviceError> {
        let now = self.clock.now();
        self.change(by, |links| links.associate(device, patient, now)).await
    }

    /// End the association of `device` (the API).
    pub async fn dissociate(&self, by: ChangedBy<'_>, device: &DeviceId) -> Result<(), DeviceError> {
        self.change(by, |links| links.dissociate(device)).await
    }

    /// Place `device` at `bed`, or at no bed (the API).
    pub async fn place(&self, by: ChangedBy<'_>, device: &DeviceId, bed: Option<Location>) -> Result<(), DeviceError> {
        let now = self.clock.now();
        self.change(by, |links| links.place(device, bed, now)).await
    }

    /// ADT: `event`'s patient was admitted, moved or discharged; devices at their old and
    /// new beds follow. Events other than census are ignored.
    pub async fn census(&self, by: ChangedBy<'_>, event: &ClinicalEvent) -> Result<(), DeviceError> {
        let EventKind::Census { action, .. } = &event.kind else { return Ok(()) };
        let action: CensusAction = *action;
        let now = self.clock.now();
        let patient = Attachment::of(event);
        self.change(by, |links| links.census(&patient, action, event.location.as_ref(), now)).await
    }

    /// `device` was heard from now. When its message named a patient (`named`), it reports
    /// for them from now on; otherwise for its current association. Returns the patient its
    /// readings belong to (`None`: quarantine them). Before this returns, the association is
    /// durable, the `device.offline` it raised when silent is resolved, and the technical
    /// conditions of `report` (leads off ...) are raised or resolved, and stored.
    pub async fn seen(
        &self,
        by: ChangedBy<'_>,
        device: &DeviceId,
        named: Option<Attachment>,
        report: Option<TechnicalReport>,
    ) -> Option<Attachment> {
        self.sight(by, device, named, report).await.finish(self).await
    }

    /// The part of [`DeviceRegistry::seen`] that keeps the order of arrival: the association
    /// the message names is made and written, the device's actor is told. The rest (the
    /// association made durable, the events the actor decided stored) is
    /// [`Sighting::finish`], which the message's ACK waits on while the connection's next
    /// message begins: a new monitor's fsync no longer holds up the messages behind it.
    pub async fn sight(
        &self,
        by: ChangedBy<'_>,
        device: &DeviceId,
        named: Option<Attachment>,
        report: Option<TechnicalReport>,
    ) -> Sighting {
        let mut written = None;
        let current = match named {
            Some(patient) => {
                let now = self.clock.now();
                let named = patient.clone();
                match self.apply(by, |links| links.named_by_message(device, named, now)).await {
                    Ok(queued) => written = queued,
                    // Beyond the bound: counted as untracked below, not logged per message.
                    Err(DeviceError::Bound(_)) => {}
                    // The reading still goes to the patient its message names.
                    Err(error) => tracing::warn!(%device, %error, "device association by message not kept"),
                }
                Some(patient)
            }
            None => self.current(device).await,
        };
        let mut sighting = Sighting { device: device.clone(), current, written, reply: None };
        let Some(actor) = self.actor_for(device).await else { return sighting };
        let at = self.clock.now();
        let (tx, rx) = oneshot::channel();
        let attachment = sighting.current.clone().map(Box::new);
        let report = report.map(Box::new);
        if actor.cast(DeviceMsg::Seen { at, attachment, report, reply: tx.into() }).is_ok() {
            sighting.reply = Some(rx);
        }
        sighting
    }

    /// Keep a reading of a device with no patient, durably; counted. The quarantine stays
    /// within its bounds (`quarantine_max` readings, `quarantine_max_age` old): the oldest
    /// readings beyond them are dropped, counted, never the new one.
    pub async fn quarantine(&self, reading: QuarantinedReading) -> Result<(), StoreError> {
        self.store.quarantine(&reading).await?;
        self.quarantined.fetch_add(1, Ordering::Relaxed);
        tracing::info!(device = %reading.device, feed = %reading.feed, values = reading.observations.len(), "reading of an unassociated device quarantined");
        self.trim_quarantine().await;
        Ok(())
    }

    /// Drop the quarantined readings beyond the bounds, oldest first, at the clock's now
    /// (after each reading quarantined, and from the silence check). A failure is logged:
    /// the next trim catches up.
    pub async fn trim_quarantine(&self) -> u64 {
        let older_than = self.clock.now() - self.config.quarantine_max_age;
        match self.store.trim_quarantine(self.config.quarantine_max, older_than).await {
            Ok(dropped) => {
                if dropped > 0 {
                    self.quarantine_dropped.fetch_add(dropped, Ordering::Relaxed);
                    tracing::warn!(dropped, "oldest quarantined readings dropped: quarantine at its bound");
                }
                dropped
            }
            Err(e) => {
                tracing::warn!(error = %e, "quarantine not trimmed; retried on the next reading");
                0
            }
        }
    }

    /// The latest quarantined readings, newest first.
    pub async fn quarantined(&self, limit: usize) -> Result<Vec<QuarantinedReading>, StoreError> {
        self.store.quarantined(limit).await
    }

    /// Judge every device's silence at the clock's now; store the `device.offline` alerts it
    /// raises. Returns how many went offline.
    pub async fn check_silence(&self) -> usize {
        let now = self.clock.now();
        let actors: Vec<_> = self.actors.iter().map(|e| e.value().clone()).collect();
        let mut offline = 0;
        for actor in actors {
            let (tx, rx) = oneshot::channel();
            if actor.cast(DeviceMsg::Check { now, reply: tx.into() }).is_err() {
                continue;
            }
            if let Ok(Some(event)) = rx.await {
                offline += 1;
                self.offline.fetch_add(1, Ordering::Relaxed);
                self.store(event).await;
            }
        }
        // Readings age out of the quarantine even when no new one arrives.
        self.trim_quarantine().await;
        offline
    }

    /// Stop every device actor.
    pub async fn shutdown(&self) {
        let actors: Vec<_> = self.actors.iter().map(|e| e.value().clone()).collect();
        for actor in actors {
            let _ = actor.drain_and_wait(Some(std::time::Duration::from_secs(1))).await;
        }
        self.actors.clear();
    }

    async fn store(&self, event: ClinicalEvent) {
        let patient = event.patient_id.clone();
        let stored = match self.router.ingest(event).await {
            Ok(ticket) => ticket.wait().await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(error) = stored {
            // The next check or sighting decides again only on a change: say so loudly.
            tracing::error!(%patient, %error, "device alert change not stored");
        }
    }

    async fn actor_for(&self, id: &DeviceId) -> Option<ActorRef<DeviceMsg>> {
        if let Some(actor) = self.actors.get(id).map(|a| a.value().clone()) {
            if matches!(actor.get_status(), ActorStatus::Running | ActorStatus::Starting) {
                return Some(actor);
            }
            // A device actor that failed starts again, knowing nothing: its interval is
            // learnt anew.
            self.actors.remove(id);
        }
        if self.actors.len() >= self.config.max_devices {
            self.untracked.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let args = DeviceArgs { id: id.clone(), config: self.config };
        match ractor::Actor::spawn(None, DeviceActor, args).await {
            Ok((actor, _)) => {
                // Two first sightings at once: the first actor registered wins.
                let kept = self.actors.entry(id.clone()).or_insert(actor.clone()).value().clone();
                if kept.get_id() != actor.get_id() {
                    actor.stop(None);
                }
                Some(kept)
            }
            Err(error) => {
                tracing::error!(device = %id, %error, "device actor not started");
                None
            }
        }
    }
}

/// A device sighting begun in arrival order ([`DeviceRegistry::sight`]), to be finished.
#[must_use = "a sighting's association is durable and its events stored only once it is finished"]
pub struct Sighting {
    device: DeviceId,
    current: Option<Attachment>,
    /// The association it changed, queued to be written: answers once durable.
    written: Option<oneshot::Receiver<Result<(), StoreError>>>,
    reply: Option<oneshot::Receiver<Vec<ClinicalEvent>>>,
}

impl Sighting {
    /// Wait until the association it changed is durable (sharing the fsync with the changes
    /// made meanwhile) and store the events its actor decided; the patient its readings
    /// belong to (`None`: quarantine them).
    pub async fn finish(self, registry: &DeviceRegistry) -> Option<Attachment> {
        if let Some(written) = self.written
            && let Err(error) = written.await.unwrap_or_else(|_| Err(writer_gone()))
        {
            tracing::warn!(device = %self.device, %error, "device association by message not kept");
        }
        if let Some(rx) = self.reply {
            for event in rx.await.unwrap_or_default() {
                if matches!(event.kind, EventKind::DeviceSilence { offline: false, .. }) {
                    registry.offline.fetch_sub(1, Ordering::Relaxed);
                }
                registry.store(event).await;
            }
        }
        self.current
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use time::Duration;

    use super::*;
    use crate::device::links::MemoryDeviceStore;
    use crate::fakes::{CollectingPublisher, FnRules, ManualClock, MemoryStore};
    use crate::model::{AlertStatus, Demographics, Location, PatientId, PatientKey, Phi};

    fn attachment() -> Attachment {
        Attachment {
            patient_id: PatientId("p-dev".into()),
            patient: PatientKey { authority: "HOSP".into(), mrn: Phi("MRN-DEV".into()) },
            demographics: Demographics { name: Phi("Test, Device".into()), ..Default::default() },
            location: Some(Location { unit: "ICU".into(), room: "1".into(), bed: "A".into() }),
        }
    }

    /// Sightings begun one after another, as a connection begins its messages, and finished
    /// later in any order (their ACKs wait on them): each device's rows reach the store in the
    /// order of the changes (the latest association is the one kept), every new device's row
    /// is there once its sighting is finished, and the association changes are audited once each.
    #[tokio::test]
    async fn sightings_begun_in_a_row_store_every_association_in_change_order_whatever_order_they_finish_in() {
        #[derive(Default)]
        struct Audited(Mutex<Vec<String>>);
        impl AssociationAudit for Audited {
            fn association_changed(&self, user: &str, _role: &str, change: &super::super::links::AssociationChange) {
                let after = change.after.as_ref().map(|(p, _)| p.0.clone()).unwrap_or_default();
                self.0.lock().unwrap().push(format!("{user} {} -> {after}", change.device.0));
            }
        }
        let store = Arc::new(MemoryStore::default());
        let t0 = time::macros::datetime!(2026-01-01 00:00 UTC);
        let clock = Arc::new(ManualClock(Mutex::new(t0)));
        let rules = Arc::new(FnRules(|_: &crate::ports::PatientView, _: &[&str]| Vec::new()));
        let router = Arc::new(Router::new(store.clone(), store.clone(), rules, clock.clone()).await.unwrap());
        let rows = Arc::new(MemoryDeviceStore::default());
        let audit = Arc::new(Audited::default());
        let devices = DeviceRegistry::new(Arc::clone(&router), clock.clone(), DeviceConfig::default(), rows.clone())
            .with_audit(audit.clone());
        let first = attachment();
        let second = Attachment { patient_id: PatientId("p-dev-2".into()), ..attachment() };
        let moved = DeviceId("MON-MOVED".into());
        let mut sightings = vec![
            devices.sight(ChangedBy::HL7, &moved, Some(first.clone()), None).await,
            devices.sight(ChangedBy::HL7, &moved, Some(second.clone()), None).await,
        ];
        for n in 0..20 {
            sightings
                .push(devices.sight(ChangedBy::HL7, &DeviceId(format!("MON-{n}")), Some(first.clone()), None).await);
        }
        // Finished newest first: the order of the writes is the order of the changes anyway.
        let mut reported = Vec::new();
        for sighting in sightings.into_iter().rev() {
            reported.push(sighting.finish(&devices).await.map(|a| a.patient_id.0));
        }
        assert_eq!(
            reported.last().unwrap().as_deref(),
            Some("p-dev"),
            "the first message's readings go to its patient"
        );
        let stored = rows.devices().await.unwrap();
        assert_eq!(stored.len(), 21, "every new device's row is stored once its sighting is finished");
        let kept = stored.iter().find(|r| r.id == moved).and_then(|r| r.association.as_ref());
        assert_eq!(kept.map(|a| a.patient.patient_id.0.as_str()), Some("p-dev-2"), "the latest association is kept");
        let audited = audit.0.lock().unwrap().clone();
        assert_eq!(audited.len(), 22, "{audited:?}");
        assert_eq!(audited[..2], ["feed:hl7 MON-MOVED -> p-dev", "feed:hl7 MON-MOVED -> p-dev-2"]);
        assert_eq!(devices.current(&moved).await.map(|a| a.patient_id.0), Some("p-dev-2".into()));
        router.shutdown().await;
    }

    #[tokio::test]
    async fn the_quarantine_keeps_its_newest_readings_within_count_and_age_and_counts_the_dropped() {
        let store = Arc::new(MemoryStore::default());
        let t0 = time::macros::datetime!(2026-01-01 00:00 UTC);
        let clock = Arc::new(ManualClock(Mutex::new(t0)));
        let rules = Arc::new(FnRules(|_: &crate::ports::PatientView, _: &[&str]| Vec::new()));
        let router = Arc::new(Router::new(store.clone(), store.clone(), rules, clock.clone()).await.unwrap());
        let config =
            DeviceConfig { quarantine_max: 3, quarantine_max_age: Duration::hours(1), ..DeviceConfig::default() };
        let quarantine = Arc::new(MemoryDeviceStore::default());
        let devices = DeviceRegistry::new(Arc::clone(&router), clock.clone(), config, quarantine.clone());
        let advance = |by: Duration| *clock.0.lock().unwrap() += by;
        let reading = |n: usize| QuarantinedReading {
            device: DeviceId("0012345678ABCDEF".into()),
            received_at: *clock.0.lock().unwrap(),
            feed: "hl7".into(),
            message: format!("Q-{n}"),
            observations: Vec::new(),
        };
        let kept =
            || async { quarantine.quarantined(100).await.unwrap().into_iter().map(|r| r.message).collect::<Vec<_>>() };
        for n in 0..5 {
            devices.quarantine(reading(n)).await.unwrap();
            advance(Duration::minutes(10));
        }
        assert_eq!(kept().await, ["Q-4", "Q-3", "Q-2"], "the newest three, the oldest dropped first");
        assert_eq!(devices.quarantine_dropped.load(Ordering::Relaxed), 2);
        assert_eq!(devices.quarantined.load(Ordering::Relaxed), 5, "every reading was quarantined before");
        // Over an hour after Q-3 arrived: it and Q-2 age out at the next check, with no new
        // reading; Q-4 (55 minutes old) stays.
        advance(Duration::minutes(45));
        devices.check_silence().await;
        assert_eq!(kept().await, ["Q-4"]);
        assert_eq!(devices.quarantine_dropped.load(Ordering::Relaxed), 4);
        router.shutdown().await;
    }

    #[tokio::test]
    async fn a_silent_device_raises_device_offline_for_its_patient_and_data_resolves_it() {
        let publisher = Arc::new(CollectingPublisher::default());
        let store = Arc::new(MemoryStore::with_publisher(publisher.clone()));
        let t0 = time::macros::datetime!(2026-01-01 00:00 UTC);
        let clock = Arc::new(ManualClock(Mutex::new(t0)));
        let rules = Arc::new(FnRules(|_: &crate::ports::PatientView, _: &[&str]| Vec::new()));
        let router = Arc::new(Router::new(store.clone(), store.clone(), rules, clock.clone()).await.unwrap());
        let devices = DeviceRegistry::new(
            Arc::clone(&router),
            clock.clone(),
            DeviceConfig::default(),
            Arc::new(MemoryDeviceStore::default()),
        );
        let monitor = DeviceId("0012345678ABCDEF".into());
        let advance = |by: Duration| {
            let mut now = clock.0.lock().unwrap();
            *now += by;
        };
        // Reports every 60 s: the interval is learnt; silence past 3 x 60 s is offline.
        for _ in 0..4 {
            devices.seen(ChangedBy::HL7, &monitor, Some(attachment()), None).await;
            advance(Duration::seconds(60));
        }
        assert_eq!(devices.check_silence().await, 0, "one interval late is not offline");
        advance(Duration::seconds(125));
        assert_eq!(devices.check_silence().await, 1, "185 s silent: offline");
        assert_eq!(devices.check_silence().await, 0, "raised once");
        advance(Duration::seconds(30));
        devices.seen(ChangedBy::HL7, &monitor, None, None).await;
        router.shutdown().await;
        let published = publisher.published.lock().unwrap().clone();
        let changes: Vec<_> = published.iter().map(|c| (c.alert.rule.id.as_str(), c.alert.status)).collect();
        assert_eq!(changes, vec![("device.offline", AlertStatus::Active), ("device.offline", AlertStatus::Resolved)]);
        assert_eq!(published[0].alert.id, published[1].alert.id);
        assert_eq!(published[0].alert.finding.as_deref(), Some("0012345678ABCDEF"));
        assert_eq!(published[0].alert.patient.bed, "A");
        assert!(published[0].alert.summary.contains("expected every 60 s"), "{}", published[0].alert.summary);
        devices.shutdown().await;
    }

    #[tokio::test]
    async fn a_device_with_no_patient_or_no_interval_yet_never_goes_offline_and_the_map_is_bounded() {
        let store = Arc::new(MemoryStore::with_publisher(Arc::new(CollectingPublisher::default())));
        let t0 = time::macros::datetime!(2026-01-01 00:00 UTC);
        let clock = Arc::new(ManualClock(Mutex::new(t0)));
        let rules = Arc::new(FnRules(|_: &crate::ports::PatientView, _: &[&str]| Vec::new()));
        let router = Arc::new(Router::new(store.clone(), store.clone(), rules, clock.clone()).await.unwrap());
        let config = DeviceConfig { max_devices: 2, ..DeviceConfig::default() };
        let devices = DeviceRegistry::new(router, clock.clone(), config, Arc::new(MemoryDeviceStore::default()));
        devices.seen(ChangedBy::HL7, &DeviceId("no-patient".into()), None, None).await;
        devices.seen(ChangedBy::HL7, &DeviceId("once".into()), Some(attachment()), None).await;
        devices.seen(ChangedBy::HL7, &DeviceId("third".into()), Some(attachment()), None).await;
        assert_eq!((devices.device_count(), devices.untracked.load(Ordering::Relaxed)), (2, 1));
        *clock.0.lock().unwrap() += Duration::hours(2);
        devices.seen(ChangedBy::HL7, &DeviceId("no-patient".into()), None, None).await;
        *clock.0.lock().unwrap() += Duration::hours(2);
        assert_eq!(devices.check_silence().await, 0);
        assert!(store.events().is_empty());
        devices.shutdown().await;
    }
}
