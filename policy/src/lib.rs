//! # Consent and role policy
//!
//! Every item a region releases and every item a clinician sees is decided here, per item, by
//! a Cedar policy set that governance staff can read as text. Pure: the only I/O is reading
//! policy files in [`PolicySet::load`].
//!
//! # Layout
//! - [`PolicySet`]: parse and validate a schema and policy files; errors give file, line, column
//! - [`Question`] / [`Decision`]: one decision and the policies that determined it
//! - [`cases`]: policy test cases as data (`policies/tests/*.json`) and their runner

pub mod cases;
pub mod version;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::str::FromStr;

use cedar_policy::{
    Authorizer, Context, Entities, Entity, EntityId, EntityTypeName, EntityUid, PolicyId, Request,
    RestrictedExpression, Schema, ValidationMode, Validator,
};
use miette::Diagnostic;
use serde::{Deserialize, Serialize};

/// Where a policy problem is, for an editor to point at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl Problem {
    /// A problem with a file as a whole (pointed at its start).
    pub fn whole_file(file: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            file: file.into(),
            line: 1,
            column: 1,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read {path}: {message}")]
    Read { path: String, message: String },
    #[error("the policy set is invalid:\n{}", .0.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
    #[error("the policy set is empty")]
    Empty,
    #[error("{} policy test case(s) fail:\n{}", .0.len(), .0.iter().map(|c| format!("  {c}")).collect::<Vec<_>>().join("\n"))]
    CasesFail(Vec<String>),
}

/// Where the decision is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DecisionPoint {
    /// The answering region decides what may leave it.
    Release,
    /// The requesting region decides what its user may see.
    View,
}

impl DecisionPoint {
    pub fn as_str(self) -> &'static str {
        match self {
            DecisionPoint::Release => "release",
            DecisionPoint::View => "view",
        }
    }
}

/// The user, as the policies see them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Principal {
    pub id: String,
    pub role: String,
    pub organisation: String,
    pub home_region: String,
}

/// An item of a record, by class: everything a decision may depend on, nothing of its content.
/// Two items of one class always get the same decision, so a request memoises per class.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ItemClass {
    pub resource_type: String,
    pub region: String,
    pub confidentiality: String,
    pub sensitivity: BTreeSet<String>,
    pub patient_home_region: String,
    pub patient_objects_to_sharing: bool,
    pub consent_denies: bool,
    pub consent_permits: bool,
}

/// The circumstances of the request.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Circumstances {
    pub purpose_of_use: String,
    pub break_glass: bool,
    pub decision_point: DecisionPoint,
    pub requesting_region: String,
    /// The clinician's break-glass reason, "" when none.
    pub break_glass_reason: String,
    /// Unix seconds.
    pub time: i64,
    /// The resource types the token's SMART scopes grant, `*` for every type.
    pub granted_types: std::collections::BTreeSet<String>,
}

/// Every type granted: what a request without scopes (or a peer's, decided by its own
/// gateway) is decided under.
pub fn all_types() -> std::collections::BTreeSet<String> {
    std::collections::BTreeSet::from(["*".to_owned()])
}

/// One question: may `principal` read `item` in these circumstances?
#[derive(Debug, Clone)]
pub struct Question<'a> {
    pub principal: &'a Principal,
    pub item: &'a ItemClass,
    pub circumstances: &'a Circumstances,
}

/// A decision and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub allowed: bool,
    /// The `@id`s of the policies that determined it: the permits that allowed it, or the
    /// forbids that refused it. Empty for a refusal because nothing permitted it.
    pub policies: Vec<String>,
    /// Evaluation errors. Any error refuses (fail closed), even if a permit matched.
    pub errors: Vec<String>,
}

/// A validated policy set with its schema.
#[derive(Debug, Clone)]
pub struct PolicySet {
    schema: Schema,
    set: cedar_policy::PolicySet,
    actions: Entities,
    /// The files it was built from, in order: (name, text).
    pub files: Vec<(String, String)>,
    /// Decisions of the current second (see [`Memo`]).
    memo: std::sync::Arc<std::sync::Mutex<Memo>>,
    /// Whether a decision can depend on the time of the request (see [`PolicySet::reads_time`]).
    reads_time: bool,
    /// Whether the schema's circumstances name `granted_types` (the SMART scopes). A policy
    /// directory made before they existed has a schema without them; its requests are made
    /// without them rather than refused as ill-typed (its policies cannot read them anyway).
    knows_scopes: bool,
}

/// Whether a policy's JSON form (Cedar's EST) can read `context.time`: it reads the attribute
/// `time` of `context` (`.` or `has`), or uses `context` in any other way (passed whole,
/// compared, indexed by an expression), in which case any attribute may matter. Conservative:
/// a policy it cannot see through counts as reading the time.
fn est_reads_time(est: &serde_json::Value) -> bool {
    use serde_json::Value;
    let is_context = |v: &Value| v.get("Var").and_then(Value::as_str) == Some("context");
    match est {
        Value::Object(map) => map.iter().any(|(key, inner)| {
            if (key == "." || key == "has")
                && let Some(left) = inner.get("left")
                && is_context(left)
            {
                // `context.name` or `context has name`: reads the time only if the name is
                // `time` (or the node has a shape this does not know).
                let attr = inner.get("attr").and_then(Value::as_str);
                let known_shape = inner.as_object().is_some_and(|o| o.len() == 2);
                return !(known_shape && attr.is_some_and(|a| a != "time"));
            }
            if key == "Var" && inner.as_str() == Some("context") {
                return true;
            }
            est_reads_time(inner)
        }),
        Value::Array(items) => items.iter().any(est_reads_time),
        _ => false,
    }
}

/// Decisions already made, shared by requests. A decision is a function of the set, the
/// question (user, circumstances, action, item class) and nothing else. The circumstances
/// include the time in seconds: when a policy of the set can read it, a decision is remembered
/// within its second only (emptied when the second changes); when none can, the time is left
/// out of the question remembered, and decisions are kept across seconds. Either way a
/// remembered decision is exactly the one Cedar would make again. Emptied when full.
#[derive(Debug, Default)]
struct Memo {
    second: i64,
    /// Per asker (user and circumstances), per action, per item class: looked up by
    /// reference, so that a remembered decision costs no copy of its question (a request
    /// asks about some sixty classes, and copying the user and circumstances for each was a
    /// tenth of a merge's allocations).
    decisions: HashMap<Asker, HashMap<String, HashMap<ItemClass, Decision>>>,
    /// Decisions held in all.
    len: usize,
}

const MEMO_MAX: usize = 4096;

impl Memo {
    fn get(&self, second: i64, asker: &Asker, action: &str, item: &ItemClass) -> Option<&Decision> {
        if self.second != second {
            return None;
        }
        self.decisions.get(asker)?.get(action)?.get(item)
    }

    fn insert(&mut self, second: i64, asker: &Asker, action: &str, item: &ItemClass, d: Decision) {
        if self.second != second || self.len >= MEMO_MAX {
            self.second = second;
            self.decisions.clear();
            self.len = 0;
        }
        if !self.decisions.contains_key(asker) {
            self.decisions.insert(asker.clone(), HashMap::new());
        }
        let by_action = self.decisions.get_mut(asker).expect("inserted above");
        if !by_action.contains_key(action) {
            by_action.insert(action.to_owned(), HashMap::new());
        }
        let by_item = by_action.get_mut(action).expect("inserted above");
        if by_item.insert(item.clone(), d).is_none() {
            self.len += 1;
        }
    }
}

/// Who asks and under what circumstances, the time as the memo keeps it (its second, or 0
/// when no policy of the set reads it).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Asker {
    principal: Principal,
    circumstances: Circumstances,
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

fn problems_of(diagnostic: &dyn Diagnostic, file: &str, text: &str) -> Vec<Problem> {
    let message = {
        let mut m = diagnostic.to_string();
        if let Some(help) = diagnostic.help() {
            m.push_str(&format!(" ({help})"));
        }
        m
    };
    let offset = diagnostic
        .labels()
        .and_then(|mut l| l.next())
        .map_or(0, |l| l.offset());
    let (line, column) = line_col(text, offset);
    vec![Problem {
        file: file.to_owned(),
        line,
        column,
        message,
    }]
}

impl PolicySet {
    /// Reads `dir/schema.cedarschema` and every `*.cedar` file in `dir/default` (name order).
    pub fn load(dir: &Path) -> Result<Self, PolicyError> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|e| PolicyError::Read {
                path: p.display().to_string(),
                message: e.to_string(),
            })
        };
        let schema = read(&dir.join("schema.cedarschema"))?;
        let policy_dir = dir.join("default");
        let mut names: Vec<_> = std::fs::read_dir(&policy_dir)
            .map_err(|e| PolicyError::Read {
                path: policy_dir.display().to_string(),
                message: e.to_string(),
            })?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "cedar"))
            .collect();
        names.sort();
        let files = names
            .iter()
            .map(|p| {
                Ok((
                    p.file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    read(p)?,
                ))
            })
            .collect::<Result<Vec<_>, PolicyError>>()?;
        Self::from_sources(&schema, files)
    }

    /// [`PolicySet::load`], then runs the directory's own test cases (`dir/tests/*.json`, when
    /// present): a set whose cases fail is refused like one that does not parse.
    pub fn load_checked(dir: &Path) -> Result<Self, PolicyError> {
        let set = Self::load(dir)?;
        let tests = dir.join("tests");
        if tests.is_dir() {
            let files = cases::load_dir(&tests)?;
            let failed: Vec<String> = cases::run(&set, &files)
                .into_iter()
                .filter(|o| !o.passed)
                .map(|o| format!("{}: {}: {}", o.file, o.name, o.detail))
                .collect();
            if !failed.is_empty() {
                return Err(PolicyError::CasesFail(failed));
            }
        }
        Ok(set)
    }

    /// Parses and validates a schema and policy files. Every policy needs a unique `@id`.
    pub fn from_sources(
        schema_text: &str,
        files: Vec<(String, String)>,
    ) -> Result<Self, PolicyError> {
        let schema = match Schema::from_cedarschema_str(schema_text) {
            Ok((s, _warnings)) => s,
            Err(e) => {
                return Err(PolicyError::Invalid(problems_of(
                    &e,
                    "schema.cedarschema",
                    schema_text,
                )));
            }
        };
        let mut problems = Vec::new();
        let mut set = cedar_policy::PolicySet::new();
        let mut file_of: HashMap<String, usize> = HashMap::new();
        for (index, (name, text)) in files.iter().enumerate() {
            let parsed = match cedar_policy::PolicySet::from_str(text) {
                Ok(p) => p,
                Err(e) => {
                    problems.extend(problems_of(&e, name, text));
                    continue;
                }
            };
            // Policies come back in source order; find each one's text after the previous one.
            let mut cursor = 0;
            let mut ordered: Vec<_> = parsed.policies().collect();
            ordered.sort_by_key(|p| {
                p.id()
                    .to_string()
                    .strip_prefix("policy")
                    .and_then(|n| n.parse::<usize>().ok())
                    .unwrap_or(usize::MAX)
            });
            for policy in ordered {
                let source = policy.to_string();
                let offset = text[cursor..]
                    .find(source.trim())
                    .map_or(cursor, |o| cursor + o);
                cursor = offset + 1;
                let (line, column) = line_col(text, offset);
                let Some(id) = policy.annotation("id").map(str::to_owned) else {
                    problems.push(Problem {
                        file: name.clone(),
                        line,
                        column,
                        message: "every policy needs an @id(\"...\") annotation".into(),
                    });
                    continue;
                };
                if file_of.insert(id.clone(), index).is_some() {
                    problems.push(Problem {
                        file: name.clone(),
                        line,
                        column,
                        message: format!("the @id \"{id}\" is used twice"),
                    });
                    continue;
                }
                if let Err(e) = set.add(policy.new_id(PolicyId::new(&id))) {
                    problems.push(Problem {
                        file: name.clone(),
                        line,
                        column,
                        message: e.to_string(),
                    });
                }
            }
        }
        if problems.is_empty() {
            let result = Validator::new(schema.clone()).validate(&set, ValidationMode::Strict);
            for e in result.validation_errors() {
                let (name, text) = file_of
                    .get(&e.policy_id().to_string())
                    .map(|&i| &files[i])
                    .map_or(("?", ""), |(n, t)| (n.as_str(), t.as_str()));
                problems.extend(problems_of(e, name, text));
            }
        }
        if !problems.is_empty() {
            return Err(PolicyError::Invalid(problems));
        }
        if set.is_empty() {
            return Err(PolicyError::Empty);
        }
        let actions = schema.action_entities().map_err(|e| {
            PolicyError::Invalid(vec![Problem::whole_file(
                "schema.cedarschema",
                e.to_string(),
            )])
        })?;
        let reads_time = set
            .policies()
            .any(|p| p.to_json().map_or(true, |est| est_reads_time(&est)));
        let knows_scopes = schema_text.contains("granted_types");
        Ok(PolicySet {
            schema,
            set,
            actions,
            files,
            memo: Default::default(),
            reads_time,
            knows_scopes,
        })
    }

    /// Whether the schema names the SMART scopes (`context.granted_types`); a set that does not
    /// cannot bound a request by them.
    pub fn knows_scopes(&self) -> bool {
        self.knows_scopes
    }

    /// Whether some policy can read the time of the request (`context.time`). When none can, a
    /// decision does not change with the time, and what was decided for a user, an item class
    /// and the other circumstances holds at any time under this set.
    pub fn reads_time(&self) -> bool {
        self.reads_time
    }

    /// The ids of every policy in the set.
    pub fn policy_ids(&self) -> Vec<String> {
        self.set.policies().map(|p| p.id().to_string()).collect()
    }

    /// The plain-English comment written above a policy, and its file, for explanations.
    pub fn describe(&self, id: &str) -> Option<(String, String)> {
        let marker = format!("@id(\"{id}\")");
        self.files.iter().find_map(|(name, text)| {
            let at = text.find(&marker)?;
            let comment: Vec<&str> = text[..at]
                .lines()
                .rev()
                .take_while(|l| l.trim_start().starts_with("//"))
                .map(|l| l.trim_start().trim_start_matches('/').trim())
                .collect();
            let comment: Vec<&str> = comment.into_iter().rev().collect();
            Some((name.clone(), comment.join(" ")))
        })
    }

    /// Decides one question. Fails closed: anything unexpected is a refusal with the reason.
    pub fn decide(&self, q: &Question<'_>) -> Decision {
        self.decide_action(&format!("read:{}", q.item.resource_type), q)
    }

    /// Decides another action of the schema (e.g. `manage-consent`) on the item.
    pub fn decide_action(&self, action: &str, q: &Question<'_>) -> Decision {
        self.prepare(q.principal, q.circumstances)
            .decide_action(action, q.item)
    }

    /// The part of every question that is fixed for one request (the user and the
    /// circumstances), built once: a request asks about many items.
    pub fn prepare(&self, principal: &Principal, c: &Circumstances) -> Prepared<'_> {
        // The second a decision holds for: every second alike when no policy reads it.
        let second = if self.reads_time { c.time } else { 0 };
        Prepared {
            set: self,
            fixed: std::sync::OnceLock::new(),
            circumstances: c.clone(),
            asker: Asker {
                principal: principal.clone(),
                circumstances: Circumstances {
                    time: second,
                    ..c.clone()
                },
            },
        }
    }
}

fn uid(t: &str, id: &str) -> Result<EntityUid, String> {
    Ok(EntityUid::from_type_name_and_id(
        EntityTypeName::from_str(t).map_err(|e| e.to_string())?,
        EntityId::new(id),
    ))
}

struct Fixed {
    principal: EntityUid,
    user: Entity,
    context: Context,
    resource: EntityUid,
}

impl Fixed {
    /// Cedar's entity for the user and the request's context, typed when each request is made.
    fn of(knows_scopes: bool, principal: &Principal, c: &Circumstances) -> Result<Fixed, String> {
        let s = RestrictedExpression::new_string;
        let principal_uid = uid("Gateway::User", &principal.id)?;
        let user = Entity::new(
            principal_uid.clone(),
            HashMap::from([
                ("role".to_owned(), s(principal.role.clone())),
                ("organisation".to_owned(), s(principal.organisation.clone())),
                ("home_region".to_owned(), s(principal.home_region.clone())),
            ]),
            HashSet::new(),
        )
        .map_err(|e| e.to_string())?;
        // Typed against the schema when each request is made (Request::new below).
        let context = Context::from_pairs(
            [
                ("purpose_of_use".to_owned(), s(c.purpose_of_use.clone())),
                (
                    "break_glass".to_owned(),
                    RestrictedExpression::new_bool(c.break_glass),
                ),
                (
                    "decision_point".to_owned(),
                    s(c.decision_point.as_str().to_owned()),
                ),
                (
                    "requesting_region".to_owned(),
                    s(c.requesting_region.clone()),
                ),
                (
                    "break_glass_reason".to_owned(),
                    s(c.break_glass_reason.clone()),
                ),
                ("time".to_owned(), RestrictedExpression::new_long(c.time)),
            ]
            .into_iter()
            .chain(knows_scopes.then(|| {
                (
                    "granted_types".to_owned(),
                    RestrictedExpression::new_set(c.granted_types.iter().map(|t| s(t.clone()))),
                )
            })),
        )
        .map_err(|e| e.to_string())?;
        Ok(Fixed {
            principal: principal_uid,
            user,
            context,
            resource: uid("Gateway::Item", "item")?,
        })
    }
}

/// A policy set with one request's user and circumstances: decides items.
pub struct Prepared<'a> {
    set: &'a PolicySet,
    /// Built at the first decision the memo does not already hold (a repeat of a request
    /// decided this second builds none); or why it could not be built (then every decision
    /// is a refusal).
    fixed: std::sync::OnceLock<Result<Fixed, String>>,
    /// The request's circumstances, its time as it is (the asker's is the memo's second).
    circumstances: Circumstances,
    /// The user, and the memo's key for this user and these circumstances, made once.
    asker: Asker,
}

impl Prepared<'_> {
    /// `read:{type}` of the item.
    pub fn decide(&self, item: &ItemClass) -> Decision {
        self.decide_action(&format!("read:{}", item.resource_type), item)
    }

    /// Decides `action` on the item. Fails closed: anything unexpected is a refusal with the
    /// reason.
    pub fn decide_action(&self, action: &str, item: &ItemClass) -> Decision {
        let second = self.asker.circumstances.time;
        if let Ok(memo) = self.set.memo.lock()
            && let Some(d) = memo.get(second, &self.asker, action, item)
        {
            return d.clone();
        }
        let decision = match self.try_decide(action, item) {
            Ok(d) => d,
            Err(e) => Decision {
                allowed: false,
                policies: vec![],
                errors: vec![e],
            },
        };
        if let Ok(mut memo) = self.set.memo.lock() {
            memo.insert(second, &self.asker, action, item, decision.clone());
        }
        decision
    }

    fn try_decide(&self, action_id: &str, i: &ItemClass) -> Result<Decision, String> {
        let set = self.set;
        let fixed = self
            .fixed
            .get_or_init(|| Fixed::of(set.knows_scopes, &self.asker.principal, &self.circumstances))
            .as_ref()
            .map_err(Clone::clone)?;
        let action = uid("Gateway::Action", action_id)?;
        let s = RestrictedExpression::new_string;
        let item = Entity::new(
            fixed.resource.clone(),
            HashMap::from([
                ("resource_type".to_owned(), s(i.resource_type.clone())),
                ("region".to_owned(), s(i.region.clone())),
                ("confidentiality".to_owned(), s(i.confidentiality.clone())),
                (
                    "sensitivity".to_owned(),
                    RestrictedExpression::new_set(i.sensitivity.iter().cloned().map(s)),
                ),
                (
                    "patient_home_region".to_owned(),
                    s(i.patient_home_region.clone()),
                ),
                (
                    "patient_objects_to_sharing".to_owned(),
                    RestrictedExpression::new_bool(i.patient_objects_to_sharing),
                ),
                (
                    "consent_denies".to_owned(),
                    RestrictedExpression::new_bool(i.consent_denies),
                ),
                (
                    "consent_permits".to_owned(),
                    RestrictedExpression::new_bool(i.consent_permits),
                ),
            ]),
            HashSet::new(),
        )
        .map_err(|e| e.to_string())?;
        let entities = set
            .actions
            .clone()
            .add_entities([fixed.user.clone(), item], Some(&set.schema))
            .map_err(|e| e.to_string())?;
        // The request is checked against the schema: an unknown resource type has no action,
        // and a context of the wrong shape is refused, with the reason.
        let request = Request::new(
            fixed.principal.clone(),
            action,
            fixed.resource.clone(),
            fixed.context.clone(),
            Some(&set.schema),
        )
        .map_err(|e| e.to_string())?;
        let response = Authorizer::new().is_authorized(&request, &set.set, &entities);
        let errors: Vec<String> = response
            .diagnostics()
            .errors()
            .map(|e| e.to_string())
            .collect();
        let policies: Vec<String> = response
            .diagnostics()
            .reason()
            .map(|p| p.to_string())
            .collect();
        let allowed = response.decision() == cedar_policy::Decision::Allow && errors.is_empty();
        Ok(Decision {
            allowed,
            policies,
            errors,
        })
    }
}

#[cfg(test)]
mod tests;
