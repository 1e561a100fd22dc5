//! `/metrics` in the Prometheus text format, written by `metrics-exporter-prometheus`. Every
//! metric name is defined here, once.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use super::AppState;

/// Messages answered with AA/CA.
pub const MLLP_ACCEPTED: &str = "vigil_messages_accepted_total";
/// Messages answered with AE/AR/CE/CR.
pub const MLLP_REJECTED: &str = "vigil_messages_rejected_total";
/// Resends of accepted messages re-acknowledged without processing.
pub const MLLP_DUPLICATES: &str = "vigil_messages_duplicate_total";
/// Bytes received outside MLLP frames and discarded.
pub const MLLP_DISCARDED: &str = "vigil_mllp_discarded_bytes_total";
/// MLLP connections refused (every slot held by a delivering connection, or the peer at its cap).
pub const MLLP_REFUSED: &str = "vigil_mllp_connections_refused_total";
/// MLLP connections that had not delivered a frame, closed to make room.
pub const MLLP_EVICTED: &str = "vigil_mllp_connections_evicted_total";
/// MLLP connections closed for not sending a first frame in time.
pub const MLLP_FIRST_FRAME_TIMEOUTS: &str = "vigil_mllp_first_frame_timeouts_total";
/// MLLP connections closed for a frame too slow (slow drip).
pub const MLLP_FRAME_TIMEOUTS: &str = "vigil_mllp_frame_timeouts_total";
/// MLLP connections closed because the peer did not read its ACKs.
pub const MLLP_WRITE_TIMEOUTS: &str = "vigil_mllp_write_timeouts_total";
/// Failed MLLP accepts (for instance at the file limit).
pub const MLLP_ACCEPT_ERRORS: &str = "vigil_mllp_accept_errors_total";
/// MLLP connections closed at once: their address opened too many too fast.
pub const MLLP_RATE_LIMITED: &str = "vigil_mllp_connections_rate_limited_total";
/// HTTP connections closed at once: their address opened too many too fast.
pub const HTTP_RATE_LIMITED: &str = "vigil_http_connections_rate_limited_total";
/// Live patient actors.
pub const PATIENTS: &str = "vigil_patient_actors";
/// Last alert sequence number committed.
pub const ALERT_SEQ: &str = "vigil_alert_last_seq";
/// The host's background writeback threshold in bytes (docs/storage.md, "Host writeback"):
/// 64 MiB or more, and each table the embedded store flushes stalls the ACKs committed meanwhile.
pub const HOST_WRITEBACK: &str = "vigil_host_writeback_background_bytes";
/// Alert changes a webhook endpoint accepted (2xx).
pub const WEBHOOK_DELIVERED: &str = "vigil_webhook_delivered_total";
/// Webhook attempts that failed and were retried.
pub const WEBHOOK_RETRIED: &str = "vigil_webhook_retried_total";
/// Alert changes given up on and written to the webhook dead letters.
pub const WEBHOOK_DEAD_LETTERED: &str = "vigil_webhook_dead_lettered_total";

/// Observation values of a known analyte dropped at ingest instead of scored, labelled
/// `analyte` (canonical name) and `reason` (`unit_missing`, `unit_incompatible`,
/// `unit_unknown`, `implausible`, `not_numeric`, `unknown_answer`): both bounded sets.
pub const OBSERVATIONS_DROPPED: &str = "vigil_observations_dropped_total";

/// Devices with a live actor (heard from since start, within `[devices] max_devices`).
pub const DEVICES_LIVE: &str = "vigil_devices_live";
/// Devices silent past their threshold (`device.offline` raised, not yet back).
pub const DEVICES_OFFLINE: &str = "vigil_devices_offline";
/// Readings of devices with no current association, quarantined since start.
pub const DEVICE_QUARANTINED: &str = "vigil_device_quarantined_readings_total";
/// Quarantined readings dropped, oldest first, to keep the quarantine within its bounds.
pub const DEVICE_QUARANTINE_DROPPED: &str = "vigil_device_quarantine_dropped_total";
/// Sightings of devices beyond `[devices] max_devices`, not tracked.
pub const DEVICES_UNTRACKED: &str = "vigil_device_untracked_sightings_total";

/// Console WebSocket sessions open.
pub const WEBSOCKET_SESSIONS: &str = "vigil_websocket_sessions";

/// Seconds an HL7 message spends in each stage of its path, a histogram labelled `stage`
/// (one of [`STAGES`]); `vigil-loadtest run --stages` reads it before and after its window.
pub const STAGE_SECONDS: &str = "vigil_stage_seconds";
/// The stages, in data-flow order: MLLP frame decode; HL7 parse; mapping to events; routing
/// (resend check, the in-flight permit, handing each patient's bundle to its actor's bounded
/// mailbox); one rule evaluation in a patient actor; from routed to durable (the actor's queue,
/// rules, the store's group commit, until the connection's task sees it), and its three parts:
/// until the actor has queued the append (`in_actor`: its mailbox, the rules, sealing), until
/// the store completed the write (`in_store`: the committer's queue, the batch's wait, the
/// write and fsync), until the connection's task sees it (`ack_wake`); writing the ACK frame to
/// the socket.
pub const STAGES: [&str; 10] =
    ["decode", "parse", "map", "route", "rules", "commit_wait", "in_actor", "in_store", "ack_wake", "ack_write"];
/// The store's own stage, per batch rather than per message: one group commit's write through
/// the backend (fjall: the write batch and its fsync; ScyllaDB: the batch's writes). What
/// `commit_wait` waits on at least once; its count beside `commit_wait`'s gives the messages
/// per batch.
pub const STORE_WRITE_STAGE: &str = "store_write";
/// Bucket bounds of [`STAGE_SECONDS`], seconds: 1 µs to 10 s, finer between 1 and 10 ms, where
/// the ACK and alert objectives of a loaded server lie (a p99 read from a 2.5-5 ms bucket
/// cannot say whether 5 ms is met).
pub const STAGE_BUCKETS: [f64; 26] = [
    1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2e-3, 2.5e-3, 3e-3, 4e-3, 5e-3, 7.5e-3, 1e-2,
    2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Seconds each step of a patient actor's start takes, a histogram labelled `step` (one of
/// [`START_STEPS`]); buckets as [`STAGE_BUCKETS`].
pub const ACTOR_START_SECONDS: &str = "vigil_actor_start_seconds";
/// The steps of a start, in order: reading the state snapshot; decoding it; reading the events
/// logged since; reading open alerts (after a failure only); spawning the actor (the rule
/// window rebuilt); and the whole wait of the message that asked for the actor.
pub const START_STEPS: [&str; 6] = ["snapshot_read", "snapshot_decode", "history_read", "open_alerts", "spawn", "wait"];
/// Patient actor starts, labelled `from`: `snapshot` or `log` (replayed, no usable snapshot).
pub const ACTOR_STARTS: &str = "vigil_actor_starts_total";
/// Patient actors that failed (a handler panicked); each restarts on its patient's next use.
pub const ACTOR_FAILURES: &str = "vigil_patient_actor_failures_total";

/// How often recorded stage times are folded into the exporter's buckets; bounds the memory
/// they hold between scrapes.
pub const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Handles to the per-stage histograms. Recording is an atomic append and the handles are
/// cheap to clone; `Stages::default()` records nowhere (tests, tools).
#[derive(Clone)]
pub struct Stages {
    /// MLLP frame decode.
    pub decode: metrics::Histogram,
    /// HL7 parse.
    pub parse: metrics::Histogram,
    /// Mapping to events.
    pub map: metrics::Histogram,
    /// Resend check, permit, hand-off to the actors.
    pub route: metrics::Histogram,
    /// One rule evaluation.
    pub rules: metrics::Histogram,
    /// Routed to durable (as the connection's task sees it).
    pub commit_wait: metrics::Histogram,
    /// Of `commit_wait`, until the actor queued the append.
    pub in_actor: metrics::Histogram,
    /// Of `commit_wait`, from the append queued to the store completing the write.
    pub in_store: metrics::Histogram,
    /// Of `commit_wait`, from the store completing the write to the connection's task seeing it.
    pub ack_wake: metrics::Histogram,
    /// ACK frame write.
    pub ack_write: metrics::Histogram,
}

impl Default for Stages {
    fn default() -> Self {
        let [decode, parse, map, route, rules, commit_wait, in_actor, in_store, ack_wake, ack_write] =
            STAGES.map(|_| metrics::Histogram::noop());
        Stages { decode, parse, map, route, rules, commit_wait, in_actor, in_store, ack_wake, ack_write }
    }
}

impl Stages {
    /// Record the time since `started` into `stage`.
    pub fn since(stage: &metrics::Histogram, started: std::time::Instant) {
        stage.record(started.elapsed());
    }
}

/// The rule engine, each evaluation timed into the `rules` stage.
pub struct TimedRules {
    inner: std::sync::Arc<dyn vigil_actors::RuleEngine>,
    rules: metrics::Histogram,
}

impl TimedRules {
    /// Time `inner`'s evaluations into `stages.rules`.
    pub fn new(inner: std::sync::Arc<dyn vigil_actors::RuleEngine>, stages: &Stages) -> Self {
        TimedRules { inner, rules: stages.rules.clone() }
    }
}

impl vigil_actors::RuleEngine for TimedRules {
    fn evaluate(
        &self,
        view: &std::sync::Arc<vigil_actors::PatientView>,
        triggers: &[&str],
    ) -> Vec<vigil_actors::RuleOutcome> {
        let started = std::time::Instant::now();
        let outcomes = self.inner.evaluate(view, triggers);
        Stages::since(&self.rules, started);
        outcomes
    }

    fn evaluate_all(&self, view: &std::sync::Arc<vigil_actors::PatientView>) -> Vec<vigil_actors::RuleOutcome> {
        self.inner.evaluate_all(view)
    }
}

/// One server's Prometheus recorder: every scrape sets the values from their sources (the
/// ingest counters, the router, the alert log, the webhook counters, the session registry)
/// and the exporter writes the exposition text. A recorder per server, not a global one, so
/// several servers in one process (the integration tests) keep their own numbers.
#[derive(Clone)]
pub struct Metrics {
    recorder: std::sync::Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
}

impl Default for Metrics {
    fn default() -> Self {
        let builder = PrometheusBuilder::new();
        // Only fails for an empty bucket list, and STAGE_BUCKETS is not empty.
        let builder = builder
            .set_buckets_for_metric(Matcher::Full(STAGE_SECONDS.to_owned()), &STAGE_BUCKETS)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full(ACTOR_START_SECONDS.to_owned()), &STAGE_BUCKETS))
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        let metrics = Metrics { recorder: std::sync::Arc::new(recorder), handle };
        metrics.describe();
        metrics
    }
}

impl Metrics {
    fn describe(&self) {
        metrics::with_local_recorder(self.recorder.as_ref(), || {
            metrics::describe_counter!(MLLP_ACCEPTED, "messages answered with AA/CA");
            metrics::describe_counter!(MLLP_REJECTED, "messages answered with AE/AR/CE/CR");
            metrics::describe_counter!(MLLP_DUPLICATES, "resends re-acknowledged without processing");
            metrics::describe_counter!(MLLP_DISCARDED, "bytes received outside MLLP frames and discarded");
            metrics::describe_gauge!(PATIENTS, "live patient actors");
            metrics::describe_gauge!(ALERT_SEQ, "last alert sequence number committed");
            metrics::describe_gauge!(
                HOST_WRITEBACK,
                metrics::Unit::Bytes,
                "the host's background writeback threshold (vm.dirty_background_*); 64 MiB or more stalls durable ACKs at each table flush"
            );
            metrics::describe_counter!(WEBHOOK_DELIVERED, "alert changes a webhook endpoint accepted");
            metrics::describe_counter!(WEBHOOK_RETRIED, "webhook attempts that failed and were retried");
            metrics::describe_counter!(WEBHOOK_DEAD_LETTERED, "alert changes written to the webhook dead letters");
            metrics::describe_counter!(
                OBSERVATIONS_DROPPED,
                "observation values dropped at ingest, by analyte and reason"
            );
            metrics::describe_gauge!(WEBSOCKET_SESSIONS, "console WebSocket sessions open");
            metrics::describe_histogram!(
                STAGE_SECONDS,
                metrics::Unit::Seconds,
                "seconds an HL7 message spends in each stage of its path, by stage"
            );
            metrics::describe_histogram!(
                ACTOR_START_SECONDS,
                metrics::Unit::Seconds,
                "seconds each step of a patient actor's start takes, by step"
            );
            metrics::describe_counter!(ACTOR_STARTS, "patient actor starts, from a snapshot or from the log");
            metrics::describe_counter!(ACTOR_FAILURES, "patient actors that failed and restart on next use");
            metrics::describe_gauge!(DEVICES_LIVE, "devices with a live actor");
            metrics::describe_gauge!(DEVICES_OFFLINE, "devices silent past their threshold (device.offline raised)");
            metrics::describe_counter!(DEVICE_QUARANTINED, "readings of unassociated devices quarantined");
            metrics::describe_counter!(
                DEVICE_QUARANTINE_DROPPED,
                "quarantined readings dropped, oldest first, beyond the quarantine's bounds"
            );
            metrics::describe_counter!(DEVICES_UNTRACKED, "sightings of devices beyond max_devices, not tracked");
        });
    }

    /// This server's per-stage histograms.
    pub fn stages(&self) -> Stages {
        self.record(|| {
            let stage = |name: &'static str| metrics::histogram!(STAGE_SECONDS, "stage" => name);
            let [decode, parse, map, route, rules, commit_wait, in_actor, in_store, ack_wake, ack_write] =
                STAGES.map(stage);
            Stages { decode, parse, map, route, rules, commit_wait, in_actor, in_store, ack_wake, ack_write }
        })
    }

    /// The store pipeline's timer of each batch's write ([`STORE_WRITE_STAGE`]).
    pub fn store_write_timer(&self) -> crate::store::commit::WriteTimer {
        self.record(|| {
            crate::store::commit::WriteTimer::new(metrics::histogram!(STAGE_SECONDS, "stage" => STORE_WRITE_STAGE))
        })
    }

    /// This server's handles for timing patient actor starts.
    pub fn start_timings(&self) -> vigil_actors::StartTimings {
        self.record(|| {
            let step = |name: &'static str| metrics::histogram!(ACTOR_START_SECONDS, "step" => name);
            let [snapshot_read, snapshot_decode, history_read, open_alerts, spawn, wait] = START_STEPS.map(step);
            vigil_actors::StartTimings {
                snapshot_read,
                snapshot_decode,
                history_read,
                open_alerts,
                spawn,
                wait,
                from_snapshot: metrics::counter!(ACTOR_STARTS, "from" => "snapshot"),
                from_log: metrics::counter!(ACTOR_STARTS, "from" => "log"),
                failures: metrics::counter!(ACTOR_FAILURES),
            }
        })
    }

    /// Fold recorded histogram values into the exporter's buckets every [`UPKEEP_EVERY`] until
    /// `stop` is cancelled (without it they would pile up between scrapes).
    pub async fn upkeep(self, stop: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(UPKEEP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.handle.run_upkeep(),
                () = stop.cancelled() => return,
            }
        }
    }

    /// Run `f` with this server's recorder as the `metrics::` macros' target.
    pub fn record<T>(&self, f: impl FnOnce() -> T) -> T {
        metrics::with_local_recorder(self.recorder.as_ref(), f)
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        self.handle.render()
    }
}

/// Render the metrics; behind a token when `[http] metrics_require_auth` is set.
pub async fn render(
    axum::extract::State(state): State<AppState>,
    webhooks: Option<axum::Extension<crate::alerts::webhooks::Webhooks>>,
    devices: Option<axum::Extension<std::sync::Arc<vigil_actors::device::DeviceRegistry>>>,
    request: axum::extract::Request,
) -> Result<impl IntoResponse, super::error::ApiError> {
    if state.metrics_require_auth {
        let (mut parts, _) = request.into_parts();
        <super::extract::Authenticated as axum::extract::FromRequestParts<AppState>>::from_request_parts(
            &mut parts, &state,
        )
        .await?;
    }
    let m = &state.ingress.metrics;
    let webhook = webhooks.map(|w| w.0.metrics);
    let count = |read: fn(&crate::alerts::webhooks::WebhookMetrics) -> u64| webhook.as_deref().map_or(0, read);
    state.metrics.record(|| {
        metrics::counter!(MLLP_ACCEPTED).absolute(m.accepted.load(Ordering::Relaxed));
        metrics::counter!(MLLP_REJECTED).absolute(m.rejected.load(Ordering::Relaxed));
        metrics::counter!(MLLP_DUPLICATES).absolute(m.duplicates.load(Ordering::Relaxed));
        metrics::counter!(MLLP_DISCARDED).absolute(m.discarded_bytes.load(Ordering::Relaxed));
        let l = &state.mllp;
        for (name, counter) in [
            (MLLP_REFUSED, &l.refused),
            (MLLP_EVICTED, &l.evicted),
            (MLLP_FIRST_FRAME_TIMEOUTS, &l.first_frame_timeouts),
            (MLLP_FRAME_TIMEOUTS, &l.frame_timeouts),
            (MLLP_WRITE_TIMEOUTS, &l.write_timeouts),
            (MLLP_ACCEPT_ERRORS, &l.accept_errors),
            (MLLP_RATE_LIMITED, &l.rate_limited),
        ] {
            metrics::counter!(name).absolute(counter.load(Ordering::Relaxed));
        }
        metrics::counter!(HTTP_RATE_LIMITED).absolute(state.http_connections.rate_limited.load(Ordering::Relaxed));
        metrics::gauge!(PATIENTS).set(state.router.patient_count() as f64);
        // Sequence numbers stay far below 2^53, where f64 is exact.
        metrics::gauge!(ALERT_SEQ).set(state.alerts.last_seq() as f64);
        metrics::counter!(WEBHOOK_DELIVERED).absolute(count(|m| m.delivered.load(Ordering::Relaxed)));
        metrics::counter!(WEBHOOK_RETRIED).absolute(count(|m| m.retried.load(Ordering::Relaxed)));
        metrics::counter!(WEBHOOK_DEAD_LETTERED).absolute(count(|m| m.dead_lettered.load(Ordering::Relaxed)));
        for (analyte, reason, n) in state.hl7.mapper().dropped().nonzero() {
            metrics::counter!(OBSERVATIONS_DROPPED, "analyte" => analyte.to_string(), "reason" => reason.label())
                .absolute(n);
        }
        metrics::gauge!(WEBSOCKET_SESSIONS).set(state.ws_sessions.count() as f64);
        if let Some(threshold) = crate::store::writeback::Threshold::of_host() {
            metrics::gauge!(HOST_WRITEBACK).set(threshold.bytes() as f64);
        }
        if let Some(axum::Extension(devices)) = &devices {
            metrics::gauge!(DEVICES_LIVE).set(devices.device_count() as f64);
            metrics::gauge!(DEVICES_OFFLINE).set(devices.offline_count() as f64);
            metrics::counter!(DEVICE_QUARANTINED).absolute(devices.quarantined.load(Ordering::Relaxed));
            metrics::counter!(DEVICE_QUARANTINE_DROPPED).absolute(devices.quarantine_dropped.load(Ordering::Relaxed));
            metrics::counter!(DEVICES_UNTRACKED).absolute(devices.untracked.load(Ordering::Relaxed));
        }
    });
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, name: &str) -> Option<String> {
        text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ').map(str::to_string))
    }

    #[test]
    fn values_set_at_scrape_time_render_under_their_names_with_types_and_labels() {
        let metrics = Metrics::default();
        metrics.record(|| {
            metrics::counter!(MLLP_ACCEPTED).absolute(0);
            metrics::counter!(WEBHOOK_RETRIED).absolute(6);
            metrics::gauge!(ALERT_SEQ).set(41.0);
            metrics::counter!(OBSERVATIONS_DROPPED, "analyte" => "sbp", "reason" => "unit_missing").absolute(2);
        });
        metrics.record(|| metrics::counter!(WEBHOOK_RETRIED).absolute(7));
        let text = metrics.render();
        assert_eq!(value(&text, MLLP_ACCEPTED).as_deref(), Some("0"), "a zero counter is still exposed:\n{text}");
        assert_eq!(value(&text, WEBHOOK_RETRIED).as_deref(), Some("7"), "absolute, not added:\n{text}");
        assert_eq!(value(&text, ALERT_SEQ).as_deref(), Some("41"), "{text}");
        assert!(text.contains(&format!("# TYPE {WEBHOOK_RETRIED} counter")), "{text}");
        assert!(text.contains(&format!("# TYPE {ALERT_SEQ} gauge")), "{text}");
        assert!(
            text.contains(&format!("{OBSERVATIONS_DROPPED}{{analyte=\"sbp\",reason=\"unit_missing\"}} 2")),
            "{text}"
        );
        let other = Metrics::default();
        assert_eq!(value(&other.render(), WEBHOOK_RETRIED), None, "each server has its own recorder");
    }

    #[test]
    fn stage_times_render_as_one_histogram_labelled_by_stage_with_the_stage_buckets() {
        let metrics = Metrics::default();
        let stages = metrics.stages();
        stages.parse.record(std::time::Duration::from_micros(3));
        stages.parse.record(std::time::Duration::from_micros(30));
        stages.ack_write.record(std::time::Duration::from_millis(20));
        Stages::default().parse.record(1.0);
        let text = metrics.render();
        let line = |suffix: &str, labels: &str| value(&text, &format!("{STAGE_SECONDS}_{suffix}{{{labels}}}"));
        assert_eq!(line("bucket", "stage=\"parse\",le=\"0.000001\"").as_deref(), Some("0"), "{text}");
        assert_eq!(line("bucket", "stage=\"parse\",le=\"0.000005\"").as_deref(), Some("1"), "{text}");
        assert_eq!(line("bucket", "stage=\"parse\",le=\"0.00005\"").as_deref(), Some("2"), "{text}");
        assert_eq!(line("count", "stage=\"parse\"").as_deref(), Some("2"), "a no-op handle records nowhere:\n{text}");
        assert_eq!(line("count", "stage=\"ack_write\"").as_deref(), Some("1"), "{text}");
        assert_eq!(line("bucket", "stage=\"ack_write\",le=\"0.01\"").as_deref(), Some("0"), "{text}");
        assert_eq!(line("bucket", "stage=\"ack_write\",le=\"0.025\"").as_deref(), Some("1"), "{text}");
        assert!(text.contains(&format!("# TYPE {STAGE_SECONDS} histogram")), "{text}");
    }

    #[test]
    fn timed_rules_answer_as_the_engine_and_count_each_evaluation() {
        use vigil_actors::RuleEngine as _;
        let metrics = Metrics::default();
        let stages = metrics.stages();
        let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = std::sync::Arc::clone(&calls);
        let engine = vigil_actors::fakes::FnRules(move |_: &vigil_actors::PatientView, _: &[&str]| {
            counted.fetch_add(1, Ordering::Relaxed);
            Vec::new()
        });
        let timed = TimedRules::new(std::sync::Arc::new(engine), &stages);
        let view = std::sync::Arc::new(vigil_actors::PatientView::default());
        assert!(timed.evaluate(&view, &["hr"]).is_empty());
        assert!(timed.evaluate(&view, &["rr"]).is_empty());
        timed.evaluate_all(&view);
        assert_eq!(calls.load(Ordering::Relaxed), 3, "every call reaches the engine");
        let text = metrics.render();
        assert_eq!(value(&text, &format!("{STAGE_SECONDS}_count{{stage=\"rules\"}}")).as_deref(), Some("2"), "{text}");
    }
}
