//! Load scenarios as TOML files (loadtest/scenarios/*.toml): the offered rate and its phases
//! (ramp, warm-up, measured duration), the connections, the patients, the message mix, the
//! deterioration generator, the FHIR device gateway and the watching consoles. Read by
//! [`Scenario::from_toml`], checked by [`Scenario::validate`]; the load itself is run by
//! [`crate::load`].

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One load scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name, shown in reports.
    pub name: String,
    /// What the scenario stands for.
    #[serde(default)]
    pub description: String,
    /// Rate, phases, connections, patients.
    pub load: Load,
    /// Which messages the MLLP schedule sends, by weight.
    #[serde(default)]
    pub mix: Mix,
    /// Chosen patients who cross rule thresholds at known times.
    #[serde(default)]
    pub deterioration: Option<Deterioration>,
    /// FHIR device gateway: vitals as FHIR Observations over HTTP, beside the MLLP schedule.
    #[serde(default)]
    pub fhir: Option<FhirLoad>,
    /// Console WebSocket sessions that time every expected alert.
    #[serde(default)]
    pub consoles: Option<Consoles>,
}

/// The MLLP schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Load {
    /// Messages per second at full load (or give `beds` and `interval_s`).
    #[serde(default)]
    pub rate: Option<f64>,
    /// Ward form: this many beds ...
    #[serde(default)]
    pub beds: Option<u64>,
    /// ... each sending a message every `interval_s` seconds.
    #[serde(default)]
    pub interval_s: Option<f64>,
    /// MLLP connections; messages are dealt to them in turn.
    #[serde(default = "default_connections")]
    pub connections: usize,
    /// Distinct synthetic patients (default: `beds`, else 500).
    #[serde(default)]
    pub patients: Option<usize>,
    /// Seconds rising linearly from 0 to the full rate (not measured).
    #[serde(default)]
    pub ramp_s: f64,
    /// Seconds at the full rate before measuring starts (not measured).
    #[serde(default)]
    pub warmup_s: f64,
    /// Seconds measured at the full rate.
    pub duration_s: f64,
    /// How senders wait for each intended send time: `precise` (default) or `tick` (tokio's
    /// millisecond timer, as before the eighteenth session; `crate::pace`).
    #[serde(default)]
    pub pacing: crate::pace::Pacing,
}

fn default_connections() -> usize {
    8
}

/// Relative weights of the message kinds on the MLLP schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mix {
    /// PCD-01 ORU^R01 vitals (7 numeric OBX, stable values).
    #[serde(default = "one")]
    pub vitals: f64,
    /// ORU^R01 basic metabolic panel from the lab.
    #[serde(default)]
    pub lab: f64,
    /// RDE^O11 pharmacy orders.
    #[serde(default)]
    pub pharmacy: f64,
    /// ADT^A01 admissions.
    #[serde(default)]
    pub admit: f64,
    /// Every n-th pharmacy order is an interacting pair for a new patient, whose `med.ddi`
    /// alert the consoles time (0: none).
    #[serde(default)]
    pub interaction_every: u64,
}

fn one() -> f64 {
    1.0
}

impl Default for Mix {
    fn default() -> Self {
        Mix { vitals: 1.0, lab: 0.0, pharmacy: 0.0, admit: 0.0, interaction_every: 0 }
    }
}

/// The deterioration generator: `patients` patients of their own, each sent stable vitals and
/// then, at `first_at_s + k * every_s` seconds after the schedule starts, vitals over the
/// qSOFA and NEWS2 thresholds (RR 30, SBP 85, new confusion, ...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deterioration {
    /// Patients who deteriorate, one crossing each.
    pub patients: usize,
    /// Seconds from the start of the schedule to the first crossing.
    pub first_at_s: f64,
    /// Seconds between two crossings.
    pub every_s: f64,
}

/// FHIR device gateway load: Observations by single POSTs, open loop, beside the MLLP schedule
/// and over the same phases.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FhirLoad {
    /// Observations per second at full load.
    pub rate: f64,
    /// HTTP keep-alive connections (one request in flight each).
    #[serde(default = "default_fhir_connections")]
    pub connections: usize,
}

fn default_fhir_connections() -> usize {
    8
}

/// Console WebSocket sessions watching every unit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Consoles {
    /// Sessions.
    pub count: usize,
    /// Seconds after the last send to wait for alerts still due.
    #[serde(default = "default_grace")]
    pub grace_s: f64,
}

fn default_grace() -> f64 {
    5.0
}

/// Most connections of one kind a scenario may open.
pub const MAX_CONNECTIONS: usize = 4096;
/// Most consoles.
pub const MAX_CONSOLES: usize = 1000;
/// Longest scenario, seconds.
pub const MAX_SECONDS: f64 = 24.0 * 3600.0;

impl Scenario {
    /// Parse and check a scenario file's text.
    pub fn from_toml(text: &str) -> anyhow::Result<Scenario> {
        let scenario: Scenario = toml::from_str(text)?;
        scenario.validate()?;
        Ok(scenario)
    }

    /// Messages per second the MLLP schedule offers at full load.
    pub fn rate(&self) -> f64 {
        match (self.load.rate, self.load.beds, self.load.interval_s) {
            (Some(rate), _, _) => rate,
            (None, Some(beds), Some(interval)) if interval > 0.0 => beds as f64 / interval,
            _ => 0.0,
        }
    }

    /// Distinct patients of the MLLP schedule.
    pub fn patients(&self) -> usize {
        self.load.patients.or(self.load.beds.map(|b| b as usize)).unwrap_or(500).max(1)
    }

    /// Ramp + warm-up + measured duration.
    pub fn total(&self) -> Duration {
        Duration::from_secs_f64(self.load.ramp_s + self.load.warmup_s + self.load.duration_s)
    }

    /// Where measuring starts, from the start of the schedule.
    pub fn measure_from(&self) -> Duration {
        Duration::from_secs_f64(self.load.ramp_s + self.load.warmup_s)
    }

    /// Check every value, naming the key at fault.
    pub fn validate(&self) -> anyhow::Result<()> {
        let l = &self.load;
        anyhow::ensure!(!self.name.trim().is_empty(), "name: must not be empty");
        match (l.rate, l.beds, l.interval_s) {
            (Some(r), None, None) => anyhow::ensure!(r.is_finite() && r > 0.0, "load.rate: must be positive"),
            (None, Some(b), Some(i)) => {
                anyhow::ensure!(b > 0, "load.beds: must be positive");
                anyhow::ensure!(i.is_finite() && i > 0.0, "load.interval_s: must be positive");
            }
            _ => anyhow::bail!("load: give either rate, or beds and interval_s"),
        }
        anyhow::ensure!((1..=MAX_CONNECTIONS).contains(&l.connections), "load.connections: 1 to {MAX_CONNECTIONS}");
        for (key, v) in [("load.ramp_s", l.ramp_s), ("load.warmup_s", l.warmup_s), ("load.duration_s", l.duration_s)] {
            anyhow::ensure!(v.is_finite() && (0.0..=MAX_SECONDS).contains(&v), "{key}: 0 to {MAX_SECONDS} seconds");
        }
        anyhow::ensure!(l.duration_s > 0.0, "load.duration_s: must be positive");
        anyhow::ensure!(l.patients != Some(0), "load.patients: must be positive");
        let m = &self.mix;
        for (key, w) in
            [("mix.vitals", m.vitals), ("mix.lab", m.lab), ("mix.pharmacy", m.pharmacy), ("mix.admit", m.admit)]
        {
            anyhow::ensure!(w.is_finite() && w >= 0.0, "{key}: must be zero or positive");
        }
        anyhow::ensure!(m.vitals + m.lab + m.pharmacy + m.admit > 0.0, "mix: at least one weight must be positive");
        if let Some(d) = &self.deterioration {
            anyhow::ensure!((1..=100_000).contains(&d.patients), "deterioration.patients: 1 to 100000");
            anyhow::ensure!(d.first_at_s.is_finite() && d.first_at_s >= 1.0, "deterioration.first_at_s: at least 1");
            anyhow::ensure!(d.every_s.is_finite() && d.every_s >= 0.0, "deterioration.every_s: zero or positive");
        }
        if let Some(f) = &self.fhir {
            anyhow::ensure!(f.rate.is_finite() && f.rate > 0.0, "fhir.rate: must be positive");
            anyhow::ensure!((1..=MAX_CONNECTIONS).contains(&f.connections), "fhir.connections: 1 to {MAX_CONNECTIONS}");
        }
        if let Some(c) = &self.consoles {
            anyhow::ensure!((1..=MAX_CONSOLES).contains(&c.count), "consoles.count: 1 to {MAX_CONSOLES}");
            anyhow::ensure!(c.grace_s.is_finite() && (0.0..=600.0).contains(&c.grace_s), "consoles.grace_s: 0 to 600");
        }
        Ok(())
    }
}

/// When the `i`-th message of a schedule is due, from its start: a linear ramp from 0 to
/// `rate` over `ramp` seconds, then `rate` flat (the inverse of the count sent by time t).
pub fn intended_offset(i: u64, rate: f64, ramp: f64) -> Duration {
    let i = i as f64;
    let in_ramp = rate * ramp / 2.0;
    let secs = if ramp > 0.0 && i < in_ramp { (2.0 * ramp * i / rate).sqrt() } else { ramp + (i - in_ramp) / rate };
    Duration::from_secs_f64(secs.max(0.0))
}

/// Messages a schedule sends in `total` seconds.
pub fn scheduled_count(rate: f64, ramp: f64, total: f64) -> u64 {
    let ramp = ramp.min(total);
    let flat = (total - ramp).max(0.0);
    (rate * ramp / 2.0 + rate * flat).floor() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_scenario_parses_and_validates() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let text = std::fs::read_to_string(&path).unwrap();
                let s = Scenario::from_toml(&text).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
                assert!(s.rate() > 0.0);
                names.push(s.name);
            }
        }
        names.sort();
        for expected in ["console-fanout", "ed-surge", "fhir-gateway", "lab-burst", "pharmacy-storm", "ward"] {
            assert!(names.iter().any(|n| n == expected), "{expected} missing from {names:?}");
        }
    }

    #[test]
    fn ward_form_gives_the_rate_and_patients() {
        let s = Scenario::from_toml(
            "name = \"w\"\n[load]\nbeds = 600\ninterval_s = 2.0\nduration_s = 10\nconnections = 4\n",
        )
        .unwrap();
        assert_eq!(s.rate(), 300.0);
        assert_eq!(s.patients(), 600);
        assert_eq!(s.load.connections, 4);
    }

    #[test]
    fn bad_values_name_their_key() {
        let base = "name = \"x\"\n[load]\nrate = 10\nduration_s = 5\n";
        assert!(Scenario::from_toml(base).is_ok());
        let err = |extra: &str| format!("{:#}", Scenario::from_toml(&format!("{base}{extra}")).unwrap_err());
        assert!(err("connections = 0\n").contains("load.connections"));
        assert!(err("ramp_s = -1\n").contains("load.ramp_s"));
        assert!(err("[mix]\nvitals = 0\n").contains("mix"));
        assert!(err("[consoles]\ncount = 0\n").contains("consoles.count"));
        assert!(err("[deterioration]\npatients = 3\nfirst_at_s = 0\nevery_s = 1\n").contains("first_at_s"));
        assert!(err("bogus = 1\n").contains("bogus"));
        let both = "name = \"x\"\n[load]\nrate = 10\nbeds = 3\ninterval_s = 1\nduration_s = 5\n";
        assert!(format!("{:#}", Scenario::from_toml(both).unwrap_err()).contains("either rate"));
    }

    #[test]
    fn the_schedule_ramps_then_runs_flat() {
        // 100/s, 2 s ramp: 100 messages in the ramp, message 100 due at 2 s, 150 at 2.5 s.
        assert_eq!(intended_offset(0, 100.0, 2.0), Duration::ZERO);
        assert!((intended_offset(100, 100.0, 2.0).as_secs_f64() - 2.0).abs() < 1e-9);
        assert!((intended_offset(150, 100.0, 2.0).as_secs_f64() - 2.5).abs() < 1e-9);
        assert!((intended_offset(25, 100.0, 2.0).as_secs_f64() - 1.0).abs() < 1e-9);
        assert!((intended_offset(50, 100.0, 0.0).as_secs_f64() - 0.5).abs() < 1e-9);
        assert_eq!(scheduled_count(100.0, 2.0, 5.0), 400);
        assert_eq!(scheduled_count(100.0, 0.0, 1.5), 150);
        // Non-decreasing across the ramp's end.
        let mut last = Duration::ZERO;
        for i in 0..400 {
            let t = intended_offset(i, 100.0, 2.0);
            assert!(t >= last);
            last = t;
        }
    }
}
