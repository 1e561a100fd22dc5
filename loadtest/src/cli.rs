//! `vigil-loadtest run`: read a scenario, apply the command line's overrides, run the echo
//! baseline when asked, run the scenario with live progress, check the objectives and write
//! the reports. A library function so the integration tests run exactly what CI runs.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;

use crate::load::{Live, Target, run};
use crate::report::{RunReport, Slo};
use crate::scenario::Scenario;

/// What `run` was asked to do.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The scenario file.
    pub scenario: PathBuf,
    /// Where to send it.
    pub target: Target,
    /// Rate override.
    pub rate: Option<f64>,
    /// Measured seconds override.
    pub duration: Option<f64>,
    /// Warm-up override.
    pub warmup: Option<f64>,
    /// Ramp override.
    pub ramp: Option<f64>,
    /// Connections override.
    pub connections: Option<usize>,
    /// Pacing override.
    pub pacing: Option<crate::pace::Pacing>,
    /// Consoles override (0: none).
    pub consoles: Option<usize>,
    /// FHIR Observations/s override (of a scenario with a `[fhir]` section).
    pub fhir_rate: Option<f64>,
    /// Run the echo baseline first.
    pub baseline: bool,
    /// Run against an in-process echo server only.
    pub echo_only: bool,
    /// Measure the disk's flush floor (`fdatasync` latency) in this directory before the run:
    /// the server's data directory, or any directory on its filesystem.
    pub fsync_dir: Option<PathBuf>,
    /// Objectives.
    pub slo: Vec<Slo>,
    /// JSON report path.
    pub json: Option<PathBuf>,
    /// HTML report path.
    pub html: Option<PathBuf>,
    /// Live progress on stderr.
    pub progress: bool,
}

/// The scenario file with the overrides applied, checked.
pub fn load_scenario(o: &RunOptions) -> anyhow::Result<Scenario> {
    let text = std::fs::read_to_string(&o.scenario).with_context(|| format!("reading {}", o.scenario.display()))?;
    let mut s: Scenario = toml::from_str(&text).with_context(|| format!("parsing {}", o.scenario.display()))?;
    if let Some(rate) = o.rate {
        s.load.rate = Some(rate);
        s.load.beds = None;
        s.load.interval_s = None;
    }
    if let Some(d) = o.duration {
        s.load.duration_s = d;
    }
    if let Some(w) = o.warmup {
        s.load.warmup_s = w;
    }
    if let Some(r) = o.ramp {
        s.load.ramp_s = r;
    }
    if let Some(c) = o.connections {
        s.load.connections = c;
    }
    if let Some(p) = o.pacing {
        s.load.pacing = p;
    }
    if let (Some(rate), Some(fhir)) = (o.fhir_rate, s.fhir.as_mut()) {
        fhir.rate = rate;
    }
    match o.consoles {
        Some(0) => s.consoles = None,
        Some(n) => s.consoles.get_or_insert(crate::scenario::Consoles { count: n, grace_s: 5.0 }).count = n,
        None => {}
    }
    s.validate().with_context(|| format!("checking {}", o.scenario.display()))?;
    Ok(s)
}

/// Flushes in the disk probe of `run --fsync-dir` (about 2 s on a disk that flushes in 4 ms).
pub const FSYNC_PROBES: usize = 500;

/// Run, report, and say whether every objective was met.
pub async fn run_scenario(o: RunOptions) -> anyhow::Result<bool> {
    let report = run_report(&o).await?;
    println!("{}", report.to_table());
    if let Some(path) = &o.json {
        std::fs::write(path, report.to_json()).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &o.html {
        std::fs::write(path, report.to_html()).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(report.slo.iter().all(|r| r.ok))
}

/// Run and build the report (objectives checked), without printing or writing it.
pub async fn run_report(o: &RunOptions) -> anyhow::Result<RunReport> {
    let scenario = load_scenario(o)?;
    let baseline = if o.baseline || o.echo_only {
        let (addr, stop, task) = crate::echo::spawn("127.0.0.1:0").await?;
        let echo = Target { mllp: addr, ..Target::default() };
        let measured = with_progress(o.progress, "echo", |live| run(&scenario, &echo, live, true)).await;
        let _ = stop.send(true);
        let _ = task.await;
        Some(measured?)
    } else {
        None
    };
    // Before the measured run, with the server idle: the disk's own floor, not one the run's
    // writes share.
    let floor = match &o.fsync_dir {
        Some(dir) => {
            let dir = dir.clone();
            let floor = tokio::task::spawn_blocking(move || crate::disk::probe(&dir, FSYNC_PROBES)).await??;
            Some(floor)
        }
        None => None,
    };
    let mut report = match (o.echo_only, baseline) {
        (true, Some(echo)) => RunReport::new(&scenario, "echo", &echo, None),
        (_, baseline) => {
            let measured = with_progress(o.progress, "vigil", |live| run(&scenario, &o.target, live, false)).await?;
            RunReport::new(&scenario, "vigil", &measured, baseline.as_ref())
        }
    };
    report.fsync_floor = floor;
    report.check(&o.slo);
    Ok(report)
}

/// Run `f` with a progress bar on stderr fed from its live counters (hidden when stderr is not
/// a terminal, or when `show` is false).
async fn with_progress<F, Fut, T>(show: bool, label: &str, f: F) -> T
where
    F: FnOnce(Arc<Live>) -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let live = Arc::new(Live::default());
    let bar = if show { indicatif::ProgressBar::new(0) } else { indicatif::ProgressBar::hidden() };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{prefix:>6} [{elapsed_precise}] {wide_bar} {pos}/{len} acked {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_prefix(label.to_owned());
    let ticker = {
        let (live, bar) = (Arc::clone(&live), bar.clone());
        tokio::spawn(async move {
            let mut last = (tokio::time::Instant::now(), 0u64);
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let acked = live.acked.load(Ordering::Relaxed);
                let now = tokio::time::Instant::now();
                let rate =
                    (acked - last.1.min(acked)) as f64 / now.saturating_duration_since(last.0).as_secs_f64().max(1e-3);
                last = (now, acked);
                bar.set_length(live.scheduled.load(Ordering::Relaxed));
                bar.set_position(acked);
                bar.set_message(format!(
                    "{rate:.0}/s, sent {}, errors {}, alerts timed {}",
                    live.sent.load(Ordering::Relaxed),
                    live.errors.load(Ordering::Relaxed),
                    live.alerts.load(Ordering::Relaxed)
                ));
            }
        })
    };
    let out = f(live).await;
    ticker.abort();
    bar.finish_and_clear();
    out
}
