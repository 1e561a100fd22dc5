//! Third-party HL7 clients against a real listener: the `hl7` package's asyncio MLLP client
//! sends, and every ACK Vigil returns must carry the right MSA-1/MSA-2, keep the sender's
//! delimiters and parse with both the `hl7` package and hl7apy (STRICT validation
//! included). The checks live in tests/external/hl7_clients.py.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;

use crate::support::*;

const INSTALL: &str = "run `python3 -m venv .venv && .venv/bin/pip install -r tests/requirements.txt` \
                       in the repository root (tests/run does this)";

/// A Python that can import both `hl7` and `hl7apy`: the repository's .venv, else `python3`
/// on PATH if it has both packages.
fn python() -> PathBuf {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    if venv.exists() {
        return venv;
    }
    let fallback = PathBuf::from("python3");
    let usable = Command::new(&fallback)
        .args(["-c", "import hl7, hl7.mllp, hl7apy.parser"])
        .output()
        .is_ok_and(|out| out.status.success());
    assert!(
        usable,
        "no Python with the hl7 and hl7apy packages (.venv missing, python3 on PATH lacks them): {INSTALL}"
    );
    fallback
}

/// The same message written with `#` fields, `@` components, `*` repetitions, `$` escape and
/// `%` subcomponents. `septic_oru` uses none of those characters in its content.
fn with_odd_delimiters(message: &str) -> String {
    assert!(!message.contains(['#', '@', '*', '$', '%']));
    message.replacen("MSH|^~\\&|", "MSH#@*$%#", 1).replace('|', "#").replace('^', "@")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_hl7_clients_get_the_right_acks_and_every_ack_parses_with_hl7apy() {
    let python = python();
    let dir = tempdir("hl7-clients");
    let server = vigil::app::start(&config(&dir)).await.unwrap();
    let ts = now_dtm();

    let original = septic_oru("EXT-AA-1", "MRN-EXT-AA", "Alpha");
    // IHE PCD-01: MSH-15 AL (accept ACK always), MSH-16 NE (no application ACK).
    let enhanced = septic_oru("EXT-CA-1", "MRN-EXT-CA", "Beta").replacen("|P|2.6", "|P|2.6|||AL|NE", 1);
    assert!(enhanced.contains("|P|2.6|||AL|NE\r"));
    let unsupported = format!("MSH|^~\\&|EMR|HOSP|VIGIL|HOSP|{ts}||ZZZ^Z99|EXT-AR-1|P|2.6");
    let no_pid = format!("MSH|^~\\&|EMR|HOSP|VIGIL|HOSP|{ts}||ORU^R01|EXT-AE-1|P|2.6\rOBX|1|NM|151562^RR^MDC||20");
    // hl7apy 1.3.5 reads the delimiters from MSH-1/MSH-2, so this case is checked by both
    // parsers like the others; the script also checks the ACK starts `MSH#@*$%#`.
    let odd = with_odd_delimiters(&septic_oru("EXT-ODD-1", "MRN-EXT-ODD", "Gamma"));
    assert!(odd.starts_with("MSH#@*$%#MONITOR#ICU#"));
    // O'Brien-style names: \T\ is an escaped `&`, \S\ an escaped `^`, \E\ an escaped `\`.
    let escaped = septic_oru("EXT-ESC-1", "MRN-EXT-ESC", "O\\T\\Brien").replacen("^Test|", "^Ann\\S\\Marie\\E\\|", 1);
    assert!(escaped.contains("|O\\T\\Brien^Ann\\S\\Marie\\E\\|"));

    let spo2 = "196674^MDC_EVT_LO_VAL_LT_LIM^MDC";
    let alarm = crate::devices::r40("EXT-R40-1", "MRN-EXT-R40", "AL-1", spo2, "start", "PH", "SP");
    let alarm_no_id = crate::devices::r40("EXT-R40-2", "MRN-EXT-R40", "", spo2, "start", "PH", "SP")
        .replace("|1^^0012345678ABCDEF^EUI-64|", "||");
    assert!(alarm_no_id.contains("OBR|1|||196616"));
    let keep_alive =
        crate::devices::r40("EXT-R40-3", "MRN-EXT-R40", "HB", "196614^MDC_EVT_ACTIVE^MDC", "start", "PN", "SA");
    // A PCD-01 report naming no patient, from a device nobody associated: quarantined, and
    // acknowledged like any stored report.
    let unassociated = crate::devices::pcd01("EXT-Q-1", "MON-EXT-Q", None, 73);

    let cases = json!([
        {"name": "original-mode ORU qSOFA", "message": original, "expect": "AA", "control_id": "EXT-AA-1"},
        {"name": "enhanced-mode ORU (MSH-15 AL, MSH-16 NE)", "message": enhanced, "expect": "CA", "control_id": "EXT-CA-1"},
        {"name": "unsupported message type ZZZ^Z99", "message": unsupported, "expect": "AR", "control_id": "EXT-AR-1"},
        {"name": "ORU without PID", "message": no_pid, "expect": "AE", "control_id": "EXT-AE-1"},
        {"name": "odd delimiters #@*$%", "message": odd, "expect": "AA", "control_id": "EXT-ODD-1"},
        {"name": "escaped names", "message": escaped, "expect": "AA", "control_id": "EXT-ESC-1"},
        {"name": "PCD-04 alert report answered ORA^R41", "message": alarm, "expect": "CA", "control_id": "EXT-R40-1", "reply": "ORA"},
        {"name": "PCD-04 report without alarm id: ORA^R41 with ERR", "message": alarm_no_id, "expect": "CE", "control_id": "EXT-R40-2", "reply": "ORA"},
        {"name": "PCD-04 keep-alive answered ORA^R41", "message": keep_alive, "expect": "CA", "control_id": "EXT-R40-3", "reply": "ORA"},
        {"name": "PCD-01 of an unassociated device: quarantined", "message": unassociated, "expect": "CA", "control_id": "EXT-Q-1"},
    ]);
    let cases_file = dir.join("cases.json");
    std::fs::write(&cases_file, serde_json::to_vec_pretty(&cases).unwrap()).unwrap();

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/external/hl7_clients.py");
    let port = server.mllp_addr.port().to_string();
    let host = server.mllp_addr.ip().to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(&python)
            .arg(&script)
            .args(["--host", &host, "--port", &port, "--require-strict"])
            .arg(&cases_file)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}; {INSTALL}", python.display()))
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}{stderr}"); // shown with --nocapture or when the test fails
    assert!(out.status.success(), "hl7_clients.py failed ({}):\n{stdout}\n{stderr}", out.status);
    assert_eq!(stdout.lines().count(), 10, "one result line per case:\n{stdout}\n{stderr}");
    let rrt = server.auth.issue("rrt-ext", vigil::auth::Role::Rrt, vec!["ICU".into()], time::Duration::hours(1));
    vigil::alerts::webhooks::install_tls_provider();
    let quarantine = reqwest::Client::new()
        .get(format!("http://{}/api/quarantine", server.http_addr))
        .bearer_auth(&rrt)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let quarantine: serde_json::Value = serde_json::from_str(&quarantine).unwrap();
    assert_eq!(quarantine["readings"][0]["message"], "EXT-Q-1", "{quarantine}");
    assert_eq!(quarantine["readings"][0]["device"], "MON-EXT-Q");
    server.shutdown().await;
}
