//! REST over the same console service the WebSocket uses (`crate::console`): alerts (list,
//! one, ack, resolve, comment) and patient summaries. A thin adapter: the extractor supplies
//! the caller's claims, `console::` decides and audits, `ApiError` answers failures.

use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use vigil_actors::{PatientSummary, SequencedAlert};

use super::AppState;
use super::error::ApiError;
use super::extract::Authenticated;
use crate::console::{AlertFilter, Assignment, AssignmentRequest, ConsoleAction, Silence, SilenceRequest};

type QueryResult<T> = Result<Query<T>, axum::extract::rejection::QueryRejection>;
type JsonResult<T> = Result<Json<T>, axum::extract::rejection::JsonRejection>;

fn change_json(change: &SequencedAlert) -> Json<serde_json::Value> {
    Json(serde_json::json!({"seq": change.seq, "alert": change.alert}))
}

async fn get_patient(
    State(state): State<AppState>,
    Authenticated(claims): Authenticated,
    Path(id): Path<String>,
) -> Result<Json<PatientSummary>, ApiError> {
    Ok(Json(state.console.patient_summary(&claims, &id).await?))
}

async fn list_alerts(
    State(state): State<AppState>,
    Authenticated(claims): Authenticated,
    query: QueryResult<AlertFilter>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(filter) = query?;
    let list = state.console.list_alerts(&claims, &filter).await?;
    Ok(Json(serde_json::json!({
        "seq": list.seq,
        "alerts": list.alerts.iter().map(|c| serde_json::json!({"seq": c.seq, "alert": c.alert})).collect::<Vec<_>>(),
    })))
}

async fn get_alert(
    State(state): State<AppState>,
    Authenticated(claims): Authenticated,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(change_json(&state.console.alert(&claims, &id).await?))
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
    Authenticated(claims): Authenticated,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(change_json(&state.console.act(&claims, &id, ConsoleAction::Acknowledge).await?))
}

async fn resolve(
    State(state): State<AppState>,
    Authenticated(claims): Authenticated,
    Path(id): Path<String>,
    body: JsonResult<TextBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Json(body) = body?;
    let action = ConsoleAction::Resolve { reason: body.text };
    Ok(change_json(&state.console.act(&claims, &id, action).await?))
}

async fn comment(
    State(state): State<AppState>,
    Authenticated(claims): Authenticated,
    Path(id): Path<String>,
    body: JsonResult<TextBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Json(body) = body?;
    let action = ConsoleAction::Comment { text: body.text };
    Ok(change_json(&state.console.act(&claims, &id, action).await?))
}

async fn list_silences(State(state): State<AppState>, Authenticated(claims): Authenticated) -> Json<serde_json::Value> {
    Json(serde_json::json!({"silences": state.console.silences_for(&claims)}))
}

async fn start_silence(
    State(state): State<AppState>,
    Authenticated(claims): Authenticated,
    body: JsonResult<SilenceRequest>,
) -> Result<Json<Silence>, ApiError> {
    let Json(request) = body?;
    Ok(Json(state.console.silence(&claims, request).await?))
}

async fn end_silence(
    State(state): State<AppState>,
    Authenticated(claims): Authenticated,
    Path(id): Path<String>,
) -> Result<Json<Silence>, ApiError> {
    Ok(Json(state.console.end_silence(&claims, &id).await?))
}

async fn list_assignments(
    State(state): State<AppState>,
    Authenticated(claims): Authenticated,
) -> Json<serde_json::Value> {
    Json(serde_json::json!({"assignments": state.console.assignments_for(&claims)}))
}

async fn assign(
    State(state): State<AppState>,
    Authenticated(claims): Authenticated,
    body: JsonResult<AssignmentRequest>,
) -> Result<Json<Assignment>, ApiError> {
    let Json(request) = body?;
    Ok(Json(state.console.assign(&claims, request).await?))
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
        .route("/api/silences", get(list_silences).post(start_silence))
        .route("/api/silences/{id}/end", post(end_silence))
        .route("/api/assignments", get(list_assignments).put(assign))
        .route("/api/openapi.json", get(openapi))
}
