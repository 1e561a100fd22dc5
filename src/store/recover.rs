//! Damage to the embedded store's journal: find it, say exactly where it is, and recover what is
//! intact (`vigil store check`, `vigil store recover`).
//!
//! fjall (3.1) replays its journals (`<data_dir>/fjall/<n>.jnl`) when the store opens. A torn
//! last batch (a crash mid-write) is dropped quietly; any other damaged batch (checksum mismatch,
//! wrong item count) makes the open fail with `JournalRecovery(..)`, naming neither the file nor
//! the place, and fjall offers no mode that skips it (its `RecoveryMode` has one variant,
//! `TolerateCorruptTail`; a skipping mode is a TODO there). So Vigil reads the journal format
//! itself — a batch is `Start{count, seqno}`, `count` items, `End{xxh3 of the items, "FJL\x03"}`
//! — to name the file, the batch, its byte offset and sequence number, and to rewrite the
//! journal without the damaged batches, keeping every intact one before and after them. The
//! original file is kept under `<data_dir>/quarantine/` so nothing is destroyed.
//!
//! Segments (the sorted tables a journal is flushed into) carry their own block checksums and
//! are checked by fjall as they are read; a damaged segment shows as a read error naming it, not
//! at open.

use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::Xxh3;

const TAG_START: u8 = 1;
const TAG_ITEM: u8 = 2;
const TAG_END: u8 = 3;
const TAG_CLEAR: u8 = 4;
/// The trailer after every batch's checksum.
const TRAILER: &[u8] = b"FJL\x03";

/// Why a batch cannot be replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DamageKind {
    /// Its items do not match the checksum at its end.
    ChecksumMismatch,
    /// It ends after fewer items than its start announced.
    MissingItems,
    /// More items follow its start than it announced.
    ExtraItems,
}

impl std::fmt::Display for DamageKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DamageKind::ChecksumMismatch => "its checksum does not match its contents",
            DamageKind::MissingItems => "it ends before all the items its header announces",
            DamageKind::ExtraItems => "it holds more items than its header announces",
        })
    }
}

/// One damaged batch of a journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamagedBatch {
    /// Position of the batch in its journal (0 is the first).
    pub index: usize,
    /// Byte offset of its start in the file.
    pub offset: u64,
    /// Its length in bytes.
    pub len: u64,
    /// Its sequence number (fjall's write counter).
    pub seqno: u64,
    /// Records (key/value writes) it held.
    pub items: u32,
    /// What is wrong with it.
    pub kind: DamageKind,
}

/// What a journal file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalReport {
    /// The file.
    pub path: PathBuf,
    /// Batches that replay.
    pub intact_batches: usize,
    /// Batches that do not, in file order.
    pub damaged: Vec<DamagedBatch>,
    /// Bytes of batches up to the end of the last readable entry (the rest is preallocated
    /// space or a torn tail, which fjall drops itself).
    pub used_bytes: u64,
}

/// Every journal of the store under `data_dir`, in replay order.
pub fn journals(data_dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let dir = data_dir.join("fjall");
    let mut found: Vec<(u64, PathBuf)> = Vec::new();
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let path = entry?.path();
        let id = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".jnl"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(id) = id {
            found.push((id, path));
        }
    }
    found.sort();
    Ok(found.into_iter().map(|(_, p)| p).collect())
}

/// A batch read from a journal: where it lies, and whether it replays.
struct Batch {
    offset: usize,
    end: usize,
    seqno: u64,
    items: u32,
    damage: Option<DamageKind>,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// One entry at `at`: its tag and length, or `None` where nothing readable starts (the tail:
/// preallocated zeros or a torn write, where fjall's replay stops too).
fn entry_at(b: &[u8], at: usize) -> Option<(u8, usize)> {
    let tag = *b.get(at)?;
    let len = match tag {
        TAG_START => 1 + 4 + 8,
        TAG_ITEM => {
            let value_type = *b.get(at + 1)?;
            let compression = *b.get(at + 2)?;
            if !matches!(value_type, 0 | 1 | 2 | 4) || compression > 1 {
                return None;
            }
            let key_len = usize::from(u16_at(b, at + 11)?);
            let stored_len = usize::try_from(u32_at(b, at + 17)?).ok()?;
            1 + 1 + 1 + 8 + 2 + 4 + 4 + key_len + stored_len
        }
        TAG_END => {
            if b.get(at + 9..at + 9 + TRAILER.len())? != TRAILER {
                return None;
            }
            1 + 8 + TRAILER.len()
        }
        TAG_CLEAR => 1 + 8,
        _ => return None,
    };
    (at + len <= b.len()).then_some((tag, len))
}

/// The batches of a journal's bytes, as fjall's replay reads them.
fn batches(b: &[u8]) -> (Vec<Batch>, usize) {
    let mut out = Vec::new();
    let mut at = 0;
    // The batch being read: its start, seqno, announced and seen item counts, checksum.
    let mut open: Option<(usize, u64, u32, u32, Xxh3)> = None;
    while let Some((tag, len)) = entry_at(b, at) {
        let entry = &b[at..at + len];
        match tag {
            TAG_START => {
                if open.is_some() {
                    // A start inside a batch: the earlier batch was torn; fjall stops here.
                    break;
                }
                let count = u32_at(entry, 1).unwrap_or(0);
                let seqno = u64_at(entry, 5).unwrap_or(0);
                open = Some((at, seqno, count, 0, Xxh3::new()));
            }
            TAG_ITEM | TAG_CLEAR => {
                let Some((_, _, _, seen, hasher)) = open.as_mut() else { break };
                hasher.update(entry);
                *seen += 1;
            }
            _ => {
                let Some((start, seqno, count, seen, hasher)) = open.take() else { break };
                let expected = u64_at(entry, 1).unwrap_or(0);
                let damage = if seen < count {
                    Some(DamageKind::MissingItems)
                } else if seen > count {
                    Some(DamageKind::ExtraItems)
                } else if hasher.digest() != expected {
                    Some(DamageKind::ChecksumMismatch)
                } else {
                    None
                };
                out.push(Batch { offset: start, end: at + len, seqno, items: count.max(seen), damage });
            }
        }
        at += len;
    }
    let used = out.last().map_or(0, |b| b.end);
    (out, used)
}

/// Read one journal and say which of its batches replay.
pub fn check_journal(path: &Path) -> std::io::Result<JournalReport> {
    let bytes = std::fs::read(path)?;
    let (found, used) = batches(&bytes);
    let damaged: Vec<DamagedBatch> = found
        .iter()
        .enumerate()
        .filter_map(|(index, b)| {
            b.damage.map(|kind| DamagedBatch {
                index,
                offset: b.offset as u64,
                len: (b.end - b.offset) as u64,
                seqno: b.seqno,
                items: b.items,
                kind,
            })
        })
        .collect();
    Ok(JournalReport {
        path: path.to_path_buf(),
        intact_batches: found.len() - damaged.len(),
        damaged,
        used_bytes: used as u64,
    })
}

/// A batch's place in its journal: byte offset, length, sequence number, records, and
/// whether it replays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchInfo {
    /// Byte offset of its start.
    pub offset: u64,
    /// Its length in bytes.
    pub len: u64,
    /// Its sequence number.
    pub seqno: u64,
    /// Records it holds.
    pub items: u32,
    /// Whether it replays.
    pub intact: bool,
}

/// Every batch of one journal, in file order.
pub fn list_batches(path: &Path) -> std::io::Result<Vec<BatchInfo>> {
    let bytes = std::fs::read(path)?;
    Ok(batches(&bytes)
        .0
        .iter()
        .map(|b| BatchInfo {
            offset: b.offset as u64,
            len: (b.end - b.offset) as u64,
            seqno: b.seqno,
            items: b.items,
            intact: b.damage.is_none(),
        })
        .collect())
}

/// Every journal of the store under `data_dir`.
pub fn check(data_dir: &Path) -> std::io::Result<Vec<JournalReport>> {
    journals(data_dir)?.iter().map(|p| check_journal(p)).collect()
}

/// One line per damaged batch: file, batch, offset, sequence number, what is wrong.
pub fn describe(reports: &[JournalReport]) -> Vec<String> {
    let mut lines = Vec::new();
    for report in reports {
        for d in &report.damaged {
            lines.push(format!(
                "journal {}: batch {} at byte {} ({} bytes, seqno {}, {} records) is damaged: {}; {} intact batches in this file",
                report.path.display(),
                d.index,
                d.offset,
                d.len,
                d.seqno,
                d.items,
                d.kind,
                report.intact_batches
            ));
        }
    }
    lines
}

/// What [`recover`] did to one journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// The journal rewritten.
    pub path: PathBuf,
    /// Its original, kept.
    pub quarantined: PathBuf,
    /// Batches kept.
    pub kept_batches: usize,
    /// Batches dropped, as found.
    pub dropped: Vec<DamagedBatch>,
}

/// Rewrite every damaged journal under `data_dir` without its damaged batches, keeping each
/// intact batch before and after them in order; the original goes to
/// `<data_dir>/quarantine/<unix time>/`. The store must not be open. Journals without damage
/// are left untouched; with none, nothing is done.
pub fn recover(data_dir: &Path) -> std::io::Result<Vec<Recovered>> {
    let mut done = Vec::new();
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    for path in journals(data_dir)? {
        let bytes = std::fs::read(&path)?;
        let (found, _) = batches(&bytes);
        if found.iter().all(|b| b.damage.is_none()) {
            continue;
        }
        let quarantine = data_dir.join("quarantine").join(stamp.to_string());
        std::fs::create_dir_all(&quarantine)?;
        let name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
        let quarantined = quarantine.join(&name);
        std::fs::copy(&path, &quarantined)?;
        std::fs::File::open(&quarantined)?.sync_all()?;

        let mut kept = Vec::with_capacity(bytes.len());
        let mut dropped = Vec::new();
        for (index, b) in found.iter().enumerate() {
            match b.damage {
                None => kept.extend_from_slice(&bytes[b.offset..b.end]),
                Some(kind) => dropped.push(DamagedBatch {
                    index,
                    offset: b.offset as u64,
                    len: (b.end - b.offset) as u64,
                    seqno: b.seqno,
                    items: b.items,
                    kind,
                }),
            }
        }
        // Written beside, synced, then renamed over: a crash leaves the old or the new file.
        let mut tmp_name = name.clone();
        tmp_name.push(".recovering");
        let tmp = path.with_file_name(tmp_name);
        {
            use std::io::Write;
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(&kept)?;
            file.sync_all()?;
        }
        std::fs::rename(&tmp, &path)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        done.push(Recovered { path, quarantined, kept_batches: found.len() - dropped.len(), dropped });
    }
    Ok(done)
}

/// The error to show when the embedded store under `data_dir` does not open: with journal
/// damage, exactly what is damaged and the command that recovers the rest.
pub fn explain_open_failure(data_dir: &Path, error: impl std::fmt::Display) -> anyhow::Error {
    let damage = check(data_dir).map(|reports| describe(&reports)).unwrap_or_default();
    if damage.is_empty() {
        return anyhow::anyhow!("opening the embedded store: {error}");
    }
    anyhow::anyhow!(
        "opening the embedded store: {error}\n{}\nThe store was not changed. To keep every intact batch and drop only the damaged ones (the originals are kept under {}), stop Vigil and run:\n    vigil store recover --data-dir {}\nSee docs/RELIABILITY.md, \"Journal damage\".",
        damage.join("\n"),
        data_dir.join("quarantine").display(),
        data_dir.display()
    )
}

/// `vigil store ...`.
pub mod cli {
    use clap::Subcommand;

    use crate::config::{Config, ServeArgs};

    /// Check, recover or compact the embedded store's files.
    #[derive(Debug, Subcommand)]
    pub enum StoreCommand {
        /// Read every journal and report damaged batches (exit 1 if any). Read-only.
        Check {
            #[command(flatten)]
            serve: ServeArgs,
        },
        /// Rewrite damaged journals without their damaged batches, keeping every intact one;
        /// originals go to `<data_dir>/quarantine/`. Run with Vigil stopped.
        Recover {
            #[command(flatten)]
            serve: ServeArgs,
        },
        /// Flush every keyspace and merge its tables (major compaction), then print the
        /// store's size before and after. Run with Vigil stopped.
        Compact {
            #[command(flatten)]
            serve: ServeArgs,
        },
    }

    /// Run a store command; the exit code.
    pub fn run(command: StoreCommand) -> anyhow::Result<i32> {
        match command {
            StoreCommand::Check { serve } => {
                let config = Config::load(&serve)?;
                let reports = super::check(&config.data_dir)?;
                let damage = super::describe(&reports);
                let batches: usize = reports.iter().map(|r| r.intact_batches).sum();
                for line in &damage {
                    println!("{line}");
                }
                println!("{} journals, {batches} intact batches, {} damaged", reports.len(), damage.len());
                Ok(if damage.is_empty() { 0 } else { 1 })
            }
            StoreCommand::Recover { serve } => {
                let config = Config::load(&serve)?;
                let done = super::recover(&config.data_dir)?;
                if done.is_empty() {
                    println!("no damaged journal: nothing to recover");
                }
                for r in &done {
                    for d in &r.dropped {
                        println!(
                            "journal {}: dropped batch {} at byte {} (seqno {}, {} records): {}",
                            r.path.display(),
                            d.index,
                            d.offset,
                            d.seqno,
                            d.items,
                            d.kind
                        );
                    }
                    println!(
                        "journal {}: {} intact batches kept; original kept as {}",
                        r.path.display(),
                        r.kept_batches,
                        r.quarantined.display()
                    );
                }
                Ok(0)
            }
            StoreCommand::Compact { serve } => {
                let config = Config::load(&serve)?;
                let done = crate::store::embedded::compact(&config.data_dir)?;
                for (name, rows, bytes) in &done.keyspaces {
                    println!("keyspace {name}: {rows} rows, {bytes} bytes");
                }
                println!(
                    "{} keyspaces flushed and compacted: {} bytes before, {} bytes after (tables {}, journal {})",
                    done.keyspaces.len(),
                    done.before,
                    done.after,
                    done.keyspaces.iter().map(|k| k.2).sum::<u64>(),
                    done.journal
                );
                Ok(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use fjall::{Database, KeyspaceCreateOptions, PersistMode};

    use super::*;

    fn open(dir: &Path) -> fjall::Result<Database> {
        Database::builder(dir.join("fjall")).manual_journal_persist(true).open()
    }

    /// A real fjall journal: 20 batches of 3 records each, one batch per commit as the
    /// embedded store writes them.
    fn write_batches(dir: &Path) {
        let db = open(dir).unwrap();
        let ks = db.keyspace("events", KeyspaceCreateOptions::default).unwrap();
        for b in 0..20u32 {
            let mut batch = db.batch();
            for i in 0..3u32 {
                batch.insert(&ks, format!("k-{b:02}-{i}"), format!("value of batch {b} record {i}").repeat(4));
            }
            batch.commit().unwrap();
            db.persist(PersistMode::SyncAll).unwrap();
        }
    }

    fn keys(dir: &Path) -> Vec<String> {
        let db = open(dir).unwrap();
        let ks = db.keyspace("events", KeyspaceCreateOptions::default).unwrap();
        ks.iter().map(|kv| String::from_utf8(kv.key().unwrap().to_vec()).unwrap()).collect()
    }

    #[test]
    fn a_flipped_byte_in_a_journal_batch_is_named_and_recovery_keeps_every_other_batch() {
        let dir = tempfile::tempdir().unwrap();
        write_batches(dir.path());
        let journal = journals(dir.path()).unwrap().pop().expect("a journal");
        let found = list_batches(&journal).unwrap();
        assert!(found.len() >= 20, "the batches are still in the journal: {}", found.len());
        assert!(found.iter().all(|b| b.intact));
        assert!(check(dir.path()).unwrap().iter().all(|r| r.damaged.is_empty()));

        // One byte of a record's value in batch 7, as a bad sector or a stray write would.
        let victim = found[7];
        let at = usize::try_from(victim.offset + victim.len).unwrap() - 14;
        let mut bytes = std::fs::read(&journal).unwrap();
        bytes[at] ^= 0x5a;
        std::fs::write(&journal, &bytes).unwrap();

        // fjall refuses to open, without saying where.
        let refused = open(dir.path()).err().expect("fjall refuses a journal whose checksum fails");
        assert!(matches!(refused, fjall::Error::JournalRecovery(_)), "{refused:?}");
        // Vigil says exactly where.
        let reports = check(dir.path()).unwrap();
        let lines = describe(&reports);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains(&format!("batch 7 at byte {}", victim.offset)), "{}", lines[0]);
        assert!(lines[0].contains(&format!("seqno {}", victim.seqno)), "{}", lines[0]);
        assert!(lines[0].contains("checksum"), "{}", lines[0]);
        let explained = explain_open_failure(dir.path(), refused).to_string();
        assert!(explained.contains("vigil store recover --data-dir"), "{explained}");
        assert!(explained.contains(journal.to_str().unwrap()), "{explained}");

        let done = recover(dir.path()).unwrap();
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].dropped.len(), 1);
        assert_eq!(done[0].dropped[0].offset, victim.offset);
        assert_eq!(done[0].kept_batches, found.len() - 1);
        assert_eq!(std::fs::read(&done[0].quarantined).unwrap(), bytes, "the original is kept as it was");

        // The store opens, with every record but the damaged batch's: before and after it.
        let left = keys(dir.path());
        let expected: Vec<String> =
            (0..20u32).filter(|b| *b != 7).flat_map(|b| (0..3u32).map(move |i| format!("k-{b:02}-{i}"))).collect();
        assert_eq!(left, expected);
        // And keeps working: a write after recovery replays on the next open.
        {
            let db = open(dir.path()).unwrap();
            let ks = db.keyspace("events", KeyspaceCreateOptions::default).unwrap();
            ks.insert("k-99-0", "after recovery").unwrap();
            db.persist(PersistMode::SyncAll).unwrap();
        }
        assert_eq!(keys(dir.path()).last().map(String::as_str), Some("k-99-0"));
        assert!(recover(dir.path()).unwrap().is_empty(), "nothing left to recover");
    }

    #[test]
    fn garbage_never_panics_the_journal_reader() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for len in 0..2000usize {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    // Mostly valid tags, so the reader goes deep.
                    if seed.is_multiple_of(3) { (seed % 5) as u8 } else { (seed >> 8) as u8 }
                })
                .collect();
            let _ = batches(&bytes);
        }
    }
}
