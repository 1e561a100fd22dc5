//! Escalation: an alert still waiting for acknowledgement past its severity's window is
//! escalated to the configured units and roles (visibly: the alert carries the escalation and
//! consoles notify). Runs as one tracked task that checks every few seconds.
//!
//! The chain: an alert first notifies the nurses assigned to its bed (level 0, see
//! `console::assignments`), then each step of `chain` in turn (e.g. charge nurse, then the
//! rapid response team), each after its own wait (or its severity's window). A step adds its
//! units and roles to those of the steps before it: whoever was notified keeps seeing the
//! alert. Past the last step the alert re-escalates to the last step's targets every window.

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use vigil_actors::{AlertAction, AlertStatus, AlertStore, Clock, Router, Severity};

/// When and to whom alerts escalate.
#[derive(Debug, Clone)]
pub struct EscalationPolicy {
    /// Window per severity; `None` never escalates.
    pub windows: Vec<(Severity, Option<time::Duration>)>,
    /// Units that also see an escalated alert.
    pub units: Vec<String>,
    /// Roles that also see an escalated alert.
    pub roles: Vec<String>,
    /// How often to check.
    pub period: Duration,
    /// The steps after the assigned nurse, in order; empty means one step to `units` and
    /// `roles` (the rapid response team).
    pub chain: Vec<ChainStep>,
}

/// One step of the escalation chain.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ChainStep {
    /// Who, as the console shows it ("charge nurse").
    pub label: String,
    /// Units that see the alert from this step on.
    pub units: Vec<String>,
    /// Roles that see the alert from this step on.
    pub roles: Vec<String>,
    /// How long the alert waits at the previous level before this step; `None` uses the
    /// severity's window.
    #[serde(skip)]
    pub wait: Option<time::Duration>,
}

/// Where an alert stands on the chain, for the console.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ChainPosition {
    /// Who it reaches now ("assigned nurse" at level 0).
    pub current: String,
    /// The next step and when it happens, if the alert is still unacknowledged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<NextStep>,
    /// Every step's label, level 0 first.
    pub chain: Vec<String>,
}

/// The next escalation of an alert.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct NextStep {
    /// Who.
    pub label: String,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// The label of level 0.
pub const ASSIGNED_NURSE: &str = "assigned nurse";

impl Default for EscalationPolicy {
    fn default() -> Self {
        EscalationPolicy {
            windows: vec![
                (Severity::Critical, Some(time::Duration::minutes(2))),
                (Severity::High, Some(time::Duration::minutes(5))),
                (Severity::Medium, Some(time::Duration::minutes(15))),
                (Severity::Low, None),
                (Severity::Info, None),
            ],
            units: vec!["RRT".into()],
            roles: vec!["rrt".into()],
            period: Duration::from_secs(5),
            chain: Vec::new(),
        }
    }
}

impl EscalationPolicy {
    fn window(&self, severity: Severity) -> Option<time::Duration> {
        self.windows.iter().find(|(s, _)| *s == severity).and_then(|(_, w)| *w)
    }

    /// The steps after level 0.
    pub fn steps(&self) -> Vec<ChainStep> {
        if !self.chain.is_empty() {
            return self.chain.clone();
        }
        let label = "rapid response team".to_string();
        vec![ChainStep { label, units: self.units.clone(), roles: self.roles.clone(), wait: None }]
    }

    /// The step reached at `level` (1 and up; past the end, the last).
    fn step(&self, level: u32) -> Option<ChainStep> {
        let steps = self.steps();
        let index = usize::try_from(level.max(1) - 1).unwrap_or(usize::MAX).min(steps.len().saturating_sub(1));
        steps.get(index).cloned()
    }

    /// How long an alert of `severity` waits before reaching `level`; `None` never.
    fn wait_before(&self, severity: Severity, level: u32) -> Option<time::Duration> {
        let window = self.window(severity)?;
        Some(self.step(level).and_then(|s| s.wait).unwrap_or(window))
    }

    /// Units and roles that see an alert at `level`: every step up to it.
    fn targets(&self, level: u32) -> (Vec<String>, Vec<String>) {
        let (mut units, mut roles) = (Vec::new(), Vec::new());
        for step in self.steps().iter().take(usize::try_from(level).unwrap_or(usize::MAX)) {
            for unit in &step.units {
                if !units.contains(unit) {
                    units.push(unit.clone());
                }
            }
            for role in &step.roles {
                if !roles.contains(role) {
                    roles.push(role.clone());
                }
            }
        }
        (units, roles)
    }

    /// Where `alert` stands on the chain and what comes next.
    pub fn position(&self, alert: &vigil_actors::Alert) -> ChainPosition {
        let level = alert.escalation.as_ref().map_or(0, |e| e.level);
        let steps = self.steps();
        let mut chain = vec![ASSIGNED_NURSE.to_string()];
        chain.extend(steps.iter().map(|s| s.label.clone()));
        let current =
            if level == 0 { ASSIGNED_NURSE.to_string() } else { self.step(level).map(|s| s.label).unwrap_or_default() };
        let next = match alert.status {
            AlertStatus::Active => self.wait_before(alert.severity, level + 1).map(|wait| {
                let since = alert.escalation.as_ref().map_or(alert.raised_at, |e| e.at);
                NextStep { label: self.step(level + 1).map(|s| s.label).unwrap_or_default(), at: since + wait }
            }),
            _ => None,
        };
        ChainPosition { current, next, chain }
    }
}

/// Escalate overdue alerts until `shutdown`, checking every `policy.period` against `clock`.
pub async fn run(
    policy: EscalationPolicy,
    alerts: Arc<dyn AlertStore>,
    router: Arc<Router>,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(policy.period);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        escalate_overdue(&policy, alerts.as_ref(), &router, clock.now()).await;
    }
}

/// One check at `now`: every active (unacknowledged) alert past its severity's window since it
/// was raised, or since its last escalation, escalates one level. Returns how many did.
pub async fn escalate_overdue(
    policy: &EscalationPolicy,
    alerts: &dyn AlertStore,
    router: &Router,
    now: OffsetDateTime,
) -> usize {
    let open = match alerts.open_alerts().await {
        Ok(open) => open,
        Err(error) => {
            tracing::warn!(%error, "escalation check could not read open alerts");
            return 0;
        }
    };
    let mut escalated = 0;
    for change in open {
        let alert = &change.alert;
        let level = alert.escalation.as_ref().map_or(0, |e| e.level) + 1;
        let Some(wait) = policy.wait_before(alert.severity, level) else { continue };
        // Each level waits from the previous escalation.
        let since = alert.escalation.as_ref().map_or(alert.raised_at, |e| e.at);
        if alert.status != AlertStatus::Active || now - since < wait {
            continue;
        }
        let (units, roles) = policy.targets(level);
        let action = AlertAction::Escalate { units, roles };
        match router.act(&alert.patient.id, alert.id.clone(), action).await {
            Ok((changed, ticket)) => {
                let _ = ticket.wait().await;
                let level = changed.escalation.as_ref().map_or(0, |e| e.level);
                tracing::info!(alert = %alert.id, level, "alert escalated");
                escalated += 1;
            }
            Err(error) => tracing::debug!(alert = %alert.id, %error, "escalation skipped"),
        }
    }
    escalated
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use vigil_actors::fakes::{CollectingPublisher, FnRules, ManualClock, MemoryStore};
    use vigil_actors::{AlertPolicy, PatientView, RuleOutcome, RuleVerdict};

    #[tokio::test]
    async fn an_unacknowledged_alert_escalates_once_per_window_on_injected_time() {
        let store = Arc::new(MemoryStore::with_publisher(Arc::new(CollectingPublisher::default())));
        let t0 = time::macros::datetime!(2026-01-01 00:00 UTC);
        let clock = Arc::new(ManualClock(Mutex::new(t0)));
        let rules = Arc::new(FnRules(|_: &PatientView, _: &[&str]| {
            vec![RuleOutcome {
                rule_id: "t.crit".into(),
                version: "v1".into(),
                policy: AlertPolicy::default(),
                verdict: RuleVerdict::Fire {
                    finding: None,
                    severity: Severity::Critical,
                    score: None,
                    summary: "critical".into(),
                    details: vigil_actors::Details::null(),
                    partial: false,
                },
            }]
        }));
        let router = Arc::new(Router::new(store.clone(), store.clone(), rules, clock.clone()).await.unwrap());
        let event = crate::store::conformance::event(&vigil_actors::PatientId("p-esc".into()), "ESC-1", t0, 1.0);
        router.ingest(event).await.unwrap().wait().await.unwrap();
        let policy = EscalationPolicy::default();
        let at = |s: i64| t0 + time::Duration::seconds(s);
        assert_eq!(escalate_overdue(&policy, store.as_ref(), &router, at(119)).await, 0, "within the 2 min window");
        *clock.0.lock().unwrap() = at(120);
        assert_eq!(escalate_overdue(&policy, store.as_ref(), &router, at(120)).await, 1);
        assert_eq!(
            escalate_overdue(&policy, store.as_ref(), &router, at(200)).await,
            0,
            "the next level waits a window"
        );
        *clock.0.lock().unwrap() = at(240);
        assert_eq!(escalate_overdue(&policy, store.as_ref(), &router, at(240)).await, 1);
        let open = store.open_alerts().await.unwrap();
        assert_eq!(open[0].alert.escalation.as_ref().map(|e| e.level), Some(2));
        router.shutdown().await;
    }

    fn charge_then_rrt() -> EscalationPolicy {
        let step = |label: &str, role: &str, wait: Option<i64>| ChainStep {
            label: label.into(),
            units: Vec::new(),
            roles: vec![role.into()],
            wait: wait.map(time::Duration::seconds),
        };
        EscalationPolicy {
            chain: vec![step("charge nurse", "charge", Some(60)), step("rapid response team", "rrt", None)],
            ..EscalationPolicy::default()
        }
    }

    #[tokio::test]
    async fn an_alert_walks_the_chain_each_step_on_its_own_timer_keeping_the_earlier_ones() {
        let store = Arc::new(MemoryStore::with_publisher(Arc::new(CollectingPublisher::default())));
        let t0 = time::macros::datetime!(2026-01-01 00:00 UTC);
        let clock = Arc::new(ManualClock(Mutex::new(t0)));
        let rules = Arc::new(FnRules(|_: &PatientView, _: &[&str]| {
            vec![RuleOutcome {
                rule_id: "t.high".into(),
                version: "v1".into(),
                policy: AlertPolicy::default(),
                verdict: RuleVerdict::Fire {
                    finding: None,
                    severity: Severity::High,
                    score: None,
                    summary: "high".into(),
                    details: vigil_actors::Details::null(),
                    partial: false,
                },
            }]
        }));
        let router = Arc::new(Router::new(store.clone(), store.clone(), rules, clock.clone()).await.unwrap());
        let event = crate::store::conformance::event(&vigil_actors::PatientId("p-chain".into()), "CH-1", t0, 1.0);
        router.ingest(event).await.unwrap().wait().await.unwrap();
        let policy = charge_then_rrt();
        let at = |s: i64| t0 + time::Duration::seconds(s);
        let alert = || async { store.open_alerts().await.unwrap().remove(0).alert };

        let start = policy.position(&alert().await);
        assert_eq!(start.chain, ["assigned nurse", "charge nurse", "rapid response team"]);
        assert_eq!(start.current, "assigned nurse");
        assert_eq!(
            start.next,
            Some(NextStep { label: "charge nurse".into(), at: at(60) }),
            "the charge step's own 60 s"
        );

        assert_eq!(escalate_overdue(&policy, store.as_ref(), &router, at(59)).await, 0);
        *clock.0.lock().unwrap() = at(60);
        assert_eq!(escalate_overdue(&policy, store.as_ref(), &router, at(60)).await, 1);
        let charge = alert().await;
        let e = charge.escalation.clone().unwrap();
        assert_eq!((e.level, e.roles.clone()), (1, vec!["charge".to_string()]));
        let next = policy.position(&charge);
        assert_eq!(next.current, "charge nurse");
        assert_eq!(next.next, Some(NextStep { label: "rapid response team".into(), at: at(60 + 300) }), "high: 5 min");

        assert_eq!(escalate_overdue(&policy, store.as_ref(), &router, at(359)).await, 0);
        *clock.0.lock().unwrap() = at(360);
        assert_eq!(escalate_overdue(&policy, store.as_ref(), &router, at(360)).await, 1);
        let rrt = alert().await.escalation.unwrap();
        assert_eq!(
            (rrt.level, rrt.roles),
            (2, vec!["charge".to_string(), "rrt".to_string()]),
            "the charge nurse keeps it"
        );
        router.shutdown().await;
    }

    #[test]
    fn the_next_step_is_shown_only_while_unacknowledged_and_for_severities_that_escalate() {
        let alert = |severity: &str, status: &str| -> vigil_actors::Alert {
            serde_json::from_value(serde_json::json!({
                "id": "p1:r", "patient": {"id": "p1", "mrn": "M", "name": "N", "unit": "ICU", "bed": "A"},
                "rule": {"id": "r", "version": "v"}, "severity": severity, "status": status, "score": null,
                "summary": "s", "details": null, "raised_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"
            }))
            .unwrap()
        };
        let policy = charge_then_rrt();
        let critical = policy.position(&alert("critical", "active"));
        let at = time::macros::datetime!(2026-01-01 00:01 UTC);
        assert_eq!(critical.next, Some(NextStep { label: "charge nurse".into(), at }), "the step's own 60 s");
        assert_eq!(policy.position(&alert("critical", "acknowledged")).next, None);
        let low = policy.position(&alert("low", "active"));
        assert_eq!((low.current.as_str(), low.next), ("assigned nurse", None), "low never escalates");
        let default = EscalationPolicy::default().position(&alert("high", "active"));
        assert_eq!(default.chain, ["assigned nurse", "rapid response team"]);
        assert_eq!(default.next.map(|n| n.at), Some(time::macros::datetime!(2026-01-01 00:05 UTC)));
    }
}
