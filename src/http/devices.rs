//! `/api/devices` and `/api/quarantine`: which patient each device reports for, set or ended by
//! a user (admin or nurse), and the readings of devices with no patient. A thin adapter over
//! the [`DeviceRegistry`] (reached as an axum `Extension`), which persists and audits every
//! change. Answers name patients by their opaque id only.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, put};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use vigil_actors::device::{Attachment, ChangedBy, DeviceError, DeviceRecord, DeviceRegistry};
use vigil_actors::{Demographics, DeviceId, Location, PatientKey, Phi};

use super::AppState;
use super::error::ApiError;
use super::extract::Authenticated;
use crate::auth::{Claims, Role};

type JsonResult<T> = Result<Json<T>, axum::extract::rejection::JsonRejection>;
type QueryResult<T> = Result<Query<T>, axum::extract::rejection::QueryRejection>;

/// Longest device id accepted (an EUI-64 with separators is 23 characters).
const MAX_DEVICE_ID: usize = 128;
/// Quarantined readings one request lists at most.
const MAX_QUARANTINE_LIST: usize = 1000;

/// Who may read devices and quarantine: every console role; a gateway reads nothing.
fn may_read(claims: &Claims) -> Result<(), ApiError> {
    match claims.role {
        Role::Gateway => Err(ApiError::forbidden("role gateway may not read devices")),
        _ => Ok(()),
    }
}

/// Who may associate devices: admin, and the nurse who places a monitor at the bedside.
fn may_associate(claims: &Claims) -> Result<(), ApiError> {
    match claims.role {
        Role::Admin | Role::Nurse => Ok(()),
        _ => Err(ApiError::forbidden("may not associate devices; needs admin or nurse")),
    }
}

fn device_id(id: String) -> Result<DeviceId, ApiError> {
    let id = id.trim();
    if id.is_empty() || id.len() > MAX_DEVICE_ID || id.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!("a device id is 1 to {MAX_DEVICE_ID} printable characters")));
    }
    Ok(DeviceId(id.to_string()))
}

fn record_json(record: &DeviceRecord) -> serde_json::Value {
    serde_json::json!({
        "id": record.id,
        "bed": record.bed,
        "association": record.association.as_ref().map(|a| serde_json::json!({
            "patient_id": a.patient.patient_id,
            "source": a.source.as_str(),
            "since": a.since.format(&time::format_description::well_known::Rfc3339).ok(),
        })),
    })
}

fn device_error(error: DeviceError) -> ApiError {
    match error {
        DeviceError::Bound(e) => ApiError::new(StatusCode::INSUFFICIENT_STORAGE, "too_many", e.to_string()),
        DeviceError::Store(e) => {
            tracing::error!(error = %e, "device association not stored");
            ApiError::unavailable()
        }
    }
}

/// A patient named by identifier: the assigning authority and the MRN, as HL7 PID-3 has them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatientRef {
    /// Assigning authority (PID-3.4).
    authority: String,
    /// Medical record number (PID-3.1).
    mrn: String,
}

/// Body of `PUT /api/devices/{id}/association`: a patient, or a bed (the device then reports
/// for whoever ADT puts in that bed), not both.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssociationBody {
    /// Associate with this patient.
    #[serde(default)]
    patient: Option<PatientRef>,
    /// Place the device at this bed.
    #[serde(default)]
    bed: Option<Location>,
}

async fn list_devices(
    Authenticated(claims): Authenticated,
    Extension(devices): Extension<Arc<DeviceRegistry>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    may_read(&claims)?;
    let list = devices.list().await;
    Ok(Json(serde_json::json!({
        "devices": list.iter().map(record_json).collect::<Vec<_>>(),
        "live": devices.device_count(),
        "offline": devices.offline_count(),
    })))
}

async fn get_device(
    Authenticated(claims): Authenticated,
    Extension(devices): Extension<Arc<DeviceRegistry>>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    may_read(&claims)?;
    let id = device_id(id)?;
    let record = devices.record(&id).await.ok_or_else(|| ApiError::not_found("no such device"))?;
    Ok(Json(record_json(&record)))
}

async fn put_association(
    State(state): State<AppState>,
    Authenticated(claims): Authenticated,
    Extension(devices): Extension<Arc<DeviceRegistry>>,
    Path(id): Path<String>,
    body: JsonResult<AssociationBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    may_associate(&claims)?;
    let id = device_id(id)?;
    let Json(body) = body?;
    let by = ChangedBy { user: &claims.sub, role: crate::console::role_name(claims.role) };
    match (body.patient, body.bed) {
        (Some(patient), None) => {
            if patient.mrn.trim().is_empty() || patient.mrn.len() > 64 || patient.authority.len() > 64 {
                return Err(ApiError::bad_request("patient.mrn is required (at most 64 characters)"));
            }
            let key = PatientKey {
                authority: patient.authority.trim().to_string(),
                mrn: Phi(patient.mrn.trim().to_string()),
            };
            let attachment = Attachment {
                patient_id: state.hl7.mapper().patient_id(&key),
                patient: key,
                demographics: Demographics::default(),
                location: None,
            };
            devices.associate(by, &id, attachment).await.map_err(device_error)?;
        }
        (None, Some(bed)) => {
            if bed.bed.trim().is_empty() || [&bed.unit, &bed.room, &bed.bed].iter().any(|s| s.len() > 64) {
                return Err(ApiError::bad_request("bed.bed is required (each part at most 64 characters)"));
            }
            devices.place(by, &id, Some(bed)).await.map_err(device_error)?;
        }
        _ => return Err(ApiError::bad_request("give either patient or bed")),
    }
    let record = devices.record(&id).await.ok_or_else(ApiError::internal)?;
    Ok(Json(record_json(&record)))
}

async fn delete_association(
    Authenticated(claims): Authenticated,
    Extension(devices): Extension<Arc<DeviceRegistry>>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    may_associate(&claims)?;
    let id = device_id(id)?;
    let by = ChangedBy { user: &claims.sub, role: crate::console::role_name(claims.role) };
    // Ending the association takes the device off its bed too: otherwise the next admission
    // to that bed would associate it again behind the user's back.
    devices.place(by, &id, None).await.map_err(device_error)?;
    devices.dissociate(by, &id).await.map_err(device_error)?;
    let record = devices.record(&id).await.ok_or_else(|| ApiError::not_found("no such device"))?;
    Ok(Json(record_json(&record)))
}

/// Query of `GET /api/quarantine`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuarantineQuery {
    /// At most this many, newest first (default 100, at most 1000).
    #[serde(default)]
    limit: Option<usize>,
}

async fn list_quarantine(
    Authenticated(claims): Authenticated,
    Extension(devices): Extension<Arc<DeviceRegistry>>,
    query: QueryResult<QuarantineQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    may_read(&claims)?;
    let Query(query) = query?;
    let limit = query.limit.unwrap_or(100).clamp(1, MAX_QUARANTINE_LIST);
    let readings = devices.quarantined(limit).await.map_err(|e| {
        tracing::error!(error = %e, "quarantine unreadable");
        ApiError::unavailable()
    })?;
    Ok(Json(serde_json::json!({
        "since_start": devices.quarantined.load(std::sync::atomic::Ordering::Relaxed),
        "readings": readings,
    })))
}

/// The device routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/devices", get(list_devices))
        .route("/api/devices/{id}", get(get_device))
        .route("/api/devices/{id}/association", put(put_association).delete(delete_association))
        .route("/api/quarantine", get(list_quarantine))
}
