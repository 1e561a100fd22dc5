//! The device registry: owns the device id -> actor map (bounded), starts a device's actor on
//! first sight (again if it failed), and stores the `device.offline` changes its actors decide
//! through the patient [`Router`], so they follow the patient's alert lifecycle.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use ractor::{Actor, ActorRef, ActorStatus};
use tokio::sync::oneshot;

use super::actor::{DeviceActor, DeviceArgs};
use super::messages::DeviceMsg;
use super::state::{Attachment, DeviceConfig};
use crate::model::{ClinicalEvent, DeviceId};
use crate::ports::Clock;
use crate::router::Router;

/// Routes device sightings and silence checks to one actor per device.
pub struct DeviceRegistry {
    actors: DashMap<DeviceId, ActorRef<DeviceMsg>>,
    config: DeviceConfig,
    clock: Arc<dyn Clock>,
    router: Arc<Router>,
    /// Sightings of devices beyond `max_devices`, not tracked (`/metrics`).
    pub untracked: AtomicU64,
}

impl DeviceRegistry {
    /// A registry storing its patients' device events through `router`.
    pub fn new(router: Arc<Router>, clock: Arc<dyn Clock>, config: DeviceConfig) -> Self {
        DeviceRegistry { actors: DashMap::new(), config, clock, router, untracked: AtomicU64::new(0) }
    }

    /// Devices tracked.
    pub fn device_count(&self) -> usize {
        self.actors.len()
    }

    /// `device` was heard from now, for `attachment`'s patient when the message named one.
    /// When it had been silent, its patient's `device.offline` is resolved and stored before
    /// this returns.
    pub async fn seen(&self, device: &DeviceId, attachment: Option<Attachment>) {
        let Some(actor) = self.actor_for(device).await else { return };
        let at = self.clock.now();
        let (tx, rx) = oneshot::channel();
        if actor.cast(DeviceMsg::Seen { at, attachment: attachment.map(Box::new), reply: tx.into() }).is_err() {
            return;
        }
        if let Ok(Some(event)) = rx.await {
            self.store(event).await;
        }
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
                self.store(event).await;
            }
        }
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
            tracing::error!(%patient, %error, "device silence change not stored");
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
        match Actor::spawn(None, DeviceActor, args).await {
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use time::Duration;

    use super::*;
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

    #[tokio::test]
    async fn a_silent_device_raises_device_offline_for_its_patient_and_data_resolves_it() {
        let publisher = Arc::new(CollectingPublisher::default());
        let store = Arc::new(MemoryStore::with_publisher(publisher.clone()));
        let t0 = time::macros::datetime!(2026-01-01 00:00 UTC);
        let clock = Arc::new(ManualClock(Mutex::new(t0)));
        let rules = Arc::new(FnRules(|_: &crate::ports::PatientView, _: &[&str]| Vec::new()));
        let router = Arc::new(Router::new(store.clone(), store.clone(), rules, clock.clone()).await.unwrap());
        let devices = DeviceRegistry::new(Arc::clone(&router), clock.clone(), DeviceConfig::default());
        let monitor = DeviceId("0012345678ABCDEF".into());
        let advance = |by: Duration| {
            let mut now = clock.0.lock().unwrap();
            *now += by;
        };
        // Reports every 60 s: the interval is learnt; silence past 3 x 60 s is offline.
        for _ in 0..4 {
            devices.seen(&monitor, Some(attachment())).await;
            advance(Duration::seconds(60));
        }
        assert_eq!(devices.check_silence().await, 0, "one interval late is not offline");
        advance(Duration::seconds(125));
        assert_eq!(devices.check_silence().await, 1, "185 s silent: offline");
        assert_eq!(devices.check_silence().await, 0, "raised once");
        advance(Duration::seconds(30));
        devices.seen(&monitor, None).await;
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
        let devices = DeviceRegistry::new(router, clock.clone(), config);
        devices.seen(&DeviceId("no-patient".into()), None).await;
        devices.seen(&DeviceId("once".into()), Some(attachment())).await;
        devices.seen(&DeviceId("third".into()), Some(attachment())).await;
        assert_eq!((devices.device_count(), devices.untracked.load(Ordering::Relaxed)), (2, 1));
        *clock.0.lock().unwrap() += Duration::hours(2);
        devices.seen(&DeviceId("no-patient".into()), None).await;
        *clock.0.lock().unwrap() += Duration::hours(2);
        assert_eq!(devices.check_silence().await, 0);
        assert!(store.events().is_empty());
        devices.shutdown().await;
    }
}
