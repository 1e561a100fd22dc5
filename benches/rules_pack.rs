//! The whole rule pack on one event for a patient with a full 24 h window (1-minute vitals,
//! 6-hourly labs, charted consciousness, ten active medications, allergies), next to a
//! baseline of one trivial rule in the same run. Criterion reports means/medians; a manual
//! loop of individually timed runs reports p50/p99 (sorted samples).
//!
//! Run: `cargo bench --bench rules_pack`

// The allocator the `vigil` binary uses (src/main.rs): measure what ships.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use time::OffsetDateTime;
use vigil::rules::{RhaiRules, hardened_engine, load_rule};
use vigil_actors::patient::PatientState;
use vigil_actors::{
    Allergy, ClinicalEvent, Demographics, EventKind, Location, Medication, Observation, OrderAction, PatientId,
    PatientKey, Phi, ResultStatus, RuleEngine,
};

const VITALS: [&str; 6] = ["hr", "rr", "spo2", "sbp", "map", "temp"];
/// Every trigger name: runs every rule of the pack.
fn all() -> &'static [&'static str] {
    &vigil::rules::KNOWN_TRIGGERS
}

fn obs(name: &str, value: Option<f64>, text: Option<&str>, at: OffsetDateTime) -> Observation {
    Observation {
        name: name.into(),
        value,
        text: text.map(Into::into),
        unit: String::new(),
        observed_at: at,
        source_code: String::new(),
        device: None,
        status: ResultStatus::Final,
        result_key: String::new(),
        reference_range: None,
        abnormal_flags: Vec::new(),
    }
}

fn event(at: OffsetDateTime, kind: EventKind) -> ClinicalEvent {
    ClinicalEvent {
        patient_id: PatientId("bench".into()),
        patient: PatientKey { authority: "B".into(), mrn: Phi("SYNTH".into()) },
        demographics: Demographics {
            name: Phi("Synthetic, Bench".into()),
            birth_date: Phi("19500101".into()),
            sex: "F".into(),
        },
        location: Some(Location { unit: "ICU".into(), room: "1".into(), bed: "A".into() }),
        received_at: at,
        kind,
    }
}

fn vitals_event(at: OffsetDateTime, i: i64) -> ClinicalEvent {
    let wobble = (i % 7) as f64;
    let observations = vec![
        obs("hr", Some(95.0 + wobble), None, at),
        obs("rr", Some(21.0 + (i % 3) as f64), None, at),
        obs("spo2", Some(94.0), None, at),
        obs("sbp", Some(104.0 - wobble), None, at),
        obs("map", Some(72.0), None, at),
        obs("temp", Some(38.2), None, at),
    ];
    event(at, EventKind::Observations { observations })
}

/// A patient with 24 h of minute vitals, labs every 6 h, ACVPU every 4 h, 10 medications.
fn full_patient(start: OffsetDateTime) -> (PatientState, OffsetDateTime) {
    let mut state = PatientState::new(PatientId("bench".into()));
    let minute = time::Duration::minutes(1);
    for i in 0..1440 {
        let at = start + minute * i as i32;
        state.apply(&vitals_event(at, i));
        if i % 360 == 0 {
            let labs = [
                ("wbc", 13.5),
                ("bands", 6.0),
                ("lactate", 2.4),
                ("creatinine", 1.4),
                ("bilirubin", 1.0),
                ("platelets", 180.0),
                ("inr", 1.2),
                ("paco2", 34.0),
                ("potassium", 4.2),
                ("sodium", 138.0),
                ("glucose", 140.0),
                ("hemoglobin", 11.0),
                ("troponin_i", 12.0),
            ];
            let observations = labs.iter().map(|(n, v)| obs(n, Some(*v), None, at)).collect();
            state.apply(&event(at, EventKind::Observations { observations }));
        }
        if i % 240 == 0 {
            let observations = vec![
                obs("consciousness", None, Some("A"), at),
                obs("fio2", Some(28.0), None, at),
                obs("gcs", Some(15.0), None, at),
            ];
            state.apply(&event(at, EventKind::Observations { observations }));
        }
    }
    let meds = [
        ("8123", "phenelzine"),
        ("36567", "simvastatin"),
        ("7646", "omeprazole"),
        ("161", "acetaminophen"),
        ("5640", "ibuprofen"),
        ("6809", "metformin"),
        ("29046", "lisinopril"),
        ("83367", "atorvastatin"),
        ("6918", "metoprolol"),
        ("1191", "aspirin"),
    ];
    for (n, (rx, name)) in meds.iter().enumerate() {
        let medication = Medication { order_id: format!("O{n}"), rxnorm: Some((*rx).into()), name: (*name).into() };
        state.apply(&event(start, EventKind::MedicationOrder { action: OrderAction::New, medication }));
    }
    let allergies = vec![
        Allergy {
            code: Some("RXNORM|7980".into()),
            name: "penicillin".into(),
            kind: "DA".into(),
            severity: "SV".into(),
        },
        Allergy { code: None, name: "sulfa".into(), kind: "DA".into(), severity: "MO".into() },
    ];
    state.apply(&event(start, EventKind::Allergies { allergies, replace: true }));
    (state, start + minute * 1440)
}

/// The load harness's patient (`vigil-loadtest rate`): stable vitals (HR 60-90, RR 12-18,
/// SpO2 95-99, SBP 110-135, temperature 36.5-37.4) every 30 s for an hour, no labs, no
/// medications; the view of its next vitals message.
fn ward_patient(start: OffsetDateTime) -> Arc<vigil_actors::PatientView> {
    let mut state = PatientState::new(PatientId("ward".into()));
    let vitals = |at: OffsetDateTime, i: i64| {
        let w = (i % 5) as f64;
        let observations = vec![
            obs("hr", Some(70.0 + 3.0 * w), None, at),
            obs("rr", Some(14.0 + w), None, at),
            obs("spo2", Some(97.0), None, at),
            obs("sbp", Some(120.0 + w), None, at),
            obs("dbp", Some(75.0), None, at),
            obs("map", Some(90.0), None, at),
            obs("temp", Some(36.9), None, at),
        ];
        event(at, EventKind::Observations { observations })
    };
    let half_minute = time::Duration::seconds(30);
    for i in 0..120 {
        state.apply(&vitals(start + half_minute * i as i32, i));
    }
    let now = start + half_minute * 120;
    let next = vitals(now, 120);
    state.apply(&next);
    state.view_at(now, &next)
}

fn trivial_rules() -> RhaiRules {
    let engine = hardened_engine();
    let source = r#"
        fn meta() { #{ id: "bench.trivial", severity: "low", triggers: ["rr"], references: ["-"] } }
        fn evaluate(p) { let rr = p.latest("rr", 3600); if rr != () && rr > 40.0 { alert("low", "rr", #{ score: rr }) } else { resolve("ok") } }
    "#;
    let rule = load_rule(&engine, Path::new("trivial.rhai"), source).unwrap();
    RhaiRules::new(engine, vec![rule])
}

/// The rules directory measured: the shipped pack, or `VIGIL_BENCH_RULES` (an informaticist's
/// working copy, to see what an edit costs before it ships).
fn rules_dir() -> std::path::PathBuf {
    std::env::var_os("VIGIL_BENCH_RULES")
        .map_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("rules"), std::path::PathBuf::from)
}

fn pack() -> RhaiRules {
    RhaiRules::from_dir(&rules_dir()).unwrap()
}

/// p50/p99 in µs of `n` individually timed runs of `f`.
fn percentiles(n: usize, mut f: impl FnMut()) -> (f64, f64) {
    for _ in 0..n / 10 {
        f();
    }
    let mut samples: Vec<Duration> = (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    samples.sort();
    let at = |q: f64| samples[((n as f64 * q) as usize).min(n - 1)].as_secs_f64() * 1e6;
    (at(0.50), at(0.99))
}

fn bench(c: &mut Criterion) {
    let start = time::macros::datetime!(2026-03-01 00:00 UTC);
    let (mut state, now) = full_patient(start);
    let trivial = trivial_rules();
    let rules = pack();
    let order = Medication { order_id: "NEW".into(), rxnorm: Some("36437".into()), name: "sertraline".into() };
    let order_event = event(now, EventKind::MedicationOrder { action: OrderAction::New, medication: order });

    // A view per scenario (the actor's view as the rules see it at `now`).
    let vitals = vitals_event(now, 1440);
    state.apply(&vitals);
    let vitals_view = state.view_at(now, &vitals);
    let order_view = {
        let mut v = (*vitals_view).clone();
        v.new_order = order_event_medication(&order_event);
        v.medications.push(vigil_actors::ActiveMedication::ordered(v.new_order.clone().unwrap(), now));
        Arc::new(v)
    };
    assert!(!rules.rules().is_empty());
    // Every rule runs without error (a rule with nothing to say returns no outcome: the
    // critical-lab and medication rules for a patient without a critical value or new order).
    black_box(rules.evaluate(&vitals_view, all()));
    black_box(rules.evaluate(&order_view, &["order"]));
    let failed: Vec<_> = rules.rules().iter().filter(|r| r.failures() > 0).map(|r| r.id.clone()).collect();
    assert!(failed.is_empty(), "rules failed on the bench patient: {failed:?}");

    // `VIGIL_BENCH_PROFILE=N`: only N evaluations, nothing else, for a profiler
    // (`valgrind --tool=callgrind` counts instructions, repeatable on a noisy machine).
    // `VIGIL_BENCH_PROFILE_EVENT` picks them: `vitals` (the 24 h patient's vitals event),
    // `order` (its new order), `ward` (the load harness's patient: stable vitals, an hour of
    // them every 30 s), `board` (`ward` and the unit board's read of the NEWS2 score); unset:
    // N vitals and N order evaluations.
    if let Some(n) = std::env::var("VIGIL_BENCH_PROFILE").ok().and_then(|n| n.parse::<usize>().ok()) {
        let event = std::env::var("VIGIL_BENCH_PROFILE_EVENT").unwrap_or_default();
        let ward_view = (event == "ward" || event == "board").then(|| ward_patient(start));
        for _ in 0..n {
            match event.as_str() {
                "order" => black_box(rules.evaluate(&order_view, &["order"])),
                "ward" => black_box(rules.evaluate(ward_view.as_ref().unwrap(), &VITALS)),
                // The ward event as the actor finishes it: the unit board's NEWS2 fields read.
                "board" => {
                    let out = rules.evaluate(ward_view.as_ref().unwrap(), &VITALS);
                    let news2 = out.iter().find(|o| o.rule_id == "news2").map(|o| match &o.verdict {
                        vigil_actors::RuleVerdict::Fire { details, .. }
                        | vigil_actors::RuleVerdict::Resolve { details, .. } => {
                            details.fields(["score", "band", "partial"])
                        }
                        _ => [None, None, None],
                    });
                    assert!(news2.is_some_and(|n| n[0].is_some()), "the board reads a NEWS2 score");
                    black_box(out)
                }
                "vitals" => black_box(rules.evaluate(&vitals_view, &VITALS)),
                _ => {
                    black_box(rules.evaluate(&order_view, &["order"]));
                    black_box(rules.evaluate(&vitals_view, &VITALS))
                }
            };
        }
        println!("profiled {n} evaluations ({})", if event.is_empty() { "vitals and order" } else { &event });
        return;
    }

    const N: usize = 20_000;
    let report = [
        (
            "baseline: one trivial rule",
            percentiles(N, || {
                black_box(trivial.evaluate(&vitals_view, &["rr"]));
            }),
        ),
        (
            "pack, vitals event (4 rules triggered)",
            percentiles(N, || {
                black_box(rules.evaluate(&vitals_view, &VITALS));
            }),
        ),
        (
            "pack, all 7 rules forced",
            percentiles(N, || {
                black_box(rules.evaluate(&vitals_view, all()));
            }),
        ),
        (
            "pack, order event (ddi + allergy, 11 meds)",
            percentiles(N, || {
                black_box(rules.evaluate(&order_view, &["order"]));
            }),
        ),
    ];
    // The machine's own tail: pure arithmetic calibrated to the vitals pack's p50, timed the
    // same way. Its p99/p50 is what preemption and interrupts add on this machine to any
    // piece of work of that length, whatever the work is.
    let target = report[1].1.0;
    let spin = |n: u64| {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
        }
        black_box(x);
    };
    let t = Instant::now();
    spin(1_000_000);
    let per_iter_us = t.elapsed().as_secs_f64() * 1e6 / 1_000_000.0;
    let n = (target / per_iter_us).max(1.0) as u64;
    let floor = percentiles(N, || spin(n));
    // The actor's full cycle for one event: fold in, prepare the view, evaluate, decide.
    let mut i = 1441;
    let cycle = percentiles(N / 4, || {
        let at = start + time::Duration::minutes(i);
        let e = vitals_event(at, i);
        state.apply(&e);
        let view = state.view_at(at, &e);
        let outcomes = rules.evaluate(&view, &e.trigger_names());
        drop(view);
        black_box(state.decide(outcomes, at));
        i += 1;
    });
    // The host side of `p.score(name)`: each score table alone, no script.
    let tables = vigil::rules::data::Tables::load(&rules_dir().join("data")).unwrap();
    let mut host = Vec::new();
    for name in ["news2", "sirs", "qsofa", "sep1_organ_dysfunction"] {
        if let Some(table) = tables.score(name) {
            host.push((
                name,
                percentiles(N / 4, || {
                    black_box(table.evaluate(&vitals_view));
                }),
            ));
        }
    }
    println!("\nrules_pack manual loop ({N} timed runs each, after warm-up):");
    let rows = [
        ("actor cycle: apply + view_at + pack + decide", cycle),
        ("machine floor: arithmetic of the pack's p50", floor),
    ];
    for (name, (p50, p99)) in report.iter().chain(rows.iter()) {
        println!("  {name:<48} p50 {p50:>8.2} us   p99 {p99:>8.2} us");
    }
    println!("  score tables, host side only ({} timed runs each):", N / 4);
    for (name, (p50, p99)) in &host {
        println!("    {name:<24} p50 {p50:>8.2} us p99 {p99:>8.2} us");
    }
    // Each rule alone (with the shipped tables), all triggers: where the pack's time goes.
    let shipped = rules_dir();
    let mut files: Vec<_> = std::fs::read_dir(&shipped)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "rhai"))
        .collect();
    files.sort();
    println!("  each rule alone, all triggers ({} timed runs each):", N / 4);
    for file in files {
        let dir = std::env::temp_dir().join(format!("vigil-bench-rule-{}", rand::random::<u64>()));
        std::fs::create_dir_all(dir.join("data")).unwrap();
        std::fs::copy(&file, dir.join(file.file_name().unwrap())).unwrap();
        for table in std::fs::read_dir(shipped.join("data")).unwrap().filter_map(|e| e.ok()) {
            std::fs::copy(table.path(), dir.join("data").join(table.file_name())).unwrap();
        }
        let one = RhaiRules::from_dir(&dir).unwrap();
        let (p50, p99) = percentiles(N / 4, || {
            black_box(one.evaluate(&vitals_view, all()));
        });
        let (o50, o99) = percentiles(N / 4, || {
            black_box(one.evaluate(&order_view, &["order"]));
        });
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        println!(
            "    {name:<24} vitals p50 {p50:>8.2} us p99 {p99:>8.2} us | order p50 {o50:>8.2} us p99 {o99:>8.2} us"
        );
    }
    drop(vitals_view);

    let mut group = c.benchmark_group("rules_pack");
    group.measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    let (state2, now2) = full_patient(start);
    let mut state2 = state2;
    let v = vitals_event(now2, 1440);
    state2.apply(&v);
    let view = state2.view_at(now2, &v);
    group.bench_function("baseline_trivial_rule", |b| b.iter(|| trivial.evaluate(&view, &["rr"])));
    group.bench_function("pack_vitals_event", |b| b.iter(|| rules.evaluate(&view, &VITALS)));
    group.bench_function("pack_all_rules", |b| b.iter(|| rules.evaluate(&view, all())));
    group.bench_function("pack_order_event", |b| b.iter(|| rules.evaluate(&order_view, &["order"])));
    group.finish();
}

fn order_event_medication(e: &ClinicalEvent) -> Option<Medication> {
    match &e.kind {
        EventKind::MedicationOrder { medication, .. } => Some(medication.clone()),
        _ => None,
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
