//! Patient identity, whatever the feed: which assigning authority a patient identifier belongs
//! to. An HL7 v2 PID-3 names it with an HD (namespace, universal id, universal id type), a FHIR
//! `Identifier` with a `system` URI. Both become the one authority string the blind index
//! hashes with the MRN, so the same patient sent over both feeds is one [`PatientId`], one
//! actor and one patient view.
//!
//! Per the HL7 v2-to-FHIR mapping, an authority with an ISO OID (HD-2, HD-3 `ISO`) is the
//! system `urn:oid:<OID>`; a namespace-only authority (HD-1) has a system only through the
//! configured table (`[fhir] identifier_systems`). The table maps a namespace to its system,
//! and a patient keeps the authority string it has always had: the namespace as sent when the
//! table names it, else `urn:oid:<OID>`, else the namespace. A FHIR system that is neither in
//! the table nor an OID names no authority Vigil can match, and is refused, never guessed.
//!
//! [`PatientId`]: vigil_actors::PatientId

use std::collections::{BTreeMap, HashMap};

/// The configured namespace <-> system table, checked.
#[derive(Debug, Clone, Default)]
pub struct Authorities {
    /// Namespace (HD-1) -> FHIR system.
    systems: HashMap<String, String>,
    /// FHIR system -> namespace.
    namespaces: HashMap<String, String>,
}

/// Why a configured identifier-system table cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthorityError {
    /// An empty namespace or system.
    #[error("identifier_systems: namespaces and systems must not be empty")]
    Empty,
    /// Two namespaces share a system: a FHIR identifier would name two authorities.
    #[error("identifier_systems: system {system} is given to both {first} and {second}")]
    SharedSystem {
        /// The system.
        system: String,
        /// One namespace.
        first: String,
        /// The other.
        second: String,
    },
    /// A system that is no absolute URI.
    #[error("identifier_systems: system {0:?} of a namespace must be an absolute URI (http..., urn:...)")]
    NotUri(String),
}

impl Authorities {
    /// From `namespace -> system` pairs (`[fhir] identifier_systems`).
    pub fn new(table: &BTreeMap<String, String>) -> Result<Self, AuthorityError> {
        let mut authorities = Authorities::default();
        for (namespace, system) in table {
            let (namespace, system) = (namespace.trim(), system.trim());
            if namespace.is_empty() || system.is_empty() {
                return Err(AuthorityError::Empty);
            }
            if !(system.starts_with("urn:") || system.starts_with("http://") || system.starts_with("https://")) {
                return Err(AuthorityError::NotUri(system.to_string()));
            }
            if let Some(first) = authorities.namespaces.insert(system.to_string(), namespace.to_string()) {
                return Err(AuthorityError::SharedSystem {
                    system: system.to_string(),
                    first,
                    second: namespace.to_string(),
                });
            }
            authorities.systems.insert(namespace.to_string(), system.to_string());
        }
        Ok(authorities)
    }

    /// The authority of an HL7 HD: `urn:oid:<OID>` for an ISO OID (the namespace the table
    /// gives that system, if any), else the namespace as sent (possibly empty).
    pub fn of_hd(&self, namespace: &str, universal_id: &str, universal_id_type: &str) -> String {
        let universal_id = universal_id.trim();
        if universal_id_type.trim().eq_ignore_ascii_case("ISO") && is_oid(universal_id) {
            let system = format!("urn:oid:{universal_id}");
            return self.namespaces.get(&system).cloned().unwrap_or(system);
        }
        namespace.trim().to_string()
    }

    /// The authority of a FHIR `Identifier.system`: the namespace the table gives it, else
    /// the system itself when it is an OID; `None` when Vigil cannot match it to any feed.
    pub fn of_system(&self, system: &str) -> Option<String> {
        let system = system.trim();
        if let Some(namespace) = self.namespaces.get(system) {
            return Some(namespace.clone());
        }
        let oid = system.strip_prefix("urn:oid:")?;
        is_oid(oid).then(|| system.to_string())
    }

    /// The FHIR system of an authority (for answers that name a patient's identifier).
    pub fn system_of(&self, authority: &str) -> Option<String> {
        if authority.starts_with("urn:oid:") {
            return Some(authority.to_string());
        }
        self.systems.get(authority).cloned()
    }
}

/// An ISO OID: dot-separated decimal arcs, at least two, no leading zeros.
fn is_oid(text: &str) -> bool {
    let arcs: Vec<&str> = text.split('.').collect();
    arcs.len() >= 2
        && arcs
            .iter()
            .all(|a| !a.is_empty() && a.bytes().all(|b| b.is_ascii_digit()) && (a.len() == 1 || !a.starts_with('0')))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn an_oid_authority_is_its_urn_and_a_namespace_needs_the_table() {
        let a = Authorities::new(&table(&[("HOSP", "http://hospital.example.org/mrn")])).unwrap();
        assert_eq!(a.of_hd("HOSP", "", ""), "HOSP");
        assert_eq!(a.of_system("http://hospital.example.org/mrn").as_deref(), Some("HOSP"));
        assert_eq!(a.of_hd("LAB", "1.2.840.99.1", "ISO"), "urn:oid:1.2.840.99.1");
        assert_eq!(a.of_hd("", "1.2.840.99.1", "iso"), "urn:oid:1.2.840.99.1");
        assert_eq!(a.of_system("urn:oid:1.2.840.99.1").as_deref(), Some("urn:oid:1.2.840.99.1"));
        assert_eq!(a.of_system("http://other.example.org/mrn"), None, "an unknown system is no authority");
        assert_eq!(a.of_system("urn:oid:1.02.3"), None, "not an OID");
        assert_eq!(a.of_system(""), None);
        assert_eq!(a.of_hd("LAB", "1.2.3", "DNS"), "LAB", "only an ISO universal id is an OID");
        assert_eq!(a.system_of("HOSP").as_deref(), Some("http://hospital.example.org/mrn"));
        assert_eq!(a.system_of("urn:oid:1.2.3").as_deref(), Some("urn:oid:1.2.3"));
        assert_eq!(a.system_of("LAB"), None);
    }

    #[test]
    fn a_namespace_configured_with_an_oid_system_is_one_authority_however_it_is_sent() {
        let a = Authorities::new(&table(&[("HOSP", "urn:oid:2.16.840.1.113883.19.5")])).unwrap();
        let namespace_only = a.of_hd("HOSP", "", "");
        assert_eq!(a.of_hd("HOSP", "2.16.840.1.113883.19.5", "ISO"), namespace_only);
        assert_eq!(a.of_hd("", "2.16.840.1.113883.19.5", "ISO"), namespace_only);
        assert_eq!(a.of_system("urn:oid:2.16.840.1.113883.19.5"), Some(namespace_only));
    }

    #[test]
    fn a_table_that_would_name_two_authorities_is_refused() {
        let shared = table(&[("A", "urn:oid:1.2.3"), ("B", "urn:oid:1.2.3")]);
        assert!(matches!(Authorities::new(&shared), Err(AuthorityError::SharedSystem { .. })));
        assert_eq!(Authorities::new(&table(&[("A", " ")])).unwrap_err(), AuthorityError::Empty);
        assert!(matches!(Authorities::new(&table(&[("A", "hospital-mrn")])), Err(AuthorityError::NotUri(_))));
    }
}
