//! The `/fhir` routes: `POST /fhir/<type>` (create), `POST /fhir` (transaction or batch
//! Bundle), `POST /fhir/$stream` (NDJSON of Observations), `GET /fhir/Observation` (recent
//! values) and `GET /fhir/metadata`. Writes need a token with the `gateway` role; reads a
//! console role that may see the patient. Bodies are read against the configured bound, and
//! every refusal is an OperationOutcome.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use futures_util::StreamExt;

use super::outcome::{FHIR_JSON, FhirError, Issue, fhir_response, operation_outcome};
use super::{Answer, FhirFeed};
use crate::auth::Claims;
use crate::console::Permission;
use crate::http::AppState;
use crate::http::error::ApiError;
use crate::http::extract::Authenticated;

/// The FHIR routes; the feed itself comes as an `Extension<Arc<FhirFeed>>` layered in `app`.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/fhir", post(bundle).fallback(not_allowed))
        .route("/fhir/metadata", get(metadata).fallback(not_allowed))
        .route("/fhir/$stream", post(super::stream::stream).fallback(not_allowed))
        .route("/fhir/{resource}", post(create).get(search).fallback(not_allowed))
        .route("/fhir/{resource}/{*rest}", any(not_served))
        // Bodies are read here against `[fhir] max_body_bytes`, with a FHIR answer when over.
        .layer(axum::extract::DefaultBodyLimit::disable())
}

/// The feed, or a 503 when the server was wired without one.
pub type Feed = Option<axum::Extension<Arc<FhirFeed>>>;

pub(super) fn feed(feed: Feed) -> Result<Arc<FhirFeed>, FhirError> {
    feed.map(|axum::Extension(f)| f).ok_or_else(FhirError::retry)
}

/// The caller, through the one claims extractor (rate limit and audit of refusals), its
/// refusal answered as an OperationOutcome.
pub(super) fn claims(auth: Result<Authenticated, ApiError>) -> Result<Claims, FhirError> {
    auth.map(|Authenticated(claims)| claims).map_err(|e| {
        let code = if e.status() == StatusCode::TOO_MANY_REQUESTS { "throttled" } else { "login" };
        FhirError::new(e.status(), Issue::error(code, "", e.to_string()))
    })
}

/// A writer: a token whose role may write to the feed (`gateway`); refusals audited.
pub(super) fn writer(
    state: &AppState,
    auth: Result<Authenticated, ApiError>,
    action: &str,
) -> Result<Claims, FhirError> {
    let claims = claims(auth)?;
    state
        .console
        .require(&claims, Permission::WriteFhir, action, "-")
        .map_err(|e| FhirError::new(StatusCode::FORBIDDEN, Issue::error("forbidden", "", e.to_string())))?;
    Ok(claims)
}

/// `application/fhir+json` or `application/json` (any parameters); else 415.
pub(super) fn json_body(headers: &HeaderMap, also: &[&str]) -> Result<(), FhirError> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let media = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if media == FHIR_JSON || media == "application/json" || also.contains(&media.as_str()) {
        return Ok(());
    }
    Err(FhirError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        Issue::error("not-supported", "", format!("content type must be {FHIR_JSON}")),
    ))
}

/// The whole body, at most `limit` bytes; 413 beyond.
pub(super) async fn read_body(body: Body, limit: usize) -> Result<Vec<u8>, FhirError> {
    let too_large = || {
        FhirError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            Issue::error("too-costly", "", format!("request body over the {limit} byte limit")),
        )
    };
    let mut out = Vec::new();
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|_| FhirError::bad_request(Issue::error("structure", "", "request body unreadable")))?;
        if out.len() + chunk.len() > limit {
            return Err(too_large());
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

fn minimal(headers: &HeaderMap) -> bool {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(';').any(|p| p.trim().eq_ignore_ascii_case("return=minimal")))
}

fn answer_response(answer: Answer, headers: &HeaderMap) -> Response {
    let mut response = if minimal(headers) {
        answer.status.into_response()
    } else {
        fhir_response(answer.status, &operation_outcome(&answer.issues))
    };
    if let Some(location) = answer.location.and_then(|l| HeaderValue::from_str(&l).ok()) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    if answer.status == StatusCode::SERVICE_UNAVAILABLE {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

async fn create(
    State(state): State<AppState>,
    feed: Feed,
    auth: Result<Authenticated, ApiError>,
    Path(resource): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, FhirError> {
    let feed = self::feed(feed)?;
    let claims = writer(&state, auth, "fhir_create")?;
    if resource.starts_with('$') || super::resource(&resource).is_none() {
        return Err(FhirError::new(
            StatusCode::NOT_FOUND,
            Issue::error(
                "not-supported",
                "",
                format!("{resource} is not a resource type Vigil accepts; see /fhir/metadata"),
            ),
        ));
    }
    json_body(&headers, &[])?;
    let body = read_body(body, feed.settings().max_body_bytes).await.inspect_err(|_| feed.ingress().refused())?;
    let if_none_exist = headers.get("if-none-exist").and_then(|v| v.to_str().ok());
    let answer = feed.create(&claims.sub, &resource, &body, if_none_exist).await?;
    tracing::debug!(sender = %claims.sub, resource = %resource, status = answer.status.as_u16(), "fhir create answered");
    Ok(answer_response(answer, &headers))
}

async fn bundle(
    State(state): State<AppState>,
    feed: Feed,
    auth: Result<Authenticated, ApiError>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, FhirError> {
    let feed = self::feed(feed)?;
    let claims = writer(&state, auth, "fhir_bundle")?;
    json_body(&headers, &[])?;
    let body = read_body(body, feed.settings().max_body_bytes).await.inspect_err(|_| feed.ingress().refused())?;
    let response = feed.bundle(&claims.sub, &body).await?;
    Ok(fhir_response(StatusCode::OK, &response))
}

/// Another method on a FHIR route (PUT, DELETE, PATCH...).
async fn not_allowed(method: axum::http::Method) -> FhirError {
    FhirError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        Issue::error("not-supported", "", format!("{method} is not supported here; see /fhir/metadata")),
    )
}

/// Reads by id, history, instance operations: not served.
async fn not_served() -> FhirError {
    FhirError::new(
        StatusCode::NOT_FOUND,
        Issue::error(
            "not-supported",
            "",
            "Vigil serves create, transaction, batch, $stream and Observation search; see /fhir/metadata",
        ),
    )
}

async fn metadata(feed: Feed) -> Result<Response, FhirError> {
    let feed = self::feed(feed)?;
    Ok(fhir_response(StatusCode::OK, &super::capability::statement(feed.settings())))
}

async fn search(
    State(state): State<AppState>,
    feed: Feed,
    auth: Result<Authenticated, ApiError>,
    Path(resource): Path<String>,
    Query(query): Query<Vec<(String, String)>>,
) -> Result<Response, FhirError> {
    let feed = self::feed(feed)?;
    let claims = claims(auth)?;
    if resource != "Observation" {
        return Err(FhirError::new(
            StatusCode::NOT_FOUND,
            Issue::error("not-supported", "", format!("search is supported on Observation only, not {resource}")),
        ));
    }
    let bundle = super::search::observations(&state, &feed, &claims, &query).await?;
    Ok(fhir_response(StatusCode::OK, &bundle))
}
