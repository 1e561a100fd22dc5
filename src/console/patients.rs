//! Patient summaries for the console's patient view: shown only to those who may see the
//! patient (their unit, or an open alert of theirs seen through escalation). Audited.

use vigil_actors::{IngestError, PatientId, PatientSummary};

use super::{Console, ConsoleError, sees};
use crate::auth::Claims;

impl Console {
    /// The summary of a patient `claims` may see; an unknown patient starts no actor, and an
    /// invisible one is reported exactly like an unknown one.
    pub async fn patient_summary(&self, claims: &Claims, id: &str) -> Result<PatientSummary, ConsoleError> {
        const ACTION: &str = "view_patient";
        let summary = match self.router.summary(&PatientId(id.to_string())).await {
            Ok(summary) => summary,
            Err(IngestError::UnknownPatient) => {
                self.audit(claims, ACTION, id, "denied: unknown patient");
                return Err(ConsoleError::NotFound("no such patient".into()));
            }
            Err(e) => {
                tracing::error!(error = %e, "patient summary unavailable");
                return Err(ConsoleError::Unavailable);
            }
        };
        let visible = claims.may_see(&summary.location.unit) || summary.open_alerts.iter().any(|a| sees(claims, a));
        if !visible {
            self.audit(claims, ACTION, id, "denied: unit not in token");
            return Err(ConsoleError::NotFound("no such patient".into()));
        }
        self.audit(claims, ACTION, id, "ok");
        Ok(summary)
    }
}
