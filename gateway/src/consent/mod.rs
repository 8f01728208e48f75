//! Patient consent directives: FHIR R4 `Consent` resources (scope patient-privacy) read into
//! what the policy needs to know about each item. Pure: resources in, flags out.
//!
//! The reading, following the structure of `Consent.provision`:
//! - a root provision of type `deny` with no limits is an **objection to sharing** outside the
//!   patient's home region (the region whose record holds the directive);
//! - a `deny` provision limited by `class` (resource types), `code` (item categories) or `actor`
//!   (organisations by ODS code) **denies** the matching items;
//! - a `permit` provision with such limits **permits** the matching items, overriding a denial
//!   and the objection (a patient may object in general yet allow, say, allergies everywhere).
//!
//! Only active directives within their `provision.period` count.

use serde_json::Value;

use crate::fhir::date;
use crate::fhir::item::Coded;

pub const CONSENT_SCOPE_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/consentscope";
pub const RESOURCE_TYPES_SYSTEM: &str = "http://hl7.org/fhir/resource-types";
pub const ODS_SYSTEM: &str = "https://fhir.nhs.uk/Id/ods-organization-code";

/// One limited provision.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Rule {
    permit: bool,
    types: Vec<String>,
    /// (system, code) of item categories.
    categories: Vec<(Option<String>, String)>,
    organisations: Vec<String>,
}

/// What a patient's directives say.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ConsentView {
    pub objects_to_sharing: bool,
    rules: Vec<Rule>,
}

fn codes(v: Option<&Value>) -> impl Iterator<Item = &Value> {
    v.and_then(Value::as_array).into_iter().flatten()
}

fn is_patient_privacy(consent: &Value) -> bool {
    codes(consent.pointer("/scope/coding")).any(|c| {
        c.get("system").and_then(Value::as_str) == Some(CONSENT_SCOPE_SYSTEM)
            && c.get("code").and_then(Value::as_str) == Some("patient-privacy")
    })
}

/// Is the provision's period (if any) current at `now` (Unix seconds)?
fn current(provision: &Value, now: i64) -> bool {
    provision
        .get("period")
        .and_then(date::element_interval)
        .is_none_or(|i| i.start <= now && now < i.end)
}

fn rule_of(provision: &Value) -> Option<Rule> {
    let permit = match provision.get("type").and_then(Value::as_str) {
        Some("permit") => true,
        Some("deny") => false,
        _ => return None,
    };
    let types: Vec<String> = codes(provision.get("class"))
        .filter(|c| c.get("system").and_then(Value::as_str) == Some(RESOURCE_TYPES_SYSTEM))
        .filter_map(|c| c.get("code").and_then(Value::as_str).map(str::to_owned))
        .collect();
    let categories: Vec<(Option<String>, String)> = codes(provision.get("code"))
        .flat_map(|cc| codes(cc.get("coding")))
        .filter_map(|c| {
            Some((
                c.get("system").and_then(Value::as_str).map(str::to_owned),
                c.get("code").and_then(Value::as_str)?.to_owned(),
            ))
        })
        .collect();
    let organisations: Vec<String> = codes(provision.get("actor"))
        .filter_map(|a| a.pointer("/reference/identifier"))
        .filter(|i| i.get("system").and_then(Value::as_str) == Some(ODS_SYSTEM))
        .filter_map(|i| i.get("value").and_then(Value::as_str).map(str::to_owned))
        .collect();
    Some(Rule {
        permit,
        types,
        categories,
        organisations,
    })
}

impl Rule {
    fn is_limited(&self) -> bool {
        !(self.types.is_empty() && self.categories.is_empty() && self.organisations.is_empty())
    }

    fn matches<'c>(
        &self,
        rtype: &str,
        categories: impl Iterator<Item = Coded<'c>> + Clone,
        user_org: &str,
    ) -> bool {
        let type_ok = self.types.is_empty() || self.types.iter().any(|t| t == rtype);
        let org_ok = self.organisations.is_empty()
            || self
                .organisations
                .iter()
                .any(|o| o.eq_ignore_ascii_case(user_org));
        let category_ok = self.categories.is_empty()
            || self.categories.iter().any(|(s, c)| {
                categories
                    .clone()
                    .any(|(is, ic)| ic == c && (s.is_none() || is.is_none() || s.as_deref() == is))
            });
        type_ok && org_ok && category_ok
    }
}

/// Reads a patient's directives. `now` is Unix seconds.
pub fn read(consents: &[Value], now: i64) -> ConsentView {
    let mut view = ConsentView::default();
    for consent in consents {
        if consent.get("resourceType").and_then(Value::as_str) != Some("Consent")
            || consent.get("status").and_then(Value::as_str) != Some("active")
            || !is_patient_privacy(consent)
        {
            continue;
        }
        let Some(root) = consent.get("provision") else {
            continue;
        };
        if !current(root, now) {
            continue;
        }
        let mut stack = vec![(root, true)];
        while let Some((provision, is_root)) = stack.pop() {
            if let Some(rule) = rule_of(provision) {
                if rule.is_limited() {
                    view.rules.push(rule);
                } else if is_root && !rule.permit {
                    view.objects_to_sharing = true;
                }
            }
            stack.extend(
                codes(provision.get("provision"))
                    .filter(|p| current(p, now))
                    .map(|p| (p, false)),
            );
        }
    }
    view
}

impl ConsentView {
    /// (denied, permitted) for this item and user organisation.
    pub fn applies(&self, resource: &Value, user_org: &str) -> (bool, bool) {
        let rtype = resource
            .get("resourceType")
            .and_then(Value::as_str)
            .unwrap_or("");
        let categories = resource
            .get("category")
            .map(crate::fhir::item::categories_of)
            .unwrap_or_default();
        self.applies_to(
            rtype,
            categories.iter().map(|(s, c)| (s.as_deref(), c.as_str())),
            user_org,
        )
    }

    /// [`ConsentView::applies`] to an item of type `rtype` with these `category` codes.
    pub fn applies_to<'c>(
        &self,
        rtype: &str,
        categories: impl Iterator<Item = Coded<'c>> + Clone,
        user_org: &str,
    ) -> (bool, bool) {
        let matching = self
            .rules
            .iter()
            .filter(|r| r.matches(rtype, categories.clone(), user_org));
        let (mut denies, mut permits) = (false, false);
        for r in matching {
            if r.permit {
                permits = true;
            } else {
                denies = true;
            }
        }
        (denies, permits)
    }

    pub fn is_empty(&self) -> bool {
        !self.objects_to_sharing && self.rules.is_empty()
    }

    /// Whether any directive looks at an item itself (its type or categories): without one,
    /// what the directives say is the same for every item.
    pub fn has_rules(&self) -> bool {
        !self.rules.is_empty()
    }
}

/// Why a directive sent to the gateway is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirectiveError {
    #[error("the body is not a FHIR Consent resource")]
    NotConsent,
    #[error(
        "Consent.status must be one of draft, proposed, active, rejected, inactive, entered-in-error"
    )]
    Status,
    #[error("Consent.scope must be patient-privacy ({CONSENT_SCOPE_SYSTEM})")]
    Scope,
    #[error("Consent.category is required")]
    Category,
    #[error("Consent.policy or Consent.policyRule is required (FHIR invariant ppc-1)")]
    Policy,
    #[error(
        "Consent.patient must carry the identifier https://fhir.nhs.uk/Id/nhs-number with a valid NHS number"
    )]
    Patient,
    #[error("Consent.provision.type must be permit or deny")]
    Provision,
}

/// Checks a directive sent to the gateway and returns the patient's NHS number.
pub fn validate_directive(consent: &Value) -> Result<crate::fhir::nhs::NhsNumber, DirectiveError> {
    use crate::fhir::nhs::{NHS_NUMBER_SYSTEM, NhsNumber};
    if consent.get("resourceType").and_then(Value::as_str) != Some("Consent") {
        return Err(DirectiveError::NotConsent);
    }
    let statuses = [
        "draft",
        "proposed",
        "active",
        "rejected",
        "inactive",
        "entered-in-error",
    ];
    if !consent
        .get("status")
        .and_then(Value::as_str)
        .is_some_and(|s| statuses.contains(&s))
    {
        return Err(DirectiveError::Status);
    }
    if !is_patient_privacy(consent) {
        return Err(DirectiveError::Scope);
    }
    if consent
        .get("category")
        .and_then(Value::as_array)
        .is_none_or(|c| c.is_empty())
    {
        return Err(DirectiveError::Category);
    }
    if consent.get("policy").is_none() && consent.get("policyRule").is_none() {
        return Err(DirectiveError::Policy);
    }
    let mut provisions = vec![consent.get("provision")];
    while let Some(Some(p)) = provisions.pop() {
        if p.get("type").is_some_and(|t| t != "permit" && t != "deny") {
            return Err(DirectiveError::Provision);
        }
        provisions.extend(codes(p.get("provision")).map(Some));
    }
    let ident = consent
        .pointer("/patient/identifier")
        .ok_or(DirectiveError::Patient)?;
    if ident.get("system").and_then(Value::as_str) != Some(NHS_NUMBER_SYSTEM) {
        return Err(DirectiveError::Patient);
    }
    ident
        .get("value")
        .and_then(Value::as_str)
        .and_then(|v| NhsNumber::parse(v).ok())
        .ok_or(DirectiveError::Patient)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn directives_are_validated() {
        let good = json!({"resourceType": "Consent", "status": "active",
            "scope": {"coding": [{"system": CONSENT_SCOPE_SYSTEM, "code": "patient-privacy"}]},
            "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
            "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTOUT"}]},
            "patient": {"identifier": {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9000000009"}},
            "provision": {"type": "deny"}});
        assert_eq!(validate_directive(&good).unwrap().as_str(), "9000000009");
        let mut bad = good.clone();
        bad["patient"]["identifier"]["value"] = json!("9000000008");
        assert_eq!(validate_directive(&bad), Err(DirectiveError::Patient));
        let mut bad = good.clone();
        bad["status"] = json!("maybe");
        assert_eq!(validate_directive(&bad), Err(DirectiveError::Status));
        let mut bad = good.clone();
        bad["provision"] = json!({"type": "deny", "provision": [{"type": "perhaps"}]});
        assert_eq!(validate_directive(&bad), Err(DirectiveError::Provision));
        let mut bad = good.clone();
        bad.as_object_mut().unwrap().remove("policyRule");
        assert_eq!(validate_directive(&bad), Err(DirectiveError::Policy));
        assert_eq!(
            validate_directive(&json!({"resourceType": "Patient"})),
            Err(DirectiveError::NotConsent)
        );
    }

    fn consent(provision: Value) -> Value {
        json!({"resourceType": "Consent", "status": "active",
               "scope": {"coding": [{"system": CONSENT_SCOPE_SYSTEM, "code": "patient-privacy"}]},
               "provision": provision})
    }

    const NOW: i64 = 1_800_000_000;

    #[test]
    fn a_bare_deny_is_an_objection() {
        let v = read(&[consent(json!({"type": "deny"}))], NOW);
        assert!(v.objects_to_sharing);
        assert_eq!(
            v.applies(&json!({"resourceType": "Condition"}), "RBD"),
            (false, false)
        );
    }

    #[test]
    fn inactive_expired_or_other_scope_directives_do_not_count() {
        let mut inactive = consent(json!({"type": "deny"}));
        inactive["status"] = json!("inactive");
        let expired = consent(json!({"type": "deny", "period": {"end": "2020-01-01"}}));
        let mut research = consent(json!({"type": "deny"}));
        research["scope"]["coding"][0]["code"] = json!("research");
        assert!(read(&[inactive, expired, research], NOW).is_empty());
    }

    #[test]
    fn denials_by_type_category_and_organisation() {
        let v = read(
            &[consent(json!({"type": "permit", "provision": [
                {"type": "deny", "class": [{"system": RESOURCE_TYPES_SYSTEM, "code": "DocumentReference"}]},
                {"type": "deny", "code": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}]},
                {"type": "deny", "actor": [{"role": {"text": "recipient"}, "reference": {"identifier": {"system": ODS_SYSTEM, "value": "RDZ"}}}]},
            ]}))],
            NOW,
        );
        assert!(!v.objects_to_sharing);
        assert_eq!(
            v.applies(&json!({"resourceType": "DocumentReference"}), "RBD"),
            (true, false)
        );
        let lab = json!({"resourceType": "Observation", "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}]});
        assert_eq!(v.applies(&lab, "RBD"), (true, false));
        let vitals = json!({"resourceType": "Observation", "category": [{"coding": [{"code": "vital-signs"}]}]});
        assert_eq!(v.applies(&vitals, "RBD"), (false, false));
        assert_eq!(
            v.applies(&vitals, "RDZ"),
            (true, false),
            "denied to the named organisation"
        );
    }

    #[test]
    fn a_permit_overrides() {
        let v = read(
            &[consent(
                json!({"type": "deny", "provision": [{"type": "permit", "class": [{"system": RESOURCE_TYPES_SYSTEM, "code": "AllergyIntolerance"}]}]}),
            )],
            NOW,
        );
        assert!(v.objects_to_sharing);
        assert_eq!(
            v.applies(&json!({"resourceType": "AllergyIntolerance"}), "RBD"),
            (false, true)
        );
    }
}
