//! Policy test cases as data: `policies/tests/*.json`, each a list of cases
//! (principal, action, item, circumstances -> expected decision, and optionally the policies
//! expected to determine it). `gateway policy test` and `cargo test` run them.

use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Circumstances, DecisionPoint, ItemClass, PolicyError, PolicySet, Principal, Question};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    pub principal: CasePrincipal,
    /// The FHIR resource type read (the action is `read:{type}` unless `action` says otherwise).
    pub resource_type: String,
    /// Another action, e.g. `manage-consent`.
    #[serde(default)]
    pub action: Option<String>,
    #[serde(default)]
    pub item: CaseItem,
    #[serde(default)]
    pub context: CaseContext,
    /// "allow" or "deny".
    pub expect: Expect,
    /// Policies expected among those that determined the decision.
    #[serde(default)]
    pub because: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Expect {
    Allow,
    Deny,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CasePrincipal {
    pub role: String,
    #[serde(default = "default_org")]
    pub organisation: String,
    #[serde(default = "default_region")]
    pub home_region: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CaseItem {
    pub region: String,
    pub confidentiality: String,
    pub sensitivity: BTreeSet<String>,
    pub patient_home_region: String,
    pub patient_objects_to_sharing: bool,
    pub consent_denies: bool,
    pub consent_permits: bool,
}

impl Default for CaseItem {
    fn default() -> Self {
        CaseItem {
            region: default_region(),
            confidentiality: "N".into(),
            sensitivity: BTreeSet::new(),
            patient_home_region: default_region(),
            patient_objects_to_sharing: false,
            consent_denies: false,
            consent_permits: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CaseContext {
    pub purpose_of_use: String,
    pub break_glass: bool,
    pub decision_point: DecisionPoint,
    pub requesting_region: String,
    pub break_glass_reason: String,
    /// Unix seconds; default 2026-01-01T00:00:00Z.
    pub time: i64,
    /// The types the token's SMART scopes grant; default `["*"]` (every type).
    pub granted_types: std::collections::BTreeSet<String>,
}

impl Default for CaseContext {
    fn default() -> Self {
        CaseContext {
            purpose_of_use: "TREAT".into(),
            break_glass: false,
            decision_point: DecisionPoint::View,
            requesting_region: default_region(),
            break_glass_reason: String::new(),
            time: 1_767_225_600,
            granted_types: crate::all_types(),
        }
    }
}

fn default_org() -> String {
    "RBD".into()
}

fn default_region() -> String {
    "dorset".into()
}

/// What a case did.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub file: String,
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

/// Reads every `*.json` file of cases in a directory: (file name, cases).
pub fn load_dir(dir: &Path) -> Result<Vec<(String, Vec<Case>)>, PolicyError> {
    let err = |p: &Path, m: String| PolicyError::Read {
        path: p.display().to_string(),
        message: m,
    };
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| err(dir, e.to_string()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p).map_err(|e| err(p, e.to_string()))?;
            let cases: Vec<Case> =
                serde_json::from_str(&text).map_err(|e| err(p, e.to_string()))?;
            Ok((
                p.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                cases,
            ))
        })
        .collect()
}

impl Case {
    pub fn question_parts(&self) -> (Principal, ItemClass, Circumstances) {
        let p = Principal {
            id: format!("case:{}", self.name),
            role: self.principal.role.clone(),
            organisation: self.principal.organisation.clone(),
            home_region: self.principal.home_region.clone(),
        };
        let i = ItemClass {
            resource_type: self.resource_type.clone(),
            region: self.item.region.clone(),
            confidentiality: self.item.confidentiality.clone(),
            sensitivity: self.item.sensitivity.clone(),
            patient_home_region: self.item.patient_home_region.clone(),
            patient_objects_to_sharing: self.item.patient_objects_to_sharing,
            consent_denies: self.item.consent_denies,
            consent_permits: self.item.consent_permits,
        };
        let c = Circumstances {
            purpose_of_use: self.context.purpose_of_use.clone(),
            break_glass: self.context.break_glass,
            decision_point: self.context.decision_point,
            requesting_region: self.context.requesting_region.clone(),
            break_glass_reason: self.context.break_glass_reason.clone(),
            time: self.context.time,
            granted_types: self.context.granted_types.clone(),
        };
        (p, i, c)
    }
}

/// Runs cases against a policy set.
pub fn run(set: &PolicySet, files: &[(String, Vec<Case>)]) -> Vec<Outcome> {
    let mut out = Vec::new();
    for (file, cases) in files {
        for case in cases {
            let (p, i, c) = case.question_parts();
            let q = Question {
                principal: &p,
                item: &i,
                circumstances: &c,
            };
            let d = match &case.action {
                Some(action) => set.decide_action(action, &q),
                None => set.decide(&q),
            };
            let got = if d.allowed {
                Expect::Allow
            } else {
                Expect::Deny
            };
            let missing: Vec<&String> = case
                .because
                .iter()
                .filter(|b| !d.policies.contains(b))
                .collect();
            let passed = got == case.expect && missing.is_empty();
            let detail = if passed {
                String::new()
            } else {
                format!(
                    "expected {:?} because {:?}, got {:?} because {:?}{}",
                    case.expect,
                    case.because,
                    got,
                    d.policies,
                    if d.errors.is_empty() {
                        String::new()
                    } else {
                        format!(" (errors: {:?})", d.errors)
                    }
                )
            };
            out.push(Outcome {
                file: file.clone(),
                name: case.name.clone(),
                passed,
                detail,
            });
        }
    }
    out
}
