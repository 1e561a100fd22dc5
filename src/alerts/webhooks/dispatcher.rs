//! One endpoint's delivery loop: read the alert log after the cursor a page at a time, send
//! what the endpoint wants in order, move the cursor after each change is delivered or
//! dead-lettered, and sleep on the hub (a wake-up hint only) when the log is exhausted.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, HeaderMap, RETRY_AFTER};
use serde::Serialize;
use time::OffsetDateTime;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use vigil_actors::{Alert, AlertStore, SequencedAlert};

use super::ledger::{DeadLetter, Ledger};
use super::signing::{backoff, retryable, signature};
use super::{WebhookEndpoint, WebhookMetrics};

/// Changes read from the log at once: bounds memory per endpoint.
const PAGE: usize = 64;
/// Re-read the log this often even without a wake-up (the hub is only a hint).
const POLL: Duration = Duration::from_secs(5);
/// How long an in-flight POST may finish once shutdown begins.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);
/// Pause after a store read failure.
const STORE_RETRY: Duration = Duration::from_secs(1);

/// The body: the WebSocket `alert` frame (schemas/ws/server-frame.json).
#[derive(Serialize)]
struct Frame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    seq: u64,
    notify: bool,
    alert: &'a Alert,
}

enum Outcome {
    Delivered,
    Failed {
        attempts: u32,
        error: String,
    },
    /// Shutdown: the change stays ahead of the cursor and is sent again after restart.
    Abandoned,
}

pub(super) struct Dispatcher {
    pub(super) endpoint: Arc<WebhookEndpoint>,
    pub(super) client: reqwest::Client,
    pub(super) alerts: Arc<dyn AlertStore>,
    pub(super) ledger: Ledger,
    pub(super) metrics: Arc<WebhookMetrics>,
    pub(super) shutdown: CancellationToken,
}

impl Dispatcher {
    pub(super) async fn run(self, mut cursor: u64, mut wake: broadcast::Receiver<Arc<SequencedAlert>>) {
        let name = self.endpoint.name.as_str();
        while !self.stopping() {
            let page = tokio::select! {
                page = self.alerts.alerts_after(cursor, PAGE) => page,
                () = self.stopped() => break,
            };
            let page = match page {
                Ok(page) => page,
                Err(error) => {
                    tracing::warn!(endpoint = name, %error, "webhook: reading the alert log failed; retrying");
                    self.pause(STORE_RETRY).await;
                    continue;
                }
            };
            if page.is_empty() {
                self.wait_for_more(&mut wake, cursor).await;
                continue;
            }
            for change in page {
                if !self.endpoint.wants(&change) {
                    cursor = change.seq;
                    continue;
                }
                match self.deliver(&change).await {
                    Outcome::Delivered => {
                        cursor = change.seq;
                        self.metrics.delivered.fetch_add(1, Ordering::Relaxed);
                        self.save_cursor(cursor);
                    }
                    Outcome::Failed { attempts, error } => {
                        let letter = DeadLetter {
                            endpoint: self.endpoint.name.clone(),
                            seq: change.seq,
                            alert_id: change.alert.id.0.clone(),
                            attempts,
                            last_error: error,
                            failed_at: OffsetDateTime::now_utc(),
                        };
                        if !self.dead_letter(letter).await {
                            // Not recorded: keep the cursor before it and try the change again.
                            self.pause(STORE_RETRY).await;
                            break;
                        }
                        cursor = change.seq;
                        self.metrics.dead_lettered.fetch_add(1, Ordering::Relaxed);
                    }
                    Outcome::Abandoned => break,
                }
            }
            // Covers changes skipped by the filter at the end of the page.
            self.save_cursor(cursor);
        }
        self.save_cursor(cursor);
        tracing::info!(endpoint = name, cursor, "webhook dispatcher stopped");
    }

    fn stopping(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    async fn stopped(&self) {
        self.shutdown.cancelled().await;
    }

    async fn pause(&self, delay: Duration) {
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = self.stopped() => {}
        }
    }

    /// Until the hub announces a change after `cursor`, the hub lags or closes, `POLL`
    /// passes, or shutdown.
    async fn wait_for_more(&self, wake: &mut broadcast::Receiver<Arc<SequencedAlert>>, cursor: u64) {
        let poll = tokio::time::sleep(POLL);
        tokio::pin!(poll);
        loop {
            tokio::select! {
                received = wake.recv() => match received {
                    Ok(change) if change.seq <= cursor => continue,
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => return,
                    Err(broadcast::error::RecvError::Closed) => {
                        // No more hints: fall back to polling.
                        tokio::select! {
                            () = &mut poll => {}
                            () = self.stopped() => {}
                        }
                        return;
                    }
                },
                () = &mut poll => return,
                () = self.stopped() => return,
            }
        }
    }

    fn save_cursor(&self, cursor: u64) {
        if let Err(error) = self.ledger.advance(&self.endpoint.name, cursor) {
            // At-least-once still holds: the changes are sent again after a restart.
            tracing::warn!(endpoint = %self.endpoint.name, cursor, %error, "webhook cursor not saved");
        }
    }

    async fn dead_letter(&self, letter: DeadLetter) -> bool {
        let ledger = self.ledger.clone();
        let (seq, attempts) = (letter.seq, letter.attempts);
        let alert_id = letter.alert_id.clone();
        let error = letter.last_error.clone();
        let written = tokio::task::spawn_blocking(move || ledger.dead_letter(&letter)).await;
        match written {
            Ok(Ok(())) => {
                // An operator must look at the endpoint and redeliver.
                tracing::error!(endpoint = %self.endpoint.name, seq, alert_id, attempts, error, "webhook change dead-lettered");
                true
            }
            Ok(Err(e)) => {
                tracing::error!(endpoint = %self.endpoint.name, seq, error = %e, "webhook dead letter not written");
                false
            }
            Err(e) => {
                tracing::error!(endpoint = %self.endpoint.name, seq, error = %e, "webhook dead letter task failed");
                false
            }
        }
    }

    /// Send one change, retrying retryable failures with backoff, up to `max_attempts`.
    async fn deliver(&self, change: &SequencedAlert) -> Outcome {
        let endpoint = &*self.endpoint;
        let frame = Frame { kind: "alert", seq: change.seq, notify: change.notify, alert: &change.alert };
        let body = match serde_json::to_vec(&frame) {
            Ok(body) => body,
            Err(_) => return Outcome::Failed { attempts: 0, error: "encode".into() },
        };
        let max_attempts = endpoint.max_attempts.max(1);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let timestamp = OffsetDateTime::now_utc().unix_timestamp();
            let request = self
                .client
                .post(endpoint.url.clone())
                .timeout(endpoint.timeout)
                .header(CONTENT_TYPE, "application/json")
                .header("X-Vigil-Signature", signature(endpoint.secret.expose(), timestamp, &body))
                .header("X-Vigil-Timestamp", timestamp)
                .header("X-Vigil-Seq", change.seq)
                .header("X-Vigil-Attempt", attempt)
                .body(body.clone())
                .send();
            let abandon = async {
                self.stopped().await;
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            };
            let result = tokio::select! {
                result = request => result,
                () = abandon => return Outcome::Abandoned,
            };
            let (error, retry_after) = match result {
                Ok(response) if response.status().is_success() => return Outcome::Delivered,
                Ok(response) => {
                    let status = response.status().as_u16();
                    let error = format!("http {status}");
                    if !retryable(status) {
                        return Outcome::Failed { attempts: attempt, error };
                    }
                    (error, retry_after(response.headers()))
                }
                Err(e) => (transport_error(&e).to_string(), None),
            };
            if attempt >= max_attempts {
                return Outcome::Failed { attempts: attempt, error };
            }
            if self.stopping() {
                return Outcome::Abandoned;
            }
            self.metrics.retried.fetch_add(1, Ordering::Relaxed);
            let delay = backoff(attempt, endpoint.backoff_base, endpoint.backoff_max, rand::random::<f64>())
                .max(retry_after.unwrap_or_default().min(endpoint.backoff_max));
            tracing::warn!(
                endpoint = %endpoint.name,
                seq = change.seq,
                attempt,
                error,
                delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                "webhook attempt failed; retrying"
            );
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.stopped() => return Outcome::Abandoned,
            }
        }
    }
}

/// A failure class without the URL (which may carry credentials).
fn transport_error(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else {
        "transport"
    }
}

/// `Retry-After` in seconds (the HTTP-date form is ignored; backoff applies).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let seconds: u64 = headers.get(RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(seconds))
}
