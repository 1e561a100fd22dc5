//! A device alarm sent over FHIR -> the same device-alarm event as the IHE PCD-04 ORU^R40 OBR
//! group it stands for (`map/pcd04.rs`), so both raise, update and resolve the same Vigil alert
//! (`device.alarm`, `device.technical`).
//!
//! FHIR R4 has no alarm resource (DeviceAlert is an R6 draft) and the Point-of-Care Device IG
//! profiles measurements only, so a gateway bridging IHE ACM to R4 sends each alarm report as
//! an Observation shaped like its PCD-04 OBR group: `code` the alarm event (MDC alerts and
//! events partition, e.g. 196674 `MDC_EVT_LO_VAL_LT_LIM`), `identifier` the alarm's identity
//! at its source (OBR-3), `device` the source (EUI-64), one component per alarm facet under the
//! same MDC codes as the PCD-04 OBX rows (68480-68488, or the older 68165-68168), and a
//! component with the value that caused it. An Observation is an alarm report when a component
//! is coded with an alarm facet. Priority and kind may also come as `interpretation` codes
//! (PH/PM/PL/PN, SP/ST/SA), as OBX-8 carries them. docs/fhir.md.

use vigil_actors::{ClinicalEvent, DeviceAlarm, EventKind};

use super::json::El;
use super::outcome::Issue;
use super::resources::{Context, DeviceReport, MDC, Mapped, codings, event, observation_device, subject};
use crate::ingest::map::pcd04::{Facet, MDC_EVT_ACTIVE, facet, is_facet_code, priority_or_kind};

/// Whether `obs` is a device alarm report: a component coded with an MDC alarm facet.
pub fn is_alarm(obs: &El<'_>) -> Result<bool, Issue> {
    for component in obs.array("component")? {
        if codings(&component, "code")?.iter().any(|(system, code)| *system == MDC && is_facet_code(code.trim())) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The text of a facet component's value: `valueString`, else a `valueCodeableConcept`'s
/// first code, display or text.
fn facet_text<'a>(component: &El<'a>) -> Result<Option<(&'a str, String)>, Issue> {
    if let Some(text) = component.str("valueString")? {
        return Ok(Some((text, component.child_path("valueString"))));
    }
    let Some(concept) = component.object("valueCodeableConcept")? else { return Ok(None) };
    for coding in concept.array("coding")? {
        for name in ["code", "display"] {
            if let Some(text) = coding.str(name)?.filter(|t| !t.trim().is_empty()) {
                return Ok(Some((text, concept.child_path("coding"))));
            }
        }
    }
    Ok(concept.str("text")?.map(|t| (t, concept.child_path("text"))))
}

/// `spo2 88 %` (the canonical name when the code is known, else its display), as PCD-04's
/// value OBX reads.
fn alarm_value(ctx: &Context<'_>, element: &El<'_>) -> Result<Option<String>, Issue> {
    let Some(quantity) = element.object("valueQuantity")? else { return Ok(None) };
    let Some(number) = quantity.number("value")? else { return Ok(None) };
    let codes = codings(element, "code")?;
    let name = match ctx.mapper.analyte(codes.iter().copied()) {
        Some((canonical, _)) => canonical.name.clone(),
        None => match element.object("code")? {
            Some(code) => code.str("text")?.map(str::to_string).unwrap_or_default(),
            None => String::new(),
        },
    };
    let unit = quantity.str("unit")?.or(quantity.str("code")?).unwrap_or("");
    let parts = [name, number.to_string(), unit.to_string()];
    Ok(Some(parts.into_iter().filter(|s| !s.trim().is_empty()).collect::<Vec<_>>().join(" ")))
}

/// An alarm report -> one device-alarm event; none for a keep-alive (`MDC_EVT_ACTIVE`).
pub fn alarm(ctx: &Context<'_>, obs: &El<'_>) -> Result<Mapped, Vec<Issue>> {
    let one = |i: Issue| vec![i];
    let patient = subject(ctx, obs, "subject").map_err(one)?;
    let device = observation_device(ctx, obs).map_err(one)?;
    let report = |patient: &vigil_actors::PatientKey| {
        device.clone().map(|device| DeviceReport {
            device,
            patient: vigil_actors::device::Attachment::of(&event(
                ctx,
                patient.clone(),
                EventKind::Observations { observations: Vec::new() },
            )),
            conditions: Vec::new(),
            valid_data: false,
            technical: false,
        })
    };
    let code = obs.object("code").map_err(one)?.ok_or_else(|| vec![Issue::required(obs.child_path("code"))])?;
    let mut event_coding = None;
    for coding in code.array("coding").map_err(one)? {
        let system = coding.str("system").map_err(one)?.unwrap_or("");
        if let (MDC, Some(c)) = (system, coding.str("code").map_err(one)?.filter(|c| !c.trim().is_empty())) {
            event_coding = Some((c.trim(), coding.str("display").map_err(one)?));
            break;
        }
    }
    let Some((event_code, display)) = event_coding else {
        return Err(one(Issue::invalid(
            code.child_path("coding"),
            "an alarm report's code is its alarm event, coded in MDC (urn:iso:std:iso:11073:10101)",
        )));
    };
    if event_code == MDC_EVT_ACTIVE {
        let issues =
            vec![Issue::information(code.child_path("coding"), "a keep-alive (MDC_EVT_ACTIVE): nothing stored")];
        return Ok(Mapped { issues, device: report(&patient), keyed_by_content: true, ..Mapped::default() });
    }
    let event_text = [display, code.str("text").map_err(one)?, Some(event_code)]
        .into_iter()
        .flatten()
        .map(str::trim)
        .find(|t| !t.is_empty())
        .unwrap_or(event_code)
        .to_string();
    let identifiers = obs.array("identifier").map_err(one)?;
    let alarm_id = match identifiers.first() {
        Some(id) => id.str("value").map_err(one)?.map(str::trim).filter(|v| !v.is_empty()),
        None => None,
    };
    let Some(alarm_id) = alarm_id else {
        return Err(one(Issue::error(
            "required",
            obs.child_path("identifier"),
            "an alarm report names its alarm (its identity at the source, as PCD-04 OBR-3)",
        )));
    };
    let (mut phase, mut state, mut inactivation, mut priority, mut kind) = (None, None, None, None, None);
    let mut value = alarm_value(ctx, obs).map_err(one)?;
    for component in obs.array("component").map_err(one)? {
        let codes = codings(&component, "code").map_err(one)?;
        let facet_code = codes.iter().find(|(s, c)| *s == MDC && is_facet_code(c.trim())).map(|(_, c)| c.trim());
        let Some(facet_code) = facet_code else {
            if value.is_none() {
                value = alarm_value(ctx, &component).map_err(one)?;
            }
            continue;
        };
        let Some((text, at)) = facet_text(&component).map_err(one)? else { continue };
        match facet(text) {
            Some(Facet::Phase(p)) => phase = Some(p),
            Some(Facet::State(s)) => state = Some(s),
            Some(Facet::Inactivation(i)) => inactivation = Some(i),
            Some(Facet::Priority(p)) => priority = Some(p),
            Some(Facet::Kind(k)) => kind = Some(k),
            None if matches!(facet_code, "68480" | "68486" | "68487" | "68488") => {}
            None => return Err(one(Issue::invalid(at, "not an alarm facet value PCD-04 defines"))),
        }
    }
    // `interpretation` may carry priority and kind as OBX-8 does; an explicit facet wins.
    for concept in obs.array("interpretation").map_err(one)? {
        for coding in concept.array("coding").map_err(one)? {
            match coding.str("code").map_err(one)?.and_then(priority_or_kind) {
                Some(Facet::Priority(p)) => _ = priority.get_or_insert(p),
                Some(Facet::Kind(k)) => _ = kind.get_or_insert(k),
                _ => {}
            }
        }
    }
    let Some(phase) = phase else {
        return Err(one(Issue::error(
            "required",
            obs.child_path("component"),
            "no alarm phase component (MDC 68481 MDC_ATTR_EVT_PHASE: start, continue, end or update)",
        )));
    };
    let alarm = DeviceAlarm {
        device: device.clone(),
        alarm_id: alarm_id.to_string(),
        update_counter: None,
        event_code: format!("MDC|{event_code}"),
        event_text,
        value,
        phase,
        state,
        inactivation,
        priority,
        kind,
    };
    let event: ClinicalEvent = event(ctx, patient.clone(), EventKind::DeviceAlarm { alarm });
    Ok(Mapped { events: vec![event], issues: Vec::new(), id: None, device: report(&patient), keyed_by_content: true })
}
