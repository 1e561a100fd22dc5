//! `GET /api/webhooks/dead-letters`: the changes endpoints never accepted, for admins. The
//! HTTP adapter of the webhook domain (`crate::alerts::webhooks`); the ledger reaches handlers
//! as an `Extension` layered on by the wiring (`app.rs`).

use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde::Deserialize;

use super::AppState;
use super::error::ApiError;
use super::extract::Authenticated;
use crate::alerts::webhooks::Webhooks;
use crate::console::Permission;

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
    Authenticated(claims): Authenticated,
    webhooks: Option<Extension<Webhooks>>,
    query: Result<Query<DeadLetterQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    const ACTION: &str = "view_webhook_dead_letters";
    state.console.require(&claims, Permission::ViewDeadLetters, ACTION, "-")?;
    let Query(query) = query?;
    let Some(Extension(webhooks)) = webhooks else {
        tracing::error!("webhook ledger not wired into the http routes");
        return Err(ApiError::unavailable());
    };
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    let ledger = webhooks.ledger.clone();
    let endpoint = query.endpoint.clone();
    let letters = tokio::task::spawn_blocking(move || ledger.dead_letters(endpoint.as_deref(), limit))
        .await
        .map_err(|_| ApiError::unavailable())?
        .map_err(|e| {
            tracing::error!(error = %e, "api: webhook ledger failure");
            ApiError::unavailable()
        })?;
    state.console.audit(&claims, ACTION, query.endpoint.as_deref().unwrap_or("*"), "ok");
    Ok(Json(serde_json::json!({ "dead_letters": letters })))
}

/// The webhook admin routes, merged into `http::routes`.
pub fn routes() -> Router<AppState> {
    Router::new().route("/api/webhooks/dead-letters", get(dead_letters))
}
