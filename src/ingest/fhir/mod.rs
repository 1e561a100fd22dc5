//! The FHIR R4 feed: JSON resources, Bundles (transaction, batch) and an NDJSON stream of
//! Observations, mapped through the shared [`Mapper`] and submitted to the shared [`Ingress`]
//! like any HL7 message; the answer (201/200, an OperationOutcome, a Bundle response) is sent
//! only once the outcome is known, so nothing is acknowledged before it is durable.
//!
//! [`RESOURCES`] is the one table of what the feed supports: the routes dispatch on it and the
//! CapabilityStatement (`GET /fhir/metadata`) is generated from it. Adding a resource type: a
//! mapping in `resources.rs` returning [`Mapped`], a row here, a test in `resources/tests.rs`
//! and in tests/it/fhir.rs, and a line in docs/fhir.md.

pub mod alarm;
pub mod capability;
pub mod http;
pub mod json;
pub mod outcome;
pub mod resources;
pub mod search;
pub mod stream;

use std::sync::Arc;

use axum::http::StatusCode;
use dashmap::DashMap;
use serde_json::{Value, json};
use sha2::Digest;
use time::OffsetDateTime;
use vigil_actors::{ClinicalEvent, Envelope, EventStore, MessageKey, PatientId, PatientKey, Phi, Source};

use self::json::{BodyError, El};
use self::outcome::{FhirError, Issue};
use self::resources::{Context, MapFn, Mapped, Referenced};
use crate::config::FhirSettings;
use crate::ingest::map::Mapper;
use crate::ingest::{Ingress, Outcome, Part, Submission};

/// How a resend of a resource is recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resend {
    /// A measurement or an act (Observation, MedicationAdministration) happens once: a resend
    /// is recognised by `If-None-Exist`, else the resource's first identifier, else its
    /// content, and stored once.
    Once,
    /// A state (Patient, Encounter, MedicationRequest, AllergyIntolerance, Device) may be sent
    /// again on purpose (back to an earlier bed, an order resumed): every POST is applied,
    /// unless `If-None-Exist` names an earlier one. Applying the same state twice changes
    /// nothing.
    Applied,
}

/// A resource type the feed accepts.
pub struct Resource {
    /// `resourceType`.
    pub name: &'static str,
    /// The mapping.
    pub map: MapFn,
    /// How resends are recognised.
    pub resend: Resend,
    /// What it becomes in Vigil, for the CapabilityStatement.
    pub documentation: &'static str,
}

/// Every resource type the feed accepts: the routes and the CapabilityStatement both read it.
pub const RESOURCES: &[Resource] = &[
    Resource {
        name: "Observation",
        map: resources::observation,
        resend: Resend::Once,
        documentation: "Vital signs and results (MDC or LOINC codes, UCUM units, components such as the \
                        blood-pressure panel) become observations scored by the rules. Search: recent values.",
    },
    Resource {
        name: "Patient",
        map: resources::patient,
        resend: Resend::Applied,
        documentation: "Demographics under the MRN identifier (type MR or untyped); the id Vigil returns \
                        (Patient/<id>) may be used as a subject reference.",
    },
    Resource {
        name: "Encounter",
        map: resources::encounter,
        resend: Resend::Applied,
        documentation: "Census: admission, transfer, discharge and cancellation; location by physicalType \
                        (wa, ro, bd) as unit, room and bed.",
    },
    Resource {
        name: "Device",
        map: resources::device,
        resend: Resend::Applied,
        documentation: "Identity only (EUI-64 under the PHD system, other identifiers, UDI): the id Vigil \
                        returns may be used in Observation.device. Nothing is stored.",
    },
    Resource {
        name: "MedicationRequest",
        map: resources::medication_request,
        resend: Resend::Applied,
        documentation: "Medication orders (RxNorm or name) for interaction and allergy rules.",
    },
    Resource {
        name: "MedicationAdministration",
        map: resources::medication_administration,
        resend: Resend::Once,
        documentation: "Administrations (RxNorm or name) with their time.",
    },
    Resource {
        name: "AllergyIntolerance",
        map: resources::allergy_intolerance,
        resend: Resend::Applied,
        documentation: "Allergies added to the record; never a complete list, never removed.",
    },
];

/// The row of a resource type.
pub fn resource(name: &str) -> Option<&'static Resource> {
    RESOURCES.iter().find(|r| r.name == name)
}

/// Map one resource already parsed, with nothing resolved beyond the resource itself (no
/// Bundle, no issued ids): what the fuzz target and the mapping tests drive.
pub fn map_resource(mapper: &Mapper, value: &Value, received_at: OffsetDateTime) -> Result<Mapped, Vec<Issue>> {
    let kind = value.get("resourceType").and_then(Value::as_str).unwrap_or("");
    let Some(row) = resource(kind) else {
        return Err(vec![Issue::error("not-supported", "resourceType", "not a resource type Vigil accepts")]);
    };
    let referenced = Referenced::default();
    (row.map)(&Context { mapper, received_at, referenced: &referenced }, &El::root(value, kind))
}

/// What the answer to a resend says (a conditional create that matched).
const RESENT: &str = "a resend of a resource already accepted: answered as then, not stored again";

/// Opaque patient ids handed out for Patients, and what they stand for, at most this many.
const ISSUED_CAPACITY: usize = 100_000;

/// The FHIR adapter in front of [`Ingress`].
pub struct FhirFeed {
    ingress: Arc<Ingress>,
    mapper: Mapper,
    settings: FhirSettings,
    events: Arc<dyn EventStore>,
    /// Patients whose ids were issued or read lately, so `Patient/<id>` resolves without a
    /// store read.
    issued: DashMap<PatientId, PatientKey>,
    /// The device registry Observations report their devices to.
    devices: Option<Arc<vigil_actors::device::DeviceRegistry>>,
}

/// One resource ready to submit: its events, resend key and answer-to-be.
pub struct Prepared {
    /// `resourceType`.
    pub kind: &'static str,
    /// The logical id answered in `Location`.
    pub id: String,
    /// What to submit.
    pub envelope: Envelope,
    /// The events.
    pub events: Vec<ClinicalEvent>,
    /// Warnings and information for the answer.
    pub issues: Vec<Issue>,
    /// Patients whose ids this resource issues (Patient resources).
    issues_patient: Option<(PatientId, PatientKey)>,
    /// The device an Observation names, for the device registry.
    device: Option<resources::DeviceReport>,
    /// Whether its resend key recognises a resend (`If-None-Exist`, or a resource that
    /// happens once); otherwise every POST of it is applied.
    recognised: bool,
}

/// The answer to one resource.
#[derive(Debug, Clone)]
pub struct Answer {
    /// 201 stored, 200 resend or nothing to store, 503 retry.
    pub status: StatusCode,
    /// `Type/id`.
    pub location: Option<String>,
    /// Issues for the OperationOutcome.
    pub issues: Vec<Issue>,
}

impl FhirFeed {
    /// The feed over `ingress`, mapping with `mapper` (a clone of the HL7 feed's) and reading
    /// recent events from `events`.
    pub fn new(ingress: Arc<Ingress>, mapper: Mapper, settings: FhirSettings, events: Arc<dyn EventStore>) -> Self {
        FhirFeed { ingress, mapper, settings, events, issued: DashMap::new(), devices: None }
    }

    /// The limits and identifier systems in force.
    pub fn settings(&self) -> &FhirSettings {
        &self.settings
    }

    /// The mapper (identity, vocabulary).
    pub fn mapper(&self) -> &Mapper {
        &self.mapper
    }

    /// The shared ingest.
    pub fn ingress(&self) -> &Arc<Ingress> {
        &self.ingress
    }

    /// Parse a body within the configured limits.
    pub fn parse(&self, body: &[u8]) -> Result<Value, FhirError> {
        json::parse(body, self.settings.max_depth).map_err(|e| {
            self.ingress.refused();
            match e {
                BodyError::TooDeep(max) => FhirError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    Issue::error("too-costly", "", format!("JSON nested deeper than {max} levels")),
                ),
                BodyError::Syntax(at) => {
                    FhirError::bad_request(Issue::error("structure", "", format!("not JSON (at {at})")))
                }
            }
        })
    }

    /// Map one resource of type `expected` (from the URL) received at `received_at`.
    pub async fn prepare(
        &self,
        sender: &str,
        expected: Option<&str>,
        value: &Value,
        if_none_exist: Option<&str>,
    ) -> Result<Prepared, FhirError> {
        let received_at = self.ingress.clock().now();
        let mut referenced = Referenced::default();
        self.resolve_issued(value, &mut referenced).await;
        let prepared = self.prepare_with(sender, expected, value, if_none_exist, received_at, &referenced);
        if prepared.is_err() {
            self.ingress.refused();
        }
        prepared
    }

    fn prepare_with(
        &self,
        sender: &str,
        expected: Option<&str>,
        value: &Value,
        if_none_exist: Option<&str>,
        received_at: OffsetDateTime,
        referenced: &Referenced,
    ) -> Result<Prepared, FhirError> {
        let Some(kind) = value.get("resourceType").and_then(Value::as_str) else {
            return Err(FhirError::bad_request(Issue::required("resourceType")));
        };
        if let Some(expected) = expected.filter(|e| *e != kind) {
            return Err(FhirError::bad_request(Issue::invalid(
                "resourceType",
                format!("a {kind} posted to /fhir/{expected}"),
            )));
        }
        let Some(row) = resource(kind) else {
            return Err(FhirError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                Issue::error("not-supported", "resourceType", format!("{kind} is not a resource type Vigil accepts")),
            ));
        };
        let ctx = Context { mapper: &self.mapper, received_at, referenced };
        let mapped: Mapped = (row.map)(&ctx, &El::root(value, kind)).map_err(refusal)?;
        let key_id = resend_key(row, value, if_none_exist, mapped.keyed_by_content);
        let recognised = row.resend == Resend::Once || if_none_exist.is_some_and(|q| !q.trim().is_empty());
        let id = mapped.id.clone().unwrap_or_else(|| short_digest(&key_id));
        let issues_patient = match (kind, mapped.events.first()) {
            ("Patient", Some(e)) => Some((e.patient_id.clone(), e.patient.clone())),
            _ => None,
        };
        Ok(Prepared {
            kind: row.name,
            id,
            envelope: Envelope {
                key: MessageKey { source: Source::Fhir, sender: sender.to_string(), id: key_id },
                raw: Phi(value.to_string()),
                received_at,
            },
            events: mapped.events,
            issues: mapped.issues,
            issues_patient,
            device: mapped.device,
            recognised,
        })
    }

    /// Report the device an Observation names to the device registry, when one is wired:
    /// seen now, reporting for the Observation's subject, its technical conditions raised or
    /// resolved (stored before this returns, so before the answer).
    async fn report_device(&self, report: Option<&resources::DeviceReport>) {
        let (Some(devices), Some(report)) = (&self.devices, report) else { return };
        let technical = report.technical.then(|| vigil_actors::device::TechnicalReport {
            conditions: report.conditions.clone(),
            valid_data: report.valid_data,
        });
        let device = vigil_actors::DeviceId(report.device.clone());
        let by = vigil_actors::device::ChangedBy::FHIR;
        devices.seen(by, &device, Some(report.patient.clone()), technical).await;
    }

    /// Report the devices Observations name to `devices` (last seen, silence, association,
    /// technical conditions), as the HL7 feed does for PCD-01.
    pub fn with_devices(mut self, devices: Arc<vigil_actors::device::DeviceRegistry>) -> Self {
        self.devices = Some(devices);
        self
    }

    /// Submit a prepared resource; call in arrival order.
    pub async fn submit(&self, prepared: Prepared) -> (Submission, Pending) {
        self.report_device(prepared.device.as_ref()).await;
        let pending = Pending {
            location: format!("{}/{}", prepared.kind, prepared.id),
            issues: prepared.issues,
            issues_patient: prepared.issues_patient,
        };
        (self.ingress.submit(prepared.envelope, prepared.events).await, pending)
    }

    /// The answer once the outcome is known.
    pub fn answer(&self, pending: Pending, outcome: Outcome) -> Answer {
        let Pending { location, mut issues, issues_patient } = pending;
        if outcome.accepted()
            && let Some((id, key)) = issues_patient
        {
            self.remember(id, key);
        }
        let status = match outcome {
            Outcome::Stored => StatusCode::CREATED,
            Outcome::Empty => StatusCode::OK,
            Outcome::Duplicate => {
                issues.insert(0, Issue::information("", RESENT));
                StatusCode::OK
            }
            Outcome::NotStored => {
                tracing::error!(location = %location, "fhir resource not stored; sender told to retry");
                return Answer {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    location: None,
                    issues: FhirError::retry().issues,
                };
            }
        };
        if outcome == Outcome::Stored {
            issues.insert(0, Issue::information("", "stored"));
        }
        Answer { status, location: Some(location), issues }
    }

    /// One resource, from body to answer.
    pub async fn create(
        &self,
        sender: &str,
        expected: &str,
        body: &[u8],
        if_none_exist: Option<&str>,
    ) -> Result<Answer, FhirError> {
        let value = self.parse(body)?;
        let prepared = self.prepare(sender, Some(expected), &value, if_none_exist).await?;
        let (submission, pending) = self.submit(prepared).await;
        Ok(self.answer(pending, submission.outcome().await))
    }

    fn remember(&self, id: PatientId, key: PatientKey) {
        if self.issued.len() >= ISSUED_CAPACITY
            && let Some(victim) = self.issued.iter().next().map(|e| e.key().clone())
        {
            self.issued.remove(&victim);
        }
        self.issued.insert(id, key);
    }

    /// Find the identity behind each `Patient/<id>` reference Vigil could have issued: the
    /// ids handed out lately, else the patient's recent events in the store.
    async fn resolve_issued(&self, value: &Value, referenced: &mut Referenced) {
        let mut ids = Vec::new();
        collect_patient_references(value, &mut ids, 0);
        ids.sort_by(|a, b| a.0.cmp(&b.0));
        ids.dedup();
        for (id, reference) in ids {
            if referenced.patients.contains_key(&reference) {
                continue;
            }
            let known = self.issued.get(&id).map(|k| k.clone());
            let key = match known {
                Some(key) => Some(key),
                None => {
                    let since = self.ingress.clock().now() - vigil_actors::patient::WINDOW_MAX_AGE;
                    match self.events.events_since(&id, since).await {
                        Ok(events) => events.last().map(|e| e.patient.clone()),
                        Err(e) => {
                            tracing::warn!(error = %e, patient = %id, "patient reference not resolved: store unreadable");
                            None
                        }
                    }
                }
            };
            if let Some(key) = key {
                self.remember(id.clone(), key.clone());
                referenced.patients.insert(reference, Ok(key));
            }
        }
    }

    /// `POST /fhir` with a Bundle: a transaction (all or nothing) or a batch (each entry on
    /// its own). Returns the response Bundle.
    pub async fn bundle(&self, sender: &str, body: &[u8]) -> Result<Value, FhirError> {
        let value = self.parse(body)?;
        let refuse = |e: FhirError| {
            self.ingress.refused();
            e
        };
        if value.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
            return Err(refuse(FhirError::bad_request(Issue::invalid(
                "resourceType",
                "POST /fhir takes a Bundle (transaction or batch)",
            ))));
        }
        let bundle = El::root(&value, "Bundle");
        let kind = bundle.required_str("type").map_err(|i| refuse(i.into()))?;
        let entries = bundle.array("entry").map_err(|i| refuse(i.into()))?;
        if entries.len() > self.settings.max_bundle_entries {
            return Err(refuse(FhirError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                Issue::error(
                    "too-costly",
                    "Bundle.entry",
                    format!("{} entries; at most {} in one Bundle", entries.len(), self.settings.max_bundle_entries),
                ),
            )));
        }
        let mut referenced = Referenced::default();
        self.resolve_issued(&value, &mut referenced).await;
        bundled_references(&self.mapper, &entries, &mut referenced);
        match kind {
            "transaction" => self.transaction(sender, &bundle, &entries, &referenced).await.map_err(refuse),
            "batch" => Ok(self.batch(sender, &entries, &referenced).await),
            other => Err(refuse(FhirError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                Issue::error(
                    "not-supported",
                    "Bundle.type",
                    format!("a {other} Bundle is not accepted: use transaction or batch"),
                ),
            ))),
        }
    }

    async fn transaction(
        &self,
        sender: &str,
        bundle: &El<'_>,
        entries: &[El<'_>],
        referenced: &Referenced,
    ) -> Result<Value, FhirError> {
        let received_at = self.ingress.clock().now();
        let mut problems: Vec<Issue> = Vec::new();
        let mut prepared = Vec::with_capacity(entries.len());
        for entry in entries {
            match self.entry(sender, entry, received_at, referenced) {
                Ok(p) => prepared.push(p),
                Err(e) => problems.extend(e.issues),
            }
            if problems.len() >= 50 {
                break;
            }
        }
        if !problems.is_empty() {
            // All or nothing: one entry that cannot be used refuses every entry.
            let shape = problems.iter().any(|i| matches!(i.code, "invalid" | "required" | "structure"));
            let status = if shape { StatusCode::BAD_REQUEST } else { StatusCode::UNPROCESSABLE_ENTITY };
            return Err(FhirError { status, issues: problems });
        }
        for p in &prepared {
            self.report_device(p.device.as_ref()).await;
        }
        // One message under the Bundle's resend key, each entry a part under its own: an entry
        // accepted before (alone, in a batch, in another transaction) is not stored again and
        // is answered 200 as a conditional create that matched. The rest is grouped per
        // patient (each patient's stored atomically, in entry order).
        let order = patient_order(&prepared);
        let mut parts: Vec<Part> = Vec::with_capacity(prepared.len());
        for &i in &order {
            let p = &mut prepared[i];
            parts.push(Part {
                key: p.recognised.then(|| p.envelope.key.clone()),
                events: std::mem::take(&mut p.events),
            });
        }
        let issued: Vec<_> = prepared.iter_mut().filter_map(|p| p.issues_patient.take()).collect();
        let key = bundle_key(bundle.value());
        let envelope = Envelope {
            key: MessageKey { source: Source::Fhir, sender: sender.to_string(), id: key },
            raw: Phi(bundle.value().to_string()),
            received_at,
        };
        let (submission, resent_in_order) = self.ingress.submit_parts(envelope, parts).await;
        let mut resent = vec![false; prepared.len()];
        for (&i, was) in order.iter().zip(resent_in_order) {
            resent[i] = was;
        }
        let outcome = submission.outcome().await;
        if outcome == Outcome::NotStored {
            return Err(FhirError::retry());
        }
        for (id, key) in issued {
            self.remember(id, key);
        }
        let responses: Vec<Value> = prepared
            .iter()
            .zip(resent)
            .map(|(p, resent)| {
                let (status, mut issues) = match outcome {
                    Outcome::Stored if !resent => ("201 Created", Vec::new()),
                    Outcome::Stored | Outcome::Empty if !resent => ("200 OK", Vec::new()),
                    _ => ("200 OK", vec![Issue::information("", RESENT)]),
                };
                issues.extend(p.issues.iter().cloned());
                let mut response = json!({ "status": status, "location": format!("{}/{}", p.kind, p.id) });
                if !issues.is_empty() {
                    response["outcome"] = outcome::operation_outcome(&issues);
                }
                json!({ "response": response })
            })
            .collect();
        Ok(json!({ "resourceType": "Bundle", "type": "transaction-response", "entry": responses }))
    }

    async fn batch(&self, sender: &str, entries: &[El<'_>], referenced: &Referenced) -> Value {
        let received_at = self.ingress.clock().now();
        let mut submitted = Vec::with_capacity(entries.len());
        for entry in entries {
            match self.entry(sender, entry, received_at, referenced) {
                Ok(p) => submitted.push(Ok(self.submit(p).await)),
                Err(e) => {
                    self.ingress.refused();
                    submitted.push(Err(e));
                }
            }
        }
        // Every entry's outcome is awaited at once, not in turn: an entry settles (frees its key
        // for other messages) only when its outcome is awaited, and an earlier entry may be a
        // resend waiting on a transaction that itself waits for a later entry's key. Awaited in
        // turn, the batch and that transaction waited on each other for ever (seen once in CI:
        // a batch [e-6, e-7] beside a transaction [e-7, e-6] that had claimed e-6).
        let outcomes = futures_util::future::join_all(submitted.into_iter().map(|s| async move {
            match s {
                Ok((submission, pending)) => Ok((submission.outcome().await, pending)),
                Err(e) => Err(e),
            }
        }))
        .await;
        let mut responses = Vec::with_capacity(outcomes.len());
        for s in outcomes {
            let response = match s {
                Ok((outcome, pending)) => {
                    let answer = self.answer(pending, outcome);
                    let mut r = json!({ "status": status_line(answer.status) });
                    if let Some(location) = answer.location {
                        r["location"] = json!(location);
                    }
                    if !answer.issues.is_empty() {
                        r["outcome"] = outcome::operation_outcome(&answer.issues);
                    }
                    r
                }
                Err(e) => json!({ "status": status_line(e.status), "outcome": e.outcome() }),
            };
            responses.push(json!({ "response": response }));
        }
        json!({ "resourceType": "Bundle", "type": "batch-response", "entry": responses })
    }

    /// One Bundle entry: `request` POST of a supported type with its resource.
    fn entry(
        &self,
        sender: &str,
        entry: &El<'_>,
        received_at: OffsetDateTime,
        referenced: &Referenced,
    ) -> Result<Prepared, FhirError> {
        let at = entry.path().to_string();
        let inside = |e: FhirError| FhirError {
            status: e.status,
            issues: e.issues.into_iter().map(|i| i.within(&format!("{at}.resource"))).collect(),
        };
        let Some(resource) = entry.object("resource")? else {
            return Err(Issue::required(entry.child_path("resource")).into());
        };
        let Some(request) = entry.object("request")? else {
            return Err(Issue::required(entry.child_path("request")).into());
        };
        let method = request.required_str("method")?;
        if method != "POST" {
            return Err(FhirError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                Issue::error(
                    "not-supported",
                    request.child_path("method"),
                    format!("{method}: only POST (create) is supported"),
                ),
            ));
        }
        let url = request.required_str("url")?;
        let expected = url.split(['?', '/']).next().unwrap_or(url);
        let if_none_exist = request.str("ifNoneExist")?;
        self.prepare_with(sender, Some(expected), resource.value(), if_none_exist, received_at, referenced)
            .map_err(inside)
    }
}

/// A prepared resource submitted, waiting for its outcome.
pub struct Pending {
    location: String,
    issues: Vec<Issue>,
    issues_patient: Option<(PatientId, PatientKey)>,
}

fn refusal(issues: Vec<Issue>) -> FhirError {
    let shape = issues.iter().any(|i| matches!(i.code, "invalid" | "required" | "structure"));
    FhirError { status: if shape { StatusCode::BAD_REQUEST } else { StatusCode::UNPROCESSABLE_ENTITY }, issues }
}

fn status_line(status: StatusCode) -> String {
    format!("{} {}", status.as_u16(), status.canonical_reason().unwrap_or(""))
}

/// What recognises a resend of one resource (see [`Resend`]).
fn resend_key(row: &Resource, value: &Value, if_none_exist: Option<&str>, by_content: bool) -> String {
    if let Some(query) = if_none_exist.map(str::trim).filter(|q| !q.is_empty()) {
        let query = query.strip_prefix(row.name).unwrap_or(query).trim_start_matches('?');
        return format!("{}?{}", row.name, resources::percent_decode(query));
    }
    match row.resend {
        Resend::Once => match first_identifier(value).filter(|_| !by_content) {
            Some(token) => format!("{}?identifier={token}", row.name),
            None => format!("sha256:{}", hex::encode(sha2::Sha256::digest(value.to_string().as_bytes()))),
        },
        Resend::Applied => format!("post:{:032x}", rand::random::<u128>()),
    }
}

/// `system|value` of the first identifier with a value.
fn first_identifier(value: &Value) -> Option<String> {
    value.get("identifier")?.as_array()?.iter().find_map(|id| {
        let v = id.get("value")?.as_str()?.trim();
        let system = id.get("system").and_then(Value::as_str).unwrap_or("");
        (!v.is_empty()).then(|| format!("{system}|{v}"))
    })
}

/// A Bundle's resend key: its identifier, else its content.
fn bundle_key(bundle: &Value) -> String {
    let identifier = bundle.get("identifier").and_then(|id| {
        let v = id.get("value")?.as_str()?.trim();
        let system = id.get("system").and_then(Value::as_str).unwrap_or("");
        (!v.is_empty()).then(|| format!("{system}|{v}"))
    });
    match identifier {
        Some(token) => format!("Bundle?identifier={token}"),
        None => format!("sha256:{}", hex::encode(sha2::Sha256::digest(bundle.to_string().as_bytes()))),
    }
}

/// 32 hex digits naming a resource after its resend key: a resend gets the same id.
fn short_digest(text: &str) -> String {
    hex::encode(&sha2::Sha256::digest(text.as_bytes())[..16])
}

/// Patients and Devices carried in a Bundle, by `fullUrl` and `Type/id`.
fn bundled_references(mapper: &Mapper, entries: &[El<'_>], referenced: &mut Referenced) {
    for entry in entries {
        let Ok(Some(resource)) = entry.object("resource") else { continue };
        let mut names = Vec::new();
        if let Ok(Some(full_url)) = entry.str("fullUrl") {
            names.push(full_url.trim().to_string());
        }
        let kind = resource.str("resourceType").ok().flatten().unwrap_or("");
        if let Ok(Some(id)) = resource.str("id") {
            names.push(format!("{kind}/{}", id.trim()));
        }
        match kind {
            "Patient" => {
                let key = resources::patient_key(mapper, &resource);
                for name in names {
                    referenced.patients.insert(name, key.clone());
                }
            }
            "Device" => {
                if let Some(label) = device_label_of(&resource) {
                    for name in names {
                        referenced.devices.insert(name, label.clone());
                    }
                }
            }
            _ => {}
        }
    }
}

fn device_label_of(device: &El<'_>) -> Option<String> {
    let identifiers = device.array("identifier").ok()?;
    let mut fallback = None;
    for identifier in identifiers {
        let value = identifier.str("value").ok()??.to_string();
        let system = identifier.str("system").ok().flatten().unwrap_or("");
        let label = resources::device_label(system, &value).unwrap_or(value);
        if system == resources::EUI64_SYSTEM {
            return Some(label);
        }
        fallback.get_or_insert(label);
    }
    fallback
}

/// Every `reference` that could name a Patient Vigil issued an id for, at most 64 levels down.
fn collect_patient_references(value: &Value, out: &mut Vec<(PatientId, String)>, depth: usize) {
    if depth > 64 {
        return;
    }
    match value {
        Value::Object(map) => {
            for (name, child) in map {
                if name == "reference"
                    && let Some(reference) = child.as_str()
                    && let Some(id) = resources::issued_patient_id(reference)
                {
                    out.push((id, reference.trim().to_string()));
                } else {
                    collect_patient_references(child, out, depth + 1);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_patient_references(v, out, depth + 1)),
        _ => {}
    }
}

/// The entries of a transaction in the order they are submitted: regrouped so each patient's
/// events are consecutive (one atomic bundle each), in order of first appearance and entry
/// order; entries with no events keep their place among them.
fn patient_order(prepared: &[Prepared]) -> Vec<usize> {
    let mut patients: Vec<&PatientId> = Vec::new();
    let mut rank = Vec::with_capacity(prepared.len());
    for p in prepared {
        let at = p.events.first().map(|e| match patients.iter().position(|q| **q == e.patient_id) {
            Some(at) => at,
            None => {
                patients.push(&e.patient_id);
                patients.len() - 1
            }
        });
        rank.push(at);
    }
    let mut order: Vec<usize> = (0..prepared.len()).collect();
    if patients.len() > 1 {
        // An entry with no events goes with the patient of the entry before it.
        let mut current = 0;
        let ranks: Vec<usize> = rank
            .iter()
            .map(|r| {
                current = r.unwrap_or(current);
                current
            })
            .collect();
        order.sort_by_key(|&i| ranks[i]);
    }
    order
}
