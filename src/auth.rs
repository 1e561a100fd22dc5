//! Console authentication: signed JWTs (HS256 for now) carrying a role and the units the
//! holder may see. `/ws` and the API verify them; `vigil token` issues them.

use serde::{Deserialize, Serialize};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};

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

/// Issues and verifies tokens with one key; the algorithm is pinned.
#[derive(Clone)]
pub struct Auth {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

const ISSUER: &str = "vigil";

impl Auth {
    /// HS256 with `secret`.
    pub fn hs256(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.leeway = 5;
        Auth {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// A token for `sub` with `role` over `units`, valid for `ttl`.
    pub fn issue(&self, sub: &str, role: Role, units: Vec<String>, ttl: time::Duration) -> String {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let claims = Claims {
            sub: sub.into(),
            role,
            units,
            iat: now,
            exp: now + ttl.whole_seconds(),
            iss: ISSUER.into(),
        };
        // Encoding HS256 claims that serialize cannot fail.
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .unwrap_or_default()
    }

    /// Verify a token.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Invalid,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
