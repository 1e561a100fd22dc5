//! ADT^A01 (admit) builder: tells Vigil where a synthetic patient lies (PV1-3 point of
//! care^room^bed) before the monitor's first vitals, as a hospital's ADT feed would.

use std::fmt::Write as _;

use time::OffsetDateTime;

use crate::pcd01::{PatientDemo, escape, hl7_timestamp, push_pid, push_pv1};

/// Builds an ADT^A01 for `p` (segments terminated by `\r`): MSH, EVN, PID, PV1 with the
/// location in PV1-3 and a visit number in PV1-19.
pub fn adt_a01(p: &PatientDemo, control_id: &str, at: OffsetDateTime) -> String {
    let ts = hl7_timestamp(at);
    let cid = escape(control_id);
    let mut out = String::with_capacity(512);
    // Writing into a String cannot fail, hence the ignored results below.
    let _ = write!(out, "MSH|^~\\&|ADT_SIM|VIGIL_SIM|VIGIL|HOSP|{ts}||ADT^A01^ADT_A01|{cid}|P|2.5|||AL|NE\r");
    let _ = write!(out, "EVN|A01|{ts}\r");
    push_pid(&mut out, p);
    push_pv1(&mut out, p, &format!("||||||||||||||||V{}|||||||||||||||||||||||||{ts}", escape(&p.mrn)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn admit_carries_identity_and_unit_room_bed() {
        let p = PatientDemo {
            mrn: "SIM000001".into(),
            assigning_authority: "VIGIL_SIM".into(),
            family: "Testperson".into(),
            given: "Alpha".into(),
            birth_date: "19700101".into(),
            sex: "F".into(),
            unit: "5W".into(),
            room: "12".into(),
            bed: "B".into(),
        };
        let msg = adt_a01(&p, "A-1", datetime!(2025-03-04 05:06:07 UTC));
        let segs: Vec<Vec<&str>> = msg.split('\r').filter(|s| !s.is_empty()).map(|s| s.split('|').collect()).collect();
        assert_eq!(segs.iter().map(|s| s[0]).collect::<Vec<_>>(), ["MSH", "EVN", "PID", "PV1"]);
        assert_eq!(segs[0][8], "ADT^A01^ADT_A01");
        assert_eq!(segs[0][9], "A-1");
        assert_eq!(segs[1][1], "A01");
        assert_eq!(segs[2][3], "SIM000001^^^VIGIL_SIM^MR");
        assert_eq!(segs[2][5], "Testperson^Alpha^^^^^L");
        assert_eq!(segs[3][2], "I");
        assert_eq!(segs[3][3], "5W^12^B");
        assert_eq!(segs[3][19], "VSIM000001");
        assert_eq!(segs[3][44], "20250304050607+0000", "PV1-44 admit date/time");
    }
}
