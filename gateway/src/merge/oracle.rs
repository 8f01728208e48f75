//! The merge as it was before issue 16, on `serde_json::Value` trees: kept as the test oracle
//! the byte path is compared with (see `differential.rs`). Test code only; deliberately the
//! old code, unchanged but for its input type, so that it can be trusted as "what it did".
#![allow(dead_code)]
//!
//! Every entry is tagged with the region(s) it came from; a resource that several regions
//! returned identically appears once; the Patient is merged into one resource whose id is the
//! NHS number; entries are ordered newest first; and every region that failed, or whose answer
//! had to be screened, is named in an `OperationOutcome` entry.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

// What did not change with the byte path (the Patient's merge and its demographics check,
// Provenance, keys and ids) is the merge's own.
use super::{
    Contribution, Envelope, FailureKind, MergeContext, Merged, MismatchPolicy, RegionFailure,
    RegionInfo, ViewContext, demographic_conflicts, id_of, key_of, last_updated, merge_patients,
    newest_patient_region, provenance_uuid, set_gateway_id,
};
use crate::fhir::outcome::{Issue, Severity, operation_outcome};
use crate::fhir::types::{ResourceType, element, resource_type};
use crate::fhir::{self, REGION_TAG_SYSTEM, SearchMode, date};
use crate::query::{Operation, PatientQuery};
use crate::record::{PatientLink, has_nhs_number, patient_link};

/// A region's answer, with its items as trees (the old `RecordAnswer`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RecordAnswer {
    pub patients: Vec<Value>,
    pub items: Vec<Value>,
    pub withheld: usize,
    pub stale_seconds: Option<u64>,
    pub cuts: Vec<crate::record::pages::Cut>,
    pub included: Vec<Value>,
}

impl RecordAnswer {
    /// The old form of an answer of the byte path.
    pub fn of(a: &crate::record::RecordAnswer) -> Self {
        RecordAnswer {
            patients: a.patients.clone(),
            items: a.items.iter().map(|i| i.to_value()).collect(),
            withheld: a.withheld,
            stale_seconds: a.stale_seconds,
            cuts: a.cuts.clone(),
            included: a.included.iter().map(|i| i.to_value()).collect(),
        }
    }
}

/// What one region did.
#[derive(Debug, Clone, PartialEq)]
pub struct RegionResult {
    pub region: RegionInfo,
    pub outcome: Result<RecordAnswer, RegionFailure>,
    pub elapsed_ms: u64,
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
    let items: Vec<Value> = answer
        .items
        .into_iter()
        .filter(|item| {
            let Some(rt) = resource_type(item).and_then(ResourceType::parse) else {
                return false;
            };
            types.contains(&rt)
                && item.get("id").and_then(Value::as_str).is_some()
                && patient_link(item, rt.patient_element()).is_some_and(|l| links.contains(&l))
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
    kept: Vec<Value>,
    offered: usize,
}

/// Keeps what a region may include beside its items: for `$everything` only, resources that
/// its items, its Patient or its other included resources reference, never a Patient, and of a federated
/// type only when about the patient.
fn screen_included(
    query: &PatientQuery,
    items: &[Value],
    patients: &[Value],
    included: Vec<Value>,
    links: &BTreeSet<PatientLink>,
) -> ScreenedIncludes {
    let offered = included.len();
    if !matches!(query.operation, Operation::Everything { .. }) {
        return ScreenedIncludes {
            kept: Vec::new(),
            offered,
        };
    }
    let referenced: std::collections::HashSet<(String, String)> = items
        .iter()
        .chain(patients)
        .chain(&included)
        .flat_map(crate::fhir::reference::relative_references)
        .map(|(t, id)| (t.to_owned(), id.to_owned()))
        .collect();
    let kept = included
        .into_iter()
        .filter(|r| {
            let (Some(t), Some(id)) = (resource_type(r), r.get("id").and_then(Value::as_str))
            else {
                return false;
            };
            let about_patient = match ResourceType::parse(t) {
                Some(rt) => {
                    patient_link(r, rt.patient_element()).is_some_and(|l| links.contains(&l))
                }
                None => t != "Patient",
            };
            about_patient && referenced.contains(&(t.to_owned(), id.to_owned()))
        })
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

/// One merged entry before it becomes JSON.
struct Slot {
    rtype: ResourceType,
    resource: Value,
    /// The content key of the version shown.
    content: ContentKey,
    regions: BTreeSet<usize>,
    /// The region whose version is shown.
    origin: usize,
    /// Regions holding another version of the item: the region, when it last updated it,
    /// and the version's content key (each version is noted once).
    other_versions: Vec<OtherVersion>,
    /// Its index when made (slots are sorted later).
    key: usize,
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

/// A merge's result before it names a request: a pure function of the regions' results, the
/// query and the [`ViewContext`], so that two requests with the same inputs have the same view
/// (which the view cache relies on). `matches` are the `match` entries, Patient first.
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    pub matches: Vec<Value>,
    /// What the matches reference (`search.mode = include`), each once.
    pub includes: Vec<Value>,
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

impl View {
    /// The view as the Bundle answering one request.
    pub fn into_merged(mut self, envelope: &Envelope<'_>) -> Merged {
        let mut entries = std::mem::take(&mut self.matches);
        entries.extend(self.request_entries(envelope, |c| c.elapsed_ms));
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

    /// The entries after the matches that name the request: a Provenance per region that
    /// answered (taking `elapsed` ms, normally [`Contribution::elapsed_ms`]), then the
    /// OperationOutcome when there are issues.
    pub fn request_entries(
        &self,
        envelope: &Envelope<'_>,
        elapsed: impl Fn(&Contribution) -> u64,
    ) -> Vec<Value> {
        let mut entries: Vec<Value> = self.includes.clone();
        entries.extend(
            self.contributions
                .iter()
                .map(|c| provenance(c, elapsed(c), envelope)),
        );
        if !self.issues.is_empty() {
            let oo_url = format!("urn:uuid:{}", envelope.bundle_id);
            entries.push(fhir::entry(
                &oo_url,
                operation_outcome(&self.issues),
                SearchMode::Outcome,
            ));
        }
        entries
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
    let mut issues = ctx.issues;
    let mut slots: Vec<Slot> = Vec::new();
    // Items by identity (content digest or business identifier), hashed: every slot holding
    // one, since items of one region never fold into each other.
    let mut by_content: std::collections::HashMap<ContentKey, Vec<usize>> =
        std::collections::HashMap::new();
    // Items by type, code, subject and clinical date.
    let mut by_clinical: std::collections::HashMap<ContentKey, Vec<usize>> =
        std::collections::HashMap::new();
    let mut patients: Vec<(usize, Value)> = Vec::new();
    let (mut answered, mut failed, mut discarded, mut deduplicated) = (0, 0, 0, 0);
    let mut all_timeouts = true;
    let mut screened: Vec<(usize, Vec<Value>)> = Vec::new();
    let mut screened_included: Vec<(usize, Vec<Value>)> = Vec::new();

    for (ri, result) in results.iter_mut().enumerate() {
        let region = &result.region;
        match &mut result.outcome {
            Err(failure) => {
                failed += 1;
                all_timeouts &= failure.kind == FailureKind::Timeout;
                issues.push(
                    Issue::new(
                        Severity::Error,
                        failure.kind.issue_code(),
                        format!(
                            "Region {} ({}) {}: {}. Its records are not included.",
                            region.code,
                            region.name,
                            failure.kind.label(),
                            failure.reason
                        ),
                    )
                    .with_details(
                        REGION_TAG_SYSTEM,
                        &region.code,
                        &region.name,
                    ),
                );
            }
            Ok(answer) => {
                answered += 1;
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
                    issues.push(
                        Issue::new(
                            Severity::Warning,
                            "transient",
                            format!(
                                "Region {} ({}) could not answer just now; its records shown are from its answer of {} ago and may be out of date.",
                                region.code,
                                region.name,
                                crate::fhir::describe_age(age)
                            ),
                        )
                        .with_details(REGION_TAG_SYSTEM, &region.code, &region.name),
                    );
                }
                for cut in &answer.cuts {
                    issues.push(cut.to_issue(Some((&region.code, &region.name))));
                }
                if answer.withheld > 0 {
                    issues.push(
                        Issue::new(Severity::Warning, "suppressed", format!("Region {} ({}) withheld some items under its consent and release policy.", region.code, region.name))
                            .with_details(REGION_TAG_SYSTEM, &region.code, &region.name),
                    );
                }
                if dropped > 0 {
                    discarded += dropped;
                    issues.push(
                        Issue::new(
                            Severity::Warning,
                            "processing",
                            format!(
                                "Region {} ({}) returned {dropped} resource(s) that are not about the requested patient or not of the requested type; they were discarded.",
                                region.code, region.name
                            ),
                        )
                        .with_details(REGION_TAG_SYSTEM, &region.code, &region.name),
                    );
                }
                patients.extend(answer.patients.iter().cloned().map(|p| (ri, p)));
                screened.push((ri, answer.items));
                screened_included.push((ri, answer.included));
            }
        }
    }

    // A possible wrong-patient match: regions whose demographics disagree with the most
    // recently updated region's.
    let conflicts = demographic_conflicts(&patients);
    let mut withheld_regions = BTreeSet::new();
    for (ri, fields) in &conflicts {
        let region = &results[*ri].region;
        let withhold = ctx.on_mismatch == MismatchPolicy::Withhold;
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
        patients.retain(|(ri, _)| !withheld_regions.contains(ri));
    }

    // (region, its local `Type/id`) -> the slot the item went to, for references.
    let mut local_refs: std::collections::HashMap<(usize, String), usize> =
        std::collections::HashMap::new();
    let local_patients: BTreeSet<(usize, String)> = patients
        .iter()
        .map(|(ri, p)| (*ri, format!("Patient/{}", id_of(p))))
        .collect();
    // Each item's keys are its own business: worked out for all items at once, on every core
    // when there are many, then matched one after another in region order.
    let mut items: Vec<(usize, Value)> = Vec::new();
    for (ri, region_items) in screened {
        if withheld_regions.contains(&ri) {
            discarded += region_items.len();
        } else {
            items.extend(region_items.into_iter().map(|item| (ri, item)));
        }
    }
    let keyed = crate::parallel::map(items, |(ri, item)| (ri, keyed(item, &patient_url, nhs)));
    for (ri, keyed) in keyed {
        let Some(Keyed {
            item,
            rtype,
            local_ref,
            item_key,
            keys,
            clinical,
        }) = keyed
        else {
            continue;
        };
        // Only another region's item is the same item: two records one region holds under
        // different ids stay two, whatever their content (the region knows them as two).
        let elsewhere = |index: &std::collections::HashMap<ContentKey, Vec<usize>>,
                         k: &ContentKey| {
            index.get(k).and_then(|found| {
                found
                    .iter()
                    .copied()
                    .find(|&slot| !slots[slot].regions.contains(&ri))
            })
        };
        let found = keys
            .iter()
            .find_map(|k| elsewhere(&by_content, k))
            .or_else(|| clinical.and_then(|k| elsewhere(&by_clinical, &k)));
        match found {
            Some(slot) => {
                deduplicated += 1;
                local_refs.insert((ri, local_ref), slots[slot].key);
                let s = &mut slots[slot];
                s.regions.insert(ri);
                let shown_key = s.content;
                let newer = last_updated(&item) > last_updated(&s.resource);
                if shown_key == item_key {
                    // The same content: the copy updated most recently is shown (the
                    // first on a tie), so later versions are compared with its time.
                    if newer {
                        s.resource = item;
                        s.origin = ri;
                    }
                } else {
                    // Two versions of one item: keep the more recently updated and say
                    // which region holds the other (each version once, at its most recent
                    // update), whatever order they came in.
                    let other = if newer {
                        let old = std::mem::replace(&mut s.resource, item);
                        let other = OtherVersion {
                            region: s.origin,
                            updated: last_updated_text(&old),
                            at: last_updated(&old),
                            content: shown_key,
                        };
                        s.origin = ri;
                        s.content = item_key;
                        other
                    } else {
                        OtherVersion {
                            region: ri,
                            updated: last_updated_text(&item),
                            at: last_updated(&item),
                            content: item_key,
                        }
                    };
                    let current = s.content;
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
                for k in keys {
                    note_slot(&mut by_content, k, slot);
                }
                if let Some(k) = clinical {
                    note_slot(&mut by_clinical, k, slot);
                }
            }
            None => {
                for k in keys {
                    note_slot(&mut by_content, k, slots.len());
                }
                if let Some(k) = clinical {
                    note_slot(&mut by_clinical, k, slots.len());
                }
                local_refs.insert((ri, local_ref), slots.len());
                slots.push(Slot {
                    rtype,
                    resource: item,
                    content: item_key,
                    regions: BTreeSet::from([ri]),
                    origin: ri,
                    other_versions: Vec::new(),
                    key: slots.len(),
                });
            }
        }
    }

    let wants_patient = matches!(
        query.operation,
        Operation::PatientSearch | Operation::PatientRead | Operation::Everything { .. }
    );
    let patient = (!patients.is_empty())
        .then(|| merge_patients(&patients, |i| &results[i].region, nhs, ctx.gateway_base));

    // Each slot's date is read once.
    slots.sort_by_cached_key(|s| {
        (
            std::cmp::Reverse(sort_key(s.rtype, &s.resource)),
            s.rtype,
            s.regions.clone(),
            id_of(&s.resource).to_owned(),
        )
    });

    // Per region: the entries it contributed to (for its Provenance).
    let mut contributed: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    // Every resource is addressed at this gateway, under an id naming its region, so that
    // `GET` on any fullUrl or reference answers (see `fhir::reference`).
    let gateway_url = |ri: usize, t: &str, id: &str| -> String {
        let region = &results[ri].region;
        match crate::fhir::reference::federated_id(&region.code, id) {
            Some(fid) => format!("{}/{t}/{fid}", ctx.gateway_base),
            // An id too long to carry its region stays addressed at its region.
            None => format!("{}/{t}/{id}", region.base_url),
        }
    };
    let url_of = |slot: &Slot| gateway_url(slot.origin, slot.rtype.as_str(), id_of(&slot.resource));
    let url_by_key: std::collections::HashMap<usize, String> =
        slots.iter().map(|s| (s.key, url_of(s))).collect();
    // What the items reference, included beside them (`$everything`), each shown once.
    let mut includes = merge_included(
        screened_included
            .into_iter()
            .filter(|(ri, _)| !withheld_regions.contains(ri))
            .collect(),
    );
    for inc in &mut includes {
        inc.url = gateway_url(inc.origin, &inc.rtype, id_of(&inc.resource));
    }
    let include_refs: std::collections::HashMap<(usize, String), usize> = includes
        .iter()
        .enumerate()
        .flat_map(|(i, inc)| inc.local_refs.iter().map(move |r| (r.clone(), i)))
        .collect();
    // References resolve inside the Bundle where the target is in it; otherwise at this
    // gateway, under the id naming the region that holds the target.
    let resolve_from = |origin: usize, local: &str| -> String {
        if local_patients.contains(&(origin, local.to_owned())) {
            return patient_url.clone();
        }
        if let Some(url) = local_refs
            .get(&(origin, local.to_owned()))
            .and_then(|k| url_by_key.get(k))
        {
            return url.clone();
        }
        if let Some(&i) = include_refs.get(&(origin, local.to_owned())) {
            return includes[i].url.clone();
        }
        match crate::fhir::reference::split_relative(local) {
            Some((t, id)) => gateway_url(origin, t, id),
            None => format!("{}/{local}", results[origin].region.base_url),
        }
    };
    let include_entries: Vec<Value> = includes
        .iter()
        .map(|inc| {
            let mut resource = inc.resource.clone();
            qualify_references(&mut resource, &|local| resolve_from(inc.origin, local));
            set_gateway_id(&mut resource, &inc.url);
            tag(
                &mut resource,
                &results[inc.origin].region.base_url,
                inc.regions.iter().map(|&i| &results[i].region),
            );
            fhir::entry(&inc.url, resource, SearchMode::Include)
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
    for slot in &slots {
        for &ri in &slot.regions {
            contributed
                .entry(ri)
                .or_default()
                .push(url_by_key[&slot.key].clone());
        }
    }
    // Each entry is finished apart from the others (on every core when there are many).
    let finished = crate::parallel::map(slots, |slot| {
        let origin = &results[slot.origin].region;
        let full_url = &url_by_key[&slot.key];
        let mut resource = slot.resource;
        qualify_references(&mut resource, &|local| resolve_from(slot.origin, local));
        set_gateway_id(&mut resource, full_url);
        tag(
            &mut resource,
            &origin.base_url,
            slot.regions.iter().map(|&i| &results[i].region),
        );
        for v in &slot.other_versions {
            note_other_version(
                &mut resource,
                &results[v.region].region,
                v.updated.as_deref(),
            );
        }
        fhir::entry(full_url, resource, SearchMode::Match)
    });
    let mut matches: Vec<Value> = Vec::new();
    if wants_patient && let Some(p) = &patient {
        matches.push(fhir::entry(&patient_url, p.clone(), SearchMode::Match));
    }
    matches.extend(finished);
    let total = matches.len();
    if let Some(count) = query.count {
        matches.truncate(count as usize);
    }
    // One Provenance per region that answered: what it contributed.
    let shown: std::collections::HashSet<&str> = matches
        .iter()
        .filter_map(|e| e["fullUrl"].as_str())
        .collect();
    let mut contributions = Vec::new();
    for (ri, result) in results.iter().enumerate() {
        let Ok(answer) = &result.outcome else {
            continue;
        };
        if withheld_regions.contains(&ri) {
            continue;
        }
        let mut targets: Vec<String> = contributed
            .get(&ri)
            .into_iter()
            .flatten()
            .filter(|u| shown.contains(u.as_str()))
            .cloned()
            .collect();
        if targets.is_empty() {
            // A region that contributed nothing shown still answered about the patient.
            targets.push(patient_url.clone());
        }
        contributions.push(Contribution {
            region: result.region.clone(),
            targets: targets.into_iter().map(Into::into).collect(),
            stale_seconds: answer.stale_seconds,
            elapsed_ms: result.elapsed_ms,
        });
    }
    View {
        matches,
        includes: include_entries,
        patient,
        total,
        regions_answered: answered,
        regions_failed: failed,
        all_failures_timeouts: failed > 0 && all_timeouts,
        discarded,
        deduplicated,
        issues,
        contributions,
    }
}

/// A resource the items reference, shown once however many regions hold it.
struct Included {
    rtype: String,
    resource: Value,
    regions: BTreeSet<usize>,
    origin: usize,
    /// (region, its local `Type/id`) of every copy folded in.
    local_refs: Vec<(usize, String)>,
    /// Its address at this gateway (set once the origin is known).
    url: String,
}

/// Folds the regions' included resources: the same business identifier (an organisation's
/// ODS code, a practitioner's professional registration, ...) or the same content, held by
/// two regions, is one resource. Two a region holds stay two.
fn merge_included(mut by_region: Vec<(usize, Vec<Value>)>) -> Vec<Included> {
    by_region.sort_by_key(|(ri, _)| *ri);
    let mut out: Vec<Included> = Vec::new();
    let mut index: std::collections::HashMap<ContentKey, Vec<usize>> = Default::default();
    for (ri, resources) in by_region {
        for resource in resources {
            let rtype = resource_type(&resource).unwrap_or("").to_owned();
            let local = format!("{rtype}/{}", id_of(&resource));
            let keys: Vec<ContentKey> = identifier_keys(&rtype, &resource)
                .into_iter()
                .chain(std::iter::once(content_key(&resource)))
                .collect();
            let found = keys.iter().find_map(|k| {
                index
                    .get(k)
                    .and_then(|v| v.iter().copied().find(|&i| !out[i].regions.contains(&ri)))
            });
            let at = match found {
                Some(i) => {
                    out[i].regions.insert(ri);
                    out[i].local_refs.push((ri, local));
                    i
                }
                None => {
                    out.push(Included {
                        rtype,
                        resource,
                        regions: BTreeSet::from([ri]),
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

/// Business identifiers (`system|value`) of a resource of any type.
fn identifier_keys(rtype: &str, resource: &Value) -> Vec<ContentKey> {
    resource
        .get("identifier")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|i| {
            let system = i.get("system")?.as_str()?;
            let value = i.get("value")?.as_str()?;
            Some(key_of(&[&format!("id:{rtype}:{system}|{value}")]))
        })
        .collect()
}

/// An item with what the merge matches it by (see [`keyed`]).
struct Keyed {
    item: Value,
    rtype: ResourceType,
    /// `Type/id` in its region.
    local_ref: String,
    /// Its content's identity.
    item_key: ContentKey,
    /// Its business identifiers' identities, then its content's: the same item has one of them.
    keys: Vec<ContentKey>,
    /// Without a shared identifier, another region's item of the same type, code, subject and
    /// clinical date is the same item (perhaps another version of it). Two such items of one
    /// region stay apart: the region knows them as two.
    clinical: Option<ContentKey>,
}

/// Notes that `slot` holds an item with key `k` (once).
fn note_slot(
    index: &mut std::collections::HashMap<ContentKey, Vec<usize>>,
    k: ContentKey,
    slot: usize,
) {
    let slots = index.entry(k).or_default();
    if !slots.contains(&slot) {
        slots.push(slot);
    }
}

/// An item pointed at the merged Patient and keyed; `None` if it has no known type.
fn keyed(mut item: Value, patient_url: &str, nhs: &str) -> Option<Keyed> {
    let rtype = resource_type(&item).and_then(ResourceType::parse)?;
    point_at_patient(&mut item, rtype, patient_url, nhs);
    let local_ref = format!("{}/{}", rtype.as_str(), id_of(&item));
    let item_key = content_key(&item);
    let keys: Vec<ContentKey> = business_keys(rtype, &item)
        .into_iter()
        .chain(std::iter::once(item_key))
        .collect();
    let clinical = clinical_key(rtype, &item);
    Some(Keyed {
        item,
        rtype,
        local_ref,
        item_key,
        keys,
        clinical,
    })
}

/// Identity of content for deduplication: the resource without its region-local `id` and
/// `meta`, in canonical JSON (keys sorted at every depth).
fn content_key(resource: &Value) -> ContentKey {
    crate::fhir::canonical_digest_without(resource, &["id", "meta"])
}

/// An item's identity in the merge: SHA-256 of its canonical content, or of a business
/// identifier.
type ContentKey = [u8; 32];

/// The region-local patient reference becomes the merged Patient's, so the reference resolves
/// inside the Bundle (or at this gateway) and identical items from two regions compare equal.
fn point_at_patient(item: &mut Value, rtype: ResourceType, patient_url: &str, nhs: &str) {
    if let Some(r) = item
        .get_mut(rtype.patient_element())
        .and_then(Value::as_object_mut)
    {
        let display = r.get("display").cloned();
        r.clear();
        r.insert("reference".into(), Value::String(patient_url.to_owned()));
        r.insert(
            "identifier".into(),
            json!({"system": crate::fhir::nhs::NHS_NUMBER_SYSTEM, "value": nhs}),
        );
        if let Some(d) = display {
            r.insert("display".into(), d);
        }
    }
}

/// Newest first: the start of the clinically relevant date; undated items sort last.
fn sort_key(rtype: ResourceType, resource: &Value) -> i64 {
    rtype
        .sort_elements()
        .iter()
        .filter_map(|p| element(resource, p))
        .find_map(date::element_interval)
        .map_or(i64::MIN, |i| i.start)
}

/// Adds `meta.source` and one `meta.tag` per region, keeping whatever meta the region sent.
fn tag<'a>(resource: &mut Value, source: &str, regions: impl Iterator<Item = &'a RegionInfo>) {
    let Some(obj) = resource.as_object_mut() else {
        return;
    };
    let meta = obj.entry("meta").or_insert_with(|| json!({}));
    if !meta.is_object() {
        *meta = json!({});
    }
    meta["source"] = Value::String(source.to_owned());
    let tags = meta
        .as_object_mut()
        .expect("meta is an object")
        .entry("tag")
        .or_insert_with(|| json!([]));
    if !tags.is_array() {
        *tags = json!([]);
    }
    let tags = tags.as_array_mut().expect("tag is an array");
    for r in regions {
        let exists = tags.iter().any(|t| {
            t.get("system").and_then(Value::as_str) == Some(REGION_TAG_SYSTEM)
                && t.get("code").and_then(Value::as_str) == Some(&r.code)
        });
        if !exists {
            tags.push(json!({"system": REGION_TAG_SYSTEM, "code": r.code, "display": r.name}));
        }
    }
}

use crate::fhir::item::qualify_references;

fn last_updated_text(v: &Value) -> Option<String> {
    v.pointer("/meta/lastUpdated")
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// Records in `meta.extension` that `region` holds another version of this item (last
/// updated at `updated`), so nothing is dropped silently.
fn note_other_version(resource: &mut Value, region: &RegionInfo, updated: Option<&str>) {
    let Some(meta) = resource.get_mut("meta").and_then(Value::as_object_mut) else {
        return;
    };
    let ext = meta.entry("extension").or_insert_with(|| json!([]));
    if let Some(list) = ext.as_array_mut() {
        let mut parts = vec![json!({"url": "region", "valueCode": region.code})];
        if let Some(u) = updated {
            parts.push(json!({"url": "lastUpdated", "valueInstant": u}));
        }
        list.push(json!({"url": super::OTHER_VERSION_EXTENSION, "extension": parts}));
    }
}

/// Business identifiers of an item (`system|value`), which name it across regions.
fn business_keys(rtype: ResourceType, item: &Value) -> Vec<ContentKey> {
    identifier_keys(rtype.as_str(), item)
}

/// An item's clinical identity: its type, first coded concept (`system|code`), subject and
/// clinical date, hashed; `None` when it has no coded concept or no date to go by. The
/// subject is the merged Patient's by now, so it is the same for every item of the query.
fn clinical_key(rtype: ResourceType, item: &Value) -> Option<ContentKey> {
    let concept = ["code", "medicationCodeableConcept", "vaccineCode", "type"]
        .iter()
        .filter_map(|e| item.get(*e))
        .map(|c| match c {
            // Encounter.type is a list.
            Value::Array(list) => list.first().unwrap_or(&Value::Null),
            one => one,
        })
        .find_map(|c| {
            c.get("coding")?.as_array()?.iter().find_map(|coding| {
                Some(format!(
                    "{}|{}",
                    coding.get("system")?.as_str()?,
                    coding.get("code")?.as_str()?
                ))
            })
        })?;
    let date = rtype
        .sort_elements()
        .iter()
        .find_map(|p| element(item, p))?;
    let text = format!(
        "clinical:{}:{concept}:{}",
        rtype.as_str(),
        crate::fhir::canonical_json(date)
    );
    Some(key_of(&[&text]))
}

/// A region's Provenance entry as a tree, as the merge wrote it before it wrote it as text.
pub(super) fn provenance(c: &Contribution, elapsed_ms: u64, envelope: &Envelope<'_>) -> Value {
    let region = &c.region;
    let targets: Vec<Value> = c.targets.iter().map(|u| json!({"reference": u})).collect();
    let mut p = json!({
        "resourceType": "Provenance",
        "id": format!("{}-{}", region.code, envelope.bundle_id),
        "target": [],
        "recorded": envelope.now,
        "activity": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation", "code": "CREATE", "display": "create"}],
                     "text": format!("answered the federated query in {elapsed_ms} ms")},
        "agent": [{
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type", "code": "custodian", "display": "Custodian"}]},
            "who": {"identifier": {"system": REGION_TAG_SYSTEM, "value": region.code}, "display": region.name},
        }],
    });
    p["target"] = Value::Array(targets);
    if let Some(age) = c.stale_seconds {
        p["activity"]["text"] = json!(format!(
            "could not answer; its answer of {} ago is shown",
            crate::fhir::describe_age(age)
        ));
    }
    fhir::entry(
        &format!(
            "urn:uuid:{}",
            provenance_uuid(&region.code, envelope.bundle_id)
        ),
        p,
        SearchMode::Include,
    )
}
