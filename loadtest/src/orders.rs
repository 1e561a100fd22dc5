//! Lab results and pharmacy orders for the load scenarios: a basic metabolic panel as an
//! ORU^R01 from a lab system, and an RDE^O11 pharmacy order, one drug or an interacting pair
//! (sertraline with phenelzine: SSRI with MAO inhibitor, Phansalkar interaction 4, which the
//! shipped `med.ddi` rule alerts on). Synthetic data only.

use std::fmt::Write as _;

use time::OffsetDateTime;

use crate::pcd01::{PatientDemo, escape, hl7_timestamp, push_pid, push_pv1};

/// A drug of an order: RxNorm code and name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drug {
    /// RxNorm ingredient code (RXE-2.1).
    pub rxnorm: &'static str,
    /// Name (RXE-2.2).
    pub name: &'static str,
}

/// Drugs ordered alone: no shipped interaction between any two of them.
pub const PLAIN_DRUGS: [Drug; 3] = [
    Drug { rxnorm: "723", name: "Amoxicillin 500 MG Oral Tablet" },
    Drug { rxnorm: "161", name: "Acetaminophen 500 MG Oral Tablet" },
    Drug { rxnorm: "6809", name: "Metformin 500 MG Oral Tablet" },
];

/// An interacting pair: an SSRI and an MAO inhibitor.
pub const INTERACTING_PAIR: [Drug; 2] = [
    Drug { rxnorm: "36437", name: "Sertraline 50 MG Oral Tablet" },
    Drug { rxnorm: "8123", name: "Phenelzine 15 MG Oral Tablet" },
];

fn push_header(out: &mut String, app: &str, kind: &str, control_id: &str, ts: &str, p: &PatientDemo) {
    // Writing into a String cannot fail, hence the ignored results.
    let _ = write!(out, "MSH|^~\\&|{app}|VIGIL_SIM|VIGIL|HOSP|{ts}||{kind}|{}|P|2.5.1\r", escape(control_id));
    push_pid(out, p);
    push_pv1(out, p, "");
}

/// A basic metabolic panel (glucose, creatinine, potassium, sodium), values in range and
/// varied by `seed`, as a lab system sends it.
pub fn lab_panel(p: &PatientDemo, control_id: &str, seed: u64, at: OffsetDateTime) -> String {
    let ts = hl7_timestamp(at);
    let cid = escape(control_id);
    let mut out = String::with_capacity(768);
    push_header(&mut out, "LIS", "ORU^R01^ORU_R01", control_id, &ts, p);
    let _ = write!(out, "OBR|1|{cid}^EMR|{cid}^LIS|80048^Basic metabolic panel^CPT|||{ts}\r");
    let step = (seed % 10) as f64;
    let results: [(&str, f64, &str, &str); 4] = [
        ("2345-7^Glucose^LN", 4.5 + step * 0.1, "mmol/L", "3.9-5.5"),
        ("2160-0^Creatinine^LN", 70.0 + step, "umol/L", "45-90"),
        ("2823-3^Potassium^LN", 3.8 + step * 0.1, "mmol/L", "3.5-5.1"),
        ("2951-2^Sodium^LN", 137.0 + step * 0.5, "mmol/L", "135-145"),
    ];
    for (n, (code, value, unit, range)) in results.iter().enumerate() {
        let _ = write!(out, "OBX|{}|NM|{code}|1|{value:.1}|{unit}|{range}|N|||F|||{ts}\r", n + 1);
    }
    out
}

/// An RDE^O11 new order for `drugs` (one ORC/RXE/RXR group each), placer numbers from
/// `control_id`.
pub fn pharmacy_order(p: &PatientDemo, control_id: &str, drugs: &[Drug], at: OffsetDateTime) -> String {
    let ts = hl7_timestamp(at);
    let cid = escape(control_id);
    let mut out = String::with_capacity(768);
    push_header(&mut out, "PHARM", "RDE^O11^RDE_O11", control_id, &ts, p);
    for (n, drug) in drugs.iter().enumerate() {
        let _ = write!(out, "ORC|NW|{cid}-{n}^EMR|{cid}-{n}^PHARM\r");
        let _ = write!(out, "RXE|1^^^{ts}|{}^{}^RXNORM|1||TAB\r", drug.rxnorm, drug.name);
        let _ = write!(out, "RXR|PO\r");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patient() -> PatientDemo {
        PatientDemo {
            mrn: "SIM1".into(),
            assigning_authority: "VIGIL_SIM".into(),
            family: "Loadtest".into(),
            given: "One".into(),
            birth_date: "19700101".into(),
            sex: "F".into(),
            unit: "LT0".into(),
            room: "01".into(),
            bed: "1".into(),
        }
    }

    #[test]
    fn lab_panel_carries_four_loinc_results() {
        let m = lab_panel(&patient(), "L1", 3, OffsetDateTime::UNIX_EPOCH);
        let segments: Vec<&str> = m.split('\r').filter(|s| !s.is_empty()).collect();
        assert!(segments[0].contains("|ORU^R01^ORU_R01|L1|"), "{m}");
        assert_eq!(segments.iter().filter(|s| s.starts_with("OBX|")).count(), 4);
        assert!(m.contains("|2823-3^Potassium^LN|1|4.1|mmol/L|"), "{m}");
    }

    #[test]
    fn an_interacting_order_has_both_drugs() {
        let m = pharmacy_order(&patient(), "R1", &INTERACTING_PAIR, OffsetDateTime::UNIX_EPOCH);
        assert!(m.contains("RDE^O11^RDE_O11|R1|"));
        assert!(m.contains("|36437^Sertraline 50 MG Oral Tablet^RXNORM|"));
        assert!(m.contains("|8123^Phenelzine 15 MG Oral Tablet^RXNORM|"));
        assert!(m.contains("ORC|NW|R1-0^EMR|R1-0^PHARM\rRXE"));
        assert!(m.contains("ORC|NW|R1-1^EMR|R1-1^PHARM\rRXE"));
    }
}
