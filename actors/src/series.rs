//! The numeric samples of one canonical name in a patient's window
//! ([`crate::ports::PatientView::series`]), kept in about 8 bytes a sample instead of the 24 of
//! a [`Sample`]: a monitored patient holds a day of minute vitals (issue 14).
//!
//! # Representation
//!
//! A series has a *base*: an instant with its UTC offset. Each sample is one [`Entry`] of two
//! `u32`s in a `VecDeque`, in time order:
//!
//! - `ms`: milliseconds from the base to the sample's instant (rounded down, and held to the
//!   `u32` range for a spilled sample, so entries stay sorted by it);
//! - `code`: the value as a decimal, `mantissa / 10^scale`: the low 3 bits hold the scale
//!   (0 to 6), the upper 29 bits a signed mantissa (two's complement, ±268,435,455). Scale 7
//!   marks a *spill*: the upper bits then index `spilled`, an exact [`Sample`] kept aside.
//!
//! # Exactness
//!
//! Rules compare values with clinical thresholds (temperature 38.0, SpO2 91.5): a stored value
//! that came back one bit off (as `f32` would) could put a reading on the wrong side of one. So
//! a sample is stored compactly only when decoding the entry gives back the very same sample:
//! the value bit for bit (`mantissa as f64 / 10^scale` is one correctly rounded division, which
//! gives the same double as parsing the decimal text did), and the time as the same instant to
//! the nanosecond with the same UTC offset. [`Series::encode`] checks this by decoding. Any
//! other sample spills to exact storage: a value with no short exact decimal (a unit converted
//! from Fahrenheit, `1e-7`, `-0.0`, NaN, infinities, beyond 29 bits), a time with a sub-millisecond
//! part the base does not share, another UTC offset than the base's, or out of `u32` range.
//!
//! # Rebasing
//!
//! A sample before the base moves the base back by whole milliseconds (its offset and
//! sub-millisecond part kept, so every compact entry stays compact); one past the `u32` range
//! moves the base up to the oldest sample; one in another frame (UTC offset or sub-millisecond
//! part, e.g. after a daylight-saving change) moves the base to that frame once more than half
//! of the series is in other frames than the base's (checked at most every quarter of a series
//! of inserts). A rebase decodes and encodes every sample again; the window's bound (24 h
//! of samples, dropped before the insert) keeps a series well inside the `u32` range (49 days).
//! Dead spilled samples (their entry gone) are dropped when they are most of `spilled`.

use std::collections::VecDeque;
use std::collections::vec_deque;
use std::ops::RangeFrom;

use time::{Duration, OffsetDateTime};

use crate::ports::Sample;

/// `10^scale` for the scales a code may hold; index 7 (the spill mark) is never read.
const POW10: [f64; 8] = [1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6, 1e7];
const SCALE_BITS: u32 = 3;
const SCALE_MASK: u32 = (1 << SCALE_BITS) - 1;
/// The scale that marks a spilled sample.
const SPILL: u32 = SCALE_MASK;
/// The largest mantissa magnitude in 29 signed bits.
const MAX_MANTISSA: f64 = ((1 << 28) - 1) as f64;
/// The most samples spilled at once (indices in 29 bits); a window holds at most 2,048.
const MAX_SPILLED: usize = 1 << 28;
const NANOS_PER_MS: i128 = 1_000_000;

/// One sample: milliseconds from the base and a value code (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    ms: u32,
    code: u32,
}

impl Entry {
    /// The index in `spilled`, for a spilled sample.
    #[inline]
    fn spill(self) -> Option<usize> {
        (self.code & SCALE_MASK == SPILL).then_some((self.code >> SCALE_BITS) as usize)
    }
}

/// The decimal code of `value`, when `mantissa / 10^scale` with the fewest digits gives it back
/// bit for bit; `None` otherwise (the sample spills).
fn encode_value(value: f64) -> Option<u32> {
    for scale in 0..SPILL {
        let scaled = (value * POW10[scale as usize]).round();
        // NaN and infinities fail here too; a larger scale only grows the mantissa.
        if scaled.is_nan() || scaled.abs() > MAX_MANTISSA {
            return None;
        }
        let code = (((scaled as i32) as u32) << SCALE_BITS) | scale;
        if decode_value(code).to_bits() == value.to_bits() {
            return Some(code);
        }
    }
    None
}

/// The value of a code that is not a spill.
#[inline]
fn decode_value(code: u32) -> f64 {
    // The arithmetic shift brings the mantissa's sign back.
    let mantissa = (code as i32) >> SCALE_BITS;
    f64::from(mantissa) / POW10[(code & SCALE_MASK) as usize]
}

/// Numeric samples of one name, oldest first, about 8 bytes each (see the module documentation).
/// Equal when they hold the same samples: same instants with the same UTC offsets, same values.
#[derive(Clone, Debug)]
pub struct Series {
    /// The instant (and UTC offset) compact entries count their milliseconds from.
    base: OffsetDateTime,
    /// `base` in nanoseconds since the Unix epoch, for [`Reading::unix_nanos`].
    base_nanos: i128,
    entries: VecDeque<Entry>,
    /// Samples with no compact form, referred to by their entries' codes.
    spilled: Vec<Sample>,
    /// Samples of `spilled` that no entry refers to any more.
    dead: u32,
    /// Inserts since the base's frame was last checked (see [`Series::fit_base`]).
    unchecked: u32,
}

impl Default for Series {
    fn default() -> Self {
        Series::new()
    }
}

impl PartialEq for Series {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len()
            && self.iter().zip(other.iter()).all(|(a, b)| a == b && a.at.offset() == b.at.offset())
    }
}

impl FromIterator<Sample> for Series {
    fn from_iter<I: IntoIterator<Item = Sample>>(samples: I) -> Self {
        let mut series = Series::new();
        samples.into_iter().for_each(|s| series.push_back(s));
        series
    }
}

impl Series {
    /// An empty series.
    pub const fn new() -> Self {
        Series {
            base: OffsetDateTime::UNIX_EPOCH,
            base_nanos: 0,
            entries: VecDeque::new(),
            spilled: Vec::new(),
            dead: 0,
            unchecked: 0,
        }
    }

    /// How many samples it holds.
    #[inline]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it holds no sample.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Samples it holds room for without allocating (spilled samples aside).
    pub fn capacity(&self) -> usize {
        self.entries.capacity()
    }

    /// Bytes it has allocated: the entries' room and the spilled samples' room.
    pub fn allocated_bytes(&self) -> usize {
        self.entries.capacity() * std::mem::size_of::<Entry>() + self.spilled.capacity() * std::mem::size_of::<Sample>()
    }

    /// Samples held in exact storage (no compact form), dead ones included.
    pub fn spilled(&self) -> usize {
        self.spilled.len()
    }

    /// Room for exactly `additional` more samples.
    pub fn reserve_exact(&mut self, additional: usize) {
        self.entries.reserve_exact(additional);
    }

    /// The sample at `index` (0 is the oldest).
    pub fn get(&self, index: usize) -> Option<Sample> {
        self.entries.get(index).map(|e| self.sample(*e))
    }

    /// The oldest sample.
    pub fn front(&self) -> Option<Sample> {
        self.entries.front().map(|e| self.sample(*e))
    }

    /// The newest sample.
    pub fn back(&self) -> Option<Sample> {
        self.entries.back().map(|e| self.sample(*e))
    }

    /// The oldest sample as a reading (its time decoded only on request).
    #[inline]
    pub fn oldest(&self) -> Option<Reading<'_>> {
        self.entries.front().map(|e| Reading { value: self.value_of(*e), entry: *e, series: self })
    }

    /// The newest sample as a reading (its time decoded only on request).
    #[inline]
    pub fn newest(&self) -> Option<Reading<'_>> {
        self.entries.back().map(|e| Reading { value: self.value_of(*e), entry: *e, series: self })
    }

    /// The samples, oldest first.
    pub fn iter(&self) -> Samples<'_> {
        Samples(self.readings(0..))
    }

    /// The readings from `range.start` on, oldest first (values decoded, times on request).
    #[inline]
    pub fn readings(&self, range: RangeFrom<usize>) -> Readings<'_> {
        let start = range.start.min(self.entries.len());
        Readings { series: self, entries: self.entries.range(start..) }
    }

    /// How many samples are older than `at` (the index of the first at or after it).
    pub fn count_before(&self, at: OffsetDateTime) -> usize {
        let key = self.key_ms(at.unix_timestamp_nanos());
        self.entries.partition_point(|e| self.cmp_to(*e, key, at).is_lt())
    }

    /// How many samples are at or before `at`.
    pub fn count_at_or_before(&self, at: OffsetDateTime) -> usize {
        let nanos = at.unix_timestamp_nanos();
        // The common case, a sample newer than all: no search.
        if self.newest().is_some_and(|newest| newest.unix_nanos() <= nanos) {
            return self.entries.len();
        }
        let key = self.key_ms(nanos);
        self.entries.partition_point(|e| self.cmp_to(*e, key, at).is_le())
    }

    /// Append `sample` as the newest (the caller keeps the order).
    pub fn push_back(&mut self, sample: Sample) {
        self.insert(self.entries.len(), sample);
    }

    /// Insert `sample` at `index` (the caller keeps the order), rebasing first when its time
    /// is before the base, past the `u32` range, or in another frame than most of the series.
    pub fn insert(&mut self, index: usize, sample: Sample) {
        let nanos = sample.at.unix_timestamp_nanos();
        self.fit_base(sample.at, nanos);
        let entry = self.encode(sample, nanos);
        self.entries.insert(index, entry);
    }

    /// Replace the sample at `index` (a correction at the same time); `false` when out of range.
    pub fn replace(&mut self, index: usize, sample: Sample) -> bool {
        if index >= self.entries.len() {
            return false;
        }
        let nanos = sample.at.unix_timestamp_nanos();
        self.fit_base(sample.at, nanos);
        let entry = self.encode(sample, nanos);
        let Some(slot) = self.entries.get_mut(index) else { return false };
        let old = std::mem::replace(slot, entry);
        self.release(old);
        true
    }

    /// Remove the oldest sample; `false` when there is none.
    pub fn drop_oldest(&mut self) -> bool {
        let Some(entry) = self.entries.pop_front() else { return false };
        self.release(entry);
        true
    }

    /// Keep only the samples `keep` says so of, in order.
    pub fn retain(&mut self, mut keep: impl FnMut(&Sample) -> bool) {
        let (base, spilled) = (self.base, &self.spilled);
        let mut dead = 0;
        self.entries.retain(|e| {
            let kept = keep(&decode_with(base, spilled, *e));
            dead += usize::from(!kept && e.spill().is_some());
            kept
        });
        self.note_dead(dead);
    }

    fn sample(&self, entry: Entry) -> Sample {
        decode_with(self.base, &self.spilled, entry)
    }

    #[inline]
    fn value_of(&self, entry: Entry) -> f64 {
        match entry.spill() {
            Some(i) => self.spilled[i].value,
            None => decode_value(entry.code),
        }
    }

    #[inline]
    fn at_of(&self, entry: Entry) -> OffsetDateTime {
        match entry.spill() {
            Some(i) => self.spilled[i].at,
            None => compact_time(self.base, entry.ms),
        }
    }

    #[inline]
    fn nanos_of(&self, entry: Entry) -> i128 {
        match entry.spill() {
            Some(i) => self.spilled[i].at.unix_timestamp_nanos(),
            None => self.base_nanos + i128::from(entry.ms) * NANOS_PER_MS,
        }
    }

    /// Whole milliseconds from the base to the instant `nanos` (since the Unix epoch), rounded
    /// down and held to the `u32` range: an order-keeping key (`a <= b` gives
    /// `key(a) <= key(b)`), exact for compact entries.
    fn key_ms(&self, nanos: i128) -> u32 {
        let (ms, _) = split_ms(nanos - self.base_nanos);
        ms.clamp(0, i128::from(u32::MAX)) as u32
    }

    /// `entry`'s time against `at` (whose key is `key`): by key, and by the exact time when the
    /// keys are equal.
    fn cmp_to(&self, entry: Entry, key: u32, at: OffsetDateTime) -> std::cmp::Ordering {
        entry.ms.cmp(&key).then_with(|| self.at_of(entry).cmp(&at))
    }

    /// The milliseconds of `at` (the instant `nanos`) from the base, when it is in the base's
    /// frame (its UTC offset, a whole number of milliseconds after it, within the `u32` range).
    fn compact_ms(&self, at: OffsetDateTime, nanos: i128) -> Option<u32> {
        if at.offset() != self.base.offset() {
            return None;
        }
        let (ms, rest) = split_ms(nanos - self.base_nanos);
        if rest != 0 {
            return None;
        }
        u32::try_from(ms).ok()
    }

    /// The entry for `sample` (at the instant `nanos`): compact when decoding it gives `sample`
    /// back exactly (the same value bit for bit, the same instant with the same UTC offset,
    /// checked by decoding), else a spill.
    fn encode(&mut self, sample: Sample, nanos: i128) -> Entry {
        if let (Some(ms), Some(code)) = (self.compact_ms(sample.at, nanos), encode_value(sample.value))
            && self
                .base
                .checked_add(Duration::milliseconds(i64::from(ms)))
                .is_some_and(|at| identical(Sample { at, value: decode_value(code) }, sample))
        {
            return Entry { ms, code };
        }
        let index = self.spilled.len();
        assert!(index < MAX_SPILLED, "a series spills at most {MAX_SPILLED} samples");
        self.spilled.push(sample);
        Entry { ms: self.key_ms(nanos), code: ((index as u32) << SCALE_BITS) | SPILL }
    }

    /// An entry left the series: its spilled sample (if any) is dead.
    fn release(&mut self, entry: Entry) {
        self.note_dead(usize::from(entry.spill().is_some()));
    }

    /// `n` more spilled samples are dead: drop the dead ones when they are most of `spilled`.
    fn note_dead(&mut self, n: usize) {
        // At most `MAX_SPILLED` (2^28) spilled samples: the count fits.
        self.dead += n as u32;
        if n > 0 && self.dead as usize * 2 > self.spilled.len() {
            self.compact_spilled();
        }
    }

    fn compact_spilled(&mut self) {
        let mut live = Vec::with_capacity(self.spilled.len() - self.dead as usize);
        for entry in &mut self.entries {
            if let Some(i) = entry.spill() {
                entry.code = ((live.len() as u32) << SCALE_BITS) | SPILL;
                live.push(self.spilled[i]);
            }
        }
        self.spilled = live;
        self.dead = 0;
    }

    /// Move the base when `at` does not fit it (see the module documentation).
    fn fit_base(&mut self, at: OffsetDateTime, at_nanos: i128) {
        self.unchecked = self.unchecked.saturating_add(1);
        if self.entries.is_empty() {
            // A fresh start: the first sample is the base.
            self.spilled = Vec::new();
            self.dead = 0;
            self.unchecked = 0;
            self.set_base(at);
            return;
        }
        let nanos = at_nanos - self.base_nanos;
        if nanos < 0 {
            // Back by whole milliseconds: the offset and sub-millisecond part stay.
            let back = Duration::milliseconds(ceil_ms(-nanos));
            self.rebase(self.base.checked_sub(back).unwrap_or(at));
        } else if split_ms(nanos).0 > i128::from(u32::MAX) {
            // Up to the oldest sample (a compact one keeps the frame).
            let oldest = self.entries.front().map_or(at, |e| self.at_of(*e));
            if oldest != self.base {
                self.rebase(oldest);
            }
        } else if self.unchecked as usize >= self.entries.len() / 4 && self.compact_ms(at, at_nanos).is_none() {
            // Another frame (UTC offset or sub-millisecond part) than the base's. Checked at
            // most once every quarter of a series of inserts, so that samples in no common
            // frame (sub-millisecond times from a device) cost no rebase per insert.
            self.unchecked = 0;
            let misframed = self
                .entries
                .iter()
                .filter(|e| {
                    e.spill().is_some_and(|i| {
                        let at = self.spilled[i].at;
                        self.compact_ms(at, at.unix_timestamp_nanos()).is_none()
                    })
                })
                .count();
            if misframed * 2 > self.entries.len() {
                // Most of the series is in other frames: take this one, back to the oldest.
                let oldest = self.entries.front().map_or(at, |e| self.at_of(*e));
                let back = (at_nanos - oldest.unix_timestamp_nanos()).max(0);
                let back = Duration::milliseconds(ceil_ms(back));
                self.rebase(at.checked_sub(back).unwrap_or(at));
            }
        }
    }

    fn set_base(&mut self, base: OffsetDateTime) {
        self.base = base;
        self.base_nanos = base.unix_timestamp_nanos();
    }

    /// Encode every sample again from `base` (entries keep their room).
    fn rebase(&mut self, base: OffsetDateTime) {
        let samples: Vec<Sample> = self.iter().collect();
        self.entries.clear();
        self.spilled = Vec::new();
        self.dead = 0;
        self.unchecked = 0;
        self.set_base(base);
        for sample in samples {
            let entry = self.encode(sample, sample.at.unix_timestamp_nanos());
            self.entries.push_back(entry);
        }
    }
}

/// Seconds from `earlier` to `later` (both in nanoseconds since the Unix epoch): the number
/// `(later - earlier).as_seconds_f64()` gives for the `OffsetDateTime`s (the same whole seconds
/// and nanoseconds), without building dates or dividing 128-bit numbers in the common case.
#[inline]
pub fn seconds_between(later: i128, earlier: i128) -> f64 {
    let nanos = later - earlier;
    match i64::try_from(nanos) {
        Ok(n) => (n / 1_000_000_000) as f64 + (n % 1_000_000_000) as f64 / 1e9,
        Err(_) => Duration::nanoseconds_i128(nanos).as_seconds_f64(),
    }
}

/// Whole milliseconds in `nanos`, rounded down, and the nanoseconds left (0 to 999,999); in
/// 64 bits when the number fits (a series spans at most days), without 128-bit division.
fn split_ms(nanos: i128) -> (i128, i128) {
    match i64::try_from(nanos) {
        Ok(n) => (i128::from(n.div_euclid(1_000_000)), i128::from(n.rem_euclid(1_000_000))),
        Err(_) => (nanos.div_euclid(NANOS_PER_MS), nanos.rem_euclid(NANOS_PER_MS)),
    }
}

/// Whole milliseconds in `nanos` (not negative), rounded up.
fn ceil_ms(nanos: i128) -> i64 {
    ((nanos + NANOS_PER_MS - 1) / NANOS_PER_MS) as i64
}

/// The time of a compact entry. Cannot overflow: [`Series::encode`] checked this very sum.
fn compact_time(base: OffsetDateTime, ms: u32) -> OffsetDateTime {
    base + Duration::milliseconds(i64::from(ms))
}

/// The same sample: the same instant with the same UTC offset, the same value bit for bit.
fn identical(a: Sample, b: Sample) -> bool {
    a.at == b.at && a.at.offset() == b.at.offset() && a.value.to_bits() == b.value.to_bits()
}

fn decode_with(base: OffsetDateTime, spilled: &[Sample], entry: Entry) -> Sample {
    match entry.spill() {
        Some(i) => spilled[i],
        None => Sample { at: compact_time(base, entry.ms), value: decode_value(entry.code) },
    }
}

/// A sample as a window yields it: the value, decoded; the time as a cheap instant key
/// ([`Reading::unix_nanos`]) or, built from the base, as an [`OffsetDateTime`] ([`Reading::at`]).
#[derive(Clone, Copy, Debug)]
pub struct Reading<'a> {
    /// Value in the canonical unit, exactly as received.
    pub value: f64,
    entry: Entry,
    series: &'a Series,
}

impl Reading<'_> {
    /// When measured, with the UTC offset it came with.
    #[inline]
    pub fn at(&self) -> OffsetDateTime {
        self.series.at_of(self.entry)
    }

    /// When measured, in nanoseconds since the Unix epoch: orders, subtracts and compares like
    /// [`Reading::at`] without building a date (a base plus milliseconds).
    #[inline]
    pub fn unix_nanos(&self) -> i128 {
        self.series.nanos_of(self.entry)
    }

    /// The sample.
    #[inline]
    pub fn sample(&self) -> Sample {
        Sample { at: self.at(), value: self.value }
    }
}

/// Readings of a series, oldest first ([`Series::readings`]).
#[derive(Clone, Debug)]
pub struct Readings<'a> {
    series: &'a Series,
    entries: vec_deque::Iter<'a, Entry>,
}

impl<'a> Readings<'a> {
    #[inline]
    fn reading(&self, entry: Entry) -> Reading<'a> {
        Reading { value: self.series.value_of(entry), entry, series: self.series }
    }
}

impl<'a> Iterator for Readings<'a> {
    type Item = Reading<'a>;

    #[inline]
    fn next(&mut self) -> Option<Reading<'a>> {
        let entry = *self.entries.next()?;
        Some(self.reading(entry))
    }

    fn nth(&mut self, n: usize) -> Option<Reading<'a>> {
        let entry = *self.entries.nth(n)?;
        Some(self.reading(entry))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.entries.size_hint()
    }

    fn count(self) -> usize {
        self.entries.len()
    }

    fn last(mut self) -> Option<Reading<'a>> {
        self.next_back()
    }
}

impl DoubleEndedIterator for Readings<'_> {
    #[inline]
    fn next_back(&mut self) -> Option<Self::Item> {
        let entry = *self.entries.next_back()?;
        Some(self.reading(entry))
    }

    fn nth_back(&mut self, n: usize) -> Option<Self::Item> {
        let entry = *self.entries.nth_back(n)?;
        Some(self.reading(entry))
    }
}

impl ExactSizeIterator for Readings<'_> {}

/// Samples of a series, oldest first ([`Series::iter`]).
#[derive(Clone, Debug)]
pub struct Samples<'a>(Readings<'a>);

impl Iterator for Samples<'_> {
    type Item = Sample;

    fn next(&mut self) -> Option<Sample> {
        self.0.next().map(|r| r.sample())
    }

    fn nth(&mut self, n: usize) -> Option<Sample> {
        self.0.nth(n).map(|r| r.sample())
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.0.size_hint()
    }
}

impl DoubleEndedIterator for Samples<'_> {
    fn next_back(&mut self) -> Option<Sample> {
        self.0.next_back().map(|r| r.sample())
    }

    fn nth_back(&mut self, n: usize) -> Option<Sample> {
        self.0.nth_back(n).map(|r| r.sample())
    }
}

impl ExactSizeIterator for Samples<'_> {}

#[cfg(test)]
mod tests {
    use super::*;
    use time::UtcOffset;
    use time::macros::datetime;

    fn sample(at: OffsetDateTime, value: f64) -> Sample {
        Sample { at, value }
    }

    /// Every sample comes back identical (instant, offset, value bits), in order.
    fn assert_holds(series: &Series, samples: &[Sample]) {
        let back: Vec<Sample> = series.iter().collect();
        assert_eq!(back.len(), samples.len());
        for (got, want) in back.iter().zip(samples) {
            assert!(identical(*got, *want), "{got:?} for {want:?}");
        }
        let rev: Vec<Sample> = series.iter().rev().collect();
        assert!(rev.iter().rev().zip(samples).all(|(a, b)| identical(*a, *b)));
        for (i, want) in samples.iter().enumerate() {
            assert!(identical(series.get(i).unwrap(), *want));
            let reading = series.readings(i..).next().unwrap();
            assert_eq!(reading.unix_nanos(), want.at.unix_timestamp_nanos());
            assert!(identical(reading.sample(), *want));
        }
    }

    #[test]
    fn short_decimals_are_compact_and_exact() {
        for v in [
            0.0,
            1.0,
            -1.0,
            37.2,
            38.0,
            91.5,
            0.1,
            0.2,
            0.3,
            -3.25,
            98.6,
            7.35,
            0.001,
            1.000001,
            140.0,
            268_435_455.0,
            -268_435_455.0,
            0.000_001,
        ] {
            let code = encode_value(v).unwrap_or_else(|| panic!("{v} has a short decimal form"));
            assert_eq!(decode_value(code).to_bits(), v.to_bits(), "{v}");
        }
        // The fewest digits: 37.2 is 372 / 10.
        assert_eq!(encode_value(37.2), Some((372 << SCALE_BITS) | 1));
        assert_eq!(encode_value(-3.25).map(decode_value), Some(-3.25));
    }

    #[test]
    fn values_without_a_short_exact_decimal_spill() {
        let fahrenheit = (100.0 - 32.0) * 5.0 / 9.0;
        for v in [
            fahrenheit,
            1e-7,
            0.000_000_5,
            268_435_456.0,
            1e12,
            -1e12,
            f64::MAX,
            f64::MIN_POSITIVE,
            -0.0,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            0.1 + 0.2,
            1.0 / 3.0,
        ] {
            assert_eq!(encode_value(v), None, "{v} spills");
        }
        let t0 = datetime!(2026-01-01 00:00 UTC);
        let samples: Vec<Sample> = [37.2, fahrenheit, 1e-7, -0.0, f64::INFINITY, 1e12, 91.5]
            .iter()
            .enumerate()
            .map(|(i, v)| sample(t0 + Duration::minutes(i as i64), *v))
            .collect();
        let series: Series = samples.iter().copied().collect();
        assert_eq!(series.spilled(), 5);
        assert_holds(&series, &samples);
        let nan: Series = [sample(t0, f64::NAN)].into_iter().collect();
        assert!(nan.back().unwrap().value.is_nan());
    }

    #[test]
    fn times_keep_their_instant_and_offset_to_the_nanosecond() {
        let t0 = datetime!(2026-03-29 00:30:00.123 +01:00);
        let samples = vec![
            sample(t0, 1.0),
            sample(t0 + Duration::milliseconds(1), 2.0),
            // Sub-millisecond: spills.
            sample(t0 + Duration::nanoseconds(1_000_001), 3.0),
            // The same instant in another offset: spills, keeps its offset.
            sample((t0 + Duration::seconds(2)).to_offset(UtcOffset::from_hms(2, 0, 0).unwrap()), 4.0),
            sample(t0 + Duration::hours(24), 5.0),
        ];
        let series: Series = samples.iter().copied().collect();
        assert_eq!(series.spilled(), 2);
        assert_holds(&series, &samples);
        assert_eq!(series.get(3).unwrap().at.offset(), UtcOffset::from_hms(2, 0, 0).unwrap());
        // Equality sees offsets.
        let utc: Series = samples.iter().map(|s| sample(s.at.to_offset(UtcOffset::UTC), s.value)).collect();
        assert_ne!(utc, series);
        assert_eq!(series.clone(), series);
    }

    #[test]
    fn searches_find_the_same_boundaries_as_the_samples_times() {
        let t0 = datetime!(2026-01-01 00:00 UTC);
        let odd = Duration::nanoseconds(500_123);
        let samples = [
            sample(t0, 0.0),
            sample(t0 + Duration::seconds(1) + odd, 1.0),
            sample(t0 + Duration::seconds(2), 2.0),
            sample(t0 + Duration::seconds(2), 2.5),
            sample((t0 + Duration::seconds(3)).to_offset(UtcOffset::from_hms(-5, 0, 0).unwrap()), 3.0),
        ];
        let series: Series = samples.iter().copied().collect();
        let probes = [
            t0 - Duration::days(400),
            t0,
            t0 + Duration::nanoseconds(1),
            t0 + Duration::seconds(1),
            t0 + Duration::seconds(1) + odd,
            t0 + Duration::seconds(1) + odd + Duration::nanoseconds(1),
            t0 + Duration::seconds(2),
            t0 + Duration::seconds(3),
            t0 + Duration::days(400),
        ];
        for at in probes {
            assert_eq!(series.count_before(at), samples.iter().filter(|s| s.at < at).count(), "before {at}");
            assert_eq!(series.count_at_or_before(at), samples.iter().filter(|s| s.at <= at).count(), "at {at}");
        }
    }

    #[test]
    fn a_sample_before_the_base_rebases_and_everything_stays_exact() {
        let t0 = datetime!(2026-01-01 12:00:00.000_000_7 +05:30);
        let mut series = Series::new();
        series.push_back(sample(t0, 1.0));
        series.push_back(sample(t0 + Duration::minutes(1), 2.0));
        // Earlier, same frame: the base moves back by whole milliseconds; all compact.
        series.insert(0, sample(t0 - Duration::hours(3), 0.5));
        assert_eq!(series.spilled(), 0);
        // Earlier, another sub-millisecond part: it spills, the rest stays compact.
        let odd = t0 - Duration::hours(4) - Duration::nanoseconds(300);
        series.insert(0, sample(odd, 0.25));
        assert_eq!(series.spilled(), 1);
        assert_holds(
            &series,
            &[
                sample(odd, 0.25),
                sample(t0 - Duration::hours(3), 0.5),
                sample(t0, 1.0),
                sample(t0 + Duration::minutes(1), 2.0),
            ],
        );
    }

    #[test]
    fn a_sample_past_the_u32_range_rebases_to_the_oldest() {
        let t0 = datetime!(2026-01-01 00:00 UTC);
        let mut series = Series::new();
        series.push_back(sample(t0, 1.0));
        series.push_back(sample(t0 + Duration::days(40), 2.0));
        series.drop_oldest();
        // 60 days from the first base: past 49.7 days of milliseconds.
        series.push_back(sample(t0 + Duration::days(60), 3.0));
        assert_eq!(series.spilled(), 0, "rebased to the oldest sample");
        assert_holds(&series, &[sample(t0 + Duration::days(40), 2.0), sample(t0 + Duration::days(60), 3.0)]);
        // No rebase can hold a span past the range: the newest spills, exactly.
        series.push_back(sample(t0 + Duration::days(100), 4.0));
        assert_eq!(series.spilled(), 1);
        assert_eq!(series.count_before(t0 + Duration::days(100)), 2);
        assert_eq!(series.count_at_or_before(t0 + Duration::days(100)), 3);
        assert!(identical(series.back().unwrap(), sample(t0 + Duration::days(100), 4.0)));
        // Once the old samples leave, the series rebases again.
        series.drop_oldest();
        series.drop_oldest();
        series.push_back(sample(t0 + Duration::days(100) + Duration::minutes(1), 5.0));
        assert_eq!(series.spilled(), 0, "the spilled sample became the base");
        assert_holds(
            &series,
            &[sample(t0 + Duration::days(100), 4.0), sample(t0 + Duration::days(100) + Duration::minutes(1), 5.0)],
        );
    }

    #[test]
    fn a_new_frame_taking_over_the_series_becomes_the_base() {
        // Daylight saving: the same clock now stamps +02:00.
        let t0 = datetime!(2026-03-29 00:00 +01:00);
        let summer = UtcOffset::from_hms(2, 0, 0).unwrap();
        let mut series = Series::new();
        let mut samples = Vec::new();
        for m in 0..100 {
            let at = t0 + Duration::minutes(m);
            let at = if m < 40 { at } else { at.to_offset(summer) };
            samples.push(sample(at, m as f64));
            series.push_back(sample(at, m as f64));
        }
        assert!(series.spilled() < 50, "{} spilled: the new offset became the base", series.spilled());
        assert_holds(&series, &samples);
    }

    #[test]
    fn dead_spilled_samples_are_dropped() {
        let t0 = datetime!(2026-01-01 00:00 UTC);
        let fahrenheit = |i: i64| (96.0 + i as f64 / 10.0 - 32.0) * 5.0 / 9.0;
        let mut series = Series::new();
        for i in 0..1000 {
            series.push_back(sample(t0 + Duration::minutes(i), fahrenheit(i)));
            if series.len() > 100 {
                series.drop_oldest();
            }
            assert!(series.spilled() <= 2 * series.len() + 1, "{} spilled for {}", series.spilled(), series.len());
        }
        let want: Vec<Sample> = (900..1000).map(|i| sample(t0 + Duration::minutes(i), fahrenheit(i))).collect();
        assert_holds(&series, &want);
        // A correction and a delete release their spilled samples too.
        assert!(series.replace(0, sample(t0 + Duration::minutes(900), 37.0)));
        series.retain(|s| s.at != t0 + Duration::minutes(950));
        assert_eq!(series.len(), 99);
        assert!(identical(series.front().unwrap(), sample(t0 + Duration::minutes(900), 37.0)));
        series.retain(|_| false);
        assert!(series.is_empty());
        assert_eq!(series.allocated_bytes(), series.capacity() * 8, "nothing spilled is kept");
    }

    #[test]
    fn seconds_between_is_the_durations_own_figure() {
        let t0 = datetime!(2026-01-01 00:00 UTC);
        let offsets = [
            Duration::ZERO,
            Duration::nanoseconds(1),
            Duration::nanoseconds(-1),
            Duration::seconds(86_400) + Duration::nanoseconds(123_456_789),
            -Duration::seconds(3) - Duration::nanoseconds(999_999_999),
            Duration::days(200 * 365),
            -Duration::days(300 * 365),
        ];
        for d in offsets {
            let (later, earlier) = (t0 + d, t0);
            let want = (later - earlier).as_seconds_f64();
            let got = seconds_between(later.unix_timestamp_nanos(), earlier.unix_timestamp_nanos());
            assert_eq!(got.to_bits(), want.to_bits(), "{d}");
        }
    }

    #[test]
    fn readings_iterate_like_the_samples() {
        let t0 = datetime!(2026-01-01 00:00 UTC);
        let samples: Vec<Sample> = (0..50).map(|i| sample(t0 + Duration::seconds(i * 7), i as f64 * 0.5)).collect();
        let series: Series = samples.iter().copied().collect();
        assert_eq!(series.readings(10..).len(), 40);
        assert_eq!(series.readings(60..).count(), 0);
        assert_eq!(series.readings(10..).next_back().map(|r| r.value), Some(24.5));
        assert_eq!(series.readings(10..).last().map(|r| r.value), Some(24.5));
        let stepped: Vec<f64> = series.iter().step_by(7).map(|s| s.value).collect();
        let want: Vec<f64> = samples.iter().step_by(7).map(|s| s.value).collect();
        assert_eq!(stepped, want);
        assert_eq!(series.iter().nth_back(3).map(|s| s.value), Some(samples[46].value));
    }
}
