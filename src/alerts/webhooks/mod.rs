//! Outbound alert webhooks: after the alert log, beside the WebSocket hub. One dispatcher per
//! configured endpoint tails the durable alert log by sequence number from its own durable
//! cursor (the hub's broadcast only wakes it), filters by unit, severity, notify and status,
//! and POSTs each matching change as signed JSON, retrying with backoff; a change that
//! exhausts its attempts becomes a dead letter and the dispatcher moves on. Delivery is
//! at-least-once and in order per endpoint. Checklist for a new filter: a field on
//! [`WebhookEndpoint`], a key in [`WebhookFileConfig`], a line in [`WebhookEndpoint::wants`],
//! docs/webhooks.md.

mod dispatcher;
pub mod ledger;
pub mod signing;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use vigil_actors::{AlertStatus, AlertStore, SequencedAlert, Severity};

pub use ledger::{DeadLetter, Ledger};

use super::AlertHub;

/// Failures at the webhook module's boundary.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The embedded database failed.
    #[error("webhook ledger: {0}")]
    Store(#[from] fjall::Error),
    /// A stored record does not decode.
    #[error("corrupt {0}")]
    Corrupt(&'static str),
    /// The HTTP client could not be built.
    #[error("webhook http client: {0}")]
    Client(String),
}

/// The HMAC key of an endpoint. `Debug` never prints it.
#[derive(Clone)]
pub struct WebhookSecret(Vec<u8>);

impl WebhookSecret {
    /// Shortest accepted secret, in bytes.
    pub const MIN_LEN: usize = 16;

    /// A secret of at least [`Self::MIN_LEN`] bytes.
    pub fn new(bytes: Vec<u8>) -> Option<Self> {
        (bytes.len() >= Self::MIN_LEN).then_some(WebhookSecret(bytes))
    }

    fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<secret>")
    }
}

/// One resolved `[[webhooks]]` entry.
#[derive(Clone)]
pub struct WebhookEndpoint {
    /// Stable name: keys the cursor and dead letters, appears in logs and metrics.
    pub name: String,
    /// Where to POST (`http` or `https`).
    pub url: reqwest::Url,
    /// HMAC key for `X-Vigil-Signature`.
    pub secret: WebhookSecret,
    /// Units whose alerts are sent (also alerts escalated to them); `*` means every unit.
    pub units: Vec<String>,
    /// Changes of alerts below this severity are not sent.
    pub min_severity: Severity,
    /// Only changes that notify (new alert, severity rise, escalation).
    pub notify_only: bool,
    /// Only changes leaving the alert in one of these statuses; empty means all.
    pub statuses: Vec<AlertStatus>,
    /// Per-attempt request timeout.
    pub timeout: Duration,
    /// Attempts per change before it becomes a dead letter (at least 1).
    pub max_attempts: u32,
    /// First retry delay; doubles per failure, with jitter.
    pub backoff_base: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
}

impl fmt::Debug for WebhookEndpoint {
    /// The name only: URLs may carry credentials, secrets never print.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookEndpoint")
            .field("name", &self.name)
            .field("units", &self.units)
            .field("min_severity", &self.min_severity)
            .field("max_attempts", &self.max_attempts)
            .finish_non_exhaustive()
    }
}

impl WebhookEndpoint {
    /// An endpoint with the default policy: every unit and severity, 5 s timeout, 6 attempts
    /// with 1 s base backoff capped at 30 s (about a minute in all).
    pub fn new(name: &str, url: &str, secret: WebhookSecret) -> anyhow::Result<Self> {
        let url = reqwest::Url::parse(url).context("not a URL")?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            bail!("must be an http:// or https:// URL with a host");
        }
        Ok(WebhookEndpoint {
            name: name.to_string(),
            url,
            secret,
            units: vec!["*".into()],
            min_severity: Severity::Info,
            notify_only: false,
            statuses: Vec::new(),
            timeout: Duration::from_secs(5),
            max_attempts: 6,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
        })
    }

    /// Whether this endpoint takes `change`.
    pub fn wants(&self, change: &SequencedAlert) -> bool {
        let alert = &change.alert;
        alert.severity >= self.min_severity
            && (!self.notify_only || change.notify)
            && (self.statuses.is_empty() || self.statuses.contains(&alert.status))
            && alert.visible_to(|unit| self.units.iter().any(|u| u == "*" || u == unit), "")
    }
}

/// `[[webhooks]]` in the configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookFileConfig {
    /// Stable name (default: scheme, host, port and path of `url`). Renaming restarts the
    /// endpoint from the current end of the alert log.
    pub name: Option<String>,
    /// `http://` or `https://` URL (required).
    pub url: Option<String>,
    /// File holding the HMAC secret (trimmed; at least 16 bytes).
    pub secret_file: Option<PathBuf>,
    /// Environment variable holding the HMAC secret.
    pub secret_env: Option<String>,
    /// Units to send (required); `["*"]` for all.
    pub units: Option<Vec<String>>,
    /// `info` (default), `low`, `medium`, `high`, `critical`.
    pub min_severity: Option<String>,
    /// Only changes that notify (default false).
    pub notify_only: Option<bool>,
    /// Only these statuses: `active`, `acknowledged`, `resolved` (default all).
    pub statuses: Option<Vec<String>>,
    /// Per-attempt timeout (default 5000).
    pub timeout_ms: Option<u64>,
    /// Attempts before a change is dead-lettered (default 6).
    pub max_attempts: Option<u32>,
    /// First retry delay (default 1000).
    pub backoff_base_ms: Option<u64>,
    /// Longest retry delay (default 30000).
    pub backoff_max_ms: Option<u64>,
}

/// Resolve and validate the `[[webhooks]]` entries; errors name the key (`webhooks[1].url`).
pub fn endpoints_from_file(entries: Vec<WebhookFileConfig>) -> anyhow::Result<Vec<WebhookEndpoint>> {
    let mut out: Vec<WebhookEndpoint> = Vec::with_capacity(entries.len());
    for (i, entry) in entries.into_iter().enumerate() {
        let key = |field: &str| format!("webhooks[{i}].{field}");
        let Some(url) = entry.url else { bail!("{} is required", key("url")) };
        let secret_bytes = match (&entry.secret_file, &entry.secret_env) {
            (Some(_), Some(_)) => bail!("{} and {}: set only one", key("secret_file"), key("secret_env")),
            (None, None) => bail!("{}: one of secret_file or secret_env is required", key("secret_file")),
            (Some(path), None) => std::fs::read_to_string(path)
                .with_context(|| format!("{}: reading {}", key("secret_file"), path.display()))?,
            (None, Some(var)) => std::env::var(var)
                .map_err(|_| anyhow::anyhow!("{}: environment variable {var} is not set", key("secret_env")))?,
        };
        let secret_key = if entry.secret_file.is_some() { key("secret_file") } else { key("secret_env") };
        let Some(secret) = WebhookSecret::new(secret_bytes.trim().as_bytes().to_vec()) else {
            bail!("{secret_key}: the secret must be at least {} bytes", WebhookSecret::MIN_LEN);
        };
        let mut endpoint = WebhookEndpoint::new("", &url, secret).with_context(|| key("url"))?;
        endpoint.name = match entry.name {
            Some(name) if name.trim().is_empty() => bail!("{} must not be empty", key("name")),
            Some(name) => name,
            None => {
                let u = &endpoint.url;
                format!(
                    "{}://{}:{}{}",
                    u.scheme(),
                    u.host_str().unwrap_or_default(),
                    u.port_or_known_default().unwrap_or(0),
                    u.path()
                )
            }
        };
        if out.iter().any(|e| e.name == endpoint.name) {
            bail!(
                "{}: another webhook is already named {:?} (names key the delivery cursor)",
                key("name"),
                endpoint.name
            );
        }
        endpoint.units = match entry.units {
            Some(units) if !units.is_empty() && units.iter().all(|u| !u.trim().is_empty()) => units,
            _ => bail!("{} is required: a list of units, or [\"*\"] for all", key("units")),
        };
        if let Some(name) = entry.min_severity {
            endpoint.min_severity = Severity::parse(&name).with_context(|| {
                format!("{}: {name:?} is not one of info, low, medium, high, critical", key("min_severity"))
            })?;
        }
        endpoint.notify_only = entry.notify_only.unwrap_or(false);
        for status in entry.statuses.unwrap_or_default() {
            let parsed = match status.as_str() {
                "active" => AlertStatus::Active,
                "acknowledged" => AlertStatus::Acknowledged,
                "resolved" => AlertStatus::Resolved,
                _ => bail!("{}: {status:?} is not one of active, acknowledged, resolved", key("statuses")),
            };
            endpoint.statuses.push(parsed);
        }
        let millis = |field: &str, value: Option<u64>, default: Duration| -> anyhow::Result<Duration> {
            match value {
                Some(0) => bail!("{} must be at least 1", key(field)),
                Some(ms) => Ok(Duration::from_millis(ms)),
                None => Ok(default),
            }
        };
        endpoint.timeout = millis("timeout_ms", entry.timeout_ms, endpoint.timeout)?;
        endpoint.backoff_base = millis("backoff_base_ms", entry.backoff_base_ms, endpoint.backoff_base)?;
        endpoint.backoff_max = millis("backoff_max_ms", entry.backoff_max_ms, endpoint.backoff_max)?;
        if endpoint.backoff_max < endpoint.backoff_base {
            bail!("{} must be at least backoff_base_ms", key("backoff_max_ms"));
        }
        endpoint.max_attempts = match entry.max_attempts {
            Some(0) => bail!("{} must be at least 1", key("max_attempts")),
            Some(n) => n,
            None => endpoint.max_attempts,
        };
        out.push(endpoint);
    }
    Ok(out)
}

/// Delivery counters; names in `http::metrics`.
#[derive(Debug, Default)]
pub struct WebhookMetrics {
    /// Changes an endpoint answered with 2xx.
    pub delivered: AtomicU64,
    /// Attempts that failed and were retried.
    pub retried: AtomicU64,
    /// Changes given up on.
    pub dead_lettered: AtomicU64,
}

/// The webhook side of a running server: the ledger and counters the API and `/metrics` read.
#[derive(Clone)]
pub struct Webhooks {
    /// Cursors and dead letters.
    pub ledger: Ledger,
    /// Counters.
    pub metrics: Arc<WebhookMetrics>,
}

impl Webhooks {
    /// Open the ledger in the store's database.
    pub fn open(db: fjall::Database) -> Result<Self, WebhookError> {
        Ok(Webhooks { ledger: Ledger::open(db)?, metrics: Arc::default() })
    }

    /// Start one dispatcher per endpoint. An endpoint without a cursor starts at the current
    /// end of the alert log (it is not sent the history); the cursor is written before this
    /// returns, so a change committed afterwards is never skipped. Each dispatcher is a task of
    /// `tasks` and stops once `shutdown` is cancelled.
    pub fn start(
        &self,
        endpoints: &[WebhookEndpoint],
        alerts: Arc<dyn AlertStore>,
        hub: &AlertHub,
        shutdown: &CancellationToken,
        tasks: &TaskTracker,
    ) -> Result<Vec<JoinHandle<()>>, WebhookError> {
        if endpoints.is_empty() {
            return Ok(Vec::new());
        }
        install_tls_provider();
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("vigil-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| WebhookError::Client(e.without_url().to_string()))?;
        let mut handles = Vec::with_capacity(endpoints.len());
        for endpoint in endpoints {
            let cursor = match self.ledger.cursor(&endpoint.name)? {
                Some(cursor) => cursor,
                None => {
                    let start = alerts.last_seq();
                    self.ledger.advance(&endpoint.name, start)?;
                    start
                }
            };
            if endpoint.url.scheme() == "http" && !endpoint.url.host_str().is_some_and(is_loopback) {
                tracing::warn!(endpoint = %endpoint.name, "webhook sends alerts over plain http");
            }
            tracing::info!(endpoint = %endpoint.name, cursor, "webhook dispatcher starting");
            let dispatcher = dispatcher::Dispatcher {
                endpoint: Arc::new(endpoint.clone()),
                client: client.clone(),
                alerts: Arc::clone(&alerts),
                ledger: self.ledger.clone(),
                metrics: Arc::clone(&self.metrics),
                shutdown: shutdown.clone(),
            };
            handles.push(tasks.spawn(dispatcher.run(cursor, hub.subscribe())));
        }
        Ok(handles)
    }
}

/// Install the process-wide rustls crypto provider (ring) unless one is installed. Every
/// `reqwest::Client` in the process needs it first: reqwest is built without its own provider
/// (`rustls-no-provider`) and panics otherwise.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
        || host.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Stop the dispatchers: they were signalled through the shutdown token; each abandons an
/// in-flight POST after a short grace. Whatever is still running at `deadline` is aborted —
/// the cursor makes that safe (the change is sent again after restart).
pub async fn stop(tasks: Vec<JoinHandle<()>>, deadline: tokio::time::Instant) {
    for mut task in tasks {
        if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
            tracing::warn!("webhook dispatcher did not stop in time; aborted");
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(url: &str) -> WebhookFileConfig {
        WebhookFileConfig {
            url: Some(url.into()),
            secret_env: Some("PATH".into()), // set in every test environment, long enough
            units: Some(vec!["ICU".into()]),
            ..WebhookFileConfig::default()
        }
    }

    fn error(entries: Vec<WebhookFileConfig>) -> String {
        format!("{:#}", endpoints_from_file(entries).unwrap_err())
    }

    #[test]
    fn bad_entries_are_refused_naming_the_key() {
        assert!(error(vec![entry("ftp://example.org/x")]).contains("webhooks[0].url"));
        assert!(error(vec![entry("not a url")]).contains("webhooks[0].url"));
        let mut no_secret = entry("https://example.org/x");
        no_secret.secret_env = None;
        assert!(error(vec![no_secret]).contains("webhooks[0].secret_file"));
        let mut unset = entry("https://example.org/x");
        unset.secret_env = Some("VIGIL_TEST_SURELY_UNSET_VARIABLE".into());
        let message = error(vec![unset]);
        assert!(message.contains("webhooks[0].secret_env"), "{message}");
        let mut missing_file = entry("https://example.org/x");
        missing_file.secret_env = None;
        missing_file.secret_file = Some("/nonexistent/vigil/webhook.secret".into());
        assert!(error(vec![missing_file]).contains("webhooks[0].secret_file"));
        let mut no_units = entry("https://example.org/x");
        no_units.units = None;
        assert!(error(vec![entry("https://example.org/a"), no_units]).contains("webhooks[1].units"));
        let mut severity = entry("https://example.org/x");
        severity.min_severity = Some("urgent".into());
        assert!(error(vec![severity]).contains("webhooks[0].min_severity"));
        let mut attempts = entry("https://example.org/x");
        attempts.max_attempts = Some(0);
        assert!(error(vec![attempts]).contains("webhooks[0].max_attempts"));
        let same = error(vec![entry("https://example.org/x"), entry("https://example.org/x")]);
        assert!(same.contains("webhooks[1].name"), "{same}");
    }

    #[test]
    fn defaults_and_filters() {
        let mut file = entry("https://user:pw@example.org/hook?k=v");
        file.min_severity = Some("high".into());
        let endpoint = endpoints_from_file(vec![file]).unwrap().remove(0);
        assert_eq!(endpoint.name, "https://example.org:443/hook", "no credentials or query in the name");
        assert_eq!(endpoint.max_attempts, 6);
        assert!(!format!("{endpoint:?}").contains("pw"), "Debug hides the URL");
        assert_eq!(format!("{:?}", endpoint.secret), "<secret>");
    }
}
