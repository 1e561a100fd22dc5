//! IHE PCD-01 (Communicate PCD Data) ORU^R01 builder for synthetic bedside-monitor vitals.

use std::fmt::Write as _;

use time::OffsetDateTime;
use time::macros::format_description;

/// Synthetic patient demographics and location. Never put real patient data here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatientDemo {
    /// Medical record number (PID-3.1).
    pub mrn: String,
    /// Assigning authority of the MRN (PID-3.4).
    pub assigning_authority: String,
    /// Family name (PID-5.1).
    pub family: String,
    /// Given name (PID-5.2).
    pub given: String,
    /// Date of birth, `YYYYMMDD` (PID-7).
    pub birth_date: String,
    /// Administrative sex, e.g. `F`, `M`, `U` (PID-8).
    pub sex: String,
    /// Point of care (PV1-3.1).
    pub unit: String,
    /// Room (PV1-3.2).
    pub room: String,
    /// Bed (PV1-3.3).
    pub bed: String,
}

/// One set of observations; `None` values are left out of the message.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Vitals {
    /// Heart rate, beats/min.
    pub hr: Option<f64>,
    /// Respiratory rate, breaths/min.
    pub rr: Option<f64>,
    /// Pulse-oximetry SpO2, %.
    pub spo2: Option<f64>,
    /// Non-invasive systolic pressure, mmHg.
    pub sbp: Option<f64>,
    /// Non-invasive diastolic pressure, mmHg.
    pub dbp: Option<f64>,
    /// Non-invasive mean pressure, mmHg.
    pub map: Option<f64>,
    /// Temperature, °C.
    pub temp_c: Option<f64>,
    /// Glasgow coma score total (nurse-charted, so not a device metric).
    pub gcs: Option<f64>,
    /// Inspired oxygen concentration, % (21 on room air).
    pub fio2: Option<f64>,
    /// Supplemental oxygen flow, L/min (0 on room air).
    pub o2_flow: Option<f64>,
    /// ACVPU level of consciousness (nurse-charted, like the GCS).
    pub acvpu: Option<Acvpu>,
}

/// ACVPU level of consciousness, sent as the LOINC 67775-7 answer text the vocabulary maps to
/// `consciousness` (`A`, `C`, `V`, `P`, `U`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acvpu {
    /// Alert.
    Alert,
    /// New confusion.
    Confusion,
    /// Responds to voice.
    Voice,
    /// Responds to pain.
    Pain,
    /// Unresponsive.
    Unresponsive,
}

impl Acvpu {
    /// The one-letter code (OBX-5.1).
    pub fn code(self) -> &'static str {
        match self {
            Acvpu::Alert => "A",
            Acvpu::Confusion => "C",
            Acvpu::Voice => "V",
            Acvpu::Pain => "P",
            Acvpu::Unresponsive => "U",
        }
    }

    /// Display text (OBX-5.2).
    pub fn text(self) -> &'static str {
        match self {
            Acvpu::Alert => "Alert",
            Acvpu::Confusion => "New confusion",
            Acvpu::Voice => "Voice",
            Acvpu::Pain => "Pain",
            Acvpu::Unresponsive => "Unresponsive",
        }
    }
}

/// Gateway identity in MSH-3. Fixed because the simulator plays one gateway.
const SENDING_APP: &str = "MONITOR_GW^ACDE48234567ABCD^EUI-64";
const SENDING_FACILITY: &str = "VIGIL_SIM";
const PCD01_PROFILE: &str = "IHE_PCD_001^IHE PCD^1.3.6.1.4.1.19376.1.6.1.1.1^ISO";
const MDS_CODE: &str = "69965^MDC_DEV_MON_PHYSIO_MULTI_PARAM_MDS^MDC";

pub(crate) const HR_CODE: &str = "147842^MDC_ECG_HEART_RATE^MDC";
pub(crate) const RR_CODE: &str = "151562^MDC_RESP_RATE^MDC";
pub(crate) const SPO2_CODE: &str = "150456^MDC_PULS_OXIM_SAT_O2^MDC";
pub(crate) const SBP_CODE: &str = "150021^MDC_PRESS_BLD_NONINV_SYS^MDC";
pub(crate) const DBP_CODE: &str = "150022^MDC_PRESS_BLD_NONINV_DIA^MDC";
pub(crate) const MAP_CODE: &str = "150023^MDC_PRESS_BLD_NONINV_MEAN^MDC";
pub(crate) const TEMP_CODE: &str = "150344^MDC_TEMP^MDC";
pub(crate) const GCS_CODE: &str = "9269-2^Glasgow coma score total^LN";
pub(crate) const FIO2_CODE: &str = "3150-0^Inhaled oxygen concentration^LN";
pub(crate) const O2_FLOW_CODE: &str = "3151-8^Inhaled oxygen flow rate^LN";
pub(crate) const ACVPU_CODE: &str = "67775-7^Level of consciousness^LN";

const BPM: &str = "264864^MDC_DIM_BEAT_PER_MIN^MDC";
const RESP_PER_MIN: &str = "264928^MDC_DIM_RESP_PER_MIN^MDC";
const PERCENT: &str = "262688^MDC_DIM_PERCENT^MDC";
const MMHG: &str = "266016^MDC_DIM_MMHG^MDC";
const DEGC: &str = "268192^MDC_DIM_DEGC^MDC";
const UCUM_PERCENT: &str = "%^percent^UCUM";
const UCUM_L_MIN: &str = "L/min^liters per minute^UCUM";

/// Builds a PCD-01 ORU^R01 (segments terminated by `\r`) for `v` measured at `at`.
///
/// Each parameter group sits in its own VMD of the MDS (`1.<vmd>.1.<metric>`),
/// as a multi-parameter monitor would report it.
pub fn oru_r01(p: &PatientDemo, device_id: &str, v: &Vitals, control_id: &str, at: OffsetDateTime) -> String {
    let ts = hl7_timestamp(at);
    let cid = escape(control_id);
    let dev = escape(device_id);
    let mut out = String::with_capacity(1024);
    // Writing into a String cannot fail, hence the ignored results below.
    let _ = write!(
        out,
        "MSH|^~\\&|{SENDING_APP}|{SENDING_FACILITY}|VIGIL|HOSP|{ts}||ORU^R01^ORU_R01|{cid}|P|2.6|||AL|NE||UNICODE UTF-8|||{PCD01_PROFILE}\r"
    );
    push_pid(&mut out, p);
    push_pv1(&mut out, p, "");
    let _ = write!(out, "OBR|1|{cid}^VIGIL_SIM|{cid}^VIGIL_SIM|182777000^monitoring of patient^SCT|||{ts}\r");

    let mut n = 1usize;
    let mds_id = format!("{dev}^^{}^EUI-64", eui64(device_id));
    push_obx(&mut out, &[(1, "1"), (3, MDS_CODE), (4, "1"), (11, "X"), (18, &mds_id)]);

    let metrics: [(Option<f64>, &str, &str, &str); 7] = [
        (v.hr, HR_CODE, BPM, "1.1.1.1"),
        (v.rr, RR_CODE, RESP_PER_MIN, "1.2.1.1"),
        (v.spo2, SPO2_CODE, PERCENT, "1.3.1.1"),
        (v.sbp, SBP_CODE, MMHG, "1.4.1.1"),
        (v.dbp, DBP_CODE, MMHG, "1.4.1.2"),
        (v.map, MAP_CODE, MMHG, "1.4.1.3"),
        (v.temp_c, TEMP_CODE, DEGC, "1.5.1.1"),
    ];
    for (value, code, unit, containment) in metrics {
        let Some(value) = value.and_then(format_value) else {
            continue;
        };
        n += 1;
        let set_id = n.to_string();
        push_obx(
            &mut out,
            &[
                (1, &set_id),
                (2, "NM"),
                (3, code),
                (4, containment),
                (5, &value),
                (6, unit),
                (11, "R"),
                (14, &ts),
                (18, &dev),
            ],
        );
    }
    // Oxygen as charted at the bedside (LOINC; the monitor's MDC set has no FiO2 on a ward).
    let charted: [(Option<f64>, &str, &str); 3] =
        [(v.gcs, GCS_CODE, "{score}"), (v.fio2, FIO2_CODE, UCUM_PERCENT), (v.o2_flow, O2_FLOW_CODE, UCUM_L_MIN)];
    for (value, code, unit) in charted {
        let Some(value) = value.and_then(format_value) else {
            continue;
        };
        n += 1;
        let set_id = n.to_string();
        push_obx(&mut out, &[(1, &set_id), (2, "NM"), (3, code), (5, &value), (6, unit), (11, "F"), (14, &ts)]);
    }
    if let Some(acvpu) = v.acvpu {
        n += 1;
        let set_id = n.to_string();
        let answer = format!("{}^{}^ACVPU", acvpu.code(), acvpu.text());
        push_obx(&mut out, &[(1, &set_id), (2, "CWE"), (3, ACVPU_CODE), (5, &answer), (11, "F"), (14, &ts)]);
    }
    out
}

/// Appends an OBX whose fields are given as `(index, value)` in ascending order.
fn push_obx(out: &mut String, fields: &[(usize, &str)]) {
    out.push_str("OBX");
    let mut at = 0;
    for &(idx, value) in fields {
        while at < idx {
            out.push('|');
            at += 1;
        }
        out.push_str(value);
    }
    out.push('\r');
}

/// PID with the patient's identity (PID-3 under its assigning authority, name, birth date, sex),
/// as every simulated sender writes it.
pub(crate) fn push_pid(out: &mut String, p: &PatientDemo) {
    // Writing into a String cannot fail, hence the ignored result.
    let _ = write!(
        out,
        "PID|||{}^^^{}^MR||{}^{}^^^^^L||{}|{}\r",
        escape(&p.mrn),
        escape(&p.assigning_authority),
        escape(&p.family),
        escape(&p.given),
        escape(&p.birth_date),
        escape(&p.sex),
    );
}

/// PV1 with the location in PV1-3 (unit^room^bed); `tail` is appended after PV1-3 as is (the
/// fields that follow, with their leading `|`, or empty).
pub(crate) fn push_pv1(out: &mut String, p: &PatientDemo, tail: &str) {
    let _ = write!(out, "PV1||I|{}^{}^{}{tail}\r", escape(&p.unit), escape(&p.room), escape(&p.bed));
}

/// `YYYYMMDDHHMMSS+ZZZZ`, the DTM form PCD-01 requires (offset mandatory).
pub(crate) fn hl7_timestamp(at: OffsetDateTime) -> String {
    let fmt =
        format_description!("[year][month][day][hour][minute][second][offset_hour sign:mandatory][offset_minute]");
    // Only fails for years outside 0..=9999, which a simulator never produces.
    at.format(&fmt).unwrap_or_default()
}

/// Formats a value with at most two decimals and no trailing zeros; non-finite
/// values are dropped rather than sent as `NaN`.
pub(crate) fn format_value(v: f64) -> Option<String> {
    if !v.is_finite() {
        return None;
    }
    let s = format!("{:.2}", (v * 100.0).round() / 100.0);
    let s = s.trim_end_matches('0').trim_end_matches('.');
    Some(if s == "-0" { "0".to_owned() } else { s.to_owned() })
}

/// Escapes HL7 delimiters so a value cannot break the segment structure.
pub(crate) fn escape(s: &str) -> String {
    if !s.contains(['|', '^', '~', '\\', '&', '\r', '\n']) {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '|' => out.push_str("\\F\\"),
            '^' => out.push_str("\\S\\"),
            '~' => out.push_str("\\R\\"),
            '\\' => out.push_str("\\E\\"),
            '&' => out.push_str("\\T\\"),
            '\r' | '\n' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// A stable, EUI-64-shaped identifier derived from the device id (FNV-1a), so a
/// simulated monitor keeps the same hardware id across runs.
pub(crate) fn eui64(device_id: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in device_id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016X}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn demo() -> PatientDemo {
        PatientDemo {
            mrn: "SIM000123".into(),
            assigning_authority: "VIGIL_SIM".into(),
            family: "Testperson".into(),
            given: "Alpha".into(),
            birth_date: "19700101".into(),
            sex: "F".into(),
            unit: "ICU".into(),
            room: "03".into(),
            bed: "1".into(),
        }
    }

    fn full_vitals() -> Vitals {
        Vitals {
            hr: Some(92.0),
            rr: Some(18.0),
            spo2: Some(97.0),
            sbp: Some(118.0),
            dbp: Some(70.0),
            map: Some(86.0),
            temp_c: Some(37.8),
            gcs: Some(15.0),
            fio2: Some(28.0),
            o2_flow: Some(2.0),
            acvpu: Some(Acvpu::Confusion),
        }
    }

    fn segments(msg: &str) -> Vec<Vec<&str>> {
        msg.split('\r').filter(|s| !s.is_empty()).map(|s| s.split('|').collect()).collect()
    }

    fn field<'a>(seg: &[&'a str], i: usize) -> &'a str {
        seg.get(i).copied().unwrap_or("")
    }

    #[test]
    fn builds_pcd01_message() {
        let at = datetime!(2025-03-04 05:06:07 +01:00);
        let msg = oru_r01(&demo(), "MON-ICU-03", &full_vitals(), "CID42", at);
        assert!(!msg.contains('\n'));
        let segs = segments(&msg);
        let names: Vec<&str> = segs.iter().map(|s| s[0]).collect();
        assert_eq!(
            names,
            [
                "MSH", "PID", "PV1", "OBR", "OBX", "OBX", "OBX", "OBX", "OBX", "OBX", "OBX", "OBX", "OBX", "OBX",
                "OBX", "OBX"
            ]
        );

        // MSH fields are numbered from the field separator, so MSH-n is index n-1.
        let msh = &segs[0];
        assert_eq!(field(msh, 1), "^~\\&");
        assert_eq!(field(msh, 2), "MONITOR_GW^ACDE48234567ABCD^EUI-64");
        assert_eq!(field(msh, 4), "VIGIL");
        assert_eq!(field(msh, 5), "HOSP");
        assert_eq!(field(msh, 6), "20250304050607+0100");
        assert_eq!(field(msh, 8), "ORU^R01^ORU_R01");
        assert_eq!(field(msh, 9), "CID42");
        assert_eq!(field(msh, 10), "P");
        assert_eq!(field(msh, 11), "2.6");
        assert_eq!(field(msh, 14), "AL");
        assert_eq!(field(msh, 15), "NE");
        assert_eq!(field(msh, 17), "UNICODE UTF-8");
        assert!(field(msh, 20).starts_with("IHE_PCD_001^IHE PCD^1.3.6.1.4.1.19376.1.6.1.1.1^ISO"));

        let pid = &segs[1];
        assert_eq!(field(pid, 3), "SIM000123^^^VIGIL_SIM^MR");
        assert_eq!(field(pid, 5), "Testperson^Alpha^^^^^L");
        assert_eq!(field(pid, 7), "19700101");
        assert_eq!(field(pid, 8), "F");
        assert_eq!(field(&segs[2], 2), "I");
        assert_eq!(field(&segs[2], 3), "ICU^03^1");

        let obr = &segs[3];
        assert_eq!(field(obr, 2), "CID42^VIGIL_SIM");
        assert_eq!(field(obr, 3), "CID42^VIGIL_SIM");
        assert_eq!(field(obr, 4), "182777000^monitoring of patient^SCT");
        assert_eq!(field(obr, 7), "20250304050607+0100");

        let mds = &segs[4];
        assert_eq!(field(mds, 1), "1");
        assert_eq!(field(mds, 3), "69965^MDC_DEV_MON_PHYSIO_MULTI_PARAM_MDS^MDC");
        assert_eq!(field(mds, 4), "1");
        assert_eq!(field(mds, 11), "X");
        assert!(field(mds, 18).starts_with("MON-ICU-03^^"));
        assert!(field(mds, 18).ends_with("^EUI-64"));

        let expected = [
            ("147842^MDC_ECG_HEART_RATE^MDC", "1.1.1.1", "92", "264864^MDC_DIM_BEAT_PER_MIN^MDC"),
            ("151562^MDC_RESP_RATE^MDC", "1.2.1.1", "18", "264928^MDC_DIM_RESP_PER_MIN^MDC"),
            ("150456^MDC_PULS_OXIM_SAT_O2^MDC", "1.3.1.1", "97", "262688^MDC_DIM_PERCENT^MDC"),
            ("150021^MDC_PRESS_BLD_NONINV_SYS^MDC", "1.4.1.1", "118", "266016^MDC_DIM_MMHG^MDC"),
            ("150022^MDC_PRESS_BLD_NONINV_DIA^MDC", "1.4.1.2", "70", "266016^MDC_DIM_MMHG^MDC"),
            ("150023^MDC_PRESS_BLD_NONINV_MEAN^MDC", "1.4.1.3", "86", "266016^MDC_DIM_MMHG^MDC"),
            ("150344^MDC_TEMP^MDC", "1.5.1.1", "37.8", "268192^MDC_DIM_DEGC^MDC"),
        ];
        for (i, (code, containment, value, unit)) in expected.iter().enumerate() {
            let obx = &segs[5 + i];
            assert_eq!(field(obx, 1), (i + 2).to_string());
            assert_eq!(field(obx, 2), "NM");
            assert_eq!(field(obx, 3), *code);
            assert_eq!(field(obx, 4), *containment);
            assert_eq!(field(obx, 5), *value);
            assert_eq!(field(obx, 6), *unit);
            assert_eq!(field(obx, 11), "R");
            assert_eq!(field(obx, 14), "20250304050607+0100");
            assert_eq!(field(obx, 18), "MON-ICU-03");
        }
        let gcs = &segs[12];
        assert_eq!(field(gcs, 1), "9");
        assert_eq!(field(gcs, 2), "NM");
        assert_eq!(field(gcs, 3), "9269-2^Glasgow coma score total^LN");
        assert_eq!(field(gcs, 4), "");
        assert_eq!(field(gcs, 5), "15");
        assert_eq!(field(gcs, 6), "{score}");
        assert_eq!(field(gcs, 11), "F");
        assert_eq!(field(gcs, 14), "20250304050607+0100");
        let fio2 = &segs[13];
        assert_eq!(field(fio2, 1), "10");
        assert_eq!(field(fio2, 3), "3150-0^Inhaled oxygen concentration^LN");
        assert_eq!(field(fio2, 5), "28");
        assert_eq!(field(fio2, 6), "%^percent^UCUM");
        let flow = &segs[14];
        assert_eq!(field(flow, 3), "3151-8^Inhaled oxygen flow rate^LN");
        assert_eq!(field(flow, 5), "2");
        assert_eq!(field(flow, 6), "L/min^liters per minute^UCUM");
        let acvpu = &segs[15];
        assert_eq!(field(acvpu, 1), "12");
        assert_eq!(field(acvpu, 2), "CWE");
        assert_eq!(field(acvpu, 3), "67775-7^Level of consciousness^LN");
        assert_eq!(field(acvpu, 5), "C^New confusion^ACVPU");
        assert_eq!(field(acvpu, 11), "F");
    }

    #[test]
    fn missing_and_non_finite_vitals_are_omitted() {
        let v = Vitals { hr: Some(80.0), spo2: Some(f64::NAN), ..Vitals::default() };
        let msg = oru_r01(&demo(), "D1", &v, "C1", OffsetDateTime::UNIX_EPOCH);
        let obx: Vec<_> = segments(&msg).into_iter().filter(|s| s[0] == "OBX").collect();
        assert_eq!(obx.len(), 2);
        assert_eq!(field(&obx[1], 3), HR_CODE);
        assert_eq!(field(&obx[1], 1), "2");
    }

    #[test]
    fn delimiters_in_values_are_escaped() {
        let mut p = demo();
        p.family = "O|Brien^Jr".into();
        let msg = oru_r01(&p, "D1", &Vitals::default(), "C1", OffsetDateTime::UNIX_EPOCH);
        let pid = segments(&msg).into_iter().find(|s| s[0] == "PID").unwrap();
        assert_eq!(field(&pid, 5), "O\\F\\Brien\\S\\Jr^Alpha^^^^^L");
    }

    #[test]
    fn value_formatting() {
        assert_eq!(format_value(37.8).as_deref(), Some("37.8"));
        assert_eq!(format_value(92.0).as_deref(), Some("92"));
        assert_eq!(format_value(118.004).as_deref(), Some("118"));
        assert_eq!(format_value(36.549).as_deref(), Some("36.55"));
        assert_eq!(format_value(-0.001).as_deref(), Some("0"));
        assert_eq!(format_value(f64::INFINITY), None);
    }
}
