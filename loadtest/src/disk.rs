//! The disk's floor under a durable ACK: how long `fdatasync` takes on the filesystem that holds
//! the server's data directory. Vigil answers `CA` only once the message is durable, so no ACK
//! can come back faster than one flush of the log; a report that states the ACK latency states
//! this floor beside it, measured in the same run, as it states the echo baseline.

use std::io::Write as _;
use std::path::Path;
use std::time::Instant;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::report::Latency;

/// Bytes appended before each flush: about what one group commit of a few messages writes.
pub const WRITE_BYTES: usize = 4096;

/// At most this many flushes per probe (a bound on what a probe writes: 64 MiB, deleted after).
pub const MAX_SYNCS: usize = 16_384;

/// One probe's result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FsyncFloor {
    /// The directory probed (a scratch file was created in it and removed).
    pub dir: String,
    /// Bytes appended before each flush.
    pub write_bytes: usize,
    /// Time of each `fdatasync` after a `write_bytes` append.
    pub fsync: Latency,
}

/// Append `WRITE_BYTES` and `fdatasync`, `syncs` times (1..=[`MAX_SYNCS`]), in a scratch file
/// created in `dir` and removed afterwards; the flushes' latency. Blocking: call it off the
/// async runtime.
pub fn probe(dir: &Path, syncs: usize) -> std::io::Result<FsyncFloor> {
    let syncs = syncs.clamp(1, MAX_SYNCS);
    let path = dir.join(format!(".vigil-loadtest-fsync-{}", std::process::id()));
    let result = flushes(&path, syncs);
    let _ = std::fs::remove_file(&path);
    let hist = result?;
    let fsync = Latency::of(&hist).ok_or_else(|| std::io::Error::other("no flush measured"))?;
    Ok(FsyncFloor { dir: dir.display().to_string(), write_bytes: WRITE_BYTES, fsync })
}

/// The flushes themselves, in µs.
fn flushes(path: &Path, syncs: usize) -> std::io::Result<Histogram<u64>> {
    let mut file = std::fs::OpenOptions::new().create_new(true).append(true).open(path)?;
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(std::io::Error::other)?;
    // Not all zeros, so no layer below can skip the write.
    let block: Vec<u8> = (0..WRITE_BYTES).map(|i| (i * 31 % 251) as u8).collect();
    for _ in 0..syncs {
        file.write_all(&block)?;
        let t = Instant::now();
        file.sync_data()?;
        hist.saturating_record((t.elapsed().as_micros() as u64).max(1));
    }
    Ok(hist)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_measures_every_flush_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let floor = probe(dir.path(), 20).unwrap();
        assert_eq!(floor.fsync.count, 20);
        assert!(floor.fsync.p50_ms > 0.0 && floor.fsync.p50_ms <= floor.fsync.max_ms);
        assert_eq!(floor.write_bytes, WRITE_BYTES);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "the scratch file is removed");
    }

    #[test]
    fn a_directory_that_cannot_be_written_is_an_error_not_a_figure() {
        let missing = std::env::temp_dir().join("vigil-loadtest-no-such-dir").join("deeper");
        assert!(probe(&missing, 5).is_err());
    }
}
