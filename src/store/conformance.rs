//! The conformance suite of the store ports: one generic async function that every
//! `EventStore` + `AlertStore` adapter must pass (embedded, the in-memory fake, ScyllaDB over
//! kassandra for what kassandra supports, a real ScyllaDB cluster when `VIGIL_TEST_SCYLLA` is
//! set). It panics on the first broken promise. Ids are random, so it can run against a shared
//! cluster.

use std::sync::{Arc, Mutex, OnceLock};

use time::OffsetDateTime;
use vigil_actors::{
    Alert, AlertId, AlertPatient, AlertPublisher, AlertStatus, AlertStore, ClinicalEvent, Demographics, Envelope,
    EventKind, EventStore, FromMessage, MessageKey, MessageLog, Observation, PatientId, PatientKey, Phi, ResultStatus,
    RuleRef, SequencedAlert, Severity,
};

/// What an adapter's backend can be asked. kassandra drops clustering-key ranges from the
/// statements it prepares, so range reads are checked on the embedded store, the fake and a
/// real cluster only.
#[derive(Debug, Clone, Copy)]
pub struct Capabilities {
    /// `events_since` and `alerts_after` (clustering ranges on ScyllaDB).
    pub range_reads: bool,
}

impl Capabilities {
    /// Everything.
    pub const FULL: Capabilities = Capabilities { range_reads: true };
    /// ScyllaDB over kassandra.
    pub const KASSANDRA: Capabilities = Capabilities { range_reads: false };
}

/// Records published changes and, for each, whether the store already counted it as committed
/// (`last_seq() >= seq`) when it was published.
#[derive(Default)]
pub struct RecordingPublisher {
    store: OnceLock<Arc<dyn AlertStore>>,
    /// (change, committed when published)
    pub published: Mutex<Vec<(Arc<SequencedAlert>, bool)>>,
}

impl RecordingPublisher {
    fn seqs(&self) -> Vec<u64> {
        self.published.lock().map(|p| p.iter().map(|(c, _)| c.seq).collect()).unwrap_or_default()
    }
}

impl AlertPublisher for RecordingPublisher {
    fn publish(&self, change: Arc<SequencedAlert>) {
        let committed = self.store.get().is_some_and(|s| s.last_seq() >= change.seq);
        if let Ok(mut p) = self.published.lock() {
            p.push((change, committed));
        }
    }
}

fn unique(tag: &str) -> String {
    format!("{tag}-{:016x}", rand::random::<u64>())
}

/// The HL7 message `control_id` from the conformance sender, received at `at`, as the one
/// bundle of its events (which writes its log entry).
pub fn message(control_id: &str, at: OffsetDateTime) -> FromMessage {
    let envelope = Envelope {
        key: MessageKey::hl7("CONF|LAB", control_id),
        raw: Phi(format!("MSH|^~\\&|CONF|LAB|||||ORU^R01|{control_id}|P|2.6")),
        received_at: at,
    };
    FromMessage { envelope: Arc::new(envelope), logs_message: true, parts: Vec::new(), in_transit: None }
}

/// A small observation event.
pub fn event(patient: &PatientId, mrn: &str, at: OffsetDateTime, value: f64) -> ClinicalEvent {
    ClinicalEvent {
        patient_id: patient.clone(),
        patient: PatientKey { authority: "HOSP".into(), mrn: Phi(mrn.into()) },
        demographics: Demographics { name: Phi("Conformance^Casey".into()), ..Default::default() },
        location: None,
        received_at: at,
        kind: EventKind::Observations {
            observations: vec![Observation {
                name: "hr".into(),
                value: Some(value),
                text: None,
                unit: "/min".into(),
                observed_at: at,
                source_code: "MDC|147842".into(),
                device: None,
                status: ResultStatus::Final,
                result_key: String::new(),
                reference_range: None,
                abnormal_flags: vec![],
            }],
        },
    }
}

/// An alert for `patient` on `unit`.
pub fn alert(
    id: &str,
    patient: &PatientId,
    unit: &str,
    severity: Severity,
    status: AlertStatus,
    at: OffsetDateTime,
) -> Alert {
    Alert {
        id: AlertId(id.into()),
        patient: AlertPatient {
            id: patient.clone(),
            mrn: Phi("MRN-CONF".into()),
            name: Phi("Conformance, Casey".into()),
            unit: unit.into(),
            room: "01".into(),
            bed: "1".into(),
        },
        rule: RuleRef { id: "conf.rule".into(), version: "v1".into() },
        finding: Some("conf-finding".into()),
        severity,
        // Distinct from `raised_at`, so a store that loses it is caught.
        severity_since: at + time::Duration::seconds(30),
        status,
        score: Some(2.0),
        summary: "conformance".into(),
        details: vigil_actors::Details::from_value(&serde_json::json!({"k": 1})),
        raised_at: at,
        updated_at: at,
        acknowledged: None,
        resolved: None,
        escalation: None,
        comments: Vec::new(),
        stale: true,
        reopened: 1,
    }
}

/// Run the whole suite. `publisher` must be the one the store publishes to.
pub async fn run<S: EventStore + AlertStore + MessageLog>(
    store: Arc<S>,
    publisher: Arc<RecordingPublisher>,
    caps: Capabilities,
) {
    let events: Arc<dyn EventStore> = store.clone();
    let alerts: Arc<dyn AlertStore> = store.clone();
    let log: Arc<dyn MessageLog> = store;
    let _ = publisher.store.set(Arc::clone(&alerts));
    // Whole milliseconds: every backend keeps at least that precision.
    let t0 = OffsetDateTime::from_unix_timestamp(OffsetDateTime::now_utc().unix_timestamp() - 3600).unwrap();
    events_round_trip(&events, &log, t0, caps).await;
    alert_changes(&alerts, &publisher, t0, caps).await;
    events_with_their_alerts(&events, &alerts, &publisher, t0, caps).await;
    snapshots(&events).await;
    parts_logged_with_their_events(&events, &log, t0).await;
}

/// The parts of a message (FHIR transaction entries) are logged under their own keys with
/// the bundle that carries their events: each recognised alone, for its patient; the
/// message's own entry only with the bundle that logs it.
async fn parts_logged_with_their_events(events: &Arc<dyn EventStore>, log: &Arc<dyn MessageLog>, t0: OffsetDateTime) {
    let run = unique("tx");
    let fhir = |id: String| MessageKey { source: vigil_actors::Source::Fhir, sender: "conf-gw".into(), id };
    let envelope = Arc::new(Envelope {
        key: fhir(format!("Bundle?identifier=urn:conf|{run}")),
        raw: Phi("{\"resourceType\":\"Bundle\"}".into()),
        received_at: t0,
    });
    let (first, second) = (PatientId(unique("part")), PatientId(unique("part")));
    let part = |n: usize| fhir(format!("Observation?identifier=urn:conf|{run}-{n}"));
    // Two patients: the first bundle carries two parts and not the message's entry; the last
    // carries one part and the message's entry.
    let bundles = [(&first, false, vec![part(0), part(1)]), (&second, true, vec![part(2)])];
    for (patient, logs_message, parts) in bundles {
        let message = FromMessage { envelope: Arc::clone(&envelope), logs_message, parts, in_transit: None };
        let e = event(patient, "MRN-CONF", t0, 1.0);
        events.append_all(Some(&message), &[e], &[]).await.unwrap().wait().await.expect("durable");
    }
    for (n, patient) in [(0, &first), (1, &first), (2, &second)] {
        let seen = log.accepted_message(&part(n)).await.unwrap().expect("a part is accepted with its events");
        assert_eq!((&seen.patient_id, seen.received_at), (patient, t0), "part {n}");
    }
    assert!(log.accepted_message(&part(3)).await.unwrap().is_none(), "only the parts sent");
    let message = log.accepted_message(&envelope.key).await.unwrap().expect("the message is logged once");
    assert_eq!(&message.patient_id, &second, "by the bundle that logs it");
    let hl7 = MessageKey::hl7("conf-gw", part(0).id);
    assert!(log.accepted_message(&hl7).await.unwrap().is_none(), "a part's key is its feed's");
}

/// A patient's state snapshot: the latest written replaces the earlier, a take returns it
/// once (the next start replays the log), and each patient has its own.
async fn snapshots(events: &Arc<dyn EventStore>) {
    let patient = PatientId(unique("snap"));
    let other = PatientId(unique("snap"));
    assert_eq!(events.take_snapshot(&patient).await.unwrap(), None, "none before the first stop");
    events.save_snapshot(&patient, b"{\"version\":1,\"first\":true}").await.unwrap();
    let latest = b"{\"version\":1,\"name\":\"Conformance^Casey\"}".to_vec();
    events.save_snapshot(&patient, &latest).await.unwrap();
    assert_eq!(events.take_snapshot(&other).await.unwrap(), None, "another patient's is not this one's");
    assert_eq!(events.take_snapshot(&patient).await.unwrap(), Some(latest), "the latest replaces the earlier");
    assert_eq!(events.take_snapshot(&patient).await.unwrap(), None, "taken once: a second start replays the log");
}

/// A message's events and the alert changes the rules made of them share one ticket: once it
/// resolves, both are stored and the alert is published; the same again changes nothing.
async fn events_with_their_alerts(
    events: &Arc<dyn EventStore>,
    alerts: &Arc<dyn AlertStore>,
    publisher: &Arc<RecordingPublisher>,
    t0: OffsetDateTime,
    caps: Capabilities,
) {
    let patient = PatientId(unique("pat"));
    let raised = alert(&unique("alert"), &patient, "ICU", Severity::High, AlertStatus::Active, t0);
    let e = event(&patient, "MRN-CONF", t0, 24.0);
    events
        .append_all(Some(&message(&unique("ctl"), t0)), std::slice::from_ref(&e), &[(raised.clone(), true)])
        .await
        .expect("queued")
        .wait()
        .await
        .expect("durable");
    let stored = alerts.alert(&raised.id).await.unwrap().expect("the alert is stored with its event");
    assert_eq!(stored.alert, raised);
    assert!(publisher.seqs().contains(&stored.seq), "and published once durable");
    if caps.range_reads {
        assert!(events.events_since(&patient, t0).await.unwrap().iter().any(|x| x == &e));
    }
    let before = publisher.seqs().len();
    let again = event(&patient, "MRN-CONF", t0, 24.0);
    let resent = message(&unique("ctl"), t0);
    events
        .append_all(Some(&resent), std::slice::from_ref(&again), &[(raised.clone(), true)])
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(publisher.seqs().len(), before, "an identical alert state is not published again");
}

async fn events_round_trip(
    events: &Arc<dyn EventStore>,
    log: &Arc<dyn MessageLog>,
    t0: OffsetDateTime,
    caps: Capabilities,
) {
    // Many concurrent appenders, one patient each, 25 events apiece.
    let patients: Vec<PatientId> = (0..4).map(|_| PatientId(unique("pat"))).collect();
    let run = unique("ctl");
    let mut tasks = Vec::new();
    for (p, patient) in patients.iter().enumerate() {
        let events = Arc::clone(events);
        let patient = patient.clone();
        let run = run.clone();
        tasks.push(tokio::spawn(async move {
            let mut tickets = Vec::new();
            for i in 0..25 {
                let at = t0 + time::Duration::seconds(i * 10);
                let e = event(&patient, "MRN-CONF", at, i as f64);
                let m = message(&format!("{run}-{p}-{i}"), at);
                tickets.push(events.append_all(Some(&m), &[e], &[]).await.expect("append queued"));
            }
            for ticket in tickets {
                ticket.wait().await.expect("durable");
            }
        }));
    }
    for task in tasks {
        task.await.expect("appender");
    }
    for (p, patient) in patients.iter().enumerate() {
        let seen = log.accepted_message(&MessageKey::hl7("CONF|LAB", format!("{run}-{p}-7"))).await.unwrap();
        let seen = seen.expect("an appended message is accepted");
        assert_eq!(&seen.patient_id, patient);
        assert_eq!(seen.received_at, t0 + time::Duration::seconds(70));
    }
    assert!(log.accepted_message(&MessageKey::hl7("CONF|LAB", format!("{run}-never"))).await.unwrap().is_none());
    assert!(
        log.accepted_message(&MessageKey::hl7("OTHER|LAB", format!("{run}-0-0"))).await.unwrap().is_none(),
        "keyed by sender too"
    );
    if !caps.range_reads {
        return;
    }
    for patient in &patients {
        let all = events.events_since(patient, t0).await.unwrap();
        assert_eq!(all.len(), 25, "every event of the patient");
        assert!(all.iter().all(|e| &e.patient_id == patient));
        let times: Vec<_> = all.iter().map(|e| e.received_at).collect();
        assert!(times.windows(2).all(|w| w[0] < w[1]), "oldest first");
        assert_eq!(all[3].kind, event(patient, "", t0 + time::Duration::seconds(30), 3.0).kind, "content round-trips");
        let later = events.events_since(patient, t0 + time::Duration::seconds(200)).await.unwrap();
        assert_eq!(later.len(), 5, "only events at or after `since`");
        assert_eq!(later[0].received_at, t0 + time::Duration::seconds(200));
    }
    assert!(events.events_since(&PatientId(unique("nobody")), t0).await.unwrap().is_empty());
}

async fn alert_changes(
    alerts: &Arc<dyn AlertStore>,
    publisher: &Arc<RecordingPublisher>,
    t0: OffsetDateTime,
    caps: Capabilities,
) {
    let base = alerts.last_seq();
    let patient = PatientId(unique("pat"));
    // Alert ids begin with the patient's id, as the patient actor makes them.
    let (a1, a2) = (format!("{patient}-{}", unique("alert")), format!("{patient}-{}", unique("alert")));
    let upsert = |a: Alert| {
        let alerts = Arc::clone(alerts);
        async move { alerts.upsert_alert(&a, true).await.expect("queued").wait().await.expect("durable") }
    };
    let first = alert(&a1, &patient, "ICU", Severity::High, AlertStatus::Active, t0);
    let s1 = upsert(first.clone()).await;
    assert!(s1 > base, "numbers rise from the last committed one");
    assert!(alerts.last_seq() >= s1);
    assert!(publisher.seqs().contains(&s1), "published before the ticket resolves");
    let s2 = upsert(alert(&a2, &patient, "ICU", Severity::Medium, AlertStatus::Active, t0)).await;
    assert!(s2 > s1);
    // The latest state of one alert, by id.
    let read = alerts.alert(&AlertId(a1.clone())).await.unwrap().expect("stored");
    assert_eq!((read.seq, &read.alert), (s1, &first));
    assert!(alerts.alert(&AlertId(unique("never"))).await.unwrap().is_none());
    // Idempotence: the same upsert again (a replay) changes nothing and publishes nothing.
    let published_before = publisher.seqs().len();
    assert_eq!(upsert(first.clone()).await, s1, "the same state keeps its number");
    assert_eq!(publisher.seqs().len(), published_before, "a replayed upsert is not published again");
    let mut raised = first.clone();
    raised.severity = Severity::Critical;
    raised.updated_at = t0 + time::Duration::seconds(5);
    let s3 = upsert(raised.clone()).await;
    assert!(s3 > s2);
    let mut closed = alert(&a2, &patient, "ICU", Severity::Medium, AlertStatus::Resolved, t0);
    closed.updated_at = t0 + time::Duration::seconds(6);
    let s4 = upsert(closed).await;
    assert!(s4 > s3);

    let open = alerts.open_alerts().await.unwrap();
    let mine: Vec<_> = open.iter().filter(|c| c.alert.patient.id == patient).collect();
    assert_eq!(mine.len(), 1, "one open alert: the resolved one is excluded, the updated one appears once");
    assert_eq!(mine[0].seq, s3);
    assert_eq!(mine[0].alert, raised, "its latest state");
    assert_eq!(
        alerts.open_alerts_of(&patient).await.unwrap(),
        vec![raised.clone()],
        "the same, read for the patient alone"
    );
    assert!(alerts.open_alerts_of(&PatientId(unique("pat"))).await.unwrap().is_empty());

    // Concurrent upserts: distinct, rising numbers, published in order, each after commit.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let a = alert(
            &unique("alert"),
            &patient,
            "WARD",
            Severity::Low,
            AlertStatus::Active,
            t0 + time::Duration::seconds(i),
        );
        tasks.push(tokio::spawn(upsert(a)));
    }
    let mut seqs = Vec::new();
    for task in tasks {
        seqs.push(task.await.expect("upserter"));
    }
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), 20, "distinct numbers");
    assert!(seqs[0] > s4);
    let published = publisher.published.lock().unwrap().clone();
    let mine: Vec<_> = published.iter().filter(|(c, _)| c.seq > base).collect();
    assert!(mine.windows(2).all(|w| w[0].0.seq < w[1].0.seq), "published in sequence order");
    assert!(mine.iter().all(|(_, committed)| *committed), "published only once committed");
    assert_eq!(mine.len(), 24, "every change once: 4 + 20");

    if !caps.range_reads {
        return;
    }
    let all = alerts.alerts_after(base, 1000).await.unwrap();
    let expected: Vec<u64> = mine.iter().map(|(c, _)| c.seq).collect();
    assert_eq!(all.iter().map(|c| c.seq).collect::<Vec<_>>(), expected, "the log holds every published change");
    assert_eq!(all[0].alert, first);
    let mut paged = Vec::new();
    let mut after = base;
    loop {
        let page = alerts.alerts_after(after, 7).await.unwrap();
        assert!(page.len() <= 7);
        let Some(last) = page.last() else { break };
        after = last.seq;
        paged.extend(page.into_iter().map(|c| c.seq));
    }
    assert_eq!(paged, expected, "paging returns each change once, in order");
    assert!(alerts.alerts_after(u64::MAX, 10).await.unwrap().is_empty());
}

/// What every [`DeviceStore`](vigil_actors::device::DeviceStore) keeps: device records and bed
/// occupants replaced by key and read back whole (empty beds included), and quarantined
/// readings newest first, at most the limit asked.
pub async fn devices(store: Arc<dyn vigil_actors::device::DeviceStore>) {
    use vigil_actors::device::{
        Association, AssociationSource, Attachment, BedRecord, DeviceRecord, QuarantinedReading,
    };
    use vigil_actors::{Demographics, DeviceId, Location, Observation, PatientId, PatientKey, Phi, ResultStatus};

    let t0 = OffsetDateTime::from_unix_timestamp(OffsetDateTime::now_utc().unix_timestamp() - 600).unwrap();
    let run: u32 = rand::random();
    let unit = format!("CONF-{run}");
    let bed = Location { unit: unit.clone(), room: "4".into(), bed: "B".into() };
    let patient = Attachment {
        patient_id: PatientId("conf-dev-p".into()),
        patient: PatientKey { authority: "HOSP".into(), mrn: Phi("MRN-CONF".into()) },
        demographics: Demographics::default(),
        location: Some(bed.clone()),
    };
    let monitor = DeviceId(format!("CONF-MON-{run}"));
    let placed = DeviceRecord { id: monitor.clone(), bed: Some(bed.clone()), association: None };
    store.put_device(&placed).await.unwrap();
    let associated = DeviceRecord {
        association: Some(Association { patient: patient.clone(), source: AssociationSource::Bed, since: t0 }),
        ..placed.clone()
    };
    store.put_device(&associated).await.unwrap();
    let other = DeviceRecord { id: DeviceId(format!("CONF-PUMP-{run}")), bed: None, association: None };
    store.put_device(&other).await.unwrap();
    let mut devices = store.devices().await.unwrap();
    devices.retain(|d| d.id.0.ends_with(&format!("-{run}")));
    devices.sort_by(|a, b| a.id.0.cmp(&b.id.0));
    assert_eq!(devices, vec![associated, other], "a device's record is replaced, not added");

    store.put_bed(&BedRecord { bed: bed.clone(), occupant: Some(patient.clone()) }).await.unwrap();
    let other_bed = Location { unit: unit.clone(), room: "4".into(), bed: "C".into() };
    store.put_bed(&BedRecord { bed: other_bed.clone(), occupant: Some(patient) }).await.unwrap();
    store.put_bed(&BedRecord { bed: bed.clone(), occupant: None }).await.unwrap();
    let mut beds = store.beds().await.unwrap();
    beds.retain(|b| b.bed.unit == unit);
    beds.sort_by(|a, b| a.bed.bed.cmp(&b.bed.bed));
    assert_eq!(beds.len(), 2);
    assert_eq!((beds[0].bed.clone(), beds[0].occupant.is_none()), (bed, true), "an emptied bed reads back empty");
    assert_eq!(beds[1].bed, other_bed);

    // Newest first: a run against a shared cluster writes after everything else it reads.
    let tq = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap() + time::Duration::hours(1);
    let reading = |i: i64| QuarantinedReading {
        device: monitor.clone(),
        received_at: tq + time::Duration::seconds(i),
        feed: "hl7".into(),
        message: format!("Q-{i}"),
        observations: vec![Observation {
            name: "hr".into(),
            value: Some(70.0 + i as f64),
            text: None,
            unit: "/min".into(),
            observed_at: tq + time::Duration::seconds(i),
            source_code: "MDC|147842".into(),
            device: Some(monitor.0.clone()),
            status: ResultStatus::Final,
            result_key: String::new(),
            reference_range: None,
            abnormal_flags: Vec::new(),
        }],
    };
    for i in 0..3 {
        store.quarantine(&reading(i)).await.unwrap();
    }
    let newest = store.quarantined(2).await.unwrap();
    assert_eq!(newest.iter().map(|r| r.message.as_str()).collect::<Vec<_>>(), vec!["Q-2", "Q-1"]);
    assert_eq!(newest[0], reading(2), "a quarantined reading reads back as written");
    // Bounded: by age (older than the cutoff dropped), then by count (the oldest beyond it).
    let dropped = store.trim_quarantine(10, tq + time::Duration::seconds(1)).await.unwrap();
    let messages = |readings: Vec<QuarantinedReading>| readings.into_iter().map(|r| r.message).collect::<Vec<_>>();
    assert_eq!((dropped, messages(store.quarantined(10).await.unwrap())), (1, vec!["Q-2".into(), "Q-1".into()]));
    for i in 3..5 {
        store.quarantine(&reading(i)).await.unwrap();
    }
    let dropped = store.trim_quarantine(2, tq).await.unwrap();
    assert_eq!((dropped, messages(store.quarantined(10).await.unwrap())), (2, vec!["Q-4".into(), "Q-3".into()]));
    assert_eq!(store.trim_quarantine(2, tq).await.unwrap(), 0, "within bounds: nothing dropped");
}

/// What every [`ConsoleStore`](crate::console::ConsoleStore) keeps: silences by id and
/// assignments by unit and nurse, replaced by key, removed by key (the others stay), read back
/// whole; a silence past its end time is still read back (the store never ends one: each node
/// does, by `until` on its clock). Two nodes' books over one store see each other's silences
/// and assignments after a refresh, and an end is never undone by an older row.
pub async fn console(store: Arc<dyn crate::console::ConsoleStore>) {
    use crate::console::assignments::Assignment;
    use crate::console::silences::{EndReason, Silence, SilenceEnd};
    use crate::console::{Assignments, Silences};
    use vigil_actors::Clock;

    let t0 = OffsetDateTime::from_unix_timestamp(OffsetDateTime::now_utc().unix_timestamp() - 600).unwrap();
    let silence = |id: &str, minutes: i64| Silence {
        id: id.to_string(),
        patient: unique("pat"),
        unit: "ICU".into(),
        alert_id: None,
        severity: Severity::High,
        by: "nurse-4".into(),
        at: t0,
        until: t0 + time::Duration::minutes(minutes),
        reason: "procedure".into(),
        ended: None,
        escalated_units: vec!["RRT".into()],
        escalated_roles: Vec::new(),
    };
    let (one, two) = (unique("sil"), unique("sil"));
    let mine = |all: Vec<Silence>, ids: &[&str]| {
        let mut kept: Vec<Silence> = all.into_iter().filter(|s| ids.contains(&s.id.as_str())).collect();
        kept.sort_by(|a, b| a.id.cmp(&b.id));
        kept
    };
    // Five minutes long, started ten minutes ago: past its end, and still read back.
    let (first, second) = (silence(&one, 5), silence(&two, 15));
    store.put_silence(&first).await.unwrap();
    store.put_silence(&second).await.unwrap();
    let mut expected = vec![first.clone(), second.clone()];
    expected.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(mine(store.silences().await.unwrap(), &[&one, &two]), expected, "read back as written");
    let ended = Silence {
        ended: Some(SilenceEnd { by: "system".into(), at: t0 + time::Duration::minutes(5), why: EndReason::Expired }),
        ..first.clone()
    };
    store.put_silence(&ended).await.unwrap();
    store.remove_silence(&two).await.unwrap();
    store.remove_silence(&unique("never")).await.unwrap();
    assert_eq!(mine(store.silences().await.unwrap(), &[&one, &two]), vec![ended], "replaced by id; removed by id");

    let unit = unique("UNIT");
    let shift = |nurse: &str, beds: &[&str]| Assignment {
        nurse: nurse.into(),
        unit: unit.clone(),
        beds: beds.iter().map(|b| b.to_string()).collect(),
        from: t0,
        until: t0 + time::Duration::hours(12),
        by: "charge-1".into(),
    };
    let of_unit = |all: Vec<Assignment>| {
        let mut kept: Vec<Assignment> = all.into_iter().filter(|a| a.unit == unit).collect();
        kept.sort_by(|a, b| a.nurse.cmp(&b.nurse));
        kept
    };
    store.put_assignment(&shift("nurse-4", &["07-A"])).await.unwrap();
    store.put_assignment(&shift("nurse-5", &["08-A"])).await.unwrap();
    store.put_assignment(&shift("nurse-4", &["07-A", "07-B"])).await.unwrap();
    assert_eq!(
        of_unit(store.assignments().await.unwrap()),
        vec![shift("nurse-4", &["07-A", "07-B"]), shift("nurse-5", &["08-A"])],
        "replaced by unit and nurse"
    );
    store.remove_assignment(&unit, "nurse-5").await.unwrap();
    assert_eq!(of_unit(store.assignments().await.unwrap()), vec![shift("nurse-4", &["07-A", "07-B"])]);

    // Two nodes over the one store.
    let clock = Arc::new(vigil_actors::fakes::ManualClock(Mutex::new(t0)));
    let node_a = Silences::open(Arc::clone(&store), clock.clone()).await.unwrap();
    let node_b = Silences::open(Arc::clone(&store), clock.clone()).await.unwrap();
    let shared = unique("sil");
    node_a.start(silence(&shared, 15)).await.unwrap();
    let open_on = |book: &Silences| book.open_silences().into_iter().filter(|s| s.id == shared).count();
    assert_eq!(open_on(&node_b), 0, "not before a refresh");
    let mut changes = node_b.subscribe();
    node_b.refresh().await.unwrap();
    assert_eq!(open_on(&node_b), 1, "a silence set on one node holds on the other");
    assert_eq!(changes.try_recv().map(|s| s.id.clone()).ok(), Some(shared.clone()), "and is announced there");
    *clock.0.lock().unwrap() = t0 + time::Duration::minutes(15);
    assert_eq!(node_b.expire(clock.now()).await.len(), 1, "each node ends it by its own end time");
    node_a.refresh().await.unwrap();
    assert_eq!(open_on(&node_a), 0, "an end on one node holds on the other");
    // A stale open row (a write racing the end) does not revive it: the end is written again.
    store.put_silence(&silence(&shared, 15)).await.unwrap();
    node_a.refresh().await.unwrap();
    assert_eq!(open_on(&node_a), 0);
    let row = store.silences().await.unwrap().into_iter().find(|s| s.id == shared).unwrap();
    assert_eq!(row.ended.map(|e| e.why), Some(EndReason::Expired));

    let book_a = Assignments::open(Arc::clone(&store), clock.clone()).await.unwrap();
    let book_b = Assignments::open(Arc::clone(&store), clock.clone()).await.unwrap();
    *clock.0.lock().unwrap() = t0 + time::Duration::hours(1);
    store.put_assignment(&shift("nurse-6", &["09-A"])).await.unwrap();
    store.remove_assignment(&unit, "nurse-4").await.unwrap();
    book_a.refresh().await.unwrap();
    let nurses = |book: &Assignments| {
        let mut n: Vec<String> = book.current().into_iter().filter(|a| a.unit == unit).map(|a| a.nurse).collect();
        n.sort();
        n
    };
    assert_eq!(nurses(&book_a), ["nurse-6"], "another node's assignment and removal, after a refresh");
    assert_eq!(nurses(&book_b), ["nurse-4"], "before its refresh a node keeps what it read");
    store.remove_assignment(&unit, "nurse-6").await.unwrap();
    store.remove_silence(&shared).await.unwrap();
    store.remove_silence(&one).await.unwrap();

    // The census (issue 16): a bed per patient, replaced by patient, removed by patient.
    let bed = |patient: &str, bed: &str| vigil_actors::CensusBed {
        patient: PatientId(patient.to_string()),
        name: Phi("Conformance, Casey".into()),
        unit: unit.clone(),
        room: "01".into(),
        bed: bed.into(),
        news2: None,
    };
    let (p1, p2) = (unique("pat"), unique("pat"));
    let beds_of_unit = |all: Vec<vigil_actors::CensusBed>| {
        let mut kept: Vec<vigil_actors::CensusBed> = all.into_iter().filter(|b| b.unit == unit).collect();
        kept.sort_by(|a, b| a.patient.cmp(&b.patient));
        kept
    };
    store.put_census_bed(&bed(&p1, "A")).await.unwrap();
    store.put_census_bed(&bed(&p2, "B")).await.unwrap();
    store.put_census_bed(&bed(&p1, "C")).await.unwrap();
    let mut expected = vec![bed(&p1, "C"), bed(&p2, "B")];
    expected.sort_by(|a, b| a.patient.cmp(&b.patient));
    assert_eq!(beds_of_unit(store.census_beds().await.unwrap()), expected, "replaced by patient");
    store.remove_census_bed(&p2).await.unwrap();
    store.remove_census_bed(&unique("never")).await.unwrap();
    assert_eq!(beds_of_unit(store.census_beds().await.unwrap()), vec![bed(&p1, "C")], "removed by patient");
    store.remove_census_bed(&p1).await.unwrap();

    // Receipts: per alert, replaced by alert id, removed by alert id, with the unit.
    use crate::console::ReceiptKind;
    use crate::console::assignments::{Receipt, StoredReceipts};
    let (r1, r2) = (unique("alert"), unique("alert"));
    let receipts = |id: &str, users: &[&str]| StoredReceipts {
        alert_id: id.to_string(),
        unit: unit.clone(),
        receipts: users.iter().map(|u| Receipt { user: u.to_string(), kind: ReceiptKind::Delivered, at: t0 }).collect(),
    };
    let of_alerts = |all: Vec<StoredReceipts>| {
        let mut kept: Vec<StoredReceipts> = all.into_iter().filter(|r| r.alert_id == r1 || r.alert_id == r2).collect();
        kept.sort_by(|a, b| a.alert_id.cmp(&b.alert_id));
        kept
    };
    store.put_receipts(&receipts(&r1, &["nurse-4"])).await.unwrap();
    store.put_receipts(&receipts(&r2, &["nurse-5"])).await.unwrap();
    store.put_receipts(&receipts(&r1, &["nurse-4", "charge-1"])).await.unwrap();
    let mut expected = vec![receipts(&r1, &["nurse-4", "charge-1"]), receipts(&r2, &["nurse-5"])];
    expected.sort_by(|a, b| a.alert_id.cmp(&b.alert_id));
    assert_eq!(of_alerts(store.receipts().await.unwrap()), expected, "replaced by alert");
    store.remove_receipts(&r2).await.unwrap();
    store.remove_receipts(&unique("never")).await.unwrap();
    assert_eq!(of_alerts(store.receipts().await.unwrap()), vec![receipts(&r1, &["nurse-4", "charge-1"])]);
    store.remove_receipts(&r1).await.unwrap();
}
