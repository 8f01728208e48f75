//! Reading a record server's paged answers: which `next` links may be followed, how much of a
//! region's answer one request may hold, and how an answer that had to stop short says so.
//! Pure: no I/O.
//!
//! A region's answer is bounded by items and bytes per request (and by the query's deadline),
//! never by a page count. Whatever stops it short becomes a [`Cut`]: the answer keeps what it
//! read, and the Bundle the clinician gets names the region, the types and how many items
//! were left out. A cut is never mistaken for a whole answer.

use crate::fhir::item::Item;
use std::collections::{BTreeSet, HashSet};
use std::sync::Mutex;

use serde_json::{Value, json};

use crate::fhir::outcome::{Issue, Severity};

/// The coding system of a cut's reason in an `OperationOutcome` issue (code `incomplete`).
pub const CUT_SYSTEM: &str = "urn:gateway:cut";
/// The extension on such an issue holding how many items were left out, when known.
pub const LEFT_OUT_EXTENSION: &str = "urn:gateway:extension:left-out";

/// Why a region's answer stopped short.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CutReason {
    /// More items than one request may take from a region (`record.max_items`).
    ItemLimit,
    /// More bytes than one request may take from a region (`record.max_bytes`).
    ByteLimit,
    /// The record server did not finish within the query's deadline.
    Deadline,
    /// A `next` link pointed at another server (scheme, host, port or base path).
    LinkElsewhere,
    /// The `next` links went round in a loop.
    LinkLoop,
    /// A following page was not a searchset Bundle.
    InvalidPage,
    /// A following page could not be read (an error status, a lost connection).
    PageFailed,
}

impl CutReason {
    pub const ALL: [CutReason; 7] = [
        CutReason::ItemLimit,
        CutReason::ByteLimit,
        CutReason::Deadline,
        CutReason::LinkElsewhere,
        CutReason::LinkLoop,
        CutReason::InvalidPage,
        CutReason::PageFailed,
    ];

    /// The code in [`CUT_SYSTEM`].
    pub fn code(self) -> &'static str {
        match self {
            CutReason::ItemLimit => "item-limit",
            CutReason::ByteLimit => "byte-limit",
            CutReason::Deadline => "deadline",
            CutReason::LinkElsewhere => "next-link-elsewhere",
            CutReason::LinkLoop => "next-link-loop",
            CutReason::InvalidPage => "invalid-page",
            CutReason::PageFailed => "page-failed",
        }
    }

    pub fn parse(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.code() == code)
    }

    /// What happened, as a clinician reads it.
    pub fn text(self) -> &'static str {
        match self {
            CutReason::ItemLimit => "it holds more items than one request may take from a region",
            CutReason::ByteLimit => "its answer is larger than one request may take from a region",
            CutReason::Deadline => "its record server did not finish within the query's deadline",
            CutReason::LinkElsewhere => {
                "its record server's next-page link points to another server, which is not followed"
            }
            CutReason::LinkLoop => "its record server's next-page links go round in a loop",
            CutReason::InvalidPage => {
                "a following page from its record server was not a FHIR searchset Bundle"
            }
            CutReason::PageFailed => "a following page from its record server could not be read",
        }
    }

    /// Whether the same request could be whole a moment later (not worth caching).
    pub fn transient(self) -> bool {
        matches!(self, CutReason::Deadline | CutReason::PageFailed)
    }
}

/// A region's answer stopped short: why, which types were affected, and how many items were
/// left out (`None` when the server did not say how many it held).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cut {
    pub reason: CutReason,
    pub types: BTreeSet<String>,
    pub left_out: Option<usize>,
    /// More about the reason (a limit, a status), never patient data.
    pub detail: String,
}

impl Cut {
    pub fn new(reason: CutReason, rtype: &str, left_out: Option<usize>, detail: String) -> Self {
        Cut {
            reason,
            types: BTreeSet::from([rtype.to_owned()]),
            left_out,
            detail,
        }
    }

    /// The cut as a clinician reads it, after "Region X (Name) answered in part: ".
    pub fn describe(&self) -> String {
        let types: Vec<&str> = self.types.iter().map(String::as_str).collect();
        let count = match self.left_out {
            Some(n) => format!("{n} item(s)"),
            None => "an unknown number of items".to_owned(),
        };
        let detail = if self.detail.is_empty() {
            String::new()
        } else {
            format!(" ({})", self.detail)
        };
        format!(
            "{}{detail}; {count} of type {} are not included",
            self.reason.text(),
            types.join(", ")
        )
    }

    /// The cut as an `OperationOutcome` issue a client can act on: code `incomplete`, the
    /// reason in [`CUT_SYSTEM`], the types as expressions, the count in an extension. `region`
    /// (code, name) is named when known.
    pub fn to_issue(&self, region: Option<(&str, &str)>) -> Issue {
        let text = match region {
            Some((code, name)) => {
                format!(
                    "Region {code} ({name}) answered in part: {}.",
                    self.describe()
                )
            }
            None => format!("This region answered in part: {}.", self.describe()),
        };
        let mut issue = Issue::new(Severity::Warning, "incomplete", text);
        if let Some((code, name)) = region {
            issue = issue.with_details(crate::fhir::REGION_TAG_SYSTEM, code, name);
        }
        issue = issue.with_details(CUT_SYSTEM, self.reason.code(), self.reason.text());
        for t in &self.types {
            issue = issue.at(t.clone());
        }
        if let Some(n) = self.left_out {
            issue
                .extension
                .push(json!({"url": LEFT_OUT_EXTENSION, "valueInteger": n}));
        }
        issue
    }

    /// Reads a cut back from an issue written by [`Cut::to_issue`] (a peer's answer).
    pub fn from_issue(issue: &Value) -> Option<Cut> {
        if issue.get("code").and_then(Value::as_str) != Some("incomplete") {
            return None;
        }
        let reason = issue
            .pointer("/details/coding")?
            .as_array()?
            .iter()
            .filter(|c| c.get("system").and_then(Value::as_str) == Some(CUT_SYSTEM))
            .find_map(|c| CutReason::parse(c.get("code")?.as_str()?))?;
        let types = issue
            .get("expression")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .filter(|t| crate::fhir::is_resource_type_name(t))
            .map(str::to_owned)
            .collect();
        let left_out = issue
            .get("extension")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|e| e.get("url").and_then(Value::as_str) == Some(LEFT_OUT_EXTENSION))
            .and_then(|e| e.get("valueInteger"))
            .and_then(Value::as_u64)
            .map(|n| n as usize);
        Some(Cut {
            reason,
            types,
            left_out,
            detail: String::new(),
        })
    }
}

/// Adds `cut` to `cuts`, folding it into one of the same reason (types joined, counts added;
/// an unknown count stays unknown).
pub fn add_cut(cuts: &mut Vec<Cut>, cut: Cut) {
    match cuts.iter_mut().find(|c| c.reason == cut.reason) {
        Some(c) => {
            c.types.extend(cut.types);
            c.left_out = match (c.left_out, cut.left_out) {
                (Some(a), Some(b)) => Some(a + b),
                _ => None,
            };
            if c.detail.is_empty() {
                c.detail = cut.detail;
            }
        }
        None => cuts.push(cut),
    }
}

/// How much of a region's answer one request may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub max_items: usize,
    pub max_bytes: usize,
}

/// What is left of a region's [`Bounds`] for one request, shared by its searches running at
/// once: a page is taken whole or not at all.
#[derive(Debug)]
pub struct Allowance {
    bounds: Bounds,
    /// Items and bytes taken so far.
    taken: Mutex<(usize, usize)>,
}

impl Allowance {
    pub fn new(bounds: Bounds) -> Self {
        Allowance {
            bounds,
            taken: Mutex::new((0, 0)),
        }
    }

    /// Bytes still allowed (the most the next page may be).
    pub fn bytes_left(&self) -> usize {
        let taken = self.taken.lock().unwrap_or_else(|e| e.into_inner());
        self.bounds.max_bytes.saturating_sub(taken.1)
    }

    /// Takes a page of `items` entries and `bytes` bytes, or says which bound it would pass
    /// (with the bound, for the cut's detail).
    pub fn take(&self, items: usize, bytes: usize) -> Result<(), (CutReason, String)> {
        let mut taken = self.taken.lock().unwrap_or_else(|e| e.into_inner());
        if taken.0 + items > self.bounds.max_items {
            return Err((
                CutReason::ItemLimit,
                format!("record.max_items is {}", self.bounds.max_items),
            ));
        }
        if taken.1 + bytes > self.bounds.max_bytes {
            return Err((CutReason::ByteLimit, self.byte_cut_detail()));
        }
        taken.0 += items;
        taken.1 += bytes;
        Ok(())
    }

    /// The cut for a body refused before it was read because it would pass the byte bound.
    pub fn byte_cut_detail(&self) -> String {
        format!("record.max_bytes is {}", self.bounds.max_bytes)
    }
}

/// A FHIR server's base: where its `next` links must stay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerBase {
    scheme: String,
    host: String,
    port: Option<u16>,
    /// The base path without a trailing `/`.
    path: String,
}

impl ServerBase {
    pub fn parse(base: &str) -> Result<Self, String> {
        let url = url::Url::parse(base).map_err(|e| format!("not a URL: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err("not an http or https URL".into());
        }
        Ok(ServerBase {
            scheme: url.scheme().to_owned(),
            host: url.host_str().ok_or("a URL without a host")?.to_owned(),
            port: url.port_or_known_default(),
            path: url.path().trim_end_matches('/').to_owned(),
        })
    }

    /// Whether `link` is on this server: the same scheme, host and port, under the base path,
    /// with no user name or password.
    pub fn holds(&self, link: &url::Url) -> bool {
        let path = link.path();
        link.scheme() == self.scheme
            && link.host_str() == Some(self.host.as_str())
            && link.port_or_known_default() == self.port
            && link.username().is_empty()
            && link.password().is_none()
            && (path == self.path || path.starts_with(&format!("{}/", self.path)))
            && !path.split('/').any(|s| s == ".." || s == ".")
    }
}

/// The `next` links of one search already followed, to stop at a loop.
#[derive(Debug, Default)]
pub struct Followed(HashSet<String>);

impl Followed {
    /// Decides whether a page's `next` link may be followed: on the same server, and not
    /// followed before in this search. `first` is the first page's address.
    pub fn next(&mut self, base: &ServerBase, link: &str) -> Result<url::Url, CutReason> {
        let url = url::Url::parse(link).map_err(|_| CutReason::LinkElsewhere)?;
        if !base.holds(&url) {
            return Err(CutReason::LinkElsewhere);
        }
        if !self.0.insert(url.as_str().to_owned()) {
            return Err(CutReason::LinkLoop);
        }
        Ok(url)
    }
}

/// A page of a search: its `match` entries' resources and the resources it includes, its
/// `total` and its `next` link. A page that is not a searchset Bundle is `None`.
pub struct Page {
    pub matches: Vec<Item>,
    pub includes: Vec<Item>,
    pub total: Option<usize>,
    pub next: Option<String>,
}

impl Page {
    /// Reads a page's text: its resources kept as text, each with its view.
    pub fn read(body: String) -> Option<Page> {
        // The page's items share its text, as it was read.
        let source: crate::fhir::item::Source = std::sync::Arc::new(body);
        let bundle = crate::fhir::item::BundleText::parse(&source).ok()?;
        if bundle.resource_type.as_deref() != Some("Bundle")
            || bundle.bundle_type.as_deref() != Some("searchset")
        {
            return None;
        }
        let (mut matches, mut includes) = (Vec::new(), Vec::new());
        for entry in &bundle.entries {
            let Some(resource) = &entry.resource else {
                continue;
            };
            let list = match entry.mode.as_deref().unwrap_or("match") {
                "match" => &mut matches,
                "include" => &mut includes,
                _ => continue,
            };
            list.push(Item::parse_entry(&source, resource).ok()?);
        }
        Some(Page {
            matches,
            includes,
            total: bundle.total.map(|n| n as usize),
            next: bundle.next,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> ServerBase {
        ServerBase::parse("https://records.example:8443/fhir/r4").unwrap()
    }

    #[test]
    fn next_links_stay_on_the_same_server_and_base_path() {
        let b = base();
        let mut f = Followed::default();
        assert!(
            f.next(
                &b,
                "https://records.example:8443/fhir/r4/Observation?_page=2"
            )
            .is_ok()
        );
        for elsewhere in [
            "http://records.example:8443/fhir/r4/Observation?_page=3",
            "https://other.example:8443/fhir/r4/Observation?_page=3",
            "https://records.example:9443/fhir/r4/Observation?_page=3",
            "https://records.example:8443/fhir/r5/Observation?_page=3",
            "https://records.example:8443/fhir/r4x/Observation",
            "https://user:pw@records.example:8443/fhir/r4/Observation",
            "https://records.example:8443/fhir/r4/../admin",
            "/fhir/r4/Observation?_page=3",
            "not a url",
        ] {
            assert_eq!(
                f.next(&b, elsewhere).unwrap_err(),
                CutReason::LinkElsewhere,
                "{elsewhere}"
            );
        }
        // The default port is the same server as no port at all.
        let default = ServerBase::parse("https://records.example/fhir").unwrap();
        assert!(
            Followed::default()
                .next(&default, "https://records.example:443/fhir/Condition?p=1")
                .is_ok()
        );
    }

    #[test]
    fn a_link_followed_twice_is_a_loop() {
        let b = base();
        let mut f = Followed::default();
        let link = "https://records.example:8443/fhir/r4/Observation?_page=2";
        assert!(f.next(&b, link).is_ok());
        assert!(
            f.next(
                &b,
                "https://records.example:8443/fhir/r4/Observation?_page=3"
            )
            .is_ok()
        );
        assert_eq!(f.next(&b, link).unwrap_err(), CutReason::LinkLoop);
    }

    #[test]
    fn an_allowance_takes_whole_pages_until_a_bound_would_pass() {
        let a = Allowance::new(Bounds {
            max_items: 50,
            max_bytes: 1000,
        });
        assert!(a.take(20, 400).is_ok());
        assert!(a.take(20, 400).is_ok());
        assert_eq!(a.take(20, 100).unwrap_err().0, CutReason::ItemLimit);
        assert_eq!(a.bytes_left(), 200);
        assert_eq!(a.take(5, 300).unwrap_err().0, CutReason::ByteLimit);
        assert!(a.take(10, 200).is_ok());
        assert_eq!(a.take(0, 1).unwrap_err().0, CutReason::ByteLimit);
    }

    #[test]
    fn cuts_of_one_reason_fold_and_an_unknown_count_stays_unknown() {
        let mut cuts = Vec::new();
        add_cut(
            &mut cuts,
            Cut::new(CutReason::Deadline, "Observation", Some(40), String::new()),
        );
        add_cut(
            &mut cuts,
            Cut::new(CutReason::Deadline, "Condition", Some(2), String::new()),
        );
        add_cut(
            &mut cuts,
            Cut::new(CutReason::ItemLimit, "Observation", None, "x".into()),
        );
        assert_eq!(cuts.len(), 2);
        assert_eq!(cuts[0].left_out, Some(42));
        assert_eq!(
            cuts[0].types.iter().collect::<Vec<_>>(),
            ["Condition", "Observation"]
        );
        add_cut(
            &mut cuts,
            Cut::new(CutReason::Deadline, "Encounter", None, String::new()),
        );
        assert_eq!(cuts[0].left_out, None);
    }

    #[test]
    fn a_cut_travels_in_an_issue_and_reads_back() {
        let cut = Cut {
            reason: CutReason::ItemLimit,
            types: BTreeSet::from(["Condition".to_owned(), "Observation".to_owned()]),
            left_out: Some(1234),
            detail: "record.max_items is 50000".into(),
        };
        let oo =
            crate::fhir::outcome::operation_outcome(&[cut.to_issue(Some(("wessex", "Wessex")))]);
        let issue = &oo["issue"][0];
        assert_eq!(issue["code"], "incomplete");
        assert_eq!(issue["severity"], "warning");
        let text = issue["diagnostics"].as_str().unwrap();
        assert!(
            text.contains("Region wessex (Wessex) answered in part"),
            "{text}"
        );
        assert!(
            text.contains("1234 item(s) of type Condition, Observation"),
            "{text}"
        );
        let back = Cut::from_issue(issue).unwrap();
        assert_eq!(
            (back.reason, &back.types, back.left_out),
            (cut.reason, &cut.types, cut.left_out)
        );
        // Another kind of issue is not a cut.
        assert!(Cut::from_issue(&json!({"code": "suppressed"})).is_none());
        assert!(Cut::from_issue(&json!({"code": "incomplete"})).is_none());
    }

    #[test]
    fn a_page_must_be_a_searchset_bundle() {
        assert!(Page::read(json!({"resourceType": "Patient"}).to_string()).is_none());
        assert!(
            Page::read(json!({"resourceType": "Bundle", "type": "collection"}).to_string())
                .is_none()
        );
        let p = Page::read(json!({"resourceType": "Bundle", "type": "searchset", "total": 3,
            "link": [{"relation": "next", "url": "https://x/fhir?p=2"}],
            "entry": [
                {"resource": {"resourceType": "Observation", "id": "o"}, "search": {"mode": "match"}},
                {"resource": {"resourceType": "Practitioner", "id": "pr"}, "search": {"mode": "include"}},
                {"resource": {"resourceType": "OperationOutcome"}, "search": {"mode": "outcome"}},
                {"resource": {"resourceType": "Condition", "id": "c"}},
            ]}).to_string())
        .unwrap();
        assert_eq!(
            (p.matches.len(), p.includes.len(), p.total),
            (2, 1, Some(3))
        );
        assert_eq!(p.next.as_deref(), Some("https://x/fhir?p=2"));
    }
}
