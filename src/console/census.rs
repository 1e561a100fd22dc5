//! The unit board's census: every occupied bed on the units a console shows, alert or not,
//! with the patient's current NEWS2 (or none known). Read from the router's census, which the
//! patient actors keep; bounded per read.

use std::collections::HashSet;
use std::sync::Arc;

use tokio::sync::broadcast;
use vigil_actors::{CensusBed, CensusChange};

use super::Console;
use crate::auth::Claims;

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
