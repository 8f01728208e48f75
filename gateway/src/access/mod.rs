//! Who may see what: the gateway's side of the policy decisions. Pure: resources and a policy
//! set in, released resources out.
//!
//! An item's class (type, region, security labels, the patient's consent state) is read from
//! the FHIR resource; one decision is made per class within a request (memoised), so a large
//! Bundle costs a handful of Cedar evaluations. Used at both decision points: the answering
//! region's release (federation face) and the requesting region's view (clinician face).

use std::collections::{BTreeSet, HashMap};

use policy::{Circumstances, Decision, DecisionPoint, ItemClass, PolicySet, Principal};
use serde_json::Value;

use crate::fhir::item::{Coded, Item, ItemView};

use crate::auth::UserContext;
use crate::consent::ConsentView;
use crate::fhir::types::resource_type;
use crate::record::RecordAnswer;

/// HL7 v3 Confidentiality code system (meta.security).
pub const CONFIDENTIALITY_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality";
/// HL7 v3 ActCode system, which holds the sensitivity codes (HIV, PSY, ...).
pub const ACT_CODE_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";
/// Break-glass: the header carrying the clinician's reason, and its minimum length.
pub const BREAK_GLASS_HEADER: &str = "x-break-glass-reason";
pub const BREAK_GLASS_MIN_CHARS: usize = 10;
/// The purpose of use break-glass switches to.
pub const EMERGENCY_PURPOSE: &str = "ETREAT";

/// The embedded default policy set (the files under `policies/`), used when the configuration
/// names no policy directory.
pub fn embedded_policy_set() -> Result<PolicySet, policy::PolicyError> {
    PolicySet::from_sources(
        include_str!("../../../policies/schema.cedarschema"),
        embedded_policy_files(),
    )
}

/// The embedded default policy files: (name, text).
pub fn embedded_policy_files() -> Vec<(String, String)> {
    [
        (
            "10-direct-care.cedar",
            include_str!("../../../policies/default/10-direct-care.cedar"),
        ),
        (
            "15-search-and-emergency.cedar",
            include_str!("../../../policies/default/15-search-and-emergency.cedar"),
        ),
        (
            "20-purpose.cedar",
            include_str!("../../../policies/default/20-purpose.cedar"),
        ),
        (
            "30-consent.cedar",
            include_str!("../../../policies/default/30-consent.cedar"),
        ),
        (
            "40-sensitive.cedar",
            include_str!("../../../policies/default/40-sensitive.cedar"),
        ),
        (
            "50-consent-management.cedar",
            include_str!("../../../policies/default/50-consent-management.cedar"),
        ),
        (
            "60-governance.cedar",
            include_str!("../../../policies/default/60-governance.cedar"),
        ),
        (
            "70-scopes.cedar",
            include_str!("../../../policies/default/70-scopes.cedar"),
        ),
    ]
    .into_iter()
    .map(|(n, t)| (n.to_owned(), t.to_owned()))
    .collect()
}

/// The embedded policy test cases (`policies/tests/default.json`).
pub const EMBEDDED_CASES: &str = include_str!("../../../policies/tests/default.json");

/// The embedded schema text.
pub const EMBEDDED_SCHEMA: &str = include_str!("../../../policies/schema.cedarschema");

/// Confidentiality and sensitivity labels from `meta.security`. Unlabelled items are "N".
/// Of several confidentiality codes, the most restrictive counts.
pub fn labels(resource: &Value) -> (String, BTreeSet<String>) {
    let security = crate::fhir::item::security_of(resource.get("meta"));
    labels_of(security.iter().map(|(s, c)| (s.as_deref(), c.as_str())))
}

/// [`labels`] from `meta.security`'s (system, code) pairs.
pub fn labels_of<'s>(security: impl IntoIterator<Item = Coded<'s>>) -> (String, BTreeSet<String>) {
    const ORDER: [&str; 6] = ["U", "L", "M", "N", "R", "V"];
    let mut confidentiality = "N";
    let mut sensitivity = BTreeSet::new();
    for (system, code) in security {
        match system {
            Some(CONFIDENTIALITY_SYSTEM) => {
                let rank = |c: &str| ORDER.iter().position(|o| *o == c);
                match rank(code) {
                    Some(r) if rank(confidentiality).is_some_and(|cur| r > cur) => {
                        confidentiality = ORDER[r]
                    }
                    Some(_) => {}
                    // An unknown confidentiality code is treated as the most restrictive.
                    None => confidentiality = "V",
                }
            }
            Some(ACT_CODE_SYSTEM) => {
                sensitivity.insert(code.to_owned());
            }
            _ => {}
        }
    }
    (confidentiality.to_owned(), sensitivity)
}

/// The class of an item of `region`'s record.
pub fn item_class(resource: &Value, region: &str) -> ItemClass {
    let (confidentiality, sensitivity) = labels(resource);
    class_with(
        resource_type(resource).unwrap_or(""),
        confidentiality,
        sensitivity,
        region,
    )
}

/// [`item_class`] from an item's view.
pub fn view_class(view: &ItemView, region: &str) -> ItemClass {
    let (confidentiality, sensitivity) = labels_of(view.security());
    class_with(view.rtype(), confidentiality, sensitivity, region)
}

fn class_with(
    rtype: &str,
    confidentiality: String,
    sensitivity: BTreeSet<String>,
    region: &str,
) -> ItemClass {
    ItemClass {
        resource_type: policy_type(rtype).to_owned(),
        region: region.to_owned(),
        confidentiality,
        sensitivity,
        // Without directives the item's region stands for the patient's home; see class_of.
        patient_home_region: region.to_owned(),
        patient_objects_to_sharing: false,
        consent_denies: false,
        consent_permits: false,
    }
}

/// The type a policy decides an item as: its own where the policy vocabulary names it (the
/// federated types, Patient, and the types their items reference), else `Other`.
pub fn policy_type(rtype: &str) -> &str {
    if rtype == "Patient"
        || crate::fhir::types::ResourceType::parse(rtype).is_some()
        || crate::fhir::reference::REFERENCE_TYPES.contains(&rtype)
    {
        rtype
    } else {
        "Other"
    }
}

/// Why a break-glass header is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("X-Break-Glass-Reason must give a reason of at least {BREAK_GLASS_MIN_CHARS} characters")]
pub struct BreakGlassError;

/// Reads a break-glass reason: absent is `None`; present but too short is an error.
pub fn break_glass_reason(header: Option<&str>) -> Result<Option<String>, BreakGlassError> {
    match header.map(str::trim) {
        None => Ok(None),
        Some(r) if r.chars().count() >= BREAK_GLASS_MIN_CHARS => {
            Ok(Some(r.chars().take(500).collect()))
        }
        Some(_) => Err(BreakGlassError),
    }
}

/// Why a whole request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("your role may not break the glass")]
    BreakGlass,
    #[error("your role and purpose of use do not permit searching the shared record")]
    Search,
    #[error(
        "the token's scopes bound what it may see, and this region's policy set does not apply scopes (its schema lacks context.granted_types)"
    )]
    Scopes,
}

/// One request's decisions: the user and circumstances are fixed, the items vary.
pub struct Gatekeeper<'a> {
    /// The set with this request's user and circumstances, built once.
    prepared: policy::Prepared<'a>,
    principal: Principal,
    circumstances: Circumstances,
    memo: HashMap<ItemClass, Decision>,
    consent: ConsentView,
    /// The region whose record holds the directives: the patient's home when they object.
    consent_region: String,
    /// The token's scopes bound the request but the policy set cannot apply them: refused
    /// (fail closed) rather than shown what the scopes do not grant.
    scopes_unapplied: bool,
}

/// What filtering did, for the log, the audit trail and the response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filtered {
    pub released: usize,
    pub withheld: usize,
    /// The policies that decided, allow or deny.
    pub policies: BTreeSet<String>,
}

impl<'a> Gatekeeper<'a> {
    /// `home_region` is the region that vouched for the user; `requesting_region` the region
    /// whose user asks (the same on the view side).
    pub fn new(
        set: &'a PolicySet,
        user: &UserContext,
        home_region: &str,
        point: DecisionPoint,
        requesting_region: &str,
    ) -> Self {
        Self::for_interaction(
            set,
            user,
            home_region,
            point,
            requesting_region,
            crate::auth::scopes::Interaction::Search,
        )
    }

    /// [`Gatekeeper::new`] for a request that makes `interaction` (a read by id is decided on
    /// what the scopes grant for reading, a search on what they grant for searching).
    pub fn for_interaction(
        set: &'a PolicySet,
        user: &UserContext,
        home_region: &str,
        point: DecisionPoint,
        requesting_region: &str,
        interaction: crate::auth::scopes::Interaction,
    ) -> Self {
        let break_glass = user.break_glass.is_some();
        let principal = Principal {
            id: user.user_id.clone(),
            role: user.role.clone(),
            organisation: user.organisation.clone(),
            home_region: home_region.to_owned(),
        };
        let circumstances = Circumstances {
            purpose_of_use: if break_glass {
                EMERGENCY_PURPOSE.to_owned()
            } else {
                user.purpose_of_use.clone().unwrap_or_default()
            },
            break_glass,
            decision_point: point,
            requesting_region: requesting_region.to_owned(),
            break_glass_reason: user.break_glass.clone().unwrap_or_default(),
            time: time::OffsetDateTime::now_utc().unix_timestamp(),
            granted_types: match point {
                // At release a peer's request is decided on its role; its gateway applies the
                // scopes (a forwarded context carries none).
                DecisionPoint::Release => policy::all_types(),
                DecisionPoint::View => user.granted_types(interaction),
            },
        };
        Gatekeeper {
            scopes_unapplied: !set.knows_scopes()
                && circumstances.granted_types != policy::all_types(),
            prepared: set.prepare(&principal, &circumstances),
            principal,
            circumstances,
            memo: HashMap::new(),
            consent: ConsentView::default(),
            consent_region: String::new(),
        }
    }

    /// Applies the patient's consent directives, read from `region`'s record.
    pub fn with_consent(mut self, consent: ConsentView, region: &str) -> Self {
        self.consent = consent;
        self.consent_region = region.to_owned();
        self
    }

    /// An item's class, with what the patient's directives say of it for this user.
    pub fn class_of(&self, resource: &Value, region: &str) -> ItemClass {
        let mut class = item_class(resource, region);
        self.with_directives(&mut class);
        (class.consent_denies, class.consent_permits) =
            self.consent.applies(resource, &self.principal.organisation);
        class
    }

    /// [`Gatekeeper::class_of`] an item, from its view.
    pub fn class_of_item(&self, view: &ItemView, region: &str) -> ItemClass {
        let mut class = view_class(view, region);
        self.with_directives(&mut class);
        (class.consent_denies, class.consent_permits) = self.consent.applies_to(
            view.rtype(),
            view.categories(),
            &self.principal.organisation,
        );
        class
    }

    fn with_directives(&self, class: &mut ItemClass) {
        if self.consent.objects_to_sharing {
            class.patient_objects_to_sharing = true;
            class.patient_home_region = self.consent_region.clone();
        }
    }

    /// A decision about the request as a whole (`search`, `break-glass`, `manage-consent`), made
    /// on one unlabelled item of `resource_type` held in `region`.
    pub fn request_decision(&self, action: &str, resource_type: &str, region: &str) -> Decision {
        let record = ItemClass {
            resource_type: resource_type.to_owned(),
            region: region.to_owned(),
            confidentiality: "N".into(),
            sensitivity: BTreeSet::new(),
            patient_home_region: region.to_owned(),
            patient_objects_to_sharing: false,
            consent_denies: false,
            consent_permits: false,
        };
        self.prepared.decide_action(action, &record)
    }

    /// Refuses the request outright when the user may not search, or may not break the glass.
    pub fn admit(&self, region: &str) -> Result<(), Refusal> {
        if self.scopes_unapplied {
            return Err(Refusal::Scopes);
        }
        if self.circumstances.break_glass
            && !self
                .request_decision("break-glass", "Patient", region)
                .allowed
        {
            return Err(Refusal::BreakGlass);
        }
        if !self.request_decision("search", "Patient", region).allowed {
            return Err(Refusal::Search);
        }
        Ok(())
    }

    /// The decision for one item class (memoised).
    pub fn decide(&mut self, class: ItemClass) -> &Decision {
        let prepared = &self.prepared;
        self.memo
            .entry(class)
            .or_insert_with_key(|class| prepared.decide(class))
    }

    /// The time of the request the decisions are made at (Unix seconds).
    pub fn time(&self) -> i64 {
        self.circumstances.time
    }

    /// Distinct classes decided so far.
    pub fn decisions_made(&self) -> usize {
        self.memo.len()
    }

    /// Keeps what policy releases of one region's answer (Patient resources included).
    pub fn filter(
        &mut self,
        answer: RecordAnswer,
        region: &str,
        report: &mut Filtered,
    ) -> RecordAnswer {
        let before = report.withheld;
        let count = |d: &Decision, report: &mut Filtered| {
            report.policies.extend(d.policies.iter().cloned());
            if d.allowed {
                report.released += 1;
            } else {
                report.withheld += 1;
            }
            d.allowed
        };
        let patients: Vec<Value> = answer
            .patients
            .into_iter()
            .filter(|r| {
                let class = self.class_of(r, region);
                count(self.decide(class), report)
            })
            .collect();
        let mut keep = |items: Vec<Item>, report: &mut Filtered| -> Vec<Item> {
            // Without a directive that looks at items, an item's class is its type and labels
            // (in this region): items that share them share the decision, found here without
            // building their class again (a profile found that per item).
            let per_item = self.consent.has_rules();
            // The first item of each (type, labels) seen: its view names them.
            let mut known: Vec<(Item, bool)> = Vec::new();
            items
                .into_iter()
                .filter(|r| {
                    let v = r.view();
                    if !per_item
                        && let Some(&(_, allowed)) = known.iter().find(|(k, _)| {
                            let k = k.view();
                            k.rtype() == v.rtype() && k.security().eq(v.security())
                        })
                    {
                        // Its policies were noted when the decision was first counted.
                        if allowed {
                            report.released += 1;
                        } else {
                            report.withheld += 1;
                        }
                        return allowed;
                    }
                    let class = self.class_of_item(v, region);
                    let allowed = count(self.decide(class), report);
                    if !per_item && known.len() < 64 {
                        known.push((r.clone(), allowed));
                    }
                    allowed
                })
                .collect()
        };
        let items = keep(answer.items, report);
        let included = keep(answer.included, report);
        RecordAnswer {
            patients,
            items,
            withheld: answer.withheld + report.withheld - before,
            stale_seconds: answer.stale_seconds,
            cuts: answer.cuts,
            included,
        }
    }
}

/// How a draft policy set would decide a record differently from the active one (the
/// governance simulator). Pure: both gatekeepers carry the same user, circumstances and
/// consent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Comparison {
    pub items: usize,
    pub released_active: usize,
    /// `None` without a draft.
    pub released_draft: Option<usize>,
    pub types: BTreeSet<String>,
    /// (resource type, released now, released by the draft) -> items, for the changes only.
    pub changes: std::collections::BTreeMap<(String, bool, bool), usize>,
}

/// Decides every resource of `region`'s record under `active` and, when given, `draft`.
pub fn compare(
    active: &mut Gatekeeper<'_>,
    mut draft: Option<&mut Gatekeeper<'_>>,
    resources: &[&Value],
    region: &str,
) -> Comparison {
    let mut c = Comparison {
        items: resources.len(),
        released_draft: draft.as_ref().map(|_| 0),
        ..Comparison::default()
    };
    for r in resources {
        let class = active.class_of(r, region);
        c.types.insert(class.resource_type.clone());
        let now = active.decide(class.clone()).allowed;
        c.released_active += usize::from(now);
        if let Some(d) = draft.as_deref_mut() {
            let then = d.decide(class.clone()).allowed;
            if let Some(n) = c.released_draft.as_mut() {
                *n += usize::from(then);
            }
            if now != then {
                *c.changes
                    .entry((class.resource_type, now, then))
                    .or_default() += 1;
            }
        }
    }
    c
}

impl Comparison {
    /// In words, for the users of `role`: "14 items would now be withheld from R8004 users".
    pub fn summary(&self, role: &str) -> String {
        let who = format!("{role} users");
        let moved = |from: bool| -> usize {
            self.changes
                .iter()
                .filter(|((_, f, t), _)| *f == from && *t != from)
                .map(|(_, n)| n)
                .sum()
        };
        if self.released_draft.is_none() {
            return format!(
                "{} of {} items would be released to {who}",
                self.released_active, self.items
            );
        }
        if self.changes.is_empty() {
            return format!("no change for {who}");
        }
        let mut parts = Vec::new();
        if moved(true) > 0 {
            parts.push(format!(
                "{} items would now be withheld from {who}",
                moved(true)
            ));
        }
        if moved(false) > 0 {
            parts.push(format!(
                "{} items would now be released to {who}",
                moved(false)
            ));
        }
        parts.join("; ")
    }
}

#[cfg(test)]
mod tests;
