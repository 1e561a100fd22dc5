//! Acting on alerts and reading them: acknowledge, resolve, comment; the filtered list, one
//! alert, and the checks of a WebSocket subscription. Every act and every refusal is audited.

use std::collections::BTreeMap;

use serde::Deserialize;
use vigil_actors::patient::{ActError, ActFailure};
use vigil_actors::{AlertAction, AlertId, AlertStatus, PatientId, SequencedAlert};

use super::{Console, ConsoleError, Permission, sees};
use crate::auth::Claims;

/// Longest comment accepted, in bytes.
pub const MAX_COMMENT_BYTES: usize = 4000;
/// Changes read from the alert log per page when collecting `since`.
const PAGE: usize = 1000;

/// What a console user does to an alert. The user is always the token's subject.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConsoleAction {
    /// Take ownership of an active alert.
    Acknowledge,
    /// Close it, saying why.
    Resolve {
        /// Why (required).
        reason: String,
    },
    /// Add a note.
    Comment {
        /// The note (1 to 4000 bytes).
        text: String,
    },
}

impl ConsoleAction {
    /// The audit action name.
    pub fn name(&self) -> &'static str {
        match self {
            ConsoleAction::Acknowledge => "ack",
            ConsoleAction::Resolve { .. } => "resolve",
            ConsoleAction::Comment { .. } => "comment",
        }
    }

    fn validate(&self) -> Result<(), ConsoleError> {
        match self {
            ConsoleAction::Resolve { reason } if reason.trim().is_empty() => {
                Err(ConsoleError::BadRequest("a reason is required to resolve an alert".into()))
            }
            ConsoleAction::Comment { text } if text.trim().is_empty() || text.len() > MAX_COMMENT_BYTES => {
                Err(ConsoleError::BadRequest(format!("a comment is 1 to {MAX_COMMENT_BYTES} characters")))
            }
            _ => Ok(()),
        }
    }

    fn into_alert_action(self, by: String) -> AlertAction {
        match self {
            ConsoleAction::Acknowledge => AlertAction::Acknowledge { by },
            ConsoleAction::Resolve { reason } => AlertAction::Resolve { by, reason },
            ConsoleAction::Comment { text } => AlertAction::Comment { by, text },
        }
    }
}

/// Filters of an alert listing.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertFilter {
    /// Only this unit.
    pub unit: Option<String>,
    /// Only this status.
    pub status: Option<AlertStatus>,
    /// Changes after this sequence number (all statuses); without it, open alerts.
    pub since: Option<u64>,
}

/// An alert listing: the latest change of each alert the caller sees, and the log's position.
#[derive(Clone, Debug)]
pub struct AlertList {
    /// The last sequence number committed when the list was read.
    pub seq: u64,
    /// The alerts, by sequence number.
    pub alerts: Vec<SequencedAlert>,
}

impl Console {
    /// Act on an alert on behalf of `claims`: checks the request, the role and visibility,
    /// hands the action to the patient's actor, and answers once the change is durable.
    pub async fn act(
        &self,
        claims: &Claims,
        alert_id: &str,
        action: ConsoleAction,
    ) -> Result<SequencedAlert, ConsoleError> {
        let name = action.name();
        action.validate()?;
        self.require(claims, Permission::ActOnAlerts, name, alert_id)?;
        let id = AlertId(alert_id.to_string());
        let Some(current) = self.alerts.alert(&id).await? else {
            self.audit(claims, name, alert_id, "denied: no such alert");
            return Err(ConsoleError::NotFound("no such alert".into()));
        };
        if !sees(claims, &current.alert) {
            self.audit(claims, name, alert_id, "denied: unit not in token");
            return Err(ConsoleError::NotFound("no such alert".into()));
        }
        let patient: PatientId = current.alert.patient.id.clone();
        let action = action.into_alert_action(claims.sub.clone());
        let (alert, ticket) = self.router.act(&patient, id, action).await.map_err(|e| match e {
            ActFailure::Refused(ActError::NotOpen) => ConsoleError::Conflict("alert is not open".into()),
            ActFailure::Refused(refused @ (ActError::AlreadyAcknowledged | ActError::TooManyComments)) => {
                ConsoleError::Conflict(refused.to_string())
            }
            ActFailure::Store(e) => ConsoleError::from(e),
        })?;
        let seq = ticket.wait().await?;
        self.audit(claims, name, alert_id, "ok");
        Ok(SequencedAlert { seq, notify: false, alert })
    }

    /// The alerts `claims` sees, filtered; a unit outside the token is refused (and audited).
    pub async fn list_alerts(&self, claims: &Claims, filter: &AlertFilter) -> Result<AlertList, ConsoleError> {
        const ACTION: &str = "view_alerts";
        if let Some(unit) = filter.unit.as_ref().filter(|u| !claims.may_see(u)) {
            self.audit(claims, ACTION, unit, "denied: unit not in token");
            return Err(ConsoleError::Forbidden(format!("unit {unit} is not in your token")));
        }
        let changes = match filter.since {
            Some(since) => self.latest_changes_after(since).await?,
            None => self.alerts.open_alerts().await?,
        };
        let alerts = changes
            .into_iter()
            .filter(|c| sees(claims, &c.alert))
            .filter(|c| filter.unit.as_ref().is_none_or(|u| &c.alert.patient.unit == u))
            .filter(|c| filter.status.is_none_or(|s| c.alert.status == s))
            .collect();
        let target = filter.unit.clone().unwrap_or_else(|| claims.units.join(","));
        self.audit(claims, ACTION, &target, "ok");
        Ok(AlertList { seq: self.alerts.last_seq(), alerts })
    }

    /// Latest state per alert among the changes after `since`, by sequence number.
    async fn latest_changes_after(&self, since: u64) -> Result<Vec<SequencedAlert>, ConsoleError> {
        let mut latest = BTreeMap::new();
        let mut after = since;
        loop {
            let page = self.alerts.alerts_after(after, PAGE).await?;
            let Some(last) = page.last().map(|c| c.seq) else { break };
            for change in page {
                latest.insert(change.alert.id.clone(), change);
            }
            after = last;
        }
        let mut changes: Vec<_> = latest.into_values().collect();
        changes.sort_by_key(|c| c.seq);
        Ok(changes)
    }

    /// One alert, if `claims` sees it (an alert not seen is not found).
    pub async fn alert(&self, claims: &Claims, alert_id: &str) -> Result<SequencedAlert, ConsoleError> {
        const ACTION: &str = "view_alert";
        let found = self.alerts.alert(&AlertId(alert_id.to_string())).await?;
        let Some(change) = found.filter(|c| sees(claims, &c.alert)) else {
            self.audit(claims, ACTION, alert_id, "denied: not found or not visible");
            return Err(ConsoleError::NotFound("no such alert".into()));
        };
        self.audit(claims, ACTION, alert_id, "ok");
        Ok(change)
    }

    /// The units a live subscription covers: those asked for, or every unit in the token when
    /// none is; a unit outside the token is refused. Audited either way.
    pub fn subscription_units(&self, claims: &Claims, units: Vec<String>) -> Result<Vec<String>, ConsoleError> {
        const ACTION: &str = "subscribe";
        let units = if units.is_empty() { claims.units.clone() } else { units };
        if let Some(denied) = units.iter().find(|u| !claims.may_see(u)) {
            tracing::info!(user = %claims.sub, unit = %denied, "subscription to a unit outside the token refused");
            self.audit(claims, ACTION, denied, "denied: unit not in token");
            return Err(ConsoleError::Forbidden(format!("unit {denied} is not in your token")));
        }
        self.audit(claims, ACTION, &units.join(","), "ok");
        Ok(units)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resolve_needs_a_reason_and_a_comment_is_bounded() {
        assert!(ConsoleAction::Acknowledge.validate().is_ok());
        let blank = ConsoleAction::Resolve { reason: "  ".into() };
        assert!(matches!(blank.validate(), Err(ConsoleError::BadRequest(m)) if m.contains("reason is required")));
        assert!(ConsoleAction::Resolve { reason: "fluids".into() }.validate().is_ok());
        assert!(ConsoleAction::Comment { text: String::new() }.validate().is_err());
        assert!(ConsoleAction::Comment { text: "x".repeat(MAX_COMMENT_BYTES + 1) }.validate().is_err());
        assert!(ConsoleAction::Comment { text: "x".repeat(MAX_COMMENT_BYTES) }.validate().is_ok());
    }

    #[test]
    fn the_acting_user_is_the_tokens_subject() {
        let action = ConsoleAction::Comment { text: "seen".into() }.into_alert_action("rrt-7".into());
        assert_eq!(action, AlertAction::Comment { by: "rrt-7".into(), text: "seen".into() });
    }
}
