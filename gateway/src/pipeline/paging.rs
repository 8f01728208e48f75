//! Paging a merged view, on any replica, under the rules in force when each page is asked for.
//!
//! The first page answers the query. When there are more, a **cursor** is written to the
//! region's store before the first page leaves: who asked, what they asked, and the matches'
//! addresses in the order the query gave them. Every replica can then serve every `next`
//! link. The view itself is kept in the replica that made it, for a few minutes, with the
//! consent directives and the policy set it was decided under.
//!
//! A further page is released only under the directives and the policy set in force now: the
//! patient's consent is read for every page (as for every query), and when it, the policy set
//! or the user's break-glass differ from the kept view's, or this replica has no view (the
//! balancer sent the `next` link to another replica), the query is made again, through the
//! answer cache, with this request's user. A page is then the members at its offsets that the
//! new view still shows, each as the new view wrote it: what a fresh query would withhold is
//! withheld, `total` counts what is still shown, and the page boundaries do not shift, so no
//! item is skipped. Entries stay the text they were written as; a page carries its matches,
//! the includes they reference (and what those reference), every Provenance and the outcome.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use super::Ask;
use crate::app::Gateway;
use crate::auth::UserContext;
use crate::consent::ConsentView;
use crate::error::ApiError;
use crate::fhir::{BundleBytes, SerializedEntries};
use crate::merge::{RequestEntry, View, Written};
use crate::query::Parsed;
use crate::store::cursors::StoredCursor;

/// How long a merged result stays pageable.
pub const PAGE_TTL: Duration = Duration::from_secs(300);

/// A view this replica keeps for paging, with the cursor it pages.
pub struct Paged {
    pub cursor: Arc<StoredCursor>,
    view: PageView,
}

/// A view decided for a cursor: its entries, and the rules it was decided under.
struct PageView {
    consent: ConsentView,
    /// Held, so its address stays its own while the view lives.
    policy: Arc<policy::PolicySet>,
    break_glass: bool,
    matches: Vec<Written>,
    /// For each member of the cursor, its match in this view; `None` when the view does not
    /// show it (withheld now, or gone from its region).
    at: Vec<Option<u32>>,
    includes: Vec<Written>,
    /// Provenance and the outcome, repeated on every page.
    tail: Vec<RequestEntry>,
    /// Members still shown.
    shown: usize,
}

impl PageView {
    /// Whether the view was decided under these very rules.
    fn decided_under(
        &self,
        consent: &ConsentView,
        policy: &Arc<policy::PolicySet>,
        break_glass: bool,
    ) -> bool {
        self.consent == *consent
            && Arc::ptr_eq(&self.policy, policy)
            && self.break_glass == break_glass
    }
}

pub type PageCache = moka::future::Cache<String, Arc<Paged>>;

pub fn new_cache() -> PageCache {
    moka::future::Cache::builder()
        .max_capacity(10_000)
        .time_to_live(PAGE_TTL)
        .support_invalidation_closures()
        .build()
}

/// Drops this replica's kept views of a patient (their next pages are made again).
pub fn invalidate_patient(pages: &PageCache, nhs: &str) {
    let nhs = nhs.to_owned();
    if pages
        .invalidate_entries_if(move |_, p| p.cursor.nhs == nhs)
        .is_err()
    {
        pages.invalidate_all();
    }
}

/// The address of an entry under the FHIR base (`Observation/dorset.1`), as a cursor keeps it.
fn member_of<'a>(base: &str, full_url: &'a str) -> &'a str {
    full_url
        .strip_prefix(base)
        .and_then(|r| r.strip_prefix('/'))
        .unwrap_or(full_url)
}

/// What a first page needs to make its cursor.
pub struct Asked<'a> {
    pub user: &'a UserContext,
    pub nhs: &'a str,
    /// The request's path under the FHIR base, and its raw query.
    pub path: &'a str,
    pub query: &'a str,
    pub lenient: bool,
    pub count: usize,
    pub bundle_id: &'a str,
}

/// The rules a view was decided under.
pub struct Rules {
    pub consent: ConsentView,
    pub policy: Arc<policy::PolicySet>,
    pub break_glass: bool,
}

impl Paged {
    /// The view a query made, with a new cursor whose members are its matches.
    pub fn first(
        base: &str,
        asked: Asked<'_>,
        view: View,
        tail: Vec<RequestEntry>,
        rules: Rules,
        now: i64,
    ) -> Paged {
        let members: Vec<String> = view
            .matches
            .iter()
            .map(|w| member_of(base, &w.full_url).to_owned())
            .collect();
        let cursor = StoredCursor {
            id: uuid::Uuid::new_v4().simple().to_string(),
            user_id: asked.user.user_id.clone(),
            role: asked.user.role.clone(),
            organisation: asked.user.organisation.clone(),
            purpose: asked.user.purpose_of_use.clone().unwrap_or_default(),
            nhs: asked.nhs.to_owned(),
            path: asked.path.to_owned(),
            query: asked.query.to_owned(),
            lenient: asked.lenient,
            count: asked.count.max(1) as i64,
            bundle_id: asked.bundle_id.to_owned(),
            members,
            expires_at: now + PAGE_TTL.as_secs() as i64,
        };
        let at = (0..view.matches.len() as u32).map(Some).collect();
        Paged {
            view: PageView {
                consent: rules.consent,
                policy: rules.policy,
                break_glass: rules.break_glass,
                shown: view.matches.len(),
                matches: view.matches,
                at,
                includes: view.includes,
                tail,
            },
            cursor: Arc::new(cursor),
        }
    }

    /// A view made again for `cursor`, its matches lined up with the cursor's members.
    fn again(
        base: &str,
        cursor: Arc<StoredCursor>,
        view: View,
        tail: Vec<RequestEntry>,
        rules: Rules,
    ) -> Paged {
        let index: HashMap<&str, u32> = view
            .matches
            .iter()
            .enumerate()
            .map(|(i, w)| (member_of(base, &w.full_url), i as u32))
            .collect();
        let at: Vec<Option<u32>> = cursor
            .members
            .iter()
            .map(|m| index.get(m.as_str()).copied())
            .collect();
        drop(index);
        Paged {
            view: PageView {
                consent: rules.consent,
                policy: rules.policy,
                break_glass: rules.break_glass,
                shown: at.iter().flatten().count(),
                matches: view.matches,
                at,
                includes: view.includes,
                tail,
            },
            cursor,
        }
    }

    fn count(&self) -> usize {
        self.cursor.count.max(1) as usize
    }

    /// Whether there is more than one page.
    pub fn has_more(&self) -> bool {
        self.cursor.members.len() > self.count()
    }

    /// The matches shown on the page at `offset`.
    fn page_matches(&self, offset: usize) -> Vec<&Written> {
        let end = (offset + self.count()).min(self.view.at.len());
        self.view.at[offset.min(end)..end]
            .iter()
            .flatten()
            .map(|&i| &self.view.matches[i as usize])
            .collect()
    }

    /// Matches shown on the page at `offset`.
    pub fn shown(&self, offset: usize) -> usize {
        self.page_matches(offset).len()
    }
}

/// Whether `user` made the query.
fn owned_by(c: &StoredCursor, user: &UserContext) -> bool {
    c.user_id == user.user_id
        && c.role == user.role
        && c.organisation == user.organisation
        && c.purpose == user.purpose_of_use.as_deref().unwrap_or_default()
}

/// The includes a page's matches reference, and what those reference in turn, in order.
fn page_includes<'a>(page: &[&Written], includes: &'a [Written]) -> Vec<&'a Written> {
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
    let count = p.count();
    let members = p.cursor.members.len();
    let matches = p.page_matches(offset);
    let entries = SerializedEntries::from_shared(
        matches
            .iter()
            .copied()
            .chain(page_includes(&matches, &p.view.includes))
            .map(|w| w.json.clone())
            .collect(),
    );
    let link = |o: usize| format!("{base}/_page?cursor={}&offset={o}", p.cursor.id);
    let mut links = vec![("self", link(offset))];
    if offset > 0 {
        links.push(("previous", link(offset.saturating_sub(count))));
    }
    if offset + count < members {
        links.push(("next", link(offset + count)));
    }
    crate::fhir::searchset_bytes(
        &format!("{}-{offset}", p.cursor.bundle_id),
        now,
        &links,
        p.view.shown,
        &entries,
        &p.view.tail,
    )
}

/// The first page; when one page holds every match, the whole answer under the query's own
/// address.
pub fn first_page(gateway: &Gateway, p: &Paged, self_link: &str, now: &str) -> BundleBytes {
    if !p.has_more() {
        let entries = SerializedEntries::from_shared(
            p.view
                .matches
                .iter()
                .chain(&p.view.includes)
                .map(|w| w.json.clone())
                .collect(),
        );
        return crate::fhir::searchset_bytes(
            &p.cursor.bundle_id,
            now,
            &[("self", self_link.to_owned())],
            p.view.shown,
            &entries,
            &p.view.tail,
        );
    }
    page(gateway, p, 0, now)
}

fn cursors_unavailable(e: crate::store::StoreError) -> ApiError {
    ApiError::new(
        http::StatusCode::SERVICE_UNAVAILABLE,
        "transient",
        "the paging state cannot be reached just now; run the search again shortly",
    )
    .internal(format!("paging cursor store: {e}"))
}

/// Stores the cursor of a view with further pages (before its first page leaves, so that any
/// replica can serve its `next` link), and keeps the view here.
pub async fn keep(gateway: &Gateway, p: Paged, now: i64) -> Result<Arc<Paged>, ApiError> {
    let p = Arc::new(p);
    if p.has_more() {
        gateway
            .cursors
            .put_cursor((*p.cursor).clone(), now)
            .await
            .map_err(cursors_unavailable)?;
        gateway.pages.insert(p.cursor.id.clone(), p.clone()).await;
    }
    Ok(p)
}

/// `GET _page?cursor=&offset=`: the page at `offset` of the cursor `id`, under the rules in
/// force now. `parse` reads the cursor's request again (the HTTP face's job). A cursor that
/// does not exist, has expired or is another user's is `404`, all alike.
pub async fn next_page(
    gateway: &Gateway,
    ask: &Ask,
    id: &str,
    offset: usize,
    parse: impl FnOnce(&StoredCursor) -> Result<Parsed, ApiError>,
) -> Result<BundleBytes, ApiError> {
    let gone =
        || ApiError::not_found("this page has expired or does not exist; run the search again");
    let now_s = time::OffsetDateTime::now_utc().unix_timestamp();
    let kept = gateway.pages.get(id).await;
    let cursor = match &kept {
        Some(p) => p.cursor.clone(),
        None => Arc::new(
            gateway
                .cursors
                .cursor(id, now_s)
                .await
                .map_err(cursors_unavailable)?
                .ok_or_else(gone)?,
        ),
    };
    if cursor.expires_at < now_s || !owned_by(&cursor, &ask.user) || offset >= cursor.members.len()
    {
        return Err(gone());
    }
    ask.note(|e| {
        e.patient = Some(cursor.nhs.clone());
        e.detail["page_of"] = serde_json::json!(cursor.bundle_id);
    });
    // The rules in force now: the policy set, and the patient's consent read again.
    super::current(gateway).await?;
    let policies = gateway.policies.load_full();
    let gatekeeper = super::admit(gateway, ask, &policies)?;
    let nhs = crate::fhir::nhs::NhsNumber::parse(&cursor.nhs).map_err(|_| gone())?;
    let consent = crate::api::read_consent(gateway, &nhs).await?;
    let break_glass = ask.user.break_glass.is_some();
    let paged = match kept.filter(|p| p.view.decided_under(&consent, &policies, break_glass)) {
        Some(p) => p,
        None => {
            let mut parsed = parse(&cursor)?;
            // The merge keeps everything; the cursor's `_count` shapes the pages.
            parsed.query.count = None;
            let tls = gateway.tls.load();
            let fan = super::fan_out_of(gateway, ask, &tls);
            let made = super::make(gateway, ask, (fan, gatekeeper), parsed, Some(consent)).await?;
            let now = crate::fhir::instant(time::OffsetDateTime::now_utc());
            let tail = made
                .view
                .request_entries(&ask.envelope(&now), |c| c.elapsed_ms);
            let rules = Rules {
                consent: made.consent,
                policy: policies.clone(),
                break_glass,
            };
            tracing::info!(request_id = %ask.request_id, "a page's view made again under the rules in force");
            let p = Arc::new(Paged::again(
                &gateway.region.base_url,
                cursor,
                made.view,
                tail,
                rules,
            ));
            gateway.pages.insert(id.to_owned(), p.clone()).await;
            p
        }
    };
    ask.note(|e| e.released = paged.shown(offset));
    let now = crate::fhir::instant(time::OffsetDateTime::now_utc());
    let (body, ()) =
        super::audited(gateway, ask, || (page(gateway, &paged, offset, &now), ())).await?;
    Ok(body)
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
        let one = written(
            "gw/Observation/a.1",
            serde_json::json!({"resourceType": "Observation",
                "performer": [{"reference": "gw/PractitionerRole/a.r1"}]}),
        );
        let page = [&one];
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

    fn view_of(urls: &[&str]) -> View {
        View {
            matches: urls
                .iter()
                .map(|u| written(u, serde_json::json!({"resourceType": "Observation"})))
                .collect(),
            total: urls.len(),
            regions_answered: 1,
            ..View::default()
        }
    }

    fn rules() -> Rules {
        Rules {
            consent: ConsentView::default(),
            policy: Arc::new(crate::access::embedded_policy_set().unwrap()),
            break_glass: false,
        }
    }

    #[test]
    fn a_view_made_again_keeps_the_page_boundaries_and_shows_only_what_it_still_shows() {
        let base = "https://gw/fhir";
        let urls: Vec<String> = (0..7)
            .map(|i| format!("{base}/Observation/a.{i}"))
            .collect();
        let refs: Vec<&str> = urls.iter().map(String::as_str).collect();
        let user = UserContext {
            user_id: "u".into(),
            role: "R8000".into(),
            organisation: "RBD".into(),
            purpose_of_use: Some("TREAT".into()),
            break_glass: None,
            scope: None,
            patient: None,
        };
        let asked = Asked {
            user: &user,
            nhs: "9000000009",
            path: "/Patient/9000000009/$everything",
            query: "_count=3",
            lenient: false,
            count: 3,
            bundle_id: "r1",
        };
        let first = Paged::first(base, asked, view_of(&refs), Vec::new(), rules(), 1_000);
        assert_eq!(
            first.cursor.members[0], "Observation/a.0",
            "kept under the base"
        );
        assert_eq!(first.cursor.expires_at, 1_300);
        assert!(first.has_more());
        assert_eq!(first.shown(3), 3);
        assert_eq!(first.shown(6), 1);
        // Made again: items 1, 3 and 4 are withheld now, and a new item 7 has appeared.
        let now_shown = [
            refs[0],
            refs[2],
            refs[5],
            refs[6],
            "https://gw/fhir/Observation/a.7",
        ];
        let again = Paged::again(
            base,
            first.cursor.clone(),
            view_of(&now_shown),
            Vec::new(),
            rules(),
        );
        let urls_at = |o: usize| -> Vec<String> {
            again
                .page_matches(o)
                .iter()
                .map(|w| w.full_url.to_string())
                .collect()
        };
        assert_eq!(urls_at(0), vec![urls[0].clone(), urls[2].clone()]);
        assert_eq!(urls_at(3), vec![urls[5].clone()], "item 5 is not skipped");
        assert_eq!(urls_at(6), vec![urls[6].clone()]);
        assert_eq!(again.view.shown, 4, "total: the members still shown");
        assert!(
            !again.view.matches.is_empty()
                && urls_at(0).len() + urls_at(3).len() + urls_at(6).len() == 4,
            "what the query did not find is not paged in"
        );
        // Another user's cursor.
        let mut other = user.clone();
        other.user_id = "v".into();
        assert!(owned_by(&first.cursor, &user));
        assert!(!owned_by(&first.cursor, &other));
    }

    #[test]
    fn a_view_is_reused_only_under_the_rules_it_was_decided_under() {
        let r = rules();
        let v = PageView {
            consent: r.consent.clone(),
            policy: r.policy.clone(),
            break_glass: false,
            matches: Vec::new(),
            at: Vec::new(),
            includes: Vec::new(),
            tail: Vec::new(),
            shown: 0,
        };
        assert!(v.decided_under(&r.consent, &r.policy, false));
        assert!(!v.decided_under(&r.consent, &r.policy, true), "break-glass");
        let other = Arc::new(crate::access::embedded_policy_set().unwrap());
        assert!(!v.decided_under(&r.consent, &other, false), "another set");
        let mut objects = ConsentView::default();
        objects.objects_to_sharing = true;
        assert!(
            !v.decided_under(&objects, &r.policy, false),
            "another consent"
        );
    }
}
