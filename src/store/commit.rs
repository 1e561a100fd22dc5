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
//! Under load a batch waits, up to [`PipelineConfig::commit_interval`] after the last one
//! began, for the writes the ingress says are on their way ([`Expected`]): each fsync costs
//! the kernel about 100 µs of CPU on our VMs, and without the wait most batches carried one to
//! eight messages (docs/BENCHMARKS.md, "commit interval"). A batch never waits when
//! everything in flight is already queued, so a sender with one message in flight is not
//! slowed.
//!
//! A number handed to a change whose write failed is not reused (a gap in the alert log;
//! readers never assume the sequence is contiguous), because a partial write may have left it
//! somewhere.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::{Semaphore, mpsc, oneshot};
use vigil_actors::{Alert, AlertPublisher, AlertStatus, DurableSender, SequencedAlert, StoreError};

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

/// Writes on their way to the pipeline: the ingress's messages in flight, counted by the
/// permits it holds for them from the moment a message is taken in until it is answered. A
/// batch waits for them (up to its interval) instead of leaving them to an fsync of their own.
/// A pipeline that is told of none never waits.
#[derive(Debug, Clone)]
pub struct Expected {
    permits: Arc<Semaphore>,
    capacity: usize,
}

impl Expected {
    /// At most `capacity` messages in flight (the ingress's permits, `ingest_permits`).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Expected { permits: Arc::new(Semaphore::new(capacity)), capacity }
    }

    /// The permits the ingress takes for each message in flight.
    pub fn permits(&self) -> &Arc<Semaphore> {
        &self.permits
    }

    /// Writes on their way now: the permits held.
    pub fn get(&self) -> usize {
        self.capacity - self.permits.available_permits()
    }
}

impl Default for Expected {
    /// None, ever.
    fn default() -> Self {
        Expected { permits: Arc::new(Semaphore::new(0)), capacity: 0 }
    }
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
        }
    }

    /// Wait for the writes `expected` counts (up to the commit interval).
    pub fn with_expected(mut self, expected: Expected) -> Self {
        self.expected = expected;
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
                // Full, or everything in flight is here (a lone sender's next message waits on
                // this batch's ACK): waiting would gain nothing.
                let Some(deadline) = deadline else { break };
                if close.is_some() || jobs.len() >= max_batch || self.expected.get() <= jobs.len() {
                    break;
                }
                match tokio::time::timeout_at(deadline.into(), rx.recv()).await {
                    Ok(Some(job)) => next = Some(job),
                    Ok(None) | Err(_) => break,
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

    /// A pipeline waiting up to `interval` for the writes `expected` counts.
    fn waiting(interval: Duration, expected: &Expected) -> (mpsc::Sender<Job<()>>, Arc<Mutex<Vec<usize>>>) {
        let backend = Flaky::default();
        let batches = Arc::clone(&backend.batches);
        let config = PipelineConfig { commit_interval: interval, ..PipelineConfig::default() };
        let publisher = Arc::new(CollectingPublisher::default());
        let pipeline =
            Pipeline::new(backend, publisher, Arc::new(AtomicU64::new(0)), config).with_expected(expected.clone());
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(pipeline.run(rx));
        (tx, batches)
    }

    /// One message taken in by the ingress, until the permit is dropped.
    fn in_flight(expected: &Expected) -> tokio::sync::OwnedSemaphorePermit {
        Arc::clone(expected.permits()).try_acquire_owned().unwrap()
    }

    /// Queue an alert change without waiting for it.
    async fn queue(tx: &mpsc::Sender<Job<()>>, id: &str) -> Durable<u64> {
        let (done, ticket): (_, Durable<u64>) = Durable::channel();
        tx.send(Job::Alert { alert: Box::new(alert(id, Severity::High)), notify: true, done }).await.unwrap();
        ticket
    }

    #[tokio::test]
    async fn under_load_a_batch_waits_for_the_writes_on_their_way_so_one_write_serves_them() {
        let expected = Expected::new(16);
        // An interval no test outlasts: only the arrivals end the wait.
        let (tx, batches) = waiting(Duration::from_secs(600), &expected);
        let first = in_flight(&expected);
        queue(&tx, "a").await.wait().await.unwrap();
        drop(first);
        // Two messages in flight; one reaches the pipeline now, the other later.
        let (b, c) = (in_flight(&expected), in_flight(&expected));
        let b_done = queue(&tx, "b").await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let c_done = queue(&tx, "c").await;
        b_done.wait().await.unwrap();
        c_done.wait().await.unwrap();
        drop((b, c));
        assert_eq!(*batches.lock().unwrap(), vec![1, 2], "b waited for c: one write for both");
    }

    #[tokio::test]
    async fn a_batch_waits_for_nothing_when_everything_in_flight_is_queued() {
        let expected = Expected::new(16);
        let (tx, batches) = waiting(Duration::from_secs(600), &expected);
        // A lone sender: each message's ACK waits on its commit, so nothing else is coming.
        for id in ["a", "b", "c"] {
            let _in_flight = in_flight(&expected);
            let ticket = queue(&tx, id).await;
            tokio::time::timeout(Duration::from_secs(60), ticket.wait())
                .await
                .expect("committed without waiting out the interval")
                .unwrap();
        }
        assert_eq!(*batches.lock().unwrap(), vec![1, 1, 1]);
    }

    #[tokio::test]
    async fn a_batch_waits_no_longer_than_the_interval_for_writes_that_do_not_come() {
        let expected = Expected::new(16);
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
