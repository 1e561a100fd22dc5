//! HTTP: the axum router for the console page, the `/ws` alert stream, the REST API, the
//! rules and webhook admin routes, health and metrics; one claims extractor (`extract`), one
//! `ApiError` (`error`), security headers on every response (`security`), and the server
//! that accepts connections under a cap and timeouts (`server`). Handlers are thin adapters
//! over `crate::console`.

pub mod api;
pub mod console;
pub mod devices;
pub mod error;
pub mod extract;
pub mod metrics;
pub mod rules_api;
pub mod security;
pub mod server;
pub mod webhooks;
pub mod ws;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use vigil_actors::AlertStore;

use crate::alerts::AlertHub;
use crate::auth::Auth;
use crate::ingest::Ingress;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The console service: acting on alerts, summaries, visibility, permissions, audit.
    pub console: crate::console::Console,
    /// Live vitals of open patients.
    pub live: crate::alerts::live::LiveHub,
    /// Live alert changes.
    pub hub: AlertHub,
    /// Alert log position for `/metrics`.
    pub alerts: Arc<dyn AlertStore>,
    /// Token verification.
    pub auth: Auth,
    /// Failed authentications per peer (rate limit, aggregated audit).
    pub auth_failures: Arc<extract::AuthFailures>,
    /// Open WebSocket sessions under their caps.
    pub ws_sessions: Arc<ws::SessionRegistry>,
    /// Ingest counters.
    pub ingress: Arc<Ingress>,
    /// The MLLP listener's connection counters.
    pub mllp: Arc<crate::ingest::mllp::listener::ListenerMetrics>,
    /// The HTTP accept loop's counters.
    pub http_connections: Arc<server::ServerMetrics>,
    /// The HL7 feed (its mapper's dropped-value counters).
    pub hl7: Arc<crate::ingest::hl7::Hl7Feed>,
    /// Live patient actors.
    pub router: Arc<vigil_actors::Router>,
    /// Audit log.
    pub audit: crate::audit::AuditLog,
    /// Held by every WebSocket session (and this state); shutdown waits until all are dropped,
    /// so no session outlives the store it reads.
    pub sessions: tokio::sync::mpsc::Sender<()>,
    /// Turns true when shutdown begins: WebSocket sessions close.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// The rule host (listing, replacing rules over `/api/rules`).
    pub rules: Arc<crate::rules::RhaiRules>,
    /// Readiness: false while starting and once shutdown begins.
    pub ready: Arc<AtomicBool>,
    /// `/metrics` needs a token.
    pub metrics_require_auth: bool,
    /// The Prometheus recorder `/metrics` renders.
    pub metrics: metrics::Metrics,
    /// Security headers (HSTS when over TLS).
    pub security: security::SecurityHeaders,
}

/// The HTTP routes.
pub fn routes(state: AppState) -> Router {
    let security = state.security;
    Router::new()
        .route("/", get(console::index))
        .route("/ws", get(ws::upgrade))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics::render))
        .merge(api::routes())
        .merge(rules_api::routes())
        .merge(webhooks::routes())
        .merge(devices::routes())
        .merge(crate::ingest::fhir::http::routes())
        .layer(axum::extract::DefaultBodyLimit::max(256 * 1024))
        .layer(axum::middleware::from_fn_with_state(security, security::add_headers))
        .with_state(state)
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    if state.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}
