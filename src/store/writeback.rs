//! The host's page-cache writeback, as it bears on the embedded store's ACK latency.
//!
//! The store's engine writes a table (a flushed memtable, up to 64 MiB, or a compaction's
//! output) through the page cache and fsyncs it once written. With Linux's default writeback
//! threshold (`vm.dirty_background_ratio` = 10 % of available memory, gigabytes on a server)
//! none of it reaches the disk before that fsync, and on ext4 (ordered data, the default) a
//! journal fsync issued meanwhile, the one every durable ACK waits on, waits for the table's
//! data too: measured at 26-42 ms once per flush, where a commit otherwise takes 0.15-0.45 ms
//! (docs/BENCHMARKS.md, "nineteenth session"). With the threshold at 16 MiB the kernel writes
//! the table out as it is made: in the run timed commit by commit, none around the flush took
//! more than 6.2 ms. (The flush still takes a core for a quarter of a second.)
//!
//! The threshold is the host's (a sysctl, not namespaced, so neither a process nor a container
//! can set it for itself): Vigil reads it at start and says when it is above a memtable's size.
//! `deploy/sysctl.d/90-vigil.conf` sets it.

use std::path::Path;

/// A memtable's size in the embedded store: a threshold at or above it lets a whole flush stay
/// in memory until its fsync.
pub use super::embedded::MEMTABLE_BYTES;

/// The value `deploy/sysctl.d/90-vigil.conf` sets (`vm.dirty_background_bytes`).
pub const ADVISED_BYTES: u64 = 16 << 20;

/// The kernel's background writeback threshold: the dirty page-cache bytes past which it starts
/// writing them out on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threshold {
    /// `vm.dirty_background_bytes`.
    Bytes(u64),
    /// `vm.dirty_background_ratio` percent of `available` bytes (about `MemAvailable`).
    Ratio { percent: u64, available: u64 },
}

impl Threshold {
    /// The threshold in bytes.
    pub fn bytes(self) -> u64 {
        match self {
            Threshold::Bytes(b) => b,
            Threshold::Ratio { percent, available } => available / 100 * percent,
        }
    }

    /// This host's, from `/proc` (`None` where it cannot be read: not Linux, or `/proc` hidden).
    pub fn of_host() -> Option<Threshold> {
        let read = |p: &str| std::fs::read_to_string(Path::new(p)).ok();
        parse(
            &read("/proc/sys/vm/dirty_background_bytes")?,
            &read("/proc/sys/vm/dirty_background_ratio")?,
            &read("/proc/meminfo")?,
        )
    }
}

impl std::fmt::Display for Threshold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Threshold::Bytes(b) => write!(f, "vm.dirty_background_bytes = {} MiB", b >> 20),
            Threshold::Ratio { percent, available } => write!(
                f,
                "vm.dirty_background_ratio = {percent} % of {} MiB available, {} MiB",
                available >> 20,
                self.bytes() >> 20
            ),
        }
    }
}

/// The threshold from the two sysctls and `/proc/meminfo`. The kernel uses the byte count
/// when it is set (non-zero), else the ratio.
fn parse(bytes: &str, ratio: &str, meminfo: &str) -> Option<Threshold> {
    let bytes: u64 = bytes.trim().parse().ok()?;
    if bytes > 0 {
        return Some(Threshold::Bytes(bytes));
    }
    let percent: u64 = ratio.trim().parse().ok()?;
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(Threshold::Ratio { percent, available: kib * 1024 })
}

/// Says once, at start, when the host's threshold lets a whole table flush wait in memory for
/// its fsync (and with it, on ext4, the ACKs committed meanwhile).
pub fn advise(threshold: Option<Threshold>) {
    match threshold {
        Some(t) if t.bytes() >= MEMTABLE_BYTES => tracing::warn!(
            host = %t,
            "the host's writeback threshold lets a table flush sit in memory until its fsync; \
             durable ACKs committed meanwhile wait for it (tens of ms, once a flush): set \
             vm.dirty_background_bytes = {ADVISED_BYTES} (deploy/sysctl.d/90-vigil.conf)"
        ),
        Some(t) => tracing::debug!(host = %t, "writeback threshold"),
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMINFO: &str = "MemTotal:       24683520 kB\nMemFree:        22546432 kB\nMemAvailable:   24170496 kB\n";

    #[test]
    fn the_byte_count_wins_when_set_else_the_ratio_of_available_memory() {
        assert_eq!(parse("16777216\n", "10\n", MEMINFO), Some(Threshold::Bytes(16 << 20)));
        let ratio = parse("0\n", "10\n", MEMINFO).unwrap();
        assert_eq!(ratio, Threshold::Ratio { percent: 10, available: 24_170_496 * 1024 });
        // 10 % of about 23 GiB: far above a memtable.
        assert_eq!(ratio.bytes(), 24_170_496 * 1024 / 100 * 10);
        assert!(ratio.bytes() >= MEMTABLE_BYTES);
        assert!(Threshold::Bytes(ADVISED_BYTES).bytes() < MEMTABLE_BYTES);
        assert_eq!(ratio.to_string(), "vm.dirty_background_ratio = 10 % of 23604 MiB available, 2360 MiB");
        assert_eq!(Threshold::Bytes(16 << 20).to_string(), "vm.dirty_background_bytes = 16 MiB");
    }

    #[test]
    fn unreadable_values_give_no_threshold() {
        assert_eq!(parse("x", "10", MEMINFO), None);
        assert_eq!(parse("0", "ten", MEMINFO), None);
        assert_eq!(parse("0", "10", "MemTotal: 1 kB\n"), None);
        assert_eq!(parse("0", "10", "MemAvailable: lots\n"), None);
    }
}
