//! The scenario runner: drives a [`Scenario`] against a server and measures it. The MLLP
//! schedule is open loop (each message has an intended send time from the rate and its ramp;
//! latency counts from that time, so a stalled server cannot slow the sender and hide its
//! stall); the deterioration generator and the interacting pharmacy orders register the
//! alerts they must cause, and the harness's own console sessions time each alert against the
//! intended send of the message that caused it; the FHIR gateway posts Observations open loop
//! beside the MLLP schedule; the server's RSS and CPU are sampled from /proc and its per-stage
//! histograms read from /metrics before and after the measured window.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use time::OffsetDateTime;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::mllp::{MllpClient, MllpClientError, ack_code, push_frame, read_frame_timeout};
use crate::orders::{INTERACTING_PAIR, PLAIN_DRUGS, lab_panel, pharmacy_order};
use crate::pcd01::{Acvpu, PatientDemo, Vitals, oru_r01};
use crate::rate::{rate_patients, stable_vitals};
use crate::scenario::{Scenario, intended_offset, scheduled_count};
use crate::server::{ProcSampler, StageSnapshot, scrape_stages};
use crate::ward::SimRng;

/// Replies outstanding per connection before its sender waits (memory stays bounded when the
/// server stops answering; latency still counts from the schedule).
const MAX_IN_FLIGHT: usize = 8192;
const WRITE_CHUNK: usize = 64 * 1024;
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Histogram ceiling: one hour in µs; anything slower is clamped, not dropped.
pub const HIST_MAX_US: u64 = 3_600_000_000;
/// Timeline histograms are coarser (2 significant digits, 60 s ceiling) to stay small.
const SLOT_MAX_US: u64 = 60_000_000;
/// Most points on a timeline.
const MAX_SLOTS: usize = 300;
/// Expected alerts remembered at most.
const MAX_EXPECTED_ALERTS: usize = 100_000;

/// Where the scenario is sent.
#[derive(Debug, Clone, Default)]
pub struct Target {
    /// MLLP listener, `host:port`.
    pub mllp: String,
    /// HTTP listener, `host:port` (consoles, FHIR, /metrics).
    pub http: Option<String>,
    /// Console token (`vigil token --unit '*'`), for the consoles.
    pub console_token: Option<String>,
    /// Gateway token (`vigil token --role gateway`), for the FHIR load.
    pub gateway_token: Option<String>,
    /// Server process, for RSS and CPU from /proc.
    pub pid: Option<u32>,
    /// Read per-stage histograms from `http`'s /metrics.
    pub scrape_metrics: bool,
    /// Bearer token for /metrics when it asks for one.
    pub metrics_token: Option<String>,
}

/// Counters the progress display reads while the run goes on.
#[derive(Debug, Default)]
pub struct Live {
    /// Messages written.
    pub sent: AtomicU64,
    /// Replies read.
    pub acked: AtomicU64,
    /// Failures of any kind so far.
    pub errors: AtomicU64,
    /// Alerts timed by the consoles.
    pub alerts: AtomicU64,
    /// Messages the schedule sends in all.
    pub scheduled: AtomicU64,
}

/// Everything a run measured, before it is summarised into a report.
#[derive(Debug)]
pub struct Measured {
    /// Messages written (MLLP schedule).
    pub sent: u64,
    /// Replies read (MLLP schedule).
    pub acked: u64,
    /// Replies by MSA-1 code.
    pub by_code: BTreeMap<String, u64>,
    /// Failures by kind.
    pub errors: BTreeMap<String, u64>,
    /// ACK latency (µs) of messages intended within the measured window.
    pub ack: Histogram<u64>,
    /// The harness's own lateness (µs): from a measured message's intended send time to when
    /// its connection's sender woke to write it. Part of every ACK latency; a server cannot
    /// be faster than this, and a large one says the harness (or the machine) fell behind.
    pub send_lag: Histogram<u64>,
    /// Replies to messages intended within the measured window.
    pub measured_acked: u64,
    /// Seconds from the start of measuring to the last reply to a measured message (at least
    /// the measured duration).
    pub measured_secs: f64,
    /// Alert latency (µs), one sample per console and expected alert.
    pub alert: Histogram<u64>,
    /// Alerts registered as expected, and times a console saw one.
    pub alerts_expected: u64,
    /// Alert frames the consoles received in all.
    pub alert_frames: u64,
    /// The slowest alerts, on each console.
    pub slowest_alerts: Vec<SlowAlert>,
    /// ACK latency (µs) of the deterioration's crossing messages, the ones each timed alert
    /// answers: an alert's latency less this is its way from durable to the console.
    pub alert_ack: Histogram<u64>,
    /// FHIR response latency (µs), measured window.
    pub fhir: Histogram<u64>,
    /// FHIR answers 201 in the measured window.
    pub fhir_created: u64,
    /// Timeline step.
    pub slot: Duration,
    /// Per step, by intended send time: ACK latency.
    pub timeline: Vec<Histogram<u64>>,
    /// Per step, by reply time: replies.
    pub replies_per_slot: Vec<u64>,
    /// Server samples (seconds from start, RSS bytes, CPU % of one core).
    pub server: Vec<(f64, u64, f64)>,
    /// Per-stage histograms over the measured window, when read from /metrics.
    pub stages: Option<StageSnapshot>,
    /// Wall-clock start.
    pub started_at: OffsetDateTime,
}

/// Message kinds of the MLLP schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Vitals,
    Lab,
    Pharmacy,
    Admit,
}

struct Plan {
    rate: f64,
    ramp: f64,
    total: u64,
    connections: u64,
    patients: Vec<PatientDemo>,
    run_id: u64,
    start: Instant,
    measure_from: Instant,
    measure_until: Instant,
    slot: Duration,
    slots: usize,
    /// Cumulative weights: vitals, lab, pharmacy, admit.
    mix: [f64; 4],
    interaction_every: u64,
    book: Option<Arc<AlertBook>>,
    live: Arc<Live>,
    pacing: crate::pace::Pacing,
}

impl Plan {
    fn intended(&self, i: u64) -> Instant {
        self.start + intended_offset(i, self.rate, self.ramp)
    }

    fn slot_of(&self, at: Instant) -> usize {
        let since = at.saturating_duration_since(self.start);
        ((since.as_nanos() / self.slot.as_nanos().max(1)) as usize).min(self.slots - 1)
    }

    fn kind(&self, i: u64) -> Kind {
        let x = (splitmix(i ^ 0x5eed) % 1_000_000) as f64 / 1_000_000.0 * self.mix[3];
        match () {
            _ if x < self.mix[0] => Kind::Vitals,
            _ if x < self.mix[1] => Kind::Lab,
            _ if x < self.mix[2] => Kind::Pharmacy,
            _ => Kind::Admit,
        }
    }

    /// The `i`-th message; `Some(mrn)` when it must cause an alert.
    fn message(&self, i: u64, rng: &mut SimRng) -> (String, Option<String>) {
        let patient = &self.patients[(i % self.patients.len() as u64) as usize];
        let control_id = format!("L{:x}-{i}", self.run_id);
        let now = OffsetDateTime::now_utc();
        match self.kind(i) {
            Kind::Vitals => {
                let device = format!("LT-{}", i % self.patients.len() as u64);
                (oru_r01(patient, &device, &stable_vitals(rng), &control_id, now), None)
            }
            Kind::Lab => (lab_panel(patient, &control_id, i, now), None),
            Kind::Admit => (crate::adt::adt_a01(patient, &control_id, now), None),
            Kind::Pharmacy => {
                if self.interaction_every > 0 && splitmix(i ^ 0xd7).is_multiple_of(self.interaction_every) {
                    // A patient of its own, so the alert is new and its first frame is timed.
                    let p = special_patient("RX", self.run_id, i);
                    let msg = pharmacy_order(&p, &control_id, &INTERACTING_PAIR, now);
                    (msg, Some(p.mrn))
                } else {
                    let drug = PLAIN_DRUGS[(i % PLAIN_DRUGS.len() as u64) as usize];
                    (pharmacy_order(patient, &control_id, &[drug], now), None)
                }
            }
        }
    }
}

/// A patient of a run's own (deteriorating, or given an interacting order).
fn special_patient(prefix: &str, run_id: u64, n: u64) -> PatientDemo {
    PatientDemo {
        mrn: format!("{prefix}{:x}{n}", run_id & 0xff_ffff_ffff),
        assigning_authority: "VIGIL_SIM".to_owned(),
        family: "Loadtest".to_owned(),
        given: format!("{prefix}{n}"),
        birth_date: "19600101".to_owned(),
        sex: if n.is_multiple_of(2) { "F" } else { "M" }.to_owned(),
        unit: format!("LT{prefix}"),
        room: format!("{:02}", n % 32 + 1),
        bed: "1".to_owned(),
    }
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Alerts the run must cause: the patient's MRN and the intended send time of the message
/// that must cause it. Bounded; the consoles read it.
#[derive(Debug, Default)]
pub struct AlertBook {
    expected: Mutex<HashMap<String, Instant>>,
    registered: AtomicU64,
}

impl AlertBook {
    fn expect(&self, mrn: String, intended: Instant) {
        if let Ok(mut map) = self.expected.lock()
            && map.len() < MAX_EXPECTED_ALERTS
        {
            map.insert(mrn, intended);
            self.registered.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn intended(&self, mrn: &str) -> Option<Instant> {
        self.expected.lock().ok().and_then(|m| m.get(mrn).copied())
    }
}

struct ConnResult {
    sent: u64,
    replies: u64,
    measured_replies: u64,
    last_measured_reply: Option<Instant>,
    by_code: BTreeMap<String, u64>,
    errors: BTreeMap<String, u64>,
    hist: Histogram<u64>,
    send_lag: Histogram<u64>,
    timeline: Vec<Option<Histogram<u64>>>,
    replies_per_slot: Vec<u64>,
}

/// A sent message as its reply's reader needs it.
struct Sent {
    intended: Instant,
    /// When the sender woke to write the batch it went in.
    woke: Instant,
}

/// A histogram for latencies in µs.
pub fn new_histogram() -> Histogram<u64> {
    // Constant bounds within hdrhistogram's limits (low >= 1, high >= 2 low, 3 digits): no input
    // can make this fail.
    Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("constant histogram bounds are valid")
}

fn slot_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, SLOT_MAX_US, 2).expect("constant histogram bounds are valid")
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).clamp(1, HIST_MAX_US)
}

/// Run `scenario` against `target`. `only_mllp`: the schedule alone (no deterioration,
/// consoles or FHIR), as the echo baseline is run.
pub async fn run(scenario: &Scenario, target: &Target, live: Arc<Live>, only_mllp: bool) -> anyhow::Result<Measured> {
    scenario.validate()?;
    let rate = scenario.rate();
    let ramp = scenario.load.ramp_s;
    let total_secs = scenario.total().as_secs_f64();
    let total = scheduled_count(rate, ramp, total_secs);
    anyhow::ensure!(total > 0, "the scenario schedules no message");
    live.scheduled.store(total, Ordering::Relaxed);
    let connections = scenario.load.connections.min(usize::try_from(total).unwrap_or(usize::MAX));
    let run_id = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    let started_at = OffsetDateTime::now_utc();

    let mut streams = Vec::with_capacity(connections);
    for n in 0..connections {
        let stream = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(&target.mllp))
            .await
            .map_err(|_| anyhow::anyhow!("connect to {} timed out", target.mllp))?
            .with_context(|| format!("MLLP connection {n} to {}", target.mllp))?;
        stream.set_nodelay(true)?;
        streams.push(stream);
    }

    let wants_alerts = !only_mllp && (scenario.deterioration.is_some() || scenario.mix.interaction_every > 0);
    let consoles = if only_mllp { None } else { scenario.consoles.clone() };
    let book = wants_alerts.then(|| Arc::new(AlertBook::default()));
    let (stop_consoles, stop_rx) = watch::channel(false);
    let mut console_tasks = tokio::task::JoinSet::new();
    if let (Some(c), Some(book)) = (&consoles, &book) {
        let http = target.http.clone().context("consoles need --http")?;
        let token = target.console_token.clone().context("consoles need --token (vigil token --unit '*')")?;
        let (ready_tx, mut ready_rx) = mpsc::channel::<()>(c.count);
        for n in 0..c.count {
            let url = format!("ws://{http}/ws");
            console_tasks.spawn(console(
                n,
                url,
                token.clone(),
                Arc::clone(book),
                stop_rx.clone(),
                ready_tx.clone(),
                Arc::clone(&live),
            ));
        }
        drop(ready_tx);
        for _ in 0..c.count {
            match tokio::time::timeout(IO_TIMEOUT, ready_rx.recv()).await {
                Ok(Some(())) => {}
                _ => anyhow::bail!("a console did not subscribe in time (is --token a console token?)"),
            }
        }
    } else if wants_alerts {
        tracing::info!("no [consoles] in the scenario: alerts are caused but not timed");
    }

    let slot = Duration::from_secs_f64((total_secs / MAX_SLOTS as f64).max(1.0).ceil());
    let slots = ((total_secs + 60.0) / slot.as_secs_f64()).ceil() as usize + 1;
    let start = Instant::now() + Duration::from_millis(50);
    let plan = Arc::new(Plan {
        rate,
        ramp,
        total,
        connections: connections as u64,
        patients: rate_patients(scenario.patients()),
        run_id,
        start,
        measure_from: start + scenario.measure_from(),
        measure_until: start + scenario.total(),
        slot,
        slots,
        mix: cumulative(scenario),
        interaction_every: scenario.mix.interaction_every,
        book: book.clone(),
        live: Arc::clone(&live),
        pacing: scenario.load.pacing,
    });

    let sampler = target.pid.map(|pid| ProcSampler::spawn(pid, start));
    // /metrics is read when measuring starts (and once now, to fail early if it cannot be) and
    // after the last reply.
    let stages_before = match (&target.http, target.scrape_metrics) {
        (Some(http), true) => {
            scrape_stages(http, target.metrics_token.as_deref()).await.context("reading /metrics")?;
            let (http, token, at) = (http.clone(), target.metrics_token.clone(), plan.measure_from);
            Some(tokio::spawn(async move {
                tokio::time::sleep_until(at).await;
                scrape_stages(&http, token.as_deref()).await
            }))
        }
        _ => None,
    };

    let mut tasks = tokio::task::JoinSet::new();
    for (n, stream) in streams.into_iter().enumerate() {
        tasks.spawn(run_connection(n as u64, stream, Arc::clone(&plan)));
    }
    let deterioration = match (&scenario.deterioration, &book) {
        (Some(d), Some(book)) if !only_mllp => Some(tokio::spawn(deteriorate(
            target.mllp.clone(),
            d.clone(),
            run_id,
            (start, plan.measure_until),
            Arc::clone(book),
            Arc::clone(&live),
            scenario.load.pacing,
        ))),
        _ => None,
    };
    let fhir = match (&scenario.fhir, only_mllp) {
        (Some(f), false) => {
            let http = target.http.clone().context("the FHIR load needs --http")?;
            let token = target.gateway_token.clone().context("the FHIR load needs --gateway-token")?;
            Some(tokio::spawn(fhir_load(http, token, f.clone(), Arc::clone(&plan), scenario.patients())))
        }
        _ => None,
    };

    let mut m = Measured {
        sent: 0,
        acked: 0,
        by_code: BTreeMap::new(),
        errors: BTreeMap::new(),
        ack: new_histogram(),
        send_lag: new_histogram(),
        measured_acked: 0,
        measured_secs: scenario.load.duration_s,
        alert: new_histogram(),
        alerts_expected: 0,
        alert_frames: 0,
        slowest_alerts: Vec::new(),
        alert_ack: new_histogram(),
        fhir: new_histogram(),
        fhir_created: 0,
        slot,
        timeline: (0..slots).map(|_| slot_histogram()).collect(),
        replies_per_slot: vec![0; slots],
        server: Vec::new(),
        stages: None,
        started_at,
    };
    let mut last_measured: Option<Instant> = None;
    while let Some(res) = tasks.join_next().await {
        let r = res.context("connection task failed")??;
        m.sent += r.sent;
        m.acked += r.replies;
        m.measured_acked += r.measured_replies;
        last_measured = last_measured.max(r.last_measured_reply);
        merge_counts(&mut m.by_code, r.by_code);
        merge_counts(&mut m.errors, r.errors);
        m.ack.add(&r.hist).context("merging histograms")?;
        m.send_lag.add(&r.send_lag).context("merging histograms")?;
        for (slot, h) in r.timeline.into_iter().enumerate() {
            if let Some(h) = h {
                m.timeline[slot].add(&h).context("merging histograms")?;
            }
        }
        for (slot, n) in r.replies_per_slot.into_iter().enumerate() {
            m.replies_per_slot[slot] += n;
        }
    }
    if let Some(last) = last_measured {
        m.measured_secs = m.measured_secs.max(last.saturating_duration_since(plan.measure_from).as_secs_f64());
    }
    if let Some(task) = deterioration {
        let (errors, acks) = task.await.context("deterioration task failed")?;
        merge_counts(&mut m.errors, errors);
        m.alert_ack = acks;
    }
    if let Some(task) = fhir {
        let (hist, created, errors) = task.await.context("FHIR task failed")?;
        m.fhir = hist;
        m.fhir_created = created;
        merge_counts(&mut m.errors, errors);
    }
    if let (Some(before), Some(http)) = (stages_before, &target.http) {
        let before = before.await.context("/metrics task failed")?.context("reading /metrics")?;
        let after = scrape_stages(http, target.metrics_token.as_deref()).await.context("reading /metrics")?;
        m.stages = Some(after.since(&before));
    }
    if let Some(c) = &consoles {
        if let Some(book) = &book {
            // Alerts still due get the grace period, then the consoles stop.
            let grace = Duration::from_secs_f64(c.grace_s);
            let deadline = Instant::now() + grace;
            let expected = book.registered.load(Ordering::Relaxed) * c.count as u64;
            while Instant::now() < deadline && live.alerts.load(Ordering::Relaxed) < expected {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            m.alerts_expected = book.registered.load(Ordering::Relaxed);
        }
        let _ = stop_consoles.send(true);
        let mut timed = 0u64;
        let mut samples = Vec::new();
        while let Some(res) = console_tasks.join_next().await {
            let c = res.context("console task failed")?;
            timed += c.hist.len();
            samples.extend(c.timed.into_iter().map(|(mrn, at, us)| (c.n, mrn, at, us)));
            m.alert.add(&c.hist).context("merging histograms")?;
            m.alert_frames += c.frames;
            merge_counts(&mut m.errors, c.errors);
        }
        m.slowest_alerts = slowest_alerts(&samples, plan.start, SLOWEST_ALERTS);
        let missing = (m.alerts_expected * c.count as u64).saturating_sub(timed);
        if missing > 0 {
            *m.errors.entry("alert_missing".to_owned()).or_default() += missing;
        }
    }
    if let Some(sampler) = sampler {
        m.server = sampler.stop().await;
    }
    Ok(m)
}

fn merge_counts(into: &mut BTreeMap<String, u64>, from: BTreeMap<String, u64>) {
    for (k, n) in from {
        *into.entry(k).or_default() += n;
    }
}

fn cumulative(s: &Scenario) -> [f64; 4] {
    let m = &s.mix;
    let a = m.vitals;
    let b = a + m.lab;
    let c = b + m.pharmacy;
    [a, b, c, c + m.admit]
}

async fn run_connection(conn: u64, stream: TcpStream, plan: Arc<Plan>) -> anyhow::Result<ConnResult> {
    let (reader, writer) = stream.into_split();
    let (tx, rx) = mpsc::channel::<Sent>(MAX_IN_FLIGHT);
    let (sent, recv) = tokio::join!(write_loop(conn, writer, tx, &plan), read_loop(reader, rx, &plan));
    let mut r = recv;
    r.sent = sent;
    let unsent = (conn..plan.total).step_by(plan.connections as usize).count() as u64 - sent.min(plan.total);
    if unsent > 0 {
        *r.errors.entry("not_sent".to_owned()).or_default() += unsent;
        plan.live.errors.fetch_add(unsent, Ordering::Relaxed);
    }
    Ok(r)
}

/// Sends this connection's share of the schedule; messages already due are written together
/// (pipelining when the sender or the server falls behind). Returns how many were handed to the
/// socket (written, or lost with it and counted by the reader).
async fn write_loop(conn: u64, mut writer: OwnedWriteHalf, tx: mpsc::Sender<Sent>, plan: &Plan) -> u64 {
    let mut rng = SimRng::new(plan.run_id ^ conn.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut out = Vec::with_capacity(WRITE_CHUNK);
    let mut sent = 0u64;
    let mut i = conn;
    while i < plan.total {
        plan.pacing.until(plan.intended(i)).await;
        let now = Instant::now();
        let mut batch = 0u64;
        while i < plan.total && plan.intended(i) <= now && out.len() < WRITE_CHUNK {
            let (msg, alert_for) = plan.message(i, &mut rng);
            let intended = plan.intended(i);
            if let (Some(mrn), Some(book)) = (alert_for, &plan.book) {
                book.expect(mrn, intended);
            }
            push_frame(&mut out, &msg);
            // The reader must know the intended time before the reply can arrive.
            if tx.send(Sent { intended, woke: now }).await.is_err() {
                // The reader has stopped: what it was handed it counts as lost.
                return sent + batch;
            }
            batch += 1;
            i += plan.connections;
        }
        match tokio::time::timeout(IO_TIMEOUT, writer.write_all(&out)).await {
            Ok(Ok(())) => {
                sent += batch;
                plan.live.sent.fetch_add(batch, Ordering::Relaxed);
            }
            // The batch was handed to the reader, which counts it as lost.
            Ok(Err(e)) => {
                tracing::warn!(conn, error = %e, "write failed; connection abandoned");
                return sent + batch;
            }
            Err(_) => {
                tracing::warn!(conn, "write timed out; connection abandoned");
                return sent + batch;
            }
        }
        out.clear();
    }
    sent
}

/// A failure's name in reports (`run` and `rate`).
pub(crate) fn error_kind(e: &MllpClientError) -> &'static str {
    match e {
        MllpClientError::Io(_) => "io",
        MllpClientError::Timeout(_) => "ack_timeout",
        MllpClientError::ReplyTooLarge => "reply_too_large",
        MllpClientError::Closed => "closed",
        MllpClientError::NotUtf8 => "reply_not_utf8",
        MllpClientError::Broken => "broken",
    }
}

async fn read_loop(mut reader: OwnedReadHalf, mut rx: mpsc::Receiver<Sent>, plan: &Plan) -> ConnResult {
    let mut r = ConnResult {
        sent: 0,
        replies: 0,
        measured_replies: 0,
        last_measured_reply: None,
        by_code: BTreeMap::new(),
        errors: BTreeMap::new(),
        hist: new_histogram(),
        send_lag: new_histogram(),
        timeline: (0..plan.slots).map(|_| None).collect(),
        replies_per_slot: vec![0; plan.slots],
    };
    let mut buf = Vec::new();
    while let Some(sent) = rx.recv().await {
        match read_frame_timeout(&mut reader, &mut buf, IO_TIMEOUT).await {
            Ok(ack) => {
                let now = Instant::now();
                let us = micros(now.saturating_duration_since(sent.intended));
                let code = ack_code(&ack).unwrap_or("?");
                *r.by_code.entry(code.to_owned()).or_default() += 1;
                if !matches!(code, "AA" | "CA") {
                    *r.errors.entry(format!("nak_{code}")).or_default() += 1;
                    plan.live.errors.fetch_add(1, Ordering::Relaxed);
                }
                r.replies += 1;
                plan.live.acked.fetch_add(1, Ordering::Relaxed);
                r.timeline[plan.slot_of(sent.intended)]
                    .get_or_insert_with(slot_histogram)
                    .saturating_record(us.min(SLOT_MAX_US));
                r.replies_per_slot[plan.slot_of(now)] += 1;
                if sent.intended >= plan.measure_from && sent.intended < plan.measure_until {
                    r.hist.saturating_record(us);
                    r.send_lag.saturating_record(micros(sent.woke.saturating_duration_since(sent.intended)));
                    r.measured_replies += 1;
                    r.last_measured_reply = Some(now);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "reply read failed; connection abandoned");
                // Everything still scheduled on this connection will never be answered.
                let mut lost = 1u64;
                rx.close();
                while rx.recv().await.is_some() {
                    lost += 1;
                }
                *r.errors.entry(error_kind(&e).to_owned()).or_default() += lost;
                plan.live.errors.fetch_add(lost, Ordering::Relaxed);
                break;
            }
        }
    }
    r
}

/// Vitals over the qSOFA (RR >= 22, SBP <= 100, new confusion) and NEWS2 thresholds.
fn crossing_vitals() -> Vitals {
    Vitals {
        hr: Some(132.0),
        rr: Some(30.0),
        spo2: Some(88.0),
        sbp: Some(84.0),
        dbp: Some(46.0),
        map: Some(59.0),
        temp_c: Some(39.4),
        gcs: Some(13.0),
        fio2: Some(21.0),
        o2_flow: Some(0.0),
        acvpu: Some(Acvpu::Confusion),
    }
}

/// The deterioration generator: stable vitals for each chosen patient at the start, then
/// each one's crossing at its time; crossings after the schedule's end are not sent (a shorter
/// `--duration` keeps the ones that fit). One connection of its own, closed loop (the rate is
/// low); returns failures by kind.
async fn deteriorate(
    addr: String,
    d: crate::scenario::Deterioration,
    run_id: u64,
    (start, end): (Instant, Instant),
    book: Arc<AlertBook>,
    live: Arc<Live>,
    pacing: crate::pace::Pacing,
) -> (BTreeMap<String, u64>, Histogram<u64>) {
    let mut errors = BTreeMap::new();
    let mut acks = new_histogram();
    let fail = |kind: &str, errors: &mut BTreeMap<String, u64>| {
        *errors.entry(kind.to_owned()).or_default() += 1;
        live.errors.fetch_add(1, Ordering::Relaxed);
    };
    let mut client = match MllpClient::connect(&addr, IO_TIMEOUT).await {
        Ok(c) => c,
        Err(_) => {
            for _ in 0..d.patients {
                fail("deterioration_connect", &mut errors);
            }
            return (errors, acks);
        }
    };
    let crossing = |k: usize| start + Duration::from_secs_f64(d.first_at_s + d.every_s * k as f64);
    let fit = (0..d.patients).take_while(|&k| crossing(k) <= end).count() as u64;
    let patients: Vec<PatientDemo> = (0..fit).map(|k| special_patient("DT", run_id, k)).collect();
    let mut rng = SimRng::new(run_id ^ 0xde7e);
    for (k, p) in patients.iter().enumerate() {
        let msg = oru_r01(
            p,
            &format!("DT-{k}"),
            &stable_vitals(&mut rng),
            &format!("D{run_id:x}-{k}-0"),
            OffsetDateTime::now_utc(),
        );
        send_checked(&mut client, &addr, &msg, &mut errors, &live).await;
    }
    for (k, p) in patients.into_iter().enumerate() {
        let intended = crossing(k);
        book.expect(p.mrn.clone(), intended);
        pacing.until(intended).await;
        let msg = oru_r01(
            &p,
            &format!("DT-{k}"),
            &crossing_vitals(),
            &format!("D{run_id:x}-{k}-1"),
            OffsetDateTime::now_utc(),
        );
        if send_checked(&mut client, &addr, &msg, &mut errors, &live).await {
            acks.saturating_record(micros(Instant::now().saturating_duration_since(intended)));
        }
    }
    (errors, acks)
}

/// Sends `msg` and reads its ACK; whether it was accepted (a failure is counted in `errors`).
async fn send_checked(
    client: &mut MllpClient,
    addr: &str,
    msg: &str,
    errors: &mut BTreeMap<String, u64>,
    live: &Live,
) -> bool {
    let kind = match client.send(msg).await {
        Ok(ack) if matches!(ack_code(&ack), Some("AA" | "CA")) => return true,
        Ok(_) => "deterioration_nak",
        Err(e) => {
            // One reconnect per failure: the crossings that follow still get their chance.
            if let Ok(c) = MllpClient::connect(addr, IO_TIMEOUT).await {
                *client = c;
            }
            error_kind(&e)
        }
    };
    *errors.entry(format!("deterioration_{kind}")).or_default() += 1;
    live.errors.fetch_add(1, Ordering::Relaxed);
    false
}

struct ConsoleResult {
    n: usize,
    hist: Histogram<u64>,
    /// Each timed alert: the patient, the causing message's intended send, the latency (µs).
    timed: Vec<(String, Instant, u64)>,
    frames: u64,
    errors: BTreeMap<String, u64>,
}

/// One of a run's slowest alerts, as every console saw it: whether an alert was slow on every
/// console (the server's path) or on one (that console's session, or the harness's own task).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SlowAlert {
    /// The causing message's intended send time, seconds from the start of the schedule (the
    /// timeline's seconds).
    pub at_s: f64,
    /// Latency in ms on each console that timed it, in console order.
    pub ms: Vec<f64>,
}

impl SlowAlert {
    /// How many of a report's slowest alerts the text and HTML reports show (the JSON has all).
    pub const SHOWN: usize = 5;

    /// Each console's latency, `sep` between them (`9.95 10.45`).
    pub fn ms_text(&self, sep: &str) -> String {
        self.ms.iter().map(|ms| format!("{ms:.2}")).collect::<Vec<_>>().join(sep)
    }
}

/// Slowest alerts kept in a report.
pub const SLOWEST_ALERTS: usize = 10;

/// The `keep` alerts whose slowest console was slowest, from each console's timed alerts
/// (console number, patient, intended send, latency µs), slowest first.
pub fn slowest_alerts(timed: &[(usize, String, Instant, u64)], origin: Instant, keep: usize) -> Vec<SlowAlert> {
    /// Per patient: the causing message's intended send, and (console, latency µs) per console.
    type Seen = (Instant, Vec<(usize, u64)>);
    let mut by_patient: HashMap<&str, Seen> = HashMap::new();
    for (console, mrn, intended, us) in timed {
        by_patient.entry(mrn).or_insert_with(|| (*intended, Vec::new())).1.push((*console, *us));
    }
    let mut alerts: Vec<(u64, SlowAlert)> = by_patient
        .into_values()
        .map(|(intended, mut seen)| {
            seen.sort_unstable();
            let worst = seen.iter().map(|(_, us)| *us).max().unwrap_or(0);
            let at_s = intended.saturating_duration_since(origin).as_secs_f64();
            (worst, SlowAlert { at_s, ms: seen.iter().map(|(_, us)| *us as f64 / 1000.0).collect() })
        })
        .collect();
    alerts.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.at_s.total_cmp(&b.1.at_s)));
    alerts.into_iter().take(keep).map(|(_, a)| a).collect()
}

/// One console session: subscribes to every unit of its token, and on the first `active`
/// frame of a new alert for an expected patient records the time since that patient's
/// message was intended to be sent.
async fn console(
    n: usize,
    url: String,
    token: String,
    book: Arc<AlertBook>,
    mut stop: watch::Receiver<bool>,
    ready: mpsc::Sender<()>,
    live: Arc<Live>,
) -> ConsoleResult {
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

    let mut result = ConsoleResult { n, hist: new_histogram(), timed: Vec::new(), frames: 0, errors: BTreeMap::new() };
    let fail = |kind: &str, result: &mut ConsoleResult| {
        *result.errors.entry(format!("console_{kind}")).or_default() += 1;
        live.errors.fetch_add(1, Ordering::Relaxed);
    };
    let Ok(mut request) = url.as_str().into_client_request() else {
        fail("bad_url", &mut result);
        return result;
    };
    let Ok(auth) = format!("Bearer {token}").parse() else {
        fail("bad_token", &mut result);
        return result;
    };
    request.headers_mut().insert("authorization", auth);
    let ws = match tokio::time::timeout(IO_TIMEOUT, tokio_tungstenite::connect_async(request)).await {
        Ok(Ok((ws, _))) => ws,
        _ => {
            fail("connect", &mut result);
            return result;
        }
    };
    let (mut tx, mut rx) = ws.split();
    let sub = json!({ "type": "subscribe", "units": [] });
    if tx.send(Message::Text(sub.to_string().into())).await.is_err() {
        fail("subscribe", &mut result);
        return result;
    }
    let mut seen_alerts: HashSet<String> = HashSet::new();
    let mut timed: HashSet<String> = HashSet::new();
    let mut subscribed = false;
    loop {
        let frame = tokio::select! {
            f = rx.next() => f,
            _ = stop.changed() => break,
        };
        let text = match frame {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(_))) | None => {
                fail("closed", &mut result);
                break;
            }
            Some(Ok(_)) => continue,
            Some(Err(_)) => {
                fail("io", &mut result);
                break;
            }
        };
        let now = Instant::now();
        let Ok(v) = serde_json::from_str::<Value>(&text) else {
            fail("bad_frame", &mut result);
            continue;
        };
        match v["type"].as_str() {
            Some("snapshot" | "subscribed") if !subscribed => {
                subscribed = true;
                let _ = ready.send(()).await;
            }
            Some("alert") => {
                result.frames += 1;
                let alert = &v["alert"];
                let (Some(id), Some(mrn)) = (alert["id"].as_str(), alert["patient"]["mrn"].as_str()) else { continue };
                if alert["status"].as_str() != Some("active") || !seen_alerts.insert(id.to_owned()) {
                    continue;
                }
                if timed.contains(mrn) {
                    continue;
                }
                if let Some(intended) = book.intended(mrn) {
                    timed.insert(mrn.to_owned());
                    let us = micros(now.saturating_duration_since(intended));
                    result.hist.saturating_record(us);
                    result.timed.push((mrn.to_owned(), intended, us));
                    live.alerts.fetch_add(1, Ordering::Relaxed);
                }
            }
            Some("error") => fail("error_frame", &mut result),
            _ => {}
        }
        if seen_alerts.len() > MAX_EXPECTED_ALERTS {
            seen_alerts.clear();
        }
    }
    tracing::debug!(console = n, frames = result.frames, "console stopped");
    let _ = tx.send(Message::Close(None)).await;
    result
}

/// The FHIR gateway: heart-rate Observations by single POSTs, open loop per connection.
async fn fhir_load(
    http: String,
    token: String,
    f: crate::scenario::FhirLoad,
    plan: Arc<Plan>,
    patients: usize,
) -> (Histogram<u64>, u64, BTreeMap<String, u64>) {
    let total =
        scheduled_count(f.rate, plan.ramp, plan.measure_until.saturating_duration_since(plan.start).as_secs_f64());
    let mut tasks = tokio::task::JoinSet::new();
    let stop = Arc::new(AtomicBool::new(false));
    for c in 0..f.connections as u64 {
        let (http, token, plan, stop) = (http.clone(), token.clone(), Arc::clone(&plan), Arc::clone(&stop));
        let (rate, connections) = (f.rate, f.connections as u64);
        tasks.spawn(async move {
            let mut hist = new_histogram();
            let mut created = 0u64;
            let mut errors: BTreeMap<String, u64> = BTreeMap::new();
            let mut client: Option<crate::fhir::HttpClient> = None;
            let mut j = c;
            while j < total && !stop.load(Ordering::Relaxed) {
                let intended = plan.start + intended_offset(j, rate, plan.ramp);
                plan.pacing.until(intended).await;
                let body = fhir_observation(j, patients, plan.run_id).to_string();
                if client.is_none() {
                    client = crate::fhir::HttpClient::connect(&http, IO_TIMEOUT).await.ok();
                }
                let answer = match client.as_mut() {
                    Some(cl) => {
                        cl.post("/fhir/Observation", &token, "application/fhir+json", body.as_bytes()).await.ok()
                    }
                    None => None,
                };
                let measured = intended >= plan.measure_from && intended < plan.measure_until;
                match answer {
                    Some((201, _)) => {
                        if measured {
                            hist.saturating_record(micros(intended.elapsed()));
                            created += 1;
                        }
                    }
                    Some((status, _)) => *errors.entry(format!("fhir_{status}")).or_default() += 1,
                    None => {
                        client = None;
                        *errors.entry("fhir_io".to_owned()).or_default() += 1;
                    }
                }
                j += connections;
            }
            (hist, created, errors)
        });
    }
    let mut hist = new_histogram();
    let mut created = 0;
    let mut errors = BTreeMap::new();
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok((h, c, e)) => {
                let _ = hist.add(&h);
                created += c;
                let n: u64 = e.values().sum();
                plan.live.errors.fetch_add(n, Ordering::Relaxed);
                merge_counts(&mut errors, e);
            }
            Err(_) => *errors.entry("fhir_task".to_owned()).or_default() += 1,
        }
    }
    (hist, created, errors)
}

fn fhir_observation(j: u64, patients: usize, run: u64) -> Value {
    json!({
        "resourceType": "Observation",
        "status": "final",
        "identifier": [{ "system": "urn:ietf:rfc:3986", "value": format!("urn:vigil-load:{run:x}-{j}") }],
        "code": { "coding": [{ "system": "urn:iso:std:iso:11073:10101", "code": "147842" }, { "system": "http://loinc.org", "code": "8867-4" }] },
        "subject": { "identifier": { "system": crate::fhir::SIM_SYSTEM, "value": format!("FG{:06}", j % patients.max(1) as u64) } },
        "effectiveDateTime": OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
        "valueQuantity": { "value": 60 + j % 40, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min" },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::{Load, Mix};

    fn scenario(rate: f64, ramp: f64, warmup: f64, duration: f64, mix: Mix) -> Scenario {
        Scenario {
            name: "t".into(),
            description: String::new(),
            load: Load {
                rate: Some(rate),
                beds: None,
                interval_s: None,
                connections: 3,
                patients: Some(20),
                ramp_s: ramp,
                warmup_s: warmup,
                duration_s: duration,
                pacing: crate::pace::Pacing::default(),
            },
            mix,
            deterioration: None,
            fhir: None,
            consoles: None,
        }
    }

    #[test]
    fn the_slowest_alerts_are_those_whose_slowest_console_was_slowest_with_every_console_beside() {
        let origin = Instant::now();
        let at = |s: f64| origin + Duration::from_secs_f64(s);
        let timed = vec![
            (1, "p1".to_owned(), at(6.0), 2_000),
            (0, "p1".to_owned(), at(6.0), 1_500),
            (0, "p2".to_owned(), at(6.1), 1_000),
            (1, "p2".to_owned(), at(6.1), 30_000),
            (0, "p3".to_owned(), at(6.2), 9_000),
            (1, "p3".to_owned(), at(6.2), 9_500),
        ];
        let slow = slowest_alerts(&timed, origin, 2);
        assert_eq!(slow.len(), 2);
        // p2: one console slow (30 ms), the other not: console order kept.
        assert!((slow[0].at_s - 6.1).abs() < 1e-9, "{slow:?}");
        assert_eq!(slow[0].ms, vec![1.0, 30.0]);
        assert_eq!(slow[1].ms, vec![9.0, 9.5]);
        assert!(slowest_alerts(&[], origin, 10).is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_mixed_schedule_against_the_echo_server_is_all_answered_and_only_the_window_measured() {
        let (addr, stop, _task) = crate::echo::spawn("127.0.0.1:0").await.unwrap();
        let mix = Mix { vitals: 2.0, lab: 1.0, pharmacy: 1.0, admit: 1.0, interaction_every: 0 };
        // 200/s: 0.5 s ramp (50 messages), 0.5 s warm-up (100), 1 s measured (200).
        let s = scenario(200.0, 0.5, 0.5, 1.0, mix);
        let target = Target { mllp: addr, ..Target::default() };
        let live = Arc::new(Live::default());
        let m = tokio::time::timeout(Duration::from_secs(30), run(&s, &target, Arc::clone(&live), false))
            .await
            .expect("run hung")
            .unwrap();
        assert_eq!(m.sent, 350, "{:?}", m.errors);
        assert_eq!(m.acked, 350);
        assert!(m.errors.is_empty(), "{:?}", m.errors);
        assert_eq!(m.by_code.get("AA"), Some(&350));
        assert_eq!(m.measured_acked, 200);
        assert_eq!(m.ack.len(), 200);
        assert_eq!(live.acked.load(Ordering::Relaxed), 350);
        assert_eq!(m.timeline.iter().map(|h| h.len()).sum::<u64>(), 350);
        assert_eq!(m.replies_per_slot.iter().sum::<u64>(), 350);
        assert!(m.measured_secs >= 1.0);
        stop.send(true).unwrap();
    }

    #[tokio::test]
    async fn a_server_that_drops_connections_shows_as_errors_by_kind() {
        let (addr, _) = crate::mllp::test_support::start(crate::mllp::test_support::Mode::DropAfter(5)).await;
        let s = scenario(300.0, 0.0, 0.0, 0.5, Mix::default());
        let target = Target { mllp: addr, ..Target::default() };
        let m = tokio::time::timeout(Duration::from_secs(30), run(&s, &target, Arc::default(), false))
            .await
            .expect("run hung")
            .unwrap();
        assert_eq!(m.acked, 15, "{m:?}");
        let lost: u64 = m.errors.values().sum();
        assert_eq!(lost, 150 - 15, "{:?}", m.errors);
        assert!(m.errors.keys().all(|k| ["closed", "io", "not_sent"].contains(&k.as_str())), "{:?}", m.errors);
    }

    #[test]
    fn the_mix_follows_its_weights() {
        let s = scenario(
            10.0,
            0.0,
            0.0,
            1.0,
            Mix { vitals: 3.0, lab: 1.0, pharmacy: 0.0, admit: 0.0, interaction_every: 0 },
        );
        let plan = Plan {
            rate: 10.0,
            ramp: 0.0,
            total: 10,
            connections: 1,
            patients: rate_patients(3),
            run_id: 1,
            start: Instant::now(),
            measure_from: Instant::now(),
            measure_until: Instant::now(),
            slot: Duration::from_secs(1),
            slots: 2,
            mix: cumulative(&s),
            interaction_every: 0,
            book: None,
            live: Arc::default(),
            pacing: crate::pace::Pacing::default(),
        };
        let kinds: Vec<Kind> = (0..4000).map(|i| plan.kind(i)).collect();
        let labs = kinds.iter().filter(|k| **k == Kind::Lab).count();
        assert!((800..1200).contains(&labs), "{labs}");
        assert!(kinds.iter().all(|k| matches!(k, Kind::Vitals | Kind::Lab)));
    }

    #[test]
    fn crossing_vitals_meet_qsofa() {
        let v = crossing_vitals();
        assert!(v.rr.unwrap() >= 22.0 && v.sbp.unwrap() <= 100.0 && v.gcs.unwrap() < 15.0);
    }
}
