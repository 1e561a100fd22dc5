//! Escalation: an alert still waiting for acknowledgement past its severity's window is
//! escalated to the configured units and roles (visibly: the alert carries the escalation and
//! consoles notify). Runs as one tracked task that checks every few seconds.

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::watch;
use vigil_actors::{AlertAction, AlertStatus, AlertStore, Router, Severity};

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

/// Escalate overdue alerts until `shutdown`.
pub async fn run(
    policy: EscalationPolicy,
    alerts: Arc<dyn AlertStore>,
    router: Arc<Router>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(policy.period);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let open = match alerts.open_alerts().await {
            Ok(open) => open,
            Err(error) => {
                tracing::warn!(%error, "escalation check could not read open alerts");
                continue;
            }
        };
        let now = OffsetDateTime::now_utc();
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
                Ok((escalated, _)) => {
                    let level = escalated.escalation.as_ref().map_or(0, |e| e.level);
                    tracing::info!(alert = %alert.id, level, "alert escalated");
                }
                Err(error) => tracing::debug!(alert = %alert.id, %error, "escalation skipped"),
            }
        }
    }
}
