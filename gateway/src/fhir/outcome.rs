//! OperationOutcome: how every error and every warning reaches a FHIR client.

use serde_json::{Value, json};

/// `OperationOutcome.issue.severity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Fatal,
    Error,
    Warning,
    Information,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Fatal => "fatal",
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Information => "information",
        }
    }
}

/// One issue; `code` is from the FHIR IssueType value set (required binding).
#[derive(Debug, Clone, PartialEq)]
pub struct Issue {
    pub severity: Severity,
    pub code: &'static str,
    pub diagnostics: String,
    /// FHIRPath-ish locations, e.g. the query parameter at fault.
    pub expression: Vec<String>,
    /// Codings that machines can act on (e.g. the region that failed, why an answer was cut).
    pub details: Vec<(String, String, String)>,
    /// Extensions on the issue (e.g. how many items a cut left out).
    pub extension: Vec<Value>,
}

impl Issue {
    pub fn new(severity: Severity, code: &'static str, diagnostics: impl Into<String>) -> Self {
        Issue {
            severity,
            code,
            diagnostics: diagnostics.into(),
            expression: Vec::new(),
            details: Vec::new(),
            extension: Vec::new(),
        }
    }

    pub fn at(mut self, expression: impl Into<String>) -> Self {
        self.expression.push(expression.into());
        self
    }

    pub fn with_details(mut self, system: &str, code: &str, display: &str) -> Self {
        self.details
            .push((system.to_owned(), code.to_owned(), display.to_owned()));
        self
    }

    fn to_json(&self) -> Value {
        let mut issue = json!({
            "severity": self.severity.as_str(),
            "code": self.code,
            "diagnostics": self.diagnostics,
        });
        if let Some((_, _, text)) = self.details.first() {
            let coding: Vec<Value> = self
                .details
                .iter()
                .map(|(system, code, display)| {
                    json!({"system": system, "code": code, "display": display})
                })
                .collect();
            issue["details"] = json!({"coding": coding, "text": text});
        }
        if !self.extension.is_empty() {
            issue["extension"] = Value::Array(self.extension.clone());
        }
        if !self.expression.is_empty() {
            issue["expression"] = json!(self.expression);
        }
        issue
    }
}

/// Builds an `OperationOutcome` resource from issues (at least one; FHIR requires it).
pub fn operation_outcome(issues: &[Issue]) -> Value {
    let issues: Vec<Value> = if issues.is_empty() {
        vec![Issue::new(Severity::Information, "informational", "All OK").to_json()]
    } else {
        issues.iter().map(Issue::to_json).collect()
    };
    json!({"resourceType": "OperationOutcome", "issue": issues})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outcome_has_at_least_one_issue() {
        let oo = operation_outcome(&[]);
        assert_eq!(oo["issue"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn issue_fields_are_fhir_shaped() {
        let oo = operation_outcome(&[Issue::new(Severity::Error, "invalid", "bad _count")
            .at("_count")
            .with_details("urn:x", "c", "d")]);
        let i = &oo["issue"][0];
        assert_eq!(i["severity"], "error");
        assert_eq!(i["code"], "invalid");
        assert_eq!(i["expression"][0], "_count");
        assert_eq!(i["details"]["coding"][0]["code"], "c");
    }
}
