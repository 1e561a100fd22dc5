//! `/api/rules`: informaticists list the rules in use and publish a new version of one.
//! `PUT /api/rules/{id}` (body: the rule source) needs a token with role `informaticist` or
//! `admin`; the source is compiled and linted before an atomic swap, and a broken one is
//! answered 422 with file, line and column while the running version stays.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use super::AppState;
use crate::auth::{Claims, Role};
use crate::rules::{ReplaceError, RuleError};

/// Largest rule source accepted.
const MAX_RULE_BYTES: usize = 64 * 1024;

/// The routes, mounted by [`super::routes`].
pub fn routes() -> Router<AppState> {
    Router::new().route("/api/rules", get(list)).route("/api/rules/{id}", get(show).put(replace))
}

fn reason(status: StatusCode, error: &str, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": error, "reason": message.into() }))).into_response()
}

fn authorise(state: &AppState, headers: &HeaderMap, write: bool) -> Result<Claims, Box<Response>> {
    let token = crate::auth::bearer(headers).ok_or_else(|| {
        Box::new(reason(StatusCode::UNAUTHORIZED, "unauthorized", crate::auth::AuthError::Missing.to_string()))
    })?;
    let claims = state
        .auth
        .verify(token)
        .map_err(|e| Box::new(reason(StatusCode::UNAUTHORIZED, "unauthorized", e.to_string())))?;
    let allowed = matches!(claims.role, Role::Informaticist | Role::Admin)
        || (!write && matches!(claims.role, Role::Pharmacist | Role::Physician));
    if !allowed {
        let need = if write { "informaticist or admin" } else { "informaticist, admin, pharmacist or physician" };
        return Err(Box::new(reason(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("role {:?} may not do this; needs {need}", claims.role),
        )));
    }
    Ok(claims)
}

fn describe(rule: &crate::rules::LoadedRule) -> serde_json::Value {
    json!({
        "id": rule.id,
        "version": rule.version,
        "title": rule.title,
        "severity": rule.severity,
        "triggers": rule.triggers,
        "references": rule.references,
        "cooldown_s": rule.policy.cooldown_s,
        "clear_for_s": rule.policy.clear_for_s,
        "reopen_s": rule.policy.reopen_s,
        "min_age": rule.min_age,
        "file": rule.path.file_name().map(|f| f.to_string_lossy().to_string()),
        "failures": rule.failures(),
        "last_error": rule.last_error(),
        "warnings": rule.warnings,
    })
}

fn error_json(e: &RuleError) -> serde_json::Value {
    match e {
        RuleError::Invalid { file, line, column, message } => {
            json!({ "file": file, "line": line, "column": column, "message": message })
        }
        RuleError::Io { file, message } => json!({ "file": file, "line": 0, "column": 0, "message": message }),
    }
}

async fn list(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(r) = authorise(&state, &headers, false) {
        return *r;
    }
    let rules: Vec<_> = state.rules.rules().iter().map(|r| describe(r)).collect();
    let errors: Vec<_> = state.rules.last_errors().iter().map(error_json).collect();
    axum::Json(json!({ "rules": rules, "tables": state.rules.table_names(), "reload_errors": errors })).into_response()
}

async fn show(State(state): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Err(r) = authorise(&state, &headers, false) {
        return *r;
    }
    match state.rules.rules().iter().find(|r| r.id == id) {
        Some(rule) => {
            let mut body = describe(rule);
            body["source"] = rule.source.clone().into();
            axum::Json(body).into_response()
        }
        None => reason(StatusCode::NOT_FOUND, "not_found", format!("no rule `{id}`")),
    }
}

async fn replace(State(state): State<AppState>, headers: HeaderMap, Path(id): Path<String>, body: String) -> Response {
    let claims = match authorise(&state, &headers, true) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    if body.len() > MAX_RULE_BYTES {
        return reason(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("a rule source is at most {MAX_RULE_BYTES} bytes"),
        );
    }
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) {
        return reason(StatusCode::BAD_REQUEST, "bad_id", "a rule id is letters, digits, '.', '_' and '-'");
    }
    let rules = std::sync::Arc::clone(&state.rules);
    let rule_id = id.clone();
    // Compiling and linting takes a few milliseconds: off the async workers.
    let outcome = tokio::task::spawn_blocking(move || rules.replace(&rule_id, &body)).await;
    match outcome {
        Ok(Ok(rule)) => {
            tracing::info!(rule = %rule.id, version = %rule.version, by = %claims.sub, "rule replaced over the API");
            (StatusCode::OK, axum::Json(describe(&rule))).into_response()
        }
        Ok(Err(ReplaceError::Invalid(e))) => {
            let mut body = error_json(&e);
            body["error"] = "invalid_rule".into();
            body["reason"] = e.to_string().into();
            (StatusCode::UNPROCESSABLE_ENTITY, axum::Json(body)).into_response()
        }
        Ok(Err(e @ ReplaceError::IdMismatch { .. })) => {
            reason(StatusCode::UNPROCESSABLE_ENTITY, "id_mismatch", e.to_string())
        }
        Ok(Err(ReplaceError::Io(e))) => {
            tracing::error!(rule = %id, error = %e, "rule file not written");
            reason(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the rule could not be stored")
        }
        Err(_) => reason(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the rule could not be stored"),
    }
}
