//! What the per-stage instrumentation costs (criterion): one stage timed and recorded into the
//! server's Prometheus histogram (`Stages::since`, two clock reads and an atomic append), the
//! same into a no-op handle (the clock reads alone), and nothing (the loop). A message passes
//! seven stages plus one `rules` record per evaluation; docs/BENCHMARKS.md sets the per-message
//! total against the CPU a message costs at the measured throughput.
//!
//! Run: `cargo bench --bench stages -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use vigil::http::metrics::{Metrics, Stages};

fn stages(c: &mut Criterion) {
    let metrics = Metrics::default();
    let recorded = metrics.stages();
    let noop = Stages::default();
    let mut group = c.benchmark_group("stage_record");
    group.bench_function("baseline/nothing", |b| b.iter(|| black_box(1u64)));
    group.bench_function("noop_handle", |b| b.iter(|| Stages::since(black_box(&noop.parse), Instant::now())));
    group.bench_function("prometheus_histogram", |b| {
        let mut n = 0u32;
        b.iter(|| {
            Stages::since(black_box(&recorded.parse), Instant::now());
            // Upkeep as the server runs it (every second there): drain what was recorded.
            n += 1;
            if n == 100_000 {
                n = 0;
                metrics.render();
            }
        })
    });
    group.finish();
}

criterion_group!(benches, stages);
criterion_main!(benches);
