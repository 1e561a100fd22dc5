//! Configuration: one TOML file (`--config`), overridden by `VIGIL_*` environment variables,
//! overridden by flags. Unknown keys are errors; `validate` names the key that is wrong.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

/// Flags (and their `VIGIL_*` environment equivalents) shared by `serve` and `demo`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// MLLP listen address [default: 127.0.0.1:2575]
    #[arg(long, env = "VIGIL_MLLP_ADDR")]
    pub mllp_addr: Option<SocketAddr>,
    /// HTTP + WebSocket listen address [default: 127.0.0.1:8080]
    #[arg(long, env = "VIGIL_HTTP_ADDR")]
    pub http_addr: Option<SocketAddr>,
    /// Data directory [default: ./data]
    #[arg(long, env = "VIGIL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Rules directory [default: ./rules]
    #[arg(long, env = "VIGIL_RULES_DIR")]
    pub rules_dir: Option<PathBuf>,
    /// Configuration file (TOML)
    #[arg(long, env = "VIGIL_CONFIG")]
    pub config: Option<PathBuf>,
}

/// Default idle time before a patient actor is passivated: one hour.
pub const DEFAULT_PASSIVATE_AFTER_SECS: u64 = 3600;

/// Default cadence of a running patient actor's state snapshots, in events.
pub const DEFAULT_SNAPSHOT_EVERY_EVENTS: u32 = 500;

/// The configuration file's shape. Every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `mllp_addr = "127.0.0.1:2575"`
    pub mllp_addr: Option<SocketAddr>,
    /// `http_addr = "127.0.0.1:8080"`
    pub http_addr: Option<SocketAddr>,
    /// `data_dir = "./data"`
    pub data_dir: Option<PathBuf>,
    /// `rules_dir = "./rules"`
    pub rules_dir: Option<PathBuf>,
    /// `[mllp]` section.
    #[serde(default)]
    pub mllp: MllpFileConfig,
    /// `[auth]` section.
    #[serde(default)]
    pub auth: AuthFileConfig,
    /// `[escalation]` section.
    #[serde(default)]
    pub escalation: EscalationFileConfig,
    /// `[hl7]` section.
    #[serde(default)]
    pub hl7: Hl7FileConfig,
    /// `[[webhooks]]`: outbound alert delivery, one entry per endpoint.
    #[serde(default)]
    pub webhooks: Vec<crate::alerts::webhooks::WebhookFileConfig>,
    /// `[store]` section.
    #[serde(default)]
    pub store: StoreFileConfig,
    /// `[patients]` section.
    #[serde(default)]
    pub patients: PatientsFileConfig,
    /// `[fhir]` section.
    #[serde(default)]
    pub fhir: FhirFileConfig,
    /// `[http]` section.
    #[serde(default)]
    pub http: HttpFileConfig,
    /// `[devices]` section.
    #[serde(default)]
    pub devices: DevicesFileConfig,
}

/// `[devices]`: how device silence is judged (docs/devices.md).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevicesFileConfig {
    /// The interval devices report at, in seconds; absent or 0: learnt per device (median of
    /// its recent gaps).
    pub interval_secs: Option<u64>,
    /// Silent for this many intervals: `device.offline` (default 3).
    pub offline_multiplier: Option<u32>,
    /// Never offline sooner than this many seconds after the last report (default 60).
    pub offline_floor_secs: Option<u64>,
    /// Devices tracked at most (default 10,000).
    pub max_devices: Option<usize>,
    /// How often silence is judged, in seconds (default 10).
    pub check_every_secs: Option<u64>,
    /// Quarantined readings (of devices with no association) kept at most; the oldest beyond
    /// are dropped, counted (default 10,000).
    pub quarantine_max_readings: Option<usize>,
    /// Quarantined readings are dropped after this many hours, counted (default 168: 7 days).
    pub quarantine_max_age_hours: Option<u64>,
}

/// `[devices]`, resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceSettings {
    /// How silence is judged.
    pub silence: vigil_actors::device::DeviceConfig,
    /// How often.
    pub check_every: Duration,
}

impl DeviceSettings {
    fn from_file(file: &DevicesFileConfig) -> Self {
        let defaults = vigil_actors::device::DeviceConfig::default();
        let seconds = |s: u64| time::Duration::seconds(i64::try_from(s).unwrap_or(i64::MAX));
        DeviceSettings {
            silence: vigil_actors::device::DeviceConfig {
                offline_intervals: file.offline_multiplier.unwrap_or(defaults.offline_intervals),
                offline_floor: file.offline_floor_secs.map_or(defaults.offline_floor, seconds),
                interval: file.interval_secs.filter(|s| *s > 0).map(seconds),
                max_devices: file.max_devices.unwrap_or(defaults.max_devices),
                quarantine_max: file.quarantine_max_readings.unwrap_or(defaults.quarantine_max),
                quarantine_max_age: file
                    .quarantine_max_age_hours
                    .map_or(defaults.quarantine_max_age, |h| seconds(h.saturating_mul(3600))),
            },
            check_every: Duration::from_secs(file.check_every_secs.unwrap_or(10)),
        }
    }
}

impl Default for DeviceSettings {
    fn default() -> Self {
        DeviceSettings::from_file(&DevicesFileConfig::default())
    }
}

/// `[fhir]`: the FHIR R4 REST and NDJSON feed (docs/fhir.md).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FhirFileConfig {
    /// Namespace-only assigning authorities (PID-3.4.1) and the FHIR `Identifier.system` each
    /// stands for, e.g. `HOSP = "http://hospital.example.org/mrn"`. An authority with an ISO
    /// OID needs no row: it is `urn:oid:<OID>`.
    #[serde(default)]
    pub identifier_systems: std::collections::BTreeMap<String, String>,
    /// Largest request body, bytes (default 8 MiB).
    pub max_body_bytes: Option<usize>,
    /// Deepest JSON nesting accepted (default 32).
    pub max_depth: Option<usize>,
    /// Most entries in one Bundle (default 5000).
    pub max_bundle_entries: Option<usize>,
    /// Longest NDJSON line of `$stream`, bytes (default 64 KiB).
    pub stream_max_line_bytes: Option<usize>,
    /// Most lines in one `$stream` request (default 1,000,000).
    pub stream_max_lines: Option<usize>,
    /// Lines of one `$stream` request submitted and not yet answered, at most (default 256).
    pub stream_in_flight: Option<usize>,
}

/// FHIR feed settings.
#[derive(Debug, Clone)]
pub struct FhirSettings {
    /// Namespace -> identifier system.
    pub identifier_systems: std::collections::BTreeMap<String, String>,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Deepest JSON nesting.
    pub max_depth: usize,
    /// Most Bundle entries.
    pub max_bundle_entries: usize,
    /// Longest NDJSON line.
    pub stream_max_line_bytes: usize,
    /// Most NDJSON lines per request.
    pub stream_max_lines: usize,
    /// NDJSON lines in flight per request.
    pub stream_in_flight: usize,
}

impl Default for FhirSettings {
    fn default() -> Self {
        FhirSettings::from_file(FhirFileConfig::default())
    }
}

impl FhirSettings {
    fn from_file(file: FhirFileConfig) -> Self {
        FhirSettings {
            identifier_systems: file.identifier_systems,
            max_body_bytes: file.max_body_bytes.unwrap_or(8 << 20),
            max_depth: file.max_depth.unwrap_or(32),
            max_bundle_entries: file.max_bundle_entries.unwrap_or(5000),
            stream_max_line_bytes: file.stream_max_line_bytes.unwrap_or(64 << 10),
            stream_max_lines: file.stream_max_lines.unwrap_or(1_000_000),
            stream_in_flight: file.stream_in_flight.unwrap_or(256),
        }
    }
}

/// `[http]`: the HTTP + WebSocket server.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpFileConfig {
    /// Seconds a client has to send a request's headers, and to start the next request on a
    /// kept-alive connection (default 10).
    pub header_read_timeout_secs: Option<u64>,
    /// Close a connection with no traffic either way for this long (default 300; WebSocket
    /// sessions send a heartbeat every 15 s).
    pub idle_timeout_secs: Option<u64>,
    /// Most concurrent connections, WebSocket sessions included (default 1024); more wait.
    pub max_connections: Option<usize>,
    /// Most console WebSocket sessions in all (default 512).
    pub max_websocket_sessions: Option<usize>,
    /// Most console WebSocket sessions per user, by token subject (default 8).
    pub max_websocket_sessions_per_user: Option<usize>,
    /// Failed authentications per peer address per minute before 429 (default 20).
    pub auth_failures_per_minute: Option<u32>,
    /// New connections per peer address per second once its burst is spent (default 200;
    /// 0 turns the limit off); past it a new connection is closed at once.
    pub connects_per_peer_per_sec: Option<u32>,
    /// New connections one peer address may open at once (default 1000).
    pub connect_burst_per_peer: Option<u32>,
    /// `/metrics` needs a bearer token (default false).
    pub metrics_require_auth: Option<bool>,
    /// `[http.tls]`: serve HTTP over TLS (and send HSTS).
    pub tls: Option<TlsFileConfig>,
}

/// HTTP server settings.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Header-read timeout.
    pub header_read_timeout: Duration,
    /// Idle timeout.
    pub idle_timeout: Duration,
    /// Connection limit.
    pub max_connections: usize,
    /// WebSocket sessions in all.
    pub max_websocket_sessions: usize,
    /// WebSocket sessions per user.
    pub max_websocket_sessions_per_user: usize,
    /// Failed authentications per peer per minute.
    pub auth_failures_per_minute: u32,
    /// New connections per peer per second (0: no limit).
    pub connects_per_peer_per_sec: u32,
    /// New connections per peer at once.
    pub connect_burst_per_peer: u32,
    /// `/metrics` needs a token.
    pub metrics_require_auth: bool,
    /// TLS certificate and key, when HTTP is served over TLS.
    pub tls: Option<TlsFileConfig>,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            max_connections: 1024,
            max_websocket_sessions: 512,
            max_websocket_sessions_per_user: 8,
            auth_failures_per_minute: 20,
            connects_per_peer_per_sec: 200,
            connect_burst_per_peer: 1000,
            metrics_require_auth: false,
            tls: None,
        }
    }
}

impl HttpSettings {
    fn from_file(file: HttpFileConfig) -> Self {
        let d = HttpSettings::default();
        HttpSettings {
            header_read_timeout: file.header_read_timeout_secs.map_or(d.header_read_timeout, Duration::from_secs),
            idle_timeout: file.idle_timeout_secs.map_or(d.idle_timeout, Duration::from_secs),
            max_connections: file.max_connections.unwrap_or(d.max_connections),
            max_websocket_sessions: file.max_websocket_sessions.unwrap_or(d.max_websocket_sessions),
            max_websocket_sessions_per_user: file
                .max_websocket_sessions_per_user
                .unwrap_or(d.max_websocket_sessions_per_user),
            auth_failures_per_minute: file.auth_failures_per_minute.unwrap_or(d.auth_failures_per_minute),
            connects_per_peer_per_sec: file.connects_per_peer_per_sec.unwrap_or(d.connects_per_peer_per_sec),
            connect_burst_per_peer: file.connect_burst_per_peer.unwrap_or(d.connect_burst_per_peer),
            metrics_require_auth: file.metrics_require_auth.unwrap_or(d.metrics_require_auth),
            tls: file.tls,
        }
    }
}

/// `[patients]`: live patient actors.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatientsFileConfig {
    /// Seconds without an event after which a patient's actor with no open alert and no clock
    /// running is stopped and rebuilt from the store on its next event (default 3600; 0 keeps
    /// every actor for the life of the process).
    pub passivate_after_secs: Option<u64>,
    /// A running patient actor writes its state snapshot every this many events, once they
    /// are durable, so a rebuild after a crash tops up a recent snapshot instead of replaying
    /// the day (default 500; 0: only when an actor stops cleanly).
    pub snapshot_every_events: Option<u32>,
    /// Start, before the server reports ready and takes messages, the actors of the patients
    /// whose state snapshots a clean stop kept (default true). Env: `VIGIL_PREWARM`
    /// (`true`/`false`).
    pub prewarm: Option<bool>,
    /// Seconds prewarm may take before start-up carries on without it (default 20).
    pub prewarm_deadline_secs: Option<u64>,
    /// Actors prewarm starts at once (default 4).
    pub prewarm_concurrency: Option<usize>,
    /// Most actors prewarm starts (default 50,000).
    pub prewarm_max_patients: Option<usize>,
}

/// `[escalation]`: an alert not acknowledged within its severity's window escalates.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EscalationFileConfig {
    /// Seconds for critical alerts (default 120).
    pub critical_secs: Option<u64>,
    /// Seconds for high alerts (default 300).
    pub high_secs: Option<u64>,
    /// Seconds for medium alerts (default 900).
    pub medium_secs: Option<u64>,
    /// Units that also see escalated alerts (default `["RRT"]`).
    pub units: Option<Vec<String>>,
    /// Roles that also see escalated alerts (default `["rrt"]`).
    pub roles: Option<Vec<String>>,
    /// The chain after the assigned nurse, in order (`[[escalation.chain]]`); without it, one
    /// step to `units` and `roles`.
    pub chain: Option<Vec<ChainStepFile>>,
}

/// `[[escalation.chain]]`: one step of the escalation chain.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainStepFile {
    /// Who, as consoles show it (e.g. `charge nurse`).
    pub label: String,
    /// Roles that see the alert from this step on.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Units that see the alert from this step on.
    #[serde(default)]
    pub units: Vec<String>,
    /// Seconds at the previous step before this one (default: the severity's window).
    pub wait_secs: Option<u64>,
}

/// `[hl7]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hl7FileConfig {
    /// PID-3 / MRG-1 identifier type (CX-5) of the MRN (default `MR`).
    pub mrn_identifier_type: Option<String>,
    /// Offset assumed for timestamps sent without one, `+HH:MM` (default `+00:00`).
    pub default_utc_offset: Option<String>,
    /// Message types Vigil does not map: `reject` (AR, code 200; default) or `ignore`
    /// (accepted, not stored, logged at info).
    pub unsupported: Option<UnsupportedPolicy>,
}

/// What to do with a message type Vigil does not map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnsupportedPolicy {
    /// AR (CR in enhanced mode) with ERR-3 code 200.
    #[default]
    Reject,
    /// AA (CA): accepted and ignored, not stored.
    Ignore,
}

/// HL7 mapping settings.
#[derive(Debug, Clone)]
pub struct Hl7Settings {
    /// PID-3 identifier type of the MRN.
    pub mrn_identifier_type: String,
    /// Offset for timestamps without one.
    pub default_utc_offset: time::UtcOffset,
    /// Unsupported message types.
    pub unsupported: UnsupportedPolicy,
}

impl Default for Hl7Settings {
    fn default() -> Self {
        Hl7Settings {
            mrn_identifier_type: "MR".into(),
            default_utc_offset: time::UtcOffset::UTC,
            unsupported: UnsupportedPolicy::Reject,
        }
    }
}

/// `+HH:MM` / `-HH:MM` (also `Z`, `+HHMM`).
fn parse_utc_offset(text: &str) -> Option<time::UtcOffset> {
    let text = text.trim();
    if text == "Z" {
        return Some(time::UtcOffset::UTC);
    }
    let sign: i8 = match text.get(..1)? {
        "+" => 1,
        "-" => -1,
        _ => return None,
    };
    let digits: String = text.get(1..)?.chars().filter(|c| *c != ':').collect();
    if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) || text.len() > 6 {
        return None;
    }
    let h: i8 = digits.get(..2)?.parse().ok()?;
    let m: i8 = digits.get(2..)?.parse().ok()?;
    time::UtcOffset::from_hms(sign * h, sign * m, 0).ok()
}

/// `[store]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreFileConfig {
    /// `embedded` (default) or `scylla`. Env: `VIGIL_STORE`.
    pub backend: Option<String>,
    /// Directory of key material (blind-index key, JWT key, field key ring). Must not be
    /// inside the data directory. Default: `<data_dir>-keys` beside it. Env: `VIGIL_KEYS_DIR`.
    pub keys_dir: Option<PathBuf>,
    /// The field-encryption key ring. Default: `<keys_dir>/field.keys`. Env: `VIGIL_KEYS_FILE`.
    pub keys_file: Option<PathBuf>,
    /// Key of the audit log's MAC chain. Must not be inside the data directory. Default:
    /// `<keys_dir>/audit.key`. Env: `VIGIL_AUDIT_KEY_FILE`.
    pub audit_key_file: Option<PathBuf>,
    /// Days kept: observations and other clinical events (default 2192).
    pub retention_observations_days: Option<u32>,
    /// Days kept: raw inbound messages (default 2192).
    pub retention_raw_messages_days: Option<u32>,
    /// Days kept: audit records; at least 6 years (2192 days, the default).
    pub retention_audit_days: Option<u32>,
    /// While the store is unreachable, how long a new message waits for it before it is
    /// answered AE (default 10 s; 0: AE at once). `/readyz` is 503 meanwhile.
    pub unavailable_ack_delay_secs: Option<u64>,
    /// Embedded store, under load: how long after a commit began the next may wait for the
    /// messages still on their way, so one fsync serves them all (default 1,000 µs; 0: never
    /// wait; at most 100,000). A sender with one message in flight is never held by it.
    pub commit_interval_us: Option<u64>,
    /// `[store.scylla]`
    #[serde(default)]
    pub scylla: ScyllaFileConfig,
}

/// `[store.scylla]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScyllaFileConfig {
    /// Contact points, `host:port`. Env: `VIGIL_SCYLLA_NODES` (comma-separated).
    pub nodes: Option<Vec<String>>,
    /// Keyspace (default `vigil`).
    pub keyspace: Option<String>,
    /// `NetworkTopologyStrategy` replication, data centre -> replicas, e.g. `{ dc1 = 3 }`.
    /// When absent, `SimpleStrategy` with `replication_factor` (for one node or tests).
    pub datacenters: Option<std::collections::BTreeMap<String, u32>>,
    /// `SimpleStrategy` replication factor (default 1).
    pub replication_factor: Option<u32>,
    /// Consistency of reads and writes (default `local_quorum`).
    pub consistency: Option<String>,
    /// Wait for schema agreement after DDL (default true). Off only for a single node that
    /// cannot report it (the in-process test server, kassandra).
    pub await_schema_agreement: Option<bool>,
}

/// `[mllp]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MllpFileConfig {
    /// Largest accepted frame in bytes (default 1 MiB); larger ones are answered with AR.
    pub max_frame_bytes: Option<usize>,
    /// Close a connection idle this long (default 300 s).
    pub idle_timeout_secs: Option<u64>,
    /// Most concurrent connections (default 4096; lowered at start to what the file limit
    /// allows after `reserved_fds`).
    pub max_connections: Option<usize>,
    /// Most concurrent connections from one peer address (default 1024: many monitors behind
    /// one gateway address is normal).
    pub max_connections_per_peer: Option<usize>,
    /// A connection that has not completed a frame this long after opening is closed
    /// (default 30 s; also bounds the TLS handshake).
    pub first_frame_timeout_secs: Option<u64>,
    /// A frame must end within this long of its first byte (default 30 s) ...
    pub frame_timeout_secs: Option<u64>,
    /// ... or, when longer, arrive at least this fast on average (default 4096 bytes/s).
    pub min_frame_bytes_per_sec: Option<u64>,
    /// File descriptors kept free of MLLP connections, for HTTP, health checks and the store
    /// (default 256).
    pub reserved_fds: Option<usize>,
    /// Most messages in flight on one connection (pipelining; default 256).
    pub max_in_flight_per_connection: Option<usize>,
    /// New connections one peer address may open a second, after its burst (default 200;
    /// 0: no limit). Past it a new connection is closed at once.
    pub connects_per_peer_per_sec: Option<u32>,
    /// New connections one peer address may open at once (default 1000).
    pub connect_burst_per_peer: Option<u32>,
    /// Our MSH-3 in ACKs (default `VIGIL`).
    pub application: Option<String>,
    /// Our MSH-4 in ACKs (default `VIGIL`).
    pub facility: Option<String>,
    /// `[mllp.tls]`: serve MLLP over TLS.
    pub tls: Option<TlsFileConfig>,
}

/// `[mllp.tls]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFileConfig {
    /// Certificate chain (PEM).
    pub cert_file: PathBuf,
    /// Private key (PEM).
    pub key_file: PathBuf,
}

/// `[auth]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthFileConfig {
    /// File holding the HS256 secret (hex); created on first run when absent.
    /// Default: `<data_dir>/keys/jwt.key`.
    pub jwt_secret_file: Option<PathBuf>,
    /// `HS256` (default, our own secret), `RS256` or `ES256` (an identity provider's key).
    pub algorithm: Option<String>,
    /// RS256/ES256: the identity provider's public key (PEM).
    pub public_key_file: Option<PathBuf>,
    /// RS256/ES256: a private key (PEM) so `vigil token` can issue; usually absent.
    pub private_key_file: Option<PathBuf>,
    /// RS256/ES256: accepted `iss` values (default `vigil`).
    #[serde(default)]
    pub issuers: Vec<String>,
    /// Longest accepted token lifetime, `exp - iat`, in seconds (default 43200, twelve hours).
    pub max_token_lifetime_secs: Option<u64>,
    /// Accepted `aud` values; when set, a token must name one of them (default: not checked).
    #[serde(default)]
    pub audience: Vec<String>,
}

/// MLLP listener settings.
#[derive(Debug, Clone)]
pub struct MllpSettings {
    /// Largest accepted frame.
    pub max_frame_bytes: usize,
    /// Idle timeout.
    pub idle_timeout: Duration,
    /// Connection limit.
    pub max_connections: usize,
    /// Connection limit per peer address.
    pub max_connections_per_peer: usize,
    /// Time from opening to the first complete frame.
    pub first_frame_timeout: Duration,
    /// Time from a frame's first byte to its end (unless it keeps the minimum rate).
    pub frame_timeout: Duration,
    /// Minimum average rate of a frame that takes longer than `frame_timeout`.
    pub min_frame_bytes_per_sec: u64,
    /// File descriptors kept free of MLLP connections.
    pub reserved_fds: usize,
    /// Pipelining depth per connection.
    pub max_in_flight_per_connection: usize,
    /// New connections per second per peer address after the burst (0: unlimited).
    pub connects_per_peer_per_sec: u32,
    /// New connections per peer address at once.
    pub connect_burst_per_peer: u32,
    /// MSH-3 of our ACKs.
    pub application: String,
    /// MSH-4 of our ACKs.
    pub facility: String,
    /// TLS certificate and key, when MLLP is served over TLS.
    pub tls: Option<TlsFileConfig>,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// `[fhir]`: the FHIR feed.
    pub fhir: FhirSettings,
    /// MLLP listen address.
    pub mllp_addr: SocketAddr,
    /// HTTP listen address.
    pub http_addr: SocketAddr,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Rules directory.
    pub rules_dir: PathBuf,
    /// MLLP settings.
    pub mllp: MllpSettings,
    /// HS256 secret file.
    pub jwt_secret_file: PathBuf,
    /// Token algorithm and key files.
    pub auth_algorithm: String,
    /// RS256/ES256 public key.
    pub auth_public_key: Option<PathBuf>,
    /// RS256/ES256 private key.
    pub auth_private_key: Option<PathBuf>,
    /// RS256/ES256 issuers.
    pub auth_issuers: Vec<String>,
    /// Lifetime cap and audience of accepted tokens.
    pub token_policy: crate::auth::TokenPolicy,
    /// HTTP server settings.
    pub http: HttpSettings,
    /// Messages in flight across all connections before senders wait (bounds actor mailboxes).
    pub ingest_permits: usize,
    /// Alert changes a WebSocket session may lag before it must resync.
    pub hub_capacity: usize,
    /// Escalation of unacknowledged alerts.
    pub escalation: crate::alerts::escalation::EscalationPolicy,
    /// Idle time after which a patient actor is passivated (`None`: never).
    pub passivate_after: Option<time::Duration>,
    /// Events between a running patient actor's state snapshots (0: only at a clean stop).
    pub snapshot_every: u32,
    /// Prewarm of the actors a clean stop left snapshots of (`None`: off).
    pub prewarm: Option<vigil_actors::PrewarmConfig>,
    /// HL7 mapping settings.
    pub hl7: Hl7Settings,
    /// Outbound alert webhooks (secrets already read; validated).
    pub webhooks: Vec<crate::alerts::webhooks::WebhookEndpoint>,
    /// Storage and key locations.
    pub store: StoreSettings,
    /// `[devices]`: device silence.
    pub devices: DeviceSettings,
}

/// Which store adapter runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// fjall in the data directory.
    Embedded,
    /// A ScyllaDB cluster.
    Scylla,
}

/// Days each kind of record is kept (TTLs on ScyllaDB).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Observations and other clinical events, and alerts.
    pub observations_days: u32,
    /// Raw inbound messages (the message log).
    pub raw_messages_days: u32,
    /// Audit records (at least six years).
    pub audit_days: u32,
}

impl Default for Retention {
    fn default() -> Self {
        Retention { observations_days: 2192, raw_messages_days: 2192, audit_days: MIN_AUDIT_DAYS }
    }
}

/// Six years, in days (leap days included).
pub const MIN_AUDIT_DAYS: u32 = 2192;

/// Longest `store.commit_interval_us`: past it the wait would show in every ACK under load.
pub const MAX_COMMIT_INTERVAL: Duration = Duration::from_millis(100);

/// ScyllaDB connection settings.
#[derive(Debug, Clone)]
pub struct ScyllaSettings {
    /// Contact points.
    pub nodes: Vec<String>,
    /// Keyspace.
    pub keyspace: String,
    /// Data centre -> replicas (`NetworkTopologyStrategy`); empty means `SimpleStrategy`.
    pub datacenters: std::collections::BTreeMap<String, u32>,
    /// `SimpleStrategy` replication factor.
    pub replication_factor: u32,
    /// Consistency name (`local_quorum`, `quorum`, `one`, ...).
    pub consistency: String,
    /// Wait for schema agreement after DDL.
    pub await_schema_agreement: bool,
}

/// `[store]`, resolved.
#[derive(Debug, Clone)]
pub struct StoreSettings {
    /// Adapter.
    pub backend: Backend,
    /// Key material directory (outside the data directory).
    pub keys_dir: PathBuf,
    /// Field-encryption key ring file.
    pub keys_file: PathBuf,
    /// Audit-chain MAC key file.
    pub audit_key_file: PathBuf,
    /// Retention per kind.
    pub retention: Retention,
    /// ScyllaDB settings (used when `backend` is `scylla`).
    pub scylla: ScyllaSettings,
    /// While the store is unreachable, how long a new message waits before AE.
    pub unavailable_ack_delay: Duration,
    /// Embedded store: how long a commit may wait for messages on their way.
    pub commit_interval: Duration,
}

impl StoreSettings {
    /// The blind-index key file.
    pub fn index_key_file(&self) -> PathBuf {
        self.keys_dir.join("index.key")
    }
}

/// The default key directory: `<data_dir>-keys`, beside the data directory, never in it.
pub fn default_keys_dir(data_dir: &Path) -> PathBuf {
    let mut name = data_dir.file_name().map(|n| n.to_os_string()).unwrap_or_else(|| "data".into());
    name.push("-keys");
    data_dir.with_file_name(name)
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from)
}

/// `[patients] prewarm*` over its defaults, `VIGIL_PREWARM` over the file.
fn prewarm_config(file: &PatientsFileConfig) -> anyhow::Result<Option<vigil_actors::PrewarmConfig>> {
    let on = match env_string("VIGIL_PREWARM").as_deref() {
        None => file.prewarm.unwrap_or(true),
        Some("true" | "1") => true,
        Some("false" | "0") => false,
        Some(other) => bail!("VIGIL_PREWARM must be true or false, not {other:?}"),
    };
    if !on {
        return Ok(None);
    }
    let defaults = vigil_actors::PrewarmConfig::default();
    Ok(Some(vigil_actors::PrewarmConfig {
        concurrency: file.prewarm_concurrency.unwrap_or(defaults.concurrency),
        deadline: file.prewarm_deadline_secs.map_or(defaults.deadline, Duration::from_secs),
        max_patients: file.prewarm_max_patients.unwrap_or(defaults.max_patients),
    }))
}

fn env_string(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl Config {
    /// Resolve flags/env over the file over defaults, then validate.
    pub fn load(args: &ServeArgs) -> anyhow::Result<Config> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let data_dir = args.data_dir.clone().or(file.data_dir).unwrap_or_else(|| "data".into());
        let default_utc_offset = match &file.hl7.default_utc_offset {
            Some(text) => parse_utc_offset(text)
                .with_context(|| format!("hl7.default_utc_offset must look like +01:00, not {text:?}"))?,
            None => time::UtcOffset::UTC,
        };
        let hl7 = Hl7Settings {
            mrn_identifier_type: file.hl7.mrn_identifier_type.unwrap_or_else(|| "MR".into()),
            default_utc_offset,
            unsupported: file.hl7.unsupported.unwrap_or_default(),
        };
        let store_file = file.store;
        let keys_dir =
            env_path("VIGIL_KEYS_DIR").or(store_file.keys_dir).unwrap_or_else(|| default_keys_dir(&data_dir));
        let backend = match env_string("VIGIL_STORE").or(store_file.backend).as_deref() {
            None | Some("embedded") => Backend::Embedded,
            Some("scylla") => Backend::Scylla,
            Some(other) => bail!("store.backend must be `embedded` or `scylla`, not `{other}`"),
        };
        let scylla_file = store_file.scylla;
        let store = StoreSettings {
            backend,
            keys_file: env_path("VIGIL_KEYS_FILE")
                .or(store_file.keys_file)
                .unwrap_or_else(|| keys_dir.join("field.keys")),
            audit_key_file: env_path("VIGIL_AUDIT_KEY_FILE")
                .or(store_file.audit_key_file)
                .unwrap_or_else(|| keys_dir.join("audit.key")),
            keys_dir,
            retention: Retention {
                observations_days: store_file.retention_observations_days.unwrap_or(2192),
                raw_messages_days: store_file.retention_raw_messages_days.unwrap_or(2192),
                audit_days: store_file.retention_audit_days.unwrap_or(MIN_AUDIT_DAYS),
            },
            unavailable_ack_delay: Duration::from_secs(store_file.unavailable_ack_delay_secs.unwrap_or(10)),
            commit_interval: store_file
                .commit_interval_us
                .map_or(crate::store::commit::DEFAULT_COMMIT_INTERVAL, Duration::from_micros),
            scylla: ScyllaSettings {
                nodes: env_string("VIGIL_SCYLLA_NODES")
                    .map(|v| v.split(',').map(|n| n.trim().to_string()).collect())
                    .or(scylla_file.nodes)
                    .unwrap_or_else(|| vec!["127.0.0.1:9042".into()]),
                keyspace: scylla_file.keyspace.unwrap_or_else(|| "vigil".into()),
                datacenters: scylla_file.datacenters.unwrap_or_default(),
                replication_factor: scylla_file.replication_factor.unwrap_or(1),
                consistency: scylla_file.consistency.unwrap_or_else(|| "local_quorum".into()),
                await_schema_agreement: scylla_file.await_schema_agreement.unwrap_or(true),
            },
        };
        let devices = DeviceSettings::from_file(&file.devices);
        let config = Config {
            devices,
            fhir: FhirSettings::from_file(file.fhir),
            mllp_addr: args.mllp_addr.or(file.mllp_addr).unwrap_or(([127, 0, 0, 1], 2575).into()),
            http_addr: args.http_addr.or(file.http_addr).unwrap_or(([127, 0, 0, 1], 8080).into()),
            rules_dir: args.rules_dir.clone().or(file.rules_dir).unwrap_or_else(|| "rules".into()),
            mllp: MllpSettings {
                max_frame_bytes: file.mllp.max_frame_bytes.unwrap_or(1 << 20),
                idle_timeout: Duration::from_secs(file.mllp.idle_timeout_secs.unwrap_or(300)),
                max_connections: file.mllp.max_connections.unwrap_or(4096),
                max_connections_per_peer: file.mllp.max_connections_per_peer.unwrap_or(1024),
                first_frame_timeout: Duration::from_secs(file.mllp.first_frame_timeout_secs.unwrap_or(30)),
                frame_timeout: Duration::from_secs(file.mllp.frame_timeout_secs.unwrap_or(30)),
                min_frame_bytes_per_sec: file.mllp.min_frame_bytes_per_sec.unwrap_or(4096),
                reserved_fds: file.mllp.reserved_fds.unwrap_or(256),
                max_in_flight_per_connection: file.mllp.max_in_flight_per_connection.unwrap_or(256),
                connects_per_peer_per_sec: file.mllp.connects_per_peer_per_sec.unwrap_or(200),
                connect_burst_per_peer: file.mllp.connect_burst_per_peer.unwrap_or(1000),
                application: file.mllp.application.unwrap_or_else(|| "VIGIL".into()),
                facility: file.mllp.facility.unwrap_or_else(|| "VIGIL".into()),
                tls: file.mllp.tls,
            },
            jwt_secret_file: file.auth.jwt_secret_file.unwrap_or_else(|| store.keys_dir.join("jwt.key")),
            auth_algorithm: file.auth.algorithm.unwrap_or_else(|| "HS256".into()),
            auth_public_key: file.auth.public_key_file,
            auth_private_key: file.auth.private_key_file,
            auth_issuers: file.auth.issuers,
            token_policy: crate::auth::TokenPolicy {
                max_lifetime_secs: file
                    .auth
                    .max_token_lifetime_secs
                    .map_or(crate::auth::DEFAULT_MAX_TOKEN_LIFETIME_SECS, |s| i64::try_from(s).unwrap_or(i64::MAX)),
                audience: file.auth.audience,
            },
            http: HttpSettings::from_file(file.http),
            data_dir,
            ingest_permits: 16_384,
            hub_capacity: 4_096,
            escalation: escalation_policy(file.escalation),
            passivate_after: match file.patients.passivate_after_secs.unwrap_or(DEFAULT_PASSIVATE_AFTER_SECS) {
                0 => None,
                secs => Some(time::Duration::seconds(i64::try_from(secs).unwrap_or(i64::MAX))),
            },
            snapshot_every: file.patients.snapshot_every_events.unwrap_or(DEFAULT_SNAPSHOT_EVERY_EVENTS),
            prewarm: prewarm_config(&file.patients)?,
            hl7,
            webhooks: crate::alerts::webhooks::endpoints_from_file(file.webhooks)?,
            store,
        };
        config.validate()?;
        Ok(config)
    }

    /// Check values a file or flag could get wrong.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.devices.silence.offline_intervals == 0 {
            bail!("devices.offline_multiplier must be at least 1");
        }
        if self.devices.silence.max_devices == 0 {
            bail!("devices.max_devices must be at least 1");
        }
        if self.devices.silence.quarantine_max == 0 {
            bail!("devices.quarantine_max_readings must be at least 1");
        }
        if self.devices.silence.quarantine_max_age <= time::Duration::ZERO {
            bail!("devices.quarantine_max_age_hours must be at least 1");
        }
        if self.devices.check_every.is_zero() {
            bail!("devices.check_every_secs must be at least 1");
        }
        if let Some(prewarm) = &self.prewarm
            && (prewarm.concurrency == 0 || prewarm.deadline.is_zero())
        {
            bail!("patients.prewarm_concurrency and patients.prewarm_deadline_secs must be at least 1");
        }
        if self.mllp.max_frame_bytes < 1024 {
            bail!("mllp.max_frame_bytes must be at least 1024");
        }
        if self.mllp.max_connections == 0 {
            bail!("mllp.max_connections must be at least 1");
        }
        if self.mllp.max_connections_per_peer == 0 {
            bail!("mllp.max_connections_per_peer must be at least 1");
        }
        if self.mllp.first_frame_timeout.is_zero() || self.mllp.frame_timeout.is_zero() {
            bail!("mllp.first_frame_timeout_secs and mllp.frame_timeout_secs must be at least 1");
        }
        if self.mllp.min_frame_bytes_per_sec == 0 {
            bail!("mllp.min_frame_bytes_per_sec must be at least 1");
        }
        if self.store.commit_interval > MAX_COMMIT_INTERVAL {
            bail!("store.commit_interval_us must be at most {} (a tenth of a second)", MAX_COMMIT_INTERVAL.as_micros());
        }
        if self.mllp.max_in_flight_per_connection == 0 {
            bail!("mllp.max_in_flight_per_connection must be at least 1");
        }
        if self.escalation.windows.iter().any(|(_, w)| w.is_some_and(|w| w.is_zero())) {
            bail!("escalation windows (escalation.*_secs) must be at least 1 second");
        }
        if self.escalation.chain.iter().any(|s| s.wait.is_some_and(|w| w.is_zero()) || s.label.trim().is_empty()) {
            bail!("every escalation.chain step needs a label and a wait_secs of at least 1 second");
        }
        match (self.auth_algorithm.as_str(), &self.auth_public_key) {
            ("HS256", _) => {}
            ("RS256" | "ES256", Some(_)) => {}
            ("RS256" | "ES256", None) => {
                bail!("auth.public_key_file is required with auth.algorithm = {}", self.auth_algorithm)
            }
            (other, _) => bail!("auth.algorithm must be HS256, RS256 or ES256, not {other}"),
        }
        if self.token_policy.max_lifetime_secs < 60 {
            bail!("auth.max_token_lifetime_secs must be at least 60");
        }
        if self.token_policy.audience.iter().any(|a| a.trim().is_empty()) {
            bail!("auth.audience entries must not be empty");
        }
        let http = &self.http;
        if http.header_read_timeout.is_zero() {
            bail!("http.header_read_timeout_secs must be at least 1");
        }
        if http.idle_timeout.is_zero() {
            bail!("http.idle_timeout_secs must be at least 1");
        }
        if http.max_connections == 0 {
            bail!("http.max_connections must be at least 1");
        }
        if http.max_websocket_sessions == 0 || http.max_websocket_sessions_per_user == 0 {
            bail!("http.max_websocket_sessions and http.max_websocket_sessions_per_user must be at least 1");
        }
        if http.auth_failures_per_minute == 0 {
            bail!("http.auth_failures_per_minute must be at least 1");
        }
        if self.hl7.mrn_identifier_type.trim().is_empty() {
            bail!("hl7.mrn_identifier_type must not be empty");
        }
        if self.mllp.idle_timeout.is_zero() {
            bail!("mllp.idle_timeout_secs must be at least 1");
        }
        let r = self.store.retention;
        if r.audit_days < MIN_AUDIT_DAYS {
            bail!("store.retention_audit_days must be at least {MIN_AUDIT_DAYS} (six years)");
        }
        if r.observations_days == 0 || r.raw_messages_days == 0 {
            bail!("store.retention_observations_days and store.retention_raw_messages_days must be at least 1");
        }
        for (key, path) in [
            ("store.keys_dir", &self.store.keys_dir),
            ("store.keys_file", &self.store.keys_file),
            ("store.audit_key_file", &self.store.audit_key_file),
            ("auth.jwt_secret_file", &self.jwt_secret_file),
        ] {
            if inside(path, &self.data_dir) {
                bail!(
                    "{key} ({}) must not be inside the data directory: a copy of the data must not carry its keys",
                    path.display()
                );
            }
        }
        crate::ingest::map::Authorities::new(&self.fhir.identifier_systems).map_err(|e| anyhow::anyhow!("fhir.{e}"))?;
        let f = &self.fhir;
        for (key, value, min) in [
            ("fhir.max_body_bytes", f.max_body_bytes, 1024),
            ("fhir.max_depth", f.max_depth, 8),
            ("fhir.max_bundle_entries", f.max_bundle_entries, 1),
            ("fhir.stream_max_line_bytes", f.stream_max_line_bytes, 1024),
            ("fhir.stream_max_lines", f.stream_max_lines, 1),
            ("fhir.stream_in_flight", f.stream_in_flight, 1),
        ] {
            if value < min {
                bail!("{key} must be at least {min}");
            }
        }
        if f.max_depth > 128 {
            bail!("fhir.max_depth must be at most 128");
        }
        if self.store.scylla.nodes.is_empty() {
            bail!("store.scylla.nodes must name at least one node");
        }
        Ok(())
    }
}

fn escalation_policy(file: EscalationFileConfig) -> crate::alerts::escalation::EscalationPolicy {
    use vigil_actors::Severity;
    let mut policy = crate::alerts::escalation::EscalationPolicy::default();
    let secs = |s: Option<u64>| s.map(|s| time::Duration::seconds(i64::try_from(s).unwrap_or(i64::MAX)));
    for (severity, value) in [
        (Severity::Critical, secs(file.critical_secs)),
        (Severity::High, secs(file.high_secs)),
        (Severity::Medium, secs(file.medium_secs)),
    ] {
        if let (Some(window), Some(slot)) = (value, policy.windows.iter_mut().find(|(s, _)| *s == severity)) {
            slot.1 = Some(window);
        }
    }
    if let Some(units) = file.units {
        policy.units = units;
    }
    if let Some(roles) = file.roles {
        policy.roles = roles;
    }
    for step in file.chain.unwrap_or_default() {
        policy.chain.push(crate::alerts::escalation::ChainStep {
            label: step.label,
            units: step.units,
            roles: step.roles,
            wait: secs(step.wait_secs),
        });
    }
    policy
}

/// Whether `path` lies under `dir`, comparing absolute forms (the files need not exist yet).
fn inside(path: &Path, dir: &Path) -> bool {
    let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let path = absolute(path);
    let dir = absolute(dir);
    path.components().collect::<Vec<_>>().starts_with(&dir.components().collect::<Vec<_>>())
}

fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("config file {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file_and_unknown_keys_are_named() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("vigil.toml");
        std::fs::write(
            &path,
            "http_addr = \"127.0.0.1:9000\"\nmllp_addr = \"127.0.0.1:9001\"\n[mllp]\nmax_frame_bytes = 4096\n",
        )
        .unwrap();
        let args = ServeArgs {
            http_addr: Some("127.0.0.1:9100".parse().unwrap()),
            config: Some(path.clone()),
            ..ServeArgs::default()
        };
        let c = Config::load(&args).unwrap();
        assert_eq!(c.http_addr.port(), 9100);
        assert_eq!(c.mllp_addr.port(), 9001);
        assert_eq!(c.mllp.max_frame_bytes, 4096);
        std::fs::write(&path, "[mllp]\nmax_frame = 10\n").unwrap();
        let err = format!("{:#}", Config::load(&args).unwrap_err());
        assert!(err.contains("max_frame"), "{err}");
        std::fs::write(&path, "[mllp]\nmax_frame_bytes = 10\n").unwrap();
        let err = format!("{:#}", Config::load(&args).unwrap_err());
        assert!(err.contains("mllp.max_frame_bytes"), "{err}");
    }

    #[test]
    fn the_commit_interval_defaults_to_a_millisecond_may_be_off_and_is_bounded() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("vigil.toml");
        let args = ServeArgs { config: Some(path.clone()), ..ServeArgs::default() };
        std::fs::write(&path, "").unwrap();
        assert_eq!(Config::load(&args).unwrap().store.commit_interval, Duration::from_millis(1));
        std::fs::write(&path, "[store]\ncommit_interval_us = 0\n").unwrap();
        assert_eq!(Config::load(&args).unwrap().store.commit_interval, Duration::ZERO);
        std::fs::write(&path, "[store]\ncommit_interval_us = 2500\n").unwrap();
        assert_eq!(Config::load(&args).unwrap().store.commit_interval, Duration::from_micros(2500));
        std::fs::write(&path, "[store]\ncommit_interval_us = 100001\n").unwrap();
        let err = format!("{:#}", Config::load(&args).unwrap_err());
        assert!(err.contains("store.commit_interval_us"), "{err}");
    }

    #[test]
    fn the_escalation_chain_is_read_in_order_and_a_zero_wait_or_a_blank_label_is_refused() {
        let dir = std::env::temp_dir().join(format!("vigil-cfg-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("vigil.toml");
        let args = ServeArgs { config: Some(path.clone()), ..ServeArgs::default() };
        let chain = "[[escalation.chain]]\nlabel = \"charge nurse\"\nroles = [\"charge\"]\nwait_secs = 120\n\
                     [[escalation.chain]]\nlabel = \"rapid response team\"\nroles = [\"rrt\"]\nunits = [\"RRT\"]\n";
        std::fs::write(&path, chain).unwrap();
        let steps = Config::load(&args).unwrap().escalation.chain;
        assert_eq!(steps.iter().map(|s| s.label.as_str()).collect::<Vec<_>>(), ["charge nurse", "rapid response team"]);
        assert_eq!((steps[0].wait, steps[1].wait), (Some(time::Duration::seconds(120)), None));
        assert_eq!(steps[1].units, ["RRT"]);
        std::fs::write(&path, "[[escalation.chain]]\nlabel = \"charge\"\nwait_secs = 0\n").unwrap();
        assert!(format!("{:#}", Config::load(&args).unwrap_err()).contains("escalation.chain"));
        std::fs::write(&path, "[[escalation.chain]]\nlabel = \" \"\n").unwrap();
        assert!(Config::load(&args).is_err());
        std::fs::write(&path, "[[escalation.chain]]\nlabel = \"x\"\nwho = \"y\"\n").unwrap();
        assert!(format!("{:#}", Config::load(&args).unwrap_err()).contains("who"), "unknown keys are named");
        assert!(Config::load(&ServeArgs::default()).unwrap().escalation.chain.is_empty());
    }

    #[test]
    fn hl7_section_sets_identity_zone_and_unsupported_policy() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("vigil.toml");
        let args = ServeArgs { config: Some(path.clone()), ..ServeArgs::default() };
        std::fs::write(
            &path,
            "[hl7]\nmrn_identifier_type = \"PI\"\ndefault_utc_offset = \"-05:00\"\nunsupported = \"ignore\"\n",
        )
        .unwrap();
        let c = Config::load(&args).unwrap();
        assert_eq!(c.hl7.mrn_identifier_type, "PI");
        assert_eq!(c.hl7.default_utc_offset, time::UtcOffset::from_hms(-5, 0, 0).unwrap());
        assert_eq!(c.hl7.unsupported, UnsupportedPolicy::Ignore);
        std::fs::write(&path, "[hl7]\ndefault_utc_offset = \"EST\"\n").unwrap();
        let err = format!("{:#}", Config::load(&args).unwrap_err());
        assert!(err.contains("hl7.default_utc_offset"), "{err}");
        std::fs::write(&path, "[hl7]\nunsupported = \"drop\"\n").unwrap();
        assert!(Config::load(&args).is_err());
        assert_eq!(Config::load(&ServeArgs::default()).unwrap().hl7.unsupported, UnsupportedPolicy::Reject);
    }

    #[test]
    fn fhir_section_sets_identifier_systems_and_limits_and_names_a_bad_key() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("vigil.toml");
        let args = ServeArgs { config: Some(path.clone()), ..ServeArgs::default() };
        std::fs::write(
            &path,
            "[fhir]\nmax_bundle_entries = 100\n[fhir.identifier_systems]\nHOSP = \"http://hospital.example.org/mrn\"\n",
        )
        .unwrap();
        let c = Config::load(&args).unwrap();
        assert_eq!(c.fhir.max_bundle_entries, 100);
        assert_eq!(c.fhir.identifier_systems["HOSP"], "http://hospital.example.org/mrn");
        assert_eq!(c.fhir.max_depth, 32);
        std::fs::write(&path, "[fhir.identifier_systems]\nA = \"urn:oid:1.2.3\"\nB = \"urn:oid:1.2.3\"\n").unwrap();
        let err = format!("{:#}", Config::load(&args).unwrap_err());
        assert!(err.contains("fhir.identifier_systems") && err.contains("urn:oid:1.2.3"), "{err}");
        std::fs::write(&path, "[fhir]\nstream_in_flight = 0\n").unwrap();
        let err = format!("{:#}", Config::load(&args).unwrap_err());
        assert!(err.contains("fhir.stream_in_flight"), "{err}");
    }

    #[test]
    fn http_and_token_settings_have_defaults_and_are_validated_by_key() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("vigil.toml");
        let args = ServeArgs { config: Some(path.clone()), ..ServeArgs::default() };
        let defaults = Config::load(&ServeArgs::default()).unwrap();
        assert_eq!(defaults.token_policy.max_lifetime_secs, 12 * 3600);
        assert!(defaults.token_policy.audience.is_empty());
        assert_eq!(defaults.http.header_read_timeout, Duration::from_secs(10));
        assert!(!defaults.http.metrics_require_auth);
        std::fs::write(
            &path,
            "[auth]\nmax_token_lifetime_secs = 3600\naudience = [\"vigil\"]\n[http]\nheader_read_timeout_secs = 2\nmax_connections = 64\nmetrics_require_auth = true\n",
        )
        .unwrap();
        let c = Config::load(&args).unwrap();
        assert_eq!(c.token_policy.max_lifetime_secs, 3600);
        assert_eq!(c.token_policy.audience, vec!["vigil".to_string()]);
        assert_eq!((c.http.header_read_timeout, c.http.max_connections), (Duration::from_secs(2), 64));
        assert!(c.http.metrics_require_auth);
        for (text, key) in [
            ("[http]\nheader_read_timeout_secs = 0\n", "http.header_read_timeout_secs"),
            ("[http]\nmax_connections = 0\n", "http.max_connections"),
            ("[auth]\nmax_token_lifetime_secs = 5\n", "auth.max_token_lifetime_secs"),
        ] {
            std::fs::write(&path, text).unwrap();
            let err = format!("{:#}", Config::load(&args).unwrap_err());
            assert!(err.contains(key), "{err}");
        }
    }

    #[test]
    fn the_shipped_example_configuration_loads() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/vigil.example.toml");
        let args = ServeArgs { config: Some(path), ..ServeArgs::default() };
        let c = Config::load(&args).unwrap();
        assert_eq!(c.mllp.facility, "HOSP");
        assert_eq!(c.store.keys_dir, PathBuf::from("/etc/vigil/keys"));
        assert_eq!(c.hl7.mrn_identifier_type, "MR");
    }

    #[test]
    fn keys_default_beside_the_data_dir_never_inside_and_audit_is_kept_six_years() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        std::fs::create_dir_all(&dir).unwrap();
        let data = dir.join("data");
        let args = ServeArgs { data_dir: Some(data.clone()), config: Some(dir.join("v.toml")), ..ServeArgs::default() };
        std::fs::write(dir.join("v.toml"), "[store]\nretention_observations_days = 30\n").unwrap();
        let c = Config::load(&args).unwrap();
        assert_eq!(c.store.keys_dir, dir.join("data-keys"));
        assert_eq!(c.store.keys_file, dir.join("data-keys").join("field.keys"));
        assert_eq!(c.jwt_secret_file, dir.join("data-keys").join("jwt.key"));
        assert_eq!(c.store.retention.observations_days, 30);
        assert_eq!(c.store.retention.audit_days, MIN_AUDIT_DAYS);
        std::fs::write(dir.join("v.toml"), format!("[store]\nkeys_file = \"{}\"\n", data.join("k").display())).unwrap();
        let err = format!("{:#}", Config::load(&args).unwrap_err());
        assert!(err.contains("store.keys_file") && err.contains("inside the data directory"), "{err}");
        std::fs::write(dir.join("v.toml"), "[store]\nretention_audit_days = 365\n").unwrap();
        let err = format!("{:#}", Config::load(&args).unwrap_err());
        assert!(err.contains("store.retention_audit_days"), "{err}");
        std::fs::write(
            dir.join("v.toml"),
            "[store.scylla]\ndatacenters = { dc1 = 3 }\nconsistency = \"local_quorum\"\n",
        )
        .unwrap();
        assert_eq!(Config::load(&args).unwrap().store.scylla.datacenters.get("dc1"), Some(&3));
    }
}
