//! One commit pipeline for every store backend. Patient actors (events with the alert changes
//! the rules made of them) and consoles (acknowledge, resolve, escalate) queue [`Job`]s; the
//! pipeline drains whatever is queued into one batch and, in order:
//!
//! 1. **stages** each job's alert changes: a change equal to the alert's latest state is
//!    skipped (it resolves to that state's number: replaying events never alerts twice), the
//!    others are numbered in sequence; a job whose staging fails is failed whole and its
//!    numbers are given back;
//! 2. **writes** the batch through the [`Backend`] (fjall: one write batch and one fsync;
//!    ScyllaDB: one batch per partition, the message log last), which says per job whether
//!    everything of it is durable;
//! 3. **publishes** the durable alert changes, in sequence order, to the
//!    [`AlertPublisher`] (consoles, webhooks) — only after they are durable;
//! 4. **completes** the tickets the senders' ACKs and the consoles' replies wait on.
//!
//! Under load a batch may wait, up to [`PipelineConfig::commit_interval`] after the last one
//! began: each fsync costs the kernel about 100 µs of CPU on our VMs, and without the wait most
//! batches carried one to eight messages (docs/BENCHMARKS.md, "commit interval"). With CPU to
//! spare it waits only for the writes that were on their way when it began waiting
//! ([`Expected`]: taken in by the ingress, not yet queued by their actors); when the process
//! uses most of the machine's cores (`CpuGauge`) it waits out the interval. A batch never
//! waits when nothing is on its way and the CPU is not the limit, so a sender with one message
//! in flight is not slowed.
//!
//! A number handed to a change whose write failed is not reused (a gap in the alert log;
//! readers never assume the sequence is contiguous), because a partial write may have left it
//! somewhere.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};
use vigil_actors::{Alert, AlertPublisher, AlertStatus, DurableSender, SequencedAlert, StoreError, Transit};

/// A write queued for the pipeline. `R` is the backend's sealed event rows.
pub enum Job<R> {
    /// The events of one message for one patient, with the alert changes the rules made of
    /// them: all land together, or the job fails.
    Events {
        /// The backend's rows of the events (and of the message log, when this bundle writes it).
        rows: R,
        /// Alert changes, each with whether it notifies.
        alerts: Vec<(Box<Alert>, bool)>,
        /// Completed once durable.
        done: DurableSender,
    },
    /// One alert change (a clinician's action, an escalation).
    Alert {
        /// The new state.
        alert: Box<Alert>,
        /// Whether consoles are notified.
        notify: bool,
        /// Completed with the change's sequence number once durable.
        done: DurableSender<u64>,
    },
    /// Everything queued before it is committed, then the pipeline stops.
    Close(oneshot::Sender<()>),
}

/// One job as the backend writes it: its event rows (none for a lone alert change) and its
/// numbered alert changes.
pub struct Staged<'a, R> {
    /// Event rows.
    pub rows: Option<&'a R>,
    /// New alert states, numbered.
    pub changes: &'a [Arc<SequencedAlert>],
}

/// What a store engine does for the pipeline.
#[async_trait]
pub trait Backend: Send + 'static {
    /// Sealed event rows (and message-log rows) of one job.
    type Rows: Send + Sync + 'static;

    /// The stored latest state of an alert: the idempotence check for an alert the pipeline
    /// has not seen since it started (or forgot).
    async fn stored_alert(&self, id: &str) -> Result<Option<SequencedAlert>, StoreError>;

    /// Make a batch durable. One result per job, in order: `Ok` only if every row of the job
    /// (events, message log, alert states and log, open-alert index) is durable.
    async fn write(&mut self, batch: &[Staged<'_, Self::Rows>]) -> Vec<Result<(), StoreError>>;

    /// The queue is closed and drained: a last flush, when the engine wants one.
    async fn finish(&mut self) {}
}

/// Times each batch's write through the backend: the `store_write` stage (fjall: the write
/// batch and its fsync; ScyllaDB: the batch's writes). Once per batch, not per message: the
/// stage's count beside `commit_wait`'s says how many messages a batch carried. Records nowhere
/// by default.
#[derive(Clone, Default)]
pub struct WriteTimer(Option<metrics::Histogram>);

impl WriteTimer {
    /// Record into `histogram`.
    pub fn new(histogram: metrics::Histogram) -> Self {
        WriteTimer(Some(histogram))
    }

    fn since(&self, started: std::time::Instant) {
        if let Some(h) = &self.0 {
            h.record(started.elapsed());
        }
    }
}

impl std::fmt::Debug for WriteTimer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "WriteTimer(recording)" } else { "WriteTimer(off)" })
    }
}

/// Writes on their way to the pipeline: messages the ingress has taken in whose writes the
/// patient actors have not yet queued ([`Transit`]). A batch waits for them (up to its interval)
/// instead of leaving them to an fsync of their own. A message whose write is committed and
/// whose ACK is still on its way out is not waited for: nothing of it is coming. A pipeline
/// that is told of none never waits.
#[derive(Debug, Clone, Default)]
pub struct Expected(Arc<Transit>);

impl Expected {
    /// A count nobody has entered yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The count the ingress enters each message it takes in.
    pub fn transit(&self) -> &Arc<Transit> {
        &self.0
    }
}

/// Whether the process is using most of the machine's cores, sampled from `/proc/self/stat`
/// at most every [`CpuGauge::WINDOW`]. When it is, the CPU is what limits the rate, and each
/// fsync's kernel time (about 100 µs on our VMs) is taken from messages: a batch then waits out
/// the commit interval, so one fsync serves every write of the interval. When it is not, an
/// fsync costs nothing that matters and a batch waits only for the writes already on their
/// way. Without `/proc` (not Linux) the process never counts as busy.
#[derive(Debug)]
struct CpuGauge {
    /// Reads the process's CPU ticks so far.
    source: fn() -> Option<u64>,
    /// The last sample: when, and the process's CPU ticks then.
    last: Option<(Instant, u64)>,
    busy: bool,
    /// CPU ticks a second the whole machine offers (cores x `USER_HZ`).
    capacity: f64,
}

impl CpuGauge {
    /// The sampling window.
    const WINDOW: Duration = Duration::from_millis(200);
    /// Busy from this share of the machine's cores on.
    const BUSY: f64 = 0.75;
    /// `USER_HZ`: the kernel reports CPU time in hundredths of a second on every architecture
    /// Linux runs on.
    const TICKS_PER_SECOND: f64 = 100.0;

    fn new() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        CpuGauge { source: process_ticks, last: None, busy: false, capacity: cores as f64 * Self::TICKS_PER_SECOND }
    }

    /// A gauge that always reads `busy` (tests: the process running them may be busy or not).
    #[cfg(test)]
    fn fixed(busy: bool) -> Self {
        CpuGauge { source: || None, last: None, busy, capacity: 1.0 }
    }

    /// Whether the process was busy over the last window (sampled now if a window has passed).
    fn busy(&mut self, now: Instant) -> bool {
        let due = self.last.is_none_or(|(at, _)| now.duration_since(at) >= Self::WINDOW);
        if due && let Some(ticks) = (self.source)() {
            if let Some((at, before)) = self.last {
                let seconds = now.duration_since(at).as_secs_f64();
                self.busy = ticks.saturating_sub(before) as f64 >= Self::BUSY * self.capacity * seconds;
            }
            self.last = Some((now, ticks));
        }
        self.busy
    }
}

/// The process's user and system CPU time so far, in ticks (`/proc/self/stat`, fields 14 and
/// 15).
fn process_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    parse_ticks(&stat)
}

fn parse_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(user + system)
}

/// The commit interval Vigil runs with unless configured (`[store] commit_interval_us`).
pub const DEFAULT_COMMIT_INTERVAL: Duration = Duration::from_millis(1);

/// Tuning of the pipeline.
#[derive(Debug, Clone, Copy)]
pub struct PipelineConfig {
    /// Most jobs in one batch.
    pub max_batch: usize,
    /// Most alert states remembered for the idempotence check; beyond it the memory is
    /// cleared and states are read from the store again.
    pub max_remembered: usize,
    /// How long after a batch began the next may wait for writes still on their way
    /// ([`Expected`]); zero: it never waits.
    pub commit_interval: Duration,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig { max_batch: 4_096, max_remembered: 16_384, commit_interval: Duration::ZERO }
    }
}

/// The pipeline over one backend. Run it with [`Pipeline::run`] on the queue's receiving end.
pub struct Pipeline<B: Backend> {
    backend: B,
    publisher: Arc<dyn AlertPublisher>,
    /// The highest number committed (what `AlertStore::last_seq` reads).
    last_seq: Arc<AtomicU64>,
    /// The highest number handed out.
    next_seq: u64,
    /// Latest state of the open alerts this pipeline has written or read (resolved ones are
    /// forgotten once committed): the idempotence check without a read per change.
    latest: HashMap<String, SequencedAlert>,
    config: PipelineConfig,
    write_timer: WriteTimer,
    expected: Expected,
    cpu: CpuGauge,
}

/// A job after staging.
struct Prepared {
    changes: Vec<Arc<SequencedAlert>>,
    /// For a lone alert change equal to the stored state: that state's number.
    unchanged: Option<u64>,
}

impl<B: Backend> Pipeline<B> {
    /// A pipeline writing through `backend`, numbering after `last_seq` and publishing to
    /// `publisher`.
    pub fn new(
        backend: B,
        publisher: Arc<dyn AlertPublisher>,
        last_seq: Arc<AtomicU64>,
        config: PipelineConfig,
    ) -> Self {
        let next_seq = last_seq.load(Ordering::Acquire);
        Pipeline {
            backend,
            publisher,
            last_seq,
            next_seq,
            latest: HashMap::new(),
            config,
            write_timer: WriteTimer::default(),
            expected: Expected::default(),
            cpu: CpuGauge::new(),
        }
    }

    /// Wait for the writes `expected` counts (up to the commit interval).
    pub fn with_expected(mut self, expected: Expected) -> Self {
        self.expected = expected;
        self
    }

    /// Judge with `cpu` whether the process is busy.
    #[cfg(test)]
    fn with_cpu(mut self, cpu: CpuGauge) -> Self {
        self.cpu = cpu;
        self
    }

    /// Time each batch's write into `timer`.
    pub fn with_write_timer(mut self, timer: WriteTimer) -> Self {
        self.write_timer = timer;
        self
    }

    /// Commit batches until the queue closes (or a [`Job::Close`] arrives), then finish.
    pub async fn run(mut self, mut rx: mpsc::Receiver<Job<B::Rows>>) {
        let max_batch = self.config.max_batch.max(1);
        let mut jobs = Vec::with_capacity(max_batch);
        let mut close = None;
        let mut last_start: Option<Instant> = None;
        while let Some(first) = rx.recv().await {
            // After a quiet spell the deadline has passed: the batch starts at once.
            let interval = self.config.commit_interval;
            let deadline = last_start.filter(|_| !interval.is_zero()).map(|started| started + interval);
            let mut next = Some(first);
            // How many writes must have arrived, ever, before this batch stops waiting (`None`
            // until it begins waiting; `u64::MAX`: it waits out the interval).
            let mut awaiting: Option<u64> = None;
            loop {
                while let Some(job) = next.take() {
                    match job {
                        Job::Close(reply) => close = Some(reply),
                        job => jobs.push(job),
                    }
                    if close.is_some() || jobs.len() >= max_batch {
                        break;
                    }
                    next = rx.try_recv().ok();
                }
                // Full, or nothing more is on its way (a lone sender's next message waits on
                // this batch's ACK): waiting would gain nothing.
                let Some(deadline) = deadline else { break };
                if close.is_some() || jobs.len() >= max_batch {
                    break;
                }
                // The batch waits for the writes taken in before it began waiting, not for
                // those taken in since (each would let the next one in, and the batch would
                // wait out its interval at any steady rate). With the CPU the limit, it waits
                // out the interval (see `CpuGauge`).
                let transit = self.expected.transit();
                let awaited = *awaiting
                    .get_or_insert_with(|| if self.cpu.busy(Instant::now()) { u64::MAX } else { transit.entered() });
                if transit.left() >= awaited {
                    // A write is queued before it stops counting: whatever arrived since the
                    // drain above goes in too.
                    next = rx.try_recv().ok();
                    if next.is_none() {
                        break;
                    }
                    continue;
                }
                tokio::select! {
                    job = rx.recv() => match job {
                        Some(job) => next = Some(job),
                        None => break,
                    },
                    // A departure can end only a wait for arrivals: waiting out the interval,
                    // the committer is not woken for each message.
                    () = transit.departed(), if awaited != u64::MAX => {}
                    () = tokio::time::sleep_until(deadline.into()) => break,
                }
            }
            last_start = Some(Instant::now());
            self.commit(&mut jobs).await;
            if close.is_some() {
                break;
            }
        }
        self.backend.finish().await;
        if let Some(reply) = close {
            let _ = reply.send(());
        }
    }

    /// The latest state of an alert: this pipeline's memory, else the store. A stored state
    /// that cannot be decoded is replaced by the new one (shown, not hidden), and said so.
    async fn current(&self, id: &str) -> Result<Option<SequencedAlert>, StoreError> {
        if let Some(c) = self.latest.get(id) {
            return Ok(Some(c.clone()));
        }
        match self.backend.stored_alert(id).await {
            Err(StoreError::Corrupt(what)) => {
                tracing::error!(what, "stored alert state unreadable; writing the new state over it");
                Ok(None)
            }
            other => other,
        }
    }

    /// Number a job's alert changes, or fail the job (giving its numbers back).
    async fn stage(&mut self, wanted: &[(&Alert, bool)]) -> Result<Prepared, StoreError> {
        let mut changes = Vec::new();
        let mut unchanged = None;
        // Entries replaced in `latest`, to undo a job that fails part-way.
        let mut undo: Vec<(String, Option<SequencedAlert>)> = Vec::new();
        let first = self.next_seq;
        for (alert, notify) in wanted {
            let current = match self.current(&alert.id.0).await {
                Ok(c) => c,
                Err(e) => {
                    for (id, previous) in undo.into_iter().rev() {
                        match previous {
                            Some(p) => self.latest.insert(id, p),
                            None => self.latest.remove(&id),
                        };
                    }
                    self.next_seq = first;
                    return Err(e);
                }
            };
            if let Some(current) = current.filter(|c| &c.alert == *alert) {
                unchanged = Some(current.seq);
                continue;
            }
            self.next_seq += 1;
            let change = SequencedAlert { seq: self.next_seq, notify: *notify, alert: (*alert).clone() };
            undo.push((change.alert.id.0.clone(), self.latest.insert(change.alert.id.0.clone(), change.clone())));
            changes.push(Arc::new(change));
        }
        Ok(Prepared { changes, unchanged })
    }

    async fn commit(&mut self, jobs: &mut Vec<Job<B::Rows>>) {
        // 1. Stage.
        let mut prepared: Vec<Result<Prepared, StoreError>> = Vec::with_capacity(jobs.len());
        for job in jobs.iter() {
            let staged = match job {
                Job::Events { alerts, .. } => {
                    let wanted: Vec<(&Alert, bool)> = alerts.iter().map(|(a, n)| (a.as_ref(), *n)).collect();
                    self.stage(&wanted).await
                }
                // A lone change is a list of one.
                Job::Alert { alert, notify, .. } => self.stage(&[(alert.as_ref(), *notify)]).await,
                Job::Close(_) => Ok(Prepared { changes: Vec::new(), unchanged: None }),
            };
            prepared.push(staged);
        }
        // 2. Write what staged.
        let (index, batch): (Vec<usize>, Vec<Staged<'_, B::Rows>>) = jobs
            .iter()
            .zip(&prepared)
            .enumerate()
            .filter_map(|(i, (job, p))| {
                let p = p.as_ref().ok()?;
                let rows = match job {
                    Job::Events { rows, .. } => Some(rows),
                    _ => None,
                };
                Some((i, Staged { rows, changes: &p.changes }))
            })
            .unzip();
        let written = if batch.is_empty() {
            Vec::new()
        } else {
            let started = std::time::Instant::now();
            let written = self.backend.write(&batch).await;
            self.write_timer.since(started);
            written
        };
        drop(batch);
        let mut outcome: Vec<Result<(), StoreError>> =
            prepared.iter().map(|p| p.as_ref().map(|_| ()).map_err(Clone::clone)).collect();
        for (i, result) in index.into_iter().zip(written) {
            outcome[i] = result;
        }
        // 3. Publish the durable changes in sequence order; forget the failed ones (the store
        // is asked next time) and the resolved ones (they are not changed again).
        let mut committed = Vec::new();
        for (p, result) in prepared.iter().zip(&outcome) {
            let Ok(p) = p else { continue };
            for change in &p.changes {
                if result.is_ok() {
                    committed.push(Arc::clone(change));
                } else if self.latest.get(&change.alert.id.0).is_some_and(|l| l.seq == change.seq) {
                    self.latest.remove(&change.alert.id.0);
                }
            }
        }
        committed.sort_by_key(|c| c.seq);
        if let Some(top) = committed.last() {
            self.last_seq.fetch_max(top.seq, Ordering::AcqRel);
        }
        for change in &committed {
            self.publisher.publish(Arc::clone(change));
            if change.alert.status == AlertStatus::Resolved
                && self.latest.get(&change.alert.id.0).is_some_and(|l| l.seq == change.seq)
            {
                self.latest.remove(&change.alert.id.0);
            }
        }
        if self.latest.len() > self.config.max_remembered {
            self.latest.clear();
        }
        // 4. Complete the tickets.
        for ((job, p), result) in jobs.drain(..).zip(prepared).zip(outcome) {
            match job {
                Job::Events { done, .. } => done.complete(result),
                Job::Alert { done, .. } => {
                    let seq = result.and_then(|()| {
                        let p = p?;
                        p.changes
                            .last()
                            .map(|c| c.seq)
                            .or(p.unchanged)
                            .ok_or(StoreError::Engine("alert outcome".into()))
                    });
                    done.complete(seq);
                }
                Job::Close(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use vigil_actors::fakes::CollectingPublisher;
    use vigil_actors::{Durable, Severity};

    /// A backend in memory that fails the jobs it is told to, and records how many jobs each
    /// batch carried.
    #[derive(Default)]
    struct Flaky {
        stored: Arc<Mutex<HashMap<String, SequencedAlert>>>,
        fail_next_write: Arc<Mutex<bool>>,
        corrupt: Arc<Mutex<Vec<String>>>,
        batches: Arc<Mutex<Vec<usize>>>,
    }

    #[async_trait]
    impl Backend for Flaky {
        type Rows = ();

        async fn stored_alert(&self, id: &str) -> Result<Option<SequencedAlert>, StoreError> {
            if self.corrupt.lock().unwrap().iter().any(|c| c == id) {
                return Err(StoreError::Corrupt("alerts".into()));
            }
            Ok(self.stored.lock().unwrap().get(id).cloned())
        }

        async fn write(&mut self, batch: &[Staged<'_, ()>]) -> Vec<Result<(), StoreError>> {
            self.batches.lock().unwrap().push(batch.len());
            if std::mem::take(&mut *self.fail_next_write.lock().unwrap()) {
                return batch.iter().map(|_| Err(StoreError::Engine("write".into()))).collect();
            }
            for job in batch {
                for c in job.changes {
                    self.stored.lock().unwrap().insert(c.alert.id.0.clone(), (**c).clone());
                }
            }
            batch.iter().map(|_| Ok(())).collect()
        }
    }

    fn alert(id: &str, severity: Severity) -> Alert {
        let patient = vigil_actors::PatientId("p".into());
        let t0 = time::OffsetDateTime::UNIX_EPOCH;
        crate::store::conformance::alert(id, &patient, "ICU", severity, AlertStatus::Active, t0)
    }

    async fn upsert(tx: &mpsc::Sender<Job<()>>, a: &Alert) -> Result<u64, StoreError> {
        let (done, ticket): (_, Durable<u64>) = Durable::channel();
        tx.send(Job::Alert { alert: Box::new(a.clone()), notify: true, done }).await.unwrap();
        ticket.wait().await
    }

    #[test]
    fn cpu_ticks_are_read_after_the_command_name_whatever_it_holds() {
        let stat = "4242 (vigil (serve) x) S 1 4242 4242 0 -1 4194560 5000 0 0 0 1234 567 0 0 20 0 9 0 100 0 0";
        assert_eq!(parse_ticks(stat), Some(1234 + 567));
        assert_eq!(parse_ticks("garbage"), None);
        assert_eq!(parse_ticks("1 (x) S 1 2"), None);
        if cfg!(target_os = "linux") {
            assert!(process_ticks().is_some(), "this process's own /proc/self/stat reads");
        }
    }

    #[test]
    fn a_process_using_most_of_the_cores_is_busy_and_an_idle_one_is_not() {
        let t0 = Instant::now();
        // Two cores: 400 ticks a second.
        let mut gauge = CpuGauge { source: process_ticks, last: Some((t0, 1_000)), busy: false, capacity: 400.0 };
        // Sampled from /proc here: an idle test process over a long window is not busy.
        assert!(!gauge.busy(t0 + Duration::from_secs(3_600)));
        let mut gauge = CpuGauge { source: || Some(10_000), last: Some((t0, 0)), busy: false, capacity: 400.0 };
        assert!(!gauge.busy(t0 + CpuGauge::WINDOW / 2), "kept until a window has passed");
        // 10,000 ticks in 10 s: 1,000 a second of the 400 two cores offer.
        assert!(gauge.busy(t0 + Duration::from_secs(10)));
        let mut gauge = CpuGauge { source: || Some(1_000 + 100), last: Some((t0, 1_000)), busy: true, capacity: 400.0 };
        // 100 ticks in 1 s: a quarter of the machine.
        assert!(!gauge.busy(t0 + Duration::from_secs(1)));
    }

    #[tokio::test]
    async fn numbers_publishes_after_durable_skips_unchanged_and_leaves_a_gap_for_a_failed_write() {
        let backend = Flaky::default();
        let fail = Arc::clone(&backend.fail_next_write);
        let corrupt = Arc::clone(&backend.corrupt);
        let publisher = Arc::new(CollectingPublisher::default());
        let last_seq = Arc::new(AtomicU64::new(10));
        let (tx, rx) = mpsc::channel(16);
        let pipeline = Pipeline::new(backend, publisher.clone(), Arc::clone(&last_seq), PipelineConfig::default());
        let task = tokio::spawn(pipeline.run(rx));

        assert_eq!(upsert(&tx, &alert("a", Severity::High)).await.unwrap(), 11, "numbered after the recovered 10");
        assert_eq!(upsert(&tx, &alert("a", Severity::High)).await.unwrap(), 11, "unchanged: same number");
        assert_eq!(publisher.published.lock().unwrap().len(), 1, "and not published again");

        *fail.lock().unwrap() = true;
        assert!(upsert(&tx, &alert("a", Severity::Critical)).await.is_err(), "a failed write fails the ticket");
        assert_eq!(publisher.published.lock().unwrap().len(), 1, "nothing is published that is not durable");
        assert_eq!(last_seq.load(Ordering::Acquire), 11);
        assert_eq!(upsert(&tx, &alert("a", Severity::Critical)).await.unwrap(), 13, "12 is a gap, never reused");

        // A stored state that cannot be read is written over, not a reason to hide the alert.
        corrupt.lock().unwrap().push("b".into());
        assert_eq!(upsert(&tx, &alert("b", Severity::High)).await.unwrap(), 14);
        assert_eq!(publisher.published.lock().unwrap().iter().map(|c| c.seq).collect::<Vec<_>>(), vec![11, 13, 14]);

        let (closed, wait) = oneshot::channel();
        tx.send(Job::Close(closed)).await.unwrap();
        wait.await.unwrap();
        task.await.unwrap();
    }

    /// A pipeline waiting up to `interval` for the writes `expected` counts, its process not
    /// busy.
    fn waiting(interval: Duration, expected: &Expected) -> (mpsc::Sender<Job<()>>, Arc<Mutex<Vec<usize>>>) {
        waiting_with(interval, expected, CpuGauge::fixed(false))
    }

    fn waiting_with(
        interval: Duration,
        expected: &Expected,
        cpu: CpuGauge,
    ) -> (mpsc::Sender<Job<()>>, Arc<Mutex<Vec<usize>>>) {
        let backend = Flaky::default();
        let batches = Arc::clone(&backend.batches);
        let config = PipelineConfig { commit_interval: interval, ..PipelineConfig::default() };
        let publisher = Arc::new(CollectingPublisher::default());
        let pipeline = Pipeline::new(backend, publisher, Arc::new(AtomicU64::new(0)), config)
            .with_expected(expected.clone())
            .with_cpu(cpu);
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(pipeline.run(rx));
        (tx, batches)
    }

    /// One message taken in by the ingress: on its way until dropped.
    fn in_flight(expected: &Expected) -> vigil_actors::InTransit {
        expected.transit().enter()
    }

    /// Queue an alert change without waiting for it.
    async fn queue(tx: &mpsc::Sender<Job<()>>, id: &str) -> Durable<u64> {
        let (done, ticket): (_, Durable<u64>) = Durable::channel();
        tx.send(Job::Alert { alert: Box::new(alert(id, Severity::High)), notify: true, done }).await.unwrap();
        ticket
    }

    /// Queue an alert change for a message on its way, then drop its count, as its patient
    /// actor does once the write is queued.
    async fn queue_arrived(tx: &mpsc::Sender<Job<()>>, message: vigil_actors::InTransit, id: &str) -> Durable<u64> {
        let ticket = queue(tx, id).await;
        drop(message);
        ticket
    }

    #[tokio::test]
    async fn under_load_a_batch_waits_for_the_writes_on_their_way_so_one_write_serves_them() {
        let expected = Expected::new();
        // An interval no test outlasts: only the arrivals end the wait.
        let (tx, batches) = waiting(Duration::from_secs(600), &expected);
        let first = in_flight(&expected);
        let a_done = queue_arrived(&tx, first, "a").await;
        a_done.wait().await.unwrap();
        // Two messages in flight; one reaches the pipeline now, the other later.
        let (b, c) = (in_flight(&expected), in_flight(&expected));
        let b_done = queue_arrived(&tx, b, "b").await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let c_done = queue_arrived(&tx, c, "c").await;
        b_done.wait().await.unwrap();
        c_done.wait().await.unwrap();
        assert_eq!(*batches.lock().unwrap(), vec![1, 2], "b waited for c: one write for both");
    }

    #[tokio::test]
    async fn a_batch_waits_for_nothing_when_everything_in_flight_is_queued() {
        let expected = Expected::new();
        let (tx, batches) = waiting(Duration::from_secs(600), &expected);
        // A lone sender: each message's ACK waits on its commit, so nothing else is coming.
        for id in ["a", "b", "c"] {
            let in_flight = in_flight(&expected);
            let ticket = queue_arrived(&tx, in_flight, id).await;
            tokio::time::timeout(Duration::from_secs(60), ticket.wait())
                .await
                .expect("committed without waiting out the interval")
                .unwrap();
        }
        assert_eq!(*batches.lock().unwrap(), vec![1, 1, 1]);
        // A committed message whose ACK is still on its way out holds nothing that counts: its
        // count went when its write was queued, once.
        assert_eq!(expected.transit().count(), 0, "arrived messages no longer count");
        assert_eq!(expected.transit().left(), expected.transit().entered(), "each counted out once");
    }

    /// Commit one lone message, so the next batch may wait (the first after a quiet spell never
    /// does).
    async fn prime(tx: &mpsc::Sender<Job<()>>, expected: &Expected) {
        let in_flight = in_flight(expected);
        let ticket = queue_arrived(tx, in_flight, "primer").await;
        ticket.wait().await.unwrap();
    }

    #[tokio::test]
    async fn a_batch_does_not_wait_for_writes_taken_in_after_it_began_waiting() {
        let expected = Expected::new();
        let (tx, batches) = waiting(Duration::from_secs(600), &expected);
        prime(&tx, &expected).await;
        let (b, c) = (in_flight(&expected), in_flight(&expected));
        let b_done = queue_arrived(&tx, b, "b").await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        // d is taken in while b's batch waits for c: at a steady rate there is always a next
        // one, and a batch that waited for it would wait out its interval every time.
        let d = in_flight(&expected);
        let c_done = queue_arrived(&tx, c, "c").await;
        tokio::time::timeout(Duration::from_secs(60), b_done.wait())
            .await
            .expect("b's batch went with c, without waiting for d")
            .unwrap();
        c_done.wait().await.unwrap();
        let d_done = queue_arrived(&tx, d, "d").await;
        d_done.wait().await.unwrap();
        assert_eq!(*batches.lock().unwrap(), vec![1, 2, 1]);
    }

    #[tokio::test]
    async fn with_the_cpu_busy_a_batch_waits_out_the_interval_for_whatever_comes() {
        let expected = Expected::new();
        let (tx, batches) = waiting_with(Duration::from_millis(500), &expected, CpuGauge::fixed(true));
        prime(&tx, &expected).await;
        // Nothing on its way when a is queued; b comes 50 ms later, and shares a's fsync.
        let a = in_flight(&expected);
        let a_done = queue_arrived(&tx, a, "a").await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let b = in_flight(&expected);
        let b_done = queue_arrived(&tx, b, "b").await;
        a_done.wait().await.unwrap();
        b_done.wait().await.unwrap();
        assert_eq!(*batches.lock().unwrap(), vec![1, 2], "one write for both");
    }

    #[tokio::test]
    async fn a_message_abandoned_on_its_way_stops_counting() {
        let expected = Expected::new();
        let (tx, batches) = waiting(Duration::from_secs(600), &expected);
        prime(&tx, &expected).await;
        let a = in_flight(&expected);
        let b = in_flight(&expected);
        let a_done = queue_arrived(&tx, a, "a").await;
        // b is refused before its actor queues it (the store down, the sender gone): its guard
        // is dropped, and a's batch goes without waiting out the interval.
        drop(b);
        tokio::time::timeout(Duration::from_secs(60), a_done.wait())
            .await
            .expect("the batch went once b was abandoned")
            .unwrap();
        assert_eq!(*batches.lock().unwrap(), vec![1, 1]);
    }

    #[tokio::test]
    async fn a_batch_waits_no_longer_than_the_interval_for_writes_that_do_not_come() {
        let expected = Expected::new();
        let (tx, batches) = waiting(Duration::from_millis(20), &expected);
        let _announced = [in_flight(&expected), in_flight(&expected), in_flight(&expected)];
        queue(&tx, "a").await.wait().await.unwrap();
        // Two announced writes never come: the next batch goes at the interval.
        tokio::time::timeout(Duration::from_secs(60), queue(&tx, "b").await.wait())
            .await
            .expect("the interval bounds the wait")
            .unwrap();
        assert_eq!(*batches.lock().unwrap(), vec![1, 1]);
    }
}
