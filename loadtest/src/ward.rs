//! Simulated ward for demos: one synthetic patient per bed, admitted with an ADT^A01 (unit,
//! room, bed) and then streaming PCD-01 vitals over MLLP with the bedside charting a NEWS2
//! needs (FiO2 and oxygen flow, ACVPU, GCS); a few of them drifting towards sepsis, put on
//! oxygen and becoming confused as they do.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use time::OffsetDateTime;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::adt::adt_a01;
use crate::mllp::{MllpClient, ack_code};
use crate::pcd01::{Acvpu, PatientDemo, Vitals, oru_r01};

/// Ward simulation settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WardConfig {
    /// Number of occupied beds, one patient and one MLLP connection each.
    pub beds: usize,
    /// Mean time between two messages from one bed (each wait is jittered ±10 %).
    pub interval: Duration,
    /// How many patients deteriorate (capped at `beds`).
    pub deteriorating: usize,
    /// Time for a deteriorating patient to go from baseline to full sepsis.
    pub deterioration_period: Duration,
    /// Time a deteriorating patient stays at full sepsis before recovering (treated), back to
    /// baseline over one deterioration period; `None`: never recovers.
    pub recover_after: Option<Duration>,
    /// Points of care written to PV1-3.1; the beds are split between them in order (the
    /// first `beds / units.len()` on the first unit, ...). Two beds (`A`, `B`) per room.
    pub units: Vec<String>,
    /// Seed for patients, baselines and noise; same seed, same ward.
    pub seed: u64,
    /// Beds whose monitor sits behind a FHIR gateway: their vitals go to `/fhir` as a
    /// transaction Bundle instead of PCD-01 over MLLP (the admission stays ADT over MLLP, as
    /// an EMR sends it). `None`: every bed sends HL7.
    pub fhir: Option<FhirGateway>,
}

/// A simulated FHIR device gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FhirGateway {
    /// Vigil's HTTP listener, `host:port`.
    pub http_addr: String,
    /// A token with the gateway role.
    pub token: String,
    /// Every `every`-th bed (1-based numbers divisible by it) sends FHIR; 0 for none.
    pub every: usize,
}

impl Default for WardConfig {
    fn default() -> Self {
        Self {
            beds: 12,
            interval: Duration::from_secs(3),
            deteriorating: 2,
            deterioration_period: Duration::from_secs(180),
            recover_after: None,
            units: vec!["ICU".to_owned()],
            seed: 42,
            fhir: None,
        }
    }
}

/// Totals over the whole run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WardStats {
    /// Messages written to a connection.
    pub sent: u64,
    /// Replies with a positive code (`AA`/`CA`).
    pub acked: u64,
    /// Replies with any other (or no) code.
    pub naks: u64,
    /// Sends that got no reply (I/O error, timeout, dropped connection). Failed
    /// connects while the server is down are not counted: they are expected at start-up.
    pub errors: u64,
}

#[derive(Debug, Default)]
struct Counters {
    sent: AtomicU64,
    acked: AtomicU64,
    naks: AtomicU64,
    errors: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> WardStats {
        WardStats {
            sent: self.sent.load(Ordering::Relaxed),
            acked: self.acked.load(Ordering::Relaxed),
            naks: self.naks.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
        }
    }
}

/// Vitals at which a deteriorating patient arrives at the end of the period.
const SEPSIS: Baseline = Baseline { hr: 125.0, rr: 30.0, spo2: 89.0, sbp: 85.0, dbp: 45.0, temp: 39.2 };
/// Fraction of the deterioration period after which GCS falls to 13 (ACVPU: new confusion).
const GCS_DROP_AT: f64 = 2.0 / 3.0;
/// Fraction of the deterioration period after which a deteriorating patient is put on oxygen
/// (nasal cannula, 2 L/min, FiO2 about 28 %) ...
const OXYGEN_AT: f64 = 0.5;
/// ... and after which the flow is raised to 4 L/min (FiO2 about 36 %).
const MORE_OXYGEN_AT: f64 = 0.8;
/// Room air.
const AIR_FIO2: f64 = 21.0;
/// GCS is charted by a nurse, so only every few monitor messages carry one.
const GCS_EVERY: u64 = 5;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Runs the ward against `mllp_addr` until `shutdown` turns true (or its sender
/// is dropped), then returns the totals. Beds keep retrying while the server
/// is unreachable, so the ward may be started before Vigil.
pub async fn run_ward(
    mllp_addr: String,
    cfg: WardConfig,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<WardStats> {
    anyhow::ensure!(!mllp_addr.is_empty(), "MLLP address is empty");
    let counters = Arc::new(Counters::default());
    let patients = ward_patients(&cfg);
    let addr: Arc<str> = mllp_addr.into();
    // Distinguishes control ids across runs so a restarted demo is not taken for replays.
    let run_id = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    let start = Instant::now();
    tracing::info!(
        beds = cfg.beds,
        units = cfg.units.len().max(1),
        deteriorating = patients.iter().filter(|p| p.deteriorating).count(),
        "ward simulation starting"
    );

    let mut tasks = tokio::task::JoinSet::new();
    for patient in patients {
        let fhir = cfg.fhir.clone().filter(|g| g.every > 0 && patient.bed_no.is_multiple_of(g.every));
        let bed = BedTask {
            fhir,
            addr: addr.clone(),
            interval: cfg.interval.max(Duration::from_millis(1)),
            period: cfg.deterioration_period,
            recover_after: cfg.recover_after,
            start,
            run_id,
            counters: counters.clone(),
            shutdown: shutdown.clone(),
            patient,
        };
        tasks.spawn(bed.run());
    }
    while let Some(res) = tasks.join_next().await {
        if let Err(e) = res {
            tracing::error!(error = %e, "bed task failed");
        }
    }
    let stats = counters.snapshot();
    tracing::info!(?stats, "ward simulation stopped");
    Ok(stats)
}

#[derive(Debug, Clone, Copy)]
struct Baseline {
    hr: f64,
    rr: f64,
    spo2: f64,
    sbp: f64,
    dbp: f64,
    temp: f64,
}

#[derive(Debug, Clone)]
struct SimPatient {
    /// 1-based; the only identifier that goes into logs.
    bed_no: usize,
    demo: PatientDemo,
    device_id: String,
    baseline: Baseline,
    deteriorating: bool,
    rng: SimRng,
}

const FAMILY: &[&str] = &[
    "Testperson",
    "Simulant",
    "Mockford",
    "Placeholder",
    "Dummyson",
    "Fakename",
    "Synthetica",
    "Sampleton",
    "Democrat-Test",
    "Nobody",
];
const GIVEN: &[&str] =
    &["Alpha", "Bravo", "Charlie", "Delta", "Echo", "Foxtrot", "Golf", "Hotel", "India", "Juliet", "Kilo", "Lima"];

/// Unit, room and bed of the `i`-th of `beds` beds split over `units` (ICU when none given).
fn place(units: &[String], beds: usize, i: usize) -> (String, String, String) {
    let n = units.len().max(1);
    let per_unit = beds.div_ceil(n).max(1);
    let u = (i / per_unit).min(n - 1);
    let k = i - u * per_unit;
    let unit = units.get(u).cloned().unwrap_or_else(|| "ICU".to_owned());
    let room = format!("{:02}", k / 2 + 1);
    let bed = if k.is_multiple_of(2) { "A" } else { "B" }.to_owned();
    (unit, room, bed)
}

fn ward_patients(cfg: &WardConfig) -> Vec<SimPatient> {
    let mut rng = SimRng::new(cfg.seed);
    let mrn_base = rng.below(900_000);
    let n_det = cfg.deteriorating.min(cfg.beds);
    // Partial Fisher-Yates: the first n_det entries are the deteriorating beds.
    let mut order: Vec<usize> = (0..cfg.beds).collect();
    for i in 0..n_det {
        let j = i + rng.below((cfg.beds - i) as u64) as usize;
        order.swap(i, j);
    }
    let deteriorating = &order[..n_det];
    (0..cfg.beds)
        .map(|i| {
            let bed_no = i + 1;
            let baseline = Baseline {
                hr: rng.range(65.0, 85.0),
                rr: rng.range(13.0, 17.0),
                spo2: rng.range(96.0, 98.5),
                sbp: rng.range(114.0, 130.0),
                dbp: rng.range(68.0, 82.0),
                temp: rng.range(36.7, 37.2),
            };
            let (unit, room, bed) = place(&cfg.units, cfg.beds, i);
            let device_id = format!("MON-{unit}-{room}{bed}");
            let demo = PatientDemo {
                mrn: format!("SIM{:06}", (mrn_base + i as u64) % 1_000_000),
                assigning_authority: "VIGIL_SIM".to_owned(),
                family: FAMILY[rng.below(FAMILY.len() as u64) as usize].to_owned(),
                given: GIVEN[i % GIVEN.len()].to_owned(),
                birth_date: format!("{}{:02}{:02}", 1940 + rng.below(60), 1 + rng.below(12), 1 + rng.below(28)),
                sex: if rng.below(2) == 0 { "F" } else { "M" }.to_owned(),
                unit,
                room,
                bed,
            };
            SimPatient {
                bed_no,
                demo,
                device_id,
                baseline,
                deteriorating: deteriorating.contains(&i),
                rng: SimRng::new(cfg.seed ^ (bed_no as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            }
        })
        .collect()
}

/// Where a deteriorating patient is at `elapsed`: 0 = baseline, 1 = full sepsis. Rises over
/// `period`; with `recover_after`, holds at 1 that long, then falls back to 0 over `period`.
fn course(elapsed: Duration, period: Duration, recover_after: Option<Duration>) -> f64 {
    if period.is_zero() {
        return 1.0;
    }
    let (t, p) = (elapsed.as_secs_f64(), period.as_secs_f64());
    match recover_after {
        None => t / p,
        Some(hold) => {
            let falls_from = p + hold.as_secs_f64();
            if t <= falls_from { (t / p).min(1.0) } else { (1.0 - (t - falls_from) / p).max(0.0) }
        }
    }
}

impl SimPatient {
    /// Vitals at `progress` (0 = baseline, 1 = full sepsis) with measurement noise, the
    /// oxygen the patient is on, and (when `with_gcs`, the nurse's charting) GCS and ACVPU.
    fn vitals(&mut self, progress: f64, with_gcs: bool) -> Vitals {
        let f = if self.deteriorating { progress.clamp(0.0, 1.0) } else { 0.0 };
        let b = self.baseline;
        let lerp = |from: f64, to: f64| from + (to - from) * f;
        let r = &mut self.rng;
        let hr = (lerp(b.hr, SEPSIS.hr) + r.noise(2.0)).clamp(30.0, 220.0);
        let rr = (lerp(b.rr, SEPSIS.rr) + r.noise(1.0)).clamp(4.0, 60.0);
        let spo2 = (lerp(b.spo2, SEPSIS.spo2) + r.noise(0.5)).clamp(50.0, 100.0);
        let sbp = (lerp(b.sbp, SEPSIS.sbp) + r.noise(3.0)).clamp(40.0, 250.0);
        let dbp = (lerp(b.dbp, SEPSIS.dbp) + r.noise(2.0)).clamp(20.0, sbp - 10.0);
        let temp = (lerp(b.temp, SEPSIS.temp) + r.noise(0.05)).clamp(34.0, 42.0);
        let confused = f >= GCS_DROP_AT;
        let gcs = if confused { 13.0 } else { 15.0 };
        let o2_flow = if f >= MORE_OXYGEN_AT {
            4.0
        } else if f >= OXYGEN_AT {
            2.0
        } else {
            0.0
        };
        // Nasal cannula: about 4 % FiO2 per L/min above room air.
        let fio2 = AIR_FIO2 + 4.0 * o2_flow - if o2_flow > 0.0 { 1.0 } else { 0.0 };
        Vitals {
            hr: Some(hr.round()),
            rr: Some(rr.round()),
            spo2: Some(spo2.round()),
            sbp: Some(sbp.round()),
            dbp: Some(dbp.round()),
            map: Some(((sbp + 2.0 * dbp) / 3.0).round()),
            temp_c: Some((temp * 10.0).round() / 10.0),
            gcs: with_gcs.then_some(gcs),
            fio2: Some(fio2),
            o2_flow: Some(o2_flow),
            acvpu: with_gcs.then_some(if confused { Acvpu::Confusion } else { Acvpu::Alert }),
        }
    }
}

struct BedTask {
    /// The gateway this bed's vitals go through, when they go over FHIR.
    fhir: Option<FhirGateway>,
    addr: Arc<str>,
    interval: Duration,
    period: Duration,
    recover_after: Option<Duration>,
    start: Instant,
    run_id: u64,
    counters: Arc<Counters>,
    shutdown: watch::Receiver<bool>,
    patient: SimPatient,
}

/// Resolves once shutdown is requested or nobody can request it any more.
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|&stop| stop).await;
}

impl BedTask {
    async fn run(mut self) {
        let bed = self.patient.bed_no;
        let mut seq: u64 = 0;
        let mut backoff = BACKOFF_MIN;
        let mut last_gcs: Option<bool> = None;
        // The admission goes first, on the first connection; resent after a failed send.
        let mut admitted = false;
        // Spread the first messages so beds do not fire in lock-step.
        let first = self.interval.mul_f64(self.patient.rng.unit());
        let mut next_send = Instant::now() + first;
        // Connecting never takes longer than a tick, or a down server would stall the ward.
        let connect_timeout = self.interval.clamp(Duration::from_millis(200), Duration::from_secs(5));
        let reply_timeout = Duration::from_secs(10);
        let mut fhir_client: Option<crate::fhir::HttpClient> = None;

        'outer: loop {
            if *self.shutdown.borrow() {
                break;
            }
            let connected = tokio::select! {
                () = stopped(&mut self.shutdown) => break 'outer,
                c = MllpClient::connect(&self.addr, connect_timeout) => c,
            };
            let mut client = match connected {
                Ok(c) => {
                    tracing::debug!(bed, "bed connected");
                    backoff = BACKOFF_MIN;
                    c
                }
                Err(e) => {
                    tracing::debug!(bed, error = %e, ?backoff, "bed connect failed; retrying");
                    let wait = backoff.mul_f64(0.5 + self.patient.rng.unit());
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    tokio::select! {
                        () = stopped(&mut self.shutdown) => break 'outer,
                        () = tokio::time::sleep(wait) => continue 'outer,
                    }
                }
            };
            client.set_timeout(reply_timeout);
            if !admitted {
                let control_id = format!("W{:x}-{bed:02}-adt", self.run_id);
                let msg = adt_a01(&self.patient.demo, &control_id, OffsetDateTime::now_utc());
                self.counters.sent.fetch_add(1, Ordering::Relaxed);
                let reply = tokio::select! {
                    () = stopped(&mut self.shutdown) => break 'outer,
                    r = client.send(&msg) => r,
                };
                match reply {
                    Ok(ack) if matches!(ack_code(&ack), Some("AA" | "CA")) => {
                        self.counters.acked.fetch_add(1, Ordering::Relaxed);
                        admitted = true;
                    }
                    Ok(ack) => {
                        // Rejected: the vitals still carry the location, so go on without it.
                        self.counters.naks.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(bed, code = ack_code(&ack).unwrap_or("-"), "admission rejected");
                        admitted = true;
                    }
                    Err(e) => {
                        self.counters.errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(bed, error = %e, "admission send failed; reconnecting");
                        continue 'outer;
                    }
                }
            }

            loop {
                tokio::select! {
                    () = stopped(&mut self.shutdown) => break 'outer,
                    () = tokio::time::sleep_until(next_send) => {}
                }
                let progress = course(self.start.elapsed(), self.period, self.recover_after);
                let gcs_now = self.patient.deteriorating && progress >= GCS_DROP_AT;
                let with_gcs = seq.is_multiple_of(GCS_EVERY) || last_gcs != Some(gcs_now);
                if with_gcs {
                    last_gcs = Some(gcs_now);
                }
                let vitals = self.patient.vitals(progress, with_gcs);
                let control_id = format!("W{:x}-{bed:02}-{seq}", self.run_id);
                if let Some(gateway) = self.fhir.clone() {
                    seq += 1;
                    next_send =
                        (next_send + self.interval.mul_f64(0.9 + 0.2 * self.patient.rng.unit())).max(Instant::now());
                    let resources = crate::fhir::observations(
                        &self.patient.demo,
                        &self.patient.device_id,
                        &vitals,
                        &control_id,
                        OffsetDateTime::now_utc(),
                    );
                    let bundle = crate::fhir::transaction(resources, &control_id).to_string();
                    self.counters.sent.fetch_add(1, Ordering::Relaxed);
                    let answered = tokio::select! {
                        () = stopped(&mut self.shutdown) => break 'outer,
                        r = post_fhir(&mut fhir_client, &gateway, bundle.as_bytes()) => r,
                    };
                    match answered {
                        Ok(200 | 201) => {
                            self.counters.acked.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(status) => {
                            self.counters.naks.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(bed, control_id, status, "fhir vitals refused");
                        }
                        Err(e) => {
                            fhir_client = None;
                            self.counters.errors.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(bed, control_id, error = %e, "fhir post failed; reconnecting");
                        }
                    }
                    continue;
                }
                let msg = oru_r01(
                    &self.patient.demo,
                    &self.patient.device_id,
                    &vitals,
                    &control_id,
                    OffsetDateTime::now_utc(),
                );
                seq += 1;
                next_send += self.interval.mul_f64(0.9 + 0.2 * self.patient.rng.unit());
                // A send that fell far behind (e.g. after a reconnect) restarts the cadence
                // instead of bursting to catch up.
                let now = Instant::now();
                if next_send < now {
                    next_send = now + self.interval;
                }

                self.counters.sent.fetch_add(1, Ordering::Relaxed);
                let reply = tokio::select! {
                    () = stopped(&mut self.shutdown) => break 'outer,
                    r = client.send(&msg) => r,
                };
                match reply {
                    Ok(ack) => match ack_code(&ack) {
                        Some("AA" | "CA") => {
                            self.counters.acked.fetch_add(1, Ordering::Relaxed);
                            tracing::trace!(bed, control_id, "vitals acknowledged");
                        }
                        code => {
                            self.counters.naks.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(bed, control_id, code = code.unwrap_or("-"), "vitals rejected");
                        }
                    },
                    Err(e) => {
                        self.counters.errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(bed, control_id, error = %e, "send failed; reconnecting");
                        continue 'outer;
                    }
                }
            }
        }
        tracing::debug!(bed, sent = seq, "bed stopped");
    }
}

/// POST a transaction Bundle through `gateway`, connecting first when needed; the status.
async fn post_fhir(
    client: &mut Option<crate::fhir::HttpClient>,
    gateway: &FhirGateway,
    bundle: &[u8],
) -> Result<u16, crate::fhir::HttpError> {
    if client.is_none() {
        *client = Some(crate::fhir::HttpClient::connect(&gateway.http_addr, Duration::from_secs(10)).await?);
    }
    let Some(c) = client.as_mut() else { return Err(crate::fhir::HttpError::Malformed("no connection")) };
    let (status, _) = c.post("/fhir", &gateway.token, "application/fhir+json", bundle).await?;
    Ok(status)
}

/// Small deterministic PRNG (SplitMix64): simulation noise needs speed and
/// reproducibility from a seed, not cryptographic quality.
#[derive(Debug, Clone)]
pub(crate) struct SimRng(u64);

impl SimRng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub(crate) fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// Uniform in `[-amplitude, amplitude)`.
    pub(crate) fn noise(&mut self, amplitude: f64) -> f64 {
        self.range(-amplitude, amplitude)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::mllp::test_support::{Mode, start};
    use crate::pcd01::{
        ACVPU_CODE, FIO2_CODE, GCS_CODE, HR_CODE, O2_FLOW_CODE, RR_CODE, SBP_CODE, SPO2_CODE, TEMP_CODE,
    };

    #[derive(Debug, Default, Clone)]
    struct Obs {
        hr: f64,
        rr: f64,
        spo2: f64,
        sbp: f64,
        temp: f64,
        gcs: Option<f64>,
        fio2: f64,
        o2_flow: f64,
        acvpu: Option<String>,
    }

    /// Location (PV1-3 unit^room^bed) and observations, parsed the way a receiver would.
    fn parse(msg: &str) -> (String, Obs) {
        let mut room = String::new();
        let mut o = Obs::default();
        for seg in msg.split('\r') {
            let f: Vec<&str> = seg.split('|').collect();
            match f[0] {
                "PV1" => f[3].clone_into(&mut room),
                "OBX" if f[3] == ACVPU_CODE => o.acvpu = Some(f[5].split('^').next().unwrap_or("").to_owned()),
                "OBX" => {
                    let v: f64 = f.get(5).and_then(|v| v.parse().ok()).unwrap_or(f64::NAN);
                    match f[3] {
                        HR_CODE => o.hr = v,
                        RR_CODE => o.rr = v,
                        SPO2_CODE => o.spo2 = v,
                        SBP_CODE => o.sbp = v,
                        TEMP_CODE => o.temp = v,
                        GCS_CODE => o.gcs = Some(v),
                        FIO2_CODE => o.fio2 = v,
                        O2_FLOW_CODE => o.o2_flow = v,
                        _ => {}
                    }
                }
                _ => {}
            }
        }
        (room, o)
    }

    /// Vitals messages per location; admissions are left out.
    fn by_bed(msgs: &[String]) -> BTreeMap<String, Vec<Obs>> {
        let mut m: BTreeMap<String, Vec<Obs>> = BTreeMap::new();
        for msg in msgs.iter().filter(|m| m.contains("|ORU^R01")) {
            let (room, o) = parse(msg);
            m.entry(room).or_default().push(o);
        }
        m
    }

    async fn poll_until(deadline: Duration, mut done: impl FnMut() -> bool) -> bool {
        let end = Instant::now() + deadline;
        while Instant::now() < end {
            if done() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        done()
    }

    #[test]
    fn a_recovering_course_rises_holds_and_falls_back_to_baseline() {
        let s = Duration::from_secs;
        let hold = Some(s(60));
        assert_eq!(course(s(0), s(100), hold), 0.0);
        assert_eq!(course(s(50), s(100), hold), 0.5);
        assert_eq!(course(s(150), s(100), hold), 1.0, "held at full sepsis");
        assert_eq!(course(s(210), s(100), hold), 0.5, "half way back");
        assert_eq!(course(s(400), s(100), hold), 0.0, "back to baseline and staying there");
        assert!(course(s(400), s(100), None) > 1.0, "without recovery it keeps going (clamped by vitals)");
    }

    fn test_cfg() -> WardConfig {
        WardConfig {
            beds: 4,
            interval: Duration::from_millis(15),
            deteriorating: 2,
            deterioration_period: Duration::from_millis(900),
            recover_after: None,
            units: vec!["TEST".into()],
            seed: 7,
            fhir: None,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ward_streams_and_deteriorates_then_stops() {
        let (addr, rec) = start(Mode::Ack).await;
        let (tx, rx) = watch::channel(false);
        let cfg = test_cfg();
        let period = cfg.deterioration_period;
        let handle = tokio::spawn(run_ward(addr, cfg, rx));

        // Wait until each deteriorating bed has reported well past full deterioration.
        let began = Instant::now();
        let ok = poll_until(Duration::from_secs(15), || {
            let beds = by_bed(&rec.snapshot());
            began.elapsed() > period + Duration::from_millis(300)
                && beds.len() == 4
                && beds.values().all(|v| v.len() >= 10)
        })
        .await;
        assert!(ok, "ward did not produce enough messages in time");

        tx.send(true).unwrap();
        let stats = tokio::time::timeout(Duration::from_secs(3), handle)
            .await
            .expect("ward did not stop promptly")
            .unwrap()
            .unwrap();

        let msgs = rec.snapshot();
        assert!(stats.sent >= msgs.len() as u64, "{stats:?} vs {}", msgs.len());
        assert!(stats.acked + 4 >= msgs.len() as u64, "{stats:?}");
        assert_eq!(stats.naks, 0);
        assert_eq!(stats.errors, 0);
        assert!(msgs.iter().all(|m| m.contains("PID|||SIM")));
        // Each bed is admitted (ADT^A01 with its unit^room^bed) before its first vitals.
        let admits: Vec<(usize, String)> =
            msgs.iter().enumerate().filter(|(_, m)| m.contains("|ADT^A01")).map(|(i, m)| (i, parse(m).0)).collect();
        let mut places: Vec<&str> = admits.iter().map(|(_, p)| p.as_str()).collect();
        places.sort_unstable();
        assert_eq!(places, ["TEST^01^A", "TEST^01^B", "TEST^02^A", "TEST^02^B"]);
        for (at, place) in &admits {
            let first_vitals = msgs.iter().position(|m| m.contains("|ORU^R01") && parse(m).0 == *place).unwrap();
            assert!(first_vitals > *at, "{place}: vitals before admission");
        }

        let beds = by_bed(&msgs);
        let (det, stable): (Vec<_>, Vec<_>) = beds.values().partition(|obs| obs.iter().any(|o| o.gcs == Some(13.0)));
        assert_eq!(det.len(), 2, "exactly the deteriorating beds reach GCS 13");
        for obs in stable {
            for o in obs {
                assert!((58.0..=92.0).contains(&o.hr), "{o:?}");
                assert!((12.0..=18.0).contains(&o.rr), "{o:?}");
                assert!((95.0..=99.0).contains(&o.spo2), "{o:?}");
                assert!((110.0..=135.0).contains(&o.sbp), "{o:?}");
                assert!((36.5..=37.4).contains(&o.temp), "{o:?}");
                assert!(o.gcs.is_none_or(|g| g == 15.0), "{o:?}");
                assert_eq!((o.fio2, o.o2_flow), (21.0, 0.0), "on air: {o:?}");
                assert!(o.acvpu.as_deref().is_none_or(|a| a == "A"), "{o:?}");
                assert_eq!(o.acvpu.is_some(), o.gcs.is_some(), "ACVPU charted with the GCS: {o:?}");
            }
        }
        for obs in det {
            let first = &obs[0];
            let last = obs.last().unwrap();
            assert!(first.hr < 100.0 && first.rr <= 20.0 && first.spo2 >= 94.0, "{first:?}");
            assert!(first.sbp >= 105.0 && first.temp < 37.6, "{first:?}");
            assert_eq!(first.gcs, Some(15.0), "GCS is sent with the first message");
            assert_eq!(first.acvpu.as_deref(), Some("A"), "ACVPU is sent with the first message");
            assert_eq!((first.fio2, first.o2_flow), (21.0, 0.0), "{first:?}");
            assert_eq!((last.fio2, last.o2_flow), (36.0, 4.0), "on oxygen at the end: {last:?}");
            // Oxygen only goes up, through 2 L/min.
            let flows: Vec<f64> = obs.iter().map(|o| o.o2_flow).collect();
            assert!(flows.windows(2).all(|w| w[0] <= w[1]), "{flows:?}");
            assert!(flows.contains(&2.0), "{flows:?}");
            // ACVPU: A until the GCS drops, then new confusion.
            let acvpu: Vec<(f64, &str)> = obs.iter().filter_map(|o| Some((o.gcs?, o.acvpu.as_deref()?))).collect();
            assert!(acvpu.iter().all(|&(g, a)| (g == 15.0 && a == "A") || (g == 13.0 && a == "C")), "{acvpu:?}");
            assert_eq!(acvpu.last().map(|a| a.1), Some("C"));
            assert!((122.0..=128.0).contains(&last.hr), "{last:?}");
            assert!((29.0..=31.0).contains(&last.rr), "{last:?}");
            assert!((88.0..=90.0).contains(&last.spo2), "{last:?}");
            assert!((81.0..=89.0).contains(&last.sbp), "{last:?}");
            assert!((39.0..=39.4).contains(&last.temp), "{last:?}");
            // Trend: the mean HR of each third of the run rises.
            let third = obs.len() / 3;
            let mean = |s: &[Obs]| s.iter().map(|o| o.hr).sum::<f64>() / s.len() as f64;
            assert!(mean(&obs[..third]) < mean(&obs[third..2 * third]));
            assert!(mean(&obs[third..2 * third]) < mean(&obs[2 * third..]));
            // GCS stays 15 until it drops, then stays 13.
            let gcs: Vec<f64> = obs.iter().filter_map(|o| o.gcs).collect();
            let drop = gcs.iter().position(|&g| g == 13.0).unwrap();
            assert!(gcs[..drop].iter().all(|&g| g == 15.0));
            assert!(gcs[drop..].iter().all(|&g| g == 13.0));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ward_reconnects_after_drops() {
        let (addr, rec) = start(Mode::DropAfter(3)).await;
        let (tx, rx) = watch::channel(false);
        let mut cfg = test_cfg();
        cfg.beds = 2;
        cfg.deteriorating = 0;
        let handle = tokio::spawn(run_ward(addr, cfg, rx));
        let ok = poll_until(Duration::from_secs(15), || rec.snapshot().len() >= 20).await;
        assert!(ok, "ward did not keep sending across dropped connections");
        tx.send(true).unwrap();
        let stats = tokio::time::timeout(Duration::from_secs(3), handle)
            .await
            .expect("ward did not stop promptly")
            .unwrap()
            .unwrap();
        assert!(stats.acked >= 18, "{stats:?}");
    }

    #[tokio::test]
    async fn ward_waits_for_server_and_stops_while_disconnected() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        drop(l);
        let (tx, rx) = watch::channel(false);
        let handle = tokio::spawn(run_ward(addr, test_cfg(), rx));
        tokio::task::yield_now().await;
        tx.send(true).unwrap();
        let stats = tokio::time::timeout(Duration::from_secs(3), handle)
            .await
            .expect("ward did not stop promptly")
            .unwrap()
            .unwrap();
        assert_eq!(stats.sent, 0);
    }

    #[test]
    fn forty_beds_on_two_units_have_distinct_rooms_and_beds() {
        let cfg =
            WardConfig { beds: 40, deteriorating: 40, units: vec!["ICU".into(), "5W".into()], ..WardConfig::default() };
        let ps = ward_patients(&cfg);
        let places: Vec<(String, String, String)> =
            ps.iter().map(|p| (p.demo.unit.clone(), p.demo.room.clone(), p.demo.bed.clone())).collect();
        assert_eq!(places.iter().filter(|p| p.0 == "ICU").count(), 20);
        assert_eq!(places.iter().filter(|p| p.0 == "5W").count(), 20);
        assert_eq!(places[0], ("ICU".into(), "01".into(), "A".into()));
        assert_eq!(places[1], ("ICU".into(), "01".into(), "B".into()));
        assert_eq!(places[21], ("5W".into(), "01".into(), "B".into()));
        assert_eq!(places[39], ("5W".into(), "10".into(), "B".into()));
        let mut distinct = places.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), 40);
        assert!(ps.iter().all(|p| p.deteriorating));
        // Odd counts and more units than beds still place every bed on a named unit.
        let odd = WardConfig { beds: 5, units: vec!["A".into(), "B".into(), "C".into()], ..WardConfig::default() };
        let units: Vec<String> = ward_patients(&odd).into_iter().map(|p| p.demo.unit).collect();
        assert_eq!(units, ["A", "A", "B", "B", "C"]);
        let none = WardConfig { beds: 2, units: vec![], ..WardConfig::default() };
        assert!(ward_patients(&none).iter().all(|p| p.demo.unit == "ICU"));
    }

    #[test]
    fn patients_are_synthetic_and_distinct() {
        let cfg = WardConfig::default();
        let ps = ward_patients(&cfg);
        assert_eq!(ps.len(), 12);
        assert_eq!(ps.iter().filter(|p| p.deteriorating).count(), 2);
        let mut mrns: Vec<_> = ps.iter().map(|p| p.demo.mrn.clone()).collect();
        mrns.sort();
        mrns.dedup();
        assert_eq!(mrns.len(), 12);
        assert!(mrns.iter().all(|m| m.len() == 9 && m.starts_with("SIM")));
        let again = ward_patients(&cfg);
        assert_eq!(ps[3].demo, again[3].demo, "same seed, same ward");
    }
}
