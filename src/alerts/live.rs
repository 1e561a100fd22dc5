//! Live vitals: observations as patient actors apply them, fanned out to the consoles that
//! have that patient open. Not durable and allowed to drop under lag — the store holds every
//! value and the patient view reloads its trends on reconnect.

use std::sync::Arc;

use tokio::sync::broadcast;
use vigil_actors::{LiveFeed, Location, Observation, PatientId};

/// Observations of one patient from one event.
#[derive(Debug, Clone)]
pub struct LiveObservations {
    /// Who.
    pub patient: PatientId,
    /// Their unit, for access checks.
    pub unit: String,
    /// What.
    pub observations: Vec<Observation>,
}

/// The fan-out.
#[derive(Clone)]
pub struct LiveHub {
    tx: broadcast::Sender<Arc<LiveObservations>>,
}

impl LiveHub {
    /// A hub holding at most `capacity` undelivered updates per subscriber.
    pub fn new(capacity: usize) -> Self {
        LiveHub { tx: broadcast::channel(capacity.max(1)).0 }
    }

    /// Receive updates from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<LiveObservations>> {
        self.tx.subscribe()
    }
}

impl LiveFeed for LiveHub {
    fn observations(&self, patient: &PatientId, location: &Location, observations: &[Observation]) {
        if self.tx.receiver_count() == 0 {
            return;
        }
        let update = LiveObservations {
            patient: patient.clone(),
            unit: location.unit.clone(),
            observations: observations.to_vec(),
        };
        let _ = self.tx.send(Arc::new(update));
    }
}
