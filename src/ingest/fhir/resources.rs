//! FHIR R4 resources -> clinical events, through the same [`Mapper`] the HL7 feed uses:
//! Observation (and its components) -> observations, Patient -> a demographics update,
//! Encounter -> census, MedicationRequest -> a medication order, MedicationAdministration ->
//! an administration, AllergyIntolerance -> allergies, Device -> its identity only.
//!
//! Patients are found by identifier, never guessed: a `subject` names its patient with an
//! identifier (`Reference.identifier`, `Patient?identifier=system|value`), a Patient contained
//! in the resource or carried in the same Bundle, or a logical `Patient/<id>` Vigil issued
//! (the opaque patient id). The identifier's system names the assigning authority through
//! [`crate::ingest::map::identity`], the same table HL7 PID-3 goes through.

use std::collections::HashMap;

use time::format_description::well_known::Rfc3339;
use time::{Date, OffsetDateTime, PrimitiveDateTime, Time};
use vigil_actors::{
    Allergy, CensusAction, ClinicalEvent, Demographics, EventKind, Location, Medication, Observation, OrderAction,
    PatientId, PatientKey, Phi, ResultStatus,
};

use super::json::El;
use super::outcome::Issue;
use crate::ingest::map::{Mapper, is_rxnorm, normalise_drug_name, reference_range, trim_float};
use crate::vocab::{Canonical, DropReason, UnitMatch, ValueType};

/// PHD IG: the system of a device's EUI-64 (IEEE 11073-20601 system id).
pub const EUI64_SYSTEM: &str = "urn:oid:1.2.840.10004.1.1.1.0.0.1.0.0.1.2680";
/// The core extension naming the gateway an observation came through.
pub const GATEWAY_EXTENSION: &str = "http://hl7.org/fhir/StructureDefinition/observation-gatewayDevice";
const UCUM: &str = "http://unitsofmeasure.org";
pub(super) const MDC: &str = "urn:iso:std:iso:11073:10101";
const V2_0203: &str = "http://terminology.hl7.org/CodeSystem/v2-0203";

/// What one resource maps to.
#[derive(Debug, Default)]
pub struct Mapped {
    /// The events to store (possibly none: nothing Vigil uses).
    pub events: Vec<ClinicalEvent>,
    /// Warnings (values not used) and information (nothing to store) for the answer.
    pub issues: Vec<Issue>,
    /// The logical id Vigil gives the resource, when it is not derived from the resend key
    /// (Patient: the opaque patient id; Device: from its identifier).
    pub id: Option<String>,
    /// An Observation naming its device: what the device registry is told (last seen, the
    /// patient it reports for, technical conditions such as leads off).
    pub device: Option<DeviceReport>,
    /// Its identifier does not name this report but what it is about (a device alarm report
    /// names its alarm, which has many reports): a resend is recognised by content.
    pub keyed_by_content: bool,
}

/// What an Observation says of the device that made it.
#[derive(Debug, Clone)]
pub struct DeviceReport {
    /// The device's label (an EUI-64 as 16 hex digits, as PCD-01 OBX-18 has it).
    pub device: String,
    /// The patient its subject names.
    pub patient: vigil_actors::device::Attachment,
    /// Technical conditions it carries (an MDC event code such as `MDC_EVT_LEAD_DISCONN`).
    pub conditions: Vec<vigil_actors::device::TechnicalCondition>,
    /// It carried a value Vigil uses.
    pub valid_data: bool,
    /// It says what the device's technical state is (`conditions`, `valid_data`): a
    /// measurement does; an alarm report does not (as PCD-04 does not).
    pub technical: bool,
}

/// The technical conditions (leads off, probe off) an Observation carries: an MDC coding of
/// its `code`, its `valueCodeableConcept` or a component's, that names one.
fn technical_conditions(obs: &El<'_>) -> Result<Vec<vigil_actors::device::TechnicalCondition>, Issue> {
    let mut elements = vec![obs.clone()];
    elements.extend(obs.array("component")?);
    let mut found = Vec::new();
    for (n, element) in elements.iter().enumerate() {
        for name in ["code", "valueCodeableConcept"] {
            let Some(concept) = element.object(name)? else { continue };
            for coding in concept.array("coding")? {
                let system = coding.str("system")?.unwrap_or("");
                let code = coding.str("code")?.unwrap_or("");
                let display = coding.str("display")?.unwrap_or("");
                if system == MDC && crate::ingest::map::technical::is_technical("MDC", code, display) {
                    let key = if code.trim().is_empty() || code.trim() == "0" { display.trim() } else { code.trim() };
                    let text = if display.trim().is_empty() { code.trim() } else { display.trim() };
                    found.push(vigil_actors::device::TechnicalCondition {
                        code: format!("MDC|{key}"),
                        text: text.to_string(),
                        source: if n == 0 { String::new() } else { format!("component[{}]", n - 1) },
                    });
                }
            }
        }
        if found.len() >= vigil_actors::device::technical::MAX_CONDITIONS {
            break;
        }
    }
    Ok(found)
}

/// Patients and devices named elsewhere in the request: Bundle entries by `fullUrl` and
/// `Type/id`, and Patients Vigil issued ids for.
#[derive(Default)]
pub struct Referenced {
    /// Reference -> the patient it names (or why it names none).
    pub patients: HashMap<String, Result<PatientKey, Issue>>,
    /// Reference -> device label.
    pub devices: HashMap<String, String>,
}

/// What mapping needs besides the resource.
pub struct Context<'a> {
    /// The shared mapper (vocabulary, identity, blind index).
    pub mapper: &'a Mapper,
    /// When Vigil received the request.
    pub received_at: OffsetDateTime,
    /// Bundle entries and issued ids.
    pub referenced: &'a Referenced,
}

/// A mapping: resource element -> events, or the issue that refuses it.
pub type MapFn = fn(&Context<'_>, &El<'_>) -> Result<Mapped, Vec<Issue>>;

// ---------------------------------------------------------------------------------------------
// Identity

/// The patient a Patient resource is: the identifier of the configured MRN type (or untyped)
/// whose system names an authority; never an identifier of another type.
pub fn patient_key(mapper: &Mapper, patient: &El<'_>) -> Result<PatientKey, Issue> {
    let mut untyped: Option<PatientKey> = None;
    let mut unresolved: Option<Issue> = None;
    for identifier in patient.array("identifier")? {
        let types = codings(&identifier, "type")?;
        let typed = !types.is_empty();
        let is_mrn =
            types.iter().any(|(system, code)| *code == mapper.mrn_type() && (system.is_empty() || *system == V2_0203));
        if typed && !is_mrn {
            continue;
        }
        match identifier_key(mapper, &identifier) {
            Ok(key) if is_mrn => return Ok(key),
            Ok(key) => {
                untyped.get_or_insert(key);
            }
            Err(issue) => {
                unresolved.get_or_insert(issue);
            }
        }
    }
    untyped.ok_or_else(|| {
        unresolved.unwrap_or_else(|| {
            Issue::error(
                "required",
                patient.child_path("identifier"),
                format!("a patient identifier of type {} (or untyped) with a system is required", mapper.mrn_type()),
            )
        })
    })
}

/// The patient an `Identifier` names: its system must name an authority (configured, or an
/// OID) and its value must be present.
fn identifier_key(mapper: &Mapper, identifier: &El<'_>) -> Result<PatientKey, Issue> {
    let value = identifier.required_str("value")?;
    let Some(system) = identifier.str("system")? else {
        return Err(Issue::error(
            "required",
            identifier.child_path("system"),
            "an identifier without a system names no assigning authority",
        ));
    };
    key_of(mapper, system, value, &identifier.child_path("system"))
}

fn key_of(mapper: &Mapper, system: &str, value: &str, path: &str) -> Result<PatientKey, Issue> {
    if value.trim().is_empty() {
        return Err(Issue::error("required", path, "the identifier value is empty"));
    }
    let authority = mapper.authorities().of_system(system).ok_or_else(|| {
        Issue::error(
            "not-found",
            path,
            format!(
                "identifier system {system} names no assigning authority Vigil knows: use urn:oid:<OID> or a \
                 system configured in [fhir] identifier_systems"
            ),
        )
    })?;
    Ok(PatientKey { authority, mrn: Phi(value.trim().to_string()) })
}

/// The patient a `subject` (or `patient`) reference names; refused when it cannot be
/// resolved, never attributed to a guess.
pub(super) fn subject(ctx: &Context<'_>, resource: &El<'_>, name: &str) -> Result<PatientKey, Issue> {
    let Some(reference) = resource.object(name)? else {
        return Err(Issue::required(resource.child_path(name)));
    };
    if let Some(identifier) = reference.object("identifier")? {
        return identifier_key(ctx.mapper, &identifier);
    }
    let unresolved = |why: &str| Issue::error("not-found", reference.child_path("reference"), why.to_string());
    let Some(target) = reference.str("reference")? else {
        return Err(unresolved("a reference with an identifier or a reference to a patient is required"));
    };
    let target = target.trim();
    if let Some(query) = target.strip_prefix("Patient?") {
        let Some(token) = query_param(query, "identifier") else {
            return Err(unresolved("a conditional reference must search by identifier=system|value"));
        };
        let Some((system, value)) = token.split_once('|') else {
            return Err(unresolved("identifier=system|value is required: a value without a system names no authority"));
        };
        return key_of(ctx.mapper, system, value, &reference.child_path("reference"));
    }
    if let Some(local) = target.strip_prefix('#') {
        for contained in resource.array("contained")? {
            if contained.str("resourceType")? == Some("Patient") && contained.str("id")? == Some(local) {
                return patient_key(ctx.mapper, &contained);
            }
        }
        return Err(unresolved("no contained Patient has that id"));
    }
    if let Some(found) = ctx.referenced.patients.get(target).or_else(|| ctx.referenced.patients.get(&relative(target)))
    {
        return found.clone().map_err(|issue| Issue { expression: reference.child_path("reference"), ..issue });
    }
    if target.starts_with("urn:uuid:") || target.starts_with("urn:oid:") {
        return Err(unresolved("no Patient entry of this Bundle has that fullUrl"));
    }
    Err(unresolved(
        "not a patient Vigil knows: reference it by identifier (Patient?identifier=system|value) or post the Patient \
         first and use the id Vigil gave it",
    ))
}

/// `Patient/abc` of `https://host/fhir/Patient/abc` (and of `Patient/abc/_history/2`).
pub fn relative(reference: &str) -> String {
    let parts: Vec<&str> = reference.split('/').collect();
    let at = parts.iter().rposition(|p| *p == "_history").unwrap_or(parts.len());
    match parts.get(..at) {
        Some([.., kind, id]) => format!("{kind}/{id}"),
        _ => reference.to_string(),
    }
}

/// The value of `name` in a query string, percent-decoded.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (percent_decode(key) == name).then(|| percent_decode(value))
    })
}

/// `%7C` -> `|`, `+` kept (a FHIR token never means a space by it); malformed escapes as sent.
pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (b, hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(decoded)) => {
                out.push(decoded);
                i += 3;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(super) fn event(ctx: &Context<'_>, patient: PatientKey, kind: EventKind) -> ClinicalEvent {
    ClinicalEvent {
        patient_id: ctx.mapper.patient_id(&patient),
        patient,
        demographics: Demographics::default(),
        location: None,
        received_at: ctx.received_at,
        kind,
    }
}

// ---------------------------------------------------------------------------------------------
// Small readers

/// `(system, code)` of each coding of a CodeableConcept child.
pub(super) fn codings<'a>(el: &El<'a>, name: &str) -> Result<Vec<(&'a str, &'a str)>, Issue> {
    let Some(concept) = el.object(name)? else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for coding in concept.array("coding")? {
        if let Some(code) = coding.str("code")? {
            out.push((coding.str("system")?.unwrap_or(""), code));
        }
    }
    Ok(out)
}

/// Codes, displays and the text of a CodeableConcept, in that order (answers are matched on
/// any of them).
fn concept_words(concept: &El<'_>) -> Result<Vec<String>, Issue> {
    let mut words = Vec::new();
    let codings = concept.array("coding")?;
    for coding in &codings {
        words.extend(coding.str("code")?.map(str::to_string));
    }
    for coding in &codings {
        words.extend(coding.str("display")?.map(str::to_string));
    }
    words.extend(concept.str("text")?.map(str::to_string));
    Ok(words.into_iter().filter(|w| !w.trim().is_empty()).collect())
}

/// A FHIR `dateTime` / `instant`: a full timestamp with its offset, or a date (taken at
/// midnight, offset as for HL7 timestamps without one).
pub fn date_time(mapper: &Mapper, el: &El<'_>, name: &str) -> Result<Option<OffsetDateTime>, Issue> {
    let Some(text) = el.str(name)? else { return Ok(None) };
    let text = text.trim();
    let invalid = || Issue::invalid(el.child_path(name), "must be a FHIR dateTime (YYYY-MM-DDThh:mm:ss+zz:zz)");
    if text.contains('T') {
        return OffsetDateTime::parse(text, &Rfc3339).map(Some).map_err(|_| invalid());
    }
    let parts: Vec<&str> = text.split('-').collect();
    let number = |i: usize| parts.get(i).and_then(|p| p.parse::<u16>().ok());
    let (year, month, day) = match parts.len() {
        1 => (number(0), Some(1), Some(1)),
        2 => (number(0), number(1), Some(1)),
        3 => (number(0), number(1), number(2)),
        _ => (None, None, None),
    };
    let (Some(year), Some(month), Some(day)) = (year, month, day) else { return Err(invalid()) };
    let month = u8::try_from(month).ok().and_then(|m| time::Month::try_from(m).ok()).ok_or_else(invalid)?;
    let date = Date::from_calendar_date(i32::from(year), month, u8::try_from(day).map_err(|_| invalid())?)
        .map_err(|_| invalid())?;
    Ok(Some(PrimitiveDateTime::new(date, Time::MIDNIGHT).assume_offset(mapper.default_offset())))
}

// ---------------------------------------------------------------------------------------------
// Devices

/// The label a device identifier is recorded under: an EUI-64 as the 16 upper-case hex digits
/// IHE PCD-01 puts in OBX-18 (so one device is one label over both feeds), else the value.
pub fn device_label(system: &str, value: &str) -> Result<String, String> {
    let value = value.trim();
    if system.trim() != EUI64_SYSTEM {
        return Ok(value.to_string());
    }
    let hex: String = value.chars().filter(|c| !matches!(c, '-' | ':' | ' ')).collect();
    if hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(hex.to_ascii_uppercase())
    } else {
        Err(value.to_string())
    }
}

/// The device a Device resource is, with the warning when its EUI-64 is malformed.
fn device_identity(device: &El<'_>) -> Result<(String, Vec<Issue>), Issue> {
    let identifiers = device.array("identifier")?;
    let mut chosen: Option<(String, Vec<Issue>)> = None;
    for identifier in &identifiers {
        let Some(value) = identifier.str("value")?.filter(|v| !v.trim().is_empty()) else { continue };
        let system = identifier.str("system")?.unwrap_or("");
        match device_label(system, value) {
            Ok(label) if system == EUI64_SYSTEM => return Ok((label, Vec::new())),
            Ok(label) => {
                chosen.get_or_insert((label, Vec::new()));
            }
            Err(raw) => {
                let warning = Issue::warning(
                    "value",
                    identifier.child_path("value"),
                    "an EUI-64 is 8 octets in hex, dash-separated (71-10-00-FE-FF-5F-49-B0); recorded as sent",
                );
                chosen.get_or_insert((raw, vec![warning]));
            }
        }
    }
    if let Some(found) = chosen {
        return Ok(found);
    }
    // A UDI carrier is an identifier too.
    for udi in device.array("udiCarrier")? {
        if let Some(di) = udi.str("deviceIdentifier")?.filter(|v| !v.trim().is_empty()) {
            return Ok((di.trim().to_string(), Vec::new()));
        }
    }
    Err(Issue::required(device.child_path("identifier")))
}

/// The logical id Vigil gives a device: `eui64-<hex>` for an EUI-64, else a digest of the
/// label (ids must be `[A-Za-z0-9.-]{1,64}`).
pub fn device_id(label: &str) -> String {
    if label.len() == 16 && label.bytes().all(|b| b.is_ascii_hexdigit()) {
        return format!("eui64-{}", label.to_ascii_lowercase());
    }
    use sha2::Digest;
    format!("dev-{}", hex::encode(&sha2::Sha256::digest(label.as_bytes())[..12]))
}

/// The label of the device a Reference names: its identifier; a contained or bundled
/// Device (or DeviceMetric, through its `source`); a Vigil device id; else the reference as
/// sent (a device is recorded for audit, never used to find the patient).
fn referenced_device(ctx: &Context<'_>, resource: &El<'_>, reference: &El<'_>) -> Result<Option<String>, Issue> {
    if let Some(identifier) = reference.object("identifier")?
        && let Some(value) = identifier.str("value")?.filter(|v| !v.trim().is_empty())
    {
        let system = identifier.str("system")?.unwrap_or("");
        return Ok(Some(device_label(system, value).unwrap_or_else(|raw| raw)));
    }
    let Some(target) = reference.str("reference")?.map(str::trim).filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    if let Some(local) = target.strip_prefix('#') {
        for contained in resource.array("contained")? {
            if contained.str("id")? != Some(local) {
                continue;
            }
            match contained.str("resourceType")? {
                Some("Device") => return Ok(Some(device_identity(&contained)?.0)),
                Some("DeviceMetric") => {
                    if let Some(source) = contained.object("source")? {
                        // One hop: a metric's source is a Device, never another metric.
                        return Ok(referenced_device(ctx, resource, &source)?.or(Some(target.to_string())));
                    }
                }
                _ => {}
            }
        }
        return Ok(Some(target.to_string()));
    }
    if let Some(label) = ctx.referenced.devices.get(target).or_else(|| ctx.referenced.devices.get(&relative(target))) {
        return Ok(Some(label.clone()));
    }
    let local = relative(target);
    if let Some(hex) = local.strip_prefix("Device/eui64-").filter(|h| h.len() == 16) {
        return Ok(Some(hex.to_ascii_uppercase()));
    }
    Ok(Some(target.to_string()))
}

/// Device: its identity only (no event kind records devices; observations name them).
pub fn device(_ctx: &Context<'_>, device: &El<'_>) -> Result<Mapped, Vec<Issue>> {
    let (label, mut issues) = device_identity(device).map_err(|i| vec![i])?;
    issues.push(Issue::information(
        "Device",
        "a device is recorded through the observations that name it; nothing is stored for the Device itself",
    ));
    Ok(Mapped { events: Vec::new(), issues, id: Some(device_id(&label)), device: None, keyed_by_content: false })
}

// ---------------------------------------------------------------------------------------------
// Observation

/// One value read: the observation, or the issue that says why it was not used.
enum Value {
    Used(Box<Observation>),
    Dropped(Issue),
    Absent(Issue),
    None,
}

/// Observation (and each component) -> an observations event. Values that cannot be used
/// (unit, plausibility, unknown answer) are counted and answered as warnings; when none can
/// be used and one was tried, the resource is refused naming each.
pub fn observation(ctx: &Context<'_>, obs: &El<'_>) -> Result<Mapped, Vec<Issue>> {
    if super::alarm::is_alarm(obs).map_err(|i| vec![i])? {
        // Whatever its status: an alarm's end may come as `final` or `amended`.
        obs.required_str("status").map_err(|i| vec![i])?;
        return super::alarm::alarm(ctx, obs);
    }
    let status = obs.required_str("status").map_err(|i| vec![i])?;
    let status = match status {
        "final" => ResultStatus::Final,
        "amended" | "corrected" => ResultStatus::Corrected,
        "preliminary" => ResultStatus::Preliminary,
        "entered-in-error" => ResultStatus::Deleted,
        "registered" | "cancelled" | "unknown" => {
            return Ok(Mapped {
                issues: vec![Issue::information(
                    obs.child_path("status"),
                    format!("status {status} carries no result; nothing stored"),
                )],
                ..Mapped::default()
            });
        }
        _ => return Err(vec![Issue::invalid(obs.child_path("status"), "is not an ObservationStatus code")]),
    };
    if obs.object("code").map_err(|i| vec![i])?.is_none() {
        return Err(vec![Issue::required(obs.child_path("code"))]);
    }
    let patient = subject(ctx, obs, "subject").map_err(|i| vec![i])?;
    let effective = effective(ctx, obs).map_err(|i| vec![i])?.unwrap_or(ctx.received_at);
    let device = observation_device(ctx, obs).map_err(|i| vec![i])?;
    let identifier = match obs.array("identifier").map_err(|i| vec![i])?.first() {
        Some(id) => {
            let system = id.str("system").map_err(|i| vec![i])?.unwrap_or("");
            id.str("value").map_err(|i| vec![i])?.map(|v| format!("{system}|{v}"))
        }
        None => None,
    };
    let base = Observation {
        name: String::new(),
        value: None,
        text: None,
        unit: String::new(),
        observed_at: effective,
        source_code: String::new(),
        device,
        status,
        result_key: String::new(),
        reference_range: None,
        abnormal_flags: interpretation(obs).map_err(|i| vec![i])?,
    };
    let mut elements = vec![obs.clone()];
    elements.extend(obs.array("component").map_err(|i| vec![i])?);
    let mut observations = Vec::new();
    let mut issues = Vec::new();
    let mut dropped = Vec::new();
    for element in &elements {
        match value(ctx, element, &base, identifier.as_deref()).map_err(|i| vec![i])? {
            Value::Used(o) => observations.push(*o),
            Value::Dropped(issue) => dropped.push(issue),
            Value::Absent(issue) => issues.push(issue),
            Value::None => {}
        }
    }
    if observations.is_empty() && !dropped.is_empty() {
        return Err(dropped.into_iter().map(|i| Issue { severity: super::outcome::Severity::Error, ..i }).collect());
    }
    issues.extend(dropped);
    let conditions = technical_conditions(obs).map_err(|i| vec![i])?;
    let report = |patient: &PatientKey, valid_data: bool, conditions: Vec<_>| {
        base.device.clone().map(|device| DeviceReport {
            device,
            patient: vigil_actors::device::Attachment::of(&event(
                ctx,
                patient.clone(),
                EventKind::Observations { observations: Vec::new() },
            )),
            conditions,
            valid_data,
            technical: true,
        })
    };
    if observations.is_empty() {
        if !conditions.is_empty() {
            issues.push(Issue::information(
                obs.child_path("code"),
                "a technical condition of the device: raised as device.technical for its patient",
            ));
            return Ok(Mapped { issues, device: report(&patient, false, conditions), ..Mapped::default() });
        }
        issues.push(Issue::information(
            obs.child_path("code"),
            "no code Vigil maps (schemas/codes/observations.json) carries a value; nothing stored",
        ));
        return Ok(Mapped { issues, ..Mapped::default() });
    }
    let valid_data = observations.iter().any(|o| o.value.is_some());
    let device = report(&patient, valid_data, conditions);
    let kind = EventKind::Observations { observations };
    Ok(Mapped { events: vec![event(ctx, patient, kind)], issues, id: None, device, keyed_by_content: false })
}

fn effective(ctx: &Context<'_>, obs: &El<'_>) -> Result<Option<OffsetDateTime>, Issue> {
    if let Some(at) = date_time(ctx.mapper, obs, "effectiveDateTime")? {
        return Ok(Some(at));
    }
    if let Some(at) = date_time(ctx.mapper, obs, "effectiveInstant")? {
        return Ok(Some(at));
    }
    match obs.object("effectivePeriod")? {
        Some(period) => date_time(ctx.mapper, &period, "start"),
        None => Ok(None),
    }
}

/// `Observation.device`, else the gateway it came through (the `gatewayDevice` extension).
pub(super) fn observation_device(ctx: &Context<'_>, obs: &El<'_>) -> Result<Option<String>, Issue> {
    if let Some(reference) = obs.object("device")?
        && let Some(label) = referenced_device(ctx, obs, &reference)?
    {
        return Ok(Some(label));
    }
    for extension in obs.array("extension")? {
        if extension.str("url")? == Some(GATEWAY_EXTENSION)
            && let Some(reference) = extension.object("valueReference")?
        {
            return referenced_device(ctx, obs, &reference);
        }
    }
    Ok(None)
}

fn interpretation(obs: &El<'_>) -> Result<Vec<String>, Issue> {
    let mut flags = Vec::new();
    for concept in obs.array("interpretation")? {
        for coding in concept.array("coding")? {
            flags.extend(coding.str("code")?.filter(|c| !c.is_empty()).map(str::to_string));
        }
    }
    Ok(flags)
}

/// The value of an Observation or of one component, when its code is an analyte.
fn value(ctx: &Context<'_>, el: &El<'_>, base: &Observation, identifier: Option<&str>) -> Result<Value, Issue> {
    let codes = codings(el, "code")?;
    let Some((canonical, source_code)) = ctx.mapper.analyte(codes.iter().copied()) else { return Ok(Value::None) };
    let mut o = base.clone();
    o.name.clone_from(&canonical.name);
    o.unit.clone_from(&canonical.unit);
    o.result_key = identifier.map(|id| format!("{id}|{}", source_code)).unwrap_or_default();
    o.source_code = source_code;
    if let Some(reason) = el.object("dataAbsentReason")? {
        let why = codings(&reason, "coding").ok().and_then(|_| concept_words(&reason).ok()).unwrap_or_default();
        return Ok(Value::Absent(Issue::information(
            el.child_path("dataAbsentReason"),
            format!("{}: data absent ({}); nothing recorded", canonical.name, why.first().map_or("no reason", |w| w)),
        )));
    }
    if o.status == ResultStatus::Deleted {
        // Retracts the earlier result by key and time; it carries no value, as an HL7 D row.
        return Ok(Value::Used(Box::new(o)));
    }
    let result = match canonical.value_type {
        ValueType::Numeric => numeric(ctx, el, canonical, &mut o)?,
        ValueType::Text => text(ctx, el, canonical, &mut o)?,
    };
    Ok(match result {
        Read::Value => Value::Used(Box::new(o)),
        Read::NoValue => Value::None,
        Read::Dropped(reason, path, detail) => {
            ctx.mapper.count_dropped(&canonical.name, reason);
            Value::Dropped(Issue::warning("value", path, format!("{}: {detail}; value not used", canonical.name)))
        }
    })
}

enum Read {
    Value,
    NoValue,
    Dropped(DropReason, String, String),
}

fn numeric(ctx: &Context<'_>, el: &El<'_>, canonical: &Canonical, o: &mut Observation) -> Result<Read, Issue> {
    let (number, comparator, unit, quantity) = if let Some(q) = el.object("valueQuantity")? {
        let Some(number) = q.number("value")? else {
            return Ok(Read::Dropped(
                DropReason::NotNumeric,
                q.child_path("value"),
                "a quantity without a value".into(),
            ));
        };
        let comparator = q.str("comparator")?.map(str::to_string);
        let system = q.str("system")?.unwrap_or("");
        let code = q.str("code")?.filter(|_| system.is_empty() || system == UCUM || system == MDC);
        let units: Vec<&str> = code.into_iter().chain(q.str("unit")?).collect();
        (number, comparator, ctx.mapper.unit_of(canonical, units.iter().copied()), Some(q))
    } else if let Some(number) = el.number("valueInteger")? {
        (number, None, UnitMatch::Missing, None)
    } else if let Some(text) = el.str("valueString")? {
        match numeric_text(text) {
            Some((number, comparator)) => (number, comparator, UnitMatch::Missing, None),
            None => {
                return Ok(Read::Dropped(DropReason::NotNumeric, el.child_path("valueString"), "not a number".into()));
            }
        }
    } else if let Some(other) = ["valueCodeableConcept", "valueBoolean", "valueRange", "valueRatio", "valueSampledData"]
        .iter()
        .find_map(|name| el.get(name))
    {
        return Ok(Read::Dropped(DropReason::NotNumeric, other.path().to_string(), "not a number".into()));
    } else {
        return Ok(Read::NoValue);
    };
    let value_path = quantity.as_ref().map_or_else(|| el.path().to_string(), |q| q.path().to_string());
    let measured = match ctx.mapper.measure(canonical, number, unit) {
        Ok(m) => m,
        Err(reason) => {
            let (path, detail) = drop_detail(reason, canonical, &value_path, quantity.as_ref())?;
            return Ok(Read::Dropped(reason, path, detail));
        }
    };
    o.value = Some(measured.value);
    o.text = comparator.map(|c| format!("{c}{}", trim_float(measured.value)));
    let convert = |v: f64| v * measured.scale + measured.offset;
    o.reference_range = match el.array("referenceRange")?.first() {
        Some(range) => range_text(range)?.and_then(|t| reference_range(&t, &convert)),
        None => None,
    };
    Ok(Read::Value)
}

/// Where and why a number was not used, in words with no patient data (unit spellings and
/// the analyte only).
fn drop_detail(
    reason: DropReason,
    canonical: &Canonical,
    value_path: &str,
    quantity: Option<&El<'_>>,
) -> Result<(String, String), Issue> {
    let unit_sent = match quantity {
        Some(q) => q.str("unit")?.or(q.str("code")?).unwrap_or("").to_string(),
        None => String::new(),
    };
    let unit_path = format!("{value_path}.unit");
    Ok(match reason {
        DropReason::UnitMissing => {
            (unit_path, format!("no unit, and {} is sent in more than one unit", canonical.name))
        }
        DropReason::UnitIncompatible => {
            (unit_path, format!("unit {unit_sent} is not a unit of {} ({})", canonical.name, canonical.unit))
        }
        DropReason::UnitUnknown => (unit_path, format!("unit {unit_sent} is not a known unit")),
        DropReason::Implausible => {
            let (low, high) = canonical.plausible.unwrap_or((f64::NAN, f64::NAN));
            (
                format!("{value_path}.value"),
                format!("outside what can be measured ({}..{} {})", trim_float(low), trim_float(high), canonical.unit),
            )
        }
        DropReason::NotNumeric => (value_path.to_string(), "not a number".into()),
        DropReason::UnknownAnswer => (value_path.to_string(), "not a known answer".into()),
    })
}

/// `low-high`, `>=low`, `<=high` or the text of a referenceRange, as OBX-7 would carry it.
fn range_text(range: &El<'_>) -> Result<Option<String>, Issue> {
    let low = match range.object("low")? {
        Some(q) => q.number("value")?,
        None => None,
    };
    let high = match range.object("high")? {
        Some(q) => q.number("value")?,
        None => None,
    };
    Ok(match (low, high) {
        (Some(l), Some(h)) => Some(format!("{}-{}", trim_float(l), trim_float(h))),
        (Some(l), None) => Some(format!(">={}", trim_float(l))),
        (None, Some(h)) => Some(format!("<={}", trim_float(h))),
        (None, None) => range.str("text")?.map(str::to_string),
    })
}

/// A number written as text, with its comparator (`>10`, `<=0.01`).
fn numeric_text(text: &str) -> Option<(f64, Option<String>)> {
    let text = text.trim();
    let parse = |s: &str| s.trim().parse::<f64>().ok().filter(|v| v.is_finite());
    for c in [">=", "<=", ">", "<"] {
        if let Some(rest) = text.strip_prefix(c) {
            return parse(rest).map(|v| (v, Some(c.to_string())));
        }
    }
    parse(text).map(|v| (v, None))
}

fn text(ctx: &Context<'_>, el: &El<'_>, canonical: &Canonical, o: &mut Observation) -> Result<Read, Issue> {
    let (candidates, path) = if let Some(concept) = el.object("valueCodeableConcept")? {
        (concept_words(&concept)?, concept.path().to_string())
    } else if let Some(text) = el.str("valueString")? {
        (vec![text.to_string()].into_iter().filter(|t| !t.trim().is_empty()).collect(), el.child_path("valueString"))
    } else {
        return Ok(Read::NoValue);
    };
    if ctx.mapper.has_answers(canonical) {
        match ctx.mapper.answer(canonical, &candidates) {
            Ok(answer) => o.text = Some(answer),
            Err(reason) => return Ok(Read::Dropped(reason, path, "not one of the known answers".into())),
        }
    } else {
        let Some(first) = candidates.into_iter().next() else { return Ok(Read::NoValue) };
        o.text = Some(first.trim().to_string());
    }
    Ok(Read::Value)
}

// ---------------------------------------------------------------------------------------------
// Patient, Encounter

/// Patient -> a demographics update (as HL7 A08), under the identity of its MRN identifier.
/// Its logical id is the opaque patient id.
pub fn patient(ctx: &Context<'_>, patient: &El<'_>) -> Result<Mapped, Vec<Issue>> {
    let key = patient_key(ctx.mapper, patient).map_err(|i| vec![i])?;
    let demographics = demographics(patient).map_err(|i| vec![i])?;
    let mut census =
        event(ctx, key, EventKind::Census { action: CensusAction::Update, attending: None, encounter: None });
    census.demographics = demographics;
    let id = census.patient_id.0.clone();
    Ok(Mapped { events: vec![census], issues: Vec::new(), id: Some(id), device: None, keyed_by_content: false })
}

fn demographics(patient: &El<'_>) -> Result<Demographics, Issue> {
    let names = patient.array("name")?;
    let mut chosen = None;
    for name in &names {
        if name.str("use")? == Some("official") {
            chosen = Some(name);
            break;
        }
    }
    let name = match chosen.or(names.first()) {
        Some(name) => {
            let family = name.str("family")?.unwrap_or("").trim().to_string();
            let given = match name.array("given")?.first() {
                Some(g) => g.value().as_str().unwrap_or("").trim().to_string(),
                None => String::new(),
            };
            match (family.is_empty(), given.is_empty()) {
                (false, false) => format!("{family}, {given}"),
                (false, true) => family,
                _ => given,
            }
        }
        None => String::new(),
    };
    let birth_date = match patient.str("birthDate")? {
        Some(d) => {
            let digits: String = d.chars().filter(char::is_ascii_digit).collect();
            if digits.len() != 8 && digits.len() != 6 && digits.len() != 4 {
                return Err(Issue::invalid(patient.child_path("birthDate"), "must be a FHIR date (YYYY-MM-DD)"));
            }
            digits
        }
        None => String::new(),
    };
    let sex = match patient.str("gender")? {
        Some("male") => "M",
        Some("female") => "F",
        Some("other") => "O",
        Some("unknown") | None => "",
        Some(_) => return Err(Issue::invalid(patient.child_path("gender"), "is not an AdministrativeGender code")),
    };
    Ok(Demographics { name: Phi(name), birth_date: Phi(birth_date), sex: sex.into() })
}

/// Encounter -> census: in progress (or arrived, triaged) is an admission (registration
/// outside inpatient classes), a transfer when an earlier location is completed; finished a
/// discharge; cancelled or entered-in-error a cancelled admission. The location is the active
/// `Encounter.location` entries by physical type (ward, room, bed), as PV1-3.
pub fn encounter(ctx: &Context<'_>, enc: &El<'_>) -> Result<Mapped, Vec<Issue>> {
    let status = enc.required_str("status").map_err(|i| vec![i])?;
    let patient = subject(ctx, enc, "subject").map_err(|i| vec![i])?;
    let locations = enc.array("location").map_err(|i| vec![i])?;
    let mut moved = false;
    for l in &locations {
        moved |= l.str("status").map_err(|i| vec![i])? == Some("completed");
    }
    let class = match enc.object("class").map_err(|i| vec![i])? {
        Some(c) => c.str("code").map_err(|i| vec![i])?.unwrap_or(""),
        None => "",
    };
    let inpatient = matches!(class, "IMP" | "ACUTE" | "NONAC" | "");
    let action = match status {
        "in-progress" | "arrived" | "triaged" if moved => CensusAction::Transfer,
        "in-progress" | "arrived" | "triaged" if inpatient => CensusAction::Admit,
        "in-progress" | "arrived" | "triaged" => CensusAction::Register,
        "onleave" => CensusAction::Update,
        "finished" => CensusAction::Discharge,
        "cancelled" | "entered-in-error" => CensusAction::CancelAdmit,
        "planned" | "unknown" => {
            return Ok(Mapped {
                issues: vec![Issue::information(
                    enc.child_path("status"),
                    format!("status {status} changes no census; nothing stored"),
                )],
                ..Mapped::default()
            });
        }
        _ => return Err(vec![Issue::invalid(enc.child_path("status"), "is not an EncounterStatus code")]),
    };
    let encounter_id = match enc.array("identifier").map_err(|i| vec![i])?.first() {
        Some(id) => id.str("value").map_err(|i| vec![i])?.map(str::to_string),
        None => enc.str("id").map_err(|i| vec![i])?.map(str::to_string),
    };
    let attending = attending(enc).map_err(|i| vec![i])?;
    let mut census = event(ctx, patient, EventKind::Census { action, attending, encounter: encounter_id });
    census.location = match action {
        CensusAction::CancelAdmit => None,
        _ => location(&locations).map_err(|i| vec![i])?,
    };
    Ok(Mapped { events: vec![census], issues: Vec::new(), id: None, device: None, keyed_by_content: false })
}

fn attending(enc: &El<'_>) -> Result<Option<String>, Issue> {
    for participant in enc.array("participant")? {
        let mut is_attending = false;
        for concept in participant.array("type")? {
            for coding in concept.array("coding")? {
                is_attending |= coding.str("code")? == Some("ATND");
            }
        }
        if !is_attending {
            continue;
        }
        if let Some(individual) = participant.object("individual")? {
            if let Some(identifier) = individual.object("identifier")?
                && let Some(v) = identifier.str("value")?
            {
                return Ok(Some(v.to_string()));
            }
            if let Some(r) = individual.str("reference")? {
                return Ok(Some(relative(r).rsplit('/').next().unwrap_or(r).to_string()));
            }
        }
    }
    Ok(None)
}

/// Unit, room and bed of the active location entries (by `physicalType` wa/ro/bd; an entry
/// without one is the unit).
fn location(entries: &[El<'_>]) -> Result<Option<Location>, Issue> {
    let mut l = Location::default();
    for entry in entries {
        if matches!(entry.str("status")?, Some("completed" | "planned")) {
            continue;
        }
        let Some(reference) = entry.object("location")? else { continue };
        let name = match reference.str("display")? {
            Some(d) if !d.trim().is_empty() => d.trim().to_string(),
            _ => match reference.object("identifier")? {
                Some(id) => id.str("value")?.unwrap_or("").trim().to_string(),
                None => String::new(),
            },
        };
        if name.is_empty() {
            continue;
        }
        let kind = codings(entry, "physicalType")?.first().map(|(_, c)| c.to_string()).unwrap_or_default();
        match kind.as_str() {
            "ro" => l.room = name,
            "bd" => l.bed = name,
            _ if l.unit.is_empty() => l.unit = name,
            _ => {}
        }
    }
    Ok((!l.unit.is_empty() || !l.bed.is_empty()).then_some(l))
}

// ---------------------------------------------------------------------------------------------
// Medications, allergies

/// The drug of `medicationCodeableConcept`, or of a contained Medication's `code`.
fn medication(resource: &El<'_>, order_id: String) -> Result<Medication, Issue> {
    let concept = match resource.object("medicationCodeableConcept")? {
        Some(c) => Some(c),
        None => match resource.object("medicationReference")? {
            Some(reference) => {
                let target = reference.str("reference")?.unwrap_or("");
                let mut found = None;
                if let Some(local) = target.strip_prefix('#') {
                    for contained in resource.array("contained")? {
                        if contained.str("resourceType")? == Some("Medication") && contained.str("id")? == Some(local) {
                            found = contained.object("code")?;
                        }
                    }
                }
                found
            }
            None => None,
        },
    };
    let missing = || {
        Issue::error(
            "required",
            resource.child_path("medication[x]"),
            "a drug is required: a medicationCodeableConcept (or contained Medication) with an RxNorm code or a name",
        )
    };
    let concept = concept.ok_or_else(missing)?;
    let mut rxnorm = None;
    let mut display = None;
    for coding in concept.array("coding")? {
        let system = coding.str("system")?.unwrap_or("");
        if rxnorm.is_none() && is_rxnorm(system) {
            rxnorm = coding.str("code")?.filter(|c| !c.trim().is_empty()).map(str::to_string);
        }
        display = display.or(coding.str("display")?.filter(|d| !d.trim().is_empty()));
    }
    let text = concept.str("text")?.filter(|t| !t.trim().is_empty()).or(display);
    let name = match (text, &rxnorm) {
        (Some(t), _) => normalise_drug_name(t),
        (None, Some(_)) => String::new(),
        (None, None) => return Err(missing()),
    };
    Ok(Medication { order_id, rxnorm, name })
}

fn first_identifier(resource: &El<'_>) -> Result<Option<String>, Issue> {
    for identifier in resource.array("identifier")? {
        if let Some(v) = identifier.str("value")?.filter(|v| !v.trim().is_empty()) {
            return Ok(Some(v.trim().to_string()));
        }
    }
    Ok(None)
}

/// MedicationRequest -> a medication order: active is a new (or changed) order, completed or
/// stopped a discontinuation, cancelled or entered-in-error a cancellation. The order is
/// identified across changes by its first identifier (else its id).
pub fn medication_request(ctx: &Context<'_>, req: &El<'_>) -> Result<Mapped, Vec<Issue>> {
    let status = req.required_str("status").map_err(|i| vec![i])?;
    let intent = req.required_str("intent").map_err(|i| vec![i])?;
    let action = match status {
        "active" => OrderAction::New,
        "completed" | "stopped" => OrderAction::Discontinue,
        "cancelled" | "entered-in-error" => OrderAction::Cancel,
        "on-hold" | "draft" | "unknown" => {
            return Ok(Mapped {
                issues: vec![Issue::information(
                    req.child_path("status"),
                    format!("status {status} does not change the medication list; nothing stored"),
                )],
                ..Mapped::default()
            });
        }
        _ => return Err(vec![Issue::invalid(req.child_path("status"), "is not a MedicationRequest status code")]),
    };
    if matches!(intent, "proposal" | "plan") {
        return Ok(Mapped {
            issues: vec![Issue::information(
                req.child_path("intent"),
                format!("intent {intent} is not an order; nothing stored"),
            )],
            ..Mapped::default()
        });
    }
    let patient = subject(ctx, req, "subject").map_err(|i| vec![i])?;
    let order_id = match first_identifier(req).map_err(|i| vec![i])? {
        Some(id) => id,
        None => req.str("id").map_err(|i| vec![i])?.map(str::to_string).ok_or_else(|| {
            vec![Issue::error(
                "required",
                req.child_path("identifier"),
                "an identifier is required: it identifies the order across changes",
            )]
        })?,
    };
    let medication = medication(req, order_id).map_err(|i| vec![i])?;
    Ok(Mapped {
        events: vec![event(ctx, patient, EventKind::MedicationOrder { action, medication })],
        issues: Vec::new(),
        id: None,
        device: None,
        keyed_by_content: false,
    })
}

/// MedicationAdministration -> an administration (completed, in progress, or stopped part
/// way); not-done and entered-in-error are no administration.
pub fn medication_administration(ctx: &Context<'_>, admin: &El<'_>) -> Result<Mapped, Vec<Issue>> {
    let status = admin.required_str("status").map_err(|i| vec![i])?;
    match status {
        "completed" | "in-progress" | "stopped" => {}
        "not-done" | "entered-in-error" | "on-hold" | "unknown" => {
            return Ok(Mapped {
                issues: vec![Issue::information(
                    admin.child_path("status"),
                    format!("status {status} is no administration; nothing stored"),
                )],
                ..Mapped::default()
            });
        }
        _ => {
            return Err(vec![Issue::invalid(admin.child_path("status"), "is not a MedicationAdministration status")]);
        }
    }
    let patient = subject(ctx, admin, "subject").map_err(|i| vec![i])?;
    let given_at = match date_time(ctx.mapper, admin, "effectiveDateTime").map_err(|i| vec![i])? {
        Some(at) => Some(at),
        None => match admin.object("effectivePeriod").map_err(|i| vec![i])? {
            Some(period) => date_time(ctx.mapper, &period, "start").map_err(|i| vec![i])?,
            None => None,
        },
    }
    .ok_or_else(|| vec![Issue::required(admin.child_path("effective[x]"))])?;
    let order_id = match admin.object("request").map_err(|i| vec![i])? {
        Some(request) => match request.object("identifier").map_err(|i| vec![i])? {
            Some(id) => id.str("value").map_err(|i| vec![i])?.unwrap_or("").to_string(),
            None => relative(request.str("reference").map_err(|i| vec![i])?.unwrap_or(""))
                .rsplit('/')
                .next()
                .unwrap_or("")
                .to_string(),
        },
        None => String::new(),
    };
    let medication = medication(admin, order_id).map_err(|i| vec![i])?;
    Ok(Mapped {
        events: vec![event(ctx, patient, EventKind::Administration { medication, given_at })],
        issues: Vec::new(),
        id: None,
        device: None,
        keyed_by_content: false,
    })
}

/// AllergyIntolerance -> allergies (never a complete list: nothing is removed). A refuted,
/// entered-in-error, inactive or resolved allergy is not recorded, and not removed either:
/// keeping an allergy that no longer holds is the safe error, as for HL7 IAM deletions.
pub fn allergy_intolerance(ctx: &Context<'_>, allergy: &El<'_>) -> Result<Mapped, Vec<Issue>> {
    let verification = codings(allergy, "verificationStatus").map_err(|i| vec![i])?;
    let clinical = codings(allergy, "clinicalStatus").map_err(|i| vec![i])?;
    let retracted = verification.iter().any(|(_, c)| matches!(*c, "refuted" | "entered-in-error"))
        || clinical.iter().any(|(_, c)| matches!(*c, "inactive" | "resolved"));
    let patient = subject(ctx, allergy, "patient").map_err(|i| vec![i])?;
    if retracted {
        return Ok(Mapped {
            issues: vec![Issue::information(
                allergy.child_path("verificationStatus"),
                "an allergy that no longer holds is not recorded and not removed; nothing stored",
            )],
            ..Mapped::default()
        });
    }
    let Some(code) = allergy.object("code").map_err(|i| vec![i])? else {
        return Err(vec![Issue::required(allergy.child_path("code"))]);
    };
    let mut coded = None;
    let mut display = None;
    for coding in code.array("coding").map_err(|i| vec![i])? {
        let system = coding.str("system").map_err(|i| vec![i])?.unwrap_or("");
        if let Some(c) = coding.str("code").map_err(|i| vec![i])?.filter(|c| !c.trim().is_empty()) {
            let system = if is_rxnorm(system) { "RXNORM" } else { system };
            if coded.is_none() || system == "RXNORM" {
                coded = Some(format!("{system}|{c}"));
            }
        }
        display = display.or(coding.str("display").map_err(|i| vec![i])?.filter(|d| !d.trim().is_empty()));
    }
    let text = code.str("text").map_err(|i| vec![i])?.filter(|t| !t.trim().is_empty()).or(display);
    let Some(text) = text else {
        return Err(vec![Issue::error(
            "required",
            code.child_path("text"),
            "the allergen needs a name (text or display)",
        )]);
    };
    let kind = match allergy.array("category").map_err(|i| vec![i])?.first().and_then(|c| c.value().as_str()) {
        Some("medication") => "DA",
        Some("food") => "FA",
        Some("environment") => "EA",
        Some("biologic") => "MA",
        _ => "",
    };
    let mut severity = "";
    for reaction in allergy.array("reaction").map_err(|i| vec![i])? {
        let this = match reaction.str("severity").map_err(|i| vec![i])? {
            Some("severe") => "SV",
            Some("moderate") if severity != "SV" => "MO",
            Some("mild") if severity.is_empty() => "MI",
            _ => severity,
        };
        severity = this;
    }
    if severity.is_empty() {
        severity = match allergy.str("criticality").map_err(|i| vec![i])? {
            Some("high") => "SV",
            _ => "U",
        };
    }
    let entry = Allergy { code: coded, name: normalise_drug_name(text), kind: kind.into(), severity: severity.into() };
    Ok(Mapped {
        events: vec![event(ctx, patient, EventKind::Allergies { allergies: vec![entry], replace: false })],
        issues: Vec::new(),
        id: None,
        device: None,
        keyed_by_content: false,
    })
}

/// The opaque patient id of a logical `Patient/<id>` reference, when it has the shape Vigil
/// issues (32 hex digits).
pub fn issued_patient_id(reference: &str) -> Option<PatientId> {
    let local = relative(reference);
    let id = local.strip_prefix("Patient/")?;
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| PatientId(id.to_ascii_lowercase()))
}

#[cfg(test)]
mod tests;
