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
/// Live patient actors.
pub const PATIENTS: &str = "vigil_patient_actors";
/// Last alert sequence number committed.
pub const ALERT_SEQ: &str = "vigil_alert_last_seq";

/// Render the metrics.
pub async fn render(axum::extract::State(state): State<AppState>) -> impl IntoResponse {
    let m = &state.ingress.metrics;
    let mut out = String::new();
    let mut line = |name: &str, kind: &str, value: u64| {
        let _ = writeln!(out, "# TYPE {name} {kind}\n{name} {value}");
    };
    line(MLLP_ACCEPTED, "counter", m.accepted.load(Ordering::Relaxed));
    line(MLLP_REJECTED, "counter", m.rejected.load(Ordering::Relaxed));
    line(MLLP_DUPLICATES, "counter", m.duplicates.load(Ordering::Relaxed));
    line(PATIENTS, "gauge", state.router.patient_count() as u64);
    line(ALERT_SEQ, "gauge", state.alerts.last_seq());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
