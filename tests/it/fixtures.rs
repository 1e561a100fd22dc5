//! Every HL7 fixture in tests/fixtures/hl7/ through a real server over MLLP, in manifest order:
//! the ACK frames (codes, ERR-3, ERR-2), then the events stored for each message.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

const WAIT: Duration = Duration::from_secs(10);

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hl7")
}

/// Send one framed message and read `frames` framed replies.
async fn exchange(addr: &str, message: &[u8], frames: usize) -> Vec<String> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut framed = vec![0x0b];
    framed.extend_from_slice(message);
    framed.extend_from_slice(&[0x1c, 0x0d]);
    stream.write_all(&framed).await.unwrap();
    let mut buf = Vec::new();
    let mut replies = Vec::new();
    while replies.len() < frames {
        let mut chunk = [0u8; 8192];
        let n = tokio::time::timeout(WAIT, stream.read(&mut chunk)).await.expect("ack within 10 s").unwrap();
        assert!(n > 0, "connection closed after {} of {frames} frames", replies.len());
        buf.extend_from_slice(&chunk[..n]);
        while let Some(end) = buf.windows(2).position(|w| w == [0x1c, 0x0d]) {
            let start = buf.iter().position(|b| *b == 0x0b).expect("frame start");
            replies.push(String::from_utf8_lossy(&buf[start + 1..end]).into_owned());
            buf.drain(..end + 2);
        }
    }
    // Nothing more must follow: an extra frame would be an ACK the manifest did not expect.
    let mut chunk = [0u8; 64];
    if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(100), stream.read(&mut chunk)).await {
        assert_eq!(n, 0, "unexpected extra bytes after {frames} frames: {:?}", String::from_utf8_lossy(&chunk[..n]));
    }
    replies
}

/// Field `n` of the first `name` segment of an ACK, split with the ACK's own delimiters.
fn ack_field(ack: &str, name: &str, n: usize) -> Option<String> {
    let sep = ack.chars().nth(3)?;
    let segment = ack.split(['\r', '\n']).find(|s| s.starts_with(name))?;
    segment.split(sep).nth(n).map(str::to_string)
}

fn component(field: &str, ack: &str, c: usize) -> String {
    let sep = ack.chars().nth(4).unwrap_or('^');
    field.split(sep).nth(c - 1).unwrap_or_default().to_string()
}

/// `expected` is a subset of `actual`: every key present matches (numbers within 0.01, null
/// meaning absent or null), arrays have the same length and match element by element.
fn assert_subset(expected: &Value, actual: &Value, path: &str) {
    match (expected, actual) {
        (Value::Null, a) => assert!(a.is_null(), "{path}: expected absent, got {a}"),
        (Value::Object(e), Value::Object(a)) => {
            for (k, v) in e {
                assert_subset(v, a.get(k).unwrap_or(&Value::Null), &format!("{path}.{k}"));
            }
        }
        (Value::Array(e), Value::Array(a)) => {
            assert_eq!(e.len(), a.len(), "{path}: expected {expected}, got {actual}");
            for (i, (ev, av)) in e.iter().zip(a).enumerate() {
                assert_subset(ev, av, &format!("{path}[{i}]"));
            }
        }
        (Value::Number(e), Value::Number(a)) => {
            let (e, a) = (e.as_f64().unwrap(), a.as_f64().unwrap());
            assert!((e - a).abs() < 0.01, "{path}: expected {e}, got {a}");
        }
        (e, a) => assert_eq!(e, a, "{path}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fixture_gets_its_acks_and_stores_its_events() {
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture_dir().join("expected.json")).unwrap()).unwrap();
    let fixtures = manifest["fixtures"].as_array().unwrap();
    let on_disk = std::fs::read_dir(fixture_dir())
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "hl7"))
        .count();
    assert_eq!(on_disk, fixtures.len(), "every .hl7 file has an entry in expected.json");
    assert!(fixtures.len() >= 30);

    let dir = tempdir("fixtures");
    let server = vigil::app::start(&config(&dir)).await.unwrap();
    let addr = server.mllp_addr.to_string();
    let mut control_ids = Vec::new();
    for fx in fixtures {
        let name = fx["file"].as_str().unwrap();
        let mut bytes = std::fs::read(fixture_dir().join(name)).unwrap();
        if !fx["raw"].as_bool().unwrap_or(false) {
            let text = String::from_utf8(bytes).unwrap().replace("\r\n", "\r").replace('\n', "\r");
            bytes = text.into_bytes();
        }
        let want: Vec<&str> = fx["ack"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        let acks = exchange(&addr, &bytes, want.len()).await;
        let got: Vec<String> = acks.iter().map(|a| ack_field(a, "MSA", 1).unwrap_or_default()).collect();
        assert_eq!(got, want, "{name}: {acks:?}");
        let control_id = ack_field(&acks[0], "MSA", 2).unwrap_or_default();
        for ack in &acks {
            assert_eq!(ack_field(ack, "MSA", 2).unwrap_or_default(), control_id, "{name}: every ACK echoes MSH-10");
        }
        if let Some(code) = fx["err"].as_u64() {
            let err3 = ack_field(&acks[0], "ERR", 3).unwrap_or_else(|| panic!("{name}: no ERR in {}", acks[0]));
            assert_eq!(component(&err3, &acks[0], 1), code.to_string(), "{name}: {}", acks[0]);
            if let Some(location) = fx["err_location"].as_str() {
                assert_eq!(ack_field(&acks[0], "ERR", 2).as_deref(), Some(location), "{name}: {}", acks[0]);
            }
            if let Some(text) = fx["err_text"].as_str() {
                assert!(acks[0].contains(text), "{name}: {}", acks[0]);
            }
        } else {
            assert!(ack_field(&acks[0], "ERR", 0).is_none(), "{name}: an accepting ACK has no ERR: {}", acks[0]);
        }
        control_ids.push((fx, control_id));
    }
    server.shutdown().await;

    let index = blind_index(&dir);
    for (fx, control_id) in control_ids {
        let name = fx["file"].as_str().unwrap();
        let Some(mrn) = fx["patient"].as_str() else { continue };
        let stored: Vec<Value> = stored_events(&dir, "HOSP", mrn)
            .await
            .into_iter()
            .filter(|e| e.message.as_ref().is_some_and(|m| m.id == control_id))
            .map(|vigil_actors::RecordedEvent { event: e, .. }| {
                let mut v = serde_json::to_value(&e.kind).unwrap();
                v["location"] = serde_json::to_value(&e.location).unwrap();
                v["prior_id"] = match &e.kind {
                    vigil_actors::EventKind::Merge { prior_id, .. } => Value::String(prior_id.0.clone()),
                    _ => Value::Null,
                };
                v
            })
            .collect();
        let mut expected = fx["events"].clone();
        for event in expected.as_array_mut().unwrap() {
            if let Some(prior) = event.as_object_mut().unwrap().remove("prior_id_of") {
                event["prior_id"] = Value::String(index.patient_id("HOSP", prior.as_str().unwrap()).0);
            }
        }
        assert_subset(&expected, &Value::Array(stored.clone()), name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_types_can_be_accepted_and_ignored_by_config() {
    let dir = tempdir("ignore");
    let mut cfg = config(&dir);
    cfg.hl7.unsupported = vigil::config::UnsupportedPolicy::Ignore;
    let server = vigil::app::start(&cfg).await.unwrap();
    let addr = server.mllp_addr.to_string();
    let original = "MSH|^~\\&|EMR|HOSP|VIGIL|HOSP|20260102||ADT^A31^ADT_A05|IGN-1|P|2.5\rPID|||IGN-MRN^^^HOSP^MR\r";
    let acks = exchange(&addr, original.as_bytes(), 1).await;
    assert_eq!(ack_field(&acks[0], "MSA", 1).as_deref(), Some("AA"), "{acks:?}");
    let enhanced = "MSH|^~\\&|EMR|HOSP|VIGIL|HOSP|20260102||MFN^M02|IGN-2|P|2.5|||AL|SU\r";
    let acks = exchange(&addr, enhanced.as_bytes(), 2).await;
    let codes: Vec<_> = acks.iter().map(|a| ack_field(a, "MSA", 1).unwrap_or_default()).collect();
    assert_eq!(codes, ["CA", "AA"]);
    server.shutdown().await;
    assert!(stored_events(&dir, "HOSP", "IGN-MRN").await.is_empty(), "an ignored message is not stored");
}
