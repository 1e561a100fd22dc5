//! A run's report: [`RunReport`] summarises what [`crate::load::run`] measured (throughput,
//! ACK / alert / FHIR latency percentiles, errors by kind, the server's RSS and CPU, where the
//! time went by server stage, the echo baseline of the same run) and renders it as a terminal
//! table, JSON, or one self-contained HTML page with inline SVG plots (no script, no CDN).
//! [`Slo`] checks (`ack.p99<=10ms`, `errors==0`, ...) decide the exit code.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;
use time::format_description::well_known::Rfc3339;

use crate::load::Measured;
use crate::scenario::Scenario;

/// Percentiles written for every latency, and plotted as its distribution.
const DISTRIBUTION: [f64; 12] = [0.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 99.999, 100.0];

/// One latency's summary, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Latency {
    /// Samples.
    pub count: u64,
    /// Mean.
    pub mean_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest.
    pub max_ms: f64,
    /// (percentile, ms) over [`DISTRIBUTION`].
    pub distribution: Vec<(f64, f64)>,
}

impl Latency {
    /// From a histogram of µs; `None` when it is empty.
    pub fn of(h: &Histogram<u64>) -> Option<Latency> {
        if h.is_empty() {
            return None;
        }
        let ms = |us: u64| us as f64 / 1000.0;
        let at = |q: f64| ms(h.value_at_quantile(q));
        Some(Latency {
            count: h.len(),
            mean_ms: h.mean() / 1000.0,
            p50_ms: at(0.5),
            p90_ms: at(0.9),
            p99_ms: at(0.99),
            p999_ms: at(0.999),
            max_ms: ms(h.max()),
            distribution: DISTRIBUTION.iter().map(|&p| (p, at(p / 100.0))).collect(),
        })
    }

    fn value(&self, stat: &str) -> Option<f64> {
        Some(match stat {
            "mean" => self.mean_ms,
            "p50" => self.p50_ms,
            "p90" => self.p90_ms,
            "p99" => self.p99_ms,
            "p999" | "p99.9" => self.p999_ms,
            "max" => self.max_ms,
            "count" => self.count as f64,
            _ => return None,
        })
    }
}

/// One step of the timeline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Point {
    /// Seconds from the start of the schedule (the step's start).
    pub t_s: f64,
    /// Replies per second received in the step.
    pub replies_per_s: f64,
    /// ACK latency of the messages intended in the step.
    pub p50_ms: Option<f64>,
    /// 99th percentile of the same.
    pub p99_ms: Option<f64>,
    /// Largest of the same.
    pub max_ms: Option<f64>,
}

/// The server process under load.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServerUsage {
    /// Largest RSS seen, MiB.
    pub peak_rss_mib: f64,
    /// Mean CPU over the measured window, % of one core.
    pub mean_cpu_pct: f64,
    /// (seconds, RSS MiB, CPU %).
    pub samples: Vec<(f64, f64, f64)>,
}

/// One server stage over the measured window (from /metrics bucket boundaries, so p50/p99
/// are estimates at that resolution).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stage {
    /// Stage name.
    pub name: String,
    /// Observations.
    pub count: u64,
    /// Mean, µs.
    pub mean_us: f64,
    /// Median estimate, µs.
    pub p50_us: f64,
    /// 99th percentile estimate, µs.
    pub p99_us: f64,
}

/// The echo server's result for the same scenario in the same run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Baseline {
    /// Replies per second over the measured window.
    pub throughput: f64,
    /// Its ACK latency.
    pub ack: Option<Latency>,
    /// Its failures.
    pub errors: u64,
    /// The target's throughput as a fraction of the echo's.
    pub fraction: f64,
}

/// One checked objective.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SloResult {
    /// As given, e.g. `ack.p99<=10ms`.
    pub objective: String,
    /// The measured value, in the objective's unit (ms for latencies).
    pub measured: Option<f64>,
    /// Whether it holds.
    pub ok: bool,
}

/// Everything a run reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunReport {
    /// Scenario name.
    pub scenario: String,
    /// Scenario description.
    pub description: String,
    /// What was measured (`vigil`, or `echo` for an echo-only run).
    pub target: String,
    /// When the run started, RFC 3339.
    pub started_at: String,
    /// Host: cores, OS, harness version.
    pub machine: BTreeMap<String, String>,
    /// The scenario as run.
    pub config: Scenario,
    /// Offered messages per second at full load.
    pub offered_rate: f64,
    /// Messages handed to a socket.
    pub sent: u64,
    /// Replies.
    pub acked: u64,
    /// Replies by MSA-1.
    pub by_code: BTreeMap<String, u64>,
    /// Failures by kind (NAKs, lost replies, unsent messages, missing alerts, FHIR errors).
    pub errors: BTreeMap<String, u64>,
    /// Sum of `errors`.
    pub error_total: u64,
    /// Replies per second to the messages of the measured window.
    pub throughput: f64,
    /// ACK latency from the intended send time, measured window.
    pub ack: Option<Latency>,
    /// The harness's own lateness: intended send to its sender waking to write it (part of
    /// every ACK latency).
    pub send_lag: Option<Latency>,
    /// Alert latency: console receipt minus the intended send of the causing message.
    pub alert: Option<Latency>,
    /// Alerts the run was to cause, and alert frames the consoles received.
    pub alerts_expected: u64,
    /// Alert frames received by all consoles.
    pub alert_frames: u64,
    /// The slowest alerts (at most [`crate::load::SLOWEST_ALERTS`]), with each console's latency.
    pub slowest_alerts: Vec<crate::load::SlowAlert>,
    /// ACK latency of the messages whose alerts were timed (the alert less this: durable to
    /// console).
    pub alert_ack: Option<Latency>,
    /// FHIR response latency, measured window.
    pub fhir: Option<Latency>,
    /// FHIR Observations stored per second in the measured window.
    pub fhir_throughput: Option<f64>,
    /// Timeline.
    pub timeline: Vec<Point>,
    /// Where measuring started and ended, seconds from the start of the schedule.
    pub window_s: (f64, f64),
    /// The server's RSS and CPU, when a pid was given.
    pub server: Option<ServerUsage>,
    /// Per-stage times, when /metrics was read.
    pub stages: Vec<Stage>,
    /// The echo baseline, when run.
    pub baseline: Option<Baseline>,
    /// The disk's flush floor (`fdatasync` latency where the server keeps its data), when
    /// probed: no durable ACK can be faster than one flush.
    pub fsync_floor: Option<crate::disk::FsyncFloor>,
    /// Objectives checked.
    pub slo: Vec<SloResult>,
}

impl RunReport {
    /// Summarise a run. `baseline`: the echo run of the same scenario.
    pub fn new(scenario: &Scenario, target: &str, m: &Measured, baseline: Option<&Measured>) -> RunReport {
        let throughput = m.measured_acked as f64 / m.measured_secs.max(1e-9);
        let slot_s = m.slot.as_secs_f64();
        let last_used =
            m.timeline.iter().zip(&m.replies_per_slot).rposition(|(h, n)| !h.is_empty() || *n > 0).map_or(0, |i| i + 1);
        let timeline = (0..last_used)
            .map(|i| {
                let h = &m.timeline[i];
                let q = |q: f64| (!h.is_empty()).then(|| h.value_at_quantile(q) as f64 / 1000.0);
                Point {
                    t_s: i as f64 * slot_s,
                    replies_per_s: m.replies_per_slot[i] as f64 / slot_s,
                    p50_ms: q(0.5),
                    p99_ms: q(0.99),
                    max_ms: (!h.is_empty()).then(|| h.max() as f64 / 1000.0),
                }
            })
            .collect();
        let window = (scenario.measure_from().as_secs_f64(), scenario.total().as_secs_f64());
        let server = (!m.server.is_empty()).then(|| {
            let in_window: Vec<f64> =
                m.server.iter().filter(|(t, _, _)| *t >= window.0 && *t <= window.1).map(|s| s.2).collect();
            ServerUsage {
                peak_rss_mib: m.server.iter().map(|s| s.1).max().unwrap_or(0) as f64 / (1 << 20) as f64,
                mean_cpu_pct: if in_window.is_empty() {
                    0.0
                } else {
                    in_window.iter().sum::<f64>() / in_window.len() as f64
                },
                samples: m.server.iter().map(|&(t, rss, cpu)| (t, rss as f64 / (1 << 20) as f64, cpu)).collect(),
            }
        });
        let stages = m
            .stages
            .as_ref()
            .map(|s| {
                STAGE_ORDER
                    .iter()
                    .filter_map(|name| s.stages.get(*name).map(|h| (*name, h)))
                    .chain(
                        s.stages
                            .iter()
                            .filter(|(n, _)| !STAGE_ORDER.contains(&n.as_str()))
                            .map(|(n, h)| (n.as_str(), h)),
                    )
                    .map(|(name, h)| Stage {
                        name: name.to_owned(),
                        count: h.count as u64,
                        mean_us: h.mean().unwrap_or(0.0) * 1e6,
                        p50_us: h.quantile(0.5).unwrap_or(0.0) * 1e6,
                        p99_us: h.quantile(0.99).unwrap_or(0.0) * 1e6,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let baseline = baseline.map(|b| {
            let echo = b.measured_acked as f64 / b.measured_secs.max(1e-9);
            Baseline {
                throughput: echo,
                ack: Latency::of(&b.ack),
                errors: b.errors.values().sum(),
                fraction: if echo > 0.0 { throughput / echo } else { 0.0 },
            }
        });
        let mut machine = BTreeMap::new();
        machine.insert("cores".to_owned(), std::thread::available_parallelism().map_or(0, |n| n.get()).to_string());
        machine.insert("os".to_owned(), std::env::consts::OS.to_owned());
        machine.insert("harness".to_owned(), format!("vigil-loadtest {}", env!("CARGO_PKG_VERSION")));
        if let Ok(cpu) = std::fs::read_to_string("/proc/cpuinfo")
            && let Some(model) = cpu.lines().find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')))
        {
            machine.insert("cpu".to_owned(), model.1.trim().to_owned());
        }
        let sysctl = |name: &str| std::fs::read_to_string(format!("/proc/sys/vm/{name}")).ok();
        if let (Some(bytes), Some(ratio)) = (sysctl("dirty_background_bytes"), sysctl("dirty_background_ratio"))
            && let Some(writeback) = writeback(&bytes, &ratio)
        {
            machine.insert("writeback".to_owned(), writeback);
        }
        RunReport {
            scenario: scenario.name.clone(),
            description: scenario.description.clone(),
            target: target.to_owned(),
            started_at: m.started_at.format(&Rfc3339).unwrap_or_default(),
            machine,
            config: scenario.clone(),
            offered_rate: scenario.rate(),
            sent: m.sent,
            acked: m.acked,
            by_code: m.by_code.clone(),
            errors: m.errors.clone(),
            error_total: m.errors.values().sum(),
            throughput,
            ack: Latency::of(&m.ack),
            send_lag: Latency::of(&m.send_lag),
            alert: Latency::of(&m.alert),
            alerts_expected: m.alerts_expected,
            alert_frames: m.alert_frames,
            slowest_alerts: m.slowest_alerts.clone(),
            alert_ack: Latency::of(&m.alert_ack),
            fhir: Latency::of(&m.fhir),
            fhir_throughput: scenario.fhir.as_ref().map(|_| m.fhir_created as f64 / scenario.load.duration_s),
            timeline,
            window_s: window,
            server,
            stages,
            baseline,
            fsync_floor: None,
            slo: Vec::new(),
        }
    }

    /// Check `objectives`, keep the results; whether all hold.
    pub fn check(&mut self, objectives: &[Slo]) -> bool {
        self.slo = objectives.iter().map(|o| o.check(self)).collect();
        self.slo.iter().all(|r| r.ok)
    }

    /// The report as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// A plain-text table for the terminal.
    pub fn to_table(&self) -> String {
        let mut s = String::new();
        // Writing into a String cannot fail.
        let _ = writeln!(s, "scenario {} -> {} ({})", self.scenario, self.target, self.started_at);
        let _ = writeln!(
            s,
            "offered {:.0} msg/s, {} connections, window {:.0}-{:.0} s, pacing {}",
            self.offered_rate,
            self.config.load.connections,
            self.window_s.0,
            self.window_s.1,
            self.config.load.pacing.name()
        );
        let _ = writeln!(s, "{:<28} {:>14}", "sent / acked", format!("{} / {}", self.sent, self.acked));
        let _ = writeln!(s, "{:<28} {:>14.1}", "throughput (msg/s)", self.throughput);
        if let Some(b) = &self.baseline {
            let _ = writeln!(s, "{:<28} {:>14.1}", "echo baseline (msg/s)", b.throughput);
            let _ = writeln!(s, "{:<28} {:>13.1}%", "fraction of echo", b.fraction * 100.0);
        }
        let _ = writeln!(s, "{:<28} {:>14}", "errors", self.error_total);
        for (kind, n) in &self.errors {
            let _ = writeln!(s, "  {kind:<26} {n:>14}");
        }
        let _ = writeln!(
            s,
            "\n{:<10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "latency", "count", "mean", "p50", "p90", "p99", "p99.9", "max"
        );
        let mut row = |name: &str, l: &Option<Latency>| {
            if let Some(l) = l {
                let _ = writeln!(
                    s,
                    "{name:<10} {:>9} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
                    l.count, l.mean_ms, l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms
                );
            }
        };
        row("ack ms", &self.ack);
        row("lag ms", &self.send_lag);
        row("alert ms", &self.alert);
        row("alert ack", &self.alert_ack);
        row("fhir ms", &self.fhir);
        if let Some(b) = &self.baseline {
            row("echo ms", &b.ack);
        }
        if let Some(f) = &self.fsync_floor {
            row("fsync ms", &Some(f.fsync.clone()));
            let _ = writeln!(s, "(fsync: fdatasync after a {} B append in {}, before the run)", f.write_bytes, f.dir);
        }
        if self.send_lag.is_some() {
            let _ = writeln!(s, "(lag: the harness's own, intended send to its sender waking; part of every ACK)");
        }
        if self.alerts_expected > 0 {
            let _ = writeln!(
                s,
                "alerts expected {} (x consoles), frames received {}",
                self.alerts_expected, self.alert_frames
            );
        }
        if !self.slowest_alerts.is_empty() {
            let _ = writeln!(s, "slowest alerts (causing message's second of the run: ms on each console)");
            for a in self.slowest_alerts.iter().take(crate::load::SlowAlert::SHOWN) {
                let _ = writeln!(s, "  {:>7.2} s: {}", a.at_s, a.ms_text(" "));
            }
        }
        if let Some(u) = &self.server {
            let _ = writeln!(
                s,
                "\nserver: peak RSS {:.1} MiB, mean CPU {:.0} % of a core (window)",
                u.peak_rss_mib, u.mean_cpu_pct
            );
        }
        if !self.stages.is_empty() {
            let _ =
                writeln!(s, "\n{:<12} {:>10} {:>10} {:>10} {:>10}", "stage", "count", "mean µs", "p50 µs", "p99 µs");
            for st in &self.stages {
                let _ = writeln!(
                    s,
                    "{:<12} {:>10} {:>10.1} {:>10.1} {:>10.1}",
                    st.name, st.count, st.mean_us, st.p50_us, st.p99_us
                );
            }
            if let Some(per) = self.messages_per_store_write() {
                let _ = writeln!(s, "(store_write: once per group commit, {per:.1} messages per batch)");
            }
        }
        for r in &self.slo {
            let measured = r.measured.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.3}"));
            let _ = writeln!(s, "SLO {:<28} {:>12}  {}", r.objective, measured, if r.ok { "ok" } else { "FAILED" });
        }
        s
    }

    /// Messages per group commit: `commit_wait` (one per message) over `store_write` (one per
    /// batch), when the server reported both.
    pub fn messages_per_store_write(&self) -> Option<f64> {
        let count = |name: &str| self.stages.iter().find(|s| s.name == name).map(|s| s.count);
        let (messages, batches) = (count("commit_wait")?, count("store_write")?);
        (batches > 0).then(|| messages as f64 / batches as f64)
    }

    /// One self-contained HTML page: tables and inline SVG plots, no script.
    pub fn to_html(&self) -> String {
        crate::html::render(self)
    }
}

/// Server stages in data-flow order (the names the server exports). `store_write` is per group
/// commit (a batch of messages), the others per message or per rule evaluation; `in_actor`,
/// `in_store` and `ack_wake` are the parts of `commit_wait`, in turn.
pub const STAGE_ORDER: [&str; 11] = [
    "decode",
    "parse",
    "map",
    "route",
    "rules",
    "commit_wait",
    "in_actor",
    "in_store",
    "store_write",
    "ack_wake",
    "ack_write",
];

/// A service-level objective: `<metric> <op> <value>`, e.g. `ack.p99<=10ms`, `alert.p99<=20ms`,
/// `errors==0`, `throughput>=1000`, `echo.fraction>=0.25`. Latencies are compared in ms
/// (`us`, `ms`, `s` suffixes accepted).
#[derive(Debug, Clone, PartialEq)]
pub struct Slo {
    text: String,
    metric: String,
    op: Op,
    value: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Le,
    Lt,
    Ge,
    Gt,
    Eq,
}

impl std::str::FromStr for Slo {
    type Err = String;

    fn from_str(text: &str) -> Result<Slo, String> {
        let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        let (at, op, len) = [("<=", Op::Le), (">=", Op::Ge), ("==", Op::Eq), ("<", Op::Lt), (">", Op::Gt)]
            .iter()
            .find_map(|(sym, op)| compact.find(sym).map(|at| (at, *op, sym.len())))
            .ok_or_else(|| format!("{text}: expected <metric><op><value>, op one of <= < >= > =="))?;
        let metric = compact[..at].to_owned();
        let raw = &compact[at + len..];
        let (number, scale) = if let Some(n) = raw.strip_suffix("ms") {
            (n, 1.0)
        } else if let Some(n) = raw.strip_suffix("us").or_else(|| raw.strip_suffix("µs")) {
            (n, 0.001)
        } else if let Some(n) = raw.strip_suffix('s') {
            (n, 1000.0)
        } else if let Some(n) = raw.strip_suffix('%') {
            (n, 0.01)
        } else {
            (raw, 1.0)
        };
        let value: f64 = number.parse().map_err(|_| format!("{text}: {raw} is not a number"))?;
        let slo = Slo { text: text.trim().to_owned(), metric, op, value: value * scale };
        if !slo.known_metric() {
            return Err(format!(
                "{text}: unknown metric (ack|alert|fhir|echo.<mean|p50|p90|p99|p999|max|count>, errors, errors.<kind>, throughput, echo.fraction, alerts.missing, rss_mib, cpu_pct)"
            ));
        }
        Ok(slo)
    }
}

impl Slo {
    fn known_metric(&self) -> bool {
        let m = self.metric.as_str();
        matches!(
            m,
            "errors" | "throughput" | "echo.fraction" | "echo.throughput" | "alerts.missing" | "rss_mib" | "cpu_pct"
        ) || m.starts_with("errors.")
            || m.split_once('.').is_some_and(|(what, stat)| {
                matches!(what, "ack" | "alert" | "fhir" | "echo" | "fsync" | "send_lag")
                    && Latency::default().value(stat).is_some()
            })
    }

    fn measure(&self, r: &RunReport) -> Option<f64> {
        let m = self.metric.as_str();
        match m {
            "errors" => Some(r.error_total as f64),
            "throughput" => Some(r.throughput),
            "echo.fraction" => r.baseline.as_ref().map(|b| b.fraction),
            "echo.throughput" => r.baseline.as_ref().map(|b| b.throughput),
            "alerts.missing" => Some(*r.errors.get("alert_missing").unwrap_or(&0) as f64),
            "rss_mib" => r.server.as_ref().map(|s| s.peak_rss_mib),
            "cpu_pct" => r.server.as_ref().map(|s| s.mean_cpu_pct),
            _ => {
                if let Some(kind) = m.strip_prefix("errors.") {
                    return Some(*r.errors.get(kind).unwrap_or(&0) as f64);
                }
                let (what, stat) = m.split_once('.')?;
                let latency = match what {
                    "ack" => r.ack.as_ref(),
                    "alert" => r.alert.as_ref(),
                    "fhir" => r.fhir.as_ref(),
                    "echo" => r.baseline.as_ref().and_then(|b| b.ack.as_ref()),
                    "fsync" => r.fsync_floor.as_ref().map(|f| &f.fsync),
                    "send_lag" => r.send_lag.as_ref(),
                    _ => None,
                }?;
                latency.value(stat)
            }
        }
    }

    /// Check against a report. A metric the run did not measure fails: an objective that
    /// cannot be checked is not met.
    pub fn check(&self, r: &RunReport) -> SloResult {
        let measured = self.measure(r);
        let ok = measured.is_some_and(|v| match self.op {
            Op::Le => v <= self.value,
            Op::Lt => v < self.value,
            Op::Ge => v >= self.value,
            Op::Gt => v > self.value,
            Op::Eq => (v - self.value).abs() < 1e-9,
        });
        SloResult { objective: self.text.clone(), measured, ok }
    }
}

/// The host's background writeback threshold as the kernel applies it (the byte count when set,
/// else the ratio): with the default ratio, a store's table flush waits in memory for its fsync,
/// and on ext4 the durable ACKs committed meanwhile wait with it (docs/storage.md), so a
/// report's latencies say which the host had.
fn writeback(bytes: &str, ratio: &str) -> Option<String> {
    match bytes.trim().parse::<u64>().ok()? {
        0 => Some(format!("vm.dirty_background_ratio {} %", ratio.trim().parse::<u64>().ok()?)),
        b => Some(format!("vm.dirty_background_bytes {} MiB", b as f64 / 1_048_576.0)),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use super::*;
    use crate::load::new_histogram;
    use crate::scenario::{Load, Mix};

    pub(crate) fn sample_report() -> RunReport {
        let scenario = Scenario {
            name: "sample".into(),
            description: "a <sample> & more".into(),
            load: Load {
                rate: Some(100.0),
                beds: None,
                interval_s: None,
                connections: 2,
                patients: Some(10),
                ramp_s: 1.0,
                warmup_s: 1.0,
                duration_s: 2.0,
                pacing: crate::pace::Pacing::default(),
            },
            mix: Mix::default(),
            deterioration: None,
            fhir: None,
            consoles: None,
        };
        let mut ack = new_histogram();
        for us in 1..=1000u64 {
            ack.record(us * 10).unwrap();
        }
        let mut alert = new_histogram();
        alert.record(15_000).unwrap();
        let mut alert_ack = new_histogram();
        alert_ack.record(4_000).unwrap();
        let mut send_lag = new_histogram();
        send_lag.record(300).unwrap();
        send_lag.record(2_000).unwrap();
        let mut timeline: Vec<Histogram<u64>> = (0..5).map(|_| new_histogram()).collect();
        timeline[1].record(2_000).unwrap();
        timeline[3].record(9_000).unwrap();
        let m = Measured {
            sent: 300,
            acked: 299,
            by_code: [("AA".to_owned(), 298), ("AE".to_owned(), 1)].into(),
            errors: [("nak_AE".to_owned(), 1), ("closed".to_owned(), 1)].into(),
            ack,
            send_lag,
            measured_acked: 200,
            measured_secs: 2.0,
            alert,
            alerts_expected: 1,
            alert_frames: 3,
            slowest_alerts: vec![crate::load::SlowAlert { at_s: 1.25, ms: vec![9.0, 8.5, 12.25] }],
            alert_ack,
            fhir: new_histogram(),
            fhir_created: 0,
            slot: Duration::from_secs(1),
            timeline,
            replies_per_slot: vec![50, 100, 100, 49, 0],
            server: vec![(0.5, 100 << 20, 50.0), (2.5, 120 << 20, 150.0), (3.5, 110 << 20, 130.0)],
            stages: None,
            started_at: time::OffsetDateTime::UNIX_EPOCH,
        };
        let mut echo = Measured { measured_acked: 800, errors: BTreeMap::new(), ..clone_measured(&m) };
        echo.measured_secs = 2.0;
        RunReport::new(&scenario, "vigil", &m, Some(&echo))
    }

    fn clone_measured(m: &Measured) -> Measured {
        Measured {
            sent: m.sent,
            acked: m.acked,
            by_code: m.by_code.clone(),
            errors: m.errors.clone(),
            ack: m.ack.clone(),
            send_lag: m.send_lag.clone(),
            measured_acked: m.measured_acked,
            measured_secs: m.measured_secs,
            alert: m.alert.clone(),
            alerts_expected: m.alerts_expected,
            alert_frames: m.alert_frames,
            slowest_alerts: m.slowest_alerts.clone(),
            alert_ack: m.alert_ack.clone(),
            fhir: m.fhir.clone(),
            fhir_created: m.fhir_created,
            slot: m.slot,
            timeline: m.timeline.clone(),
            replies_per_slot: m.replies_per_slot.clone(),
            server: m.server.clone(),
            stages: m.stages.clone(),
            started_at: m.started_at,
        }
    }

    #[test]
    fn the_machine_names_the_writeback_threshold_the_kernel_applies() {
        assert_eq!(writeback("0\n", "10\n").as_deref(), Some("vm.dirty_background_ratio 10 %"));
        assert_eq!(writeback("16777216\n", "0\n").as_deref(), Some("vm.dirty_background_bytes 16 MiB"));
        assert_eq!(writeback("1572864", "0").as_deref(), Some("vm.dirty_background_bytes 1.5 MiB"));
        assert_eq!(writeback("", "10"), None);
    }

    #[test]
    fn the_report_summarises_the_run() {
        let r = sample_report();
        assert_eq!(r.throughput, 100.0);
        assert_eq!(r.error_total, 2);
        let b = r.baseline.as_ref().unwrap();
        assert_eq!(b.throughput, 400.0);
        assert_eq!(b.fraction, 0.25);
        let ack = r.ack.as_ref().unwrap();
        assert_eq!(ack.count, 1000);
        assert!((ack.p50_ms - 5.0).abs() < 0.01, "{}", ack.p50_ms);
        assert!((ack.p99_ms - 9.9).abs() < 0.01, "{}", ack.p99_ms);
        assert_eq!(ack.distribution.len(), DISTRIBUTION.len());
        assert!((r.alert.as_ref().unwrap().p99_ms - 15.0).abs() < 0.02);
        let lag = r.send_lag.as_ref().unwrap();
        assert_eq!(lag.count, 2);
        assert!((lag.p50_ms - 0.3).abs() < 0.01 && (lag.max_ms - 2.0).abs() < 0.01, "{lag:?}");
        // The trailing empty step is cut; steps without latency keep their replies.
        assert_eq!(r.timeline.len(), 4);
        assert_eq!(r.timeline[0].p99_ms, None);
        assert_eq!(r.timeline[1].p99_ms, Some(2.0));
        assert_eq!(r.timeline[2].replies_per_s, 100.0);
        let server = r.server.as_ref().unwrap();
        assert_eq!(server.peak_rss_mib, 120.0);
        // The window is 2-4 s: the samples at 2.5 and 3.5 s.
        assert_eq!(server.mean_cpu_pct, 140.0);
        let table = r.to_table();
        assert!(table.contains("fraction of echo"), "{table}");
        assert!(table.contains("25.0%"), "{table}");
        assert!(table.contains("nak_AE"), "{table}");
        assert!(table.contains("lag ms") && table.contains("the harness's own"), "{table}");
        assert!(r.to_html().contains("harness send lag"));
        assert!(r.to_html().contains("ACK of the messages that alerted"));
        assert!(r.to_html().contains("slow alert, sent at 1.25 s</th><td>9.00 / 8.50 / 12.25 ms"));
        let json: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(json["baseline"]["fraction"], 0.25);
        assert_eq!(json["errors"]["closed"], 1);
        assert!(table.contains("alert ack          1"), "{table}");
        assert!((r.alert_ack.as_ref().unwrap().p50_ms - 4.0).abs() < 0.01);
        assert!(table.contains("slowest alerts") && table.contains("   1.25 s: 9.00 8.50 12.25"), "{table}");
        assert_eq!(json["slowest_alerts"][0]["ms"][2], 12.25);
    }

    #[test]
    fn the_store_write_stage_says_how_many_messages_a_group_commit_carried() {
        let mut r = sample_report();
        assert_eq!(r.messages_per_store_write(), None, "no stages read");
        let stage = |name: &str, count: u64| Stage { name: name.into(), count, mean_us: 1.0, p50_us: 1.0, p99_us: 1.0 };
        r.stages = vec![stage("commit_wait", 900)];
        assert_eq!(r.messages_per_store_write(), None, "a server without the stage");
        r.stages.push(stage("store_write", 0));
        assert_eq!(r.messages_per_store_write(), None, "no batch in the window");
        r.stages[1].count = 60;
        assert_eq!(r.messages_per_store_write(), Some(15.0));
        assert!(r.to_table().contains("15.0 messages per batch"), "{}", r.to_table());
        assert!(r.to_html().contains("15.0 messages per batch"));
    }

    #[test]
    fn objectives_parse_and_decide() {
        let mut r = sample_report();
        let slo = |s: &str| s.parse::<Slo>().unwrap();
        assert!(r.check(&[
            slo("ack.p99<=10ms"),
            slo("alert.p99 <= 20ms"),
            slo("throughput>=100"),
            slo("echo.fraction>=25%")
        ]));
        assert!(r.check(&[slo("ack.p50<5010us"), slo("ack.max<=0.02s"), slo("errors.nak_AE==1"), slo("rss_mib<=120")]));
        assert!(r.check(&[slo("send_lag.p99<=2.1ms")]));
        assert!(!r.check(&[slo("send_lag.max<1ms")]));
        assert!(!r.check(&[slo("errors==0")]));
        assert_eq!(r.slo[0].measured, Some(2.0));
        assert!(!r.check(&[slo("ack.p99<=9ms")]));
        // Not measured: fails.
        assert!(!r.check(&[slo("fhir.p99<=1000ms")]));
        assert_eq!(r.slo[0].measured, None);
        assert!(r.to_table().contains("FAILED"));
        // The disk's flush floor: an objective on it fails while it was not probed.
        assert!(!r.check(&[slo("fsync.p99<=100ms")]));
        let mut flush = new_histogram();
        flush.record(4_000).unwrap();
        flush.record(8_500).unwrap();
        r.fsync_floor = Some(crate::disk::FsyncFloor {
            dir: "/data".into(),
            write_bytes: crate::disk::WRITE_BYTES,
            fsync: Latency::of(&flush).unwrap(),
        });
        assert!(r.check(&[slo("fsync.p50<=5ms"), slo("fsync.max<=9ms")]));
        assert!(!r.check(&[slo("fsync.p99<=5ms")]));
        let table = r.to_table();
        assert!(table.contains("fsync ms") && table.contains("in /data, before the run"), "{table}");
        let json: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(json["fsync_floor"]["fsync"]["count"], 2);
        assert!(r.to_html().contains("disk flush (fdatasync)"));
        for bad in ["ack.p99", "ack.p98<=1ms", "nothing<=3", "ack.p99<=fast", "errors=0"] {
            assert!(bad.parse::<Slo>().is_err(), "{bad}");
        }
    }
}
