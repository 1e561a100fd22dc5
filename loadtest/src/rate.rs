//! Open-loop MLLP load generator: sends PCD-01 messages on a fixed schedule and reports ACK
//! latency measured from each message's intended send time.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use time::OffsetDateTime;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::mllp::{ack_code, push_frame, read_frame_timeout};
use crate::pace::Pacing;
use crate::pcd01::{PatientDemo, Vitals, oru_r01};
use crate::ward::SimRng;

/// Load-test settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateConfig {
    /// Vigil's MLLP listener, `host:port`.
    pub addr: String,
    /// Target messages per second across all connections.
    pub rate_per_sec: u64,
    /// How long to keep sending; replies are awaited a little longer.
    pub duration: Duration,
    /// Concurrent MLLP connections; messages are dealt to them round-robin.
    pub connections: usize,
    /// Distinct synthetic patients the messages cycle through.
    pub patients: usize,
    /// How senders wait for each intended send time (as `run`'s `--pacing`).
    pub pacing: Pacing,
}

impl Default for RateConfig {
    fn default() -> Self {
        Self {
            addr: "127.0.0.1:2575".to_owned(),
            rate_per_sec: 1000,
            duration: Duration::from_secs(10),
            connections: 4,
            patients: 100,
            pacing: Pacing::default(),
        }
    }
}

/// Outcome of a load test. Latencies are in microseconds from the intended send time.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Messages written to a socket.
    pub sent: u64,
    /// Replies received (any ACK code).
    pub acked: u64,
    /// Messages that got no reply (connection lost, reply timeout): the sum of
    /// [`Report::errors_by_kind`].
    pub errors: u64,
    /// Messages without a reply, by the failure that ended their connection (`ack_timeout`,
    /// `closed`, `io`, ...; the names `run` reports): the failed read and everything still in
    /// flight behind it.
    pub errors_by_kind: BTreeMap<String, u64>,
    /// Reply count per MSA-1 code; `?` for replies without one.
    pub by_code: BTreeMap<String, u64>,
    /// Median ACK latency.
    pub p50_us: u64,
    /// 90th percentile ACK latency.
    pub p90_us: u64,
    /// 99th percentile ACK latency.
    pub p99_us: u64,
    /// 99.9th percentile ACK latency.
    pub p999_us: u64,
    /// Largest ACK latency.
    pub max_us: u64,
    /// Replies per second from the first scheduled send to the last reply.
    pub achieved_rate: f64,
    /// How the senders were paced.
    pub pacing: Pacing,
}

impl Report {
    /// Renders the report as a Markdown section.
    pub fn to_markdown(&self) -> String {
        let ms = |us: u64| format!("{:.3} ms", us as f64 / 1000.0);
        let mut s = String::new();
        // Writing into a String cannot fail.
        let _ = writeln!(s, "## Vigil MLLP load test\n");
        let _ = writeln!(s, "| metric | value |\n| --- | ---: |");
        let _ = writeln!(s, "| sent | {} |", self.sent);
        let _ = writeln!(s, "| acked | {} |", self.acked);
        let _ = writeln!(s, "| errors | {} |", self.errors);
        let _ = writeln!(s, "| achieved rate | {:.1} msg/s |", self.achieved_rate);
        let _ = writeln!(s, "| pacing | {} |", self.pacing.name());
        for (name, v) in [
            ("p50", self.p50_us),
            ("p90", self.p90_us),
            ("p99", self.p99_us),
            ("p99.9", self.p999_us),
            ("max", self.max_us),
        ] {
            let _ = writeln!(s, "| latency {name} | {} |", ms(v));
        }
        let _ = writeln!(s, "\n| ACK code | count |\n| --- | ---: |");
        for (code, n) in &self.by_code {
            let _ = writeln!(s, "| {code} | {n} |");
        }
        if !self.errors_by_kind.is_empty() {
            let _ = writeln!(s, "\n| error | count |\n| --- | ---: |");
            for (kind, n) in &self.errors_by_kind {
                let _ = writeln!(s, "| {kind} | {n} |");
            }
        }
        let _ = writeln!(
            s,
            "\nLatency is measured from each message's scheduled send time (open loop), \
             so server stalls are not hidden by a slowed-down sender."
        );
        s
    }
}

/// Replies still outstanding per connection before the sender waits; keeps memory
/// bounded if the server stops answering (latency still counts from the schedule).
const MAX_IN_FLIGHT: usize = 8192;
const WRITE_CHUNK: usize = 64 * 1024;
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Histogram ceiling: one hour in µs; anything slower is clamped, not dropped.
const HIST_MAX_US: u64 = 3_600_000_000;

struct Shared {
    rate: u64,
    total: u64,
    connections: u64,
    patients: Vec<PatientDemo>,
    run_id: u64,
    start: Instant,
    pacing: Pacing,
}

impl Shared {
    fn intended(&self, i: u64) -> Instant {
        let nanos = u128::from(i) * 1_000_000_000 / u128::from(self.rate);
        self.start + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

struct ConnResult {
    sent: u64,
    replies: u64,
    errors_by_kind: BTreeMap<String, u64>,
    by_code: BTreeMap<String, u64>,
    hist: Histogram<u64>,
    last_reply: Option<Instant>,
}

/// Runs the load test and returns its report. All connections are opened before
/// the schedule starts; a connection lost mid-run is not reopened (its remaining
/// messages are simply not sent, and those in flight count as errors).
pub async fn run_rate(cfg: RateConfig) -> anyhow::Result<Report> {
    anyhow::ensure!(cfg.rate_per_sec > 0, "rate must be positive");
    anyhow::ensure!(cfg.connections > 0, "need at least one connection");
    let total = (cfg.rate_per_sec as f64 * cfg.duration.as_secs_f64()).round() as u64;
    anyhow::ensure!(total > 0, "rate × duration schedules no message");
    let connections = cfg.connections.min(usize::try_from(total).unwrap_or(usize::MAX));

    let mut streams = Vec::with_capacity(connections);
    for n in 0..connections {
        let stream = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(&cfg.addr))
            .await
            .map_err(|_| anyhow::anyhow!("connect to {} timed out", cfg.addr))?
            .with_context(|| format!("connection {n} to {}", cfg.addr))?;
        stream.set_nodelay(true)?;
        streams.push(stream);
    }

    let shared = Arc::new(Shared {
        rate: cfg.rate_per_sec,
        total,
        connections: connections as u64,
        patients: rate_patients(cfg.patients.max(1)),
        run_id: SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0),
        // A short lead so the first scheduled sends are not already late.
        start: Instant::now() + Duration::from_millis(20),
        pacing: cfg.pacing,
    });
    tracing::info!(rate = cfg.rate_per_sec, total, connections, "open-loop load test starting");

    let mut tasks = tokio::task::JoinSet::new();
    for (n, stream) in streams.into_iter().enumerate() {
        tasks.spawn(run_connection(n as u64, stream, shared.clone()));
    }
    let mut hist = new_histogram()?;
    let mut report = Report {
        sent: 0,
        acked: 0,
        errors: 0,
        errors_by_kind: BTreeMap::new(),
        by_code: BTreeMap::new(),
        p50_us: 0,
        p90_us: 0,
        p99_us: 0,
        p999_us: 0,
        max_us: 0,
        achieved_rate: 0.0,
        pacing: cfg.pacing,
    };
    let mut last_reply: Option<Instant> = None;
    while let Some(res) = tasks.join_next().await {
        let r = res.context("connection task failed")??;
        report.sent += r.sent;
        report.acked += r.replies;
        for (kind, n) in r.errors_by_kind {
            report.errors += n;
            *report.errors_by_kind.entry(kind).or_default() += n;
        }
        for (code, n) in r.by_code {
            *report.by_code.entry(code).or_default() += n;
        }
        hist.add(&r.hist).context("merging histograms")?;
        last_reply = last_reply.max(r.last_reply);
    }
    if !hist.is_empty() {
        report.p50_us = hist.value_at_quantile(0.5);
        report.p90_us = hist.value_at_quantile(0.9);
        report.p99_us = hist.value_at_quantile(0.99);
        report.p999_us = hist.value_at_quantile(0.999);
        report.max_us = hist.max();
    }
    if let Some(last) = last_reply {
        let secs = last.saturating_duration_since(shared.start).as_secs_f64();
        if secs > 0.0 {
            report.achieved_rate = report.acked as f64 / secs;
        }
    }
    Ok(report)
}

fn new_histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, HIST_MAX_US, 3).context("creating histogram")
}

pub(crate) fn rate_patients(n: usize) -> Vec<PatientDemo> {
    (0..n)
        .map(|i| PatientDemo {
            mrn: format!("SIM{:06}", i % 1_000_000),
            assigning_authority: "VIGIL_SIM".to_owned(),
            family: "Loadtest".to_owned(),
            given: format!("Patient{i}"),
            birth_date: format!("19{:02}0101", 40 + i % 60),
            sex: if i % 2 == 0 { "F" } else { "M" }.to_owned(),
            unit: format!("LT{}", i / 32),
            room: format!("{:02}", i % 32 + 1),
            bed: "1".to_owned(),
        })
        .collect()
}

async fn run_connection(conn: u64, stream: TcpStream, shared: Arc<Shared>) -> anyhow::Result<ConnResult> {
    let (reader, writer) = stream.into_split();
    let (tx, rx) = mpsc::channel::<Instant>(MAX_IN_FLIGHT);
    let (sent, recv) = tokio::join!(write_loop(conn, writer, tx, &shared), read_loop(conn, reader, rx));
    let mut r = recv?;
    r.sent = sent;
    Ok(r)
}

/// Sends this connection's share of the schedule. Messages that are due are
/// written together, which is where pipelining comes from when the sender or the
/// server falls behind. Returns how many messages were written.
async fn write_loop(conn: u64, mut writer: OwnedWriteHalf, tx: mpsc::Sender<Instant>, shared: &Shared) -> u64 {
    let mut rng = SimRng::new(shared.run_id ^ conn.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut out = Vec::with_capacity(WRITE_CHUNK);
    let mut sent = 0u64;
    let mut i = conn;
    while i < shared.total {
        shared.pacing.until(shared.intended(i)).await;
        let now = Instant::now();
        let mut batch = 0u64;
        while i < shared.total && shared.intended(i) <= now && out.len() < WRITE_CHUNK {
            let patient = &shared.patients[(i % shared.patients.len() as u64) as usize];
            let msg = oru_r01(
                patient,
                &format!("LT-{}", i % shared.patients.len() as u64),
                &stable_vitals(&mut rng),
                &format!("R{:x}-{i}", shared.run_id),
                OffsetDateTime::now_utc(),
            );
            push_frame(&mut out, &msg);
            // The reader must know the intended time before the reply can arrive.
            if tx.send(shared.intended(i)).await.is_err() {
                return sent;
            }
            batch += 1;
            i += shared.connections;
        }
        match tokio::time::timeout(IO_TIMEOUT, writer.write_all(&out)).await {
            Ok(Ok(())) => sent += batch,
            Ok(Err(e)) => {
                tracing::warn!(conn, error = %e, "write failed; connection abandoned");
                return sent;
            }
            Err(_) => {
                tracing::warn!(conn, "write timed out; connection abandoned");
                return sent;
            }
        }
        out.clear();
    }
    sent
}

async fn read_loop(
    conn: u64,
    mut reader: OwnedReadHalf,
    mut rx: mpsc::Receiver<Instant>,
) -> anyhow::Result<ConnResult> {
    let mut r = ConnResult {
        sent: 0,
        replies: 0,
        errors_by_kind: BTreeMap::new(),
        by_code: BTreeMap::new(),
        hist: new_histogram()?,
        last_reply: None,
    };
    let mut buf = Vec::new();
    while let Some(intended) = rx.recv().await {
        match read_frame_timeout(&mut reader, &mut buf, IO_TIMEOUT).await {
            Ok(ack) => {
                let now = Instant::now();
                let us = now.saturating_duration_since(intended).as_micros();
                r.hist.saturating_record(u64::try_from(us).unwrap_or(u64::MAX).clamp(1, HIST_MAX_US));
                r.replies += 1;
                *r.by_code.entry(ack_code(&ack).unwrap_or("?").to_owned()).or_default() += 1;
                r.last_reply = Some(now);
            }
            Err(e) => {
                tracing::warn!(conn, error = %e, "reply read failed; connection abandoned");
                // Everything still scheduled on this connection will never be answered.
                let mut lost = 1u64;
                rx.close();
                while rx.recv().await.is_some() {
                    lost += 1;
                }
                *r.errors_by_kind.entry(crate::load::error_kind(&e).to_owned()).or_default() += lost;
                break;
            }
        }
    }
    Ok(r)
}

pub(crate) fn stable_vitals(rng: &mut SimRng) -> Vitals {
    let sbp = rng.range(110.0, 135.0).round();
    let dbp = rng.range(65.0, 85.0).round();
    Vitals {
        hr: Some(rng.range(60.0, 90.0).round()),
        rr: Some(rng.range(12.0, 18.0).round()),
        spo2: Some(rng.range(95.0, 99.0).round()),
        sbp: Some(sbp),
        dbp: Some(dbp),
        map: Some(((sbp + 2.0 * dbp) / 3.0).round()),
        temp_c: Some((rng.range(36.5, 37.4) * 10.0).round() / 10.0),
        ..Vitals::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mllp::test_support::{Mode, control_id, start};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn open_loop_run_against_ack_server() {
        let (addr, rec) = start(Mode::Ack).await;
        let cfg = RateConfig {
            addr,
            rate_per_sec: 400,
            duration: Duration::from_millis(1500),
            connections: 3,
            patients: 7,
            pacing: Pacing::Precise,
        };
        let report =
            tokio::time::timeout(Duration::from_secs(20), run_rate(cfg)).await.expect("load test hung").unwrap();
        assert_eq!(report.sent, 600, "{report:?}");
        assert_eq!(report.acked, 600);
        assert_eq!(report.errors, 0);
        assert!(report.errors_by_kind.is_empty());
        assert_eq!(report.by_code.get("AA"), Some(&600));
        assert!(report.p50_us > 0);
        assert!(report.p50_us <= report.p90_us && report.p90_us <= report.p99_us);
        assert!(report.p99_us <= report.p999_us && report.p999_us <= report.max_us);
        // Open loop: the schedule, not the server, sets the pace.
        assert!((250.0..=500.0).contains(&report.achieved_rate), "{}", report.achieved_rate);
        let msgs = rec.snapshot();
        assert_eq!(msgs.len(), 600);
        let mut ids: Vec<String> = msgs.iter().map(|m| control_id(m)).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 600, "control ids are unique");

        let md = report.to_markdown();
        assert!(md.contains("| sent | 600 |"));
        assert!(md.contains("| AA | 600 |"));
        assert!(md.contains("latency p99.9"));
        assert!(md.contains("| pacing | precise |"), "{md}");
    }

    #[tokio::test]
    async fn lost_connection_counts_errors_and_returns() {
        let (addr, _) = start(Mode::DropAfter(5)).await;
        let cfg = RateConfig {
            addr,
            rate_per_sec: 500,
            duration: Duration::from_millis(400),
            connections: 1,
            patients: 1,
            pacing: Pacing::Tick,
        };
        let report =
            tokio::time::timeout(Duration::from_secs(20), run_rate(cfg)).await.expect("load test hung").unwrap();
        assert_eq!(report.acked, 5, "{report:?}");
        assert!(report.errors >= 1, "{report:?}");
        // The server hung up (a FIN, or a reset if it left our writes unread): the one
        // connection's end names every error it caused.
        let kinds: Vec<_> = report.errors_by_kind.iter().collect();
        assert!(matches!(kinds[..], [(kind, _)] if kind == "closed" || kind == "io"), "{report:?}");
        assert_eq!(report.errors_by_kind.values().sum::<u64>(), report.errors, "{report:?}");
        assert!(report.to_markdown().contains(&format!("| {} | {} |", kinds[0].0, report.errors)));
    }

    #[tokio::test]
    async fn invalid_config_and_unreachable_server_are_errors() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        drop(l);
        let cfg = RateConfig { addr, ..RateConfig::default() };
        assert!(run_rate(cfg.clone()).await.is_err());
        assert!(run_rate(RateConfig { rate_per_sec: 0, ..cfg.clone() }).await.is_err());
        assert!(run_rate(RateConfig { connections: 0, ..cfg }).await.is_err());
    }
}
