//! The names a rule may trigger on: the event kinds and every canonical name of the shipped
//! vocabulary (schemas/codes/observations.json), derived from it rather than kept by hand, so
//! an analyte added to the vocabulary is a trigger at once.

use std::sync::LazyLock;

use crate::vocab::Vocabulary;

/// Event kinds a rule may trigger on besides observation names.
pub const EVENT_KINDS: &[&str] = &["order", "administration", "allergy", "census", "merge"];

/// Every trigger name: the event kinds, then the vocabulary's canonical names in its order.
pub static KNOWN_TRIGGERS: LazyLock<Vec<&'static str>> = LazyLock::new(|| {
    static VOCABULARY: LazyLock<Vocabulary> = LazyLock::new(Vocabulary::shipped);
    EVENT_KINDS.iter().copied().chain(VOCABULARY.names().iter().map(String::as_str)).collect()
});

/// Whether `name` is an event kind or a canonical name. Unknown names are a lint warning, not
/// an error, so a rule can ship before its code mapping.
pub fn is_known_trigger(name: &str) -> bool {
    KNOWN_TRIGGERS.contains(&name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triggers_are_the_event_kinds_and_the_vocabulary_each_once() {
        let names = Vocabulary::shipped().names().to_vec();
        assert_eq!(KNOWN_TRIGGERS.len(), EVENT_KINDS.len() + names.len());
        let mut unique = KNOWN_TRIGGERS.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), KNOWN_TRIGGERS.len(), "no event kind is also an analyte name");
        for name in ["order", "hr", "consciousness", "troponin_i", "aptt"] {
            assert!(is_known_trigger(name), "{name}");
        }
        assert!(!is_known_trigger("troponin"), "split into troponin_i and troponin_t");
    }
}
