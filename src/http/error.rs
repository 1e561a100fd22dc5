//! The one error type of every HTTP route: a status, a stable machine-readable `error` code
//! and a human `reason` in a JSON body (`{"error": "not_found", "reason": "no such alert"}`),
//! plus route-specific fields where a client needs them (a rule's file, line and column).
//! 5xx bodies are generic; the cause goes to the log.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::auth::AuthError;
use crate::console::ConsoleError;

/// A failed HTTP request.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    reason: String,
    details: serde_json::Map<String, serde_json::Value>,
    retry_after_secs: Option<u64>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for ApiError {}

impl ApiError {
    /// An error with this status, code and reason (shown to the client).
    pub fn new(status: StatusCode, code: &'static str, reason: impl Into<String>) -> Self {
        ApiError { status, code, reason: reason.into(), details: serde_json::Map::new(), retry_after_secs: None }
    }

    /// 401: no token, or a token refused.
    pub fn unauthorized(reason: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", reason)
    }

    /// 403: a valid token whose holder may not do this.
    pub fn forbidden(reason: impl Into<String>) -> Self {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", reason)
    }

    /// 404: no such thing, or not visible to the caller.
    pub fn not_found(reason: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", reason)
    }

    /// 400: a malformed request.
    pub fn bad_request(reason: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", reason)
    }

    /// 429: too many attempts; retry after `secs`.
    pub fn too_many_requests(reason: impl Into<String>, secs: u64) -> Self {
        let mut e = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too_many_requests", reason);
        e.retry_after_secs = Some(secs.max(1));
        e
    }

    /// 503 with a generic body.
    pub fn unavailable() -> Self {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "service unavailable")
    }

    /// 500 with a generic body; log the cause before returning this.
    pub fn internal() -> Self {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error")
    }

    /// Add a field to the body beside `error` and `reason`.
    pub fn with_detail(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        self.details.insert(key.to_string(), value.into());
        self
    }

    /// The status this error answers with.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The machine-readable code.
    pub fn code(&self) -> &'static str {
        self.code
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = self.details;
        body.insert("error".into(), self.code.into());
        body.insert("reason".into(), self.reason.into());
        let mut response = (self.status, Json(serde_json::Value::Object(body))).into_response();
        if let Some(secs) = self.retry_after_secs {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl From<ConsoleError> for ApiError {
    fn from(e: ConsoleError) -> Self {
        match e {
            ConsoleError::Forbidden(m) => ApiError::forbidden(m),
            ConsoleError::NotFound(m) => ApiError::not_found(m),
            ConsoleError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            ConsoleError::BadRequest(m) => ApiError::bad_request(m),
            ConsoleError::Unavailable => ApiError::unavailable(),
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        ApiError::unauthorized(e.to_string())
    }
}

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(e: axum::extract::rejection::QueryRejection) -> Self {
        ApiError::bad_request(e.body_text())
    }
}

impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(e: axum::extract::rejection::JsonRejection) -> Self {
        // 400 for every malformed body (axum would say 422 for a body of the wrong shape).
        ApiError::bad_request(e.body_text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body(e: ApiError) -> (StatusCode, Option<HeaderValue>, serde_json::Value) {
        let response = e.into_response();
        let status = response.status();
        let retry = response.headers().get(header::RETRY_AFTER).cloned();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16).await.unwrap();
        (status, retry, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn every_error_is_a_code_and_a_reason_and_5xx_say_nothing_more() {
        let (status, _, json) = body(ConsoleError::NotFound("no such alert".into()).into()).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(json, serde_json::json!({"error": "not_found", "reason": "no such alert"}));
        let (status, _, json) = body(ConsoleError::Unavailable.into()).await;
        assert_eq!((status, json["reason"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("service unavailable")));
        let (status, _, json) = body(AuthError::Expired.into()).await;
        assert_eq!(
            (status, json["error"].as_str(), json["reason"].as_str()),
            (StatusCode::UNAUTHORIZED, Some("unauthorized"), Some("token expired"))
        );
        let (_, _, json) = body(ApiError::bad_request("x").with_detail("line", 3)).await;
        assert_eq!(json["line"], 3);
        let (status, retry, _) = body(ApiError::too_many_requests("slow down", 0)).await;
        assert_eq!((status, retry.as_ref().and_then(|v| v.to_str().ok())), (StatusCode::TOO_MANY_REQUESTS, Some("1")));
    }
}
