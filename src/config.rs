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
        Hl7Settings { mrn_identifier_type: "MR".into(), default_utc_offset: time::UtcOffset::UTC, unsupported: UnsupportedPolicy::Reject }
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

/// `[mllp]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MllpFileConfig {
    /// Largest accepted frame in bytes (default 1 MiB); larger ones are answered with AR.
    pub max_frame_bytes: Option<usize>,
    /// Close a connection idle this long (default 300 s).
    pub idle_timeout_secs: Option<u64>,
    /// Most concurrent connections (default 4096).
    pub max_connections: Option<usize>,
    /// Most messages in flight on one connection (pipelining; default 256).
    pub max_in_flight_per_connection: Option<usize>,
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
    /// Pipelining depth per connection.
    pub max_in_flight_per_connection: usize,
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
    /// Messages in flight across all connections before senders wait (bounds actor mailboxes).
    pub ingest_permits: usize,
    /// Alert changes a WebSocket session may lag before it must resync.
    pub hub_capacity: usize,
    /// Escalation of unacknowledged alerts.
    pub escalation: crate::alerts::escalation::EscalationPolicy,
    /// HL7 mapping settings.
    pub hl7: Hl7Settings,
    /// Outbound alert webhooks (secrets already read; validated).
    pub webhooks: Vec<crate::alerts::webhooks::WebhookEndpoint>,
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
        let config = Config {
            mllp_addr: args.mllp_addr.or(file.mllp_addr).unwrap_or(([127, 0, 0, 1], 2575).into()),
            http_addr: args.http_addr.or(file.http_addr).unwrap_or(([127, 0, 0, 1], 8080).into()),
            rules_dir: args.rules_dir.clone().or(file.rules_dir).unwrap_or_else(|| "rules".into()),
            mllp: MllpSettings {
                max_frame_bytes: file.mllp.max_frame_bytes.unwrap_or(1 << 20),
                idle_timeout: Duration::from_secs(file.mllp.idle_timeout_secs.unwrap_or(300)),
                max_connections: file.mllp.max_connections.unwrap_or(4096),
                max_in_flight_per_connection: file.mllp.max_in_flight_per_connection.unwrap_or(256),
                application: file.mllp.application.unwrap_or_else(|| "VIGIL".into()),
                facility: file.mllp.facility.unwrap_or_else(|| "VIGIL".into()),
                tls: file.mllp.tls,
            },
            jwt_secret_file: file.auth.jwt_secret_file.unwrap_or_else(|| data_dir.join("keys").join("jwt.key")),
            auth_algorithm: file.auth.algorithm.unwrap_or_else(|| "HS256".into()),
            auth_public_key: file.auth.public_key_file,
            auth_private_key: file.auth.private_key_file,
            auth_issuers: file.auth.issuers,
            data_dir,
            ingest_permits: 16_384,
            hub_capacity: 4_096,
            escalation: escalation_policy(file.escalation),
            hl7,
            webhooks: crate::alerts::webhooks::endpoints_from_file(file.webhooks)?,
        };
        config.validate()?;
        Ok(config)
    }

    /// Check values a file or flag could get wrong.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.mllp.max_frame_bytes < 1024 {
            bail!("mllp.max_frame_bytes must be at least 1024");
        }
        if self.mllp.max_connections == 0 {
            bail!("mllp.max_connections must be at least 1");
        }
        if self.mllp.max_in_flight_per_connection == 0 {
            bail!("mllp.max_in_flight_per_connection must be at least 1");
        }
        if self.escalation.windows.iter().any(|(_, w)| w.is_some_and(|w| w.is_zero())) {
            bail!("escalation windows (escalation.*_secs) must be at least 1 second");
        }
        match (self.auth_algorithm.as_str(), &self.auth_public_key) {
            ("HS256", _) => {}
            ("RS256" | "ES256", Some(_)) => {}
            ("RS256" | "ES256", None) => bail!("auth.public_key_file is required with auth.algorithm = {}", self.auth_algorithm),
            (other, _) => bail!("auth.algorithm must be HS256, RS256 or ES256, not {other}"),
        }
        if self.hl7.mrn_identifier_type.trim().is_empty() {
            bail!("hl7.mrn_identifier_type must not be empty");
        }
        if self.mllp.idle_timeout.is_zero() {
            bail!("mllp.idle_timeout_secs must be at least 1");
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
        if let Some(window) = value {
            if let Some(slot) = policy.windows.iter_mut().find(|(s, _)| *s == severity) {
                slot.1 = Some(window);
            }
        }
    }
    if let Some(units) = file.units {
        policy.units = units;
    }
    if let Some(roles) = file.roles {
        policy.roles = roles;
    }
    policy
}

fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("config file {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file_and_unknown_keys_are_named() {
        let dir = std::env::temp_dir().join(format!("vigil-cfg-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("vigil.toml");
        std::fs::write(&path, "http_addr = \"127.0.0.1:9000\"\nmllp_addr = \"127.0.0.1:9001\"\n[mllp]\nmax_frame_bytes = 4096\n").unwrap();
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
    fn hl7_section_sets_identity_zone_and_unsupported_policy() {
        let dir = std::env::temp_dir().join(format!("vigil-cfg-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("vigil.toml");
        let args = ServeArgs { config: Some(path.clone()), ..ServeArgs::default() };
        std::fs::write(&path, "[hl7]\nmrn_identifier_type = \"PI\"\ndefault_utc_offset = \"-05:00\"\nunsupported = \"ignore\"\n").unwrap();
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
}
