//! FHIR JSON in, bounded and tolerant: [`parse`] refuses a body nested deeper than the limit
//! before serde_json builds anything, and [`El`] reads only the elements Vigil uses, each
//! with its FHIRPath-like location (`Observation.component[1].valueQuantity.unit`) for the
//! OperationOutcome. Elements Vigil does not read are never looked at, so a valid resource is
//! never refused for carrying them.

use serde_json::Value;

use super::outcome::Issue;

/// Why a body is not JSON Vigil reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    /// Nested deeper than the limit.
    TooDeep(usize),
    /// Not JSON (serde's message: a position, never content).
    Syntax(String),
}

/// Parse a JSON body nested at most `max_depth` levels (objects and arrays).
pub fn parse(bytes: &[u8], max_depth: usize) -> Result<Value, BodyError> {
    check_depth(bytes, max_depth)?;
    serde_json::from_slice(bytes).map_err(|e| BodyError::Syntax(format!("line {} column {}", e.line(), e.column())))
}

/// One pass over the bytes counting `{` / `[` outside strings: cheap, and it runs before any
/// allocation a hostile nesting could multiply.
fn check_depth(bytes: &[u8], max_depth: usize) -> Result<(), BodyError> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > max_depth {
                    return Err(BodyError::TooDeep(max_depth));
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// An element of a resource with the path that names it.
#[derive(Clone, Debug)]
pub struct El<'a> {
    value: &'a Value,
    path: String,
}

impl<'a> El<'a> {
    /// The root element, named `path` (the resource type).
    pub fn root(value: &'a Value, path: impl Into<String>) -> Self {
        El { value, path: path.into() }
    }

    /// The FHIRPath-like location.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The JSON value.
    pub fn value(&self) -> &'a Value {
        self.value
    }

    /// The location of a child, for issues about an element that is absent.
    pub fn child_path(&self, name: &str) -> String {
        format!("{}.{name}", self.path)
    }

    /// A child element; `None` when absent or `null`.
    pub fn get(&self, name: &str) -> Option<El<'a>> {
        match self.value.get(name) {
            None | Some(Value::Null) => None,
            Some(value) => Some(El { value, path: self.child_path(name) }),
        }
    }

    /// A child that must be an object when present.
    pub fn object(&self, name: &str) -> Result<Option<El<'a>>, Issue> {
        match self.get(name) {
            Some(el) if el.value.is_object() => Ok(Some(el)),
            Some(el) => Err(Issue::invalid(el.path, "must be a JSON object")),
            None => Ok(None),
        }
    }

    /// A child that must be an array when present (absent: empty); each item named `[i]`.
    pub fn array(&self, name: &str) -> Result<Vec<El<'a>>, Issue> {
        match self.get(name) {
            None => Ok(Vec::new()),
            Some(El { value: Value::Array(items), path }) => Ok(items
                .iter()
                .enumerate()
                .filter(|(_, v)| !v.is_null())
                .map(|(i, value)| El { value, path: format!("{path}[{i}]") })
                .collect()),
            Some(el) => Err(Issue::invalid(el.path, "must be a JSON array")),
        }
    }

    /// A child that must be a string when present.
    pub fn str(&self, name: &str) -> Result<Option<&'a str>, Issue> {
        match self.get(name) {
            Some(El { value: Value::String(s), .. }) => Ok(Some(s.as_str())),
            Some(el) => Err(Issue::invalid(el.path, "must be a string")),
            None => Ok(None),
        }
    }

    /// A child string that must be present and not blank.
    pub fn required_str(&self, name: &str) -> Result<&'a str, Issue> {
        match self.str(name)? {
            Some(s) if !s.trim().is_empty() => Ok(s),
            _ => Err(Issue::required(self.child_path(name))),
        }
    }

    /// A child that must be a finite number when present.
    pub fn number(&self, name: &str) -> Result<Option<f64>, Issue> {
        match self.get(name) {
            Some(El { value: Value::Number(n), path }) => {
                n.as_f64().filter(|v| v.is_finite()).map(Some).ok_or_else(|| Issue::invalid(path, "must be a number"))
            }
            Some(el) => Err(Issue::invalid(el.path, "must be a JSON number")),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting_beyond_the_limit_is_refused_before_parsing_and_strings_do_not_count() {
        assert_eq!(parse(b"[[[1]]]", 3).unwrap(), serde_json::json!([[[1]]]));
        assert_eq!(parse(b"[[[[1]]]]", 3), Err(BodyError::TooDeep(3)));
        let brackets_in_strings = br#"{"a": "[[[[[[\"{{{{", "b": ["]]]]"]}"#;
        assert!(parse(brackets_in_strings, 2).is_ok());
        let deep = "[".repeat(100_000);
        assert_eq!(parse(deep.as_bytes(), 32), Err(BodyError::TooDeep(32)));
        assert!(matches!(parse(b"{\"a\":", 32), Err(BodyError::Syntax(_))));
    }

    #[test]
    fn elements_are_read_with_their_path_and_wrong_types_are_named() {
        let v = serde_json::json!({"a": {"b": [{"c": "x"}, null, {"c": 3}]}, "n": 1.5, "s": "", "z": null});
        let root = El::root(&v, "Observation");
        let items = root.object("a").unwrap().unwrap().array("b").unwrap();
        assert_eq!(items.len(), 2, "null items are skipped");
        assert_eq!(items[0].str("c").unwrap(), Some("x"));
        let err = items[1].str("c").unwrap_err();
        assert_eq!(err.expression, "Observation.a.b[2].c");
        assert_eq!(root.number("n").unwrap(), Some(1.5));
        assert_eq!(root.required_str("s").unwrap_err().expression, "Observation.s");
        assert!(root.get("z").is_none() && root.str("missing").unwrap().is_none());
        assert_eq!(root.array("n").unwrap_err().expression, "Observation.n");
    }
}
