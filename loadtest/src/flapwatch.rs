//! Flap counter: watches the console WebSocket (schemas/ws/) and counts alerts raised again
//! soon after being resolved: a new alert id for the same patient, rule and finding (when the
//! alert names one) within `window` of the previous one's resolution. A flapping alert is a
//! new, unacknowledged alert and a new beep for a condition the clinician has already seen.
//!
//! [`FlapCounter`] is the core: feed it server frames (as JSON) and read its [`FlapReport`].
//! [`run_flapwatch`] connects, subscribes and feeds it for a given time, reconnecting with
//! `since` so no change is missed. Only opaque patient ids and rule ids are logged.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Alerts remembered at most (oldest forgotten first); a forgotten alert that changes again is
/// taken as new, so the bound is far above any ward's open alerts.
const MAX_TRACKED: usize = 100_000;
/// Gaps kept for the median at most (the count goes on beyond it).
const MAX_GAPS: usize = 100_000;
/// Rules counted one by one at most (a rule pack has a handful).
const MAX_RULES: usize = 256;

/// (patient id, rule id, finding): what one alert is about.
type Key = (String, String, Option<String>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Open,
    Resolved,
}

#[derive(Debug, Clone)]
struct Resolution {
    alert_id: String,
    at: OffsetDateTime,
    by_hand: bool,
}

/// Totals of one watch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FlapReport {
    /// Alert frames received (snapshot entries not included).
    pub frames: u64,
    /// Alert frames marked `notify` (a beep on the console).
    pub notified: u64,
    /// Alert frames whose details say the score was `partial` (an input missing or stale).
    pub partial: u64,
    /// `partial` per rule id.
    pub partial_by_rule: BTreeMap<String, u64>,
    /// New alert ids seen open (alerts already open in the first snapshot are not counted).
    pub raised: u64,
    /// Alerts resolved by their rule (`resolved.by` = `rule:<id>`).
    pub resolved_by_rule: u64,
    /// Alerts resolved by a clinician.
    pub resolved_by_hand: u64,
    /// New alerts raised within the window after an alert for the same patient, rule and
    /// finding was resolved.
    pub re_raised: u64,
    /// Of `re_raised`, those whose predecessor was resolved by a clinician.
    pub re_raised_after_hand: u64,
    /// `re_raised` per rule id.
    pub re_raised_by_rule: BTreeMap<String, u64>,
    /// Resolved alerts that came back under the same id (an episode reopened, not a new alert).
    pub reopened: u64,
    /// Median seconds from resolution to the new alert, over the re-raised ones.
    pub median_gap_s: Option<f64>,
    /// Largest such gap, seconds.
    pub max_gap_s: Option<f64>,
    /// The window, seconds.
    pub window_s: f64,
}

impl FlapReport {
    /// A short Markdown table.
    pub fn to_markdown(&self) -> String {
        let gap = |g: Option<f64>| g.map_or_else(|| "-".to_owned(), |g| format!("{g:.1} s"));
        let mut out = String::new();
        let _ = writeln!(out, "| flapwatch (window {} s) | count |", self.window_s);
        let _ = writeln!(out, "|---|---:|");
        let by_rule = self.re_raised_by_rule.iter().map(|(r, n)| format!("{r} {n}")).collect::<Vec<_>>().join(", ");
        let partial = self.partial_by_rule.iter().map(|(r, n)| format!("{r} {n}")).collect::<Vec<_>>().join(", ");
        let rows: [(&str, String); 13] = [
            ("alert frames", self.frames.to_string()),
            ("of which with a partial score", self.partial.to_string()),
            ("partial, per rule", if partial.is_empty() { "-".to_owned() } else { partial }),
            ("notified (beeps)", self.notified.to_string()),
            ("raised (new alert ids)", self.raised.to_string()),
            ("resolved by rule", self.resolved_by_rule.to_string()),
            ("resolved by hand", self.resolved_by_hand.to_string()),
            ("**raised again within the window**", format!("**{}**", self.re_raised)),
            ("of which after a manual resolve", self.re_raised_after_hand.to_string()),
            ("raised again, per rule", if by_rule.is_empty() { "-".to_owned() } else { by_rule }),
            ("reopened (same id)", self.reopened.to_string()),
            ("median gap resolve -> re-raise", gap(self.median_gap_s)),
            ("max gap", gap(self.max_gap_s)),
        ];
        for (k, v) in rows {
            let _ = writeln!(out, "| {k} | {v} |");
        }
        out
    }
}

/// Counts flaps from server frames; see the module docs.
#[derive(Debug)]
pub struct FlapCounter {
    window: time::Duration,
    alerts: HashMap<String, (Key, Status)>,
    order: VecDeque<String>,
    resolutions: HashMap<Key, Resolution>,
    gaps: Vec<f64>,
    report: FlapReport,
    /// Sequence number of the last frame that carried one.
    last_seq: Option<u64>,
}

/// One more for `rule`, within [`MAX_RULES`] rules.
fn count(by_rule: &mut BTreeMap<String, u64>, rule: String) {
    if by_rule.len() < MAX_RULES || by_rule.contains_key(&rule) {
        *by_rule.entry(rule).or_default() += 1;
    }
}

fn text(v: &Value, path: &[&str]) -> Option<String> {
    let mut v = v;
    for p in path {
        v = v.get(p)?;
    }
    v.as_str().map(str::to_owned)
}

fn timestamp(v: &Value, path: &[&str]) -> Option<OffsetDateTime> {
    text(v, path).and_then(|t| OffsetDateTime::parse(&t, &Rfc3339).ok())
}

/// The finding an alert names (`finding` on the alert, or in its details), if any.
fn finding(alert: &Value) -> Option<String> {
    let f = alert.get("finding").filter(|f| !f.is_null()).or_else(|| alert.get("details")?.get("finding"))?;
    match f {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Null => None,
        Value::String(_) => None,
        other => Some(other.to_string()),
    }
}

impl FlapCounter {
    /// A counter for re-raises within `window` of a resolution.
    pub fn new(window: Duration) -> Self {
        let window = time::Duration::try_from(window).unwrap_or(time::Duration::MAX);
        FlapCounter {
            window,
            alerts: HashMap::new(),
            order: VecDeque::new(),
            resolutions: HashMap::new(),
            gaps: Vec::new(),
            report: FlapReport { window_s: window.as_seconds_f64(), ..FlapReport::default() },
            last_seq: None,
        }
    }

    /// The sequence number to resubscribe `since` after a reconnect.
    pub fn last_seq(&self) -> Option<u64> {
        self.last_seq
    }

    /// Feeds one server frame (any type; those without alerts only advance `seq`).
    pub fn on_frame(&mut self, frame: &Value) {
        if let Some(seq) = frame.get("seq").and_then(Value::as_u64) {
            self.last_seq = Some(self.last_seq.map_or(seq, |s| s.max(seq)));
        }
        match frame.get("type").and_then(Value::as_str) {
            Some("snapshot") => {
                for alert in frame.get("alerts").and_then(Value::as_array).into_iter().flatten() {
                    self.known(alert);
                }
            }
            Some("alert") => {
                if let Some(alert) = frame.get("alert") {
                    self.report.frames += 1;
                    if frame.get("notify").and_then(Value::as_bool) == Some(true) {
                        self.report.notified += 1;
                    }
                    if alert.get("details").and_then(|d| d.get("partial")).and_then(Value::as_bool) == Some(true) {
                        self.report.partial += 1;
                        if let Some(rule) = text(alert, &["rule", "id"]) {
                            count(&mut self.report.partial_by_rule, rule);
                        }
                    }
                    self.on_alert(alert);
                }
            }
            _ => {}
        }
    }

    /// Feeds one frame as text; malformed text is ignored (and counted by nobody: the server
    /// is the one under test, not the JSON parser).
    pub fn on_text(&mut self, text: &str) {
        if let Ok(v) = serde_json::from_str::<Value>(text) {
            self.on_frame(&v);
        }
    }

    /// The totals so far.
    pub fn report(&self) -> FlapReport {
        let mut r = self.report.clone();
        let mut gaps = self.gaps.clone();
        gaps.sort_by(f64::total_cmp);
        r.median_gap_s = match gaps.len() {
            0 => None,
            n if n % 2 == 1 => Some(gaps[n / 2]),
            n => Some((gaps[n / 2 - 1] + gaps[n / 2]) / 2.0),
        };
        r.max_gap_s = gaps.last().copied();
        r
    }

    fn key(alert: &Value) -> Option<(String, Key, Status)> {
        let id = text(alert, &["id"])?;
        let patient = text(alert, &["patient", "id"])?;
        let rule = text(alert, &["rule", "id"])?;
        let status = if text(alert, &["status"])? == "resolved" { Status::Resolved } else { Status::Open };
        Some((id, (patient, rule, finding(alert)), status))
    }

    /// An alert that was open before the watch began: remembered, not counted.
    fn known(&mut self, alert: &Value) {
        if let Some((id, key, status)) = Self::key(alert) {
            self.track(id, key, status);
        }
    }

    fn track(&mut self, id: String, key: Key, status: Status) {
        if self.alerts.insert(id.clone(), (key, status)).is_none() {
            self.order.push_back(id);
            while self.order.len() > MAX_TRACKED {
                if let Some(old) = self.order.pop_front() {
                    self.alerts.remove(&old);
                }
            }
        }
    }

    fn on_alert(&mut self, alert: &Value) {
        let Some((id, key, status)) = Self::key(alert) else { return };
        let before = self.alerts.get(&id).map(|(_, s)| *s);
        match (before, status) {
            (None, _) => {
                self.report.raised += 1;
                self.check_re_raise(&id, &key, alert);
                if status == Status::Resolved {
                    // Raised and resolved between two frames we saw (e.g. in a backfill).
                    self.resolved(&id, &key, alert);
                }
            }
            (Some(Status::Open), Status::Resolved) => self.resolved(&id, &key, alert),
            (Some(Status::Resolved), Status::Open) => {
                self.report.reopened += 1;
                if self.resolutions.get(&key).is_some_and(|r| r.alert_id == id) {
                    self.resolutions.remove(&key);
                }
            }
            _ => {}
        }
        self.track(id.clone(), key, status);
        if let Some(entry) = self.alerts.get_mut(&id) {
            entry.1 = status;
        }
    }

    fn check_re_raise(&mut self, id: &str, key: &Key, alert: &Value) {
        let Some(previous) = self.resolutions.get(key) else { return };
        if previous.alert_id == id {
            return;
        }
        let Some(raised_at) = timestamp(alert, &["raised_at"]) else { return };
        let gap = raised_at - previous.at;
        if gap >= time::Duration::ZERO && gap <= self.window {
            self.report.re_raised += 1;
            if previous.by_hand {
                self.report.re_raised_after_hand += 1;
            }
            count(&mut self.report.re_raised_by_rule, key.1.clone());
            if self.gaps.len() < MAX_GAPS {
                self.gaps.push(gap.as_seconds_f64());
            }
            tracing::info!(patient = %key.0, rule = %key.1, gap_s = gap.as_seconds_f64(), by_hand = previous.by_hand, "raised again after resolve");
        }
        // The new alert supersedes the resolution: a third alert is measured against the
        // second one's resolution, not the first's.
        self.resolutions.remove(key);
    }

    fn resolved(&mut self, id: &str, key: &Key, alert: &Value) {
        let by = text(alert, &["resolved", "by"]).unwrap_or_default();
        let by_hand = !by.starts_with("rule:");
        if by_hand {
            self.report.resolved_by_hand += 1;
        } else {
            self.report.resolved_by_rule += 1;
        }
        let Some(at) = timestamp(alert, &["resolved", "at"]).or_else(|| timestamp(alert, &["updated_at"])) else {
            return;
        };
        if self.resolutions.len() >= MAX_TRACKED {
            // Only resolutions inside the window can still count.
            let horizon = at - self.window;
            self.resolutions.retain(|_, r| r.at >= horizon);
        }
        if self.resolutions.len() < MAX_TRACKED {
            self.resolutions.insert(key.clone(), Resolution { alert_id: id.to_owned(), at, by_hand });
        }
    }
}

/// What to watch.
#[derive(Debug, Clone)]
pub struct FlapwatchConfig {
    /// `ws://host:port/ws`.
    pub url: String,
    /// Console token (sent as `Authorization: Bearer`).
    pub token: String,
    /// Units to subscribe to; empty = every unit in the token.
    pub units: Vec<String>,
    /// How long to watch.
    pub duration: Duration,
    /// Re-raise window.
    pub window: Duration,
}

/// Watches for `cfg.duration`, reconnecting (with `since`) when the connection drops, then
/// returns the totals. Fails only when the first connection cannot be made.
pub async fn run_flapwatch(cfg: FlapwatchConfig) -> anyhow::Result<FlapReport> {
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

    let deadline = tokio::time::Instant::now() + cfg.duration;
    let mut counter = FlapCounter::new(cfg.window);
    let mut connected_once = false;
    let mut backoff = Duration::from_millis(250);
    while tokio::time::Instant::now() < deadline {
        let mut request = cfg.url.as_str().into_client_request().context("bad WebSocket URL")?;
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {}", cfg.token).parse().context("token is not a valid header value")?,
        );
        let ws = match tokio::time::timeout_at(deadline, tokio_tungstenite::connect_async(request)).await {
            Err(_) => break,
            Ok(Ok((ws, _))) => ws,
            Ok(Err(e)) if !connected_once => return Err(e).with_context(|| format!("connecting to {}", cfg.url)),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "reconnect failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        connected_once = true;
        backoff = Duration::from_millis(250);
        let (mut tx, mut rx) = ws.split();
        let mut sub = serde_json::json!({ "type": "subscribe", "units": cfg.units });
        if let Some(since) = counter.last_seq() {
            sub["since"] = since.into();
        }
        tx.send(Message::Text(sub.to_string().into())).await.context("sending subscribe")?;
        loop {
            let next = tokio::time::timeout_at(deadline, rx.next()).await;
            match next {
                Err(_) => {
                    let _ = tx.send(Message::Close(None)).await;
                    return Ok(counter.report());
                }
                Ok(Some(Ok(Message::Text(text)))) => {
                    if text.contains("\"type\":\"error\"") {
                        tracing::warn!(frame = %text, "server error frame");
                    }
                    counter.on_text(&text);
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => {
                    tracing::warn!(error = %e, "connection lost; reconnecting");
                    break;
                }
                Ok(None) => {
                    tracing::warn!("connection closed; reconnecting");
                    break;
                }
            }
        }
    }
    Ok(counter.report())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn alert(
        id: &str,
        patient: &str,
        rule: &str,
        status: &str,
        raised_at: &str,
        resolved: Option<(&str, &str)>,
    ) -> Value {
        json!({
            "id": id,
            "patient": { "id": patient, "mrn": "SIM1", "name": "Test, Alpha", "unit": "ICU", "room": "01", "bed": "A" },
            "rule": { "id": rule, "version": "v" },
            "severity": "high", "status": status, "score": 5, "summary": "s", "details": {},
            "raised_at": raised_at, "updated_at": raised_at, "acknowledged": null,
            "resolved": resolved.map(|(by, at)| json!({ "by": by, "at": at, "reason": "r" })),
            "escalation": null, "comments": [],
        })
    }

    fn frame(seq: u64, a: Value) -> Value {
        json!({ "type": "alert", "seq": seq, "notify": a["status"] == "active", "alert": a })
    }

    fn counter() -> FlapCounter {
        FlapCounter::new(Duration::from_secs(60))
    }

    #[test]
    fn a_new_alert_soon_after_a_rule_resolve_is_a_flap() {
        let mut c = counter();
        c.on_frame(&frame(1, alert("a1", "p1", "news2", "active", "2026-01-01T10:00:00Z", None)));
        c.on_frame(&frame(
            2,
            alert(
                "a1",
                "p1",
                "news2",
                "resolved",
                "2026-01-01T10:00:00Z",
                Some(("rule:news2", "2026-01-01T10:01:00Z")),
            ),
        ));
        c.on_frame(&frame(3, alert("a2", "p1", "news2", "active", "2026-01-01T10:01:06Z", None)));
        // Resolved again, back 20 s later: a second flap.
        c.on_frame(&frame(
            4,
            alert(
                "a2",
                "p1",
                "news2",
                "resolved",
                "2026-01-01T10:01:06Z",
                Some(("rule:news2", "2026-01-01T10:02:00Z")),
            ),
        ));
        c.on_frame(&frame(5, alert("a3", "p1", "news2", "active", "2026-01-01T10:02:20Z", None)));
        let r = c.report();
        assert_eq!((r.raised, r.resolved_by_rule, r.re_raised, r.re_raised_after_hand), (3, 2, 2, 0));
        assert_eq!(r.median_gap_s, Some(13.0));
        assert_eq!(r.max_gap_s, Some(20.0));
        assert_eq!(r.frames, 5);
        assert_eq!(r.notified, 3);
        assert_eq!(r.re_raised_by_rule.get("news2"), Some(&2));
        assert_eq!(r.partial, 0);
        assert_eq!(c.last_seq(), Some(5));
    }

    #[test]
    fn outside_the_window_other_patient_rule_or_finding_are_not_flaps() {
        let mut c = counter();
        let resolved = |id: &str, p: &str, rule: &str| {
            alert(id, p, rule, "resolved", "2026-01-01T10:00:00Z", Some(("rule:x", "2026-01-01T10:01:00Z")))
        };
        for (i, (p, rule)) in [("p1", "news2"), ("p2", "news2"), ("p1", "sirs")].iter().enumerate() {
            let id = format!("old{i}");
            c.on_frame(&frame(1, alert(&id, p, rule, "active", "2026-01-01T10:00:00Z", None)));
            c.on_frame(&frame(2, resolved(&id, p, rule)));
        }
        // 61 s later: outside the window.
        c.on_frame(&frame(3, alert("n1", "p1", "news2", "active", "2026-01-01T10:02:01Z", None)));
        // Another patient's and another rule's alerts were resolved, not these.
        c.on_frame(&frame(4, alert("n2", "p3", "news2", "active", "2026-01-01T10:01:05Z", None)));
        c.on_frame(&frame(5, alert("n3", "p2", "qsofa", "active", "2026-01-01T10:01:05Z", None)));
        // A different finding of the same rule and patient is a distinct alert.
        let mut ddi = alert("d1", "p4", "med_ddi", "active", "2026-01-01T10:00:00Z", None);
        ddi["finding"] = json!("warfarin+aspirin");
        c.on_frame(&frame(6, ddi.clone()));
        let mut ddi_resolved = ddi.clone();
        ddi_resolved["status"] = json!("resolved");
        ddi_resolved["resolved"] = json!({ "by": "rule:med_ddi", "at": "2026-01-01T10:01:00Z", "reason": "stopped" });
        c.on_frame(&frame(7, ddi_resolved));
        let mut other = alert("d2", "p4", "med_ddi", "active", "2026-01-01T10:01:10Z", None);
        other["finding"] = json!("ssri+maoi");
        c.on_frame(&frame(8, other));
        assert_eq!(c.report().re_raised, 0);
        // The same finding again within the window is a flap (finding read from details too).
        let mut again = alert("d3", "p4", "med_ddi", "active", "2026-01-01T10:01:30Z", None);
        again["details"] = json!({ "finding": "warfarin+aspirin" });
        c.on_frame(&frame(9, again));
        assert_eq!(c.report().re_raised, 1);
    }

    #[test]
    fn manual_resolves_reopens_acks_and_snapshots() {
        let mut c = counter();
        // Open before the watch began: known, not counted as raised.
        c.on_frame(&json!({ "type": "snapshot", "seq": 10, "alerts": [alert("s1", "p1", "news2", "active", "2026-01-01T09:00:00Z", None)] }));
        assert_eq!(c.report().raised, 0);
        // Acknowledged: an update, not a new alert.
        let mut acked = alert("s1", "p1", "news2", "acknowledged", "2026-01-01T09:00:00Z", None);
        acked["acknowledged"] = json!({ "by": "nurse", "at": "2026-01-01T10:00:00Z" });
        c.on_frame(&frame(11, acked));
        // Resolved by a clinician, back 2 s later under a new id.
        c.on_frame(&frame(
            12,
            alert("s1", "p1", "news2", "resolved", "2026-01-01T09:00:00Z", Some(("nurse", "2026-01-01T10:00:10Z"))),
        ));
        c.on_frame(&frame(13, alert("s2", "p1", "news2", "active", "2026-01-01T10:00:12Z", None)));
        // A rule resolve followed by the same id coming back is a reopened episode.
        c.on_frame(&frame(
            14,
            alert(
                "s2",
                "p1",
                "news2",
                "resolved",
                "2026-01-01T10:00:12Z",
                Some(("rule:news2", "2026-01-01T10:01:00Z")),
            ),
        ));
        c.on_frame(&frame(15, alert("s2", "p1", "news2", "active", "2026-01-01T10:00:12Z", None)));
        // Frames replayed after a reconnect change nothing.
        c.on_frame(&frame(15, alert("s2", "p1", "news2", "active", "2026-01-01T10:00:12Z", None)));
        let r = c.report();
        assert_eq!(
            (r.raised, r.resolved_by_hand, r.resolved_by_rule, r.re_raised, r.re_raised_after_hand, r.reopened),
            (1, 1, 1, 1, 1, 1)
        );
        assert_eq!(r.median_gap_s, Some(2.0));
        // Other frames and garbage are ignored; seq still advances.
        c.on_frame(&json!({ "type": "heartbeat", "seq": 20 }));
        c.on_text("not json");
        c.on_frame(&frame(21, json!({ "id": 5 })));
        assert_eq!(c.report().raised, 1);
        assert_eq!(c.last_seq(), Some(21));
        let mut partial = alert("s2", "p1", "news2", "active", "2026-01-01T10:00:12Z", None);
        partial["details"] = json!({ "partial": true, "score": 3 });
        c.on_frame(&frame(22, partial));
        assert_eq!(c.report().partial, 1);
        assert_eq!(c.report().partial_by_rule.get("news2"), Some(&1));
        let md = c.report().to_markdown();
        assert!(md.contains("| **raised again within the window** | **1** |"), "{md}");
        assert!(md.contains("| raised again, per rule | news2 1 |"), "{md}");
    }

    #[test]
    fn an_alert_first_seen_resolved_counts_both_ways() {
        let mut c = counter();
        c.on_frame(&frame(
            1,
            alert("a1", "p1", "sirs", "resolved", "2026-01-01T10:00:00Z", Some(("rule:sirs", "2026-01-01T10:00:30Z"))),
        ));
        c.on_frame(&frame(2, alert("a2", "p1", "sirs", "active", "2026-01-01T10:00:40Z", None)));
        let r = c.report();
        assert_eq!((r.raised, r.resolved_by_rule, r.re_raised), (2, 1, 1));
    }

    #[test]
    fn tracking_is_bounded() {
        let mut c = counter();
        for i in 0..(MAX_TRACKED + 10) {
            c.on_frame(&frame(
                i as u64,
                alert(&format!("a{i}"), &format!("p{i}"), "r", "active", "2026-01-01T10:00:00Z", None),
            ));
        }
        assert_eq!(c.alerts.len(), MAX_TRACKED);
        assert_eq!(c.order.len(), MAX_TRACKED);
    }
}
