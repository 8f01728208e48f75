//! A resource held as the bytes it arrived in, with a small view of what the gateway decides
//! on. Pure: no I/O.
//!
//! A region's answer is parsed once: each resource's JSON text is kept as it came (one copy,
//! shared by `Arc` between the cache, the merge and kept views), and an [`ItemView`] holds the
//! few fields that screening, policy, consent and the merge read. Writing an item copies its
//! bytes and splices only what changes (its id, `meta`, the patient reference, relative
//! references); every other element passes through byte for byte, unknown ones included.

use std::borrow::Cow;
use std::sync::Arc;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;

use super::types::ResourceType;
use crate::record::PatientLink;

/// One resource: its JSON text and its view. Cheap to clone.
#[derive(Clone)]
pub struct Item(Arc<Inner>);

struct Inner {
    json: Box<str>,
    view: ItemView,
}

impl std::fmt::Debug for Item {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The view only: an item's text is patient data.
        f.debug_struct("Item")
            .field("type", &self.0.view.rtype)
            .field("id", &self.0.view.id)
            .field("bytes", &self.0.json.len())
            .finish()
    }
}

impl PartialEq for Item {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0.json == other.0.json
    }
}

/// What decisions read of a resource.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ItemView {
    /// `resourceType` ("" when missing).
    pub rtype: String,
    /// The federated type, when it is one.
    pub kind: Option<ResourceType>,
    pub id: Option<String>,
    /// `meta.lastUpdated` as written.
    pub last_updated: Option<String>,
    /// `meta.lastUpdated` as a time (Unix seconds of its start; `i64::MIN` when none).
    pub updated_at: i64,
    /// `meta.security` codings: (system, code).
    pub security: Vec<(Option<String>, String)>,
    /// `category` codes: (system, code); a bare string category has no system.
    pub categories: Vec<(Option<String>, String)>,
    /// What the patient reference (`subject` or `patient`) points at.
    pub patient: Option<PatientLink>,
    /// Business identifiers: (system, value).
    pub identifiers: Vec<(String, String)>,
    /// The first coded concept (`system|code`) of `code`, `medicationCodeableConcept`,
    /// `vaccineCode` or `type`.
    pub concept: Option<String>,
    /// The canonical JSON of the first clinical date element present.
    pub clinical_date: Option<String>,
    /// The start of the first clinical date that parses (`i64::MIN` when none): newest first.
    pub sort_start: i64,
    /// Every `reference` string in the resource, in document order.
    pub references: Vec<String>,
}

impl ItemView {
    /// The relative references (`Type/id`) among [`ItemView::references`].
    pub fn relative_references(&self) -> impl Iterator<Item = (&str, &str)> {
        self.references
            .iter()
            .filter_map(|r| super::reference::split_relative(r))
    }
}

/// Why a text is not a resource.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a JSON object: {0}")]
pub struct NotAResource(String);

impl Item {
    /// Reads a resource's JSON text (kept as given).
    pub fn parse(json: &str) -> Result<Item, NotAResource> {
        let members = Members::parse(json)?;
        let view = ItemView::read(&members);
        Ok(Item(Arc::new(Inner {
            json: json.into(),
            view,
        })))
    }

    /// A resource given as a tree (the directory record, tests).
    pub fn from_value(value: &Value) -> Result<Item, NotAResource> {
        Item::parse(&serde_json::to_string(value).unwrap_or_default())
    }

    pub fn json(&self) -> &str {
        &self.0.json
    }

    pub fn view(&self) -> &ItemView {
        &self.0.view
    }

    /// The resource as a tree, for the few places that need all of it.
    pub fn to_value(&self) -> Value {
        serde_json::from_str(&self.0.json).unwrap_or(Value::Null)
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.0.json.len()
    }

    /// `resourceType`.
    pub fn rtype(&self) -> &str {
        &self.0.view.rtype
    }

    /// `id` ("" when missing).
    pub fn id(&self) -> &str {
        self.0.view.id.as_deref().unwrap_or("")
    }

    /// One top-level element as a tree (`None` when missing).
    pub fn element(&self, name: &str) -> Option<Value> {
        let members = Members::parse(&self.0.json).ok()?;
        members
            .get(name)
            .and_then(|raw| serde_json::from_str(raw.get()).ok())
    }
}

/// Resources given as trees, as items (what is not a JSON object is left out).
pub fn items_of(values: impl IntoIterator<Item = Value>) -> Vec<Item> {
    values
        .into_iter()
        .filter_map(|v| Item::from_value(&v).ok())
        .collect()
}

/// An object's key, borrowed unless it had escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

/// An object's members, in order, each value left as text.
pub(crate) struct Members<'a>(Vec<(Key<'a>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(16));
                while let Some((k, v)) = map.next_entry::<Key<'de>, &'de RawValue>()? {
                    out.push((k, v));
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// An array's elements, each left as text.
struct Elements<'a>(Vec<&'a RawValue>);

impl<'de> Deserialize<'de> for Elements<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Elements<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON array")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(8));
                while let Some(v) = seq.next_element::<&'de RawValue>()? {
                    out.push(v);
                }
                Ok(Elements(out))
            }
        }
        d.deserialize_seq(V)
    }
}

impl<'a> Members<'a> {
    pub(crate) fn parse(json: &'a str) -> Result<Members<'a>, NotAResource> {
        serde_json::from_str(json).map_err(|e| NotAResource(e.to_string()))
    }

    pub(crate) fn get(&self, name: &str) -> Option<&'a RawValue> {
        self.0.iter().find(|(k, _)| k.0 == name).map(|(_, v)| *v)
    }

    fn tree(&self, name: &str) -> Option<Value> {
        self.get(name)
            .and_then(|raw| serde_json::from_str(raw.get()).ok())
    }

    fn string(&self, name: &str) -> Option<String> {
        self.get(name)
            .and_then(|raw| serde_json::from_str::<String>(raw.get()).ok())
    }
}

impl ItemView {
    fn read(members: &Members<'_>) -> ItemView {
        let rtype = members.string("resourceType").unwrap_or_default();
        let kind = ResourceType::parse(&rtype);
        let meta = members.tree("meta");
        let last_updated = meta
            .as_ref()
            .and_then(|m| m.get("lastUpdated"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        let updated_at = last_updated
            .as_deref()
            .and_then(|s| super::date::parse_interval(s).ok())
            .map_or(i64::MIN, |i| i.start);
        let security = meta
            .as_ref()
            .and_then(|m| m.get("security"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|label| {
                Some((
                    label
                        .get("system")
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                    label.get("code")?.as_str()?.to_owned(),
                ))
            })
            .collect();
        let categories = members
            .tree("category")
            .map(|c| categories_of(&c))
            .unwrap_or_default();
        let patient = kind.and_then(|k| {
            let element = k.patient_element();
            let tree = members.tree(element)?;
            crate::record::patient_link(&serde_json::json!({ element: tree }), element)
        });
        let identifiers = members
            .tree("identifier")
            .and_then(|v| v.as_array().cloned())
            .into_iter()
            .flatten()
            .filter_map(|i| {
                Some((
                    i.get("system")?.as_str()?.to_owned(),
                    i.get("value")?.as_str()?.to_owned(),
                ))
            })
            .collect();
        let concept = ["code", "medicationCodeableConcept", "vaccineCode", "type"]
            .iter()
            .filter_map(|e| members.tree(e))
            .find_map(|c| first_coding(&c));
        let (mut clinical_date, mut sort_start) = (None, i64::MIN);
        if let Some(k) = kind {
            let dates: Vec<Value> = k
                .sort_elements()
                .iter()
                .filter_map(|p| {
                    let (first, rest) = p.split_once('.').unwrap_or((p, ""));
                    let top = members.tree(first)?;
                    if rest.is_empty() {
                        Some(top)
                    } else {
                        super::types::element(&top, rest).cloned()
                    }
                })
                .collect();
            clinical_date = dates.first().map(super::canonical_json);
            sort_start = dates
                .iter()
                .find_map(super::date::element_interval)
                .map_or(i64::MIN, |i| i.start);
        }
        let mut references = Vec::new();
        for (_, raw) in &members.0 {
            collect_references(raw, &mut references);
        }
        ItemView {
            rtype,
            kind,
            id: members.string("id"),
            last_updated,
            updated_at,
            security,
            categories,
            patient,
            identifiers,
            concept,
            clinical_date,
            sort_start,
            references,
        }
    }
}

/// The first `system|code` of a CodeableConcept (or of the first of a list of them).
fn first_coding(c: &Value) -> Option<String> {
    let c = match c {
        // Encounter.type is a list.
        Value::Array(list) => list.first()?,
        one => one,
    };
    c.get("coding")?.as_array()?.iter().find_map(|coding| {
        Some(format!(
            "{}|{}",
            coding.get("system")?.as_str()?,
            coding.get("code")?.as_str()?
        ))
    })
}

/// The codes of a `category` element (one or a list; a code string or CodeableConcepts).
pub fn categories_of(category: &Value) -> Vec<(Option<String>, String)> {
    let list: Vec<&Value> = match category {
        Value::Array(list) => list.iter().collect(),
        one => vec![one],
    };
    list.into_iter()
        .flat_map(|cc| match cc {
            Value::String(code) => vec![(None, code.clone())],
            other => other
                .get("coding")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|c| {
                    Some((
                        c.get("system").and_then(Value::as_str).map(str::to_owned),
                        c.get("code")?.as_str()?.to_owned(),
                    ))
                })
                .collect(),
        })
        .collect()
}

/// Every `reference` string in a JSON text, in document order.
pub fn references_in(json: &str) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(raw) = serde_json::from_str::<&RawValue>(json) {
        collect_references(raw, &mut out);
    }
    out
}

/// Whether a text may hold a `reference` member (the walkers skip what cannot).
fn may_reference(raw: &RawValue) -> bool {
    raw.get().contains("\"reference\"")
}

/// Every `reference` string under `raw`, in document order.
fn collect_references(raw: &RawValue, out: &mut Vec<String>) {
    if !may_reference(raw) {
        return;
    }
    match raw.get().as_bytes().first() {
        Some(b'{') => {
            let Ok(members) = serde_json::from_str::<Members<'_>>(raw.get()) else {
                return;
            };
            for (k, v) in &members.0 {
                match (k.0 == "reference", serde_json::from_str::<String>(v.get())) {
                    (true, Ok(s)) => out.push(s),
                    _ => collect_references(v, out),
                }
            }
        }
        Some(b'[') => {
            if let Ok(elements) = serde_json::from_str::<Elements<'_>>(raw.get()) {
                for v in elements.0 {
                    collect_references(v, out);
                }
            }
        }
        _ => {}
    }
}

/// What a patient reference becomes, given what it was.
pub type Replace<'a> = dyn Fn(&Value) -> Value + 'a;

/// How an item is written: what changes, everything else copied.
pub struct Splice<'a> {
    /// The `id` it is shown under.
    pub id: &'a str,
    /// The patient element and what replaces it (written as given).
    pub patient: Option<(&'static str, &'a Replace<'a>)>,
    /// Changes `meta` (given `{}` when the item has none).
    pub meta: &'a dyn Fn(&mut Value),
    /// The address of a relative reference (`Type/id`).
    pub resolve: &'a dyn Fn(&str) -> String,
}

impl Item {
    /// Appends the item, spliced, to `out`.
    pub fn write_spliced(&self, splice: &Splice<'_>, out: &mut Vec<u8>) {
        let Ok(members) = Members::parse(&self.0.json) else {
            out.extend_from_slice(b"null");
            return;
        };
        out.push(b'{');
        let (mut wrote_id, mut wrote_meta) = (false, false);
        for (i, (k, v)) in members.0.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_str(&k.0, out);
            out.push(b':');
            match k.0.as_ref() {
                "id" => {
                    wrote_id = true;
                    write_str(splice.id, out);
                }
                "meta" => {
                    wrote_meta = true;
                    let mut meta: Value = serde_json::from_str(v.get()).unwrap_or(Value::Null);
                    if !meta.is_object() {
                        meta = Value::Object(Default::default());
                    }
                    (splice.meta)(&mut meta);
                    qualify_references(&mut meta, splice.resolve);
                    let _ = serde_json::to_writer(&mut *out, &meta);
                }
                name if splice.patient.is_some_and(|(e, _)| e == name)
                    && v.get().starts_with('{') =>
                {
                    let (_, replace) = splice.patient.expect("checked");
                    let old: Value = serde_json::from_str(v.get()).unwrap_or(Value::Null);
                    let _ = serde_json::to_writer(&mut *out, &replace(&old));
                }
                _ => write_rewritten(v, splice.resolve, out),
            }
        }
        let mut more = !members.0.is_empty();
        let mut sep = |out: &mut Vec<u8>| {
            if more {
                out.push(b',');
            }
            more = true;
        };
        if !wrote_meta {
            sep(out);
            let mut meta = Value::Object(Default::default());
            (splice.meta)(&mut meta);
            out.extend_from_slice(b"\"meta\":");
            let _ = serde_json::to_writer(&mut *out, &meta);
        }
        if !wrote_id {
            sep(out);
            out.extend_from_slice(b"\"id\":");
            write_str(splice.id, out);
        }
        out.push(b'}');
    }

    /// Appends the item with its relative references resolved and nothing else changed.
    pub fn write_resolved(&self, resolve: &dyn Fn(&str) -> String, out: &mut Vec<u8>) {
        match serde_json::from_str::<&RawValue>(&self.0.json) {
            Ok(raw) => write_rewritten(raw, resolve, out),
            Err(_) => out.extend_from_slice(b"null"),
        }
    }
}

fn write_str(s: &str, out: &mut Vec<u8>) {
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Copies `raw`, writing each relative `reference` string as `resolve` gives it. Containers
/// on the way to a reference are written without whitespace; everything else byte for byte.
fn write_rewritten(raw: &RawValue, resolve: &dyn Fn(&str) -> String, out: &mut Vec<u8>) {
    if !may_reference(raw) {
        out.extend_from_slice(raw.get().as_bytes());
        return;
    }
    match raw.get().as_bytes().first() {
        Some(b'{') => {
            let Ok(members) = serde_json::from_str::<Members<'_>>(raw.get()) else {
                out.extend_from_slice(raw.get().as_bytes());
                return;
            };
            out.push(b'{');
            for (i, (k, v)) in members.0.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_str(&k.0, out);
                out.push(b':');
                let relative = (k.0 == "reference")
                    .then(|| serde_json::from_str::<String>(v.get()).ok())
                    .flatten()
                    .filter(|s| is_relative_reference(s));
                match relative {
                    Some(s) => write_str(&resolve(&s), out),
                    None => write_rewritten(v, resolve, out),
                }
            }
            out.push(b'}');
        }
        Some(b'[') => {
            let Ok(elements) = serde_json::from_str::<Elements<'_>>(raw.get()) else {
                out.extend_from_slice(raw.get().as_bytes());
                return;
            };
            out.push(b'[');
            for (i, v) in elements.0.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_rewritten(v, resolve, out);
            }
            out.push(b']');
        }
        _ => out.extend_from_slice(raw.get().as_bytes()),
    }
}

/// Is `r` a relative RESTful reference (`Type/id`, optionally `/_history/v`)?
pub fn is_relative_reference(r: &str) -> bool {
    let mut parts = r.split('/');
    let (Some(t), Some(id)) = (parts.next(), parts.next()) else {
        return false;
    };
    let rest: Vec<&str> = parts.collect();
    t.starts_with(|c: char| c.is_ascii_uppercase())
        && t.chars().all(|c| c.is_ascii_alphabetic())
        && !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        && (rest.is_empty() || (rest.len() == 2 && rest[0] == "_history"))
}

/// Rewrites every relative `reference` in a tree with `resolve`; absolute, contained (`#`)
/// and `urn:` references are left as they are.
pub fn qualify_references(value: &mut Value, resolve: &dyn Fn(&str) -> String) {
    match value {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                match v {
                    Value::String(s) if k == "reference" && is_relative_reference(s) => {
                        *s = resolve(s);
                    }
                    other => qualify_references(other, resolve),
                }
            }
        }
        Value::Array(items) => {
            for v in items {
                qualify_references(v, resolve);
            }
        }
        _ => {}
    }
}

/// A searchset entry around bytes already written: `{"fullUrl":…,"resource":…,"search":…}`.
pub fn write_entry(
    full_url: &str,
    mode: super::SearchMode,
    resource: impl FnOnce(&mut Vec<u8>),
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(b"{\"fullUrl\":");
    write_str(full_url, out);
    out.extend_from_slice(b",\"resource\":");
    resource(out);
    out.extend_from_slice(b",\"search\":{\"mode\":\"");
    out.extend_from_slice(mode.as_str().as_bytes());
    out.extend_from_slice(b"\"}}");
}

/// A Bundle as the gateway reads it: its envelope, and each entry's resource left as text.
#[derive(Debug, Default)]
pub struct BundleText<'a> {
    pub resource_type: Option<String>,
    pub bundle_type: Option<String>,
    pub total: Option<u64>,
    /// The `next` link.
    pub next: Option<String>,
    pub entries: Vec<EntryText<'a>>,
}

/// One entry: its `search.mode` and its resource's text.
#[derive(Debug)]
pub struct EntryText<'a> {
    pub mode: Option<String>,
    pub resource: Option<&'a RawValue>,
}

impl<'a> EntryText<'a> {
    /// The resource's `resourceType`, read without reading the rest.
    pub fn resource_type(&self) -> Option<String> {
        Members::parse(self.resource?.get())
            .ok()?
            .string("resourceType")
    }
}

impl<'a> BundleText<'a> {
    /// Reads a JSON object's envelope; `Err` when the text is not one. Elements of the wrong
    /// shape read as missing.
    pub fn parse(json: &'a str) -> Result<BundleText<'a>, NotAResource> {
        let members = Members::parse(json)?;
        let next = members.tree("link").and_then(|links| {
            links
                .as_array()?
                .iter()
                .find(|l| l.get("relation").and_then(Value::as_str) == Some("next"))?
                .get("url")?
                .as_str()
                .map(str::to_owned)
        });
        let entries = members
            .get("entry")
            .and_then(|raw| serde_json::from_str::<Elements<'a>>(raw.get()).ok())
            .map(|e| e.0)
            .unwrap_or_default()
            .into_iter()
            .map(|raw| {
                let Ok(entry) = serde_json::from_str::<Members<'a>>(raw.get()) else {
                    return EntryText {
                        mode: None,
                        resource: None,
                    };
                };
                EntryText {
                    mode: entry
                        .tree("search")
                        .and_then(|s| s.get("mode").and_then(Value::as_str).map(str::to_owned)),
                    resource: entry.get("resource").filter(|r| r.get().starts_with('{')),
                }
            })
            .collect();
        Ok(BundleText {
            resource_type: members.string("resourceType"),
            bundle_type: members.string("type"),
            total: members.tree("total").and_then(|t| t.as_u64()),
            next,
            entries,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obs() -> Value {
        json!({
            "resourceType": "Observation", "id": "o1",
            "meta": {"lastUpdated": "2024-05-01T10:00:00Z",
                     "security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}]},
            "identifier": [{"system": "urn:lab", "value": "L-1"}],
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}],
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "1234"}]},
            "subject": {"reference": "Patient/p1", "display": "someone"},
            "performer": [{"reference": "Practitioner/pr1"}, {"reference": "https://x.example/Organization/o"}],
            "effectiveDateTime": "2024-04-30",
            "valueQuantity": {"value": 1.50, "unit": "mmol/L"},
            "_unknownElement": {"kept": [1, 2.0, "\\u00e9"]}
        })
    }

    #[test]
    fn the_view_holds_what_decisions_read() {
        let item = Item::from_value(&obs()).unwrap();
        let v = item.view();
        assert_eq!(v.rtype, "Observation");
        assert_eq!(v.kind, Some(ResourceType::Observation));
        assert_eq!(v.id.as_deref(), Some("o1"));
        assert_eq!(v.last_updated.as_deref(), Some("2024-05-01T10:00:00Z"));
        assert_ne!(v.updated_at, i64::MIN);
        assert_eq!(v.security.len(), 1);
        assert_eq!(v.categories[0].1, "laboratory");
        assert_eq!(v.patient, Some(PatientLink::Local("p1".into())));
        assert_eq!(v.identifiers, vec![("urn:lab".into(), "L-1".into())]);
        assert_eq!(v.concept.as_deref(), Some("http://snomed.info/sct|1234"));
        assert_eq!(v.clinical_date.as_deref(), Some("\"2024-04-30\""));
        assert_ne!(v.sort_start, i64::MIN);
        assert_eq!(
            v.references,
            vec![
                "Patient/p1",
                "Practitioner/pr1",
                "https://x.example/Organization/o"
            ]
        );
        assert_eq!(
            v.relative_references().collect::<Vec<_>>(),
            vec![("Patient", "p1"), ("Practitioner", "pr1")]
        );
    }

    #[test]
    fn unread_elements_pass_through_byte_for_byte() {
        let text = r#"{"resourceType":"Observation","id":"o1","valueQuantity":{"value":1.50},"note":[{"text":"caf\u00e9 \/ x"}],"performer":[ {"reference":"Practitioner/pr1"} ]}"#;
        let item = Item::parse(text).unwrap();
        let mut out = Vec::new();
        item.write_spliced(
            &Splice {
                id: "dorset.o1",
                patient: None,
                meta: &|m| m["source"] = json!("https://d.example"),
                resolve: &|r| format!("https://gw.example/{r}"),
            },
            &mut out,
        );
        let out = String::from_utf8(out).unwrap();
        assert!(out.contains(r#""valueQuantity":{"value":1.50}"#), "{out}");
        assert!(
            out.contains(r#""note":[{"text":"caf\u00e9 \/ x"}]"#),
            "{out}"
        );
        assert!(
            out.contains(r#""performer":[{"reference":"https://gw.example/Practitioner/pr1"}]"#),
            "{out}"
        );
        assert!(out.contains(r#""id":"dorset.o1""#));
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["meta"]["source"], "https://d.example");
    }

    #[test]
    fn spliced_equals_the_tree_edit() {
        let item = Item::from_value(&obs()).unwrap();
        let replace = |old: &Value| json!({"reference": "https://gw/Patient/9", "display": old["display"].clone()});
        let mut out = Vec::new();
        item.write_spliced(
            &Splice {
                id: "r.o1",
                patient: Some(("subject", &replace)),
                meta: &|m| m["tag"] = json!([{"code": "r"}]),
                resolve: &|r| format!("https://gw/{r}"),
            },
            &mut out,
        );
        let got: Value = serde_json::from_slice(&out).unwrap();
        let mut want = obs();
        want["id"] = json!("r.o1");
        want["subject"] = replace(&want["subject"]);
        want["meta"]["tag"] = json!([{"code": "r"}]);
        qualify_references(&mut want, &|r| format!("https://gw/{r}"));
        assert_eq!(got, want);
    }

    #[test]
    fn not_an_object_is_refused() {
        assert!(Item::parse("[1]").is_err());
        assert!(Item::parse("{").is_err());
    }
}
