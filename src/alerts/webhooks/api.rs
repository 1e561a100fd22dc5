//! `GET /api/webhooks/dead-letters`: the changes endpoints never accepted, for admins. The
//! ledger reaches handlers as an `Extension` layered on by the wiring (`app.rs`).

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde::Deserialize;

use super::Webhooks;
use crate::auth::Role;
use crate::http::AppState;
use crate::http::api::{ApiError, authenticate, role_name};

/// Query of `GET /api/webhooks/dead-letters`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterQuery {
    /// Only this endpoint (by name).
    endpoint: Option<String>,
    /// At most this many (default 100, at most 1000).
    limit: Option<usize>,
}

async fn dead_letters(
    State(state): State<AppState>,
    webhooks: Option<Extension<Webhooks>>,
    headers: HeaderMap,
    query: Result<Query<DeadLetterQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    const ACTION: &str = "view_webhook_dead_letters";
    let claims = authenticate(&state, &headers, ACTION)?;
    let role = role_name(claims.role);
    if claims.role != Role::Admin {
        state.audit.record(&claims.sub, role, ACTION, "-", "denied: admin role required");
        return Err(ApiError::Forbidden(format!("role {role} may not view webhook dead letters")));
    }
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let Some(Extension(webhooks)) = webhooks else {
        tracing::error!("webhook ledger not wired into the http routes");
        return Err(ApiError::Unavailable);
    };
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    let ledger = webhooks.ledger.clone();
    let endpoint = query.endpoint.clone();
    let letters = tokio::task::spawn_blocking(move || ledger.dead_letters(endpoint.as_deref(), limit))
        .await
        .map_err(|_| ApiError::Unavailable)?
        .map_err(|e| {
            tracing::error!(error = %e, "api: webhook ledger failure");
            ApiError::Unavailable
        })?;
    state.audit.record(&claims.sub, role, ACTION, query.endpoint.as_deref().unwrap_or("*"), "ok");
    Ok(Json(serde_json::json!({ "dead_letters": letters })))
}

/// The webhook routes, merged into `http::routes`.
pub fn routes() -> Router<AppState> {
    Router::new().route("/api/webhooks/dead-letters", get(dead_letters))
}
