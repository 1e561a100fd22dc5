//! The unit board's census: every occupied bed on the units a console shows, alert or not,
//! with the patient's current NEWS2 (or none known). Read from the router's census, which the
//! patient actors keep; bounded per read.
//!
//! The census is durable: [`keep`] writes every admit, move and departure to the
//! [`ConsoleStore`] (a bed without its score), and [`restore`] reads it back at start, before
//! any message is taken, so the board shows every census bed right after a restart, each with
//! "no score" until its vital signs arrive again (a score is never carried over as current).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio::sync::{broadcast, watch};
use vigil_actors::{Census, CensusBed, CensusChange, StoreError};

use super::Console;
use super::store::ConsoleStore;
use crate::auth::Claims;

/// How often [`keep`] tries again after a failed write.
const RETRY_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// A bed as the store keeps it: without its score, which is only current while the patient's
/// vital signs keep it so.
fn unscored(bed: &CensusBed) -> CensusBed {
    CensusBed { news2: None, ..bed.clone() }
}

/// Put the census `store` keeps into `census` (at start, before any message is taken);
/// returns the beds it put, as [`keep`] starts from them.
pub async fn restore(census: &Census, store: &dyn ConsoleStore) -> Result<HashMap<String, CensusBed>, StoreError> {
    let mut kept = HashMap::new();
    for bed in store.census_beds().await? {
        let bed = unscored(&bed);
        census.set(&bed.patient, Some(bed.clone()));
        kept.insert(bed.patient.0.clone(), bed);
    }
    Ok(kept)
}

/// Keep `store`'s census equal to `census`: each change is written as it comes (a change of
/// score alone writes nothing); a lag, or a failed write, is made good by writing the
/// difference between the census and what was written. Ends when `stop` says so, after
/// writing what is left (call it after the patient actors stopped).
pub async fn keep(
    census: Arc<Census>,
    store: Arc<dyn ConsoleStore>,
    mut changes: broadcast::Receiver<Arc<CensusChange>>,
    mut written: HashMap<String, CensusBed>,
    mut stop: watch::Receiver<bool>,
) {
    let mut dirty = false;
    let mut retry = tokio::time::interval(RETRY_EVERY);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            change = changes.recv() => match change {
                Ok(change) => {
                    if !dirty && let Err(e) = write_change(store.as_ref(), &change, &mut written).await {
                        tracing::error!(error = %e, "console: a census change was not stored; retrying");
                        dirty = true;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::debug!(missed, "console: census writer lagged; writing the difference");
                    dirty = true;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = retry.tick(), if dirty => {
                dirty = sync(&census, store.as_ref(), &mut written).await.is_err();
            }
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    // What the actors changed last, then the whole difference once.
                    if let Err(e) = sync(&census, store.as_ref(), &mut written).await {
                        tracing::error!(error = %e, "console: the census was not stored at shutdown");
                    }
                    return;
                }
            }
        }
    }
}

async fn write_change(
    store: &dyn ConsoleStore,
    change: &CensusChange,
    written: &mut HashMap<String, CensusBed>,
) -> Result<(), StoreError> {
    match change {
        CensusChange::Bed { bed, .. } => {
            let row = unscored(bed);
            if written.get(&row.patient.0) != Some(&row) {
                store.put_census_bed(&row).await?;
                written.insert(row.patient.0.clone(), row);
            }
        }
        CensusChange::Left { patient, .. } => {
            if written.contains_key(&patient.0) {
                store.remove_census_bed(&patient.0).await?;
                written.remove(&patient.0);
            }
        }
    }
    Ok(())
}

/// Write the difference between `census` and what was `written`.
async fn sync(
    census: &Census,
    store: &dyn ConsoleStore,
    written: &mut HashMap<String, CensusBed>,
) -> Result<(), StoreError> {
    let (beds, _) = census.beds(|_| true, vigil_actors::census::MAX_CENSUS);
    let now: HashMap<String, CensusBed> = beds.iter().map(|b| (b.patient.0.clone(), unscored(b))).collect();
    let gone: Vec<String> = written.keys().filter(|p| !now.contains_key(*p)).cloned().collect();
    for patient in gone {
        store.remove_census_bed(&patient).await?;
        written.remove(&patient);
    }
    for (patient, row) in now {
        if written.get(&patient) != Some(&row) {
            store.put_census_bed(&row).await?;
            written.insert(patient, row);
        }
    }
    Ok(())
}

/// Beds one census read returns at most (a console shows a few units of up to 60 beds).
pub const MAX_BOARD_BEDS: usize = 2_000;

/// What a console subscription covers: the units it asked for (`all` for `*`) and the
/// patients it follows.
pub struct BoardScope<'a> {
    /// Subscribed with `*` on a token that allows every unit.
    pub all: bool,
    /// Units subscribed to.
    pub units: &'a HashSet<String>,
    /// Patients subscribed to.
    pub patients: &'a HashSet<String>,
}

impl BoardScope<'_> {
    /// Whether `claims`' console shows a bed on `unit` of `patient`: the token allows the unit
    /// and the subscription covers it.
    pub fn shows(&self, claims: &Claims, unit: &str, patient: &str) -> bool {
        claims.may_see(unit) && (self.all || self.units.contains(unit) || self.patients.contains(patient))
    }
}

impl Console {
    /// The occupied beds `scope` shows, ordered by unit and bed, at most [`MAX_BOARD_BEDS`];
    /// `true` when some were left out.
    pub fn census(&self, claims: &Claims, scope: &BoardScope<'_>) -> (Vec<CensusBed>, bool) {
        self.router.census().beds(|bed| scope.shows(claims, &bed.unit, &bed.patient.0), MAX_BOARD_BEDS)
    }

    /// Admissions, transfers, discharges and score changes from now on (a bounded channel: a
    /// receiver that lags reads [`Console::census`] again).
    pub fn census_changes(&self) -> broadcast::Receiver<Arc<CensusChange>> {
        self.router.census().subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;

    fn claims(units: &[&str]) -> Claims {
        Claims {
            sub: "nurse-1".into(),
            role: Role::Nurse,
            units: units.iter().map(|u| u.to_string()).collect(),
            iat: 0,
            exp: 0,
            iss: String::new(),
            nbf: None,
            aud: None,
        }
    }

    fn bed(patient: &str, unit: &str, bed: &str, score: Option<i64>) -> CensusBed {
        CensusBed {
            patient: vigil_actors::PatientId(patient.into()),
            name: vigil_actors::Phi("Test, Synthetic".into()),
            unit: unit.into(),
            room: "01".into(),
            bed: bed.into(),
            news2: score.map(|score| vigil_actors::News2Now { score, band: "low".into(), partial: false }),
        }
    }

    #[tokio::test]
    async fn the_census_is_written_as_it_changes_and_read_back_without_scores_after_a_restart() {
        let store: Arc<dyn ConsoleStore> = Arc::new(crate::console::MemoryConsoleStore::default());
        let census = Arc::new(Census::default());
        let changes = census.subscribe();
        let written = restore(&census, store.as_ref()).await.unwrap();
        assert!(written.is_empty());
        let (stop, stopped) = watch::channel(false);
        let keeper = tokio::spawn(keep(Arc::clone(&census), Arc::clone(&store), changes, written, stopped));
        let pid = |p: &str| vigil_actors::PatientId(p.into());
        census.set(&pid("p1"), Some(bed("p1", "ICU", "A", None)));
        census.set(&pid("p2"), Some(bed("p2", "ICU", "B", Some(3))));
        census.set(&pid("p3"), Some(bed("p3", "5W", "C", None)));
        census.set(&pid("p1"), Some(bed("p1", "5W", "D", Some(1))));
        census.set(&pid("p3"), None);
        stop.send(true).unwrap();
        keeper.await.unwrap();
        let mut kept = store.census_beds().await.unwrap();
        kept.sort_by(|a, b| a.patient.cmp(&b.patient));
        assert_eq!(
            kept,
            [bed("p1", "5W", "D", None), bed("p2", "ICU", "B", None)],
            "moved, kept, discharged; no score"
        );

        // The next start: every bed is on the board at once, its score unknown.
        let after = Census::default();
        let written = restore(&after, store.as_ref()).await.unwrap();
        assert_eq!(written.len(), 2);
        let (beds, more) = after.beds(|_| true, 10);
        assert!(!more);
        assert_eq!(beds, [bed("p1", "5W", "D", None), bed("p2", "ICU", "B", None)]);
        assert_eq!(after.get(&pid("p2")).unwrap().news2, None, "a score is never carried over as current");
    }

    #[tokio::test]
    async fn a_lagging_or_failing_writer_writes_the_difference() {
        let store: Arc<dyn ConsoleStore> = Arc::new(crate::console::MemoryConsoleStore::default());
        store.put_census_bed(&bed("gone", "ICU", "Z", None)).await.unwrap();
        let census = Arc::new(Census::default());
        let written = restore(&census, store.as_ref()).await.unwrap();
        // Discharged while nobody listened: the writer only learns it from the difference.
        census.set(&vigil_actors::PatientId("gone".into()), None);
        census.set(&vigil_actors::PatientId("p9".into()), Some(bed("p9", "ICU", "9", Some(2))));
        let changes = census.subscribe();
        let (stop, stopped) = watch::channel(false);
        let keeper = tokio::spawn(keep(Arc::clone(&census), Arc::clone(&store), changes, written, stopped));
        stop.send(true).unwrap();
        keeper.await.unwrap();
        assert_eq!(store.census_beds().await.unwrap(), [bed("p9", "ICU", "9", None)]);
    }

    #[test]
    fn a_bed_shows_only_on_a_unit_the_token_allows_and_the_subscription_covers() {
        let units: HashSet<String> = ["ICU".to_string()].into();
        let patients: HashSet<String> = ["p9".to_string()].into();
        let scope = BoardScope { all: false, units: &units, patients: &patients };
        let icu = claims(&["ICU"]);
        assert!(scope.shows(&icu, "ICU", "p1"));
        assert!(!scope.shows(&icu, "5W", "p1"), "not subscribed");
        assert!(!scope.shows(&icu, "5W", "p9"), "a followed patient on a unit outside the token");
        assert!(scope.shows(&claims(&["*"]), "5W", "p9"), "a followed patient");
        let none = HashSet::new();
        let all = BoardScope { all: true, units: &none, patients: &none };
        assert!(all.shows(&claims(&["*"]), "5W", "p1"));
        assert!(!all.shows(&icu, "5W", "p1"), "* never widens the token");
    }
}
