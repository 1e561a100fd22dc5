//! The fuzz targets' checks, one function per parser of outside input, and a stable-toolchain
//! runner for CI.
//!
//! `fuzz/` runs these under libFuzzer (coverage-guided; needs nightly flags). CI has only a
//! stable toolchain, so `cargo test -p vigil --lib fuzz` runs each target over its seed corpus
//! and then over seeded random mutations of it (bit flips, byte insertions and deletions,
//! splices of two seeds, repeated chunks, tokens of the format) for a bounded number of inputs:
//! a mutation loop, not coverage-guided fuzzing. It finds panics and broken invariants on
//! inputs near the seeds; it does not explore as deep as libFuzzer. Knobs:
//! `VIGIL_FUZZ_INPUTS` (per target, default 3000), `VIGIL_FUZZ_SEED` (default fixed, so CI is
//! reproducible; a failure prints the seed and the input).

use std::hint::black_box;
use std::path::Path;

use crate::ingest::hl7::{AckCode, AckHeader, Message, build_ack};
use crate::ingest::mllp::codec::{Decoded, MllpDecoder};

const TS: &str = "20250101000000+0000";

/// HL7 v2: parse; a parsed message's ACK re-parses and echoes MSH-10; for every input the
/// fallback header's ACK re-parses.
pub fn hl7_parse(data: &[u8]) {
    if let Ok(msg) = Message::parse(data) {
        black_box(msg.header_problems());
        for seg in msg.segments() {
            for n in 0..=seg.field_count() + 1 {
                black_box(seg.text(n));
                black_box(seg.component(n, 2));
            }
        }
        let header = AckHeader::from_message(&msg);
        let ack = build_ack(&header, AckCode::AA, &[], "ACK1", TS, Some("fuzz"));
        let parsed = Message::parse(ack.as_bytes()).unwrap_or_else(|e| panic!("our own ACK does not parse: {e:?}"));
        assert!(parsed.segment("MSA").is_some(), "ACK without MSA");
    }
    let header = AckHeader::fallback(data);
    let ack = build_ack(&header, AckCode::AR, &[], "ACK2", TS, None);
    Message::parse(ack.as_bytes()).unwrap_or_else(|e| panic!("the fallback ACK does not parse: {e:?}"));
}

/// MLLP framing: frames within the limit, and the same frames however the stream is split.
pub fn mllp_decode(data: &[u8]) {
    const MAX: usize = 1024;
    let Some((&split, payload)) = data.split_first() else { return };
    let collect = |decoder: &mut MllpDecoder, out: &mut Vec<(bool, usize)>| {
        while let Some(item) = decoder.decode() {
            match item {
                Decoded::Frame(f) => {
                    assert!(f.len() <= MAX, "frame over the limit");
                    out.push((true, f.len()));
                }
                Decoded::Oversized { prefix, len } => {
                    assert!(len > MAX && prefix.len() <= len, "oversized {len} with prefix {}", prefix.len());
                    out.push((false, len));
                }
            }
        }
    };
    let mut split_out = Vec::new();
    let mut decoder = MllpDecoder::new(MAX);
    for chunk in payload.chunks(usize::from(split).max(1)) {
        decoder.extend(chunk);
        collect(&mut decoder, &mut split_out);
    }
    let mut whole_out = Vec::new();
    let mut whole = MllpDecoder::new(MAX);
    whole.extend(payload);
    collect(&mut whole, &mut whole_out);
    assert_eq!(split_out, whole_out, "frames depend on where the stream was split");
    assert_eq!(decoder.discarded(), whole.discarded());
}

/// FHIR JSON: the bounded parser, then every mapping; every refusal names an element.
pub fn fhir_map(data: &[u8]) {
    use crate::ingest::fhir::{RESOURCES, json, map_resource};
    let Ok(mut value) = json::parse(data, 32) else { return };
    let mapper =
        crate::ingest::map::Mapper::new(crate::vocab::Vocabulary::shipped(), crate::crypto::BlindIndex::new(&[7; 32]));
    for row in RESOURCES {
        if let Some(object) = value.as_object_mut() {
            object.insert("resourceType".into(), row.name.into());
        }
        if let Err(issues) = map_resource(&mapper, &value, time::OffsetDateTime::UNIX_EPOCH) {
            assert!(!issues.is_empty() && issues.iter().all(|i| !i.expression.is_empty()), "{issues:?}");
        }
    }
}

/// WebSocket client frames, through the session's own parser.
pub fn ws_client_frame(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(Some(reference)) = crate::http::ws::parse_client_frame(text) {
        black_box(reference);
    }
}

/// Rule sources (`PUT /api/rules`, the rules directory): compile in the hardened engine and
/// read `meta()`; what loads has an id and a known severity.
pub fn rule_meta(data: &[u8]) {
    let Ok(source) = std::str::from_utf8(data) else { return };
    let engine = crate::rules::hardened_engine();
    if let Ok(rule) = crate::rules::load_rule(&engine, Path::new("fuzz.rhai"), source) {
        assert!(!rule.id.is_empty(), "a loaded rule has an id");
        black_box((rule.title, rule.severity, rule.triggers));
    }
}

/// The configuration file: parsed and validated as `vigil serve --config` does, in `dir`.
pub fn config_file(dir: &Path, data: &[u8]) {
    let path = dir.join("vigil.toml");
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let args = crate::config::ServeArgs {
        config: Some(path),
        data_dir: Some(dir.join("data")),
        ..crate::config::ServeArgs::default()
    };
    if let Ok(config) = crate::config::Config::load(&args) {
        config.validate().expect("a loaded configuration validates");
    }
}

/// A small deterministic generator (xorshift64*).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// From a seed (0 is replaced).
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }

    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next_u64() % n as u64) as usize }
    }
}

/// One mutation of `input`, drawing on `seeds` for splices and `tokens` for insertions.
pub fn mutate(rng: &mut Rng, input: &[u8], seeds: &[Vec<u8>], tokens: &[&[u8]], max_len: usize) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(out.len() + 1);
        match rng.below(8) {
            0 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] ^= 1 << rng.below(8);
            }
            1 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] = rng.next_u64() as u8;
            }
            2 => out.insert(at, rng.next_u64() as u8),
            3 if !out.is_empty() => {
                let len = rng.below(16).min(out.len() - at.min(out.len()));
                out.drain(at.min(out.len())..at.min(out.len()) + len);
            }
            4 if !tokens.is_empty() => {
                let token = tokens[rng.below(tokens.len())];
                out.splice(at..at, token.iter().copied());
            }
            5 if !seeds.is_empty() => {
                let other = &seeds[rng.below(seeds.len())];
                let from = rng.below(other.len());
                out.truncate(at);
                out.extend_from_slice(&other[from..]);
            }
            6 if !out.is_empty() => {
                let from = rng.below(out.len());
                let len = rng.below(64).min(out.len() - from);
                let chunk = out[from..from + len].to_vec();
                for _ in 0..rng.below(8) {
                    out.splice(at.min(out.len())..at.min(out.len()), chunk.iter().copied());
                }
            }
            _ => out.truncate(at),
        }
    }
    out.truncate(max_len);
    out
}

/// Run `target` over every seed, then over `inputs` mutations; the number of inputs run.
pub fn run(
    name: &str,
    seeds: &[Vec<u8>],
    tokens: &[&[u8]],
    inputs: usize,
    seed: u64,
    max_len: usize,
    mut target: impl FnMut(&[u8]),
) -> usize {
    let mut rng = Rng::new(
        seed ^ name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)),
    );
    let mut ran = 0;
    for s in seeds {
        target(s);
        ran += 1;
    }
    let empty = vec![Vec::new()];
    let pool = if seeds.is_empty() { &empty } else { seeds };
    let mut current = pool[0].clone();
    for _ in 0..inputs {
        // Mostly a fresh seed, sometimes a mutation of the last input (deeper mutations).
        if rng.below(4) != 0 {
            current = pool[rng.below(pool.len())].clone();
        }
        current = mutate(&mut rng, &current, pool, tokens, max_len);
        let input = current.clone();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| target(&input)));
        if outcome.is_err() {
            panic!("fuzz target {name} failed (VIGIL_FUZZ_SEED={seed}) on input {:?}", String::from_utf8_lossy(&input));
        }
        ran += 1;
    }
    ran
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Instant;

    use super::*;

    fn root() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    }

    fn inputs() -> usize {
        std::env::var("VIGIL_FUZZ_INPUTS").ok().and_then(|v| v.parse().ok()).unwrap_or(3000)
    }

    fn seed() -> u64 {
        std::env::var("VIGIL_FUZZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0x5eed)
    }

    fn files(dir: &Path, ext: &str) -> Vec<Vec<u8>> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == ext))
            .collect();
        paths.sort();
        paths.iter().map(|p| std::fs::read(p).unwrap()).collect()
    }

    fn report(name: &str, ran: usize, started: Instant) {
        println!("fuzz {name}: {ran} inputs in {:.1} s", started.elapsed().as_secs_f64());
    }

    #[test]
    fn fuzz_hl7_parse() {
        let started = Instant::now();
        let seeds = files(&root().join("tests/fixtures/hl7"), "hl7");
        let tokens: &[&[u8]] =
            &[b"|", b"^", b"~", b"\\", b"&", b"\r", b"\n", b"MSH|^~\\&|", b"\\X0D\\", b"\\E\\", b"PID|"];
        let ran = run("hl7_parse", &seeds, tokens, inputs(), seed(), 64 * 1024, hl7_parse);
        report("hl7_parse", ran, started);
    }

    #[test]
    fn fuzz_mllp_decode() {
        let started = Instant::now();
        let mut seeds: Vec<Vec<u8>> = files(&root().join("tests/fixtures/hl7"), "hl7")
            .into_iter()
            .map(|m| {
                let mut framed = vec![7u8, 0x0b];
                framed.extend_from_slice(&m);
                framed.extend_from_slice(&[0x1c, 0x0d]);
                framed
            })
            .collect();
        seeds.push(vec![1, 0x0b, 0x1c, 0x0d, 0x0b]);
        let tokens: &[&[u8]] = &[b"\x0b", b"\x1c", b"\r", b"\x1c\r", b"\x0b\x0b"];
        let ran = run("mllp_decode", &seeds, tokens, inputs(), seed(), 16 * 1024, mllp_decode);
        report("mllp_decode", ran, started);
    }

    #[test]
    fn fuzz_fhir_map() {
        let started = Instant::now();
        let seeds: Vec<Vec<u8>> = [
            r#"{"resourceType":"Observation","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"8867-4"}]},"subject":{"identifier":{"system":"urn:oid:1.2.3","value":"MRN-1"}},"effectiveDateTime":"2025-01-01T00:00:00Z","valueQuantity":{"value":118,"unit":"/min","system":"http://unitsofmeasure.org","code":"/min"}}"#,
            r#"{"resourceType":"Patient","identifier":[{"system":"urn:oid:1.2.3","value":"MRN-1"}],"birthDate":"1960-01-01","gender":"male"}"#,
            r#"{"resourceType":"Bundle","type":"transaction","entry":[{"resource":{"resourceType":"Observation","status":"final"}}]}"#,
            r#"[1,2,{"a":[{"b":null}]},"x",true,-1e400]"#,
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
        let tokens: &[&[u8]] =
            &[b"{", b"}", b"[", b"]", b"\"", b":", b",", b"null", b"\\u0000", b"1e999", b"\"resourceType\""];
        let ran = run("fhir_map", &seeds, tokens, inputs(), seed(), 16 * 1024, fhir_map);
        report("fhir_map", ran, started);
    }

    #[test]
    fn fuzz_ws_client_frame() {
        let started = Instant::now();
        let seeds: Vec<Vec<u8>> = [
            r#"{"type":"subscribe","units":["ICU"],"patients":[],"since":12}"#,
            r#"{"type":"ping"}"#,
            r#"{"type":"ack","ref":"r1","alert_id":"a-1"}"#,
            r#"{"type":"resolve","ref":"r2","alert_id":"a-1","reason":"treated"}"#,
            r#"{"type":"comment","ref":"r3","alert_id":"a-1","text":"seen"}"#,
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
        let tokens: &[&[u8]] = &[b"{", b"}", b"\"", b"\"type\"", b"\"ref\"", b"[", b"\\ud800", b"18446744073709551616"];
        let ran = run("ws_client_frame", &seeds, tokens, inputs(), seed(), 16 * 1024, ws_client_frame);
        report("ws_client_frame", ran, started);
    }

    #[test]
    fn fuzz_rule_meta() {
        let started = Instant::now();
        let seeds = files(&root().join("rules"), "rhai");
        let tokens: &[&[u8]] = &[
            b"fn meta() { #{ id: \"x\" } }",
            b"#{",
            b"}",
            b"[",
            b"loop { }",
            b"\"",
            b"severity: \"high\",",
            b"triggers: [\"rr\"],",
        ];
        // Compiling a rule costs far more than parsing a frame: a tenth of the inputs.
        let ran = run("rule_meta", &seeds, tokens, inputs() / 10, seed(), 32 * 1024, rule_meta);
        report("rule_meta", ran, started);
    }

    #[test]
    fn fuzz_config_file() {
        let started = Instant::now();
        let dir = tempfile::tempdir().unwrap();
        let seeds = vec![
            std::fs::read(root().join("deploy/vigil.example.toml")).unwrap(),
            b"[mllp]\nframe_timeout_secs = 1\nmax_connections = 10\n[http]\n".to_vec(),
            b"mllp_addr = \"127.0.0.1:0\"\n[store]\nbackend = \"scylla\"\n".to_vec(),
        ];
        let tokens: &[&[u8]] =
            &[b"[", b"]", b"=", b"\"", b"\n", b"0", b"-1", b"18446744073709551616", b"[[webhooks]]\n", b"[mllp]\n"];
        let ran = run("config_file", &seeds, tokens, inputs() / 10, seed(), 16 * 1024, |d| config_file(dir.path(), d));
        report("config_file", ran, started);
    }

    #[test]
    fn the_mutation_loop_reports_a_failing_input() {
        let seeds = vec![b"abc".to_vec()];
        let failed = std::panic::catch_unwind(|| {
            run("always_fails_on_z", &seeds, &[b"z"], 10_000, 1, 64, |d| assert!(!d.contains(&b'z')));
        });
        assert!(failed.is_err(), "a target that fails on some mutations is caught");
    }
}
