//! Hot reload from disk: a task polls the rules directory (`*.rhai` and `data/*.json`) and,
//! once a change has settled (debounce), reloads the whole set through
//! [`RhaiRules::reload`], which swaps only when everything compiles and lints. Polling content
//! hashes (a few small files) works the same on every filesystem, containers and network
//! mounts included, where inotify events can be missing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::RhaiRules;

/// How often the directory is looked at.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Polls between two content hashes when no file's size or modification time changed (a
/// filesystem with coarse timestamps can hide an edit of the same size: at most 5 s).
const REHASH_EVERY: u32 = 25;

/// The files a reload reads, sorted.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = Vec::new();
    for (sub, ext) in [(dir.to_path_buf(), "rhai"), (dir.join("data"), "json")] {
        if let Ok(entries) = std::fs::read_dir(&sub) {
            files.extend(
                entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == ext)),
            );
        }
    }
    files.sort();
    files
}

/// Each file with its size and modification time: cheap to read every poll.
type Listing = Vec<(PathBuf, u64, Option<std::time::SystemTime>)>;

fn listing(dir: &Path) -> Listing {
    files(dir)
        .into_iter()
        .map(|f| {
            let meta = std::fs::metadata(&f).ok();
            let len = meta.as_ref().map_or(0, std::fs::Metadata::len);
            (f, len, meta.and_then(|m| m.modified().ok()))
        })
        .collect()
}

/// What the watcher knows between polls: the contents are hashed again only when the
/// listing changed or every [`REHASH_EVERY`] polls, not five times a second (hashing the
/// pack's data files on every poll cost about 15 M instructions a second).
#[derive(Default)]
struct Seen {
    listing: Listing,
    fingerprint: Vec<u8>,
    polls: u32,
}

impl Seen {
    fn poll(mut self, dir: &Path) -> Self {
        let listing = listing(dir);
        self.polls += 1;
        if listing != self.listing || self.polls >= REHASH_EVERY || self.fingerprint.is_empty() {
            self.fingerprint = fingerprint_of(listing.iter().map(|(file, ..)| file));
            self.polls = 0;
        }
        self.listing = listing;
        self
    }
}

/// A fingerprint of everything a reload reads.
pub fn fingerprint(dir: &Path) -> Vec<u8> {
    fingerprint_of(files(dir).iter())
}

/// A fingerprint of `files` (sorted): their names and contents.
fn fingerprint_of<'a>(files: impl Iterator<Item = &'a PathBuf>) -> Vec<u8> {
    let mut hasher = Sha256::new();
    for file in files {
        hasher.update(file.to_string_lossy().as_bytes());
        hasher.update(std::fs::read(file).unwrap_or_default());
        hasher.update([0]);
    }
    hasher.finalize().to_vec()
}

/// Watch `rules.dir()` until `shutdown` is cancelled, as a task of `tasks`. A change is reloaded once two consecutive
/// polls agree (so an editor's half-written file is not compiled); a refused reload is logged
/// with file, line and column and the running rules stay.
pub fn spawn(rules: Arc<RhaiRules>, shutdown: CancellationToken, tasks: &TaskTracker) -> JoinHandle<()> {
    tasks.spawn(async move {
        let Some(dir) = rules.dir().map(Path::to_path_buf) else { return };
        let fp_dir = dir.clone();
        let mut seen = tokio::task::spawn_blocking(move || Seen::default().poll(&fp_dir)).await.unwrap_or_default();
        let mut loaded = seen.fingerprint.clone();
        let mut pending: Option<Vec<u8>> = None;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(POLL_INTERVAL) => {}
            }
            let fp_dir = dir.clone();
            let Ok(polled) = tokio::task::spawn_blocking(move || seen.poll(&fp_dir)).await else { return };
            seen = polled;
            let now = seen.fingerprint.clone();
            if now == loaded {
                pending = None;
                continue;
            }
            if pending.as_ref() != Some(&now) {
                pending = Some(now);
                continue;
            }
            pending = None;
            loaded = now;
            let host = Arc::clone(&rules);
            match tokio::task::spawn_blocking(move || host.reload()).await {
                Ok(Ok(versions)) => {
                    for (rule, version) in versions {
                        tracing::info!(%rule, %version, "rule loaded");
                    }
                }
                Ok(Err(errors)) => {
                    for error in errors {
                        tracing::warn!(%error, "rules reload refused; the running rules stay");
                    }
                }
                Err(error) => tracing::error!(%error, "rules reload task failed"),
            }
        }
    })
}
