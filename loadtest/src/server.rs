//! The server seen from outside while it is under load: RSS and CPU sampled from
//! `/proc/<pid>` (Linux), and the per-stage histograms (`vigil_stage_seconds{stage=...}`)
//! read from `/metrics` before and after the measured window, so a report says where the time
//! went in that window alone.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

/// The per-stage histogram's name on /metrics (defined by the server in src/http/metrics.rs).
pub const STAGE_METRIC: &str = "vigil_stage_seconds";
/// Largest /metrics answer read.
const MAX_METRICS_BYTES: usize = 16 << 20;
const SAMPLE_EVERY: Duration = Duration::from_millis(500);
/// Kernel clock ticks per second of /proc/<pid>/stat times (USER_HZ, 100 on Linux).
const USER_HZ: f64 = 100.0;
/// Samples kept at most (two hours at two a second).
const MAX_SAMPLES: usize = 14_400;

/// Samples a process's RSS and CPU in the background.
pub struct ProcSampler {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Vec<(f64, u64, f64)>>,
}

impl ProcSampler {
    /// Start sampling `pid`; times are seconds from `start`.
    pub fn spawn(pid: u32, start: Instant) -> ProcSampler {
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut last: Option<(Instant, u64)> = None;
            loop {
                if let (Some(ticks), Some(rss)) = (cpu_ticks(pid), rss_bytes(pid)) {
                    let now = Instant::now();
                    if let Some((at, before)) = last {
                        let secs = now.saturating_duration_since(at).as_secs_f64().max(1e-3);
                        let cpu = ticks.saturating_sub(before) as f64 / USER_HZ / secs * 100.0;
                        if samples.len() < MAX_SAMPLES {
                            samples.push((now.saturating_duration_since(start).as_secs_f64(), rss, cpu));
                        }
                    }
                    last = Some((now, ticks));
                }
                tokio::select! {
                    _ = tokio::time::sleep(SAMPLE_EVERY) => {}
                    _ = stopped.changed() => break,
                }
            }
            samples
        });
        ProcSampler { stop, task }
    }

    /// Stop and return the samples: (seconds, RSS bytes, CPU % of one core).
    pub async fn stop(self) -> Vec<(f64, u64, f64)> {
        let _ = self.stop.send(true);
        self.task.await.unwrap_or_default()
    }
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_cpu_ticks(&stat)
}

fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_rss(&status)
}

fn parse_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// One stage's histogram: cumulative bucket counts by upper bound (seconds), sum and count.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StageHistogram {
    /// (upper bound in seconds, cumulative count), ascending; the last bound is +Inf.
    pub buckets: Vec<(f64, f64)>,
    /// Sum of the observations, seconds.
    pub sum: f64,
    /// Observations.
    pub count: f64,
}

impl StageHistogram {
    /// Mean, seconds.
    pub fn mean(&self) -> Option<f64> {
        (self.count > 0.0).then(|| self.sum / self.count)
    }

    /// The `q` quantile, interpolated linearly within its bucket (an estimate: the buckets are
    /// the resolution); the last finite bound when it falls in +Inf.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count <= 0.0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * self.count;
        let mut lower = (0.0, 0.0);
        for &(le, cumulative) in &self.buckets {
            if cumulative >= rank {
                if !le.is_finite() {
                    return Some(lower.0);
                }
                let width = cumulative - lower.1;
                let within = if width > 0.0 { (rank - lower.1) / width } else { 1.0 };
                return Some(lower.0 + (le - lower.0) * within);
            }
            lower = (le, cumulative);
        }
        Some(lower.0)
    }

    fn minus(&self, before: &StageHistogram) -> StageHistogram {
        let buckets = self
            .buckets
            .iter()
            .map(|&(le, n)| {
                let b = before.buckets.iter().find(|(l, _)| *l == le || (l.is_infinite() && le.is_infinite()));
                (le, (n - b.map_or(0.0, |b| b.1)).max(0.0))
            })
            .collect();
        StageHistogram { buckets, sum: (self.sum - before.sum).max(0.0), count: (self.count - before.count).max(0.0) }
    }
}

/// Every stage's histogram at one moment, or between two.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StageSnapshot {
    /// By stage name.
    pub stages: BTreeMap<String, StageHistogram>,
}

impl StageSnapshot {
    /// What was observed between `before` and this snapshot.
    pub fn since(&self, before: &StageSnapshot) -> StageSnapshot {
        let stages = self
            .stages
            .iter()
            .map(|(name, h)| (name.clone(), before.stages.get(name).map_or_else(|| h.clone(), |b| h.minus(b))))
            .collect();
        StageSnapshot { stages }
    }

    /// Parse the stage histograms out of a Prometheus text exposition.
    pub fn parse(text: &str) -> StageSnapshot {
        let mut stages: BTreeMap<String, StageHistogram> = BTreeMap::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix(STAGE_METRIC) else { continue };
            let (suffix, rest) = rest.split_once('{').unwrap_or((rest, ""));
            let Some((labels, value)) = rest.rsplit_once('}') else { continue };
            let Ok(value) = value.trim().parse::<f64>() else { continue };
            let label = |name: &str| {
                labels.split(',').find_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    (k.trim() == name).then(|| v.trim().trim_matches('"').to_owned())
                })
            };
            let Some(stage) = label("stage") else { continue };
            let h = stages.entry(stage).or_default();
            match suffix {
                "_bucket" => {
                    let le = match label("le").as_deref() {
                        Some("+Inf") => f64::INFINITY,
                        Some(le) => match le.parse() {
                            Ok(le) => le,
                            Err(_) => continue,
                        },
                        None => continue,
                    };
                    h.buckets.push((le, value));
                }
                "_sum" => h.sum = value,
                "_count" => h.count = value,
                _ => {}
            }
        }
        for h in stages.values_mut() {
            h.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        }
        StageSnapshot { stages }
    }
}

/// GET `/metrics` from `http` (`host:port`) and parse its stage histograms.
pub async fn scrape_stages(http: &str, token: Option<&str>) -> anyhow::Result<StageSnapshot> {
    let text = get_metrics(http, token).await?;
    Ok(StageSnapshot::parse(&text))
}

/// The /metrics text (HTTP/1.0, so the answer is neither chunked nor kept alive).
pub async fn get_metrics(http: &str, token: Option<&str>) -> anyhow::Result<String> {
    let exchange = async {
        let mut stream = TcpStream::connect(http).await?;
        let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        stream.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {http}\r\n{auth}\r\n").as_bytes()).await?;
        let mut body = Vec::new();
        (&mut stream).take(MAX_METRICS_BYTES as u64 + 1).read_to_end(&mut body).await?;
        Ok::<_, std::io::Error>(body)
    };
    let body = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| anyhow::anyhow!("GET /metrics timed out"))??;
    anyhow::ensure!(body.len() <= MAX_METRICS_BYTES, "/metrics answer over {MAX_METRICS_BYTES} bytes");
    let text = String::from_utf8_lossy(&body);
    let (head, rest) = text.split_once("\r\n\r\n").ok_or_else(|| anyhow::anyhow!("/metrics: malformed answer"))?;
    let status = head.split_whitespace().nth(1).unwrap_or("?");
    anyhow::ensure!(status == "200", "/metrics answered {status}");
    Ok(rest.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_fields_parse() {
        let stat = "1234 (vigil (x) y) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0 100 1000 200";
        assert_eq!(parse_cpu_ticks(stat), Some(300));
        assert_eq!(parse_cpu_ticks("garbage"), None);
        assert_eq!(parse_rss("Name:\tvigil\nVmRSS:\t  2048 kB\n"), Some(2 * 1024 * 1024));
        assert_eq!(parse_rss("Name:\tvigil\n"), None);
    }

    #[test]
    fn our_own_process_is_sampled() {
        let pid = std::process::id();
        assert!(cpu_ticks(pid).is_some());
        assert!(rss_bytes(pid).is_some_and(|b| b > 0));
    }

    const BEFORE: &str = "# TYPE vigil_stage_seconds histogram\n\
        vigil_stage_seconds_bucket{stage=\"parse\",le=\"0.001\"} 10\n\
        vigil_stage_seconds_bucket{stage=\"parse\",le=\"0.002\"} 10\n\
        vigil_stage_seconds_bucket{stage=\"parse\",le=\"+Inf\"} 10\n\
        vigil_stage_seconds_sum{stage=\"parse\"} 0.005\n\
        vigil_stage_seconds_count{stage=\"parse\"} 10\n\
        vigil_messages_accepted_total 3\n";
    const AFTER: &str = "vigil_stage_seconds_bucket{stage=\"parse\",le=\"0.001\"} 60\n\
        vigil_stage_seconds_bucket{stage=\"parse\",le=\"0.002\"} 110\n\
        vigil_stage_seconds_bucket{stage=\"parse\",le=\"+Inf\"} 110\n\
        vigil_stage_seconds_sum{stage=\"parse\"} 0.105\n\
        vigil_stage_seconds_count{stage=\"parse\"} 110\n\
        vigil_stage_seconds_bucket{stage=\"rules\",le=\"0.001\"} 1\n\
        vigil_stage_seconds_bucket{stage=\"rules\",le=\"+Inf\"} 2\n\
        vigil_stage_seconds_sum{stage=\"rules\"} 0.5\n\
        vigil_stage_seconds_count{stage=\"rules\"} 2\n";

    #[test]
    fn stage_histograms_are_diffed_and_read() {
        let before = StageSnapshot::parse(BEFORE);
        let after = StageSnapshot::parse(AFTER);
        assert_eq!(before.stages.len(), 1);
        let window = after.since(&before);
        let parse = &window.stages["parse"];
        assert_eq!(parse.count, 100.0);
        assert!((parse.mean().unwrap() - 0.001).abs() < 1e-12);
        // 50 in (0, 1 ms], 50 in (1 ms, 2 ms]: the median sits at the first bucket's top.
        assert!((parse.quantile(0.5).unwrap() - 0.001).abs() < 1e-12);
        assert!((parse.quantile(0.75).unwrap() - 0.0015).abs() < 1e-12);
        let rules = &window.stages["rules"];
        assert_eq!(rules.count, 2.0);
        // The slower half is past the last finite bound: reported as that bound.
        assert_eq!(rules.quantile(0.99), Some(0.001));
        assert_eq!(StageHistogram::default().quantile(0.5), None);
    }
}
