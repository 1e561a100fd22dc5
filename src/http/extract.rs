//! The one claims extractor: every route that needs a caller takes [`Authenticated`], which
//! reads the bearer token (the `Authorization` header; on a WebSocket upgrade also `?token=`,
//! since browsers cannot set headers there), verifies it, and hands the handler its claims.
//! Refusals are rate-limited per peer address ([`AuthFailures`]) and audited in aggregate, so
//! an unauthenticated peer can neither hammer the verifier nor make the server write without
//! limit.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header;
use axum::http::request::Parts;

use super::AppState;
use super::error::ApiError;
use crate::audit::AuditLog;
use crate::auth::{AuthError, Claims};

/// The verified claims of the caller.
#[derive(Clone, Debug)]
pub struct Authenticated(pub Claims);

impl FromRequestParts<AppState> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
        if let Some(retry_after) = state.auth_failures.blocked(peer, Instant::now()) {
            return Err(ApiError::too_many_requests("too many failed authentication attempts", retry_after));
        }
        let verified = match token(parts) {
            None => Err(AuthError::Missing),
            Some(token) => state.auth.verify(&token),
        };
        verified.map(Authenticated).map_err(|e| {
            state.auth_failures.failed(peer, &e, Instant::now(), &state.audit);
            ApiError::from(e)
        })
    }
}

/// The request's token: the bearer header, or `?token=` on a WebSocket upgrade only (tokens
/// in REST URLs would end up in proxies' logs).
fn token(parts: &Parts) -> Option<String> {
    if let Some(token) = crate::auth::bearer(&parts.headers) {
        return Some(token.to_string());
    }
    let upgrade = parts.headers.get(header::UPGRADE).and_then(|v| v.to_str().ok());
    if !upgrade.is_some_and(|v| v.eq_ignore_ascii_case("websocket")) {
        return None;
    }
    let axum::extract::Query(query) = axum::extract::Query::<TokenQuery>::try_from_uri(&parts.uri).ok()?;
    query.token
}

/// `?token=` of a WebSocket upgrade.
#[derive(serde::Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

/// Failed authentications per peer address: a fixed one-minute window per peer that refuses
/// further attempts with 429 beyond `limit`, and one audit record per peer per window carrying
/// the count. Bounded: at most `max_peers` addresses are tracked; beyond that, new peers share
/// one overflow entry.
pub struct AuthFailures {
    limit: u32,
    window: Duration,
    max_peers: usize,
    peers: Mutex<std::collections::HashMap<IpAddr, Window>>,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    failures: u32,
    /// Failures not yet in an audit record (the first of a window is written at once).
    unaudited: u32,
    last_reason: String,
}

/// Where peers beyond `max_peers` are counted together; also a request without a known peer.
const OVERFLOW: IpAddr = IpAddr::V6(Ipv6Addr::UNSPECIFIED);

impl AuthFailures {
    /// At most `limit` failures per peer per `window`, tracking at most `max_peers` peers.
    pub fn new(limit: u32, window: Duration, max_peers: usize) -> Self {
        AuthFailures { limit: limit.max(1), window, max_peers: max_peers.max(1), peers: Mutex::default() }
    }

    /// Seconds to wait when `peer` has used up its failures in the current window; such an
    /// attempt is refused unverified and counted in the window's audit record.
    pub fn blocked(&self, peer: Option<IpAddr>, now: Instant) -> Option<u64> {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let window = peers.get_mut(&peer.unwrap_or(OVERFLOW))?;
        let ends = window.started + self.window;
        if window.failures < self.limit || now >= ends {
            return None;
        }
        window.unaudited = window.unaudited.saturating_add(1);
        window.last_reason = "too many failed attempts".into();
        Some(ends.saturating_duration_since(now).as_secs() + 1)
    }

    /// Count a failure of `peer`; audit it if it opens a window (with the count of the window
    /// before), otherwise leave it for the window's record.
    pub fn failed(&self, peer: Option<IpAddr>, reason: &AuthError, now: Instant, audit: &AuditLog) {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let mut key = peer.unwrap_or(OVERFLOW);
        if !peers.contains_key(&key) && peers.len() >= self.max_peers {
            let closed = self.close_windows(&mut peers, now);
            write_records(audit, closed);
            if peers.len() >= self.max_peers {
                key = OVERFLOW;
            }
        }
        let reason = reason.to_string();
        let window = peers.entry(key).or_insert_with(|| Window {
            started: now,
            failures: 0,
            unaudited: 0,
            last_reason: String::new(),
        });
        let mut record = None;
        if now >= window.started + self.window {
            // A new window: its first failure is written with what the last window left.
            record = Some((key, window.unaudited.saturating_add(1), reason.clone()));
            *window = Window { started: now, failures: 1, unaudited: 0, last_reason: reason };
        } else {
            window.failures = window.failures.saturating_add(1);
            if window.failures == 1 {
                record = Some((key, 1, reason.clone()));
            } else {
                window.unaudited = window.unaudited.saturating_add(1);
            }
            window.last_reason = reason;
        }
        drop(peers);
        write_records(audit, record);
    }

    /// Write what every window holds, closed or not (at shutdown), and forget every peer.
    pub fn flush_all(&self, audit: &AuditLog) {
        let records: Vec<_> = {
            let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
            peers.drain().filter(|(_, w)| w.unaudited > 0).map(|(peer, w)| (peer, w.unaudited, w.last_reason)).collect()
        };
        write_records(audit, records);
    }

    /// Write the records of windows that have closed with failures not yet audited, and forget
    /// those peers. Called every window by the HTTP server.
    pub fn flush(&self, now: Instant, audit: &AuditLog) {
        let closed = {
            let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
            self.close_windows(&mut peers, now)
        };
        write_records(audit, closed);
    }

    fn close_windows(
        &self,
        peers: &mut std::collections::HashMap<IpAddr, Window>,
        now: Instant,
    ) -> Vec<(IpAddr, u32, String)> {
        let mut records = Vec::new();
        peers.retain(|peer, w| {
            let open = now < w.started + self.window;
            if !open && w.unaudited > 0 {
                records.push((*peer, w.unaudited, std::mem::take(&mut w.last_reason)));
            }
            open
        });
        records
    }

    /// Peers tracked now (for tests and the bound).
    pub fn tracked(&self) -> usize {
        self.peers.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

fn write_records(audit: &AuditLog, records: impl IntoIterator<Item = (IpAddr, u32, String)>) {
    for (peer, count, reason) in records {
        let target = if peer == OVERFLOW { "peer unknown".to_string() } else { format!("peer {peer}") };
        tracing::info!(%peer, count, "failed authentication");
        audit.record("-", "-", "authenticate", &target, &format!("denied: {reason} (count {count})"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn audit_log() -> (AuditLog, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let db = fjall::Database::builder(dir.path()).open().unwrap();
        (AuditLog::open(db, crate::audit::AuditKey::new(&[7; 32])).unwrap(), dir)
    }

    fn records(audit: &AuditLog) -> Vec<crate::audit::AuditRecord> {
        audit.since(time::OffsetDateTime::UNIX_EPOCH, 1000)
    }

    #[test]
    fn failures_beyond_the_limit_are_refused_until_the_window_ends() {
        let (audit, _dir) = audit_log();
        let guard = AuthFailures::new(3, Duration::from_secs(60), 100);
        let peer = Some(IpAddr::from([10, 0, 0, 7]));
        let other = Some(IpAddr::from([10, 0, 0, 8]));
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(guard.blocked(peer, t0), None);
            guard.failed(peer, &AuthError::Invalid, t0, &audit);
        }
        let retry = guard.blocked(peer, t0 + Duration::from_secs(10)).expect("blocked after 3 failures");
        assert!((50..=51).contains(&retry), "{retry}");
        assert_eq!(guard.blocked(other, t0), None, "another peer is not blocked");
        assert_eq!(guard.blocked(peer, t0 + Duration::from_secs(61)), None, "the window ends");
        guard.flush_all(&audit);
        let written = records(&audit);
        assert_eq!(written.len(), 2, "{written:?}");
        assert_eq!(written[1].outcome, "denied: too many failed attempts (count 3)", "2 failures and 1 refusal");
    }

    #[test]
    fn failures_are_audited_once_per_peer_per_window_with_a_count() {
        let (audit, _dir) = audit_log();
        let guard = AuthFailures::new(1000, Duration::from_secs(60), 100);
        let peer = Some(IpAddr::from([192, 0, 2, 1]));
        let t0 = Instant::now();
        for i in 0..500 {
            guard.failed(peer, &AuthError::Expired, t0 + Duration::from_millis(i), &audit);
        }
        assert_eq!(records(&audit).len(), 1, "the first failure is written at once, the rest wait");
        guard.flush(t0 + Duration::from_secs(30), &audit);
        assert_eq!(records(&audit).len(), 1, "nothing is flushed while the window is open");
        guard.flush(t0 + Duration::from_secs(61), &audit);
        let written = records(&audit);
        assert_eq!(written.len(), 2);
        assert_eq!(written[0].outcome, "denied: token expired (count 1)");
        assert_eq!(written[1].outcome, "denied: token expired (count 499)");
        assert_eq!(written[1].target, "peer 192.0.2.1");
        assert_eq!(guard.tracked(), 0, "a closed window is forgotten");
    }

    #[test]
    fn the_peers_tracked_are_bounded_and_the_rest_share_one_entry() {
        let (audit, _dir) = audit_log();
        let guard = AuthFailures::new(5, Duration::from_secs(60), 4);
        let t0 = Instant::now();
        for i in 0..100u8 {
            guard.failed(Some(IpAddr::from([10, 1, 0, i])), &AuthError::Missing, t0, &audit);
        }
        assert_eq!(guard.tracked(), 5, "four peers and the overflow entry");
        assert!(guard.blocked(Some(IpAddr::from([10, 1, 0, 99])), t0).is_none(), "new peers are not tracked");
        assert!(guard.blocked(None, t0).is_some(), "the overflow entry took the failures of the rest");
    }

    #[test]
    fn the_token_comes_from_the_header_or_from_the_query_of_a_websocket_upgrade_only() {
        let parts = |uri: &str, upgrade: bool, bearer: Option<&str>| {
            let mut req = axum::http::Request::builder().uri(uri);
            if upgrade {
                req = req.header(header::UPGRADE, "websocket");
            }
            if let Some(b) = bearer {
                req = req.header(header::AUTHORIZATION, format!("Bearer {b}"));
            }
            req.body(()).unwrap().into_parts().0
        };
        assert_eq!(token(&parts("/api/alerts?token=abc", false, None)), None, "no tokens in REST URLs");
        assert_eq!(token(&parts("/ws?token=a%2Bb", true, None)).as_deref(), Some("a+b"));
        assert_eq!(token(&parts("/ws?token=q", true, Some("h"))).as_deref(), Some("h"), "the header wins");
        assert_eq!(token(&parts("/api/alerts", false, Some("h"))).as_deref(), Some("h"));
    }
}
