//! SMART on FHIR scopes: what a token's `scope` claim grants, read into the resource types a
//! request may see. Pure.
//!
//! * SMART v2: `{context}/{Type|*}.{perms}`, perms a subset of `cruds` in that order
//!   (`user/Observation.rs`, `patient/*.rs`, `system/Consent.cu`).
//! * SMART v1: `{context}/{Type|*}.{read|write|*}` (`user/*.read`).
//! * The context: `user/` and `system/` grant for whatever the role allows; `patient/` only
//!   when the token carries a `patient` (its launch context), and then only about that patient
//!   (the request is checked against it separately).
//! * A scope with a query (`patient/Observation.rs?category=laboratory`) narrows by what the
//!   gateway does not decide on; it grants nothing here (fail closed) rather than everything.
//! * Other scopes (`openid`, `fhirUser`, `launch`, `offline_access`, ...) grant no data.

use std::collections::BTreeSet;

/// What the request does to a type, as SMART v2 names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interaction {
    Create,
    Read,
    Update,
    Delete,
    Search,
}

impl Interaction {
    fn letter(self) -> char {
        match self {
            Interaction::Create => 'c',
            Interaction::Read => 'r',
            Interaction::Update => 'u',
            Interaction::Delete => 'd',
            Interaction::Search => 's',
        }
    }
}

/// One grant: a type (or every type) and the interactions allowed on it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Grant {
    /// `None`: every type (`*`).
    resource_type: Option<String>,
    /// Letters of `cruds`.
    perms: BTreeSet<char>,
    /// A `patient/` scope: needs a patient in the token.
    patient_context: bool,
}

/// What a token's scopes grant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scopes {
    grants: Vec<Grant>,
}

impl Scopes {
    /// Reads a space-separated `scope` claim. `has_patient`: the token names a patient, so its
    /// `patient/` scopes count.
    pub fn parse(claim: &str, has_patient: bool) -> Scopes {
        let grants = claim
            .split_ascii_whitespace()
            .filter_map(parse_one)
            .filter(|g| !g.patient_context || has_patient)
            .collect();
        Scopes { grants }
    }

    /// Whether anything at all is granted on `resource_type` for `interaction`.
    pub fn allows(&self, resource_type: &str, interaction: Interaction) -> bool {
        self.grants.iter().any(|g| {
            g.perms.contains(&interaction.letter())
                && g.resource_type
                    .as_deref()
                    .is_none_or(|t| t == resource_type)
        })
    }

    /// The resource types granted for `interaction`, `*` for every type: what the policies
    /// receive as `context.granted_types`.
    pub fn granted_types(&self, interaction: Interaction) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for g in &self.grants {
            if g.perms.contains(&interaction.letter()) {
                out.insert(g.resource_type.clone().unwrap_or_else(|| "*".to_owned()));
            }
        }
        if out.contains("*") {
            return BTreeSet::from(["*".to_owned()]);
        }
        out
    }

    /// The scopes in their SMART v2 form, for the audit trail.
    pub fn describe(&self) -> String {
        let mut out: Vec<String> = self
            .grants
            .iter()
            .map(|g| {
                format!(
                    "{}/{}.{}",
                    if g.patient_context { "patient" } else { "user" },
                    g.resource_type.as_deref().unwrap_or("*"),
                    "cruds"
                        .chars()
                        .filter(|c| g.perms.contains(c))
                        .collect::<String>()
                )
            })
            .collect();
        out.sort();
        out.dedup();
        out.join(" ")
    }
}

fn parse_one(scope: &str) -> Option<Grant> {
    if scope.contains('?') {
        return None;
    }
    let (context, rest) = scope.split_once('/')?;
    let patient_context = match context {
        "patient" => true,
        "user" | "system" => false,
        _ => return None,
    };
    let (rtype, perms) = rest.rsplit_once('.')?;
    let resource_type = match rtype {
        "*" => None,
        t if !t.is_empty() && t.chars().all(|c| c.is_ascii_alphanumeric()) => Some(t.to_owned()),
        _ => return None,
    };
    let perms: BTreeSet<char> = match perms {
        // SMART v1.
        "read" => BTreeSet::from(['r', 's']),
        "write" => BTreeSet::from(['c', 'u', 'd']),
        "*" => "cruds".chars().collect(),
        v2 => {
            // Letters of cruds, each once, in that order.
            let mut last = None;
            for c in v2.chars() {
                let at = "cruds".find(c)?;
                if last.is_some_and(|l| at <= l) {
                    return None;
                }
                last = Some(at);
            }
            if v2.is_empty() {
                return None;
            }
            v2.chars().collect()
        }
    };
    Some(Grant {
        resource_type,
        perms,
        patient_context,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use Interaction::*;

    #[test]
    fn v2_and_v1_scopes_grant_types_and_interactions() {
        let s = Scopes::parse(
            "openid fhirUser user/Observation.rs user/Condition.r",
            false,
        );
        assert!(s.allows("Observation", Search) && s.allows("Observation", Read));
        assert!(s.allows("Condition", Read) && !s.allows("Condition", Search));
        assert!(!s.allows("AllergyIntolerance", Read));
        assert!(!s.allows("Observation", Create));
        assert_eq!(
            s.granted_types(Search),
            BTreeSet::from(["Observation".to_owned()])
        );
        let v1 = Scopes::parse("user/*.read", false);
        assert!(v1.allows("Anything", Search) && !v1.allows("Consent", Create));
        assert_eq!(v1.granted_types(Read), BTreeSet::from(["*".to_owned()]));
        let all = Scopes::parse("system/*.cruds", false);
        assert!(all.allows("Consent", Create) && all.allows("Consent", Update));
        assert_eq!(
            Scopes::parse("user/Consent.write", false).describe(),
            "user/Consent.cud"
        );
    }

    #[test]
    fn patient_scopes_count_only_with_a_patient_in_the_token() {
        assert!(Scopes::parse("patient/*.rs", true).allows("Observation", Search));
        assert!(!Scopes::parse("patient/*.rs", false).allows("Observation", Search));
        assert!(
            Scopes::parse("patient/*.rs", false)
                .granted_types(Search)
                .is_empty()
        );
    }

    #[test]
    fn what_cannot_be_read_grants_nothing() {
        for s in [
            "user/Observation.rs?category=laboratory",
            "user/Observation.sr",
            "user/Observation.rr",
            "user/Observation.x",
            "user/Observation.",
            "user/.rs",
            "group/*.rs",
            "user/Obs-ervation.rs",
            "launch/patient",
            "user",
            "",
        ] {
            assert_eq!(Scopes::parse(s, true), Scopes::default(), "{s}");
        }
    }
}
