//! Console authentication: signed JWTs (HS256 for now) carrying a role and the units the
//! holder may see. `/ws` and the API verify them; `vigil token` issues them.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Roles of console users.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Rapid response team.
    Rrt,
    /// Nurse.
    Nurse,
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
}

impl Claims {
    /// Whether the holder may see `unit`.
    pub fn may_see(&self, unit: &str) -> bool {
        self.units.iter().any(|u| u == "*" || u == unit)
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

/// The token of an `Authorization: Bearer <token>` header, trimmed: the one place a request's
/// token is read (REST, the rules API, webhooks and the WebSocket upgrade).
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
        validation.leeway = 5;
        Auth { algorithm, encoding, decoding, validation }
    }

    /// Whether this server can issue tokens (it holds the signing key).
    pub fn can_issue(&self) -> bool {
        self.encoding.is_some()
    }

    /// A token for `sub` with `role` over `units`, valid for `ttl`; empty when this server
    /// does not hold the signing key (an external identity provider issues tokens then).
    pub fn issue(&self, sub: &str, role: Role, units: Vec<String>, ttl: time::Duration) -> String {
        let Some(encoding) = &self.encoding else { return String::new() };
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let claims =
            Claims { sub: sub.into(), role, units, iat: now, exp: now + ttl.whole_seconds(), iss: ISSUER.into() };
        // Encoding claims that serialize with a key that parsed cannot fail.
        jsonwebtoken::encode(&Header::new(self.algorithm), &claims, encoding).unwrap_or_default()
    }

    /// Verify a token.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation).map(|d| d.claims).map_err(|e| {
            match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Invalid,
            }
        })
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
