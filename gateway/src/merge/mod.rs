//! One view: the regions' answers become one FHIR `searchset` Bundle. Pure: no I/O.
//!
//! Every entry is tagged with the region(s) it came from; a resource that several regions
//! returned identically appears once; the Patient is merged into one resource whose id is the
//! NHS number; entries are ordered newest first; and every region that failed, or whose answer
//! had to be screened, is named in an `OperationOutcome` entry.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde_json::value::RawValue;
use serde_json::{Value, json};

use crate::fhir::item::{Item, Splice, qualify_references};
use crate::fhir::outcome::{Issue, Severity, operation_outcome};
use crate::fhir::spliced::{Spliced, Writer};
use crate::fhir::types::{ResourceType, resource_type};
use crate::fhir::{self, REGION_TAG_SYSTEM, SearchMode, date};
use crate::query::{Operation, PatientQuery};
use crate::record::{PatientLink, RecordAnswer, has_nhs_number};

/// A region as the merge names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionInfo {
    pub code: String,
    pub name: String,
    /// The FHIR base under which the region's resources are addressed (`fullUrl`, `meta.source`).
    pub base_url: String,
}

/// Why a region contributed nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    Timeout,
    Unreachable,
    /// The peer refused (401, 403).
    Refused(u16),
    /// The peer answered another error status.
    Failed(u16),
    /// The peer answered something that is not a usable FHIR answer.
    Invalid,
}

impl FailureKind {
    /// The FHIR IssueType code for the failure.
    pub fn issue_code(self) -> &'static str {
        match self {
            FailureKind::Timeout => "timeout",
            FailureKind::Unreachable => "transient",
            FailureKind::Refused(_) => "forbidden",
            FailureKind::Failed(_) => "exception",
            FailureKind::Invalid => "invalid",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            FailureKind::Timeout => "timed out",
            FailureKind::Unreachable => "unreachable",
            FailureKind::Refused(_) => "refused",
            FailureKind::Failed(_) => "failed",
            FailureKind::Invalid => "sent an invalid answer",
        }
    }
}

/// A region's failure, with a reason fit for the clinician (no patient data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionFailure {
    pub kind: FailureKind,
    pub reason: String,
}

/// What one region did.
#[derive(Debug, Clone, PartialEq)]
pub struct RegionResult {
    pub region: RegionInfo,
    pub outcome: Result<RecordAnswer, RegionFailure>,
    pub elapsed_ms: u64,
}

/// Where the merged Bundle lives and what to call it.
#[derive(Debug, Clone)]
pub struct MergeContext<'a> {
    /// This gateway's clinician FHIR base, e.g. `https://localhost:8443/fhir`.
    pub gateway_base: &'a str,
    pub bundle_id: &'a str,
    pub now: &'a str,
    pub self_link: &'a str,
    /// Issues raised before the merge (e.g. parameters ignored under lenient handling).
    pub issues: Vec<Issue>,
    pub on_mismatch: MismatchPolicy,
}

/// What to do when a region's demographics for the NHS number disagree with the others'.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MismatchPolicy {
    /// Show its records, with a warning naming the region.
    #[default]
    Warn,
    /// Withhold its records, with an error naming the region.
    Withhold,
}

/// The merge's result, with the counts the API and audit need.
#[derive(Debug, Clone)]
pub struct Merged {
    pub bundle: Value,
    /// The merged Patient, when any region knew the patient.
    pub patient: Option<Value>,
    pub total: usize,
    pub regions_answered: usize,
    pub regions_failed: usize,
    /// True when every failed region timed out (504 rather than 502 when none answered).
    pub all_failures_timeouts: bool,
    /// Items dropped by screening (not about the patient, or of a type not asked for).
    pub discarded: usize,
    /// Items that were duplicates of another region's and folded into its entry.
    pub deduplicated: usize,
    /// The issues of the outcome entry (failed regions, screening, warnings).
    pub issues: Vec<Issue>,
}

/// Keeps only what a region may legitimately answer: its Patient resources carrying the NHS
/// number, and items of the asked types that reference one of them. Returns the count dropped.
pub fn screen(answer: RecordAnswer, query: &PatientQuery) -> (RecordAnswer, usize) {
    let nhs = query.nhs_number.as_str();
    let before = answer.patients.len() + answer.items.len();
    let patients: Vec<Value> = answer
        .patients
        .into_iter()
        .filter(|p| has_nhs_number(p, nhs) && p.get("id").is_some())
        .collect();
    let mut links: BTreeSet<PatientLink> = patients
        .iter()
        .filter_map(|p| p.get("id").and_then(Value::as_str))
        .map(|id| PatientLink::Local(id.to_owned()))
        .collect();
    links.insert(PatientLink::Nhs(nhs.to_owned()));
    let types = query.types();
    let items: Vec<Item> = answer
        .items
        .into_iter()
        .filter(|item| {
            let v = item.view();
            v.kind.is_some_and(|rt| types.contains(&rt))
                && v.id().is_some()
                && v.patient.as_ref().is_some_and(|l| links.contains(l))
        })
        .collect();
    let included = screen_included(query, &items, &patients, answer.included, &links);
    let after = patients.len() + items.len() + included.kept.len();
    let withheld = answer.withheld;
    (
        RecordAnswer {
            patients,
            items,
            withheld,
            stale_seconds: answer.stale_seconds,
            cuts: answer.cuts,
            included: included.kept,
        },
        before + included.offered - after,
    )
}

/// Included resources kept, and how many were offered.
struct ScreenedIncludes {
    kept: Vec<Item>,
    offered: usize,
}

/// Keeps what a region may include beside its items: for `$everything` only, resources that
/// its items, its Patient or its other included resources reference, never a Patient, and of a federated
/// type only when about the patient.
fn screen_included(
    query: &PatientQuery,
    items: &[Item],
    patients: &[Value],
    included: Vec<Item>,
    links: &BTreeSet<PatientLink>,
) -> ScreenedIncludes {
    let offered = included.len();
    if !matches!(query.operation, Operation::Everything { .. }) {
        return ScreenedIncludes {
            kept: Vec::new(),
            offered,
        };
    }
    let referenced: FastSet<(&str, &str)> = items
        .iter()
        .chain(&included)
        .flat_map(|i| i.relative_references())
        .chain(
            patients
                .iter()
                .flat_map(crate::fhir::reference::relative_references),
        )
        .collect();
    let kept: Vec<Item> = included
        .iter()
        .filter(|r| {
            let v = r.view();
            let Some(id) = v.id() else {
                return false;
            };
            let about_patient = match v.kind {
                Some(_) => v.patient.as_ref().is_some_and(|l| links.contains(l)),
                None => !v.rtype().is_empty() && v.rtype() != "Patient",
            };
            about_patient && referenced.contains(&(v.rtype(), id))
        })
        .cloned()
        .collect();
    ScreenedIncludes { kept, offered }
}

/// Another version of a merged item: the region holding it, when it was last updated (as
/// written, and as a time to compare), and its content key.
struct OtherVersion {
    region: usize,
    updated: Option<String>,
    at: i64,
    content: ContentKey,
}

/// An item folded into a slot, with its content key once worked out (only items that meet
/// another region's on a cheap key are ever digested).
struct Version {
    item: Item,
    digest: std::sync::OnceLock<ContentKey>,
}

impl Version {
    fn new(item: Item) -> Self {
        Version {
            item,
            digest: std::sync::OnceLock::new(),
        }
    }

    fn digest(&self, patient_url: &str, nhs: &str) -> ContentKey {
        *self
            .digest
            .get_or_init(|| content_key(&self.item, patient_url, nhs))
    }
}

/// The regions holding an item: a sorted set of their indices, kept inline (no allocation a
/// slot) for the few regions an item is ever told by.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
struct RegionSet(smallvec::SmallVec<[u16; 4]>);

impl RegionSet {
    fn one(ri: usize) -> Self {
        let mut set = RegionSet::default();
        set.insert(ri);
        set
    }

    fn insert(&mut self, ri: usize) {
        // A region's index is its place in the federation's list of regions.
        let ri = u16::try_from(ri).expect("fewer than 65,536 regions");
        if let Err(at) = self.0.binary_search(&ri) {
            self.0.insert(at, ri);
        }
    }

    fn contains(&self, ri: usize) -> bool {
        u16::try_from(ri).is_ok_and(|ri| self.0.contains(&ri))
    }

    fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.0.iter().map(|&r| usize::from(r))
    }
}

/// One merged entry before it is written.
struct Slot {
    rtype: ResourceType,
    /// Every version folded in; `shown` is the one written. Inline for the one most slots
    /// ever hold.
    versions: smallvec::SmallVec<[Version; 1]>,
    shown: usize,
    regions: RegionSet,
    /// The region whose version is shown.
    origin: usize,
    /// Regions holding another version of the item: the region, when it last updated it,
    /// and the version's content key (each version is noted once).
    other_versions: Vec<OtherVersion>,
    /// Its index when made (slots are sorted later).
    key: usize,
}

impl Slot {
    fn item(&self) -> &Item {
        &self.versions[self.shown].item
    }
}

/// Merges the regions' results into one Bundle: [`merge_view`] and the entries that name
/// this request ([`View::request_entries`]).
pub fn merge(query: &PatientQuery, results: Vec<RegionResult>, ctx: MergeContext<'_>) -> Merged {
    let view = merge_view(
        query,
        results,
        ViewContext {
            gateway_base: ctx.gateway_base,
            issues: ctx.issues,
            on_mismatch: ctx.on_mismatch,
        },
    );
    view.into_merged(&Envelope {
        bundle_id: ctx.bundle_id,
        now: ctx.now,
        self_link: ctx.self_link,
    })
}

/// What a merge depends on besides the regions' results, none of it about one request.
#[derive(Debug, Clone)]
pub struct ViewContext<'a> {
    pub gateway_base: &'a str,
    pub issues: Vec<Issue>,
    pub on_mismatch: MismatchPolicy,
}

/// What names one request in its Bundle.
#[derive(Debug, Clone, Copy)]
pub struct Envelope<'a> {
    pub bundle_id: &'a str,
    pub now: &'a str,
    pub self_link: &'a str,
}

impl Envelope<'_> {
    /// The Bundle's links: its `self`.
    pub fn links(&self) -> [(&'static str, String); 1] {
        [("self", self.self_link.to_owned())]
    }
}

/// A region's part in a view, for its Provenance: the entries it contributed that are shown.
#[derive(Debug, Clone, PartialEq)]
pub struct Contribution {
    pub region: RegionInfo,
    /// The entries' addresses, shared with the entries.
    pub targets: Vec<Arc<str>>,
    pub stale_seconds: Option<u64>,
    pub elapsed_ms: u64,
}

/// A merge's result before it names a request: a pure function of the regions' results, the
/// query and the [`ViewContext`], so that two requests with the same inputs have the same view
/// (which the view cache relies on). `matches` are the `match` entries, Patient first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct View {
    pub matches: Vec<Written>,
    /// What the matches reference (`search.mode = include`), each once.
    pub includes: Vec<Written>,
    pub patient: Option<Value>,
    /// Matches before `_count` cut them.
    pub total: usize,
    pub regions_answered: usize,
    pub regions_failed: usize,
    pub all_failures_timeouts: bool,
    pub discarded: usize,
    pub deduplicated: usize,
    pub issues: Vec<Issue>,
    /// One per region whose answer is shown, in code order.
    pub contributions: Vec<Contribution>,
}

/// An entry written once: its `fullUrl` and its JSON text.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    /// Shared with the view's Provenance, which names it.
    pub full_url: Arc<str>,
    /// Shared: a kept view and the Bundles written from it hold the same text, which holds
    /// the resource's unchanged text as runs of its answer, not a copy.
    pub json: Spliced,
}

impl Written {
    /// An entry of `item` as `resource` writes it (its unchanged text taken as runs of the
    /// item's answer).
    fn of(
        full_url: Arc<str>,
        mode: SearchMode,
        item: &Item,
        shared: &fhir::item::Source,
        resource: impl FnOnce(&mut Writer<'_>),
    ) -> Written {
        let mut out = Writer::new(Some(item.source())).sharing(shared);
        crate::fhir::item::write_entry(&full_url, mode, resource, &mut out);
        Written {
            full_url,
            json: out.finish(),
        }
    }

    /// An entry of a resource given as a tree (the merged Patient).
    fn of_value(full_url: &str, resource: &Value, mode: SearchMode) -> Written {
        let mut out = Writer::new(None);
        crate::fhir::item::write_entry(
            full_url,
            mode,
            |w| {
                let _ = serde_json::to_writer(w.own(), resource);
            },
            &mut out,
        );
        Written {
            full_url: full_url.into(),
            json: out.finish(),
        }
    }

    /// The entry as a tree (for the few answers built as one: pages, counts).
    pub fn to_value(&self) -> Value {
        serde_json::from_str(&self.json.as_text()).unwrap_or(Value::Null)
    }
}

impl View {
    /// The view as the Bundle answering one request.
    pub fn into_merged(self, envelope: &Envelope<'_>) -> Merged {
        let mut entries: Vec<Value> = self
            .matches
            .iter()
            .chain(&self.includes)
            .map(Written::to_value)
            .collect();
        entries.extend(
            self.request_entries(envelope, |c| c.elapsed_ms)
                .iter()
                .map(RequestEntry::to_value),
        );
        let bundle = fhir::searchset(
            envelope.bundle_id,
            envelope.now,
            envelope.self_link,
            self.total,
            entries,
        );
        Merged {
            bundle,
            patient: self.patient,
            total: self.total,
            regions_answered: self.regions_answered,
            regions_failed: self.regions_failed,
            all_failures_timeouts: self.all_failures_timeouts,
            discarded: self.discarded,
            deduplicated: self.deduplicated,
            issues: self.issues,
        }
    }

    /// The matches and includes, written once for any number of Bundles.
    pub fn written(&self) -> fhir::SerializedEntries {
        fhir::SerializedEntries::from_shared(
            self.matches
                .iter()
                .chain(&self.includes)
                .map(|w| w.json.clone())
                .collect(),
        )
    }

    /// The entries after the matches and includes that name the request: a Provenance per
    /// region that answered (taking `elapsed` ms, normally [`Contribution::elapsed_ms`]),
    /// then the OperationOutcome when there are issues.
    pub fn request_entries(
        &self,
        envelope: &Envelope<'_>,
        elapsed: impl Fn(&Contribution) -> u64,
    ) -> Vec<RequestEntry> {
        let mut entries: Vec<RequestEntry> = self
            .contributions
            .iter()
            .map(|c| provenance(c, elapsed(c), envelope))
            .collect();
        if !self.issues.is_empty() {
            let oo_url = format!("urn:uuid:{}", envelope.bundle_id);
            let outcome = operation_outcome(&self.issues);
            entries.push(RequestEntry::of(&oo_url, SearchMode::Outcome, |out| {
                let _ = serde_json::to_writer(out, &outcome);
            }));
        }
        entries
    }
}

/// An entry that names the request (a region's Provenance, the OperationOutcome), written as
/// text: a Provenance targets every entry its region gave, thousands for a long record, and no
/// tree is built of them.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestEntry {
    pub mode: SearchMode,
    pub json: String,
}

impl RequestEntry {
    fn of(full_url: &str, mode: SearchMode, resource: impl FnOnce(&mut Vec<u8>)) -> Self {
        let mut out = Writer::new(None);
        crate::fhir::item::write_entry(full_url, mode, |w| resource(w.own()), &mut out);
        RequestEntry {
            mode,
            // Written from strings and serde_json: UTF-8.
            json: String::from_utf8(out.into_written()).unwrap_or_default(),
        }
    }

    /// The entry as a tree (answers built as one, tests).
    pub fn to_value(&self) -> Value {
        serde_json::from_str(&self.json).unwrap_or(Value::Null)
    }
}

impl fhir::EntryJson for RequestEntry {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.json.as_bytes());
    }
}

/// A region's Provenance entry in a Bundle: what it contributed, and when.
fn provenance(c: &Contribution, elapsed_ms: u64, envelope: &Envelope<'_>) -> RequestEntry {
    let region = &c.region;
    let activity = match c.stale_seconds {
        Some(age) => format!(
            "could not answer; its answer of {} ago is shown",
            crate::fhir::describe_age(age)
        ),
        None => format!("answered the federated query in {elapsed_ms} ms"),
    };
    let string = crate::fhir::item::write_str;
    let full_url = format!(
        "urn:uuid:{}",
        provenance_uuid(&region.code, envelope.bundle_id)
    );
    // Written straight out (a kept view's repeat writes these for every request): the same
    // text serde_json would write of the same elements in this order.
    RequestEntry::of(&full_url, SearchMode::Include, |out| {
        out.extend_from_slice(br#"{"resourceType":"Provenance","id":"#);
        string(&format!("{}-{}", region.code, envelope.bundle_id), out);
        out.extend_from_slice(br#","target":["#);
        for (i, target) in c.targets.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(br#"{"reference":"#);
            string(target, out);
            out.push(b'}');
        }
        out.extend_from_slice(br#"],"recorded":"#);
        string(envelope.now, out);
        out.extend_from_slice(br#","activity":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v3-DataOperation","code":"CREATE","display":"create"}],"text":"#);
        string(&activity, out);
        out.extend_from_slice(br#"},"agent":[{"type":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/provenance-participant-type","code":"custodian","display":"Custodian"}]},"who":{"identifier":{"system":"#);
        string(REGION_TAG_SYSTEM, out);
        out.extend_from_slice(br#","value":"#);
        string(&region.code, out);
        out.extend_from_slice(br#"},"display":"#);
        string(&region.name, out);
        out.extend_from_slice(b"}}]}");
    })
}

/// What the regions' answers give the merge once screened: each region's Patient resources,
/// items and includes, and what was said of them.
struct Accounted {
    patients: Vec<(usize, Value)>,
    items: Vec<(usize, Item)>,
    included: Vec<(usize, Vec<Item>)>,
    answered: usize,
    failed: usize,
    all_timeouts: bool,
    discarded: usize,
}

/// Phase one: each region's answer screened, and every failure, stale answer, cut, withheld
/// item and discarded item named in `issues`.
fn account(
    results: &mut [RegionResult],
    query: &PatientQuery,
    issues: &mut Vec<Issue>,
) -> Accounted {
    let mut acc = Accounted {
        patients: Vec::new(),
        items: Vec::new(),
        included: Vec::new(),
        answered: 0,
        failed: 0,
        all_timeouts: true,
        discarded: 0,
    };
    for (ri, result) in results.iter_mut().enumerate() {
        let region = &result.region;
        let named =
            |issue: Issue| issue.with_details(REGION_TAG_SYSTEM, &region.code, &region.name);
        match &mut result.outcome {
            Err(failure) => {
                acc.failed += 1;
                acc.all_timeouts &= failure.kind == FailureKind::Timeout;
                issues.push(named(Issue::new(
                    Severity::Error,
                    failure.kind.issue_code(),
                    format!(
                        "Region {} ({}) {}: {}. Its records are not included.",
                        region.code,
                        region.name,
                        failure.kind.label(),
                        failure.reason
                    ),
                )));
            }
            Ok(answer) => {
                acc.answered += 1;
                // The items move into the merge; what the Provenance needs stays behind.
                let taken = RecordAnswer {
                    patients: std::mem::take(&mut answer.patients),
                    items: std::mem::take(&mut answer.items),
                    withheld: answer.withheld,
                    stale_seconds: answer.stale_seconds,
                    cuts: std::mem::take(&mut answer.cuts),
                    included: std::mem::take(&mut answer.included),
                };
                let (answer, dropped) = screen(taken, query);
                if let Some(age) = answer.stale_seconds {
                    issues.push(named(Issue::new(
                        Severity::Warning,
                        "transient",
                        format!(
                            "Region {} ({}) could not answer just now; its records shown are from its answer of {} ago and may be out of date.",
                            region.code,
                            region.name,
                            crate::fhir::describe_age(age)
                        ),
                    )));
                }
                for cut in &answer.cuts {
                    issues.push(cut.to_issue(Some((&region.code, &region.name))));
                }
                if answer.withheld > 0 {
                    issues.push(named(Issue::new(
                        Severity::Warning,
                        "suppressed",
                        format!(
                            "Region {} ({}) withheld some items under its consent and release policy.",
                            region.code, region.name
                        ),
                    )));
                }
                if dropped > 0 {
                    acc.discarded += dropped;
                    issues.push(named(Issue::new(
                        Severity::Warning,
                        "processing",
                        format!(
                            "Region {} ({}) returned {dropped} resource(s) that are not about the requested patient or not of the requested type; they were discarded.",
                            region.code, region.name
                        ),
                    )));
                }
                acc.patients
                    .extend(answer.patients.into_iter().map(|p| (ri, p)));
                acc.items.extend(answer.items.into_iter().map(|i| (ri, i)));
                acc.included.push((ri, answer.included));
            }
        }
    }
    acc
}

/// Phase two: a possible wrong-patient match. Regions whose demographics disagree with the
/// most recently updated region's are named (and, under `Withhold`, their records left out).
fn check_demographics(
    acc: &mut Accounted,
    results: &[RegionResult],
    on_mismatch: MismatchPolicy,
    issues: &mut Vec<Issue>,
) -> BTreeSet<usize> {
    let conflicts = demographic_conflicts(&acc.patients);
    let mut withheld_regions = BTreeSet::new();
    for (ri, fields) in &conflicts {
        let region = &results[*ri].region;
        let withhold = on_mismatch == MismatchPolicy::Withhold;
        if withhold {
            withheld_regions.insert(*ri);
        }
        issues.push(
            Issue::new(
                if withhold { Severity::Error } else { Severity::Warning },
                "business-rule",
                format!(
                    "Possible wrong-patient match: region {} ({}) holds this NHS number with a different {}. {}",
                    region.code,
                    region.name,
                    fields.join(", "),
                    if withhold {
                        "Its records are withheld; check the patient's identity with that region."
                    } else {
                        "Check the patient's identity before acting on that region's records."
                    }
                ),
            )
            .with_details(REGION_TAG_SYSTEM, &region.code, &region.name),
        );
    }
    if !withheld_regions.is_empty() {
        acc.patients
            .retain(|(ri, _)| !withheld_regions.contains(ri));
        let before = acc.items.len();
        acc.items.retain(|(ri, _)| !withheld_regions.contains(ri));
        acc.discarded += before - acc.items.len();
        acc.included
            .retain(|(ri, _)| !withheld_regions.contains(ri));
    }
    withheld_regions
}

/// An item with what the merge matches it by: keys read off its view, no digest yet.
struct Keyed {
    region: usize,
    item: Item,
    rtype: ResourceType,
    /// Its business identifiers' identities: the same item across regions has one of them.
    /// Inline for the one or two an item has.
    idents: smallvec::SmallVec<[ContentKey; 2]>,
    /// Type, concept and clinical date: items of equal content have equal cheap keys, so
    /// content is compared (digested) only between items that share one.
    cheap: u64,
    /// Without a shared identifier, another region's item of the same type, code, subject and
    /// clinical date is the same item (perhaps another version of it). Two such items of one
    /// region stay apart: the region knows them as two.
    clinical: Option<ContentKey>,
}

fn keyed(
    region: usize,
    item: Item,
    hasher: &foldhash::fast::RandomState,
    keys_needed: bool,
) -> Option<Keyed> {
    let v = item.view();
    let rtype = v.kind?;
    if !keys_needed {
        return Some(Keyed {
            region,
            item,
            rtype,
            idents: smallvec::SmallVec::new(),
            cheap: 0,
            clinical: None,
        });
    }
    let idents = v
        .identifiers()
        .map(|(system, value)| identifier_key(v.rtype(), system, value))
        .collect();
    let cheap = {
        use std::hash::BuildHasher;
        hasher.hash_one((v.rtype(), v.concept(), v.clinical_date()))
    };
    let clinical = match (v.concept(), v.clinical_date()) {
        (Some(concept), Some(date)) => Some(key_of(&[
            "clinical:",
            rtype.as_str(),
            ":",
            concept,
            ":",
            date,
        ])),
        _ => None,
    };
    Some(Keyed {
        region,
        item,
        rtype,
        idents,
        cheap,
        clinical,
    })
}

/// The slots items were folded into, and where each region's items went.
struct Folded {
    slots: Vec<Slot>,
    /// (region, its local `Type/id`) -> the slot the item went to, for references.
    local_refs: RefIndex,
    deduplicated: usize,
}

/// A hash map for the merge's own keys (content digests, cheap keys, local references):
/// foldhash, seeded per process, rather than SipHash, which a profile found costing more
/// than the lookups it served.
type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
type FastSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

/// What a region's local reference (`Type/id`) stands for, looked up without copying it.
#[derive(Default)]
struct RefIndex(FastMap<usize, FastMap<String, usize>>);

impl RefIndex {
    fn insert(&mut self, region: usize, local: String, to: usize) {
        self.0.entry(region).or_default().insert(local, to);
    }

    fn get(&self, region: usize, local: &str) -> Option<usize> {
        self.0.get(&region)?.get(local).copied()
    }
}

/// Phase three: items folded across regions. Only another region's item is the same item:
/// two records one region holds under different ids stay two, whatever their content (the
/// region knows them as two). The same business identifier, the same content or the same
/// clinical identity, in that order, make two regions' items one entry.
fn fold(items: Vec<(usize, Item)>, patient_url: &str, nhs: &str) -> Folded {
    let mut slots: Vec<Slot> = Vec::with_capacity(items.len());
    let (mut by_ident, mut by_clinical, mut by_digest): (
        Index<ContentKey>,
        Index<ContentKey>,
        Index<ContentKey>,
    ) = Default::default();
    let mut by_cheap: FastMap<u64, CheapGroup> = Default::default();
    let mut local_refs = RefIndex::default();
    let mut deduplicated = 0;
    // Items come region by region, in code order (see `account`), and an item folds only
    // into another region's slot. So the first region's items have nothing to fold into and
    // look nothing up, and the last region's are looked up by no later item and are noted in
    // no index: one region's answer is neither keyed nor indexed.
    debug_assert!(
        items.windows(2).all(|w| w[0].0 <= w[1].0),
        "items by region"
    );
    let first = items.first().map(|(ri, _)| *ri);
    let last = items.last().map(|(ri, _)| *ri);
    let keys_needed = first != last;
    // One seed for the request's cheap keys: equal items must get equal keys.
    let hasher = foldhash::fast::RandomState::default();
    // Keys are worked out on every core; without keys, each item is taken as it comes (no
    // vector of them all is made beside the slots).
    let keyed: Box<dyn Iterator<Item = Keyed>> = if keys_needed {
        let keyed = crate::parallel::map(items, |(ri, item)| keyed(ri, item, &hasher, true));
        Box::new(keyed.into_iter().flatten())
    } else {
        Box::new(
            items
                .into_iter()
                .filter_map(|(ri, item)| keyed(ri, item, &hasher, false)),
        )
    };
    for k in keyed {
        let ri = k.region;
        let (looks, notes) = (Some(ri) != first, Some(ri) != last);
        let version = Version::new(k.item);
        let mut found = None;
        if looks {
            found = k
                .idents
                .iter()
                .find_map(|key| by_ident.first_elsewhere(key, ri, &slots));
        }
        if looks
            && found.is_none()
            && let Some(group) = by_cheap.get_mut(&k.cheap)
            && group.elsewhere(ri)
        {
            // The same content: digests only now, of the items that met another region's
            // on the cheap key (each once).
            group.digest(&slots, &mut by_digest, patient_url, nhs);
            found = by_digest.first_elsewhere(&version.digest(patient_url, nhs), ri, &slots);
        }
        if looks && found.is_none() {
            found = k
                .clinical
                .and_then(|key| by_clinical.first_elsewhere(&key, ri, &slots));
        }
        let local_ref = [k.rtype.as_str(), "/", version.item.id()].concat();
        let (at, vi) = match found {
            Some(slot) => {
                deduplicated += 1;
                fold_into(&mut slots[slot], ri, version, patient_url, nhs);
                (slot, slots[slot].versions.len() - 1)
            }
            None => {
                slots.push(Slot {
                    rtype: k.rtype,
                    versions: smallvec::smallvec![version],
                    shown: 0,
                    regions: RegionSet::one(ri),
                    origin: ri,
                    other_versions: Vec::new(),
                    key: slots.len(),
                });
                (slots.len() - 1, 0)
            }
        };
        local_refs.insert(ri, local_ref, slots[at].key);
        if !notes {
            continue;
        }
        for key in k.idents {
            by_ident.note(key, at);
        }
        let group = by_cheap.entry(k.cheap).or_default();
        group.placed.push((at, vi));
        group.regions.insert(ri);
        if group.digested {
            by_digest.note(slots[at].versions[vi].digest(patient_url, nhs), at);
        }
        if let Some(key) = k.clinical {
            by_clinical.note(key, at);
        }
    }
    Folded {
        slots,
        local_refs,
        deduplicated,
    }
}

/// Slots by a key, in the order they were noted. Looking up the first slot a region is not
/// in resumes where the last look for that region stopped: slots only ever gain regions, and
/// the regions come one after another, so each list is walked once per region (not once per
/// item, which made many items of one code and date quadratic).
struct Index<K> {
    lists: FastMap<K, Listed>,
}

impl<K> Default for Index<K> {
    fn default() -> Self {
        Index {
            lists: FastMap::default(),
        }
    }
}

struct Listed {
    /// Inline for the one slot most keys ever name.
    slots: smallvec::SmallVec<[usize; 1]>,
    /// The region the cursor is for, and where its search stopped.
    region: usize,
    cursor: usize,
}

impl<K: std::hash::Hash + Eq> Index<K> {
    fn note(&mut self, key: K, slot: usize) {
        let listed = self.lists.entry(key).or_insert(Listed {
            slots: smallvec::SmallVec::new(),
            region: usize::MAX,
            cursor: 0,
        });
        if listed.slots.last() != Some(&slot) {
            listed.slots.push(slot);
        }
    }

    /// The first slot noted under `key` that does not hold an item of region `ri`.
    fn first_elsewhere(&mut self, key: &K, ri: usize, slots: &[Slot]) -> Option<usize> {
        let listed = self.lists.get_mut(key)?;
        if listed.region != ri {
            listed.region = ri;
            listed.cursor = 0;
        }
        while listed.cursor < listed.slots.len()
            && slots[listed.slots[listed.cursor]].regions.contains(ri)
        {
            listed.cursor += 1;
        }
        listed.slots.get(listed.cursor).copied()
    }
}

/// The items placed under one cheap key (slot, version), in order, and the regions that
/// placed them. Once two regions meet on it, every item placed under it is digested, in
/// placement order, into the content index.
#[derive(Default)]
struct CheapGroup {
    placed: smallvec::SmallVec<[(usize, usize); 1]>,
    regions: RegionSet,
    digested: bool,
}

impl CheapGroup {
    /// Whether another region than `ri` placed an item under this key.
    fn elsewhere(&self, ri: usize) -> bool {
        self.regions.iter().any(|r| r != ri)
    }

    fn digest(
        &mut self,
        slots: &[Slot],
        by_digest: &mut Index<ContentKey>,
        patient_url: &str,
        nhs: &str,
    ) {
        if self.digested {
            return;
        }
        for &(slot, vi) in &self.placed {
            by_digest.note(slots[slot].versions[vi].digest(patient_url, nhs), slot);
        }
        self.digested = true;
    }
}

/// Another region's version of a slot's item folded in: the same content shows the copy
/// updated most recently (the first on a tie); two versions keep the more recently updated and
/// say which region holds the other (each version once, at its most recent update), whatever
/// order they came in.
fn fold_into(s: &mut Slot, ri: usize, version: Version, patient_url: &str, nhs: &str) {
    s.regions.insert(ri);
    let shown = &s.versions[s.shown];
    let shown_key = shown.digest(patient_url, nhs);
    let item_key = version.digest(patient_url, nhs);
    let newer = version.item.view().updated_at > shown.item.view().updated_at;
    s.versions.push(version);
    let at = s.versions.len() - 1;
    if shown_key == item_key {
        if newer {
            s.shown = at;
            s.origin = ri;
        }
        return;
    }
    let view_of = |i: usize| s.versions[i].item.view();
    let other = if newer {
        let old = view_of(s.shown);
        let other = OtherVersion {
            region: s.origin,
            updated: old.last_updated().map(str::to_owned),
            at: old.updated_at,
            content: shown_key,
        };
        s.shown = at;
        s.origin = ri;
        other
    } else {
        let v = view_of(at);
        OtherVersion {
            region: ri,
            updated: v.last_updated().map(str::to_owned),
            at: v.updated_at,
            content: item_key,
        }
    };
    let current = s.versions[s.shown].digest(patient_url, nhs);
    s.other_versions.retain(|v| v.content != current);
    match s
        .other_versions
        .iter_mut()
        .find(|v| v.content == other.content)
    {
        Some(noted) if other.at > noted.at => *noted = other,
        Some(_) => {}
        None => s.other_versions.push(other),
    }
}

/// The regions' results merged: tagged, deduplicated, referenced and screened entries, the
/// issues, and what each region contributed. Pure, and independent of any one request.
pub fn merge_view(
    query: &PatientQuery,
    mut results: Vec<RegionResult>,
    ctx: ViewContext<'_>,
) -> View {
    // Order independence: whatever order regions answered in, they are merged in code order.
    results.sort_by(|a, b| a.region.code.cmp(&b.region.code));
    let nhs = query.nhs_number.as_str();
    let patient_url = format!("{}/Patient/{}", ctx.gateway_base, nhs);
    // What every entry would otherwise write again: taken as runs of one text.
    let shared = SharedTexts::new(
        &patient_url,
        nhs,
        &results.iter().map(|r| &r.region).collect::<Vec<_>>(),
    );
    let mut issues = ctx.issues;
    let mut acc = account(&mut results, query, &mut issues);
    let withheld_regions = check_demographics(&mut acc, &results, ctx.on_mismatch, &mut issues);
    let patients = std::mem::take(&mut acc.patients);
    let mut local_patients = RefIndex::default();
    for (ri, p) in &patients {
        local_patients.insert(*ri, format!("Patient/{}", id_of(p)), 0);
    }
    let Folded {
        mut slots,
        local_refs,
        deduplicated,
    } = fold(std::mem::take(&mut acc.items), &patient_url, nhs);

    let wants_patient = matches!(
        query.operation,
        Operation::PatientSearch | Operation::PatientRead | Operation::Everything { .. }
    );
    let patient = (!patients.is_empty())
        .then(|| merge_patients(&patients, |i| &results[i].region, nhs, ctx.gateway_base));

    // Phase four: newest first. Compared in place (no key is made, or allocated, a slot), and
    // ending on the order the slots were made in, so that the order is total and the sort
    // needs no buffer of its own.
    fn order(
        s: &Slot,
    ) -> (
        std::cmp::Reverse<i64>,
        ResourceType,
        &RegionSet,
        &str,
        usize,
    ) {
        let item = s.item();
        (
            std::cmp::Reverse(item.view().sort_start),
            s.rtype,
            &s.regions,
            item.id(),
            s.key,
        )
    }
    slots.sort_unstable_by(|a, b| order(a).cmp(&order(b)));

    // Phase five: every resource is addressed at this gateway, under an id naming its region,
    // so that `GET` on any fullUrl or reference answers (see `fhir::reference`).
    let write_url = |out: &mut String, ri: usize, t: &str, id: &str| {
        let region = &results[ri].region;
        let base = ctx.gateway_base;
        if !crate::fhir::reference::write_federated_url(out, base, t, &region.code, id) {
            // An id too long to carry its region stays addressed at its region.
            out.extend([&region.base_url, "/", t, "/", id]);
        }
    };
    let gateway_url = |ri: usize, t: &str, id: &str| -> String {
        let base = ctx
            .gateway_base
            .len()
            .max(results[ri].region.base_url.len());
        let mut url = String::with_capacity(base + t.len() + id.len() + 32);
        write_url(&mut url, ri, t, id);
        url
    };
    // Each slot's address, by the index it was made under: shared by the slot's entry and
    // its region's Provenance, not copied into each; written into one buffer and copied once
    // into its shared text (a string made for each and then copied was two allocations).
    let mut url_by_key: Vec<Arc<str>> = vec![Arc::from(""); slots.len()];
    let mut address = String::new();
    for s in &slots {
        address.clear();
        write_url(&mut address, s.origin, s.rtype.as_str(), s.item().id());
        url_by_key[s.key] = Arc::from(address.as_str());
    }
    // What the items reference, included beside them (`$everything`), each shown once.
    let mut includes = merge_included(std::mem::take(&mut acc.included));
    for inc in &mut includes {
        inc.url = gateway_url(inc.origin, inc.item.rtype(), inc.item.id());
    }
    let mut include_refs = RefIndex::default();
    for (i, inc) in includes.iter().enumerate() {
        for (ri, local) in &inc.local_refs {
            include_refs.insert(*ri, local.clone(), i);
        }
    }
    // References resolve inside the Bundle where the target is in it; otherwise at this
    // gateway, under the id naming the region that holds the target.
    let resolve_from = |origin: usize, local: &str| -> String {
        if local_patients.get(origin, local).is_some() {
            return patient_url.clone();
        }
        if let Some(url) = local_refs
            .get(origin, local)
            .and_then(|k| url_by_key.get(k))
        {
            return url.to_string();
        }
        if let Some(i) = include_refs.get(origin, local) {
            return includes[i].url.clone();
        }
        match crate::fhir::reference::split_relative(local) {
            Some((t, id)) => gateway_url(origin, t, id),
            None => [&results[origin].region.base_url, "/", local].concat(),
        }
    };

    // Phase six: each entry written apart from the others (on every core when there are
    // many), its bytes copied and only what changes spliced in.
    let include_entries: Vec<Written> = includes
        .iter()
        .map(|inc| {
            let id = last_segment(&inc.url);
            let meta = shared.edit(&results, inc.origin, &inc.regions);
            let splice = Splice {
                id,
                patient: None,
                meta: &meta,
                resolve: &|local| resolve_from(inc.origin, local),
            };
            Written::of(
                inc.url.as_str().into(),
                SearchMode::Include,
                &inc.item,
                &shared.text,
                |out| inc.item.write_spliced_runs(&splice, out),
            )
        })
        .collect();
    let patient = patient.map(|mut p| {
        // The merged Patient's own references (its GP practice, its managing organisation)
        // are the most recently updated region's.
        if let Some(origin) = newest_patient_region(&patients) {
            qualify_references(&mut p, &|local| resolve_from(origin, local));
        }
        p
    });
    // Per region: the entries it contributed to (for its Provenance).
    let mut contributed: BTreeMap<usize, Vec<&Arc<str>>> = BTreeMap::new();
    for slot in &slots {
        for ri in slot.regions.iter() {
            contributed
                .entry(ri)
                .or_default()
                .push(&url_by_key[slot.key]);
        }
    }
    let pointed = |old: &str, out: &mut Writer<'_>| write_pointed(old, shared.pointer(), out);
    let finished = crate::parallel::map(slots, |slot: Slot| {
        let full_url = &url_by_key[slot.key];
        let mut meta = shared.edit(&results, slot.origin, &slot.regions);
        meta.extensions = slot
            .other_versions
            .iter()
            .map(|v| other_version(&results[v.region].region, v.updated.as_deref()))
            .collect();
        let splice = Splice {
            id: last_segment(full_url),
            patient: Some((slot.rtype.patient_element(), &pointed)),
            meta: &meta,
            resolve: &|local| resolve_from(slot.origin, local),
        };
        Written::of(
            full_url.clone(),
            SearchMode::Match,
            slot.item(),
            &shared.text,
            |out| slot.item().write_spliced_runs(&splice, out),
        )
    });
    let mut matches: Vec<Written> = Vec::new();
    if wants_patient && let Some(p) = &patient {
        matches.push(Written::of_value(&patient_url, p, SearchMode::Match));
    }
    matches.extend(finished);
    let total = matches.len();
    if let Some(count) = query.count {
        matches.truncate(count as usize);
    }
    // Phase seven: one Provenance per region that answered: what it contributed.
    let shown: FastSet<&str> = matches.iter().map(|e| &*e.full_url).collect();
    let mut contributions = Vec::new();
    for (ri, result) in results.iter().enumerate() {
        let Ok(answer) = &result.outcome else {
            continue;
        };
        if withheld_regions.contains(&ri) {
            continue;
        }
        let mut targets: Vec<Arc<str>> = contributed
            .get(&ri)
            .into_iter()
            .flatten()
            .filter(|u| shown.contains(u.as_ref()))
            .map(|u| Arc::clone(u))
            .collect();
        if targets.is_empty() {
            // A region that contributed nothing shown still answered about the patient.
            targets.push(patient_url.as_str().into());
        }
        contributions.push(Contribution {
            region: result.region.clone(),
            targets,
            stale_seconds: answer.stale_seconds,
            elapsed_ms: result.elapsed_ms,
        });
    }
    View {
        matches,
        includes: include_entries,
        patient,
        total,
        regions_answered: acc.answered,
        regions_failed: acc.failed,
        all_failures_timeouts: acc.failed > 0 && acc.all_timeouts,
        discarded: acc.discarded,
        deduplicated,
        issues,
        contributions,
    }
}

/// The last segment of an address: the id an entry is shown under.
fn last_segment(url: &str) -> &str {
    url.rsplit('/').next().unwrap_or(url)
}

/// One region's resource read by id (`GET /fhir/{Type}/{region}.{id}`), as the gateway shows
/// it: its id naming the region, its references at this gateway (the patient's at the merged
/// Patient, when `patient` gives the region's Patient ids and the NHS number), and tagged with
/// its region.
pub fn present_read(
    mut resource: Value,
    region: &RegionInfo,
    gateway_base: &str,
    patient: Option<(&[String], &str)>,
) -> Value {
    let at_gateway =
        |t: &str, id: &str| match crate::fhir::reference::federated_id(&region.code, id) {
            Some(fid) => format!("{gateway_base}/{t}/{fid}"),
            None => format!("{}/{t}/{id}", region.base_url),
        };
    let resolve = |local: &str| -> String {
        match crate::fhir::reference::split_relative(local) {
            Some(("Patient", id)) => match patient {
                Some((ids, nhs)) if ids.iter().any(|p| p == id) => {
                    format!("{gateway_base}/Patient/{nhs}")
                }
                _ => format!("{}/{local}", region.base_url),
            },
            Some((t, id)) => at_gateway(t, id),
            None => format!("{}/{local}", region.base_url),
        }
    };
    qualify_references(&mut resource, &resolve);
    let rtype = resource_type(&resource).unwrap_or("").to_owned();
    let url = at_gateway(&rtype, id_of(&resource));
    set_gateway_id(&mut resource, &url);
    tag(&mut resource, &region.base_url, std::iter::once(region));
    resource
}

/// A resource the items reference, shown once however many regions hold it.
struct Included {
    item: Item,
    regions: RegionSet,
    origin: usize,
    /// (region, its local `Type/id`) of every copy folded in.
    local_refs: Vec<(usize, String)>,
    /// Its address at this gateway (set once the origin is known).
    url: String,
}

/// Folds the regions' included resources: the same business identifier (an organisation's
/// ODS code, a practitioner's professional registration, ...) or the same content, held by
/// two regions, is one resource. Two a region holds stay two. Content is digested only when
/// more than one region includes anything.
fn merge_included(mut by_region: Vec<(usize, Vec<Item>)>) -> Vec<Included> {
    by_region.sort_by_key(|(ri, _)| *ri);
    let digest = by_region.iter().filter(|(_, r)| !r.is_empty()).count() > 1;
    let mut out: Vec<Included> = Vec::new();
    let mut index: FastMap<ContentKey, Vec<usize>> = Default::default();
    for (ri, resources) in by_region {
        for item in resources {
            let v = item.view();
            let local = [v.rtype(), "/", item.id()].concat();
            let keys: Vec<ContentKey> = v
                .identifiers()
                .map(|(system, value)| identifier_key(v.rtype(), system, value))
                .chain(digest.then(|| item.content_digest(&["id", "meta"], None)))
                .collect();
            let found = keys.iter().find_map(|k| {
                index
                    .get(k)
                    .and_then(|v| v.iter().copied().find(|&i| !out[i].regions.contains(ri)))
            });
            let at = match found {
                Some(i) => {
                    out[i].regions.insert(ri);
                    out[i].local_refs.push((ri, local));
                    i
                }
                None => {
                    out.push(Included {
                        item,
                        regions: RegionSet::one(ri),
                        origin: ri,
                        local_refs: vec![(ri, local)],
                        url: String::new(),
                    });
                    out.len() - 1
                }
            };
            for k in keys {
                note_slot(&mut index, k, at);
            }
        }
    }
    out
}

/// The resource's `id` becomes the last segment of its address at this gateway.
fn set_gateway_id(resource: &mut Value, url: &str) {
    if let (Some(id), Some(obj)) = (url.rsplit('/').next(), resource.as_object_mut()) {
        obj.insert("id".into(), Value::String(id.to_owned()));
    }
}

/// The region of the most recently updated Patient (whose demographics the merged one takes).
fn newest_patient_region(patients: &[(usize, Value)]) -> Option<usize> {
    patients
        .iter()
        .max_by(|a, b| {
            last_updated(&a.1)
                .cmp(&last_updated(&b.1))
                .then(b.0.cmp(&a.0))
        })
        .map(|(ri, _)| *ri)
}

/// Notes that `slot` holds an item with key `k` (once).
fn note_slot<K: std::hash::Hash + Eq>(index: &mut FastMap<K, Vec<usize>>, k: K, slot: usize) {
    let slots = index.entry(k).or_default();
    if !slots.contains(&slot) {
        slots.push(slot);
    }
}

fn id_of(resource: &Value) -> &str {
    resource.get("id").and_then(Value::as_str).unwrap_or("")
}

/// Identity of content for deduplication: the resource, pointed at the merged Patient,
/// without its region-local `id` and `meta`, in canonical JSON (keys sorted at every depth).
fn content_key(item: &Item, patient_url: &str, nhs: &str) -> ContentKey {
    let pointed = |old: &str, out: &mut String| write_pointed_canonical(old, patient_url, nhs, out);
    let replace = item
        .view()
        .kind
        .map(|k| (k.patient_element(), &pointed as &dyn Fn(&str, &mut String)));
    item.content_digest(&["id", "meta"], replace)
}

/// [`write_pointed`] of the reference `old` (its text), in canonical JSON.
fn write_pointed_canonical(old: &str, patient_url: &str, nhs: &str, out: &mut String) {
    let pointer = pointer_text(patient_url, nhs);
    let mut pointed = Writer::new(None);
    write_pointed(old, &pointer, &mut pointed);
    // Written from text and serde_json: UTF-8, and JSON.
    let text = String::from_utf8(pointed.into_written()).unwrap_or_default();
    if crate::fhir::item::write_canonical_text(&text, out).is_none() {
        out.push_str("null");
    }
}

/// An item's identity in the merge: SHA-256 of its canonical content, or of a business
/// identifier.
type ContentKey = [u8; 32];

/// The reference to the merged Patient, as every item's patient element begins:
/// `{"reference":…,"identifier":{"system":…,"value":…}}`.
fn pointer_text(patient_url: &str, nhs: &str) -> String {
    let mut out = Vec::with_capacity(160);
    out.extend_from_slice(b"{\"reference\":");
    let _ = serde_json::to_writer(&mut out, patient_url);
    out.extend_from_slice(b",\"identifier\":{\"system\":");
    let _ = serde_json::to_writer(&mut out, crate::fhir::nhs::NHS_NUMBER_SYSTEM);
    out.extend_from_slice(b",\"value\":");
    let _ = serde_json::to_writer(&mut out, nhs);
    out.extend_from_slice(b"}}");
    // Written from strings and serde_json: UTF-8.
    String::from_utf8(out).unwrap_or_default()
}

/// The region-local patient reference becomes the merged Patient's, so the reference resolves
/// inside the Bundle (or at this gateway) and identical items from two regions compare equal:
/// `pointer` ([`pointer_text`]), with the old reference's `display` kept as it came.
fn write_pointed(old: &str, pointer: &str, out: &mut Writer<'_>) {
    match crate::fhir::item::member_text(old, "display") {
        None => out.copy(pointer),
        Some(display) => {
            out.copy(&pointer[..pointer.len() - 1]);
            out.own().extend_from_slice(b",\"display\":");
            out.copy(display);
            out.push(b"}");
        }
    }
}

/// What every entry of a merge may share rather than write: the reference to the merged
/// Patient, and each region's `meta.source` and tag, written once into one text that the
/// entries take runs of.
struct SharedTexts {
    text: fhir::item::Source,
    pointer: (usize, usize),
    /// Per region: its base address as a JSON string, and its tag as a JSON object.
    regions: Vec<((usize, usize), (usize, usize))>,
}

impl SharedTexts {
    fn new(patient_url: &str, nhs: &str, regions: &[&RegionInfo]) -> Self {
        let mut out = Vec::with_capacity(256 * (regions.len() + 1));
        let span = |out: &mut Vec<u8>, write: &dyn Fn(&mut Vec<u8>)| {
            let start = out.len();
            write(out);
            (start, out.len())
        };
        let pointer = span(&mut out, &|o| {
            o.extend_from_slice(pointer_text(patient_url, nhs).as_bytes())
        });
        let regions = regions
            .iter()
            .map(|r| {
                let source = span(&mut out, &|o| crate::fhir::item::write_str(&r.base_url, o));
                let tag = span(&mut out, &|o| {
                    crate::fhir::item::write_tag(REGION_TAG_SYSTEM, &r.code, &r.name, o)
                });
                (source, tag)
            })
            .collect();
        SharedTexts {
            // Written from strings and serde_json: UTF-8.
            text: Arc::new(String::from_utf8(out).unwrap_or_default()),
            pointer,
            regions,
        }
    }

    fn at(&self, (a, b): (usize, usize)) -> &str {
        &self.text[a..b]
    }

    fn pointer(&self) -> &str {
        self.at(self.pointer)
    }

    /// [`region_edit`] of an item shown from region `origin` and held by `regions`, with its
    /// source and tags in their written form here (the two lists made from one set, so that
    /// they line up).
    fn edit<'a>(
        &'a self,
        results: &'a [RegionResult],
        origin: usize,
        regions: &RegionSet,
    ) -> fhir::item::MetaEdit<'a> {
        let mut edit = region_edit(
            &results[origin].region.base_url,
            regions.iter().map(|r| &results[r].region),
        );
        edit.written = Some(fhir::item::WrittenMeta {
            source: self.at(self.regions[origin].0),
            tags: regions.iter().map(|r| self.at(self.regions[r].1)).collect(),
        });
        edit
    }
}

/// Adds `meta.source` and one `meta.tag` per region, keeping whatever meta the region sent.
fn tag<'a>(resource: &mut Value, source: &'a str, regions: impl Iterator<Item = &'a RegionInfo>) {
    let Some(obj) = resource.as_object_mut() else {
        return;
    };
    let meta = obj.entry("meta").or_insert_with(|| json!({}));
    region_edit(source, regions).apply(meta);
}

/// What [`tag`] changes in `meta`: its source, and a tag for each region holding the item.
fn region_edit<'a>(
    source: &'a str,
    regions: impl Iterator<Item = &'a RegionInfo>,
) -> crate::fhir::item::MetaEdit<'a> {
    crate::fhir::item::MetaEdit {
        source,
        tags: regions
            .map(|r| (REGION_TAG_SYSTEM, r.code.as_str(), r.name.as_str()))
            .collect(),
        extensions: Vec::new(),
        written: None,
    }
}

/// A stable UUID-shaped id for a region's Provenance in one Bundle (SHA-256 of both).
fn provenance_uuid(region: &str, bundle_id: &str) -> String {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(format!("{region}\n{bundle_id}").as_bytes());
    let hex = crate::audit::hex(&h[..16]);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// The extension on a merged Patient's identifier, name, telecom or address naming a region
/// that holds it (one per region).
pub const SOURCE_REGION_EXTENSION: &str = "urn:gateway:extension:source-region";

/// Names, in the element's own `extension`, the regions whose record holds it.
fn note_sources(element: &mut Value, regions: &BTreeSet<&str>) {
    let Some(obj) = element.as_object_mut() else {
        return;
    };
    let ext = obj.entry("extension").or_insert_with(|| json!([]));
    if let Some(list) = ext.as_array_mut() {
        for code in regions {
            list.push(json!({
                "url": SOURCE_REGION_EXTENSION,
                "valueCoding": {"system": REGION_TAG_SYSTEM, "code": code},
            }));
        }
    }
}

/// The extension that records another region's version of an item shown once.
pub const OTHER_VERSION_EXTENSION: &str = "urn:gateway:extension:other-version";

/// The `meta.extension` that records that `region` holds another version of this item (last
/// updated at `updated`), so nothing is dropped silently.
/// Written as serde_json writes [`other_version_tree`] (one string a version, where the
/// tree took a dozen allocations).
fn other_version(region: &RegionInfo, updated: Option<&str>) -> Box<RawValue> {
    let mut out = Vec::with_capacity(160);
    out.extend_from_slice(b"{\"url\":");
    fhir::item::write_str(OTHER_VERSION_EXTENSION, &mut out);
    out.extend_from_slice(b",\"extension\":[{\"url\":\"region\",\"valueCode\":");
    fhir::item::write_str(&region.code, &mut out);
    out.push(b'}');
    if let Some(u) = updated {
        out.extend_from_slice(b",{\"url\":\"lastUpdated\",\"valueInstant\":");
        fhir::item::write_str(u, &mut out);
        out.push(b'}');
    }
    out.extend_from_slice(b"]}");
    // Written from strings by serde_json's rules: UTF-8, and JSON.
    let text = String::from_utf8(out).unwrap_or_default();
    RawValue::from_string(text).unwrap_or_else(|_| {
        serde_json::value::to_raw_value(&other_version_tree(region, updated)).expect("a tree")
    })
}

/// The extension [`other_version`] writes, as a tree.
fn other_version_tree(region: &RegionInfo, updated: Option<&str>) -> Value {
    let mut parts = vec![json!({"url": "region", "valueCode": region.code})];
    if let Some(u) = updated {
        parts.push(json!({"url": "lastUpdated", "valueInstant": u}));
    }
    json!({"url": OTHER_VERSION_EXTENSION, "extension": parts})
}

/// SHA-256 of the parts, one after another (the digest of their concatenation, which is not
/// built).
fn key_of(parts: &[&str]) -> ContentKey {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
    }
    hasher.finalize().into()
}

/// The identity of a business identifier of a type: `id:{type}:{system}|{value}` digested.
fn identifier_key(rtype: &str, system: &str, value: &str) -> ContentKey {
    key_of(&["id:", rtype, ":", system, "|", value])
}

/// The demographics compared across regions: date of birth, sex, family name.
fn demographics(p: &Value) -> [(&'static str, Option<String>); 3] {
    let family = p
        .get("name")
        .and_then(Value::as_array)
        .and_then(|names| {
            names
                .iter()
                .find(|n| n.get("use").and_then(Value::as_str) == Some("official"))
                .or_else(|| names.first())
        })
        .and_then(|n| n.get("family"))
        .and_then(Value::as_str)
        .map(|f| f.trim().to_lowercase());
    [
        (
            "date of birth",
            p.get("birthDate")
                .and_then(Value::as_str)
                .map(str::to_owned),
        ),
        (
            "sex",
            p.get("gender").and_then(Value::as_str).map(str::to_owned),
        ),
        ("family name", family),
    ]
}

/// Regions whose Patient disagrees with the most recently updated one on a field both state,
/// with the fields.
pub fn demographic_conflicts(patients: &[(usize, Value)]) -> Vec<(usize, Vec<&'static str>)> {
    let Some(reference) = patients.iter().max_by(|a, b| {
        last_updated(&a.1)
            .cmp(&last_updated(&b.1))
            .then(b.0.cmp(&a.0))
    }) else {
        return Vec::new();
    };
    let base = demographics(&reference.1);
    let mut out: Vec<(usize, Vec<&'static str>)> = Vec::new();
    for (ri, p) in patients {
        if *ri == reference.0 {
            continue;
        }
        let fields: Vec<&'static str> = demographics(p)
            .iter()
            .zip(base.iter())
            .filter(|((_, a), (_, b))| matches!((a, b), (Some(a), Some(b)) if a != b))
            .map(|((name, _), _)| *name)
            .collect();
        if !fields.is_empty() {
            match out.iter_mut().find(|(r, _)| r == ri) {
                Some((_, f)) => {
                    f.extend(fields);
                    f.sort_unstable();
                    f.dedup();
                }
                None => out.push((*ri, fields)),
            }
        }
    }
    out
}

fn last_updated(p: &Value) -> i64 {
    // Not `pointer`, which makes a string of each step of its path.
    p.get("meta")
        .and_then(|m| m.get("lastUpdated"))
        .and_then(Value::as_str)
        .and_then(|s| date::parse_interval(s).ok())
        .map_or(i64::MIN, |i| i.start)
}

/// One Patient for the NHS number: the most recently updated region's demographics first,
/// identifiers, names, telecoms and addresses from every region (each once).
fn merge_patients<'r>(
    patients: &[(usize, Value)],
    region: impl Fn(usize) -> &'r RegionInfo,
    nhs: &str,
    gateway_base: &str,
) -> Value {
    let mut ordered: Vec<&(usize, Value)> = patients.iter().collect();
    ordered.sort_by_cached_key(|(ri, p)| (std::cmp::Reverse(last_updated(p)), *ri));
    let mut merged = ordered[0].1.clone();
    for list in ["identifier", "name", "telecom", "address"] {
        // Each value once, in the order first met, with every region that holds it.
        let mut out: Vec<(Value, BTreeSet<&str>)> = Vec::new();
        let mut index: std::collections::HashMap<String, usize> = Default::default();
        for (ri, p) in &ordered {
            for v in p.get(list).and_then(Value::as_array).into_iter().flatten() {
                let at = *index.entry(fhir::canonical_json(v)).or_insert_with(|| {
                    out.push((v.clone(), BTreeSet::new()));
                    out.len() - 1
                });
                out[at].1.insert(region(*ri).code.as_str());
            }
        }
        if !out.is_empty() {
            merged[list] = out
                .into_iter()
                .map(|(mut v, regions)| {
                    note_sources(&mut v, &regions);
                    v
                })
                .collect();
        }
    }
    merged["id"] = Value::String(nhs.to_owned());
    let mut regions: Vec<&RegionInfo> = ordered.iter().map(|(i, _)| region(*i)).collect();
    regions.sort_by(|a, b| a.code.cmp(&b.code));
    regions.dedup();
    if let Some(meta) = merged.get_mut("meta").and_then(Value::as_object_mut) {
        meta.remove("versionId");
        meta.remove("tag");
    }
    tag(&mut merged, gateway_base, regions.into_iter());
    merged
}

#[cfg(test)]
mod differential;
#[cfg(test)]
mod oracle;
#[cfg(test)]
mod props;
#[cfg(test)]
mod tests;
