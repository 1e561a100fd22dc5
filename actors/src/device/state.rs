//! A device actor's state: the patient it reports for, when it was last heard from, the
//! interval it reports at (configured, or learnt as the median of recent gaps) and whether it
//! is silent past `offline_intervals` of those.

use std::collections::VecDeque;

use time::{Duration, OffsetDateTime};

use crate::model::{ClinicalEvent, Demographics, DeviceId, EventKind, Location, PatientId, PatientKey};

/// Gaps remembered for learning the interval.
pub const MAX_GAPS: usize = 16;

/// How silence is judged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceConfig {
    /// Silent for this many intervals: offline (default 3).
    pub offline_intervals: u32,
    /// Never offline sooner than this after the last report, whatever the interval (default
    /// 60 s: a monitor reporting every second is not offline after three).
    pub offline_floor: Duration,
    /// The interval devices report at; `None`: learnt per device (median of recent gaps).
    pub interval: Option<Duration>,
    /// Devices tracked at most; a device beyond the bound is not tracked (counted).
    pub max_devices: usize,
    /// Quarantined readings kept at most; beyond it the oldest are dropped (counted).
    pub quarantine_max: usize,
    /// Quarantined readings older than this are dropped (counted).
    pub quarantine_max_age: Duration,
}

impl Default for DeviceConfig {
    fn default() -> Self {
        DeviceConfig {
            offline_intervals: 3,
            offline_floor: Duration::seconds(60),
            interval: None,
            max_devices: 10_000,
            quarantine_max: 10_000,
            quarantine_max_age: Duration::days(7),
        }
    }
}

/// The patient a device reports for (see [`super::links`] for how it is decided).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Attachment {
    /// Opaque id.
    pub patient_id: PatientId,
    /// Identity as sent.
    pub patient: PatientKey,
    /// Demographics as sent.
    pub demographics: Demographics,
    /// Location as sent.
    pub location: Option<Location>,
}

impl Attachment {
    /// The patient of `event`.
    pub fn of(event: &ClinicalEvent) -> Self {
        Attachment {
            patient_id: event.patient_id.clone(),
            patient: event.patient.clone(),
            demographics: event.demographics.clone(),
            location: event.location.clone(),
        }
    }

    /// An event of this patient.
    pub fn event(&self, at: OffsetDateTime, kind: EventKind) -> ClinicalEvent {
        ClinicalEvent {
            patient_id: self.patient_id.clone(),
            patient: self.patient.clone(),
            demographics: self.demographics.clone(),
            location: self.location.clone(),
            received_at: at,
            kind,
        }
    }
}

/// One device.
#[derive(Debug)]
pub struct DeviceState {
    /// Id.
    pub id: DeviceId,
    config: DeviceConfig,
    /// Its patient now, when it has one.
    pub attachment: Option<Attachment>,
    /// When last heard from.
    pub last_seen: Option<OffsetDateTime>,
    gaps: VecDeque<i64>,
    /// Since when it is silent past its threshold, and the patient `device.offline` was
    /// raised for (resolved there, whoever the device reports for by then).
    pub offline: Option<(OffsetDateTime, Attachment)>,
    /// Technical conditions active (leads off, probe off).
    pub technical: super::technical::Technical,
}

impl DeviceState {
    /// A device never heard from.
    pub fn new(id: DeviceId, config: DeviceConfig) -> Self {
        DeviceState {
            id,
            config,
            attachment: None,
            last_seen: None,
            gaps: VecDeque::new(),
            offline: None,
            technical: Default::default(),
        }
    }

    /// The interval it reports at: configured, else the median of recent gaps.
    pub fn interval(&self) -> Option<Duration> {
        if let Some(interval) = self.config.interval {
            return Some(interval);
        }
        let mut gaps: Vec<i64> = self.gaps.iter().copied().collect();
        gaps.sort_unstable();
        gaps.get(gaps.len() / 2).map(|s| Duration::seconds(*s))
    }

    /// Silence past this is offline: `offline_intervals` intervals, at least the floor.
    pub fn threshold(&self) -> Option<Duration> {
        let intervals = i32::try_from(self.config.offline_intervals.max(1)).unwrap_or(i32::MAX);
        self.interval().map(|i| (i * intervals).max(self.config.offline_floor))
    }

    /// Heard from at `at`, reporting for `attachment` (its current association, if any). The
    /// event that resolves `device.offline` when it was silent.
    pub fn seen(&mut self, at: OffsetDateTime, attachment: Option<Attachment>) -> Option<ClinicalEvent> {
        if let Some(last) = self.last_seen {
            let gap = (at - last).whole_seconds();
            if gap > 0 {
                if self.gaps.len() == MAX_GAPS {
                    self.gaps.pop_front();
                }
                self.gaps.push_back(gap);
            }
        }
        self.last_seen = Some(self.last_seen.map_or(at, |last| last.max(at)));
        // The offline alert belongs to the patient it was raised for: resolve it there, even
        // when the device now reports for someone else, or for nobody.
        let back = self.offline.take().map(|(since, attached)| {
            attached.event(
                at,
                EventKind::DeviceSilence {
                    device: self.id.clone(),
                    offline: false,
                    silent_s: (at - since).whole_seconds(),
                    interval_s: self.interval().map_or(0, |i| i.whole_seconds()),
                },
            )
        });
        self.attachment = attachment;
        back
    }

    /// Its association changed without a message from it (ADT, the API).
    pub fn attach(&mut self, attachment: Option<Attachment>) {
        self.attachment = attachment;
    }

    /// At `now`: the event that raises `device.offline` when it has just gone silent past its
    /// threshold. Nothing for a device with no patient, or whose interval is not known yet.
    pub fn check(&mut self, now: OffsetDateTime) -> Option<ClinicalEvent> {
        if self.offline.is_some() {
            return None;
        }
        let (last, threshold, attached) = (self.last_seen?, self.threshold()?, self.attachment.as_ref()?);
        let silent = now - last;
        if silent <= threshold {
            return None;
        }
        let event = attached.event(
            now,
            EventKind::DeviceSilence {
                device: self.id.clone(),
                offline: true,
                silent_s: silent.whole_seconds(),
                interval_s: self.interval().map_or(0, |i| i.whole_seconds()),
            },
        );
        self.offline = Some((now, attached.clone()));
        Some(event)
    }
}
