//! HL7 v2 parsing benchmarks (criterion).
//!
//! Every figure from this file is read against `baseline/split`, measured in the same run:
//! a naive split of the same bytes into segments on `\r` and fields on `|`, collecting
//! `&[u8]` slices. It is the cheapest structural pass possible, so the ratio
//! `parse / baseline` says what the real parser costs on top of finding the delimiters,
//! independent of how noisy the (shared) machine was during the run.
//!
//! Run: `cargo bench --bench hl7_parse -- --warm-up-time 1 --measurement-time 3`
//! Results and how to read them: docs/BENCHMARKS.md.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use time::macros::datetime;
use vigil::crypto::BlindIndex;
use vigil::ingest::hl7::Message;
use vigil::ingest::map::Mapper;
use vigil::ingest::mllp::codec::{MllpDecoder, frame};
use vigil::vocab::Vocabulary;

/// Device MDS/VMD identity used in OBX-18 (synthetic EUI-64).
const DEV: &str = "ACDE48234567ABCD^^ACDE48234567ABCD^EUI-64";
const TS: &str = "20250314101500+0000";

/// A synthetic IHE PCD-01 ORU^R01 from a multi-parameter monitor: MSH (MSH-15 AL,
/// MSH-16 NE, MSH-21 PCD-01 profile), PID with two PID-3 repetitions, PV1, OBR, the MDS
/// OBX and 7 metric OBX rows (8 OBX in all) with MDC codes, containment (OBX-4), MDC units, OBX-14
/// observation time and OBX-18 device id. Synthetic data only.
fn pcd01_message() -> Vec<u8> {
    let mut m = String::with_capacity(1200);
    m.push_str(
        "MSH|^~\\&|MONITOR_GW^ACDE48234567ABCD^EUI-64|ICU_WEST|VIGIL|HOSP|20250314101502+0000||\
         ORU^R01^ORU_R01|MSG000123|P|2.6|||AL|NE||UNICODE UTF-8|||\
         IHE_PCD_001^IHE PCD^1.3.6.1.4.1.19376.1.6.1.1.1^ISO\r",
    );
    m.push_str("PID|||SYN0012345^^^SYNTHHOSP^MR~9990001234^^^NHS^NH||Testpatient^Alex^^^^^L||19700101|U\r");
    m.push_str("PV1||I|ICU^12^B\r");
    m.push_str(&format!("OBR|1|MSG000123^GW|MSG000123^GW|182777000^^SCT|||{TS}\r"));
    m.push_str(&format!("OBX|1||69965^MDC_DEV_MON_PHYSIO_MULTI_PARAM_MDS^MDC|1|||||||X|||||||{DEV}\r"));
    // Units are sent as MDC code only (`code^^MDC`) and OBX-18 as a short device reference to
    // keep the message near 1 KB; everything else is as a monitor gateway sends it.
    let metrics: [(&str, &str, &str, &str); 7] = [
        ("147842^MDC_ECG_HEART_RATE^MDC", "1.1.1.1", "72", "264864^^MDC"),
        ("151562^MDC_RESP_RATE^MDC", "1.2.1.1", "16", "264928^^MDC"),
        ("150456^MDC_PULS_OXIM_SAT_O2^MDC", "1.3.1.1", "97", "262688^^MDC"),
        ("150021^MDC_PRESS_BLD_NONINV_SYS^MDC", "1.4.1.1", "121", "266016^^MDC"),
        ("150022^MDC_PRESS_BLD_NONINV_DIA^MDC", "1.4.1.2", "79", "266016^^MDC"),
        ("150023^MDC_PRESS_BLD_NONINV_MEAN^MDC", "1.4.1.3", "93", "266016^^MDC"),
        ("150344^MDC_TEMP^MDC", "1.5.1.1", "37.2", "268192^^MDC"),
    ];
    for (i, (code, containment, value, unit)) in metrics.iter().enumerate() {
        m.push_str(&format!("OBX|{}|NM|{code}|{containment}|{value}|{unit}|||||R|||{TS}||||MON07\r", i + 2));
    }
    m.into_bytes()
}

/// The baseline: segments on `\r`, fields on `|`, as borrowed slices. No validation,
/// no delimiter discovery, no decoding — the floor any parser sits on.
fn naive_split(bytes: &[u8]) -> Vec<Vec<&[u8]>> {
    bytes.split(|&b| b == b'\r').filter(|s| !s.is_empty()).map(|s| s.split(|&b| b == b'|').collect()).collect()
}

/// Reads what an ingest path typically reads: MSH-10, MSH-9, every PID-3 repetition
/// (id, authority, type) and every OBX-3 (code, system) / OBX-5.
fn access(msg: &Message) -> usize {
    let mut n = 0;
    let msh = msg.msh().expect("MSH");
    n += black_box(msh.component(10, 1)).len();
    n += black_box(msh.component(9, 1)).len();
    n += black_box(msh.component(9, 2)).len();
    n += black_box(msh.component(9, 3)).len();
    let pid = msg.segment("PID").expect("PID");
    for rep in pid.field(3).expect("PID-3").repetitions() {
        n += black_box(rep.component(1)).len();
        n += black_box(rep.component(4)).len();
        n += black_box(rep.component(5)).len();
    }
    for obx in msg.segments_named("OBX") {
        n += black_box(obx.component(3, 1)).len();
        n += black_box(obx.component(3, 3)).len();
        n += black_box(obx.text(5)).len();
    }
    n
}

fn hl7(c: &mut Criterion) {
    let msg = pcd01_message();
    assert!((900..1200).contains(&msg.len()), "benchmark message should be ~1 KB, is {} bytes", msg.len());
    // Sanity: the message is what the benches claim to measure.
    let parsed = Message::parse(&msg).expect("benchmark message parses");
    assert_eq!(parsed.segments().len(), 12);
    assert_eq!(parsed.control_id(), "MSG000123");
    assert_eq!(parsed.accept_ack_type(), "AL");
    assert_eq!(parsed.app_ack_type(), "NE");
    assert_eq!(naive_split(&msg).len(), 12);
    let mapper = Mapper::new(Vocabulary::shipped(), BlindIndex::new(&[7u8; 32]));
    let now = datetime!(2025-03-14 10:15:03 UTC);
    let events = mapper.oru_r01(&parsed, now).expect("benchmark message maps");
    assert_eq!(events.len(), 1);
    let debug = format!("{:?}", events[0].kind);
    assert_eq!(debug.matches("observed_at").count(), 7, "all 7 metrics map: {debug}");

    // `VIGIL_BENCH_PROFILE=N`: only N parses and maps of the message, nothing else, for a
    // profiler: `valgrind --tool=callgrind` counts instructions exactly on a noisy machine
    // (run N = 0 and N = 1000; the difference / 1000 is one message). docs/BENCHMARKS.md.
    if let Some(n) = std::env::var("VIGIL_BENCH_PROFILE").ok().and_then(|n| n.parse::<usize>().ok()) {
        for _ in 0..n {
            let m = Message::parse(black_box(&msg)).unwrap();
            black_box(mapper.oru_r01(&m, now).unwrap());
        }
        std::process::exit(0);
    }

    let mut g = c.benchmark_group("hl7");
    g.throughput(Throughput::Bytes(msg.len() as u64));
    g.bench_function("baseline/split", |b| b.iter(|| naive_split(black_box(&msg))));
    g.bench_function("parse", |b| b.iter(|| Message::parse(black_box(&msg)).unwrap()));
    g.bench_function("parse+access", |b| {
        b.iter(|| {
            let m = Message::parse(black_box(&msg)).unwrap();
            access(&m)
        })
    });
    g.bench_function("parse+map", |b| {
        b.iter(|| {
            let m = Message::parse(black_box(&msg)).unwrap();
            mapper.oru_r01(&m, now).unwrap()
        })
    });
    g.finish();

    // MLLP: 100 framed copies back to back, fed as a socket would in 64 KiB reads.
    let mut stream = Vec::with_capacity(100 * (msg.len() + 3));
    for _ in 0..100 {
        stream.extend_from_slice(&frame(&msg));
    }
    let decode_all = |stream: &[u8]| {
        let mut d = MllpDecoder::new(1 << 20);
        let mut frames = 0usize;
        for chunk in stream.chunks(64 * 1024) {
            d.extend(chunk);
            while let Some(item) = d.decode() {
                black_box(&item);
                frames += 1;
            }
        }
        frames
    };
    assert_eq!(decode_all(&stream), 100);
    let mut g = c.benchmark_group("mllp");
    g.throughput(Throughput::Bytes(stream.len() as u64));
    g.bench_function("decode/100x1KB_64KiB_chunks", |b| b.iter(|| decode_all(black_box(&stream))));
    g.finish();
}

criterion_group!(benches, hl7);
criterion_main!(benches);
