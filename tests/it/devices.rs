//! Device feeds over real sockets: IHE PCD-04 alert reports (ORU^R40) answered ORA^R41 after
//! commit, raising, updating and resolving one Vigil alert per device alarm.

use std::time::Duration;

use serde_json::json;
use vigil::auth::Role;
use vigil_loadtest::mllp::{MllpClient, ack_code, ack_control_id};

use crate::support::*;

const WAIT: Duration = Duration::from_secs(10);

/// An ORU^R40 in the IHE PCD-04 shape (MSH-15 AL, MSH-16 NE; facets in the 68480 family).
pub fn r40(
    control_id: &str,
    mrn: &str,
    alarm_id: &str,
    event: &str,
    phase: &str,
    priority: &str,
    kind: &str,
) -> String {
    let ts = now_dtm();
    [
        format!(
            "MSH|^~\\&|ACM|ICU|VIGIL|HOSP|{ts}||ORU^R40^ORU_R40|{control_id}|P|2.6|||AL|NE||8859/1|||IHE_PCD_ACM_001^IHE PCD^1.3.6.1.4.1.19376.1.6.4.4^ISO"
        ),
        format!("PID|||{mrn}^^^HOSP^MR||Device^Test||19600101|M"),
        "PV1||I|ICU^07^A".to_string(),
        format!("OBR|1||1^{alarm_id}^0012345678ABCDEF^EUI-64|196616^MDC_EVT_ALARM^MDC|||{ts}"),
        format!("OBX|1|ST|{event}|1.0.0.1|"),
        format!("OBX|2|ST|68481^MDC_ATTR_EVT_PHASE^MDC|1.0.0.2|{phase}"),
        "OBX|3|ST|68482^MDC_ATTR_ALARM_STATE^MDC|1.0.0.3|active".to_string(),
        format!("OBX|4|ST|68484^MDC_ATTR_ALARM_PRIORITY^MDC|1.0.0.4|{priority}"),
        format!("OBX|5|ST|68485^MDC_ATTR_ALERT_TYPE^MDC|1.0.0.5|{kind}"),
    ]
    .join("\r")
}

async fn next_alert(ws: &mut Ws, rule: &str) -> serde_json::Value {
    loop {
        let frame = ws_next(ws, &["alert"], WAIT).await;
        if frame["alert"]["rule"]["id"] == rule {
            return frame["alert"].clone();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pcd04_alarms_raise_update_and_resolve_one_alert_each_and_are_answered_ora_r41() {
    let dir = tempdir("pcd04");
    let server = vigil::app::start(&config_qsofa_only(&dir)).await.unwrap();
    let token = server.auth.issue("rn-1", Role::Rrt, vec!["ICU".into()], time::Duration::hours(1));
    let mut ws = ws_connect(server.http_addr, &token).await;
    ws_send(&mut ws, json!({"type": "subscribe", "units": ["ICU"], "since": 0})).await;
    ws_next(&mut ws, &["subscribed"], WAIT).await;
    let mut mllp = MllpClient::connect(&server.mllp_addr.to_string(), WAIT).await.unwrap();

    let spo2 = "196674^MDC_EVT_LO_VAL_LT_LIM^MDC";
    let leads = "196876^MDC_EVT_LEAD_DISCONN^MDC";
    let send = |id: &str, alarm: &str, event: &str, phase: &str, priority: &str, kind: &str| {
        r40(id, "MRN-DEV-1", alarm, event, phase, priority, kind)
    };
    // Physiologic: start (PM), continue (nothing new), update (PH), end.
    let ack = mllp.send(&send("R40-1", "AL-P", spo2, "start", "PM", "SP")).await.unwrap();
    assert_eq!(ack_code(&ack), Some("CA"), "{ack}");
    assert_eq!(ack_control_id(&ack), Some("R40-1"));
    assert!(ack.contains("|ORA^R41^ORA_R41|"), "{ack}");
    let raised = next_alert(&mut ws, "device.alarm").await;
    assert_eq!(raised["severity"], "medium");
    assert_eq!(raised["status"], "active");
    assert_eq!(raised["finding"], "0012345678ABCDEF|AL-P");
    assert_eq!(raised["patient"]["mrn"], "MRN-DEV-1");
    assert_eq!(raised["patient"]["bed"], "A");
    assert_eq!(raised["details"]["kind"], "physiologic");
    let id = raised["id"].clone();

    let ack = mllp.send(&send("R40-2", "AL-P", spo2, "continue", "PM", "SP")).await.unwrap();
    assert_eq!(ack_code(&ack), Some("CA"), "{ack}");
    let ack = mllp.send(&send("R40-3", "AL-P", spo2, "update", "PH", "SP")).await.unwrap();
    assert_eq!(ack_code(&ack), Some("CA"), "{ack}");
    let updated = next_alert(&mut ws, "device.alarm").await;
    assert_eq!((&updated["id"], &updated["severity"]), (&id, &json!("critical")), "the continue changed nothing");
    let ack = mllp.send(&send("R40-4", "AL-P", spo2, "end", "PH", "SP")).await.unwrap();
    assert_eq!(ack_code(&ack), Some("CA"), "{ack}");
    let ended = next_alert(&mut ws, "device.alarm").await;
    assert_eq!((&ended["id"], &ended["status"]), (&id, &json!("resolved")));
    assert_eq!(ended["resolved"]["by"], "rule:device.alarm");

    // Technical: start (PL), continue, end.
    for (n, phase) in ["start", "continue", "end"].into_iter().enumerate() {
        let ack = mllp.send(&send(&format!("R40-T{n}"), "AL-T", leads, phase, "PL", "ST")).await.unwrap();
        assert_eq!(ack_code(&ack), Some("CA"), "{ack}");
    }
    let technical = next_alert(&mut ws, "device.technical").await;
    assert_eq!((&technical["severity"], &technical["status"]), (&json!("low"), &json!("active")));
    assert_eq!(technical["details"]["event_text"], "MDC_EVT_LEAD_DISCONN");
    let resolved = next_alert(&mut ws, "device.technical").await;
    assert_eq!((&resolved["id"], &resolved["status"]), (&technical["id"], &json!("resolved")));

    // A keep-alive is acknowledged and stores nothing; a malformed report is refused.
    let keep_alive = send("R40-K", "HB", "196614^MDC_EVT_ACTIVE^MDC", "start", "PN", "SA");
    let ack = mllp.send(&keep_alive).await.unwrap();
    assert_eq!(ack_code(&ack), Some("CA"), "{ack}");
    let no_id = send("R40-BAD", "", spo2, "start", "PM", "SP").replace("|1^^0012345678ABCDEF^EUI-64|", "||");
    let ack = mllp.send(&no_id).await.unwrap();
    assert_eq!(ack_code(&ack), Some("CE"), "{ack}");
    assert!(ack.contains("|ORA^R41^ORA_R41|") && ack.contains("\rERR||OBR^1^3|101^"), "{ack}");
    let bad_phase = send("R40-BAD2", "AL-X", spo2, "sometimes", "PM", "SP");
    let ack = mllp.send(&bad_phase).await.unwrap();
    assert!(ack.contains("\rERR||OBX^1^5|103^"), "{ack}");
    server.shutdown().await;
}
