//! MLLP connection slots, between accept and the connection task: a cap in total and per peer
//! address, and a preference for senders that deliver. A connection is *framed* once it has
//! completed a frame, *proven* once it has been sent an accepting ACK. When a cap is reached,
//! a connection that is not proven is closed to make room: one that has not completed a frame
//! if there is any (the oldest of the peer holding the most such), else the oldest framed one.
//! Only when every slot in question is proven is the newcomer refused. So connections that open
//! and dawdle (slow drip, half-sent frames, idle sockets) can delay a real sender by the time it
//! takes to evict one of them, never lock it out; and a peer that opens many cannot make
//! another peer's lone new connection the one evicted.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

/// The slot table.
#[derive(Debug)]
pub struct Slots {
    max_total: usize,
    max_per_peer: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    total: usize,
    per_peer: HashMap<IpAddr, usize>,
    /// No frame completed yet, oldest first (ids grow with time), each with its eviction signal.
    unframed: BTreeMap<u64, (IpAddr, Arc<Notify>)>,
    /// The ids in `unframed`, per peer, oldest first.
    unframed_by_peer: HashMap<IpAddr, BTreeSet<u64>>,
    /// A frame completed, no accepting ACK yet.
    framed: BTreeMap<u64, (IpAddr, Arc<Notify>)>,
    /// Proven: never evicted.
    proven: HashMap<u64, IpAddr>,
}

/// What [`Slots::admit`] decided.
#[derive(Debug)]
pub enum Admission {
    /// The connection may proceed; `evicted` when another connection was closed for it.
    Admitted {
        /// Held for the life of the connection.
        slot: Slot,
        /// Whether an unproven connection was evicted to make room.
        evicted: bool,
    },
    /// No room: every slot that could be freed is held by a proven connection.
    Refused,
}

/// One held slot; dropping it frees it (unless it was evicted, which freed it already).
#[derive(Debug)]
pub struct Slot {
    slots: Arc<Slots>,
    id: u64,
    evict: Arc<Notify>,
    framed: AtomicBool,
    proven: AtomicBool,
}

impl Slots {
    /// At most `max_total` connections, `max_per_peer` from one address.
    pub fn new(max_total: usize, max_per_peer: usize) -> Self {
        Slots { max_total: max_total.max(1), max_per_peer: max_per_peer.max(1), inner: Mutex::default() }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The table stays consistent at every await-free step; a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Connections held now (in total, from `peer`).
    pub fn held(&self, peer: IpAddr) -> (usize, usize) {
        let inner = self.lock();
        (inner.total, inner.per_peer.get(&peer).copied().unwrap_or(0))
    }

    /// Admit a connection from `peer`, evicting the oldest unproven connection (of that peer
    /// when the peer is at its cap, of anyone when the total is) if that is what makes room.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Admission {
        let mut inner = self.lock();
        let mut evicted = false;
        if inner.per_peer.get(&peer).copied().unwrap_or(0) >= self.max_per_peer {
            let own_unframed = inner.unframed_by_peer.get(&peer).and_then(|ids| ids.first().copied());
            let own_framed = || inner.framed.iter().find(|(_, (p, _))| *p == peer).map(|(id, _)| *id);
            let Some(id) = own_unframed.or_else(own_framed) else {
                return Admission::Refused;
            };
            inner.evict(id);
            evicted = true;
        }
        if inner.total >= self.max_total {
            // The peer holding the most connections without a frame gives up its oldest.
            let crowded = inner
                .unframed_by_peer
                .iter()
                .max_by_key(|(_, ids)| (ids.len(), std::cmp::Reverse(ids.first().copied())))
                .and_then(|(_, ids)| ids.first().copied());
            let Some(id) = crowded.or_else(|| inner.framed.keys().next().copied()) else {
                return Admission::Refused;
            };
            inner.evict(id);
            evicted = true;
        }
        let id = inner.next_id;
        inner.next_id += 1;
        inner.total += 1;
        *inner.per_peer.entry(peer).or_insert(0) += 1;
        let evict = Arc::new(Notify::new());
        inner.unframed.insert(id, (peer, Arc::clone(&evict)));
        inner.unframed_by_peer.entry(peer).or_default().insert(id);
        drop(inner);
        let slot =
            Slot { slots: Arc::clone(self), id, evict, framed: AtomicBool::new(false), proven: AtomicBool::new(false) };
        Admission::Admitted { slot, evicted }
    }
}

impl Inner {
    /// Take `id` out of the unframed tables.
    fn take_unframed(&mut self, id: u64) -> Option<(IpAddr, Arc<Notify>)> {
        let (peer, signal) = self.unframed.remove(&id)?;
        if let Some(ids) = self.unframed_by_peer.get_mut(&peer) {
            ids.remove(&id);
            if ids.is_empty() {
                self.unframed_by_peer.remove(&peer);
            }
        }
        Some((peer, signal))
    }

    fn evict(&mut self, id: u64) {
        if let Some((peer, signal)) = self.take_unframed(id).or_else(|| self.framed.remove(&id)) {
            self.release(peer);
            // A stored permit: the connection sees it even if it is not waiting yet.
            signal.notify_one();
        }
    }

    fn release(&mut self, peer: IpAddr) {
        self.total = self.total.saturating_sub(1);
        if let Some(n) = self.per_peer.get_mut(&peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_peer.remove(&peer);
            }
        }
    }
}

impl Slot {
    /// The connection has completed a frame: evicted only after those that have not.
    pub fn frame_completed(&self) {
        if self.framed.swap(true, Ordering::Relaxed) {
            return;
        }
        let mut inner = self.slots.lock();
        if let Some(entry) = inner.take_unframed(self.id) {
            inner.framed.insert(self.id, entry);
        }
    }

    /// The connection has delivered a message: it is no longer evicted for newcomers.
    pub fn prove(&self) {
        self.frame_completed();
        if self.proven.swap(true, Ordering::Relaxed) {
            return;
        }
        let mut inner = self.slots.lock();
        if let Some((peer, _)) = inner.framed.remove(&self.id) {
            inner.proven.insert(self.id, peer);
        }
    }

    /// Completes when the connection has been evicted to make room for another.
    pub async fn evicted(&self) {
        self.evict.notified().await
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut inner = self.slots.lock();
        let peer = match inner.take_unframed(self.id).or_else(|| inner.framed.remove(&self.id)) {
            Some((peer, _)) => Some(peer),
            None => inner.proven.remove(&self.id),
        };
        if let Some(peer) = peer {
            inner.release(peer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    fn admitted(a: Admission) -> (Slot, bool) {
        match a {
            Admission::Admitted { slot, evicted } => (slot, evicted),
            Admission::Refused => panic!("refused"),
        }
    }

    #[tokio::test]
    async fn at_the_cap_the_oldest_unproven_connection_makes_room_and_proven_ones_stay() {
        let slots = Arc::new(Slots::new(3, 10));
        let (first, _) = admitted(slots.admit(ip(1)));
        let (second, _) = admitted(slots.admit(ip(1)));
        let (third, _) = admitted(slots.admit(ip(2)));
        first.prove();
        // Full: the oldest unproven (the second) is evicted and told so.
        let (fourth, evicted) = admitted(slots.admit(ip(3)));
        assert!(evicted);
        tokio::time::timeout(std::time::Duration::from_secs(1), second.evicted()).await.expect("eviction signalled");
        assert_eq!(slots.held(ip(1)), (3, 1));
        third.prove();
        fourth.prove();
        // Every slot proven: a newcomer is refused, nobody is evicted.
        assert!(matches!(slots.admit(ip(4)), Admission::Refused));
        // Dropping an evicted slot does not free a second time.
        drop(second);
        assert_eq!(slots.held(ip(1)).0, 3);
        drop(first);
        assert_eq!(slots.held(ip(1)), (2, 0));
        let (_fifth, evicted) = admitted(slots.admit(ip(4)));
        assert!(!evicted);
    }

    #[tokio::test]
    async fn a_peer_at_its_cap_evicts_its_own_unproven_connections_not_others() {
        let slots = Arc::new(Slots::new(100, 2));
        let (other, _) = admitted(slots.admit(ip(9)));
        let (a, _) = admitted(slots.admit(ip(1)));
        let (b, _) = admitted(slots.admit(ip(1)));
        a.prove();
        let (_c, evicted) = admitted(slots.admit(ip(1)));
        assert!(evicted);
        tokio::time::timeout(std::time::Duration::from_secs(1), b.evicted()).await.expect("b evicted");
        assert_eq!(slots.held(ip(1)), (3, 2));
        assert_eq!(slots.held(ip(9)).1, 1, "another peer's connection is untouched");
        drop(other);
    }

    #[tokio::test]
    async fn the_peer_crowding_the_table_loses_a_connection_not_a_newcomer_nor_a_framed_one() {
        let slots = Arc::new(Slots::new(4, 10));
        let (lone, _) = admitted(slots.admit(ip(1)));
        let (framed, _) = admitted(slots.admit(ip(2)));
        framed.frame_completed();
        let (_crowd_a, _) = admitted(slots.admit(ip(3)));
        let (crowd_b, _) = admitted(slots.admit(ip(3)));
        // The oldest unframed connection is `lone`, but peer 3 holds more unframed ones.
        let (_newcomer, evicted) = admitted(slots.admit(ip(4)));
        assert!(evicted);
        assert_eq!(slots.held(ip(1)).1, 1, "the lone connection stays");
        assert_eq!(slots.held(ip(3)).1, 1, "the crowding peer gave one up");
        // Ties go to the oldest: peers 1, 3 and 4 hold one unframed each; peer 1's is oldest.
        let (_next, evicted) = admitted(slots.admit(ip(5)));
        assert!(evicted);
        tokio::time::timeout(std::time::Duration::from_secs(1), lone.evicted()).await.expect("lone evicted");
        assert_eq!(slots.held(ip(2)).1, 1, "the framed connection outlasts every unframed one");
        drop(crowd_b);
    }

    #[test]
    fn counts_return_to_zero_whatever_the_order_of_events() {
        let slots = Arc::new(Slots::new(4, 2));
        let mut held = Vec::new();
        for round in 0..200u32 {
            let peer = ip((round % 3) as u8);
            if let Admission::Admitted { slot, .. } = slots.admit(peer) {
                if round % 5 == 0 {
                    slot.prove();
                } else if round % 3 == 0 {
                    slot.frame_completed();
                }
                held.push(slot);
            }
            if round % 7 == 0 && !held.is_empty() {
                held.remove(0);
            }
            let (total, _) = slots.held(peer);
            assert!(total <= 4);
        }
        held.clear();
        assert_eq!(slots.held(ip(0)), (0, 0));
        let inner = slots.lock();
        assert!(inner.per_peer.is_empty() && inner.unframed.is_empty() && inner.unframed_by_peer.is_empty());
        assert!(inner.framed.is_empty() && inner.proven.is_empty());
    }
}
