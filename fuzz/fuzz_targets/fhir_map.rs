//! Arbitrary bytes as a FHIR resource: the bounded parser, then every mapping (each resource
//! type Vigil accepts, whatever `resourceType` says). Must never panic; every refusal names an
//! element.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vigil::crypto::BlindIndex;
use vigil::ingest::fhir::{RESOURCES, json, map_resource};
use vigil::ingest::map::Mapper;
use vigil::vocab::Vocabulary;

fuzz_target!(|data: &[u8]| {
    let Ok(mut value) = json::parse(data, 32) else { return };
    let mapper = Mapper::new(Vocabulary::shipped(), BlindIndex::new(&[7; 32]));
    let at = time::OffsetDateTime::UNIX_EPOCH;
    for row in RESOURCES {
        if let Some(object) = value.as_object_mut() {
            object.insert("resourceType".into(), row.name.into());
        }
        if let Err(issues) = map_resource(&mapper, &value, at) {
            assert!(!issues.is_empty() && issues.iter().all(|i| !i.expression.is_empty()), "{issues:?}");
        }
    }
});
