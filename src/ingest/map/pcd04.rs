//! ORU^R40 (IHE PCD-04, alert communication) -> one device-alarm event per alarm (OBR group).
//!
//! Per OBR group: identity from OBR-3 (update counter, alarm id, source EUI-64), the event
//! from the first non-facet, non-numeric OBX, the value that caused it from the first numeric
//! OBX, and the facets (phase, state, inactivation, priority, kind) from the OBX rows coded in
//! either MDC facet set: 68480-68488 (`MDC_ATTR_ALERT_*` / `MDC_ATTR_EVT_PHASE`, ...) or the
//! older 68165-68168. The facet is told by its value: the value sets are disjoint, and the
//! older set's code-to-facet order is not the same in every reporter. OBX-8 may repeat kind
//! and priority (`A~PM~SP`). A keep-alive (196614 MDC_EVT_ACTIVE) carries no alarm.

use time::OffsetDateTime;
use vigil_actors::{AlarmKind, AlarmPhase, AlarmPriority, AlarmState, ClinicalEvent, DeviceAlarm, EventKind};

use super::{MapError, Mapper, NO_PID, location};
use crate::ingest::hl7::{Message, Segment};
use crate::vocab::CodeSystem;

/// MDC_EVT_ACTIVE: the reporter's keep-alive.
pub const MDC_EVT_ACTIVE: &str = "196614";

/// The MDC codes of alarm facets: the 68480-68488 family and the older 68165-68168.
pub(crate) fn is_facet_code(code: &str) -> bool {
    code.parse::<u32>().is_ok_and(|c| (68480..=68488).contains(&c) || (68165..=68168).contains(&c))
}

/// One facet value.
pub(crate) enum Facet {
    Phase(AlarmPhase),
    State(AlarmState),
    Inactivation(String),
    Priority(AlarmPriority),
    Kind(AlarmKind),
}

/// The facet a value names, whatever code it came under.
pub(crate) fn facet(value: &str) -> Option<Facet> {
    let v = value.trim().to_ascii_lowercase();
    Some(match v.as_str() {
        "start" => Facet::Phase(AlarmPhase::Start),
        "continue" => Facet::Phase(AlarmPhase::Continue),
        "end" => Facet::Phase(AlarmPhase::End),
        "update" => Facet::Phase(AlarmPhase::Update),
        "off" => Facet::State(AlarmState::Off),
        "inactive" => Facet::State(AlarmState::Inactive),
        "active" => Facet::State(AlarmState::Active),
        "latched" => Facet::State(AlarmState::Latched),
        "enabled" | "audio-paused" | "audio-off" | "alarm-paused" | "alarm-off" | "alert-acknowledged" => {
            Facet::Inactivation(v)
        }
        _ => return priority_or_kind(value),
    })
}

/// PH/PM/PL/PN or SP/ST/SA.
pub(crate) fn priority_or_kind(value: &str) -> Option<Facet> {
    Some(match value.trim().to_ascii_uppercase().as_str() {
        "PH" => Facet::Priority(AlarmPriority::High),
        "PM" => Facet::Priority(AlarmPriority::Medium),
        "PL" => Facet::Priority(AlarmPriority::Low),
        "PN" => Facet::Priority(AlarmPriority::None),
        "SP" => Facet::Kind(AlarmKind::Physiologic),
        "ST" => Facet::Kind(AlarmKind::Technical),
        "SA" => Facet::Kind(AlarmKind::Advisory),
        _ => return None,
    })
}

/// OBR-3 as (alarm id, update counter, device): `counter^id^EUI-64^EUI-64`, or `id^...`
/// when the first component is not a number.
fn alarm_identity(obr: &Segment) -> Result<(String, Option<u64>, Option<String>), MapError> {
    let (first, second) = (obr.component(3, 1), obr.component(3, 2));
    let (id, counter) = match first.trim().parse::<u64>() {
        Ok(counter) if !second.trim().is_empty() => (second, Some(counter)),
        _ if !first.trim().is_empty() => (first, None),
        _ => (second, None),
    };
    let id = id.trim().to_string();
    if id.is_empty() {
        return Err(MapError::new("OBR", 3, 101, "OBR-3 carries no alarm identifier"));
    }
    let device = Some(obr.component(3, 3).trim().to_string()).filter(|d| !d.is_empty());
    Ok((id, counter, device))
}

impl Mapper {
    /// ORU^R40 -> one device-alarm event per alarm; none for a keep-alive.
    pub fn oru_r40(&self, msg: &Message, received_at: OffsetDateTime) -> Result<Vec<ClinicalEvent>, MapError> {
        let pid = msg.segment("PID").ok_or(NO_PID)?;
        let place = msg.segment("PV1").and_then(|pv1| location(pv1, 3));
        let mut groups: Vec<(&Segment, Vec<&Segment>)> = Vec::new();
        for segment in msg.segments() {
            match segment.name() {
                "OBR" => groups.push((segment, Vec::new())),
                "OBX" => match groups.last_mut() {
                    Some((_, rows)) => rows.push(segment),
                    None => return Err(MapError::new("OBX", 0, 100, "OBX before any OBR")),
                },
                _ => {}
            }
        }
        if groups.is_empty() {
            return Err(MapError::new("OBR", 0, 100, "OBR segment is required"));
        }
        let mut events = Vec::new();
        for (obr, rows) in groups {
            let Some(alarm) = self.alarm(obr, &rows)? else { continue };
            let mut event = self.event(pid, received_at, EventKind::DeviceAlarm { alarm })?;
            event.location.clone_from(&place);
            events.push(event);
        }
        Ok(events)
    }

    /// One OBR group as an alarm; `None` for a keep-alive.
    fn alarm(&self, obr: &Segment, rows: &[&Segment]) -> Result<Option<DeviceAlarm>, MapError> {
        if obr.component(4, 1) == MDC_EVT_ACTIVE || rows.iter().any(|r| r.component(3, 1) == MDC_EVT_ACTIVE) {
            return Ok(None);
        }
        let (alarm_id, update_counter, obr_device) = alarm_identity(obr)?;
        let (mut phase, mut state, mut inactivation, mut priority, mut kind) = (None, None, None, None, None);
        let mut event = None;
        let mut value = None;
        for obx in rows {
            let code = obx.component(3, 1);
            if is_facet_code(&code) {
                match facet(&obx.text(5)) {
                    Some(Facet::Phase(p)) => phase = Some(p),
                    Some(Facet::State(s)) => state = Some(s),
                    Some(Facet::Inactivation(i)) => inactivation = Some(i),
                    Some(Facet::Priority(p)) => priority = Some(p),
                    Some(Facet::Kind(k)) => kind = Some(k),
                    None if matches!(code.as_str(), "68480" | "68486" | "68487" | "68488") => {}
                    None => return Err(MapError::new("OBX", 5, 103, "OBX-5: unknown alarm facet value")),
                }
                continue;
            }
            if obx.text(2) == "NM" {
                if value.is_none() {
                    value = Some(self.alarm_value(obx));
                }
            } else if event.is_none() {
                event = Some(*obx);
            }
            // OBX-8 may repeat priority and kind (`A~PM~SP`); an explicit facet row wins.
            for flag in obx.field(8).into_iter().flat_map(|f| f.repetitions().map(|r| r.component(1))) {
                match priority_or_kind(&flag) {
                    Some(Facet::Priority(p)) => _ = priority.get_or_insert(p),
                    Some(Facet::Kind(k)) => _ = kind.get_or_insert(k),
                    _ => {}
                }
            }
        }
        let Some(phase) = phase else {
            return Err(MapError::new("OBX", 3, 101, "no alarm phase OBX (MDC_ATTR_EVT_PHASE)"));
        };
        let Some(event) = event else {
            return Err(MapError::new("OBX", 3, 101, "no alarm event OBX"));
        };
        let event_code = format!("{}|{}", event.component(3, 3), event.component(3, 1));
        let event_text = [event.text(5), event.component(3, 2), event.component(3, 1)]
            .into_iter()
            .map(|t| t.trim().to_string())
            .find(|t| !t.is_empty())
            .unwrap_or_default();
        let device =
            obr_device.or_else(|| rows.iter().map(|r| r.component(18, 1).trim().to_string()).find(|d| !d.is_empty()));
        Ok(Some(DeviceAlarm {
            device,
            alarm_id,
            update_counter,
            event_code,
            event_text,
            value,
            phase,
            state,
            inactivation,
            priority,
            kind,
        }))
    }

    /// `spo2 88 %`: the canonical name when the code is known, else the code's text; the
    /// value and unit as sent.
    fn alarm_value(&self, obx: &Segment) -> String {
        let name = CodeSystem::parse(&obx.component(3, 3))
            .and_then(|system| self.vocab.lookup(system, &obx.component(3, 1)))
            .map_or_else(|| obx.component(3, 2), |c| c.name.clone());
        let unit = [obx.component(6, 2), obx.component(6, 1)].into_iter().find(|u| !u.is_empty()).unwrap_or_default();
        [name, obx.text(5), unit].into_iter().filter(|s| !s.trim().is_empty()).collect::<Vec<_>>().join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::BlindIndex;
    use crate::vocab::Vocabulary;

    fn mapper() -> Mapper {
        Mapper::new(Vocabulary::shipped(), BlindIndex::new(&[7; 32]))
    }

    fn r40(obr3: &str, rows: &[&str]) -> Message {
        let mut text = String::from(
            "MSH|^~\\&|ACM|ICU|VIGIL|HOSP|20260102030405+0000||ORU^R40^ORU_R40|A1|P|2.6|||AL|NE\r\
PID|||123456^^^HOSP^MR||Doe^Jane||19500101|F\rPV1||I|ICU^12^B\r",
        );
        text.push_str(&format!("OBR|1||{obr3}|196616^MDC_EVT_ALARM^MDC|||20260102030400+0000\r"));
        for row in rows {
            text.push_str(row);
            text.push('\r');
        }
        Message::parse(text.as_bytes()).unwrap()
    }

    fn one(msg: &Message) -> DeviceAlarm {
        let events = mapper().oru_r40(msg, OffsetDateTime::now_utc()).unwrap();
        assert_eq!(events.len(), 1);
        match &events[0].kind {
            EventKind::DeviceAlarm { alarm } => alarm.clone(),
            other => panic!("expected a device alarm, got {other:?}"),
        }
    }

    #[test]
    fn a_physiologic_alarm_with_the_68480_family() {
        let msg = r40(
            "7^AL-42^0012345678ABCDEF^EUI-64",
            &[
                "OBX|1|ST|196674^MDC_EVT_LO_VAL_LT_LIM^MDC|1.0.0.1|SpO2 low",
                "OBX|2|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.0.0.2|84|262688^MDC_DIM_PERCENT^MDC|90-100|L~PH~SP",
                "OBX|3|ST|68481^MDC_ATTR_EVT_PHASE^MDC|1.0.0.3|start",
                "OBX|4|ST|68482^MDC_ATTR_ALARM_STATE^MDC|1.0.0.4|active",
                "OBX|5|ST|68483^MDC_ATTR_ALARM_INACTIVATION_STATE^MDC|1.0.0.5|enabled",
                "OBX|6|ST|68484^MDC_ATTR_ALARM_PRIORITY^MDC|1.0.0.6|PH",
                "OBX|7|ST|68485^MDC_ATTR_ALERT_TYPE^MDC|1.0.0.7|SP",
            ],
        );
        let alarm = one(&msg);
        assert_eq!(alarm.alarm_id, "AL-42");
        assert_eq!(alarm.update_counter, Some(7));
        assert_eq!(alarm.device.as_deref(), Some("0012345678ABCDEF"));
        assert_eq!(alarm.event_code, "MDC|196674");
        assert_eq!(alarm.event_text, "SpO2 low");
        assert_eq!(alarm.value.as_deref(), Some("spo2 84 MDC_DIM_PERCENT"));
        assert_eq!(alarm.phase, AlarmPhase::Start);
        assert_eq!(alarm.state, Some(AlarmState::Active));
        assert_eq!(alarm.inactivation.as_deref(), Some("enabled"));
        assert_eq!(alarm.priority, Some(AlarmPriority::High));
        assert_eq!(alarm.kind, Some(AlarmKind::Physiologic));
    }

    #[test]
    fn a_technical_alarm_with_the_older_codes_and_obx8_flags_device_from_obx18() {
        let msg = r40(
            "AL-9",
            &[
                "OBX|1|CWE|196876^MDC_EVT_LEAD_DISCONN^MDC|1.0.0.1||||A~PM~ST|||F|||||||MON-7",
                "OBX|2|ST|68165^MDC_ATTR_EVT_PHASE^MDC|1.0.0.2|END",
                "OBX|3|ST|68166^MDC_ATTR_ALARM_STATE^MDC|1.0.0.3|off",
            ],
        );
        let alarm = one(&msg);
        assert_eq!((alarm.alarm_id.as_str(), alarm.update_counter), ("AL-9", None));
        assert_eq!(alarm.device.as_deref(), Some("MON-7"));
        assert_eq!(alarm.event_text, "MDC_EVT_LEAD_DISCONN");
        assert_eq!(alarm.phase, AlarmPhase::End);
        assert_eq!(alarm.state, Some(AlarmState::Off));
        assert_eq!(alarm.priority, Some(AlarmPriority::Medium));
        assert_eq!(alarm.kind, Some(AlarmKind::Technical));
        assert_eq!(alarm.value, None);
    }

    #[test]
    fn a_keep_alive_carries_no_alarm() {
        let msg = r40("HB-1^^0012345678ABCDEF^EUI-64", &["OBX|1|ST|196614^MDC_EVT_ACTIVE^MDC|1.0.0.1|"]);
        assert!(mapper().oru_r40(&msg, OffsetDateTime::now_utc()).unwrap().is_empty());
    }

    #[test]
    fn malformed_alarms_name_the_field() {
        let phase = "OBX|2|ST|68481^MDC_ATTR_EVT_PHASE^MDC|1.0.0.2|start";
        let event = "OBX|1|ST|196674^MDC_EVT_LO_VAL_LT_LIM^MDC|1.0.0.1|SpO2 low";
        type Case<'a> = (&'a str, &'a [&'a str], (&'a str, u32, u16));
        let cases: [Case; 4] = [
            ("", &[event, phase], ("OBR", 3, 101)),
            ("AL-1", &[event], ("OBX", 3, 101)),
            ("AL-1", &[phase], ("OBX", 3, 101)),
            ("AL-1", &[event, "OBX|2|ST|68481^MDC_ATTR_EVT_PHASE^MDC|1.0.0.2|sometimes"], ("OBX", 5, 103)),
        ];
        for (obr3, rows, (segment, field, code)) in cases {
            let err = mapper().oru_r40(&r40(obr3, rows), OffsetDateTime::now_utc()).unwrap_err();
            assert_eq!((err.segment, err.field, err.code), (segment, field, code), "{obr3} {rows:?}: {err}");
        }
        let no_obr = Message::parse(b"MSH|^~\\&|A|B|C|D|20260102||ORU^R40|X|P|2.6\rPID|||1^^^H^MR").unwrap();
        assert_eq!(mapper().oru_r40(&no_obr, OffsetDateTime::now_utc()).unwrap_err().segment, "OBR");
    }
}
