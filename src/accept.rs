//! Accepting connections when the process is short of descriptors or memory: back off
//! instead of spinning, and say so in one line per interval, not one per failure (a listener
//! at the file limit must not fill the disk with logs). Used by the MLLP and HTTP listeners.

use std::time::Duration;

use tokio::time::Instant;

/// How often accept errors are summed up in one log line, at most.
const ACCEPT_ERROR_INTERVAL: Duration = Duration::from_secs(10);
/// First and longest pause after an accept error that is not about one connection.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Whether an accept error concerns only the connection being accepted (retry at once) rather
/// than the process (file table full, no memory: back off).
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), ConnectionRefused | ConnectionAborted | ConnectionReset | Interrupted)
}

/// Accept errors of one listener, counted and logged at most once per interval.
pub struct AcceptErrors {
    listener: &'static str,
    backoff: Duration,
    unlogged: u64,
    last_log: Option<Instant>,
    last_error: String,
}

impl AcceptErrors {
    /// The errors of `listener` (`mllp`, `http`: the log line names it).
    pub fn new(listener: &'static str) -> Self {
        AcceptErrors { listener, backoff: ACCEPT_BACKOFF_MIN, unlogged: 0, last_log: None, last_error: String::new() }
    }

    /// Count an error; the pause to take before the next accept, if any.
    pub fn failed(&mut self, e: &std::io::Error) -> Option<Duration> {
        if is_connection_error(e) {
            return None;
        }
        self.unlogged += 1;
        self.last_error = e.to_string();
        self.flush(false);
        let pause = self.backoff;
        self.backoff = (self.backoff * 2).min(ACCEPT_BACKOFF_MAX);
        Some(pause)
    }

    /// An accept succeeded: the next error backs off from the start again.
    pub fn succeeded(&mut self) {
        self.backoff = ACCEPT_BACKOFF_MIN;
        self.flush(false);
    }

    /// Log the errors not yet logged, if an interval has passed since the last line (or `force`).
    pub fn flush(&mut self, force: bool) {
        if self.unlogged == 0 {
            return;
        }
        let due = self.last_log.is_none_or(|at| at.elapsed() >= ACCEPT_ERROR_INTERVAL);
        if due || force {
            tracing::warn!(
                failures = self.unlogged,
                last_error = %self.last_error,
                interval_secs = ACCEPT_ERROR_INTERVAL.as_secs(),
                "{} accept failing; backing off",
                self.listener
            );
            self.unlogged = 0;
            self.last_log = Some(Instant::now());
        }
    }
}
