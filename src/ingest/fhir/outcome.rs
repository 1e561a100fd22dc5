//! What the FHIR feed answers besides success: OperationOutcome resources, each issue naming
//! the element it is about (`expression`, FHIRPath-like) and saying why in words that carry
//! no patient data (codes, units and element names only, never a value that could be PHI).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// The media type of every FHIR answer.
pub const FHIR_JSON: &str = "application/fhir+json";

/// Issue severity (FHIR `IssueSeverity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The request failed.
    Error,
    /// Accepted, but part of it was not used.
    Warning,
    /// For the record.
    Information,
}

impl Severity {
    fn code(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Information => "information",
        }
    }
}

/// One OperationOutcome issue.
#[derive(Debug, Clone, PartialEq)]
pub struct Issue {
    /// How bad.
    pub severity: Severity,
    /// FHIR `IssueType` code (`invalid`, `required`, `value`, `not-found`, `too-costly`, ...).
    pub code: &'static str,
    /// The element, FHIRPath-like (`Observation.valueQuantity.unit`); empty for the request.
    pub expression: String,
    /// Why, with no patient data in it.
    pub diagnostics: String,
}

impl Issue {
    /// An error.
    pub fn error(code: &'static str, expression: impl Into<String>, diagnostics: impl Into<String>) -> Self {
        Issue { severity: Severity::Error, code, expression: expression.into(), diagnostics: diagnostics.into() }
    }

    /// An element of the wrong shape.
    pub fn invalid(expression: impl Into<String>, diagnostics: impl Into<String>) -> Self {
        Issue::error("invalid", expression, diagnostics)
    }

    /// A required element that is missing.
    pub fn required(expression: impl Into<String>) -> Self {
        Issue::error("required", expression, "is required")
    }

    /// A warning: part of the resource was not used.
    pub fn warning(code: &'static str, expression: impl Into<String>, diagnostics: impl Into<String>) -> Self {
        Issue { severity: Severity::Warning, code, expression: expression.into(), diagnostics: diagnostics.into() }
    }

    /// Information.
    pub fn information(expression: impl Into<String>, diagnostics: impl Into<String>) -> Self {
        Issue {
            severity: Severity::Information,
            code: "informational",
            expression: expression.into(),
            diagnostics: diagnostics.into(),
        }
    }

    /// The same issue about an element further down: `Bundle.entry[3].resource` + its path.
    pub fn within(mut self, prefix: &str) -> Self {
        self.expression = if self.expression.is_empty() {
            prefix.to_string()
        } else {
            // `Observation.code` inside an entry is `Bundle.entry[3].resource.code`.
            let rest = self.expression.split_once('.').map_or("", |(_, r)| r);
            if rest.is_empty() { prefix.to_string() } else { format!("{prefix}.{rest}") }
        };
        self
    }

    fn to_json(&self) -> Value {
        let mut issue = json!({ "severity": self.severity.code(), "code": self.code, "diagnostics": self.diagnostics });
        if !self.expression.is_empty() {
            issue["expression"] = json!([self.expression]);
        }
        issue
    }
}

/// An OperationOutcome of `issues` (at least one: FHIR requires it).
pub fn operation_outcome(issues: &[Issue]) -> Value {
    let issues: Vec<Value> = if issues.is_empty() {
        vec![Issue::information("", "all ok").to_json()]
    } else {
        issues.iter().map(Issue::to_json).collect()
    };
    json!({ "resourceType": "OperationOutcome", "issue": issues })
}

/// A refused request: its status and what was wrong.
#[derive(Debug, Clone, PartialEq)]
pub struct FhirError {
    /// 400, 401, 403, 404, 413, 415, 422, 503 ...
    pub status: StatusCode,
    /// At least one error.
    pub issues: Vec<Issue>,
}

impl FhirError {
    /// A refusal with one issue.
    pub fn new(status: StatusCode, issue: Issue) -> Self {
        FhirError { status, issues: vec![issue] }
    }

    /// 400: the request is not FHIR JSON Vigil can read.
    pub fn bad_request(issue: Issue) -> Self {
        FhirError::new(StatusCode::BAD_REQUEST, issue)
    }

    /// 422: well-formed, but its content cannot be used (unknown patient, no usable value).
    pub fn unprocessable(issues: Vec<Issue>) -> Self {
        FhirError { status: StatusCode::UNPROCESSABLE_ENTITY, issues }
    }

    /// 503: not stored through no fault of the sender; retry. The body says no more.
    pub fn retry() -> Self {
        FhirError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            Issue::error("transient", "", "not stored; send again (a resend is recognised and stored once)"),
        )
    }

    /// The OperationOutcome.
    pub fn outcome(&self) -> Value {
        operation_outcome(&self.issues)
    }
}

impl From<Issue> for FhirError {
    /// An element-level issue is a 400 when it is about shape (`invalid`, `required`,
    /// `structure`) and a 422 otherwise (values, references, business rules).
    fn from(issue: Issue) -> Self {
        let status = match issue.code {
            "invalid" | "required" | "structure" => StatusCode::BAD_REQUEST,
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        FhirError::new(status, issue)
    }
}

/// A FHIR JSON answer.
pub fn fhir_response(status: StatusCode, body: &Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    response
}

impl IntoResponse for FhirError {
    fn into_response(self) -> Response {
        fhir_response(self.status, &self.outcome())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues_name_their_element_and_move_into_a_bundle_entry() {
        let issue = Issue::invalid("Observation.valueQuantity.unit", "unknown unit").within("Bundle.entry[3].resource");
        assert_eq!(issue.expression, "Bundle.entry[3].resource.valueQuantity.unit");
        assert_eq!(
            Issue::required("Observation").within("Bundle.entry[0].resource").expression,
            "Bundle.entry[0].resource"
        );
        let outcome = operation_outcome(&[issue]);
        assert_eq!(outcome["issue"][0]["expression"][0], "Bundle.entry[3].resource.valueQuantity.unit");
        assert_eq!(outcome["issue"][0]["severity"], "error");
        assert_eq!(operation_outcome(&[])["issue"][0]["severity"], "information", "an outcome has an issue");
        assert_eq!(FhirError::from(Issue::required("Observation.status")).status, StatusCode::BAD_REQUEST);
        assert_eq!(
            FhirError::from(Issue::error("not-found", "Observation.subject", "unknown")).status,
            StatusCode::UNPROCESSABLE_ENTITY
        );
    }
}
