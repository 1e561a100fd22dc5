//! The console service: what a care-team console may do and see, whichever transport asks.
//! It sits between the adapters (`http::api` for REST, `http::ws` for the WebSocket) and the
//! domain (patient actors through the `Router`, the alert log through `AlertStore`): acting on
//! alerts, patient summaries, unit visibility, role permissions and the audit of each act.
//! Callers arrive already authenticated (`http::extract::Authenticated`); this layer decides
//! what their claims allow. See README.md in this folder for the walk-through and checklists.

mod access;
mod alerts;
pub mod assignments;
pub mod census;
mod patients;
pub mod silences;
pub mod store;

use std::sync::Arc;

use vigil_actors::{AlertStore, Router};

pub use access::{Permission, may_act, role_name, sees};
pub use alerts::{AlertFilter, AlertList, ConsoleAction};
pub use assignments::{Assignment, AssignmentRequest, Assignments, ReceiptKind, Route};
pub use census::{BoardScope, MAX_BOARD_BEDS};
pub use silences::{Silence, SilenceRequest, Silences};
pub use store::{ConsoleStore, MemoryConsoleStore};

use crate::audit::AuditLog;
use crate::auth::Claims;

/// Why the console refused or failed a request. The text is safe to show to the client
/// (never PHI); transports map the variant to a status (REST) or an error frame (WebSocket).
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// The caller's role does not allow it.
    #[error("{0}")]
    Forbidden(String),
    /// No such thing, or not visible to the caller (the two are not told apart).
    #[error("{0}")]
    NotFound(String),
    /// The thing's state refuses the request.
    #[error("{0}")]
    Conflict(String),
    /// The request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// Storage or actors unavailable.
    #[error("service unavailable")]
    Unavailable,
}

impl From<vigil_actors::StoreError> for ConsoleError {
    fn from(e: vigil_actors::StoreError) -> Self {
        tracing::error!(error = %e, "console: store failure");
        ConsoleError::Unavailable
    }
}

/// The console service. Cheap to clone; one per server, shared by every handler and session.
#[derive(Clone)]
pub struct Console {
    alerts: Arc<dyn AlertStore>,
    router: Arc<Router>,
    audit: AuditLog,
    silences: Silences,
    assignments: Assignments,
    escalation: crate::alerts::escalation::EscalationPolicy,
}

impl Console {
    /// A console over the alert log, the patient actors and the audit log.
    pub fn new(alerts: Arc<dyn AlertStore>, router: Arc<Router>, audit: AuditLog) -> Self {
        let clock: Arc<dyn vigil_actors::Clock> = Arc::new(vigil_actors::SystemClock);
        let silences = Silences::in_memory(Arc::clone(&clock));
        let assignments = Assignments::in_memory(clock);
        let escalation = crate::alerts::escalation::EscalationPolicy::default();
        Console { alerts, router, audit, silences, assignments, escalation }
    }

    /// The same console keeping its assignments in `assignments` (persisted, on the server's
    /// clock).
    pub fn with_assignments(mut self, assignments: Assignments) -> Self {
        self.assignments = assignments;
        self
    }

    /// The same console showing `policy`'s escalation chain on alerts.
    pub fn with_escalation(mut self, policy: crate::alerts::escalation::EscalationPolicy) -> Self {
        self.escalation = policy;
        self
    }

    /// The same console keeping its silences in `silences` (persisted, on the server's clock).
    pub fn with_silences(mut self, silences: Silences) -> Self {
        self.silences = silences;
        self
    }

    /// The alert log, for the WebSocket's snapshot and backfill (it filters with [`sees`]).
    pub fn alert_log(&self) -> &Arc<dyn AlertStore> {
        &self.alerts
    }

    /// Audit an act of `claims`' holder on `target` (an alert id, an opaque patient id, a unit
    /// list; never a name or an MRN).
    pub fn audit(&self, claims: &Claims, action: &str, target: &str, outcome: &str) {
        self.audit.record(&claims.sub, role_name(claims.role), action, target, outcome);
    }

    /// Refuse, and audit the refusal, unless `claims`' role holds `permission`.
    pub fn require(
        &self,
        claims: &Claims,
        permission: Permission,
        action: &str,
        target: &str,
    ) -> Result<(), ConsoleError> {
        if permission.granted_to(claims.role) {
            return Ok(());
        }
        self.audit(claims, action, target, "denied: role not permitted");
        Err(ConsoleError::Forbidden(permission.refusal(claims.role)))
    }
}
