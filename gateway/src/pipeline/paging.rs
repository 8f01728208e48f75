//! Paging a merged view: the first page answers the query; the rest are kept, for a few
//! minutes, under an opaque cursor, so that `next` links are stable while the clinician reads
//! (the regions are not asked again, and the pages do not shift). A cursor is only good for
//! the user who made the query. Entries stay the text they were written as; a page carries
//! its matches, the includes they reference (and what those reference), every Provenance and
//! the outcome.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use crate::app::Gateway;
use crate::auth::UserContext;
use crate::fhir::{BundleBytes, SerializedEntries};
use crate::merge::{View, Written};

/// How long a merged result stays pageable.
pub const PAGE_TTL: Duration = Duration::from_secs(300);

/// A merged view kept for paging.
pub struct Paged {
    pub cursor: String,
    /// Who may read it: user id, role, organisation, purpose.
    owner: (String, String, String, String),
    pub nhs: String,
    matches: Vec<Written>,
    includes: Vec<Written>,
    /// Provenance and the outcome, repeated on every page.
    tail: Vec<crate::merge::RequestEntry>,
    count: usize,
    pub bundle_id: String,
}

pub type PageCache = moka::future::Cache<String, Arc<Paged>>;

pub fn new_cache() -> PageCache {
    moka::future::Cache::builder()
        .max_capacity(10_000)
        .time_to_live(PAGE_TTL)
        .build()
}

fn owner_of(user: &UserContext) -> (String, String, String, String) {
    (
        user.user_id.clone(),
        user.role.clone(),
        user.organisation.clone(),
        user.purpose_of_use.clone().unwrap_or_default(),
    )
}

impl Paged {
    pub fn new(
        user: &UserContext,
        nhs: &str,
        view: View,
        tail: Vec<crate::merge::RequestEntry>,
        count: usize,
        bundle_id: &str,
    ) -> Paged {
        Paged {
            cursor: uuid::Uuid::new_v4().simple().to_string(),
            owner: owner_of(user),
            nhs: nhs.to_owned(),
            matches: view.matches,
            includes: view.includes,
            tail,
            count: count.max(1),
            bundle_id: bundle_id.to_owned(),
        }
    }

    /// Whether `user` made the query.
    pub fn owned_by(&self, user: &UserContext) -> bool {
        self.owner == owner_of(user)
    }

    /// Matches in all.
    pub fn len(&self) -> usize {
        self.matches.len()
    }

    pub fn is_empty(&self) -> bool {
        self.matches.is_empty()
    }

    /// Matches on the page at `offset`.
    pub fn shown(&self, offset: usize) -> usize {
        self.matches.len().saturating_sub(offset).min(self.count)
    }
}

/// The includes a page's matches reference, and what those reference in turn, in order.
fn page_includes<'a>(page: &[Written], includes: &'a [Written]) -> Vec<&'a Written> {
    let mut wanted: HashSet<String> = page
        .iter()
        .flat_map(|w| crate::fhir::item::references_in(&w.json.as_text()))
        .collect();
    let mut kept = vec![false; includes.len()];
    // Includes reference one another (a role names its practitioner): follow until nothing new.
    loop {
        let mut grew = false;
        for (i, inc) in includes.iter().enumerate() {
            if !kept[i] && wanted.contains(&*inc.full_url) {
                kept[i] = true;
                wanted.extend(crate::fhir::item::references_in(&inc.json.as_text()));
                grew = true;
            }
        }
        if !grew {
            break;
        }
    }
    includes
        .iter()
        .zip(kept)
        .filter(|(_, k)| *k)
        .map(|(inc, _)| inc)
        .collect()
}

/// The page at `offset` of a kept view.
pub fn page(gateway: &Gateway, p: &Paged, offset: usize, now: &str) -> BundleBytes {
    let base = &gateway.region.base_url;
    let end = (offset + p.count).min(p.matches.len());
    let page = &p.matches[offset.min(end)..end];
    let entries = SerializedEntries::from_shared(
        page.iter()
            .chain(page_includes(page, &p.includes))
            .map(|w| w.json.clone())
            .collect(),
    );
    let link = |o: usize| format!("{base}/_page?cursor={}&offset={o}", p.cursor);
    let mut links = vec![("self", link(offset))];
    if offset > 0 {
        links.push(("previous", link(offset.saturating_sub(p.count))));
    }
    if end < p.matches.len() {
        links.push(("next", link(end)));
    }
    crate::fhir::searchset_bytes(
        &format!("{}-{offset}", p.bundle_id),
        now,
        &links,
        p.matches.len(),
        &entries,
        &p.tail,
    )
}

/// The first page; when one page holds every match, the whole answer under the query's own
/// address.
pub fn first_page(gateway: &Gateway, p: &Paged, self_link: &str, now: &str) -> BundleBytes {
    if p.matches.len() <= p.count {
        let entries = SerializedEntries::from_shared(
            p.matches
                .iter()
                .chain(&p.includes)
                .map(|w| w.json.clone())
                .collect(),
        );
        return crate::fhir::searchset_bytes(
            &p.bundle_id,
            now,
            &[("self", self_link.to_owned())],
            p.matches.len(),
            &entries,
            &p.tail,
        );
    }
    page(gateway, p, 0, now)
}

/// Keeps the view for its further pages, when it has more than one.
pub async fn keep(gateway: &Gateway, p: Paged) {
    if p.matches.len() > p.count {
        gateway.pages.insert(p.cursor.clone(), Arc::new(p)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(url: &str, resource: serde_json::Value) -> Written {
        let json = serde_json::json!({"fullUrl": url, "resource": resource}).to_string();
        Written {
            full_url: url.into(),
            json: json.into(),
        }
    }

    #[test]
    fn a_page_carries_the_includes_its_matches_reference_and_what_those_reference() {
        let role = |refs: &[&str]| {
            let r: Vec<serde_json::Value> = refs
                .iter()
                .map(|r| serde_json::json!({"reference": r}))
                .collect();
            serde_json::json!({"resourceType": "PractitionerRole", "x": r})
        };
        let includes = vec![
            written("gw/PractitionerRole/a.r1", role(&["gw/Practitioner/a.p1"])),
            written("gw/Practitioner/a.p1", role(&[])),
            written("gw/Organization/a.o9", role(&[])),
        ];
        let page = vec![written(
            "gw/Observation/a.1",
            serde_json::json!({"resourceType": "Observation",
                "performer": [{"reference": "gw/PractitionerRole/a.r1"}]}),
        )];
        let urls: Vec<&str> = page_includes(&page, &includes)
            .iter()
            .map(|w| &*w.full_url)
            .collect();
        assert_eq!(
            urls,
            vec!["gw/PractitionerRole/a.r1", "gw/Practitioner/a.p1"],
            "the role and the practitioner it names; not the organisation"
        );
    }
}
