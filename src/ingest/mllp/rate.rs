//! Connection-rate limit per peer address, in front of the slot table: a token bucket per
//! address (`burst` connections at once, then `per_sec` a second). A peer past its rate has its
//! new connection closed at once, before it takes a slot or evicts anyone: a reconnect loop
//! cannot churn the slot table or the accept loop. The table of addresses is bounded; when it is
//! full of addresses still being limited, an address not in it is let through (the slot caps
//! still hold), so a spread of source addresses cannot lock out a newcomer.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

/// Addresses tracked at once.
pub const MAX_PEERS_TRACKED: usize = 65_536;

/// The per-address connection-rate limiter.
#[derive(Debug)]
pub struct ConnectRate {
    per_sec: f64,
    burst: f64,
    max_peers: usize,
    peers: Mutex<HashMap<IpAddr, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl ConnectRate {
    /// `burst` connections at once per address, refilled at `per_sec`; `per_sec == 0` turns
    /// the limit off.
    pub fn new(per_sec: u32, burst: u32, max_peers: usize) -> Self {
        ConnectRate {
            per_sec: f64::from(per_sec),
            burst: f64::from(burst.max(1)),
            max_peers: max_peers.max(1),
            peers: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `peer` may open a connection at `now` (and, if so, count it).
    pub fn allow(&self, peer: IpAddr, now: Instant) -> bool {
        if self.per_sec <= 0.0 {
            return true;
        }
        let mut peers = self.peers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if !peers.contains_key(&peer) && peers.len() >= self.max_peers {
            // Forget the addresses whose bucket has refilled: they are not being limited.
            let (per_sec, burst) = (self.per_sec, self.burst);
            peers.retain(|_, b| b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * per_sec < burst);
            if peers.len() >= self.max_peers {
                return true;
            }
        }
        let bucket = peers.entry(peer).or_insert(Bucket { tokens: self.burst, at: now });
        let refilled = bucket.tokens + now.saturating_duration_since(bucket.at).as_secs_f64() * self.per_sec;
        bucket.tokens = refilled.min(self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_peer_gets_its_burst_then_its_rate_and_others_are_not_affected() {
        let rate = ConnectRate::new(10, 5, 16);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let t0 = Instant::now();
        let allowed = (0..20).filter(|_| rate.allow(a, t0)).count();
        assert_eq!(allowed, 5, "the burst");
        assert!(rate.allow(b, t0), "another address has its own bucket");
        // 10 a second: one more every 100 ms.
        assert!(!rate.allow(a, t0 + Duration::from_millis(50)));
        assert!(rate.allow(a, t0 + Duration::from_millis(160)));
        assert!(!rate.allow(a, t0 + Duration::from_millis(170)));
        // A second later the burst is back, and no more than it.
        let later = t0 + Duration::from_secs(2);
        assert_eq!((0..20).filter(|_| rate.allow(a, later)).count(), 5);
    }

    #[test]
    fn the_table_is_bounded_and_a_full_table_lets_newcomers_through() {
        let rate = ConnectRate::new(1, 1, 4);
        let t0 = Instant::now();
        for i in 0..4u8 {
            assert!(rate.allow(IpAddr::from([10, 0, 0, i]), t0));
        }
        // Four addresses each at their limit fill the table: a fifth is not tracked, and passes.
        let fifth = IpAddr::from([10, 0, 1, 0]);
        assert!(rate.allow(fifth, t0) && rate.allow(fifth, t0));
        assert_eq!(rate.peers.lock().unwrap().len(), 4);
        // Once their buckets refill they are forgotten, and the newcomer is tracked.
        let later = t0 + Duration::from_secs(5);
        assert!(rate.allow(fifth, later));
        assert!(!rate.allow(fifth, later), "tracked now: one a second");
        assert_eq!(rate.peers.lock().unwrap().len(), 1);
    }

    #[test]
    fn zero_turns_the_limit_off() {
        let rate = ConnectRate::new(0, 1, 4);
        let t0 = Instant::now();
        assert!((0..1000).all(|_| rate.allow(IpAddr::from([10, 0, 0, 1]), t0)));
    }
}
