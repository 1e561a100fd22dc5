//! Score tables (`rules/data/scores.json`): published scoring charts and criteria lists (NEWS2
//! chart 1, the SIRS and qSOFA criteria, SEP-1 organ dysfunction) kept as data, checked at
//! load, and evaluated host-side by `p.score(name)`.
//!
//! A rule keeps the decisions (which total alerts, at what severity, what is said, what a
//! partial score may do); the table keeps the chart. Evaluating a chart in Rust costs about
//! what one rule-API call costs, where the same chart in script costs tens of calls (each
//! ~0.3 µs on the reference machine, see docs/BENCHMARKS.md).
//!
//! Format (see rules/README.md): `scores.<name>.items` is a list of items; an item has a `key`,
//! optional `when` conditions (`setting`: map of patient settings that must equal the given
//! text; `on_oxygen`: true/false), `inputs` (each: canonical `name`, `max_age_s`, optional
//! `label` and `coded`, and `points`: ordered `[op, threshold, points]` bands ending with
//! `["else", points]`, first match wins) and `combine` (`max`, the default, or `first`: the
//! first fresh input is scored). Items sharing a key are alternatives: the first whose `when`
//! holds is used. The pseudo-input `on_oxygen` is 1 when FiO2 > 21 % or an O2 flow > 0 is
//! current, 0 when on air, and missing when neither is recorded; the pseudo-input `sbp_fall`
//! is the patient's SBP baseline minus the latest SBP (missing without a baseline, see
//! [`sbp_baseline`]).
//!
//! A value that matches no band (a coded value the chart does not list, e.g. a consciousness
//! other than A/C/V/P/U) is unknown: it is shown in `values` but scores nothing, and its item is
//! missing unless another input of the item is known. Missing data is never scored.

use std::fmt::Write as _;

use rhai::{Array, Dynamic, ImmutableString};
use serde_json::Value;
use time::{OffsetDateTime, UtcDateTime};
use vigil_actors::{PatientView, Reading as Sampled};

/// One score table, parsed and checked.
#[derive(Debug)]
pub struct ScoreTable {
    items: Vec<Item>,
    /// Items scoring at least this are listed (NEWS2: a single parameter of 3) ...
    flag_at: Option<i64>,
    /// ... under this name (`flagged_as`, default `flagged`).
    flagged_as: ImmutableString,
    /// Freshness of the oxygen values behind `when.on_oxygen`, seconds.
    oxygen_max_age_s: f64,
}

#[derive(Debug)]
struct Item {
    key: ImmutableString,
    when: Vec<Condition>,
    inputs: Vec<Input>,
    first: bool,
    /// The most points any band of any input gives (what a missing item could add).
    max_points: i64,
}

#[derive(Debug)]
enum Condition {
    Setting { name: String, equals: String },
    OnOxygen(bool),
}

#[derive(Debug)]
struct Input {
    name: ImmutableString,
    label: ImmutableString,
    max_age_s: f64,
    kind: Kind,
    bands: Vec<Band>,
}

#[derive(Debug, PartialEq)]
enum Kind {
    Numeric,
    Coded,
    OnOxygen,
    SbpFall,
}

/// Inputs computed by the host rather than read from one series.
pub const PSEUDO_INPUTS: &[&str] = &["on_oxygen", "sbp_fall"];

#[derive(Debug)]
struct Band {
    op: Op,
    threshold: Threshold,
    points: i64,
    /// " (> 20)": what a finding of this band says after the value, made once at load.
    suffix: String,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
    Else,
}

impl Op {
    fn symbol(self) -> &'static str {
        match self {
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Eq => "==",
            Op::Ne => "!=",
            Op::Else => "else",
        }
    }
}

#[derive(Debug)]
enum Threshold {
    None,
    Number(f64),
    Text(String),
}

/// A value an input read.
#[derive(Clone, Copy)]
enum Reading<'a> {
    Number(f64),
    Text(&'a str),
}

/// Freshness of FiO2 / O2 flow when a table does not say: one hour.
const OXYGEN_MAX_AGE_S: f64 = 3600.0;

/// Whether the patient is on oxygen (`Some(true)`), on air (`Some(false)`) or neither is
/// recorded within `max_age` seconds (`None`).
pub fn oxygen_status(view: &PatientView, max_age: f64) -> Option<bool> {
    let fio2 = view.latest("fio2", max_age);
    let flow = view.latest("o2_flow", max_age);
    if fio2.is_none() && flow.is_none() {
        return None;
    }
    Some(fio2.is_some_and(|f| f > 21.0) || flow.is_some_and(|f| f > 0.0))
}

/// The patient's SBP baseline, mmHg: the setting `sbp_baseline` when a clinician recorded one
/// (40-300), else the median of the SBP readings taken 6 to 24 h ago (at least 3), else none.
/// SEP-1's "SBP decrease of more than 40 mmHg from the patient's baseline" compares with it.
pub fn sbp_baseline(view: &PatientView) -> Option<f64> {
    if let Some(set) = view
        .settings
        .get("sbp_baseline")
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|v| (40.0..=300.0).contains(v))
    {
        return Some(set);
    }
    let now = view.now?;
    let recent = time_key(now - time::Duration::hours(6));
    // Readings are in time order: those 6 to 24 h old are one stretch of the day's window.
    let day = view.window("sbp", 86_400.0);
    let mut values: Vec<f64> =
        day.take_while(|s| reading_key(s) <= recent).map(|s| s.value).filter(|v| v.is_finite()).collect();
    if values.len() < 3 {
        return None;
    }
    // The median in linear time (a day of minute readings is ~1 000 values).
    let (len, mid) = (values.len(), values.len() / 2);
    let (below, upper, _) = values.select_nth_unstable_by(mid, f64::total_cmp);
    let upper = *upper;
    Some(if len % 2 == 1 { upper } else { (below.iter().copied().fold(f64::MIN, f64::max) + upper) / 2.0 })
}

/// What one evaluation pass derives from a view's whole window, computed once however many
/// charts, runs and onsets of the pass read it: the SBP baseline is a median over a day of
/// readings, and was computed again for every chart and every run that reads `sbp_fall`.
#[derive(Debug, Default)]
pub struct Derived {
    sbp_baseline: std::sync::OnceLock<Option<f64>>,
}

/// A view as one evaluation pass reads it (see [`Derived`]).
#[derive(Clone, Copy)]
pub struct Pass<'v> {
    /// The patient's view.
    pub view: &'v PatientView,
    derived: &'v Derived,
}

impl<'v> Pass<'v> {
    /// `view` read with what `derived` holds (one `Derived` per view).
    pub fn new(view: &'v PatientView, derived: &'v Derived) -> Self {
        Pass { view, derived }
    }

    /// [`sbp_baseline`], computed once per pass.
    fn sbp_baseline(&self) -> Option<f64> {
        *self.derived.sbp_baseline.get_or_init(|| sbp_baseline(self.view))
    }
}

/// A reading's time as a sort key: nanoseconds since the Unix epoch, held to the range of
/// [`UtcDateTime`] (year 9999 with a negative offset is out of range in UTC: the range's end).
/// Comparing two `OffsetDateTime`s converts both to UTC on every comparison, and a series
/// builds a reading's `OffsetDateTime` from its base ([`vigil_actors::Series`]), so sweeps
/// over a day of readings key each reading once, cheaply ([`reading_key`]). The `i128` is kept
/// as two 64-bit halves (the derived order, high half first, is the `i128`'s): 8-byte aligned,
/// the vectors of readings sorted per evaluation stay small and grow in place.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
struct TimeKey {
    high: i64,
    low: u64,
}

impl TimeKey {
    fn from_nanos(nanos: i128) -> Self {
        TimeKey { high: (nanos >> 64) as i64, low: nanos as u64 }
    }

    fn nanos(self) -> i128 {
        (i128::from(self.high) << 64) | i128::from(self.low)
    }
}

/// The range of [`TimeKey`]: the instants a [`UtcDateTime`] holds.
const KEY_MIN: i128 = UtcDateTime::MIN.unix_timestamp_nanos();
const KEY_MAX: i128 = UtcDateTime::MAX.unix_timestamp_nanos();

fn time_key(at: OffsetDateTime) -> TimeKey {
    TimeKey::from_nanos(at.unix_timestamp_nanos().clamp(KEY_MIN, KEY_MAX))
}

fn reading_key(reading: &Sampled<'_>) -> TimeKey {
    TimeKey::from_nanos(reading.unix_nanos().clamp(KEY_MIN, KEY_MAX))
}

/// The instant of a key (keys are in range; the range's ends otherwise).
fn key_time(key: TimeKey) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(key.nanos())
        .unwrap_or_else(|_| OffsetDateTime::from(if key.high < 0 { UtcDateTime::MIN } else { UtcDateTime::MAX }))
}

/// `key` moved by `by` nanoseconds, when still in range (as `UtcDateTime::checked_add`).
fn key_add(key: TimeKey, by: i128) -> Option<TimeKey> {
    key.nanos().checked_add(by).filter(|k| (KEY_MIN..=KEY_MAX).contains(k)).map(TimeKey::from_nanos)
}

/// 23.0 reads "23", 38.25 reads "38.25" (whole numbers, the common case, without float
/// formatting).
fn push_number(out: &mut String, v: f64) {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        let _ = write!(out, "{}", v as i64);
    } else {
        let _ = write!(out, "{v}");
    }
}

impl Band {
    fn matches(&self, reading: Reading<'_>) -> bool {
        match (self.op, &self.threshold, reading) {
            (Op::Else, _, _) => true,
            (op, Threshold::Number(t), Reading::Number(v)) => match op {
                Op::Lt => v < *t,
                Op::Le => v <= *t,
                Op::Gt => v > *t,
                Op::Ge => v >= *t,
                Op::Eq => v == *t,
                Op::Ne => v != *t,
                Op::Else => true,
            },
            (Op::Eq, Threshold::Text(t), Reading::Text(v)) => v.eq_ignore_ascii_case(t),
            (Op::Ne, Threshold::Text(t), Reading::Text(v)) => !v.eq_ignore_ascii_case(t),
            _ => false,
        }
    }
}

impl Input {
    fn read<'v>(&self, pass: Pass<'v>) -> Option<Reading<'v>> {
        let view = pass.view;
        match self.kind {
            Kind::Numeric => view.latest(&self.name, self.max_age_s).map(Reading::Number),
            Kind::Coded => view.latest_coded(&self.name, self.max_age_s).map(Reading::Text),
            Kind::OnOxygen => oxygen_status(view, self.max_age_s).map(|on| Reading::Number(if on { 1.0 } else { 0.0 })),
            Kind::SbpFall => {
                let sbp = view.latest("sbp", self.max_age_s)?;
                pass.sbp_baseline().map(|b| Reading::Number(b - sbp))
            }
        }
    }

    /// The series behind this input and how one of its samples becomes the input's value
    /// (`None` for inputs without a numeric series: coded values, oxygen status).
    fn series(&self, pass: Pass<'_>) -> Option<(&str, Option<f64>)> {
        match self.kind {
            Kind::Numeric => Some((self.name.as_str(), None)),
            Kind::SbpFall => pass.sbp_baseline().map(|b| ("sbp", Some(b))),
            Kind::Coded | Kind::OnOxygen => None,
        }
    }

    /// Points a numeric value scores (0 when no band matches).
    fn points_of(&self, value: f64) -> i64 {
        self.bands.iter().find(|b| b.matches(Reading::Number(value))).map_or(0, |b| b.points)
    }

    fn value(&self, reading: Reading<'_>) -> Dynamic {
        match (reading, &self.kind) {
            (Reading::Number(v), Kind::OnOxygen) => Dynamic::from_bool(v > 0.0),
            (Reading::Number(v), _) => Dynamic::from_float(v),
            (Reading::Text(t), _) => Dynamic::from(ImmutableString::from(t)),
        }
    }

    /// "RR 23 (> 20)": what met, for summaries.
    fn finding(&self, reading: Reading<'_>, band: &Band) -> ImmutableString {
        let mut text = String::with_capacity(self.label.len() + band.suffix.len() + 8);
        text.push_str(&self.label);
        if self.kind != Kind::OnOxygen {
            text.push(' ');
            match reading {
                Reading::Number(v) => push_number(&mut text, v),
                Reading::Text(t) => text.push_str(t),
            }
            text.push_str(&band.suffix);
        }
        text.into()
    }
}

impl ScoreTable {
    /// Evaluate the table for `view` (see [`Scored`]).
    pub fn evaluate(&self, view: &PatientView) -> Scored {
        self.evaluate_in(Pass::new(view, &Derived::default()))
    }

    /// [`ScoreTable::evaluate`] within a pass.
    pub fn evaluate_in(&self, pass: Pass<'_>) -> Scored {
        let view = pass.view;
        // Sized once: a chart scores each item and reads about one input per item.
        let mut out = Chart {
            subscores: Vec::with_capacity(self.items.len()),
            values: Vec::with_capacity(self.items.len()),
            ..Chart::default()
        };
        let mut oxygen: Option<Option<bool>> = None;
        for item in &self.items {
            if out.subscores.iter().any(|(k, _)| *k == item.key) {
                continue;
            }
            let applies = item.when.iter().all(|c| match c {
                Condition::Setting { name, equals } => view.settings.get(name).is_some_and(|v| v == equals),
                Condition::OnOxygen(wanted) => {
                    let on = *oxygen.get_or_insert_with(|| oxygen_status(view, self.oxygen_max_age_s));
                    on.unwrap_or(false) == *wanted
                }
            });
            if !applies {
                continue;
            }
            // The scoring input: the first fresh one (`first`) or the one scoring most.
            let mut best: Option<(i64, &Input, Reading<'_>, &Band)> = None;
            for input in &item.inputs {
                let Some(reading) = input.read(pass) else { continue };
                if !out.values.iter().any(|(n, _)| *n == input.name) {
                    out.values.push((input.name.clone(), input.value(reading)));
                }
                // A value no band lists is unknown, not normal: the next input may know.
                let Some(band) = input.bands.iter().find(|b| b.matches(reading)) else { continue };
                if best.as_ref().is_none_or(|(p, ..)| band.points > *p) {
                    best = Some((band.points, input, reading, band));
                }
                if item.first {
                    break;
                }
            }
            let points = best.as_ref().map_or(0, |b| b.0);
            out.subscores.push((item.key.clone(), points));
            out.score += points;
            out.ceiling += points;
            match best {
                // Missing when no input is fresh and known.
                None => {
                    out.missing.push(item.key.clone());
                    out.ceiling += item.max_points;
                }
                Some((p, input, reading, band)) => {
                    if p > 0 {
                        out.met.push(input.finding(reading, band));
                    }
                    if self.flag_at.is_some_and(|f| p >= f) {
                        out.flagged.push(item.key.clone());
                    }
                }
            }
        }
        out.flagged_as = self.flag_at.map(|_| self.flagged_as.clone());
        Scored { chart: std::sync::Arc::new(out), extra: Vec::new(), removed: Vec::new() }
    }

    /// Parse and check one table; errors name the place (`news2.items[3].inputs[0].points[1]`).
    pub fn parse(name: &str, json: &Value) -> Result<ScoreTable, String> {
        let items = json
            .get("items")
            .and_then(Value::as_array)
            .filter(|i| !i.is_empty())
            .ok_or(format!("{name}: `items` is a non-empty list"))?;
        let flag_at = match json.get("flag_at") {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.as_i64().ok_or(format!("{name}.flag_at: a whole number"))?),
        };
        let oxygen_max_age_s = match json.get("oxygen_max_age_s") {
            None => OXYGEN_MAX_AGE_S,
            Some(v) => seconds(v).ok_or(format!("{name}.oxygen_max_age_s: seconds >= 0"))?,
        };
        let items = items
            .iter()
            .enumerate()
            .map(|(i, item)| parse_item(&format!("{name}.items[{i}]"), item))
            .collect::<Result<_, _>>()?;
        let flagged_as = json.get("flagged_as").and_then(Value::as_str).unwrap_or("flagged").into();
        Ok(ScoreTable { items, flag_at, flagged_as, oxygen_max_age_s })
    }

    /// The first item of each distinct key whose `when` holds for `view` (the alternative
    /// `evaluate` would score), with the key's position among the distinct keys.
    fn applicable(&self, view: &PatientView) -> Vec<&Item> {
        let mut chosen: Vec<&Item> = Vec::new();
        for item in &self.items {
            if chosen.iter().any(|c| c.key == item.key) {
                continue;
            }
            let applies = item.when.iter().all(|c| match c {
                Condition::Setting { name, equals } => view.settings.get(name).is_some_and(|v| v == equals),
                Condition::OnOxygen(wanted) => oxygen_status(view, self.oxygen_max_age_s).unwrap_or(false) == *wanted,
            });
            if applies {
                chosen.push(item);
            }
        }
        chosen
    }

    /// The current run of consecutive readings of item `key` (readings of any of its numeric
    /// inputs, those taken at the same instant being one reading) that score > 0, over the last
    /// `lookback_s` seconds; `None` when the table has no such item. See [`Run`].
    pub fn abnormal_run(&self, view: &PatientView, key: &str, lookback_s: f64) -> Option<Run> {
        self.abnormal_run_in(Pass::new(view, &Derived::default()), key, lookback_s)
    }

    /// [`ScoreTable::abnormal_run`] within a pass.
    pub fn abnormal_run_in(&self, pass: Pass<'_>, key: &str, lookback_s: f64) -> Option<Run> {
        let view = pass.view;
        let item = self.applicable(view).into_iter().find(|i| i.key == key)?;
        // Each series once, abnormal when any input reading it scores (SBP and SBP fall share
        // the SBP series); series are in time order, so the sort merges a few sorted runs.
        let inputs: Vec<(&str, Option<f64>, &Input)> =
            item.inputs.iter().filter_map(|i| i.series(pass).map(|(s, b)| (s, b, i))).collect();
        // (time, abnormal)
        let mut readings: Vec<(TimeKey, bool)> = Vec::new();
        let mut merged = 0;
        for (i, (series, ..)) in inputs.iter().enumerate() {
            if inputs[..i].iter().any(|(s, ..)| s == series) {
                continue;
            }
            merged += 1;
            readings.reserve(view.series.get(*series).map_or(0, |s| s.len()));
            let on_series: Vec<&(&str, Option<f64>, &Input)> = inputs.iter().filter(|(s, ..)| s == series).collect();
            for s in view.window(series, lookback_s) {
                let abnormal = on_series
                    .iter()
                    .any(|(_, baseline, input)| input.points_of(baseline.map_or(s.value, |b| b - s.value)) > 0);
                readings.push((reading_key(&s), abnormal));
            }
        }
        // One series is in time order already.
        if merged > 1 {
            readings.sort_by_key(|r| r.0);
        }
        // One reading per instant: abnormal when any input taken then is.
        readings.dedup_by(|later, earlier| {
            let same = later.0 == earlier.0;
            if same {
                earlier.1 |= later.1;
            }
            same
        });
        let at = |r: &(TimeKey, bool)| key_time(r.0);
        let initial = readings.windows(2).find(|w| w[0].1 && w[1].1).map(|w| at(&w[1]));
        let run = readings.iter().rev().take_while(|r| r.1).count();
        let first = run.checked_sub(1).and_then(|_| readings.get(readings.len() - run)).map(at);
        let last = (run > 0).then(|| readings.last().map(at)).flatten();
        Some(Run { readings: run, first, last, initial })
    }

    /// Times at which an item of this table was met (scored > 0) by a numeric reading of the
    /// last `lookback_s` seconds, as `(time, part, key position)`.
    fn met_events(&self, pass: Pass<'_>, lookback_s: f64, part: usize, out: &mut Vec<Met>) -> usize {
        let items = self.applicable(pass.view);
        for (k, item) in items.iter().enumerate() {
            for input in &item.inputs {
                let Some((series, baseline)) = input.series(pass) else { continue };
                for s in pass.view.window(series, lookback_s) {
                    if input.points_of(baseline.map_or(s.value, |b| b - s.value)) > 0 {
                        out.push(Met { at: reading_key(&s), part: part as u32, item: k as u32 });
                    }
                }
            }
        }
        items.len()
    }

    /// Canonical names the table reads (for trigger lint and documentation).
    pub fn input_names(&self) -> impl Iterator<Item = &str> {
        self.items.iter().flat_map(|i| i.inputs.iter().map(|x| x.name.as_str()))
    }
}

/// A run of consecutive abnormal readings (see [`ScoreTable::abnormal_run`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Run {
    /// Readings in the current run (0: the newest reading is normal, or there is none).
    pub readings: usize,
    /// The oldest reading of the current run.
    pub first: Option<OffsetDateTime>,
    /// The newest reading of the current run.
    pub last: Option<OffsetDateTime>,
    /// The second of the first two consecutive abnormal readings in the lookback (SEP-1's
    /// "initial hypotension": two consecutive low readings).
    pub initial: Option<OffsetDateTime>,
}

/// When criteria were first met together for the current episode (CMS SEP-1's severe sepsis
/// presentation time, "time zero"): the earliest reading time T of the last `lookback_s` such
/// that, for each `(table, min)` of `parts`, at least `min` distinct items of the table were
/// met by readings within `within_s` seconds before T. An episode ends only when the criteria
/// have not been met together for `within_s` (a criterion whose reading ages out before the
/// next one arrives does not restart the clocks); a later one starts a new episode. `None`
/// when the criteria are not met together now. Coded inputs and oxygen status are not timed.
pub fn onset(
    view: &PatientView,
    parts: &[(&ScoreTable, i64)],
    within_s: f64,
    lookback_s: f64,
) -> Option<OffsetDateTime> {
    onset_in(Pass::new(view, &Derived::default()), parts, within_s, lookback_s)
}

/// [`onset`] within a pass.
pub fn onset_in(
    pass: Pass<'_>,
    parts: &[(&ScoreTable, i64)],
    within_s: f64,
    lookback_s: f64,
) -> Option<OffsetDateTime> {
    let now = time_key(pass.view.now?);
    let within = time::Duration::checked_seconds_f64(within_s.max(0.0))?.whole_nanoseconds();
    let mut events = Vec::new();
    let mut sweep = Sweep {
        counts: Vec::with_capacity(parts.len()),
        met: vec![0; parts.len()],
        mins: parts.iter().map(|p| p.1).collect(),
        tail: 0,
    };
    for (i, (table, _)) in parts.iter().enumerate() {
        let keys = table.met_events(pass, lookback_s, i, &mut events);
        sweep.counts.push(vec![0; keys]);
    }
    events.sort_by_key(|e| e.at);
    let (mut start, mut fell, mut next) = (None, None, 0usize);
    while next < events.len() {
        let at = events[next].at;
        if let Some(f) = sweep.expire(&events, next, at, within) {
            fell = fell.or(Some(f));
        }
        while next < events.len() && events[next].at == at {
            sweep.add(&events[next]);
            next += 1;
        }
        if sweep.holds() {
            // Met again after a gap of `within` or more: a new episode.
            if start.is_none() || fell.is_some_and(|f| at.nanos() - f.nanos() >= within) {
                start = Some(key_time(at));
            }
            fell = None;
        }
    }
    sweep.expire(&events, next, now, within);
    if sweep.holds() { start } else { None }
}

/// An item of a table met by a reading (see [`onset`]).
struct Met {
    /// The reading's time ([`time_key`]).
    at: TimeKey,
    /// Which of the parts the table is.
    part: u32,
    /// The item's position among the table's applicable items.
    item: u32,
}

/// Items met within the sliding window, per part (see [`onset`]).
struct Sweep {
    counts: Vec<Vec<u32>>,
    met: Vec<i64>,
    mins: Vec<i64>,
    tail: usize,
}

impl Sweep {
    fn holds(&self) -> bool {
        self.met.iter().zip(&self.mins).all(|(m, min)| m >= min)
    }

    fn add(&mut self, e: &Met) {
        let (part, item) = (e.part as usize, e.item as usize);
        if self.counts[part][item] == 0 {
            self.met[part] += 1;
        }
        self.counts[part][item] += 1;
    }

    /// Drop the events (before `upto`) older than `within` before `at`; the moment the
    /// criteria stopped holding, when a drop ended them.
    /// `within` is in nanoseconds.
    fn expire(&mut self, events: &[Met], upto: usize, at: TimeKey, within: i128) -> Option<TimeKey> {
        let cutoff = key_add(at, -within)?;
        let mut fell = None;
        while self.tail < upto && events[self.tail].at < cutoff {
            let held = self.holds();
            let e = &events[self.tail];
            let (part, item) = (e.part as usize, e.item as usize);
            self.counts[part][item] -= 1;
            if self.counts[part][item] == 0 {
                self.met[part] -= 1;
            }
            if held && !self.holds() {
                fell = fell.or(key_add(e.at, within));
            }
            self.tail += 1;
        }
        fell
    }
}

fn seconds(v: &Value) -> Option<f64> {
    v.as_f64().filter(|s| s.is_finite() && *s >= 0.0)
}

fn parse_item(at: &str, item: &Value) -> Result<Item, String> {
    let key =
        item.get("key").and_then(Value::as_str).filter(|k| !k.is_empty()).ok_or(format!("{at}: `key` is text"))?;
    let mut when = Vec::new();
    if let Some(w) = item.get("when") {
        let w = w.as_object().ok_or(format!("{at}.when: an object"))?;
        for (k, v) in w {
            match k.as_str() {
                "setting" => {
                    let settings = v.as_object().ok_or(format!("{at}.when.setting: an object of setting: text"))?;
                    for (name, value) in settings {
                        let equals = value.as_str().ok_or(format!("{at}.when.setting.{name}: text"))?;
                        when.push(Condition::Setting { name: name.clone(), equals: equals.to_string() });
                    }
                }
                "on_oxygen" => {
                    when.push(Condition::OnOxygen(v.as_bool().ok_or(format!("{at}.when.on_oxygen: true or false"))?))
                }
                other => return Err(format!("{at}.when: unknown condition `{other}` (setting, on_oxygen)")),
            }
        }
    }
    let first = match item.get("combine").map(|c| c.as_str()) {
        None | Some(Some("max")) => false,
        Some(Some("first")) => true,
        _ => return Err(format!("{at}.combine: `max` or `first`")),
    };
    let inputs = item
        .get("inputs")
        .and_then(Value::as_array)
        .filter(|i| !i.is_empty())
        .ok_or(format!("{at}: `inputs` is a non-empty list"))?;
    let inputs: Vec<Input> = inputs
        .iter()
        .enumerate()
        .map(|(i, x)| parse_input(&format!("{at}.inputs[{i}]"), x))
        .collect::<Result<_, _>>()?;
    let max_points = inputs.iter().flat_map(|i| i.bands.iter().map(|b| b.points)).max().unwrap_or(0).max(0);
    Ok(Item { key: key.into(), when, inputs, first, max_points })
}

fn parse_input(at: &str, input: &Value) -> Result<Input, String> {
    let name =
        input.get("name").and_then(Value::as_str).filter(|n| !n.is_empty()).ok_or(format!("{at}: `name` is text"))?;
    let max_age_s = input.get("max_age_s").and_then(seconds).ok_or(format!("{at}: `max_age_s` is seconds >= 0"))?;
    let coded = input.get("coded").and_then(Value::as_bool).unwrap_or(false);
    let kind = match name {
        "on_oxygen" => Kind::OnOxygen,
        "sbp_fall" => Kind::SbpFall,
        _ if coded => Kind::Coded,
        _ => Kind::Numeric,
    };
    let label = input.get("label").and_then(Value::as_str).unwrap_or(name);
    let bands = input
        .get("points")
        .and_then(Value::as_array)
        .filter(|b| !b.is_empty())
        .ok_or(format!("{at}: `points` is a non-empty list"))?;
    let bands: Vec<Band> = bands
        .iter()
        .enumerate()
        .map(|(i, b)| parse_band(&format!("{at}.points[{i}]"), b, &kind))
        .collect::<Result<_, _>>()?;
    if let Some(i) = bands.iter().position(|b| b.op == Op::Else)
        && i + 1 != bands.len()
    {
        return Err(format!("{at}.points[{i}]: `else` is the last band"));
    }
    Ok(Input { name: name.into(), label: label.into(), max_age_s, kind, bands })
}

fn parse_band(at: &str, band: &Value, kind: &Kind) -> Result<Band, String> {
    let parts = band.as_array().ok_or(format!("{at}: [op, threshold, points] or [\"else\", points]"))?;
    let op = match parts.first().and_then(Value::as_str) {
        Some("<") => Op::Lt,
        Some("<=") => Op::Le,
        Some(">") => Op::Gt,
        Some(">=") => Op::Ge,
        Some("==") => Op::Eq,
        Some("!=") => Op::Ne,
        Some("else") => Op::Else,
        _ => return Err(format!("{at}: op is one of < <= > >= == != else")),
    };
    let points_at = if op == Op::Else { 1 } else { 2 };
    if parts.len() != points_at + 1 {
        return Err(format!("{at}: [op, threshold, points] or [\"else\", points]"));
    }
    let points = parts[points_at].as_i64().ok_or(format!("{at}: points are a whole number"))?;
    let threshold = match (op, parts.get(1)) {
        (Op::Else, _) => Threshold::None,
        (_, Some(Value::Number(n))) if *kind != Kind::Coded => Threshold::Number(n.as_f64().unwrap_or(f64::NAN)),
        (Op::Eq | Op::Ne, Some(Value::String(s))) if *kind == Kind::Coded => Threshold::Text(s.clone()),
        _ if *kind == Kind::Coded => return Err(format!("{at}: a coded input compares with == or != and text")),
        _ => return Err(format!("{at}: the threshold is a number")),
    };
    let suffix = match &threshold {
        Threshold::Number(t) => {
            let mut s = format!(" ({} ", op.symbol());
            push_number(&mut s, *t);
            s.push(')');
            s
        }
        Threshold::Text(t) => format!(" ({} {t})", op.symbol()),
        Threshold::None => String::new(),
    };
    Ok(Band { op, threshold, points, suffix })
}

/// What `p.score(name)` gives a rule: the scored chart, read as properties (`s.score`,
/// `s.subscores`, `s.values`, `s.met`, `s.missing`, `s.partial`, and the table's flagged list
/// under its `flagged_as` name), extended or overridden by the rule (`s.band = "high"`), and
/// passed whole as an alert's details, which turns it into JSON directly: no script map is
/// built on the way.
#[derive(Debug, Clone, Default)]
pub struct Scored {
    /// What the table scored, shared: a rule's copies (arguments, the pass's memo) cost a
    /// reference count, not the lists.
    chart: std::sync::Arc<Chart>,
    /// Properties the rule set, in order; they win over the scored ones of the same name.
    extra: Vec<(ImmutableString, Dynamic)>,
    /// Scored properties the rule removed (`s.remove("met")`).
    removed: Vec<ImmutableString>,
}

/// Where a [`Scored`] property's value comes from (see [`Scored::source`]).
enum Source<'a> {
    /// The rule set it.
    Set(&'a Dynamic),
    /// The rule removed it.
    Removed,
    /// The chart scored it.
    Chart,
}

/// The scored chart itself.
#[derive(Debug, Default)]
struct Chart {
    score: i64,
    /// The score if every missing item scored its most: a partial score below a threshold
    /// whose ceiling is also below it is a decided "below" (the missing data cannot matter).
    ceiling: i64,
    subscores: Vec<(ImmutableString, i64)>,
    values: Vec<(ImmutableString, Dynamic)>,
    met: Vec<ImmutableString>,
    missing: Vec<ImmutableString>,
    flagged: Vec<ImmutableString>,
    flagged_as: Option<ImmutableString>,
}

fn texts(list: &[ImmutableString]) -> Array {
    list.iter().map(|t| Dynamic::from(t.clone())).collect()
}

impl Scored {
    /// A property: one the rule set, else a scored one, else `()`.
    pub fn get(&self, name: &str) -> Dynamic {
        match self.source(name) {
            Source::Set(v) => v.clone(),
            Source::Removed => Dynamic::UNIT,
            Source::Chart => match name {
                "score" => Dynamic::from_int(self.chart.score),
                "partial" => Dynamic::from_bool(!self.chart.missing.is_empty()),
                "ceiling" => Dynamic::from_int(self.chart.ceiling),
                "subscores" => Dynamic::from_map(
                    self.chart.subscores.iter().map(|(k, p)| (k.as_str().into(), Dynamic::from_int(*p))).collect(),
                ),
                "values" => {
                    Dynamic::from_map(self.chart.values.iter().map(|(k, v)| (k.as_str().into(), v.clone())).collect())
                }
                "met" => texts(&self.chart.met).into(),
                "missing" => texts(&self.chart.missing).into(),
                "flagged" => texts(&self.chart.flagged).into(),
                _ if self.chart.flagged_as.as_deref() == Some(name) => texts(&self.chart.flagged).into(),
                _ => Dynamic::UNIT,
            },
        }
    }

    /// Where property `name` comes from: the one precedence rule of [`Scored::get`] (what the
    /// rule set wins, then a removal, then the chart).
    fn source(&self, name: &str) -> Source<'_> {
        if let Some((_, v)) = self.extra.iter().rev().find(|(k, _)| k == name) {
            Source::Set(v)
        } else if self.removed.iter().any(|k| k == name) {
            Source::Removed
        } else {
            Source::Chart
        }
    }

    /// The property `name` as the details object [`Scored::serialize_with`] writes has it, or
    /// `None` when that object has no such field (`ceiling` and the plain `flagged` are read as
    /// properties but not written).
    pub fn field(&self, name: &str) -> Option<Dynamic> {
        let set = self.extra.iter().any(|(k, _)| k == name);
        let scored = matches!(name, "score" | "partial" | "subscores" | "values" | "met" | "missing")
            || self.chart.flagged_as.as_deref() == Some(name);
        (set || scored && !self.removed.iter().any(|k| k == name)).then(|| self.get(name))
    }

    /// The value an input read (`s.value("lactate")`), or `()`.
    pub fn value(&self, name: &str) -> Dynamic {
        self.chart.values.iter().find(|(k, _)| k == name).map_or(Dynamic::UNIT, |(_, v)| v.clone())
    }

    /// Take a property out (it leaves the details), returning its value.
    pub fn remove(&mut self, name: &str) -> Dynamic {
        let value = self.get(name);
        self.extra.retain(|(k, _)| k != name);
        self.removed.push(name.into());
        value
    }

    /// Set every property of `map`.
    pub fn mixin(&mut self, map: rhai::Map) {
        for (k, v) in map {
            self.set(&k, v);
        }
    }

    /// `s.settle_below(threshold)`, for a score below `threshold`: it stays `partial` only while
    /// its missing items could still reach the threshold (`ceiling >= threshold`); otherwise the
    /// missing data cannot change the answer and `partial` becomes false. A rule's
    /// `if s.partial && s.ceiling < 2 { s.partial = false; }` in one call.
    pub fn settle_below(&mut self, threshold: f64) {
        let partial = self.get("partial").as_bool().unwrap_or(false);
        if partial && (self.chart.ceiling as f64) < threshold {
            self.set("partial", Dynamic::FALSE);
        }
    }

    /// `s.add_missing(other)`: the items `other` is missing join this score's `missing` (after
    /// its own, each once), and `partial` says whether any is missing: one screen's details
    /// from two charts (SEP-1: SIRS and organ dysfunction).
    pub fn add_missing(&mut self, other: &Scored) {
        let mut missing = self.missing_items();
        let own = missing.len();
        for item in other.missing_items() {
            if !missing.contains(&item) {
                missing.push(item);
            }
        }
        let partial = !missing.is_empty();
        // Written only when it changes: what `get` then reads (and the details hold) is the same.
        if missing.len() > own {
            self.set("missing", missing.into_iter().map(Dynamic::from).collect::<Array>().into());
        }
        if self.get("partial").as_bool() != Ok(partial) {
            self.set("partial", Dynamic::from_bool(partial));
        }
    }

    /// The `missing` property's texts, as [`Scored::get`] reads it (what the rule set, else the
    /// chart's, none when removed), without building the script's array for the chart's.
    fn missing_items(&self) -> Vec<ImmutableString> {
        match self.source("missing") {
            Source::Set(list) => list
                .read_lock::<Array>()
                .map(|l| l.iter().filter_map(|m| m.read_lock::<ImmutableString>().map(|m| m.clone())).collect())
                .unwrap_or_default(),
            Source::Removed => Vec::new(),
            Source::Chart => self.chart.missing.clone(),
        }
    }

    /// Set (or override) a property.
    pub fn set(&mut self, name: &str, value: Dynamic) {
        match self.extra.iter_mut().find(|(k, _)| k == name) {
            Some((_, v)) => *v = value,
            None => self.extra.push((name.into(), value)),
        }
    }

    /// Serialise as the details object: scored properties (less those the rule removed or
    /// set), then the rule's own, each through `wrap`.
    pub fn serialize_with<'a, S: serde::Serializer, W: serde::Serialize + 'a>(
        &'a self,
        s: S,
        wrap: impl Fn(&'a Dynamic) -> W,
    ) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let shown = |name: &str| !self.extra.iter().any(|(k, _)| k == name) && !self.removed.iter().any(|k| k == name);
        let list = |l: &'a [ImmutableString]| l.iter().map(|t| t.as_str()).collect::<Vec<&str>>();
        let mut map = s.serialize_map(None)?;
        if shown("score") {
            map.serialize_entry("score", &self.chart.score)?;
        }
        if shown("partial") {
            map.serialize_entry("partial", &!self.chart.missing.is_empty())?;
        }
        if shown("subscores") {
            let subscores: Vec<(&str, i64)> = self.chart.subscores.iter().map(|(k, p)| (k.as_str(), *p)).collect();
            map.serialize_entry("subscores", &Pairs(&subscores))?;
        }
        if shown("values") {
            let values: Vec<(&str, W)> = self.chart.values.iter().map(|(k, v)| (k.as_str(), wrap(v))).collect();
            map.serialize_entry("values", &Pairs(&values))?;
        }
        if shown("met") {
            map.serialize_entry("met", &list(&self.chart.met))?;
        }
        if shown("missing") {
            map.serialize_entry("missing", &list(&self.chart.missing))?;
        }
        if let Some(name) = &self.chart.flagged_as
            && shown(name)
        {
            map.serialize_entry(name.as_str(), &list(&self.chart.flagged))?;
        }
        for (k, v) in &self.extra {
            map.serialize_entry(k.as_str(), &wrap(v))?;
        }
        map.end()
    }
}

/// Name-value pairs serialised as an object, in order.
struct Pairs<'a, V>(&'a [(&'a str, V)]);

impl<V: serde::Serialize> serde::Serialize for Pairs<'_, V> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rhai::Map;
    use std::collections::VecDeque;
    use time::OffsetDateTime;
    use vigil_actors::{CodedSample, NameMap, Sample, Series};

    fn view(values: &[(&str, f64)], coded: &[(&str, &str)], settings: &[(&str, &str)]) -> PatientView {
        let now = OffsetDateTime::now_utc();
        let mut series = NameMap::default();
        for (name, value) in values {
            series.insert(name.to_string(), Series::from_iter([Sample { at: now, value: *value }]));
        }
        let coded = coded
            .iter()
            .map(|(n, t)| (n.to_string(), VecDeque::from([CodedSample { at: now, text: t.to_string() }])))
            .collect();
        let settings = settings.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        PatientView { now: Some(now), series, coded, settings, ..PatientView::default() }
    }

    fn json_of(s: &Scored) -> serde_json::Value {
        struct Text<'a>(&'a Dynamic);
        impl serde::Serialize for Text<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0.to_string())
            }
        }
        let mut out = Vec::new();
        s.serialize_with(&mut serde_json::Serializer::new(&mut out), Text).unwrap();
        serde_json::from_slice(&out).unwrap()
    }

    fn table(json: &str) -> ScoreTable {
        ScoreTable::parse("t", &serde_json::from_str(json).unwrap()).unwrap()
    }

    fn int(s: &Scored, path: &[&str]) -> i64 {
        let mut v = s.get(path[0]);
        for p in &path[1..] {
            v = v.cast::<Map>().get(*p).cloned().unwrap();
        }
        v.as_int().unwrap()
    }

    #[test]
    fn bands_first_match_max_and_first_combines_and_missing() {
        let t = table(
            r#"{ "flag_at": 3, "items": [
                { "key": "rr", "inputs": [
                    { "name": "rr", "max_age_s": 3600, "label": "RR", "points": [[">", 20, 1], ["else", 0]] },
                    { "name": "paco2", "max_age_s": 86400, "label": "PaCO2", "points": [["<", 32, 1], ["else", 0]] } ] },
                { "key": "pulse", "combine": "first", "inputs": [
                    { "name": "hr", "max_age_s": 3600, "points": [["<=", 40, 3], ["<=", 90, 0], ["else", 3]] },
                    { "name": "pulse", "max_age_s": 3600, "points": [["else", 1]] } ] },
                { "key": "acvpu", "inputs": [ { "name": "consciousness", "coded": true, "max_age_s": 14400, "points": [["==", "A", 0], ["else", 3]] } ] },
                { "key": "temp", "inputs": [ { "name": "temp", "max_age_s": 3600, "points": [["<", 36, 1], [">", 38, 1], ["else", 0]] } ] }
            ] }"#,
        );
        let out = t.evaluate(&view(
            &[("rr", 16.0), ("paco2", 30.0), ("hr", 35.0), ("pulse", 60.0)],
            &[("consciousness", "V")],
            &[],
        ));
        assert_eq!(int(&out, &["subscores", "rr"]), 1, "PaCO2 < 32 meets even with a normal RR");
        assert_eq!(int(&out, &["subscores", "pulse"]), 3, "first fresh input (hr) is scored, pulse ignored");
        assert_eq!(int(&out, &["subscores", "acvpu"]), 3);
        assert_eq!(int(&out, &["subscores", "temp"]), 0);
        assert_eq!(int(&out, &["score"]), 7);
        let list = |k: &str| out.get(k).into_typed_array::<ImmutableString>().unwrap();
        assert_eq!(list("missing"), vec!["temp"]);
        assert_eq!(list("flagged"), vec!["pulse", "acvpu"]);
        assert_eq!(list("met"), vec!["PaCO2 30 (< 32)", "hr 35 (<= 40)", "consciousness V"]);
        assert!(out.get("partial").as_bool().unwrap());
        // Rule-set properties win, and the details JSON carries both.
        let mut out = out;
        out.set("score", Dynamic::from_int(9));
        out.set("band", Dynamic::from(ImmutableString::from("high")));
        assert_eq!(out.get("score").as_int().unwrap(), 9);
        let json = json_of(&out);
        assert_eq!(json["score"], "9");
        assert_eq!(json["band"], "high");
        assert_eq!(json["subscores"]["pulse"], 3);
        assert_eq!(json["flagged"][1], "acvpu");
        assert_eq!(out.remove("met").into_typed_array::<ImmutableString>().unwrap().len(), 3);
        assert!(out.get("met").is_unit());
        assert!(json_of(&out).get("met").is_none());
    }

    #[test]
    fn conditions_choose_among_alternatives_and_oxygen_is_a_pseudo_input() {
        let t = table(
            r#"{ "items": [
                { "key": "spo2", "when": { "setting": { "spo2_scale": "2" }, "on_oxygen": true }, "inputs": [ { "name": "spo2", "max_age_s": 3600, "points": [["<=", 92, 0], ["<=", 94, 1], ["else", 3]] } ] },
                { "key": "spo2", "when": { "setting": { "spo2_scale": "2" } }, "inputs": [ { "name": "spo2", "max_age_s": 3600, "points": [["else", 0]] } ] },
                { "key": "spo2", "inputs": [ { "name": "spo2", "max_age_s": 3600, "points": [["<=", 95, 1], ["else", 0]] } ] },
                { "key": "air_or_oxygen", "inputs": [ { "name": "on_oxygen", "max_age_s": 3600, "points": [["==", 1, 2], ["else", 0]] } ] }
            ] }"#,
        );
        let scale2_o2 = t.evaluate(&view(&[("spo2", 97.0), ("fio2", 28.0)], &[], &[("spo2_scale", "2")]));
        assert_eq!(int(&scale2_o2, &["subscores", "spo2"]), 3);
        assert_eq!(int(&scale2_o2, &["subscores", "air_or_oxygen"]), 2);
        let scale2_air = t.evaluate(&view(&[("spo2", 97.0), ("fio2", 21.0)], &[], &[("spo2_scale", "2")]));
        assert_eq!(int(&scale2_air, &["subscores", "spo2"]), 0);
        assert_eq!(int(&scale2_air, &["subscores", "air_or_oxygen"]), 0);
        let scale1 = t.evaluate(&view(&[("spo2", 95.0)], &[], &[]));
        assert_eq!(int(&scale1, &["subscores", "spo2"]), 1);
        let missing = scale1.get("missing").into_typed_array::<ImmutableString>().unwrap();
        assert_eq!(missing, vec!["air_or_oxygen"], "no FiO2 or flow recorded: oxygen status is missing, not 'air'");
    }

    #[test]
    fn malformed_tables_are_refused_with_the_place() {
        let bad = |json: &str| ScoreTable::parse("t", &serde_json::from_str(json).unwrap()).unwrap_err();
        assert!(bad(r#"{ "items": [] }"#).contains("items"));
        assert!(bad(r#"{ "items": [ { "key": "a", "inputs": [ { "name": "rr", "max_age_s": 60, "points": [["=>", 1, 1]] } ] } ] }"#).contains("t.items[0].inputs[0].points[0]"));
        assert!(bad(r#"{ "items": [ { "key": "a", "inputs": [ { "name": "rr", "max_age_s": 60, "points": [["else", 0], [">", 1, 1]] } ] } ] }"#).contains("last"));
        assert!(
            bad(r#"{ "items": [ { "key": "a", "inputs": [ { "name": "rr", "points": [["else", 0]] } ] } ] }"#)
                .contains("max_age_s")
        );
        assert!(bad(r#"{ "items": [ { "key": "a", "inputs": [ { "name": "c", "coded": true, "max_age_s": 1, "points": [["<", 1, 1]] } ] } ] }"#).contains("coded"));
        assert!(bad(r#"{ "items": [ { "key": "a", "when": { "weather": "rain" }, "inputs": [ { "name": "rr", "max_age_s": 1, "points": [["else", 0]] } ] } ] }"#).contains("unknown condition"));
    }

    /// A view at `now` with samples `(name, minutes before now, value)`.
    fn timed(samples: &[(&str, i64, f64)], settings: &[(&str, &str)]) -> PatientView {
        let now = OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000);
        let mut series: NameMap<Series> = NameMap::default();
        let mut sorted = samples.to_vec();
        sorted.sort_by_key(|s| -s.1);
        for (name, ago, value) in sorted {
            series
                .entry(name.to_string())
                .or_default()
                .push_back(Sample { at: now - time::Duration::minutes(ago), value });
        }
        let settings = settings.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        PatientView { now: Some(now), series, settings, ..PatientView::default() }
    }

    #[test]
    fn a_field_is_what_the_written_details_hold_under_that_name() {
        let t = table(
            r#"{ "flag_at": 3, "flagged_as": "red", "items": [
                { "key": "rr", "inputs": [ { "name": "rr", "max_age_s": 3600, "points": [[">", 24, 3], [">", 20, 2], ["else", 0]] } ] },
                { "key": "hr", "inputs": [ { "name": "hr", "max_age_s": 3600, "points": [[">", 130, 3], ["else", 0]] } ] }
            ] }"#,
        );
        let mut s = t.evaluate(&view(&[("rr", 25.0)], &[], &[]));
        s.set("band", Dynamic::from(ImmutableString::from("high")));
        assert!(s.remove("met").is_array());
        assert!(s.remove("missing").is_array());
        s.set("missing", Dynamic::from_int(1));
        let json = json_of(&s);
        let names =
            ["score", "partial", "ceiling", "subscores", "values", "met", "missing", "flagged", "red", "band", "other"];
        for name in names {
            assert_eq!(s.field(name).is_some(), json.get(name).is_some(), "{name}: {json}");
        }
        assert_eq!(s.field("score").and_then(|d| d.as_int().ok()), Some(3));
        assert_eq!(s.field("partial").and_then(|d| d.as_bool().ok()), Some(true), "HR is missing");
        assert_eq!(s.field("band").map(|d| d.to_string()), Some("high".into()));
        assert_eq!(s.field("missing").and_then(|d| d.as_int().ok()), Some(1), "set again after its removal");
    }

    #[test]
    fn unknown_values_are_missing_and_the_ceiling_bounds_a_partial_score() {
        let t = table(
            r#"{ "items": [
                { "key": "acvpu", "combine": "first", "inputs": [
                    { "name": "consciousness", "coded": true, "max_age_s": 14400, "points": [["==", "A", 0], ["==", "V", 3]] },
                    { "name": "gcs", "max_age_s": 14400, "points": [["<", 15, 3], ["else", 0]] } ] },
                { "key": "rr", "inputs": [ { "name": "rr", "max_age_s": 3600, "points": [[">", 20, 2], ["else", 0]] } ] }
            ] }"#,
        );
        let unknown = t.evaluate(&view(&[("rr", 16.0)], &[("consciousness", "X")], &[]));
        assert_eq!(int(&unknown, &["subscores", "acvpu"]), 0, "an unlisted text scores nothing");
        assert_eq!(
            unknown.get("missing").into_typed_array::<ImmutableString>().unwrap(),
            vec!["acvpu"],
            "and is unknown"
        );
        assert_eq!(unknown.get("ceiling").as_int().unwrap(), 3, "0 known + 3 the missing item could score");
        assert_eq!(
            unknown.get("values").cast::<Map>().get("consciousness").unwrap().to_string(),
            "X",
            "the value is shown"
        );
        assert!(json_of(&unknown).get("ceiling").is_none(), "the ceiling is not part of the details");
        let gcs = t.evaluate(&view(&[("rr", 16.0), ("gcs", 13.0)], &[("consciousness", "X")], &[]));
        assert_eq!(int(&gcs, &["subscores", "acvpu"]), 3, "an unknown text falls through to the next input");
        assert_eq!(gcs.get("ceiling").as_int().unwrap(), 3);
        let complete = t.evaluate(&view(&[("rr", 25.0)], &[("consciousness", "A")], &[]));
        assert_eq!(complete.get("ceiling").as_int().unwrap(), 2, "nothing missing: the ceiling is the score");
    }

    #[test]
    fn settle_below_clears_partial_only_when_the_missing_items_cannot_reach_the_threshold() {
        let (sirs, organ) = sep1_like();
        let texts = |s: &Scored| s.get("missing").into_typed_array::<ImmutableString>().unwrap();
        // Temperature missing, HR 80: score 0, ceiling 1.
        let mut low = sirs.evaluate(&view(&[("hr", 80.0)], &[], &[]));
        assert!(low.get("partial").as_bool().unwrap());
        low.settle_below(2.0);
        assert!(!low.get("partial").as_bool().unwrap(), "1 at most: below 2 whatever the temperature");
        // (`json_of` writes what a rule set as text.)
        assert_eq!(json_of(&low)["partial"], "false", "and the details say so");
        assert_eq!(texts(&low), vec!["temp"], "still listed as missing");
        // HR 100: score 1, ceiling 2: the missing temperature could make it 2.
        let mut open = sirs.evaluate(&view(&[("hr", 100.0)], &[], &[]));
        open.settle_below(2.0);
        assert!(open.get("partial").as_bool().unwrap(), "the missing item could reach 2: stays partial");
        // Nothing missing: never made partial.
        let mut complete = sirs.evaluate(&view(&[("hr", 80.0), ("temp", 37.0)], &[], &[]));
        complete.settle_below(2.0);
        assert!(!complete.get("partial").as_bool().unwrap());

        // add_missing: the other chart's missing items after this one's, each once; partial follows.
        let v = view(&[("hr", 80.0), ("sbp", 120.0)], &[], &[]);
        let mut d = organ.evaluate(&v);
        let s = sirs.evaluate(&v);
        assert_eq!(texts(&d), vec!["lactate"]);
        d.add_missing(&s);
        assert_eq!(texts(&d), vec!["lactate", "temp"]);
        assert!(d.get("partial").as_bool().unwrap());
        d.add_missing(&s);
        assert_eq!(texts(&d), vec!["lactate", "temp"], "an item already listed is not listed twice");
        assert_eq!(json_of(&d)["missing"], r#"["lactate", "temp"]"#, "the details hold the joined list");
        let full = view(&[("hr", 80.0), ("temp", 37.0), ("sbp", 120.0), ("lactate", 1.0)], &[], &[]);
        let mut none = organ.evaluate(&full);
        none.add_missing(&sirs.evaluate(&full));
        assert!(texts(&none).is_empty() && !none.get("partial").as_bool().unwrap(), "nothing missing: not partial");
    }

    fn sep1_like() -> (ScoreTable, ScoreTable) {
        let sirs = table(
            r#"{ "items": [
                { "key": "temp", "inputs": [ { "name": "temp", "max_age_s": 3600, "points": [[">", 38, 1], ["else", 0]] } ] },
                { "key": "hr", "inputs": [ { "name": "hr", "max_age_s": 3600, "points": [[">", 90, 1], ["else", 0]] } ] }
            ] }"#,
        );
        let organ = table(
            r#"{ "items": [
                { "key": "lactate", "inputs": [ { "name": "lactate", "max_age_s": 21600, "points": [[">", 2, 1], ["else", 0]] } ] },
                { "key": "sbp", "inputs": [
                    { "name": "sbp", "max_age_s": 3600, "points": [["<", 90, 1], ["else", 0]] },
                    { "name": "map", "max_age_s": 3600, "points": [["<", 65, 1], ["else", 0]] },
                    { "name": "sbp_fall", "max_age_s": 3600, "points": [[">", 40, 1], ["else", 0]] } ] }
            ] }"#,
        );
        (sirs, organ)
    }

    fn onset_min(v: &PatientView) -> Option<i64> {
        let (sirs, organ) = sep1_like();
        onset(v, &[(&sirs, 2), (&organ, 1)], 21_600.0, 43_200.0).map(|at| (v.now.unwrap() - at).whole_minutes())
    }

    #[test]
    fn onset_is_the_last_criterion_met_within_six_hours_and_survives_a_reading_ageing_out() {
        // SIRS at 300 min ago, lactate at 180 min ago: time zero is the lactate.
        let v = timed(
            &[("temp", 300, 38.5), ("hr", 300, 110.0), ("lactate", 180, 2.5), ("temp", 10, 38.4), ("hr", 10, 112.0)],
            &[],
        );
        assert_eq!(onset_min(&v), Some(180));
        // Criteria more than 6 h apart never meet together.
        let v = timed(&[("temp", 500, 38.5), ("hr", 500, 110.0), ("lactate", 130, 2.5)], &[]);
        assert_eq!(onset_min(&v), None);
        // The lactate of 400 min ago ages out 40 min ago; a creatinine-like new finding (low
        // SBP) 20 min later continues the episode: time zero stays 400 min ago.
        let v = timed(
            &[
                ("temp", 400, 38.5),
                ("hr", 400, 110.0),
                ("lactate", 400, 2.5),
                ("temp", 20, 38.5),
                ("hr", 20, 110.0),
                ("sbp", 20, 85.0),
            ],
            &[],
        );
        assert_eq!(onset_min(&v), Some(400));
        // Not met now: no time zero.
        let v = timed(&[("temp", 30, 38.5), ("hr", 30, 80.0), ("lactate", 30, 2.5)], &[]);
        assert_eq!(onset_min(&v), None);
    }

    #[test]
    fn runs_and_onset_order_readings_by_instant_whatever_their_offset() {
        let (sirs, organ) = sep1_like();
        let v = timed(
            &[
                ("sbp", 900, 150.0),
                ("sbp", 700, 148.0),
                ("sbp", 400, 152.0),
                ("sbp", 200, 85.0),
                ("sbp", 100, 85.0),
                ("map", 60, 60.0),
                ("hr", 50, 120.0),
                ("temp", 40, 38.6),
                ("sbp", 10, 86.0),
            ],
            &[],
        );
        // The same readings, each in another offset (as a monitor in another zone might stamp
        // them): SBP 2 h ahead of UTC, MAP 5 h behind, HR 9 h 30 ahead. An SBP at +02:00 whose
        // wall clock reads later than a UTC MAP was still taken earlier.
        let mut shifted = v.clone();
        for (name, series) in shifted.series.iter_mut() {
            let offset = match name.as_str() {
                "sbp" => time::UtcOffset::from_hms(2, 0, 0),
                "map" => time::UtcOffset::from_hms(-5, 0, 0),
                _ => time::UtcOffset::from_hms(9, 30, 0),
            }
            .unwrap();
            *series = series.iter().map(|s| Sample { at: s.at.to_offset(offset), ..s }).collect();
        }
        for view in [&v, &shifted] {
            let r = organ.abnormal_run(view, "sbp", 86_400.0).unwrap();
            let ago = |t: Option<OffsetDateTime>| t.map(|t| (view.now.unwrap() - t).whole_minutes());
            assert_eq!((r.readings, ago(r.first), ago(r.last), ago(r.initial)), (4, Some(200), Some(10), Some(100)));
            let t0 = onset(view, &[(&sirs, 2), (&organ, 1)], 21_600.0, 43_200.0);
            assert_eq!(t0.map(|t| (view.now.unwrap() - t).whole_minutes()), Some(40));
        }
    }

    #[test]
    fn abnormal_runs_are_consecutive_readings_and_sbp_fall_uses_the_baseline() {
        let (_, organ) = sep1_like();
        let run = |v: &PatientView| {
            let r = organ.abnormal_run(v, "sbp", 86_400.0).unwrap();
            let ago = |t: Option<OffsetDateTime>| t.map(|t| (v.now.unwrap() - t).whole_minutes());
            (r.readings, ago(r.first), ago(r.last), ago(r.initial))
        };
        // Low, normal, low, low (MAP only), low: the run is the last three; initial hypotension
        // is the second of the first two consecutive lows.
        let v = timed(
            &[
                ("sbp", 200, 85.0),
                ("sbp", 150, 120.0),
                ("sbp", 100, 85.0),
                ("sbp", 60, 100.0),
                ("map", 60, 60.0),
                ("sbp", 10, 86.0),
            ],
            &[],
        );
        assert_eq!(run(&v), (3, Some(100), Some(10), Some(60)));
        // Newest reading normal: no current run.
        let v = timed(&[("sbp", 60, 85.0), ("sbp", 30, 85.0), ("sbp", 5, 120.0)], &[]);
        assert_eq!(run(&v), (0, None, None, Some(30)));
        // SBP 105 is a fall of 45 from a baseline of 150 (median of 6-24 h ago).
        let v = timed(
            &[("sbp", 900, 150.0), ("sbp", 700, 148.0), ("sbp", 400, 152.0), ("sbp", 30, 105.0), ("sbp", 0, 104.0)],
            &[],
        );
        assert_eq!(sbp_baseline(&v), Some(150.0));
        assert_eq!(run(&v).0, 2);
        let scored = organ.evaluate(&v);
        assert_eq!(int(&scored, &["subscores", "sbp"]), 1);
        assert_eq!(scored.get("met").into_typed_array::<ImmutableString>().unwrap(), vec!["sbp_fall 46 (> 40)"]);
        // A recorded baseline wins; fewer than 3 old readings and no setting: no baseline.
        let v = timed(&[("sbp", 30, 105.0)], &[("sbp_baseline", "140")]);
        assert_eq!(sbp_baseline(&v), Some(140.0));
        let v = timed(&[("sbp", 400, 150.0), ("sbp", 30, 105.0)], &[("sbp_baseline", "not a number")]);
        assert_eq!(sbp_baseline(&v), None);
        assert_eq!(run(&v).0, 0, "without a baseline only SBP/MAP thresholds apply");
    }
}
