//! `vigil demo`'s flaky monitor: one more simulated bed whose monitor reports steady vitals
//! over MLLP (IHE PCD-01), then drops out for a while and comes back, in a cycle, so the
//! console shows `device.offline` raised for its patient and resolved when data returns. Uses
//! the load-test crate's message builders; synthetic data only.

use std::time::Duration;

use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use vigil_loadtest::mllp::{MllpClient, ack_code};
use vigil_loadtest::pcd01::{PatientDemo, Vitals};

/// The monitor's device id (its EUI-64 is derived from it by the message builder).
pub const DEVICE: &str = "DEMO-DROPOUT-MON";

/// When the flaky monitor reports and when it is silent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dropout {
    /// Time between two reports while it reports.
    pub interval: Duration,
    /// How long it reports before dropping out.
    pub reporting: Duration,
    /// How long it stays silent (longer than `[devices]` offline threshold to be seen).
    pub silent: Duration,
}

impl Dropout {
    /// Whether it reports `elapsed` after it started: the first `reporting` of every cycle.
    pub fn reports_at(&self, elapsed: Duration) -> bool {
        let cycle = (self.reporting + self.silent).as_millis().max(1);
        elapsed.as_millis() % cycle < self.reporting.as_millis()
    }
}

fn patient(unit: &str) -> PatientDemo {
    PatientDemo {
        mrn: "SIM-DROPOUT-1".into(),
        assigning_authority: "VIGIL_SIM".into(),
        family: "Dropout".into(),
        given: "Demo".into(),
        birth_date: "19550505".into(),
        sex: "F".into(),
        unit: unit.into(),
        room: "99".into(),
        bed: "A".into(),
    }
}

/// Admit the monitor's patient, then report or stay silent as `dropout` says until `stop`.
/// Answers that are not accepted are logged; the monitor carries on (a demo, not a feed).
pub async fn run(mllp_addr: String, unit: String, dropout: Dropout, stop: CancellationToken) {
    let patient = patient(&unit);
    let started = tokio::time::Instant::now();
    let mut client: Option<MllpClient> = None;
    let mut sent = 0u64;
    let mut admitted = false;
    let mut tick = tokio::time::interval(dropout.interval.max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        if admitted && !dropout.reports_at(started.elapsed()) {
            continue;
        }
        if client.is_none() {
            client = MllpClient::connect(&mllp_addr, Duration::from_secs(5)).await.ok();
        }
        let Some(connection) = client.as_mut() else { continue };
        sent += 1;
        let now = OffsetDateTime::now_utc();
        let message = if admitted {
            let vitals = Vitals {
                hr: Some(78.0),
                rr: Some(15.0),
                spo2: Some(97.0),
                sbp: Some(124.0),
                dbp: Some(76.0),
                map: Some(92.0),
                temp_c: Some(36.8),
                ..Vitals::default()
            };
            vigil_loadtest::pcd01::oru_r01(&patient, DEVICE, &vitals, &format!("DROP-{sent}"), now)
        } else {
            vigil_loadtest::adt::adt_a01(&patient, &format!("DROP-ADT-{sent}"), now)
        };
        match connection.send(&message).await {
            Ok(ack) if matches!(ack_code(&ack), Some("AA" | "CA")) => admitted = true,
            Ok(ack) => tracing::warn!(code = ?ack_code(&ack), "demo dropout monitor's message not accepted"),
            Err(error) => {
                tracing::warn!(%error, "demo dropout monitor lost its connection");
                client = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_reports_then_stays_silent_then_reports_again() {
        let dropout = Dropout {
            interval: Duration::from_secs(5),
            reporting: Duration::from_secs(60),
            silent: Duration::from_secs(120),
        };
        let at = |s: u64| dropout.reports_at(Duration::from_secs(s));
        assert!(at(0) && at(59));
        assert!(!at(60) && !at(179), "silent for two minutes");
        assert!(at(180) && at(239), "back");
        assert!(!at(240));
    }
}
