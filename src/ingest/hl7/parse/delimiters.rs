//! Delimiters: what MSH-1 and MSH-2 declare, and which characters may be one.

/// Delimiters declared by MSH-1 and MSH-2.
///
/// A delimiter the sender left out of MSH-2 is stored as the delimiter of the
/// enclosing level (missing repetition or escape => `field`, missing
/// subcomponent => `component`). Such a char can never occur inside the text
/// being split, so the level simply has one element and no escapes are decoded;
/// `has_repetition`, `has_escape` and `has_subcomponent` tell which were declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Delimiters {
    pub field: char,
    pub component: char,
    pub repetition: char,
    pub escape: char,
    pub subcomponent: char,
    /// v2.7 truncation character (5th char of MSH-2), if declared.
    pub truncation: Option<char>,
}

impl Default for Delimiters {
    fn default() -> Self {
        Self { field: '|', component: '^', repetition: '~', escape: '\\', subcomponent: '&', truncation: None }
    }
}

impl Delimiters {
    pub fn has_repetition(&self) -> bool {
        self.repetition != self.field
    }

    pub fn has_escape(&self) -> bool {
        self.escape != self.field
    }

    pub fn has_subcomponent(&self) -> bool {
        self.subcomponent != self.component
    }

    /// MSH-2 as it must be written for this set (positional, so it stops at
    /// the first delimiter that was not declared).
    pub fn encoding_characters(&self) -> String {
        let mut s = String::with_capacity(5);
        s.push(self.component);
        if !self.has_repetition() {
            return s;
        }
        s.push(self.repetition);
        if !self.has_escape() {
            return s;
        }
        s.push(self.escape);
        if !self.has_subcomponent() {
            return s;
        }
        s.push(self.subcomponent);
        if let Some(t) = self.truncation {
            s.push(t);
        }
        s
    }

    /// Checks that every declared delimiter is legal and that they are distinct.
    pub fn validate(&self) -> Result<(), String> {
        let declared = [
            Some(self.field),
            Some(self.component),
            self.has_repetition().then_some(self.repetition),
            self.has_escape().then_some(self.escape),
            self.has_subcomponent().then_some(self.subcomponent),
            self.truncation,
        ];
        let mut seen: Vec<char> = Vec::with_capacity(6);
        for c in declared.into_iter().flatten() {
            if !is_legal_delimiter(c) {
                return Err(format!("{c:?} is not a legal delimiter"));
            }
            if seen.contains(&c) {
                return Err(format!("delimiter {c:?} is used twice"));
            }
            seen.push(c);
        }
        Ok(())
    }
}

/// Delimiters must be ASCII punctuation: letters and digits are data, CR/LF end
/// segments, space and controls get trimmed by senders and MLLP framing, and
/// `"` would make the HL7 null `""` ambiguous.
pub fn is_legal_delimiter(c: char) -> bool {
    c.is_ascii_punctuation() && c != '"'
}
