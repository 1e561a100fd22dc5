//! Escalation: an alert still waiting for acknowledgement past its severity's window is
//! escalated to the configured units and roles (visibly: the alert carries the escalation and
//! consoles notify). Runs as one tracked task that checks every few seconds.

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::watch;
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
}

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
        }
    }
}

impl EscalationPolicy {
    fn window(&self, severity: Severity) -> Option<time::Duration> {
        self.windows.iter().find(|(s, _)| *s == severity).and_then(|(_, w)| *w)
    }
}

/// Escalate overdue alerts until `shutdown`, checking every `policy.period` against `clock`.
pub async fn run(
    policy: EscalationPolicy,
    alerts: Arc<dyn AlertStore>,
    router: Arc<Router>,
    clock: Arc<dyn Clock>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(policy.period);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
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
        let Some(window) = policy.window(alert.severity) else { continue };
        // Each level waits one more window from the previous escalation.
        let since = alert.escalation.as_ref().map_or(alert.raised_at, |e| e.at);
        if alert.status != AlertStatus::Active || now - since < window {
            continue;
        }
        let action = AlertAction::Escalate { units: policy.units.clone(), roles: policy.roles.clone() };
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
        let router = Router::new(store.clone(), store.clone(), rules, clock.clone()).await.unwrap();
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
}
