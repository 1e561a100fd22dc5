//! The alert hub: receives alert changes from the store once they are durable (already
//! numbered, in order) and fans them out to WebSocket sessions. A session that falls behind
//! the bounded channel is told to resync and backfills from the store by sequence number, so
//! nothing is lost silently.

pub mod escalation;
pub mod live;
pub mod webhooks;

use std::sync::Arc;

use tokio::sync::broadcast;
use vigil_actors::{AlertPublisher, SequencedAlert};

/// Fan-out of durable alert changes.
#[derive(Clone)]
pub struct AlertHub {
    tx: broadcast::Sender<Arc<SequencedAlert>>,
}

impl AlertHub {
    /// A hub whose subscribers may fall `capacity` changes behind before they must resync.
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(1));
        AlertHub { tx }
    }

    /// Receive changes published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<SequencedAlert>> {
        self.tx.subscribe()
    }
}

impl AlertPublisher for AlertHub {
    fn publish(&self, change: Arc<SequencedAlert>) {
        // No subscriber is not an error: the change is durable and will be served by `since`.
        let _ = self.tx.send(change);
    }
}
