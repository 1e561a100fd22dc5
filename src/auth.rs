//! Console authentication: signed JWTs (HS256, or RS256/ES256 from an identity provider)
//! carrying a role and the units the holder may see. `http::extract` verifies them for every
//! route and the WebSocket; `vigil token` issues them. Time claims (`exp`, `nbf`, `iat` and the
//! lifetime cap) are checked here against an injectable [`Clock`], with one leeway.

use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use vigil_actors::{Clock, SystemClock};

/// Roles of console users.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Rapid response team.
    Rrt,
    /// Nurse.
    Nurse,
    /// Charge nurse: a nurse who also assigns nurses to beds for a shift, and the second step
    /// of the default escalation chain.
    Charge,
    /// Physician.
    Physician,
    /// Pharmacist.
    Pharmacist,
    /// Clinical informaticist.
    Informaticist,
    /// Administrator.
    Admin,
    /// A device gateway or interface engine: may write to `/fhir`, reads no patient data.
    Gateway,
}

/// What a token says.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    /// Subject (user id).
    pub sub: String,
    /// Role.
    pub role: Role,
    /// Units the holder may see; `*` means every unit.
    pub units: Vec<String>,
    /// Issued at (Unix seconds).
    pub iat: i64,
    /// Expires at (Unix seconds).
    pub exp: i64,
    /// Issuer.
    pub iss: String,
    /// Not before (Unix seconds); absent means from `iat`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    /// Audience: one value or several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<Audience>,
}

/// The `aud` claim: a string or an array of strings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    /// One audience.
    One(String),
    /// Several.
    Many(Vec<String>),
}

impl Claims {
    /// Whether the holder may see `unit`. A gateway writes and sees no unit, whatever its
    /// token lists.
    pub fn may_see(&self, unit: &str) -> bool {
        self.role != Role::Gateway && self.units.iter().any(|u| u == "*" || u == unit)
    }
}

/// Why a token was refused. The text is safe to show to the client.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No token.
    #[error("missing token: pass ?token= or an Authorization: Bearer header")]
    Missing,
    /// Expired.
    #[error("token expired")]
    Expired,
    /// `nbf` (or `iat`) lies in the future.
    #[error("token not yet valid")]
    NotYetValid,
    /// `exp - iat` exceeds the configured maximum lifetime.
    #[error("token lifetime exceeds the maximum of {0} seconds")]
    LifetimeTooLong(i64),
    /// An audience is configured and the token names none of it.
    #[error("token audience not accepted")]
    WrongAudience,
    /// Bad signature, wrong algorithm, malformed.
    #[error("invalid token")]
    Invalid,
}

/// Issues and verifies tokens with one key; the algorithm is pinned, so a token signed any
/// other way (including `none` or an HS256 token made with a public key) is refused.
#[derive(Clone)]
pub struct Auth {
    algorithm: Algorithm,
    /// Absent for an external identity provider whose private key we never see.
    encoding: Option<EncodingKey>,
    decoding: DecodingKey,
    validation: Validation,
    policy: TokenPolicy,
    clock: Arc<dyn Clock>,
}

/// What a token must satisfy beyond its signature and issuer (`[auth]` in the configuration).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenPolicy {
    /// Longest accepted `exp - iat`, in seconds.
    pub max_lifetime_secs: i64,
    /// Accepted `aud` values; empty means `aud` is not checked.
    pub audience: Vec<String>,
}

/// Default [`TokenPolicy::max_lifetime_secs`]: twelve hours, one shift.
pub const DEFAULT_MAX_TOKEN_LIFETIME_SECS: i64 = 12 * 3600;

/// Seconds of clock skew tolerated on `exp`, `nbf` and `iat`.
pub const LEEWAY_SECS: i64 = 5;

impl Default for TokenPolicy {
    fn default() -> Self {
        TokenPolicy { max_lifetime_secs: DEFAULT_MAX_TOKEN_LIFETIME_SECS, audience: Vec::new() }
    }
}

/// Key material for a signing algorithm.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The PEM did not parse as a key for the algorithm.
    #[error("{0}")]
    Pem(String),
    /// The algorithm is not one we accept.
    #[error("unsupported algorithm {0}: use HS256, RS256 or ES256")]
    Algorithm(String),
}

const ISSUER: &str = "vigil";

/// The token of an `Authorization: Bearer <token>` header, trimmed. Read by the one claims
/// extractor, `http::extract::Authenticated`.
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?;
    value.strip_prefix("Bearer ").map(str::trim)
}

impl Auth {
    /// HS256 with `secret`.
    pub fn hs256(secret: &[u8]) -> Self {
        Auth::pinned(
            Algorithm::HS256,
            Some(EncodingKey::from_secret(secret)),
            DecodingKey::from_secret(secret),
            &[ISSUER],
        )
    }

    /// RS256 or ES256 with an identity provider's public key (PEM), accepting tokens from
    /// `issuers` (our own `vigil` when empty). A private key (PEM) lets `vigil token` issue too.
    pub fn asymmetric(
        algorithm: &str,
        public_pem: &[u8],
        private_pem: Option<&[u8]>,
        issuers: &[String],
    ) -> Result<Self, KeyError> {
        let pem = |e: jsonwebtoken::errors::Error| KeyError::Pem(e.to_string());
        let (alg, decoding, encoding) = match algorithm {
            "RS256" => (
                Algorithm::RS256,
                DecodingKey::from_rsa_pem(public_pem).map_err(pem)?,
                private_pem.map(EncodingKey::from_rsa_pem).transpose().map_err(pem)?,
            ),
            "ES256" => (
                Algorithm::ES256,
                DecodingKey::from_ec_pem(public_pem).map_err(pem)?,
                private_pem.map(EncodingKey::from_ec_pem).transpose().map_err(pem)?,
            ),
            other => return Err(KeyError::Algorithm(other.to_string())),
        };
        let issuers: Vec<&str> =
            if issuers.is_empty() { vec![ISSUER] } else { issuers.iter().map(String::as_str).collect() };
        Ok(Auth::pinned(alg, encoding, decoding, &issuers))
    }

    fn pinned(algorithm: Algorithm, encoding: Option<EncodingKey>, decoding: DecodingKey, issuers: &[&str]) -> Self {
        let mut validation = Validation::new(algorithm);
        validation.algorithms = vec![algorithm];
        validation.set_issuer(issuers);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        // Time claims are checked in `check_time` against our clock; aud in `with_policy`.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        Auth { algorithm, encoding, decoding, validation, policy: TokenPolicy::default(), clock: Arc::new(SystemClock) }
    }

    /// Enforce `policy` (lifetime cap, audience).
    pub fn with_policy(mut self, policy: TokenPolicy) -> Self {
        self.validation.validate_aud = !policy.audience.is_empty();
        if self.validation.validate_aud {
            self.validation.set_audience(&policy.audience);
            self.validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
        }
        self.policy = policy;
        self
    }

    /// Check time claims against `clock` instead of the wall clock (tests).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Now, in Unix seconds, by this verifier's clock.
    pub fn now(&self) -> i64 {
        self.clock.now().unix_timestamp()
    }

    /// Whether `claims` are still within their validity now (a session re-checks this on every
    /// command: a token that expires while a WebSocket is open stops acting).
    pub fn check_time(&self, claims: &Claims) -> Result<(), AuthError> {
        let now = self.now();
        if claims.exp.saturating_add(LEEWAY_SECS) <= now {
            return Err(AuthError::Expired);
        }
        let not_before = claims.nbf.unwrap_or(claims.iat).max(claims.iat);
        if not_before.saturating_sub(LEEWAY_SECS) > now {
            return Err(AuthError::NotYetValid);
        }
        Ok(())
    }

    /// Seconds until `claims` stop being accepted by [`Auth::check_time`] (0 when already).
    pub fn secs_left(&self, claims: &Claims) -> u64 {
        u64::try_from(claims.exp.saturating_add(LEEWAY_SECS).saturating_sub(self.now())).unwrap_or(0)
    }

    /// Whether this server can issue tokens (it holds the signing key).
    pub fn can_issue(&self) -> bool {
        self.encoding.is_some()
    }

    /// A token for `sub` with `role` over `units`, valid for `ttl`; empty when this server
    /// does not hold the signing key (an external identity provider issues tokens then).
    pub fn issue(&self, sub: &str, role: Role, units: Vec<String>, ttl: time::Duration) -> String {
        let Some(encoding) = &self.encoding else { return String::new() };
        let now = self.now();
        let claims = Claims {
            sub: sub.into(),
            role,
            units,
            iat: now,
            exp: now.saturating_add(ttl.whole_seconds()),
            iss: ISSUER.into(),
            nbf: Some(now),
            aud: self.policy.audience.first().cloned().map(Audience::One),
        };
        // Encoding claims that serialize with a key that parsed cannot fail.
        jsonwebtoken::encode(&Header::new(self.algorithm), &claims, encoding).unwrap_or_default()
    }

    /// Verify a token: signature and algorithm, issuer, audience (when configured), then
    /// `exp`, `nbf`/`iat` and the lifetime cap.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidAudience => AuthError::WrongAudience,
                jsonwebtoken::errors::ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => {
                    AuthError::WrongAudience
                }
                _ => AuthError::Invalid,
            })?;
        self.check_time(&claims)?;
        if claims.exp.saturating_sub(claims.iat) > self.policy.max_lifetime_secs {
            return Err(AuthError::LifetimeTooLong(self.policy.max_lifetime_secs));
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_token_is_read_from_the_authorization_header_only() {
        let mut headers = axum::http::HeaderMap::new();
        assert_eq!(bearer(&headers), None);
        headers.insert(axum::http::header::AUTHORIZATION, "Bearer  abc.def ".parse().unwrap());
        assert_eq!(bearer(&headers), Some("abc.def"));
        headers.insert(axum::http::header::AUTHORIZATION, "Basic dXNlcjpwYXNz".parse().unwrap());
        assert_eq!(bearer(&headers), None, "another scheme is no token");
    }

    #[test]
    fn tokens_verify_and_forged_or_expired_ones_are_refused() {
        let auth = Auth::hs256(b"0123456789abcdef0123456789abcdef");
        let token = auth.issue("u1", Role::Nurse, vec!["ICU".into()], time::Duration::hours(1));
        let claims = auth.verify(&token).unwrap();
        assert_eq!(claims.role, Role::Nurse);
        assert!(claims.may_see("ICU") && !claims.may_see("WARD3"));
        let other = Auth::hs256(b"another-secret-another-secret-xx");
        assert!(matches!(other.verify(&token), Err(AuthError::Invalid)));
        let expired = auth.issue("u1", Role::Rrt, vec!["*".into()], time::Duration::hours(-1));
        assert!(matches!(auth.verify(&expired), Err(AuthError::Expired)));
        assert!(matches!(auth.verify("garbage"), Err(AuthError::Invalid)));
    }

    fn manual_clock() -> Arc<vigil_actors::fakes::ManualClock> {
        Arc::new(vigil_actors::fakes::ManualClock(std::sync::Mutex::new(time::OffsetDateTime::now_utc())))
    }

    fn advance(clock: &vigil_actors::fakes::ManualClock, secs: i64) {
        let mut now = clock.0.lock().unwrap();
        *now += time::Duration::seconds(secs);
    }

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn a_token_is_refused_before_its_nbf_and_after_its_exp_by_the_injected_clock() {
        let clock = manual_clock();
        let auth = Auth::hs256(SECRET).with_clock(clock.clone());
        let token = auth.issue("u1", Role::Nurse, vec!["ICU".into()], time::Duration::seconds(60));
        let claims = auth.verify(&token).unwrap();
        assert_eq!(claims.nbf, Some(claims.iat), "issued tokens carry nbf");
        advance(&clock, -(LEEWAY_SECS + 1));
        assert!(matches!(auth.verify(&token), Err(AuthError::NotYetValid)), "used before its nbf");
        advance(&clock, LEEWAY_SECS + 1 + 60 + LEEWAY_SECS);
        assert!(matches!(auth.verify(&token), Err(AuthError::Expired)));
        assert!(matches!(auth.check_time(&claims), Err(AuthError::Expired)), "a session re-check refuses it");
        assert_eq!(auth.secs_left(&claims), 0);
    }

    #[test]
    fn an_explicit_nbf_in_the_future_is_refused() {
        let auth = Auth::hs256(SECRET);
        let now = auth.now();
        let claims = Claims {
            sub: "u1".into(),
            role: Role::Rrt,
            units: vec!["*".into()],
            iat: now,
            exp: now + 600,
            iss: ISSUER.into(),
            nbf: Some(now + 300),
            aud: None,
        };
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(SECRET)).unwrap();
        let refused = auth.verify(&token).unwrap_err();
        assert!(matches!(refused, AuthError::NotYetValid));
        assert_eq!(refused.to_string(), "token not yet valid");
    }

    #[test]
    fn a_token_living_longer_than_the_maximum_is_refused() {
        let auth = Auth::hs256(SECRET).with_policy(TokenPolicy { max_lifetime_secs: 3600, ..TokenPolicy::default() });
        let ok = auth.issue("u1", Role::Rrt, vec!["*".into()], time::Duration::hours(1));
        assert!(auth.verify(&ok).is_ok(), "exactly the maximum is accepted");
        let long = auth.issue("u1", Role::Rrt, vec!["*".into()], time::Duration::hours(24));
        let refused = auth.verify(&long).unwrap_err();
        assert!(matches!(refused, AuthError::LifetimeTooLong(3600)));
        assert!(refused.to_string().contains("3600"), "{refused}");
        let default = Auth::hs256(SECRET);
        assert!(default.verify(&default.issue("u", Role::Rrt, vec![], time::Duration::hours(12))).is_ok());
        assert!(matches!(
            default.verify(&default.issue("u", Role::Rrt, vec![], time::Duration::hours(13))),
            Err(AuthError::LifetimeTooLong(_))
        ));
    }

    #[test]
    fn the_audience_is_checked_when_configured() {
        let console = TokenPolicy { audience: vec!["vigil-console".into()], ..TokenPolicy::default() };
        let auth = Auth::hs256(SECRET).with_policy(console.clone());
        let token = auth.issue("u1", Role::Rrt, vec!["*".into()], time::Duration::hours(1));
        assert_eq!(auth.verify(&token).unwrap().aud, Some(Audience::One("vigil-console".into())));
        let other =
            Auth::hs256(SECRET).with_policy(TokenPolicy { audience: vec!["billing".into()], ..TokenPolicy::default() });
        let foreign = other.issue("u1", Role::Rrt, vec!["*".into()], time::Duration::hours(1));
        let refused = auth.verify(&foreign).unwrap_err();
        assert!(matches!(refused, AuthError::WrongAudience), "{refused}");
        let unchecked = Auth::hs256(SECRET);
        let none = unchecked.issue("u1", Role::Rrt, vec!["*".into()], time::Duration::hours(1));
        assert!(matches!(auth.verify(&none), Err(AuthError::WrongAudience)), "no aud when one is required");
        assert!(unchecked.verify(&foreign).is_ok(), "without a configured audience aud is not checked");
    }

    fn openssl(args: &[&str], input: Option<&[u8]>) -> Vec<u8> {
        use std::io::Write;
        let mut child = std::process::Command::new("openssl")
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("openssl is needed to make test keys");
        if let Some(input) = input {
            child.stdin.take().unwrap().write_all(input).unwrap();
        }
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        out.stdout
    }

    #[test]
    fn es256_and_rs256_from_an_identity_provider_with_the_algorithm_pinned() {
        for (alg, genkey) in [
            ("ES256", vec!["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]),
            ("RS256", vec!["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]),
        ] {
            let private = openssl(&genkey, None);
            let public = openssl(&["pkey", "-pubout"], Some(&private));
            let idp = Auth::asymmetric(alg, &public, Some(&private), &["https://idp.example".into()]).unwrap();
            let mut token = idp.issue("u7", Role::Physician, vec!["ICU".into()], time::Duration::hours(1));
            // Our issue() stamps iss=vigil; the provider's tokens carry its own issuer.
            assert!(matches!(idp.verify(&token), Err(AuthError::Invalid)), "issuer is checked");
            let verifier = Auth::asymmetric(alg, &public, None, &[]).unwrap();
            assert!(!verifier.can_issue());
            assert_eq!(verifier.verify(&token).unwrap().role, Role::Physician);
            // Algorithm confusion: an HS256 token keyed with the public key is refused.
            let hs = Auth::hs256(&public).issue("u7", Role::Admin, vec!["*".into()], time::Duration::hours(1));
            assert!(matches!(verifier.verify(&hs), Err(AuthError::Invalid)), "{alg}: HS256 token accepted");
            token.push('x');
            assert!(matches!(verifier.verify(&token), Err(AuthError::Invalid)));
        }
        assert!(matches!(Auth::asymmetric("none", b"", None, &[]), Err(KeyError::Algorithm(_))));
    }
}
