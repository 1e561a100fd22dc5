//! Which patient each device reports for: by bed (a device placed at a bed reports for the
//! patient ADT put in that bed), by the patient a device's own message names (the PID of
//! PCD-01), or explicitly (the API). [`Links`] decides, synchronously and bounded; the
//! [`DeviceRegistry`](super::DeviceRegistry) persists what changed through the [`DeviceStore`]
//! port and audits every association change through [`AssociationAudit`].
//!
//! A device with no current association still reports: its readings are quarantined
//! ([`QuarantinedReading`]), stored and counted, never attributed to a patient.

use std::collections::HashMap;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::state::Attachment;
use crate::model::{CensusAction, DeviceId, Location, Observation, PatientId};
use crate::ports::StoreError;

/// How a device came to report for its patient.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AssociationSource {
    /// The device is placed at the bed ADT put the patient in; a transfer or discharge ends it.
    Bed,
    /// The device's own message named the patient (PID of a PCD-01 / PCD-04 report).
    Message,
    /// Set through the API by a user; ended through the API or by discharge.
    Api,
}

impl AssociationSource {
    /// Its name in the API and the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            AssociationSource::Bed => "bed",
            AssociationSource::Message => "message",
            AssociationSource::Api => "api",
        }
    }
}

/// A device's current patient.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Association {
    /// The patient.
    pub patient: Attachment,
    /// How.
    pub source: AssociationSource,
    /// Since when.
    #[serde(with = "time::serde::rfc3339")]
    pub since: OffsetDateTime,
}

/// What is kept of a device across restarts: where it is placed and whom it reports for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// The device.
    pub id: DeviceId,
    /// The bed it is placed at (API), if any.
    #[serde(default)]
    pub bed: Option<Location>,
    /// Its current patient, if any.
    #[serde(default)]
    pub association: Option<Association>,
}

/// A bed and who is in it (ADT), as stored; `occupant: None` is an empty bed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BedRecord {
    /// The bed.
    pub bed: Location,
    /// Who ADT last put there.
    #[serde(default)]
    pub occupant: Option<Attachment>,
}

/// A reading from a device with no current association: kept for operators, never a
/// patient's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuarantinedReading {
    /// The device.
    pub device: DeviceId,
    /// When Vigil received it.
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
    /// The feed (`hl7`, `fhir`).
    pub feed: String,
    /// The message's id at its sender (HL7 control id, FHIR resend key); never PHI.
    pub message: String,
    /// The values as mapped.
    pub observations: Vec<Observation>,
}

/// One change of a device's association, for the audit log.
#[derive(Clone, Debug, PartialEq)]
pub struct AssociationChange {
    /// The device.
    pub device: DeviceId,
    /// The patient and source before.
    pub before: Option<(PatientId, AssociationSource)>,
    /// The patient and source after.
    pub after: Option<(PatientId, AssociationSource)>,
    /// Why (e.g. `adt transfer`, `api`, `device placed`); never PHI.
    pub cause: &'static str,
}

/// Where device placements, beds and quarantined readings are kept (both stores implement it).
#[async_trait]
pub trait DeviceStore: Send + Sync + 'static {
    /// Write a device's record (replacing the previous one), durably.
    async fn put_device(&self, record: &DeviceRecord) -> Result<(), StoreError>;
    /// Every device record.
    async fn devices(&self) -> Result<Vec<DeviceRecord>, StoreError>;
    /// Write a bed's occupant (replacing the previous one), durably.
    async fn put_bed(&self, record: &BedRecord) -> Result<(), StoreError>;
    /// Every bed record (empty beds included).
    async fn beds(&self) -> Result<Vec<BedRecord>, StoreError>;
    /// Keep a quarantined reading, durably.
    async fn quarantine(&self, reading: &QuarantinedReading) -> Result<(), StoreError>;
    /// The latest quarantined readings, newest first, at most `limit`.
    async fn quarantined(&self, limit: usize) -> Result<Vec<QuarantinedReading>, StoreError>;
    /// Drop the quarantined readings received before `older_than`, then the oldest beyond the
    /// newest `keep`; how many were dropped.
    async fn trim_quarantine(&self, keep: usize, older_than: OffsetDateTime) -> Result<u64, StoreError>;
    /// Write a device's record now, in call order, without waiting until it is durable:
    /// [`DeviceStore::sync`] waits. A store whose writes are durable on their own keeps the
    /// default (the durable write).
    async fn write_device(&self, record: &DeviceRecord) -> Result<(), StoreError> {
        self.put_device(record).await
    }
    /// [`DeviceStore::write_device`] for a bed's record.
    async fn write_bed(&self, record: &BedRecord) -> Result<(), StoreError> {
        self.put_bed(record).await
    }
    /// Wait until every record written before the call is durable (callers at the same time
    /// may share one flush to disk).
    async fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Where association changes are audited.
pub trait AssociationAudit: Send + Sync + 'static {
    /// `change` happened, done by `user` in `role` (a feed: `feed:hl7`, role `system`).
    fn association_changed(&self, user: &str, role: &str, change: &AssociationChange);
}

/// What a change to [`Links`] touched: records to persist, and association changes to audit
/// and tell the device actors.
#[derive(Debug, Default)]
pub struct Touched {
    /// Device records to write.
    pub devices: Vec<DeviceRecord>,
    /// Bed records to write.
    pub beds: Vec<BedRecord>,
    /// Association changes.
    pub changes: Vec<AssociationChange>,
}

impl Touched {
    /// Nothing changed.
    pub fn is_empty(&self) -> bool {
        self.devices.is_empty() && self.beds.is_empty() && self.changes.is_empty()
    }
}

/// Refusals of [`Links`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LinkError {
    /// Devices tracked at their bound.
    #[error("too many devices tracked ({0})")]
    TooManyDevices(usize),
    /// Beds tracked at their bound.
    #[error("too many beds tracked ({0})")]
    TooManyBeds(usize),
}

/// Devices, beds and associations in memory; bounded.
#[derive(Debug)]
pub struct Links {
    devices: HashMap<DeviceId, DeviceRecord>,
    beds: HashMap<Location, Attachment>,
    max_devices: usize,
    max_beds: usize,
}

impl Links {
    /// Empty, holding at most `max_devices` devices and `max_beds` occupied beds.
    pub fn new(max_devices: usize, max_beds: usize) -> Self {
        Links { devices: HashMap::new(), beds: HashMap::new(), max_devices, max_beds }
    }

    /// Rebuilt from what the store kept.
    pub fn restore(&mut self, devices: Vec<DeviceRecord>, beds: Vec<BedRecord>) {
        for bed in beds {
            if let Some(occupant) = bed.occupant
                && self.beds.len() < self.max_beds
            {
                self.beds.insert(bed.bed, occupant);
            }
        }
        for device in devices {
            if self.devices.len() < self.max_devices {
                self.devices.insert(device.id.clone(), device);
            }
        }
    }

    /// A device's record, if known.
    pub fn device(&self, id: &DeviceId) -> Option<&DeviceRecord> {
        self.devices.get(id)
    }

    /// Every device record, sorted by id.
    pub fn list(&self) -> Vec<DeviceRecord> {
        let mut all: Vec<_> = self.devices.values().cloned().collect();
        all.sort_by(|a, b| a.id.0.cmp(&b.id.0));
        all
    }

    /// Devices known.
    pub fn device_count(&self) -> usize {
        self.devices.len()
    }

    /// The patient `id` reports for now.
    pub fn current(&self, id: &DeviceId) -> Option<&Attachment> {
        self.devices.get(id)?.association.as_ref().map(|a| &a.patient)
    }

    fn record_mut(&mut self, id: &DeviceId) -> Result<&mut DeviceRecord, LinkError> {
        if !self.devices.contains_key(id) && self.devices.len() >= self.max_devices {
            return Err(LinkError::TooManyDevices(self.max_devices));
        }
        Ok(self.devices.entry(id.clone()).or_insert_with(|| DeviceRecord {
            id: id.clone(),
            bed: None,
            association: None,
        }))
    }

    /// Set (or end, with `None`) the association of `id`, recording what changed.
    fn set(
        &mut self,
        id: &DeviceId,
        association: Option<Association>,
        cause: &'static str,
        touched: &mut Touched,
    ) -> Result<(), LinkError> {
        let record = self.record_mut(id)?;
        let key = |a: &Association| (a.patient.patient_id.clone(), a.source);
        let before = record.association.as_ref().map(key);
        let after = association.as_ref().map(key);
        let unchanged = before == after
            && record.association.as_ref().map(|a| &a.patient) == association.as_ref().map(|a| &a.patient);
        if unchanged {
            return Ok(());
        }
        record.association = association;
        touched.devices.retain(|d| d.id != *id);
        touched.devices.push(record.clone());
        if before != after {
            touched.changes.push(AssociationChange { device: id.clone(), before, after, cause });
        }
        Ok(())
    }

    /// The device's own message named `patient` (PCD-01 / PCD-04 PID): it reports for them
    /// from now on, whatever it reported for before.
    pub fn named_by_message(
        &mut self,
        id: &DeviceId,
        patient: Attachment,
        now: OffsetDateTime,
    ) -> Result<Touched, LinkError> {
        let mut touched = Touched::default();
        let same = self.current(id).is_some_and(|p| p.patient_id == patient.patient_id);
        if !same {
            let association = Association { patient, source: AssociationSource::Message, since: now };
            self.set(id, Some(association), "named by its message", &mut touched)?;
        }
        Ok(touched)
    }

    /// Associate explicitly (API).
    pub fn associate(&mut self, id: &DeviceId, patient: Attachment, now: OffsetDateTime) -> Result<Touched, LinkError> {
        let mut touched = Touched::default();
        let association = Association { patient, source: AssociationSource::Api, since: now };
        self.set(id, Some(association), "api", &mut touched)?;
        Ok(touched)
    }

    /// End the association explicitly (API). The device stays where it is placed; it is
    /// re-associated by bed only when ADT next puts someone in its bed.
    pub fn dissociate(&mut self, id: &DeviceId) -> Result<Touched, LinkError> {
        let mut touched = Touched::default();
        if self.devices.contains_key(id) {
            self.set(id, None, "api", &mut touched)?;
        }
        Ok(touched)
    }

    /// Place `id` at `bed` (API), or take it away from any bed (`None`). A bed-derived
    /// association follows: it reports for the bed's occupant, or for nobody if the bed is
    /// empty. An association set through the API is kept; one by message gives way to the
    /// user's placement.
    pub fn place(&mut self, id: &DeviceId, bed: Option<Location>, now: OffsetDateTime) -> Result<Touched, LinkError> {
        let mut touched = Touched::default();
        let record = self.record_mut(id)?;
        if record.bed == bed {
            return Ok(touched);
        }
        record.bed.clone_from(&bed);
        let explicit = record.association.as_ref().is_some_and(|a| a.source == AssociationSource::Api);
        touched.devices.push(record.clone());
        if !explicit {
            let occupant = bed.as_ref().and_then(|b| self.beds.get(b)).cloned();
            let association =
                occupant.map(|patient| Association { patient, source: AssociationSource::Bed, since: now });
            self.set(id, association, "device placed", &mut touched)?;
        }
        Ok(touched)
    }

    /// An ADT census event of `patient`, at `location` when it names one. Admit, register,
    /// transfer, update and cancels that name a bed put the patient in that bed (out of any
    /// other): devices placed at the old bed stop reporting for them, devices at the new bed
    /// start. Discharge and cancel-admit empty their bed and end every association of theirs.
    pub fn census(
        &mut self,
        patient: &Attachment,
        action: CensusAction,
        location: Option<&Location>,
        now: OffsetDateTime,
    ) -> Result<Touched, LinkError> {
        let mut touched = Touched::default();
        let leaves = matches!(action, CensusAction::Discharge | CensusAction::CancelAdmit);
        let cause = match action {
            CensusAction::Admit => "adt admit",
            CensusAction::Transfer => "adt transfer",
            CensusAction::Discharge => "adt discharge",
            CensusAction::Register => "adt register",
            CensusAction::Update => "adt update",
            CensusAction::CancelAdmit => "adt cancel admit",
            CensusAction::CancelTransfer => "adt cancel transfer",
            CensusAction::CancelDischarge => "adt cancel discharge",
        };
        let new_bed = if leaves { None } else { location.filter(|l| !l.bed.is_empty()) };
        if !leaves && new_bed.is_none() {
            // A message without a bed says nothing about where the patient is.
            return Ok(touched);
        }
        let old_bed = self.beds.iter().find(|(_, p)| p.patient_id == patient.patient_id).map(|(bed, _)| bed.clone());
        if old_bed.as_ref() == new_bed && new_bed.is_some() {
            return Ok(touched);
        }
        if let Some(old) = old_bed {
            self.beds.remove(&old);
            touched.beds.push(BedRecord { bed: old.clone(), occupant: None });
            for id in self.devices_at(&old) {
                if self.is_bed_associated(&id, &patient.patient_id) {
                    self.set(&id, None, cause, &mut touched)?;
                }
            }
        }
        if leaves {
            let theirs: Vec<DeviceId> = self
                .devices
                .values()
                .filter(|d| d.association.as_ref().is_some_and(|a| a.patient.patient_id == patient.patient_id))
                .map(|d| d.id.clone())
                .collect();
            for id in theirs {
                self.set(&id, None, cause, &mut touched)?;
            }
            return Ok(touched);
        }
        let Some(bed) = new_bed else { return Ok(touched) };
        if !self.beds.contains_key(bed) && self.beds.len() >= self.max_beds {
            return Err(LinkError::TooManyBeds(self.max_beds));
        }
        // Whoever was in the bed before is no longer there for its devices.
        self.beds.insert(bed.clone(), patient.clone());
        touched.beds.push(BedRecord { bed: bed.clone(), occupant: Some(patient.clone()) });
        for id in self.devices_at(bed) {
            let explicit = self
                .devices
                .get(&id)
                .and_then(|d| d.association.as_ref())
                .is_some_and(|a| a.source != AssociationSource::Bed);
            if !explicit {
                let association = Association { patient: patient.clone(), source: AssociationSource::Bed, since: now };
                self.set(&id, Some(association), cause, &mut touched)?;
            }
        }
        Ok(touched)
    }

    fn devices_at(&self, bed: &Location) -> Vec<DeviceId> {
        self.devices.values().filter(|d| d.bed.as_ref() == Some(bed)).map(|d| d.id.clone()).collect()
    }

    fn is_bed_associated(&self, id: &DeviceId, patient: &PatientId) -> bool {
        self.devices
            .get(id)
            .and_then(|d| d.association.as_ref())
            .is_some_and(|a| a.source == AssociationSource::Bed && a.patient.patient_id == *patient)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Demographics, PatientKey, Phi};

    fn patient(id: &str) -> Attachment {
        Attachment {
            patient_id: PatientId(id.into()),
            patient: PatientKey { authority: "HOSP".into(), mrn: Phi(format!("MRN-{id}")) },
            demographics: Demographics::default(),
            location: None,
        }
    }

    fn bed(b: &str) -> Location {
        Location { unit: "ICU".into(), room: "1".into(), bed: b.into() }
    }

    const T0: OffsetDateTime = time::macros::datetime!(2026-01-01 00:00 UTC);

    #[test]
    fn a_bed_association_follows_adt_and_ends_on_transfer_and_discharge() {
        let mut links = Links::new(10, 10);
        let monitor = DeviceId("MON-A".into());
        let placed = links.place(&monitor, Some(bed("A")), T0).unwrap();
        assert!(placed.changes.is_empty(), "an empty bed associates nobody");
        assert_eq!(placed.devices.len(), 1, "the placement is persisted");
        assert!(links.current(&monitor).is_none());

        let admitted = links.census(&patient("p1"), CensusAction::Admit, Some(&bed("A")), T0).unwrap();
        assert_eq!(links.current(&monitor).map(|p| p.patient_id.0.as_str()), Some("p1"));
        assert_eq!(admitted.changes.len(), 1);
        assert_eq!(admitted.changes[0].after, Some((PatientId("p1".into()), AssociationSource::Bed)));
        assert_eq!(admitted.changes[0].cause, "adt admit");

        let update = links.census(&patient("p1"), CensusAction::Update, Some(&bed("A")), T0).unwrap();
        assert!(update.is_empty(), "an A08 in the same bed changes nothing");

        let moved = links.census(&patient("p1"), CensusAction::Transfer, Some(&bed("B")), T0).unwrap();
        assert!(links.current(&monitor).is_none(), "the transfer ends the bed association");
        assert_eq!(moved.changes.len(), 1);
        assert_eq!(moved.changes[0].after, None);
        assert_eq!(moved.changes[0].cause, "adt transfer");
        assert_eq!(moved.beds.len(), 2, "old bed emptied, new bed occupied");

        links.census(&patient("p2"), CensusAction::Admit, Some(&bed("A")), T0).unwrap();
        assert_eq!(links.current(&monitor).map(|p| p.patient_id.0.as_str()), Some("p2"), "the new occupant");

        let gone = links.census(&patient("p2"), CensusAction::Discharge, None, T0).unwrap();
        assert!(links.current(&monitor).is_none());
        assert_eq!(gone.changes[0].cause, "adt discharge");
    }

    #[test]
    fn explicit_and_message_associations_survive_beds_but_not_discharge() {
        let mut links = Links::new(10, 10);
        let pump = DeviceId("PUMP".into());
        links.associate(&pump, patient("p1"), T0).unwrap();
        links.place(&pump, Some(bed("C")), T0).unwrap();
        links.census(&patient("p9"), CensusAction::Admit, Some(&bed("C")), T0).unwrap();
        assert_eq!(links.current(&pump).map(|p| p.patient_id.0.as_str()), Some("p1"), "the API wins over the bed");
        let named = links.named_by_message(&pump, patient("p1"), T0).unwrap();
        assert!(named.is_empty(), "a message naming the same patient changes nothing");
        let renamed = links.named_by_message(&pump, patient("p3"), T0).unwrap();
        assert_eq!(renamed.changes[0].before, Some((PatientId("p1".into()), AssociationSource::Api)));
        assert_eq!(renamed.changes[0].after, Some((PatientId("p3".into()), AssociationSource::Message)));
        links.census(&patient("p3"), CensusAction::Discharge, None, T0).unwrap();
        assert!(links.current(&pump).is_none(), "discharge ends every association of the patient");
        links.named_by_message(&pump, patient("p4"), T0).unwrap();
        let placed = links.place(&pump, Some(bed("D")), T0).unwrap();
        assert_eq!(placed.changes[0].after, None, "a user's placement at an empty bed ends a message association");
        let ended = links.dissociate(&pump).unwrap();
        assert!(ended.is_empty(), "nothing left to end");
    }

    #[test]
    fn devices_and_beds_are_bounded() {
        let mut links = Links::new(1, 1);
        links.place(&DeviceId("one".into()), Some(bed("A")), T0).unwrap();
        assert_eq!(links.place(&DeviceId("two".into()), Some(bed("A")), T0).unwrap_err(), LinkError::TooManyDevices(1));
        links.census(&patient("p1"), CensusAction::Admit, Some(&bed("A")), T0).unwrap();
        assert_eq!(
            links.census(&patient("p2"), CensusAction::Admit, Some(&bed("B")), T0).unwrap_err(),
            LinkError::TooManyBeds(1)
        );
    }

    #[test]
    fn restore_brings_back_what_was_persisted() {
        let mut links = Links::new(10, 10);
        let monitor = DeviceId("MON".into());
        let mut persisted_devices = HashMap::new();
        let mut persisted_beds = HashMap::new();
        let mut keep = |t: Touched| {
            for d in t.devices {
                persisted_devices.insert(d.id.clone(), d);
            }
            for b in t.beds {
                persisted_beds.insert(b.bed.clone(), b);
            }
        };
        keep(links.place(&monitor, Some(bed("A")), T0).unwrap());
        keep(links.census(&patient("p1"), CensusAction::Admit, Some(&bed("A")), T0).unwrap());
        let mut again = Links::new(10, 10);
        again.restore(persisted_devices.into_values().collect(), persisted_beds.into_values().collect());
        assert_eq!(again.current(&monitor).map(|p| p.patient_id.0.as_str()), Some("p1"));
        again.census(&patient("p1"), CensusAction::Transfer, Some(&bed("B")), T0).unwrap();
        assert!(again.current(&monitor).is_none(), "the restored bed is known to the next transfer");
    }
}

/// An in-memory [`DeviceStore`] for tests (quarantine bounded by `trim_quarantine`, and
/// never beyond its newest 100,000 readings).
#[cfg(any(test, feature = "fakes"))]
#[derive(Default)]
pub struct MemoryDeviceStore {
    inner: std::sync::Mutex<MemoryDevices>,
}

#[cfg(any(test, feature = "fakes"))]
#[derive(Default)]
struct MemoryDevices {
    devices: HashMap<DeviceId, DeviceRecord>,
    beds: HashMap<Location, BedRecord>,
    quarantine: std::collections::VecDeque<QuarantinedReading>,
}

#[cfg(any(test, feature = "fakes"))]
impl MemoryDeviceStore {
    fn lock(&self) -> Result<std::sync::MutexGuard<'_, MemoryDevices>, StoreError> {
        self.inner.lock().map_err(|_| StoreError::Engine("memory device store poisoned".into()))
    }
}

#[cfg(any(test, feature = "fakes"))]
#[async_trait]
impl DeviceStore for MemoryDeviceStore {
    async fn put_device(&self, record: &DeviceRecord) -> Result<(), StoreError> {
        self.lock()?.devices.insert(record.id.clone(), record.clone());
        Ok(())
    }

    async fn devices(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        Ok(self.lock()?.devices.values().cloned().collect())
    }

    async fn put_bed(&self, record: &BedRecord) -> Result<(), StoreError> {
        self.lock()?.beds.insert(record.bed.clone(), record.clone());
        Ok(())
    }

    async fn beds(&self) -> Result<Vec<BedRecord>, StoreError> {
        Ok(self.lock()?.beds.values().cloned().collect())
    }

    async fn quarantine(&self, reading: &QuarantinedReading) -> Result<(), StoreError> {
        let mut inner = self.lock()?;
        if inner.quarantine.len() == 100_000 {
            inner.quarantine.pop_front();
        }
        inner.quarantine.push_back(reading.clone());
        Ok(())
    }

    async fn quarantined(&self, limit: usize) -> Result<Vec<QuarantinedReading>, StoreError> {
        Ok(self.lock()?.quarantine.iter().rev().take(limit).cloned().collect())
    }

    async fn trim_quarantine(&self, keep: usize, older_than: OffsetDateTime) -> Result<u64, StoreError> {
        let mut inner = self.lock()?;
        let before = inner.quarantine.len();
        inner.quarantine.retain(|r| r.received_at >= older_than);
        let excess = inner.quarantine.len().saturating_sub(keep);
        inner.quarantine.drain(..excess);
        Ok((before - inner.quarantine.len()) as u64)
    }
}
