//! `/api/rules`: informaticists list the rules in use and publish a new version of one.
//! `PUT /api/rules/{id}` (body: the rule source) needs a token with role `informaticist` or
//! `admin`; the source is compiled and linted before an atomic swap, and a broken one is
//! answered 422 with file, line and column while the running version stays.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use serde_json::json;

use super::AppState;
use super::error::ApiError;
use super::extract::Authenticated;
use crate::console::Permission;
use crate::rules::{ReplaceError, RuleError};

/// Largest rule source accepted.
const MAX_RULE_BYTES: usize = 64 * 1024;

/// The routes, mounted by [`super::routes`].
pub fn routes() -> Router<AppState> {
    Router::new().route("/api/rules", get(list)).route("/api/rules/{id}", get(show).put(replace))
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

async fn list(
    State(state): State<AppState>,
    Authenticated(claims): Authenticated,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    state.console.require(&claims, Permission::ReadRules, "view_rules", "*")?;
    let rules: Vec<_> = state.rules.rules().iter().map(|r| describe(r)).collect();
    let errors: Vec<_> = state.rules.last_errors().iter().map(error_json).collect();
    Ok(axum::Json(json!({ "rules": rules, "tables": state.rules.table_names(), "reload_errors": errors })))
}

async fn show(
    State(state): State<AppState>,
    Authenticated(claims): Authenticated,
    Path(id): Path<String>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    state.console.require(&claims, Permission::ReadRules, "view_rule", &id)?;
    let rules = state.rules.rules();
    let rule = rules.iter().find(|r| r.id == id).ok_or_else(|| ApiError::not_found(format!("no rule `{id}`")))?;
    let mut body = describe(rule);
    body["source"] = rule.source.clone().into();
    Ok(axum::Json(body))
}

async fn replace(
    State(state): State<AppState>,
    Authenticated(claims): Authenticated,
    Path(id): Path<String>,
    body: Result<String, axum::extract::rejection::StringRejection>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    const ACTION: &str = "rule_update";
    state.console.require(&claims, Permission::WriteRules, ACTION, &id)?;
    let body = body.map_err(|e| ApiError::new(e.status(), "bad_request", e.body_text()))?;
    if body.len() > MAX_RULE_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("a rule source is at most {MAX_RULE_BYTES} bytes"),
        ));
    }
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "bad_id", "a rule id is letters, digits, '.', '_' and '-'"));
    }
    let rules = std::sync::Arc::clone(&state.rules);
    let rule_id = id.clone();
    // Compiling and linting takes a few milliseconds: off the async workers.
    let outcome = tokio::task::spawn_blocking(move || rules.replace(&rule_id, &body)).await;
    match outcome {
        Ok(Ok(rule)) => {
            tracing::info!(rule = %rule.id, version = %rule.version, by = %claims.sub, "rule replaced over the API");
            state.console.audit(&claims, ACTION, &id, "ok");
            Ok(axum::Json(describe(&rule)))
        }
        Ok(Err(ReplaceError::Invalid(e))) => {
            state.console.audit(&claims, ACTION, &id, "failed: invalid rule");
            let mut error = ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_rule", e.to_string());
            if let serde_json::Value::Object(fields) = error_json(&e) {
                for (key, value) in fields {
                    error = error.with_detail(&key, value);
                }
            }
            Err(error)
        }
        Ok(Err(e @ ReplaceError::IdMismatch { .. })) => {
            Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "id_mismatch", e.to_string()))
        }
        Ok(Err(ReplaceError::Io(e))) => {
            tracing::error!(rule = %id, error = %e, "rule file not written");
            state.console.audit(&claims, ACTION, &id, "failed: not stored");
            Err(ApiError::internal())
        }
        Err(e) => {
            tracing::error!(rule = %id, error = %e, "rule replacement task failed");
            Err(ApiError::internal())
        }
    }
}
