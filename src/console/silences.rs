//! Silences: a patient's or one alert's notifications quieted for a chosen time ("RRT at the
//! bedside, 15 min"), with who, when and why. A silence quiets sound and desktop notifications
//! only: the alerts stay on the board, marked silenced. It ends by itself at its end time (on
//! the `Clock` port), at once when the patient's or the alert's severity rises above what it
//! was when silenced, or when a user ends it. Every start and end is audited (opaque ids and
//! the reason's code only) and every silence is kept in the [`ConsoleStore`] all nodes share,
//! so a restart neither forgets one nor revives an ended one, and one set on a node holds on
//! the others from their next refresh.
//!
//! Reasons are a fixed list of codes, never free text: nothing a user types here can carry PHI
//! into the store, the audit log or a log line.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use vigil_actors::{Alert, AlertStatus, Clock, Severity};

use super::store::{ConsoleStore, MemoryConsoleStore};
use super::{Console, ConsoleError, Permission};
use crate::auth::Claims;

/// Durations a user may choose, in minutes.
pub const DURATIONS_MIN: [i64; 6] = [5, 10, 15, 30, 60, 120];
/// Why a patient or an alert is silenced: the codes a user picks from.
pub const REASONS: [&str; 5] =
    ["rrt_at_bedside", "clinician_at_bedside", "procedure", "known_and_treated", "transport"];
/// Silences held (open and recently ended); beyond, the oldest ended ones are forgotten first
/// and a new silence is refused when every held one is still open.
pub const MAX_SILENCES: usize = 10_000;
/// Silence changes a lagging console session may fall behind before it re-reads the list.
const CHANGES_CAPACITY: usize = 256;

/// Why a silence ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// Its time ran out.
    Expired,
    /// The patient's (or the alert's) severity rose above what was silenced.
    SeverityRose,
    /// A user ended it.
    Ended,
}

/// How a silence ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SilenceEnd {
    /// The user, or `system` for an expiry or a severity rise.
    pub by: String,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// Why.
    pub why: EndReason,
}

/// A silence of one patient's notifications, or of one alert's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Silence {
    /// Opaque id.
    pub id: String,
    /// Opaque patient id.
    pub patient: String,
    /// The patient's unit when silenced (who sees the silence).
    pub unit: String,
    /// The alert silenced; absent when the whole patient is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert_id: Option<String>,
    /// The highest open severity silenced; a rise above it ends the silence.
    pub severity: Severity,
    /// Who silenced.
    pub by: String,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// When it ends by itself.
    #[serde(with = "time::serde::rfc3339")]
    pub until: OffsetDateTime,
    /// Why: one of [`REASONS`].
    pub reason: String,
    /// Set once it has ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<SilenceEnd>,
    /// Units the silenced alerts had escalated to (they see the silence too).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub escalated_units: Vec<String>,
    /// Roles the silenced alerts had escalated to (they see the silence too).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub escalated_roles: Vec<String>,
}

impl Silence {
    /// Whether `claims`' holder sees it: its unit, or a unit or role its alerts escalated to.
    pub fn visible_to(&self, claims: &Claims) -> bool {
        claims.may_see(&self.unit)
            || self.escalated_units.iter().any(|u| claims.may_see(u))
            || self.escalated_roles.iter().any(|r| r == super::role_name(claims.role))
    }

    /// Whether it quiets `alert` (open, same patient, and the alert if one was named).
    pub fn covers(&self, alert: &Alert) -> bool {
        self.ended.is_none()
            && self.patient == alert.patient.id.0
            && self.alert_id.as_ref().is_none_or(|id| *id == alert.id.0)
    }
}

/// What a user asks to silence.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SilenceRequest {
    /// Opaque patient id.
    pub patient: String,
    /// One alert of that patient; absent for all of them.
    #[serde(default)]
    pub alert_id: Option<String>,
    /// One of [`DURATIONS_MIN`].
    pub minutes: i64,
    /// One of [`REASONS`].
    pub reason: String,
}

/// The silences of a server: held in memory, kept in the [`ConsoleStore`] every node shares,
/// changes fanned out to console sessions. Each node re-reads the store every tick of [`run`]
/// ([`Silences::refresh`]), so a silence set on one node holds on the others. Cheap to clone.
#[derive(Clone)]
pub struct Silences {
    held: Arc<Mutex<BTreeMap<String, Silence>>>,
    store: Arc<dyn ConsoleStore>,
    /// One write (start, end, refresh) at a time, held across the store's write, so the store
    /// and the held map change in the same order.
    writes: Arc<tokio::sync::Mutex<()>>,
    clock: Arc<dyn Clock>,
    changes: broadcast::Sender<Arc<Silence>>,
}

impl Silences {
    /// Silences kept in memory only (tests, tools).
    pub fn in_memory(clock: Arc<dyn Clock>) -> Self {
        Self::held_in(BTreeMap::new(), Arc::new(MemoryConsoleStore::default()), clock)
    }

    fn held_in(held: BTreeMap<String, Silence>, store: Arc<dyn ConsoleStore>, clock: Arc<dyn Clock>) -> Self {
        let (changes, _) = broadcast::channel(CHANGES_CAPACITY);
        Silences { held: Arc::new(Mutex::new(held)), store, writes: Arc::default(), clock, changes }
    }

    /// Silences kept in `store` (read back at start).
    pub async fn open(store: Arc<dyn ConsoleStore>, clock: Arc<dyn Clock>) -> Result<Self, ConsoleError> {
        let held = store.silences().await.map_err(store_failure)?.into_iter().map(|s| (s.id.clone(), s)).collect();
        Ok(Self::held_in(held, store, clock))
    }

    /// Take up what other nodes changed in the store: silences started or ended elsewhere are
    /// held (and announced to sessions) as the store has them; an end this node knows of is
    /// never undone by an older open row (it is written again); one the store no longer has
    /// is let go (its alerts sound again). Returns the silences that changed here.
    pub async fn refresh(&self) -> Result<Vec<Silence>, ConsoleError> {
        let _writing = self.writes.lock().await;
        let stored: BTreeMap<String, Silence> =
            self.store.silences().await.map_err(store_failure)?.into_iter().map(|s| (s.id.clone(), s)).collect();
        let mut changed = Vec::new();
        let mut rewrite = Vec::new();
        {
            let mut held = self.lock();
            held.retain(|id, _| stored.contains_key(id));
            for (id, silence) in stored {
                match held.get(&id) {
                    Some(mine) if mine.ended.is_some() && silence.ended.is_none() => rewrite.push(mine.clone()),
                    Some(mine) if *mine == silence => {}
                    _ => {
                        changed.push(silence.clone());
                        held.insert(id, silence);
                    }
                }
            }
            if held.len() > MAX_SILENCES {
                let mut ended: Vec<(OffsetDateTime, String)> =
                    held.values().filter_map(|s| s.ended.as_ref().map(|e| (e.at, s.id.clone()))).collect();
                ended.sort();
                let excess = held.len() - MAX_SILENCES;
                for (_, id) in ended.into_iter().take(excess) {
                    held.remove(&id);
                }
            }
        }
        for silence in &rewrite {
            if let Err(e) = self.store.put_silence(silence).await {
                tracing::error!(silence = %silence.id, error = %e, "an ended silence was not persisted");
            }
        }
        for silence in &changed {
            let _ = self.changes.send(Arc::new(silence.clone()));
        }
        Ok(changed)
    }

    /// Changes from now on (a started, ended or expired silence).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Silence>> {
        self.changes.subscribe()
    }

    /// The time on the injected clock.
    pub fn now(&self) -> OffsetDateTime {
        self.clock.now()
    }

    /// Every silence still open.
    pub fn open_silences(&self) -> Vec<Silence> {
        self.lock().values().filter(|s| s.ended.is_none()).cloned().collect()
    }

    /// The open silence covering `alert`, if any. One past its end time covers nothing, even
    /// before [`run`] has ended it.
    pub fn covering(&self, alert: &Alert) -> Option<Silence> {
        let now = self.now();
        self.lock().values().find(|s| s.covers(alert) && now < s.until).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Silence>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Persist and hold a new silence, making room by forgetting the oldest ended ones.
    pub(crate) async fn start(&self, silence: Silence) -> Result<(), ConsoleError> {
        let _writing = self.writes.lock().await;
        let forget: Vec<String> = {
            let held = self.lock();
            if held.len() < MAX_SILENCES {
                Vec::new()
            } else {
                let mut ended: Vec<(OffsetDateTime, String)> =
                    held.values().filter_map(|s| s.ended.as_ref().map(|e| (e.at, s.id.clone()))).collect();
                ended.sort();
                let excess = held.len() + 1 - MAX_SILENCES;
                if ended.len() < excess {
                    return Err(ConsoleError::Conflict(format!("at most {MAX_SILENCES} silences may be open")));
                }
                ended.into_iter().take(excess).map(|(_, id)| id).collect()
            }
        };
        for id in &forget {
            self.store.remove_silence(id).await.map_err(store_failure)?;
            self.lock().remove(id);
        }
        self.store.put_silence(&silence).await.map_err(store_failure)?;
        self.lock().insert(silence.id.clone(), silence.clone());
        let _ = self.changes.send(Arc::new(silence));
        Ok(())
    }

    /// End the silences `pick` selects among the open ones; returns those ended.
    async fn end_where(&self, end: &SilenceEnd, pick: impl Fn(&Silence) -> bool) -> Vec<Silence> {
        let _writing = self.writes.lock().await;
        let mut ended = Vec::new();
        {
            let mut held = self.lock();
            for silence in held.values_mut().filter(|s| s.ended.is_none() && pick(s)) {
                silence.ended = Some(end.clone());
                ended.push(silence.clone());
            }
        }
        for silence in &ended {
            // The change stands in memory even when the write fails: a silence that should
            // have ended must never keep quieting alerts (the next refresh writes it again).
            if let Err(e) = self.store.put_silence(silence).await {
                tracing::error!(silence = %silence.id, error = %e, "an ended silence was not persisted");
            }
            let _ = self.changes.send(Arc::new(silence.clone()));
        }
        ended
    }

    /// End every open silence whose time ran out by `now`.
    pub async fn expire(&self, now: OffsetDateTime) -> Vec<Silence> {
        let end = SilenceEnd { by: "system".into(), at: now, why: EndReason::Expired };
        self.end_where(&end, |s| s.until <= now).await
    }

    /// End, at once, the open silences `alert` rises above (a still open alert of the silenced
    /// patient, or the silenced alert, now more severe than when silenced).
    pub async fn on_alert_change(&self, alert: &Alert, now: OffsetDateTime) -> Vec<Silence> {
        if alert.status == AlertStatus::Resolved {
            return Vec::new();
        }
        let end = SilenceEnd { by: "system".into(), at: now, why: EndReason::SeverityRose };
        self.end_where(&end, |s| s.covers(alert) && alert.severity > s.severity).await
    }
}

fn store_failure(e: impl std::fmt::Display) -> ConsoleError {
    tracing::error!(error = %e, "console: silence store failure");
    ConsoleError::Unavailable
}

impl Console {
    /// Silence a patient's (or one alert's) notifications on behalf of `claims`: the role may
    /// act on alerts, the patient has an open alert the caller sees, the duration and reason
    /// come from the lists. Audited (patient or alert id, minutes, reason code).
    pub async fn silence(&self, claims: &Claims, request: SilenceRequest) -> Result<Silence, ConsoleError> {
        const ACTION: &str = "silence";
        let target = request.alert_id.clone().unwrap_or_else(|| request.patient.clone());
        if !DURATIONS_MIN.contains(&request.minutes) {
            return Err(ConsoleError::BadRequest(format!("a silence lasts one of {DURATIONS_MIN:?} minutes")));
        }
        if !REASONS.contains(&request.reason.as_str()) {
            return Err(ConsoleError::BadRequest(format!("a silence's reason is one of {}", REASONS.join(", "))));
        }
        self.require(claims, Permission::ActOnAlerts, ACTION, &target)?;
        let open = self.alerts.open_alerts_of(&vigil_actors::PatientId(request.patient.clone())).await?;
        let covered: Vec<&Alert> = open
            .iter()
            .filter(|a| super::sees(claims, a))
            .filter(|a| request.alert_id.as_ref().is_none_or(|id| *id == a.id.0))
            .collect();
        let Some(severity) = covered.iter().map(|a| a.severity).max() else {
            self.audit(claims, ACTION, &target, "denied: no open alert to silence");
            return Err(ConsoleError::NotFound("no open alert to silence".into()));
        };
        let now = self.silences.now();
        let (mut escalated_units, mut escalated_roles) = (Vec::new(), Vec::new());
        for escalation in covered.iter().filter_map(|a| a.escalation.as_ref()) {
            escalated_units.extend(escalation.units.iter().cloned());
            escalated_roles.extend(escalation.roles.iter().cloned());
        }
        escalated_units.sort();
        escalated_units.dedup();
        escalated_roles.sort();
        escalated_roles.dedup();
        let silence = Silence {
            id: format!("sil-{:016x}", rand::random::<u64>()),
            patient: request.patient,
            unit: covered[0].patient.unit.clone(),
            alert_id: request.alert_id,
            severity,
            by: claims.sub.clone(),
            at: now,
            until: now + time::Duration::minutes(request.minutes),
            reason: request.reason,
            ended: None,
            escalated_units,
            escalated_roles,
        };
        self.silences.start(silence.clone()).await?;
        self.audit(claims, ACTION, &target, &format!("ok: {} min, {}", request.minutes, silence.reason));
        Ok(silence)
    }

    /// End a silence now on behalf of `claims`. Audited.
    pub async fn end_silence(&self, claims: &Claims, id: &str) -> Result<Silence, ConsoleError> {
        const ACTION: &str = "end_silence";
        self.require(claims, Permission::ActOnAlerts, ACTION, id)?;
        let visible = |s: &Silence| s.id == id && s.visible_to(claims);
        let end = SilenceEnd { by: claims.sub.clone(), at: self.silences.now(), why: EndReason::Ended };
        match self.silences.end_where(&end, visible).await.pop() {
            Some(ended) => {
                self.audit(claims, ACTION, id, "ok");
                Ok(ended)
            }
            None => {
                self.audit(claims, ACTION, id, "denied: no such open silence");
                Err(ConsoleError::NotFound("no such open silence".into()))
            }
        }
    }

    /// The open silences `claims` sees.
    pub fn silences_for(&self, claims: &Claims) -> Vec<Silence> {
        self.silences.open_silences().into_iter().filter(|s| s.visible_to(claims)).collect()
    }

    /// The silence book (sessions subscribe to its changes).
    pub fn silence_book(&self) -> &Silences {
        &self.silences
    }
}

/// End silences as their time runs out (checked every `period` on the clock port) and at once
/// when a severity rises (from the alert hub), until `shutdown`. Each end is audited as the
/// `system` user.
pub async fn run(
    console: Console,
    mut alerts: broadcast::Receiver<Arc<vigil_actors::SequencedAlert>>,
    period: std::time::Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let lagged = tokio::select! {
            _ = tick.tick() => {
                console.refresh_books().await;
                let ended = console.silences.expire(console.silences.now()).await;
                console.audit_ends(&ended);
                false
            }
            change = alerts.recv() => match change {
                Ok(change) => {
                    let ended = console.silences.on_alert_change(&change.alert, console.silences.now()).await;
                    console.audit_ends(&ended);
                    false
                }
                Err(broadcast::error::RecvError::Lagged(_)) => true,
                Err(broadcast::error::RecvError::Closed) => return,
            },
            () = shutdown.cancelled() => return,
        };
        // Missed changes: judge every open alert as it stands.
        if lagged {
            check_now(&console).await;
        }
    }
}

/// One check at the clock's time: expired silences end, and those an open alert rises above.
/// Returns the silences ended (each audited).
pub async fn check_now(console: &Console) -> Vec<Silence> {
    let now = console.silences.now();
    let mut ended = console.silences.expire(now).await;
    match console.alerts.open_alerts().await {
        Ok(open) => {
            for change in &open {
                ended.extend(console.silences.on_alert_change(&change.alert, now).await);
            }
        }
        Err(error) => tracing::warn!(%error, "silence check could not read open alerts"),
    }
    console.audit_ends(&ended);
    ended
}

impl Console {
    /// Take up the silences and assignments other nodes changed in the store (logged, not
    /// fatal, when the store cannot be read: the next tick tries again).
    pub async fn refresh_books(&self) {
        if let Err(e) = self.silences.refresh().await {
            tracing::warn!(error = %e, "silences could not be re-read from the store");
        }
        if let Err(e) = self.assignments.refresh().await {
            tracing::warn!(error = %e, "assignments could not be re-read from the store");
        }
    }

    fn audit_ends(&self, ended: &[Silence]) {
        for silence in ended {
            let target = silence.alert_id.as_deref().unwrap_or(&silence.patient);
            let outcome = match silence.ended.as_ref().map(|e| e.why) {
                Some(EndReason::SeverityRose) => "ok: severity rose",
                Some(EndReason::Ended) => "ok: ended",
                _ => "ok: expired",
            };
            if silence.ended.as_ref().is_some_and(|e| e.why == EndReason::Ended) {
                continue; // a user's end is audited under the user by `end_silence`
            }
            self.audit.record("system", "system", "silence_end", target, outcome);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU8, Ordering};

    use vigil_actors::fakes::{CollectingPublisher, FnRules, ManualClock, MemoryStore};
    use vigil_actors::{AlertPolicy, AlertStore, PatientId, PatientView, Router, RuleOutcome, RuleVerdict};

    use super::*;
    use crate::audit::{AuditKey, AuditLog};
    use crate::auth::Role;

    const T0: OffsetDateTime = time::macros::datetime!(2026-01-01 03:00 UTC);

    struct Ward {
        console: Console,
        store: Arc<MemoryStore>,
        router: Arc<Router>,
        clock: Arc<ManualClock>,
        severity: Arc<AtomicU8>,
        audit: AuditLog,
        kept: Arc<dyn ConsoleStore>,
        _dir: tempfile::TempDir,
    }

    fn severity_of(n: u8) -> Severity {
        [Severity::Medium, Severity::High, Severity::Critical][usize::from(n).min(2)]
    }

    /// One patient whose rule fires at the severity `ward.severity` says.
    async fn ward() -> Ward {
        let store = Arc::new(MemoryStore::with_publisher(Arc::new(CollectingPublisher::default())));
        let clock = Arc::new(ManualClock(std::sync::Mutex::new(T0)));
        let severity = Arc::new(AtomicU8::new(1));
        let level = Arc::clone(&severity);
        let rules = Arc::new(FnRules(move |_: &PatientView, _: &[&str]| {
            vec![RuleOutcome {
                rule_id: "t.score".into(),
                version: "v1".into(),
                policy: AlertPolicy::default(),
                verdict: RuleVerdict::Fire {
                    finding: None,
                    severity: severity_of(level.load(Ordering::SeqCst)),
                    score: None,
                    summary: "score".into(),
                    details: vigil_actors::Details::null(),
                    partial: false,
                },
            }]
        }));
        let router = Arc::new(Router::new(store.clone(), store.clone(), rules, clock.clone()).await.unwrap());
        let dir = tempfile::tempdir().unwrap();
        let keys = Arc::new(crate::crypto::KeyRing::from_keys(&[(1, [9; 32])]).unwrap());
        let embedded = crate::store::EmbeddedStore::open(
            dir.path(),
            crate::store::EmbeddedStoreConfig::default(),
            keys,
            Arc::new(CollectingPublisher::default()),
        )
        .unwrap();
        let audit = AuditLog::open(embedded.database(), AuditKey::new(&[7; 32])).unwrap();
        let kept: Arc<dyn ConsoleStore> = Arc::new(embedded);
        let silences = Silences::open(Arc::clone(&kept), clock.clone()).await.unwrap();
        let console = Console::new(store.clone(), Arc::clone(&router), audit.clone()).with_silences(silences);
        let ward = Ward { console, store, router, clock, severity, audit, kept, _dir: dir };
        ward.measure(0, 1.0).await;
        ward
    }

    impl Ward {
        async fn measure(&self, at_s: i64, value: f64) {
            let at = T0 + time::Duration::seconds(at_s);
            *self.clock.0.lock().unwrap() = at;
            let event = crate::store::conformance::event(&PatientId("p-sil".into()), "SIL-1", at, value);
            self.router.ingest(event).await.unwrap().wait().await.unwrap();
        }

        fn at(&self, s: i64) {
            *self.clock.0.lock().unwrap() = T0 + time::Duration::seconds(s);
        }

        async fn alert(&self) -> Alert {
            self.store.open_alerts().await.unwrap().remove(0).alert
        }

        fn audited(&self, action: &str) -> Vec<String> {
            let records = self.audit.since(OffsetDateTime::UNIX_EPOCH, 1000);
            records.into_iter().filter(|r| r.action == action).map(|r| format!("{} {}", r.user, r.outcome)).collect()
        }
    }

    fn nurse(units: &[&str]) -> Claims {
        Claims {
            sub: "nurse-4".into(),
            role: Role::Nurse,
            units: units.iter().map(|u| u.to_string()).collect(),
            iat: 0,
            exp: i64::MAX,
            iss: "vigil".into(),
            nbf: None,
            aud: None,
        }
    }

    fn request(minutes: i64, reason: &str) -> SilenceRequest {
        SilenceRequest { patient: "p-sil".into(), alert_id: None, minutes, reason: reason.into() }
    }

    #[tokio::test]
    async fn a_silence_ends_by_itself_at_its_time_on_the_injected_clock_and_a_restart_keeps_it() {
        let ward = ward().await;
        let silence = ward.console.silence(&nurse(&["*"]), request(15, "rrt_at_bedside")).await.unwrap();
        assert_eq!((silence.by.as_str(), silence.at, silence.severity), ("nurse-4", T0, Severity::High));
        assert_eq!(silence.until, T0 + time::Duration::minutes(15));
        assert!(ward.console.silence_book().covering(&ward.alert().await).is_some());
        assert_eq!(ward.audited("silence"), ["nurse-4 ok: 15 min, rrt_at_bedside"]);

        // A restart reads it back, still open.
        let reopened = Silences::open(Arc::clone(&ward.kept), ward.clock.clone()).await.unwrap();
        assert_eq!(reopened.open_silences(), vec![silence.clone()]);

        ward.at(15 * 60 - 1);
        assert!(check_now(&ward.console).await.is_empty(), "one second before its end it still holds");
        ward.at(15 * 60);
        let ended = check_now(&ward.console).await;
        assert_eq!(ended.len(), 1);
        let end = ended[0].ended.clone().unwrap();
        assert_eq!(
            (end.by.as_str(), end.why, end.at),
            ("system", EndReason::Expired, T0 + time::Duration::minutes(15))
        );
        assert!(ward.console.silence_book().covering(&ward.alert().await).is_none());
        assert_eq!(ward.audited("silence_end"), ["system ok: expired"]);
        // Ended for good: a restart does not revive it.
        assert!(Silences::open(Arc::clone(&ward.kept), ward.clock.clone()).await.unwrap().open_silences().is_empty());
        ward.router.shutdown().await;
    }

    #[tokio::test]
    async fn a_rise_in_severity_ends_the_silence_at_once_and_the_same_severity_does_not() {
        let ward = ward().await;
        ward.console.silence(&nurse(&["*"]), request(60, "procedure")).await.unwrap();
        ward.measure(60, 2.0).await; // fires again, still high
        assert!(check_now(&ward.console).await.is_empty(), "a re-raise at the same severity stays silenced");
        ward.severity.store(2, Ordering::SeqCst);
        ward.measure(120, 3.0).await;
        assert_eq!(ward.alert().await.severity, Severity::Critical);
        let ended =
            ward.console.silence_book().on_alert_change(&ward.alert().await, ward.console.silence_book().now()).await;
        assert_eq!(ended.len(), 1, "critical rises above the silenced high");
        assert_eq!(ended[0].ended.as_ref().map(|e| e.why), Some(EndReason::SeverityRose));
        assert!(ward.console.silence_book().open_silences().is_empty());
        ward.router.shutdown().await;
    }

    #[tokio::test]
    async fn a_silence_is_refused_outside_the_lists_the_role_or_the_units_and_a_user_may_end_one() {
        let ward = ward().await;
        let bad = ward.console.silence(&nurse(&["*"]), request(7, "procedure")).await;
        assert!(matches!(bad, Err(ConsoleError::BadRequest(m)) if m.contains("minutes")));
        let bad = ward.console.silence(&nurse(&["*"]), request(15, "the patient asked")).await;
        assert!(matches!(bad, Err(ConsoleError::BadRequest(m)) if m.contains("reason")));
        let mut informaticist = nurse(&["*"]);
        informaticist.role = Role::Informaticist;
        assert!(matches!(
            ward.console.silence(&informaticist, request(15, "procedure")).await,
            Err(ConsoleError::Forbidden(_))
        ));
        let elsewhere = ward.console.silence(&nurse(&["WARD9"]), request(15, "procedure")).await;
        assert!(matches!(elsewhere, Err(ConsoleError::NotFound(_))), "a patient not seen has nothing to silence");
        assert!(ward.console.silence_book().open_silences().is_empty());

        let silence = ward.console.silence(&nurse(&["*"]), request(30, "transport")).await.unwrap();
        assert!(ward.console.silences_for(&nurse(&["WARD9"])).is_empty(), "not shown outside the token's units");
        assert!(ward.console.end_silence(&nurse(&["WARD9"]), &silence.id).await.is_err());
        let ended = ward.console.end_silence(&nurse(&["*"]), &silence.id).await.unwrap();
        assert_eq!(ended.ended.map(|e| (e.by, e.why)), Some(("nurse-4".into(), EndReason::Ended)));
        assert!(ward.console.end_silence(&nurse(&["*"]), &silence.id).await.is_err(), "ended once");
        ward.router.shutdown().await;
    }

    #[tokio::test]
    async fn a_silence_past_its_end_time_quiets_nothing_even_before_the_task_ends_it() {
        let ward = ward().await;
        ward.console.silence(&nurse(&["*"]), request(5, "procedure")).await.unwrap();
        ward.at(5 * 60 - 1);
        assert!(ward.console.silence_book().covering(&ward.alert().await).is_some());
        ward.at(5 * 60);
        assert!(ward.console.silence_book().covering(&ward.alert().await).is_none(), "its end time, on the clock");
        assert_eq!(ward.console.silence_book().open_silences().len(), 1, "not yet ended by the task");
        ward.router.shutdown().await;
    }
}
