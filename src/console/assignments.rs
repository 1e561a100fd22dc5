//! Assignments and receipts: which nurse has which beds this shift, and who was shown and who
//! opened each alert. An alert notifies the nurses assigned to its bed first (level 0 of the
//! escalation chain, `alerts::escalation`); a console that is not theirs shows it without
//! sound until it escalates to the console's role or unit. Receipts are what the consoles
//! report: `delivered` when an alert was put on a user's screen, `opened` when the user opened
//! it; one of each per user and alert, shown on the alert to everyone who sees it.
//!
//! Assignments are kept in the [`ConsoleStore`] every node shares (a restart keeps the shift's
//! plan, and each node re-reads it every tick of `silences::run`). Receipts are audited as they
//! arrive, written to the same store before they are shown (a restart keeps them; they are
//! read back at start), and held in memory, bounded.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::sync::broadcast;
use vigil_actors::{Alert, AlertId, Clock};

use super::store::{ConsoleStore, MemoryConsoleStore};
use super::{Console, ConsoleError, Permission, sees};
use crate::auth::Claims;

/// Beds one nurse may be given on one unit.
pub const MAX_BEDS: usize = 60;
/// Assignments held; beyond, expired ones are forgotten first.
pub const MAX_ASSIGNMENTS: usize = 5_000;
/// Longest shift, hours.
pub const MAX_SHIFT_HOURS: i64 = 16;
/// Alerts whose receipts are held (the oldest are forgotten first).
pub const MAX_RECEIPT_ALERTS: usize = 20_000;
/// Receipts held per alert.
pub const MAX_RECEIPTS_PER_ALERT: usize = 64;
const CHANGES_CAPACITY: usize = 1024;

/// A nurse's beds on a unit for a shift.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    /// The nurse's user id (token subject).
    pub nurse: String,
    /// The unit.
    pub unit: String,
    /// Beds as the board labels them: `room-bed` (`07-A`), or the bed alone without a room.
    pub beds: Vec<String>,
    /// Shift start.
    #[serde(with = "time::serde::rfc3339")]
    pub from: OffsetDateTime,
    /// Shift end: the assignment lapses.
    #[serde(with = "time::serde::rfc3339")]
    pub until: OffsetDateTime,
    /// Who assigned.
    pub by: String,
}

/// What a charge nurse asks: this nurse, these beds, for so many hours from now.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssignmentRequest {
    /// The nurse's user id.
    pub nurse: String,
    /// The unit.
    pub unit: String,
    /// Beds (`room-bed`); empty ends the nurse's assignment on the unit.
    pub beds: Vec<String>,
    /// Shift length, 1 to 16 hours.
    pub hours: i64,
}

/// What a console reports about an alert.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReceiptKind {
    /// Put on the user's screen.
    Delivered,
    /// Opened by the user (the patient panel).
    Opened,
}

/// One user's receipt for an alert.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    /// The user.
    pub user: String,
    /// Delivered or opened.
    pub kind: ReceiptKind,
    /// When the server heard of it.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// The receipts of one alert, as sent to consoles.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AlertReceipts {
    /// The alert.
    pub alert_id: String,
    /// Its unit (who sees the receipts).
    #[serde(skip)]
    pub unit: String,
    /// Oldest first.
    pub receipts: Vec<Receipt>,
}

/// An alert's receipts as the [`ConsoleStore`] keeps them: with the alert's unit, which
/// consoles are not sent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredReceipts {
    /// The alert.
    pub alert_id: String,
    /// Its unit.
    pub unit: String,
    /// Oldest first.
    pub receipts: Vec<Receipt>,
}

impl From<&AlertReceipts> for StoredReceipts {
    fn from(r: &AlertReceipts) -> Self {
        StoredReceipts { alert_id: r.alert_id.clone(), unit: r.unit.clone(), receipts: r.receipts.clone() }
    }
}

impl From<StoredReceipts> for AlertReceipts {
    fn from(r: StoredReceipts) -> Self {
        AlertReceipts { alert_id: r.alert_id, unit: r.unit, receipts: r.receipts }
    }
}

/// The bed label of an alert's patient.
pub fn bed_label(alert: &Alert) -> String {
    let p = &alert.patient;
    if p.room.is_empty() { p.bed.clone() } else { format!("{}-{}", p.room, p.bed) }
}

/// Assignments and receipts, persisted, held in memory. Cheap to clone.
#[derive(Clone)]
pub struct Assignments {
    held: Arc<Mutex<BTreeMap<(String, String), Assignment>>>,
    receipts: Arc<Mutex<Receipts>>,
    store: Arc<dyn ConsoleStore>,
    /// One write at a time, held across the store's write.
    writes: Arc<tokio::sync::Mutex<()>>,
    /// One receipt write at a time (apart from assignments: a refresh never holds one up).
    receipt_writes: Arc<tokio::sync::Mutex<()>>,
    clock: Arc<dyn Clock>,
    changes: broadcast::Sender<Arc<AlertReceipts>>,
}

#[derive(Default)]
struct Receipts {
    by_alert: BTreeMap<String, AlertReceipts>,
    order: VecDeque<String>,
}

impl Assignments {
    /// Kept in memory only.
    pub fn in_memory(clock: Arc<dyn Clock>) -> Self {
        Self::held_in(BTreeMap::new(), Arc::new(MemoryConsoleStore::default()), clock)
    }

    fn held_in(
        held: BTreeMap<(String, String), Assignment>,
        store: Arc<dyn ConsoleStore>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let (changes, _) = broadcast::channel(CHANGES_CAPACITY);
        Assignments {
            held: Arc::new(Mutex::new(held)),
            receipts: Arc::default(),
            store,
            writes: Arc::default(),
            receipt_writes: Arc::default(),
            clock,
            changes,
        }
    }

    fn keyed(assignments: Vec<Assignment>) -> BTreeMap<(String, String), Assignment> {
        assignments.into_iter().map(|a| ((a.unit.clone(), a.nurse.clone()), a)).collect()
    }

    /// Kept in `store` (assignments and receipts read back at start; of the receipts, those of
    /// the [`MAX_RECEIPT_ALERTS`] alerts first reported last).
    pub async fn open(store: Arc<dyn ConsoleStore>, clock: Arc<dyn Clock>) -> Result<Self, ConsoleError> {
        let held = Self::keyed(store.assignments().await.map_err(store_failure)?);
        let mut stored = store.receipts().await.map_err(store_failure)?;
        stored.sort_by(|a, b| {
            let first = |r: &StoredReceipts| r.receipts.iter().map(|x| x.at).min();
            first(a).cmp(&first(b)).then_with(|| a.alert_id.cmp(&b.alert_id))
        });
        let skip = stored.len().saturating_sub(MAX_RECEIPT_ALERTS);
        let book = Self::held_in(held, store, clock);
        {
            let mut receipts = book.receipts.lock().unwrap_or_else(|p| p.into_inner());
            for r in stored.into_iter().skip(skip) {
                receipts.order.push_back(r.alert_id.clone());
                receipts.by_alert.insert(r.alert_id.clone(), r.into());
            }
        }
        Ok(book)
    }

    /// Hold what the store holds now (other nodes' assignments and removals included).
    pub async fn refresh(&self) -> Result<(), ConsoleError> {
        let _writing = self.writes.lock().await;
        let stored = Self::keyed(self.store.assignments().await.map_err(store_failure)?);
        *self.lock() = stored;
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, String), Assignment>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Receipt changes from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<AlertReceipts>> {
        self.changes.subscribe()
    }

    /// Assignments in force now.
    pub fn current(&self) -> Vec<Assignment> {
        let now = self.clock.now();
        self.lock().values().filter(|a| a.from <= now && now < a.until).cloned().collect()
    }

    /// The nurses assigned now to `alert`'s bed.
    pub fn assigned_to(&self, alert: &Alert) -> Vec<String> {
        let bed = bed_label(alert);
        let now = self.clock.now();
        self.lock()
            .values()
            .filter(|a| a.unit == alert.patient.unit && a.from <= now && now < a.until && a.beds.contains(&bed))
            .map(|a| a.nurse.clone())
            .collect()
    }

    async fn put(&self, assignment: Assignment) -> Result<(), ConsoleError> {
        let _writing = self.writes.lock().await;
        let key = (assignment.unit.clone(), assignment.nurse.clone());
        if assignment.beds.is_empty() {
            self.store.remove_assignment(&key.0, &key.1).await.map_err(store_failure)?;
            self.lock().remove(&key);
            return Ok(());
        }
        let lapsed: Vec<(String, String)> = {
            let held = self.lock();
            if held.contains_key(&key) || held.len() < MAX_ASSIGNMENTS {
                Vec::new()
            } else {
                let now = self.clock.now();
                held.iter().filter(|(_, a)| a.until <= now).map(|(k, _)| k.clone()).collect()
            }
        };
        for k in lapsed {
            self.store.remove_assignment(&k.0, &k.1).await.map_err(store_failure)?;
            self.lock().remove(&k);
        }
        {
            let held = self.lock();
            if !held.contains_key(&key) && held.len() >= MAX_ASSIGNMENTS {
                return Err(ConsoleError::Conflict(format!("at most {MAX_ASSIGNMENTS} assignments may be held")));
            }
        }
        self.store.put_assignment(&assignment).await.map_err(store_failure)?;
        self.lock().insert(key, assignment);
        Ok(())
    }

    fn receipts_lock(&self) -> std::sync::MutexGuard<'_, Receipts> {
        self.receipts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Record `user`'s receipt, durably before it is held and sent; `None` when it was already
    /// recorded (nothing changed).
    async fn receipt(
        &self,
        alert: &Alert,
        user: &str,
        kind: ReceiptKind,
    ) -> Result<Option<AlertReceipts>, ConsoleError> {
        let _writing = self.receipt_writes.lock().await;
        let id = alert.id.0.clone();
        let (changed, evicted) = {
            let receipts = self.receipts_lock();
            let mut entry = receipts.by_alert.get(&id).cloned().unwrap_or_else(|| AlertReceipts {
                alert_id: id.clone(),
                unit: alert.patient.unit.clone(),
                receipts: Vec::new(),
            });
            if entry.receipts.len() >= MAX_RECEIPTS_PER_ALERT
                || entry.receipts.iter().any(|r| r.user == user && r.kind == kind)
            {
                return Ok(None);
            }
            entry.receipts.push(Receipt { user: user.to_string(), kind, at: self.clock.now() });
            let evicted = match receipts.by_alert.contains_key(&id) || receipts.order.len() < MAX_RECEIPT_ALERTS {
                true => None,
                false => receipts.order.front().cloned(),
            };
            (entry, evicted)
        };
        self.store.put_receipts(&StoredReceipts::from(&changed)).await.map_err(store_failure)?;
        {
            let mut receipts = self.receipts_lock();
            if let Some(oldest) = &evicted {
                receipts.order.pop_front();
                receipts.by_alert.remove(oldest);
            }
            if !receipts.by_alert.contains_key(&id) {
                receipts.order.push_back(id.clone());
            }
            receipts.by_alert.insert(id, changed.clone());
        }
        if let Some(oldest) = evicted
            && let Err(e) = self.store.remove_receipts(&oldest).await
        {
            // Only a row more than the bound: the next start reads the newest ones.
            tracing::warn!(error = %e, "console: the receipts of a forgotten alert stay in the store");
        }
        let _ = self.changes.send(Arc::new(changed.clone()));
        Ok(Some(changed))
    }

    /// The receipts held for `alert_id`.
    pub fn receipts_of(&self, alert_id: &str) -> Option<AlertReceipts> {
        self.receipts_lock().by_alert.get(alert_id).cloned()
    }
}

fn store_failure(e: impl std::fmt::Display) -> ConsoleError {
    tracing::error!(error = %e, "console: assignment store failure");
    ConsoleError::Unavailable
}

impl Console {
    /// Assign a nurse's beds on a unit for a shift (an empty list ends the assignment), on
    /// behalf of a charge nurse or an admin who sees the unit. Audited (nurse, unit, bed count).
    pub async fn assign(&self, claims: &Claims, request: AssignmentRequest) -> Result<Assignment, ConsoleError> {
        const ACTION: &str = "assign";
        let target = format!("{}:{}", request.unit, request.nurse);
        self.require(claims, Permission::AssignBeds, ACTION, &target)?;
        if !claims.may_see(&request.unit) {
            self.audit(claims, ACTION, &target, "denied: unit not in token");
            return Err(ConsoleError::Forbidden(format!("unit {} is not in your token", request.unit)));
        }
        let valid_name = |s: &str| !s.trim().is_empty() && s.len() <= 64 && !s.contains('\u{0}');
        if !valid_name(&request.nurse) || !valid_name(&request.unit) {
            return Err(ConsoleError::BadRequest("a nurse and a unit are 1 to 64 characters".into()));
        }
        if request.beds.len() > MAX_BEDS || request.beds.iter().any(|b| !valid_name(b)) {
            return Err(ConsoleError::BadRequest(format!("at most {MAX_BEDS} beds of 1 to 64 characters")));
        }
        if !(1..=MAX_SHIFT_HOURS).contains(&request.hours) {
            return Err(ConsoleError::BadRequest(format!("a shift lasts 1 to {MAX_SHIFT_HOURS} hours")));
        }
        let from = self.assignments.clock.now();
        let mut beds = request.beds;
        beds.sort();
        beds.dedup();
        let assignment = Assignment {
            nurse: request.nurse,
            unit: request.unit,
            beds,
            from,
            until: from + time::Duration::hours(request.hours),
            by: claims.sub.clone(),
        };
        self.assignments.put(assignment.clone()).await?;
        self.audit(claims, ACTION, &target, &format!("ok: {} beds", assignment.beds.len()));
        Ok(assignment)
    }

    /// The assignments in force on the units `claims` sees.
    pub fn assignments_for(&self, claims: &Claims) -> Vec<Assignment> {
        self.assignments.current().into_iter().filter(|a| claims.may_see(&a.unit)).collect()
    }

    /// Record that `claims`' holder was shown (or opened) an alert they see. Audited once per
    /// user, alert and kind.
    pub async fn receipt(
        &self,
        claims: &Claims,
        alert_id: &str,
        kind: ReceiptKind,
    ) -> Result<Option<AlertReceipts>, ConsoleError> {
        let action = match kind {
            ReceiptKind::Delivered => "receipt_delivered",
            ReceiptKind::Opened => "receipt_opened",
        };
        let found = self.alerts.alert(&AlertId(alert_id.to_string())).await?;
        let Some(change) = found.filter(|c| sees(claims, &c.alert)) else {
            return Err(ConsoleError::NotFound("no such alert".into()));
        };
        let recorded = self.assignments.receipt(&change.alert, &claims.sub, kind).await?;
        if recorded.is_some() {
            self.audit(claims, action, alert_id, "ok");
        }
        Ok(recorded)
    }

    /// The assignment book (sessions subscribe to its receipt changes).
    pub fn assignment_book(&self) -> &Assignments {
        &self.assignments
    }

    /// What the console shows of an alert's route: who it reaches now and next, and who is
    /// assigned to its bed.
    pub fn route(&self, alert: &Alert) -> Route {
        Route {
            assigned: self.assignments.assigned_to(alert),
            position: self.escalation.position(alert),
            receipts: self.assignments.receipts_of(&alert.id.0).map(|r| r.receipts).unwrap_or_default(),
        }
    }
}

/// An alert's route, sent with it to consoles.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Route {
    /// Nurses assigned to the bed now (notified first).
    pub assigned: Vec<String>,
    /// The escalation chain and where the alert stands on it.
    #[serde(flatten)]
    pub position: crate::alerts::escalation::ChainPosition,
    /// Delivery and read receipts so far.
    pub receipts: Vec<Receipt>,
}

#[cfg(test)]
mod tests {
    use vigil_actors::fakes::ManualClock;

    use super::*;

    const T0: OffsetDateTime = time::macros::datetime!(2026-01-01 07:00 UTC);

    fn alert(unit: &str, room: &str, bed: &str) -> Alert {
        let json = serde_json::json!({
            "id": "p1:news2", "patient": {"id": "p1", "mrn": "M1", "name": "N", "unit": unit, "room": room, "bed": bed},
            "rule": {"id": "news2", "version": "v"}, "severity": "high", "status": "active", "score": 6.0,
            "summary": "s", "details": null, "raised_at": "2026-01-01T07:00:00Z", "updated_at": "2026-01-01T07:00:00Z"
        });
        serde_json::from_value(json).unwrap()
    }

    #[tokio::test]
    async fn an_assignment_covers_its_beds_until_the_shift_ends_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let keys = Arc::new(crate::crypto::KeyRing::from_keys(&[(1, [9; 32])]).unwrap());
        let publisher = Arc::new(vigil_actors::fakes::CollectingPublisher::default());
        let embedded = crate::store::EmbeddedStore::open(dir.path(), Default::default(), keys, publisher).unwrap();
        let db: Arc<dyn ConsoleStore> = Arc::new(embedded);
        let clock = Arc::new(ManualClock(Mutex::new(T0)));
        let book = Assignments::open(Arc::clone(&db), clock.clone()).await.unwrap();
        let shift = |beds: &[&str]| Assignment {
            nurse: "nurse-4".into(),
            unit: "ICU".into(),
            beds: beds.iter().map(|b| b.to_string()).collect(),
            from: T0,
            until: T0 + time::Duration::hours(12),
            by: "charge-1".into(),
        };
        book.put(shift(&["07-A", "07-B"])).await.unwrap();
        assert_eq!(book.assigned_to(&alert("ICU", "07", "A")), ["nurse-4"]);
        assert!(book.assigned_to(&alert("ICU", "08", "A")).is_empty(), "another bed");
        assert!(book.assigned_to(&alert("5W", "07", "A")).is_empty(), "another unit");
        let reopened = Assignments::open(Arc::clone(&db), clock.clone()).await.unwrap();
        assert_eq!(reopened.current(), vec![shift(&["07-A", "07-B"])]);
        *clock.0.lock().unwrap() = T0 + time::Duration::hours(12);
        assert!(book.assigned_to(&alert("ICU", "07", "A")).is_empty(), "the shift ended");
        book.put(shift(&[])).await.unwrap();
        assert!(Assignments::open(db, clock).await.unwrap().current().is_empty());
    }

    #[tokio::test]
    async fn a_receipt_is_recorded_once_per_user_and_kind_and_bounded() {
        let clock = Arc::new(ManualClock(Mutex::new(T0)));
        let book = Assignments::in_memory(clock);
        let a = alert("ICU", "07", "A");
        let mut changes = book.subscribe();
        assert!(book.receipt(&a, "nurse-4", ReceiptKind::Delivered).await.unwrap().is_some());
        assert!(book.receipt(&a, "nurse-4", ReceiptKind::Delivered).await.unwrap().is_none(), "once");
        let opened = book.receipt(&a, "nurse-4", ReceiptKind::Opened).await.unwrap().unwrap();
        assert_eq!(
            opened.receipts.iter().map(|r| r.kind).collect::<Vec<_>>(),
            [ReceiptKind::Delivered, ReceiptKind::Opened]
        );
        assert_eq!(changes.try_recv().unwrap().receipts.len(), 1);
        for n in 0..(MAX_RECEIPTS_PER_ALERT + 10) {
            book.receipt(&a, &format!("u{n}"), ReceiptKind::Delivered).await.unwrap();
        }
        assert_eq!(book.receipts_of("p1:news2").unwrap().receipts.len(), MAX_RECEIPTS_PER_ALERT);
    }

    #[tokio::test]
    async fn receipts_survive_a_restart_with_who_what_and_when() {
        let dir = tempfile::tempdir().unwrap();
        let keys = Arc::new(crate::crypto::KeyRing::from_keys(&[(1, [9; 32])]).unwrap());
        let publisher = Arc::new(vigil_actors::fakes::CollectingPublisher::default());
        let embedded = crate::store::EmbeddedStore::open(dir.path(), Default::default(), keys, publisher).unwrap();
        let db: Arc<dyn ConsoleStore> = Arc::new(embedded);
        let clock = Arc::new(ManualClock(Mutex::new(T0)));
        let book = Assignments::open(Arc::clone(&db), clock.clone()).await.unwrap();
        let a = alert("ICU", "07", "A");
        book.receipt(&a, "nurse-4", ReceiptKind::Delivered).await.unwrap();
        *clock.0.lock().unwrap() = T0 + time::Duration::minutes(2);
        book.receipt(&a, "nurse-4", ReceiptKind::Opened).await.unwrap();
        book.receipt(&a, "charge-1", ReceiptKind::Delivered).await.unwrap();
        let before = book.receipts_of("p1:news2").unwrap();
        assert_eq!(before.receipts.len(), 3);
        drop(book);

        let reopened = Assignments::open(Arc::clone(&db), clock.clone()).await.unwrap();
        let after = reopened.receipts_of("p1:news2").expect("receipts read back at start");
        assert_eq!(after, before);
        assert_eq!(after.unit, "ICU", "with the unit that decides who sees them");
        assert_eq!(
            after.receipts.iter().map(|r| (r.user.as_str(), r.kind, r.at)).collect::<Vec<_>>(),
            [
                ("nurse-4", ReceiptKind::Delivered, T0),
                ("nurse-4", ReceiptKind::Opened, T0 + time::Duration::minutes(2)),
                ("charge-1", ReceiptKind::Delivered, T0 + time::Duration::minutes(2)),
            ]
        );
        // Still recorded once: a repeat after the restart changes nothing.
        assert!(reopened.receipt(&a, "nurse-4", ReceiptKind::Opened).await.unwrap().is_none());
    }
}
