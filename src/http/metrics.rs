//! `/metrics` in the Prometheus text format. Every metric name is defined here, once.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use super::AppState;

/// Messages answered with AA/CA.
pub const MLLP_ACCEPTED: &str = "vigil_messages_accepted_total";
/// Messages answered with AE/AR/CE/CR.
pub const MLLP_REJECTED: &str = "vigil_messages_rejected_total";
/// Resends of accepted messages re-acknowledged without processing.
pub const MLLP_DUPLICATES: &str = "vigil_messages_duplicate_total";
/// Bytes received outside MLLP frames and discarded.
pub const MLLP_DISCARDED: &str = "vigil_mllp_discarded_bytes_total";
/// Live patient actors.
pub const PATIENTS: &str = "vigil_patient_actors";
/// Last alert sequence number committed.
pub const ALERT_SEQ: &str = "vigil_alert_last_seq";
/// Alert changes a webhook endpoint accepted (2xx).
pub const WEBHOOK_DELIVERED: &str = "vigil_webhook_delivered_total";
/// Webhook attempts that failed and were retried.
pub const WEBHOOK_RETRIED: &str = "vigil_webhook_retried_total";
/// Alert changes given up on and written to the webhook dead letters.
pub const WEBHOOK_DEAD_LETTERED: &str = "vigil_webhook_dead_lettered_total";

/// Observation values of a known analyte dropped at ingest instead of scored, labelled
/// `analyte` (canonical name) and `reason` (`unit_missing`, `unit_incompatible`,
/// `unit_unknown`, `implausible`, `not_numeric`, `unknown_answer`): both bounded sets.
pub const OBSERVATIONS_DROPPED: &str = "vigil_observations_dropped_total";

/// Render the metrics; behind a token when `[http] metrics_require_auth` is set.
pub async fn render(
    axum::extract::State(state): State<AppState>,
    webhooks: Option<axum::Extension<crate::alerts::webhooks::Webhooks>>,
    request: axum::extract::Request,
) -> Result<impl IntoResponse, super::error::ApiError> {
    if state.metrics_require_auth {
        let (mut parts, _) = request.into_parts();
        <super::extract::Authenticated as axum::extract::FromRequestParts<AppState>>::from_request_parts(
            &mut parts, &state,
        )
        .await?;
    }
    let m = &state.ingress.metrics;
    let mut out = String::new();
    let mut line = |name: &str, kind: &str, value: u64| {
        let _ = writeln!(out, "# TYPE {name} {kind}\n{name} {value}");
    };
    line(MLLP_ACCEPTED, "counter", m.accepted.load(Ordering::Relaxed));
    line(MLLP_REJECTED, "counter", m.rejected.load(Ordering::Relaxed));
    line(MLLP_DUPLICATES, "counter", m.duplicates.load(Ordering::Relaxed));
    line(MLLP_DISCARDED, "counter", m.discarded_bytes.load(Ordering::Relaxed));
    line(PATIENTS, "gauge", state.router.patient_count() as u64);
    line(ALERT_SEQ, "gauge", state.alerts.last_seq());
    let webhook = webhooks.map(|w| w.0.metrics);
    let count = |read: fn(&crate::alerts::webhooks::WebhookMetrics) -> u64| webhook.as_deref().map_or(0, read);
    line(WEBHOOK_DELIVERED, "counter", count(|m| m.delivered.load(Ordering::Relaxed)));
    line(WEBHOOK_RETRIED, "counter", count(|m| m.retried.load(Ordering::Relaxed)));
    line(WEBHOOK_DEAD_LETTERED, "counter", count(|m| m.dead_lettered.load(Ordering::Relaxed)));
    let _ = writeln!(out, "# TYPE {OBSERVATIONS_DROPPED} counter");
    for (analyte, reason, n) in state.ingress.mapper().dropped().nonzero() {
        let _ = writeln!(out, "{OBSERVATIONS_DROPPED}{{analyte=\"{analyte}\",reason=\"{}\"}} {n}", reason.label());
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out))
}
