//! REST over the same data and rules the console's WebSocket serves: alerts (list, one, ack,
//! resolve, comment) and patient summaries. Every request carries a JWT; every view of
//! patient data and every refusal is audited. One `ApiError` maps failures to responses.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use vigil_actors::patient::{ActError, ActFailure};
use vigil_actors::{Alert, AlertAction, AlertId, AlertStatus, IngestError, PatientId, PatientSummary, SequencedAlert};

use super::AppState;
use crate::auth::{Claims, Role};

/// Failures of an API request. 5xx bodies are generic; 4xx bodies say why.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No or bad token.
    #[error("{0}")]
    Unauthorized(String),
    /// Valid token, not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// No such thing (or not visible to the caller).
    #[error("{0}")]
    NotFound(String),
    /// The thing's state refuses the request.
    #[error("{0}")]
    Conflict(String),
    /// Malformed request.
    #[error("{0}")]
    BadRequest(String),
    /// Storage or actors unavailable.
    #[error("service unavailable")]
    Unavailable,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        };
        (status, Json(serde_json::json!({ "error": self.to_string() }))).into_response()
    }
}

impl From<vigil_actors::StoreError> for ApiError {
    fn from(e: vigil_actors::StoreError) -> Self {
        tracing::error!(error = %e, "api: store failure");
        ApiError::Unavailable
    }
}

/// Roles that may act on alerts (acknowledge, resolve, comment).
pub fn may_act(role: Role) -> bool {
    matches!(role, Role::Rrt | Role::Nurse | Role::Physician | Role::Pharmacist | Role::Admin)
}

/// Lowercase role name, as in tokens.
pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Rrt => "rrt",
        Role::Nurse => "nurse",
        Role::Physician => "physician",
        Role::Pharmacist => "pharmacist",
        Role::Informaticist => "informaticist",
        Role::Admin => "admin",
        Role::Gateway => "gateway",
    }
}

/// Whether the token holder may see `alert`.
pub fn sees(claims: &Claims, alert: &Alert) -> bool {
    alert.visible_to(|u| claims.may_see(u), role_name(claims.role))
}

/// Verify the bearer token of a request; refusals are audited.
pub fn authenticate(state: &AppState, headers: &HeaderMap, action: &str) -> Result<Claims, ApiError> {
    let result = match crate::auth::bearer(headers) {
        None => Err(crate::auth::AuthError::Missing),
        Some(t) => state.auth.verify(t),
    };
    result.map_err(|e| {
        state.audit.record("-", "-", action, "-", &format!("denied: {e}"));
        ApiError::Unauthorized(e.to_string())
    })
}

/// Acknowledge, resolve or comment on an alert on behalf of `claims`: checks role and
/// visibility, hands the action to the patient's actor, waits until the change is durable.
/// Shared by REST and the WebSocket commands.
pub async fn act_on_alert(
    state: &AppState,
    claims: &Claims,
    alert_id: &str,
    action: AlertAction,
) -> Result<SequencedAlert, ApiError> {
    let name = match &action {
        AlertAction::Acknowledge { .. } => "ack",
        AlertAction::Resolve { .. } => "resolve",
        AlertAction::Comment { .. } => "comment",
        AlertAction::Escalate { .. } => "escalate",
    };
    // Checked here, where REST and WebSocket commands meet, so neither path can skip it.
    match &action {
        AlertAction::Resolve { reason, .. } if reason.trim().is_empty() => {
            return Err(ApiError::BadRequest("a reason is required to resolve an alert".into()));
        }
        AlertAction::Comment { text, .. } if text.trim().is_empty() || text.len() > 4000 => {
            return Err(ApiError::BadRequest("a comment is 1 to 4000 characters".into()));
        }
        _ => {}
    }
    let role = role_name(claims.role);
    let deny = |reason: &str| {
        state.audit.record(&claims.sub, role, name, alert_id, &format!("denied: {reason}"));
    };
    if !may_act(claims.role) {
        deny("role may not act on alerts");
        return Err(ApiError::Forbidden(format!("role {role} may not {name} alerts")));
    }
    let id = AlertId(alert_id.to_string());
    let Some(current) = state.alerts.alert(&id).await? else {
        deny("no such alert");
        return Err(ApiError::NotFound("no such alert".into()));
    };
    if !sees(claims, &current.alert) {
        deny("unit not in token");
        return Err(ApiError::NotFound("no such alert".into()));
    }
    let patient: PatientId = current.alert.patient.id.clone();
    let (alert, ticket) = state.router.act(&patient, id, action).await.map_err(|e| match e {
        ActFailure::Refused(ActError::NotOpen) => ApiError::Conflict("alert is not open".into()),
        ActFailure::Refused(refused @ (ActError::AlreadyAcknowledged | ActError::TooManyComments)) => {
            ApiError::Conflict(refused.to_string())
        }
        ActFailure::Store(e) => ApiError::from(e),
    })?;
    let seq = ticket.wait().await?;
    state.audit.record(&claims.sub, role, name, alert_id, "ok");
    Ok(SequencedAlert { seq, notify: false, alert })
}

/// The summary of a patient the caller may see (their unit, or an open alert of theirs the
/// caller sees through escalation). Audited either way.
pub async fn patient_summary(state: &AppState, claims: &Claims, id: &str) -> Result<PatientSummary, ApiError> {
    let role = role_name(claims.role);
    let summary = match state.router.summary(&PatientId(id.to_string())).await {
        Ok(summary) => summary,
        Err(IngestError::UnknownPatient) => {
            state.audit.record(&claims.sub, role, "view_patient", id, "denied: unknown patient");
            return Err(ApiError::NotFound("no such patient".into()));
        }
        Err(e) => {
            tracing::error!(error = %e, "patient summary unavailable");
            return Err(ApiError::Unavailable);
        }
    };
    let visible = claims.may_see(&summary.location.unit) || summary.open_alerts.iter().any(|a| sees(claims, a));
    if !visible {
        state.audit.record(&claims.sub, role, "view_patient", id, "denied: unit not in token");
        return Err(ApiError::NotFound("no such patient".into()));
    }
    state.audit.record(&claims.sub, role, "view_patient", id, "ok");
    Ok(summary)
}

async fn get_patient(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<PatientSummary>, ApiError> {
    let claims = authenticate(&state, &headers, "view_patient")?;
    patient_summary(&state, &claims, &id).await.map(Json)
}

/// `GET /api/alerts` filters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertQuery {
    /// Only this unit.
    unit: Option<String>,
    /// Only this status.
    status: Option<AlertStatus>,
    /// Changes after this sequence number (all statuses); without it, open alerts.
    since: Option<u64>,
}

async fn list_alerts(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<AlertQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let claims = authenticate(&state, &headers, "view_alerts")?;
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    if let Some(unit) = query.unit.as_ref().filter(|u| !claims.may_see(u)) {
        state.audit.record(&claims.sub, role_name(claims.role), "view_alerts", unit, "denied: unit not in token");
        return Err(ApiError::Forbidden(format!("unit {unit} is not in your token")));
    }
    let changes = match query.since {
        Some(since) => {
            // Latest state per alert among the changes after `since`.
            let mut latest = std::collections::BTreeMap::new();
            let mut after = since;
            loop {
                let page = state.alerts.alerts_after(after, 1000).await?;
                let Some(last) = page.last().map(|c| c.seq) else { break };
                for c in page {
                    latest.insert(c.alert.id.clone(), c);
                }
                after = last;
            }
            let mut v: Vec<_> = latest.into_values().collect();
            v.sort_by_key(|c| c.seq);
            v
        }
        None => state.alerts.open_alerts().await?,
    };
    let alerts: Vec<&SequencedAlert> = changes
        .iter()
        .filter(|c| sees(&claims, &c.alert))
        .filter(|c| query.unit.as_ref().is_none_or(|u| &c.alert.patient.unit == u))
        .filter(|c| query.status.is_none_or(|s| c.alert.status == s))
        .collect();
    let target = query.unit.clone().unwrap_or_else(|| claims.units.join(","));
    state.audit.record(&claims.sub, role_name(claims.role), "view_alerts", &target, "ok");
    Ok(Json(serde_json::json!({
        "seq": state.alerts.last_seq(),
        "alerts": alerts.iter().map(|c| serde_json::json!({"seq": c.seq, "alert": c.alert})).collect::<Vec<_>>(),
    })))
}

async fn get_alert(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let claims = authenticate(&state, &headers, "view_alert")?;
    let found = state.alerts.alert(&AlertId(id.clone())).await?;
    let Some(change) = found.filter(|c| sees(&claims, &c.alert)) else {
        state.audit.record(&claims.sub, role_name(claims.role), "view_alert", &id, "denied: not found or not visible");
        return Err(ApiError::NotFound("no such alert".into()));
    };
    state.audit.record(&claims.sub, role_name(claims.role), "view_alert", &id, "ok");
    Ok(Json(serde_json::json!({"seq": change.seq, "alert": change.alert})))
}

/// Body of `POST /api/alerts/{id}/resolve` and `/comment`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextBody {
    /// Reason (resolve) or text (comment).
    #[serde(alias = "reason")]
    text: String,
}

async fn ack(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let claims = authenticate(&state, &headers, "ack")?;
    let change = act_on_alert(&state, &claims, &id, AlertAction::Acknowledge { by: claims.sub.clone() }).await?;
    Ok(Json(serde_json::json!({"seq": change.seq, "alert": change.alert})))
}

async fn resolve(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<TextBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let claims = authenticate(&state, &headers, "resolve")?;
    let Json(body) = body.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let action = AlertAction::Resolve { by: claims.sub.clone(), reason: body.text };
    let change = act_on_alert(&state, &claims, &id, action).await?;
    Ok(Json(serde_json::json!({"seq": change.seq, "alert": change.alert})))
}

async fn comment(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<TextBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let claims = authenticate(&state, &headers, "comment")?;
    let Json(body) = body.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let action = AlertAction::Comment { by: claims.sub.clone(), text: body.text };
    let change = act_on_alert(&state, &claims, &id, action).await?;
    Ok(Json(serde_json::json!({"seq": change.seq, "alert": change.alert})))
}

const OPENAPI: &str = include_str!("../../schemas/http/openapi.json");

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

/// The `/api` routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/alerts", get(list_alerts))
        .route("/api/alerts/{id}", get(get_alert))
        .route("/api/alerts/{id}/ack", post(ack))
        .route("/api/alerts/{id}/resolve", post(resolve))
        .route("/api/alerts/{id}/comment", post(comment))
        .route("/api/patients/{id}", get(get_patient))
        .route("/api/openapi.json", get(openapi))
}
