//! Keys and keyed hashes. Patient identifiers become opaque ids here (HMAC-SHA-256 blind
//! index), before they reach actor names, logs or store keys; PHI values are sealed with
//! AES-256-GCM ([`KeyRing`]) before they reach the disk. Key material lives outside the data
//! directory.

pub mod cli;
mod keyring;

pub use keyring::{Aad, KeyRing, rotate};

use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use vigil_actors::PatientId;

/// Errors loading or creating key material.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// The key file could not be read or written.
    #[error("key file {path}: {source}")]
    Io {
        /// Which file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The key file does not hold a 32-byte hex key.
    #[error("key file {0} does not hold 64 hex characters")]
    Malformed(String),
    /// Encryption failed.
    #[error("field encryption failed")]
    Seal,
    /// A sealed value could not be decrypted.
    #[error("sealed value does not open: {0}")]
    Open(String),
}

/// Read a 32-byte hex key from `path`, creating it (mode 0600) with random bytes if absent.
pub fn load_or_create_key(path: &Path) -> Result<[u8; 32], CryptoError> {
    let io = |source| CryptoError::Io { path: path.display().to_string(), source };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let bytes = hex::decode(text.trim()).map_err(|_| CryptoError::Malformed(path.display().to_string()))?;
            bytes.try_into().map_err(|_| CryptoError::Malformed(path.display().to_string()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(io)?;
            }
            let key: [u8; 32] = rand::random();
            write_private(path, &hex::encode(key)).map_err(io)?;
            Ok(key)
        }
        Err(e) => Err(io(e)),
    }
}

pub(crate) fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

/// Derives opaque patient ids from (assigning authority, MRN).
#[derive(Clone)]
pub struct BlindIndex {
    mac: Hmac<Sha256>,
}

impl BlindIndex {
    /// An index keyed by `key`.
    pub fn new(key: &[u8; 32]) -> Self {
        // HMAC accepts keys of any length, so this cannot fail for 32 bytes.
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
        BlindIndex { mac }
    }

    /// The opaque id of a patient: 128 bits of HMAC-SHA-256 over authority and MRN, hex.
    pub fn patient_id(&self, authority: &str, mrn: &str) -> PatientId {
        let mut mac = self.mac.clone();
        mac.update(authority.as_bytes());
        mac.update(&[0]);
        mac.update(mrn.as_bytes());
        let digest = mac.finalize().into_bytes();
        PatientId(hex::encode(&digest[..16]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patient_ids_are_stable_keyed_and_opaque() {
        let a = BlindIndex::new(&[1; 32]);
        let b = BlindIndex::new(&[2; 32]);
        let id = a.patient_id("HOSP", "123456");
        assert_eq!(id, a.patient_id("HOSP", "123456"));
        assert_ne!(id, a.patient_id("OTHER", "123456"));
        assert_ne!(id, b.patient_id("HOSP", "123456"), "the id depends on the key");
        assert!(!id.0.contains("123456"));
        assert_eq!(id.0.len(), 32);
    }
}
