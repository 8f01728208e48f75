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

use super::shape;
use super::spliced::Writer;
use super::types::ResourceType;
use crate::record::PatientLink;

/// The text of a whole answer, shared by the items read from it. An `Arc<String>` rather than
/// an `Arc<str>`: a body read into a `String` is shared as it is, where an `Arc<str>` would
/// copy it (a 30 MB answer was held twice while it was read).
pub type Source = Arc<String>;

/// One resource: its JSON text and its view. Cheap to clone.
#[derive(Clone)]
pub struct Item(Arc<Inner>);

struct Inner {
    /// The text the item is part of (a whole answer, shared by its items), and where the item
    /// lies in it.
    source: Source,
    at: (u32, u32),
    view: ItemView,
    /// Where each top-level member's key and value lie in `json` (`None` when a key had
    /// escapes: such an item is written by re-reading it).
    spans: Option<Box<[Span]>>,
    /// Every `reference` string, in document order: where its literal lies in `json`
    /// (quotes included), and its value when the literal had escapes (else the value is the
    /// text between the quotes, and nothing is copied).
    references: Box<[FoundReference]>,
}

/// A `reference` string: where its literal lies (quotes included), and its value when the
/// literal had escapes.
type FoundReference = (u32, u32, Option<Box<str>>);

/// A found reference's value: its unescaped copy, or the text between its quotes in `json`.
fn reference_value<'t>(json: &'t str, (a, b, escaped): &'t FoundReference) -> &'t str {
    escaped
        .as_deref()
        .unwrap_or(&json[*a as usize + 1..*b as usize - 1])
}

/// What the scanner read of a resource: its text, its members (key and value text) and its
/// references.
type ScannedParts<'a, 'l> = (
    &'a str,
    &'l [(super::scan::Literal<'a>, &'a str)],
    &'l [super::scan::ReferenceAt],
);

/// A top-level member: its key's text (without quotes) and its value's, as byte ranges.
#[derive(Debug, Clone, Copy)]
struct Span {
    key: (u32, u32),
    value: (u32, u32),
}

impl std::fmt::Debug for Item {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The view only: an item's text is patient data.
        f.debug_struct("Item")
            .field("type", &self.0.view.rtype())
            .field("id", &self.0.view.id())
            .field("bytes", &self.bytes())
            .finish()
    }
}

impl PartialEq for Item {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.json() == other.json()
    }
}

/// What decisions read of a resource. Its strings lie one after another in one text: one
/// allocation an item rather than one a string (a 30 MB answer has 48,000 items, and their
/// views were most of the heap a request held beyond the answer's text).
#[derive(Clone, Default)]
pub struct ItemView {
    /// The view's strings, each where its [`Str`] says.
    text: Box<str>,
    /// `resourceType` ("" when missing).
    rtype: Str,
    /// The federated type, when it is one.
    pub kind: Option<ResourceType>,
    id: Option<Str>,
    /// `meta.lastUpdated` as written.
    last_updated: Option<Str>,
    /// `meta.lastUpdated` as a time (Unix seconds of its start; `i64::MIN` when none).
    pub updated_at: i64,
    /// Its three lists one after another in one allocation (none when all are empty):
    /// `meta.security` codings (system, code), then `category` codes (system, code; a bare
    /// string category has no system), then business identifiers (system, value; the system
    /// always there). `ends` are where the first two end.
    lists: Box<[(Option<Str>, Str)]>,
    ends: [u32; 2],
    /// What the patient reference (`subject` or `patient`) points at.
    pub patient: Option<PatientLink>,
    /// The first coded concept (`system|code`) of `code`, `medicationCodeableConcept`,
    /// `vaccineCode` or `type`.
    concept: Option<Str>,
    /// The canonical JSON of the first clinical date element present.
    clinical_date: Option<Str>,
    /// The start of the first clinical date that parses (`i64::MIN` when none): newest first.
    pub sort_start: i64,
}

/// Where one of a view's strings lies in its text.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Str(u32, u32);

/// A (system, code) pair as a view reads it.
pub type Coded<'v> = (Option<&'v str>, &'v str);

impl ItemView {
    fn str(&self, s: Str) -> &str {
        &self.text[s.0 as usize..s.1 as usize]
    }

    fn pairs<'v>(
        &'v self,
        list: &'v [(Option<Str>, Str)],
    ) -> impl ExactSizeIterator<Item = Coded<'v>> + Clone + 'v {
        list.iter()
            .map(move |(system, code)| (system.map(|s| self.str(s)), self.str(*code)))
    }

    /// `resourceType` ("" when missing).
    pub fn rtype(&self) -> &str {
        self.str(self.rtype)
    }

    pub fn id(&self) -> Option<&str> {
        self.id.map(|s| self.str(s))
    }

    /// `meta.lastUpdated` as written.
    pub fn last_updated(&self) -> Option<&str> {
        self.last_updated.map(|s| self.str(s))
    }

    /// `meta.security` codings: (system, code).
    pub fn security(&self) -> impl ExactSizeIterator<Item = Coded<'_>> + Clone {
        self.pairs(&self.lists[..self.ends[0] as usize])
    }

    /// `category` codes: (system, code); a bare string category has no system.
    pub fn categories(&self) -> impl ExactSizeIterator<Item = Coded<'_>> + Clone {
        self.pairs(&self.lists[self.ends[0] as usize..self.ends[1] as usize])
    }

    /// Business identifiers: (system, value).
    pub fn identifiers(&self) -> impl ExactSizeIterator<Item = (&str, &str)> + Clone {
        self.lists[self.ends[1] as usize..]
            .iter()
            .map(|(system, value)| (system.map_or("", |s| self.str(s)), self.str(*value)))
    }

    /// The first coded concept (`system|code`) of `code`, `medicationCodeableConcept`,
    /// `vaccineCode` or `type`.
    pub fn concept(&self) -> Option<&str> {
        self.concept.map(|s| self.str(s))
    }

    /// The canonical JSON of the first clinical date element present.
    pub fn clinical_date(&self) -> Option<&str> {
        self.clinical_date.map(|s| self.str(s))
    }
}

impl PartialEq for ItemView {
    fn eq(&self, other: &Self) -> bool {
        self.rtype() == other.rtype()
            && self.kind == other.kind
            && self.id() == other.id()
            && self.last_updated() == other.last_updated()
            && self.updated_at == other.updated_at
            && self.security().eq(other.security())
            && self.categories().eq(other.categories())
            && self.patient == other.patient
            && self.identifiers().eq(other.identifiers())
            && self.concept() == other.concept()
            && self.clinical_date() == other.clinical_date()
            && self.sort_start == other.sort_start
    }
}

impl std::fmt::Debug for ItemView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Each string read from the text, except what names the patient: the patient link
        // (an NHS number, perhaps) and business identifiers are shown by kind and count only,
        // as an item's text is never shown.
        let patient = self.patient.as_ref().map(|l| match l {
            PatientLink::Local(_) => "a local Patient",
            PatientLink::Nhs(_) => "an NHS number",
        });
        f.debug_struct("ItemView")
            .field("rtype", &self.rtype())
            .field("kind", &self.kind)
            .field("id", &self.id())
            .field("last_updated", &self.last_updated())
            .field("security", &self.security().collect::<Vec<_>>())
            .field("categories", &self.categories().collect::<Vec<_>>())
            .field("patient", &patient)
            .field("identifiers", &self.identifiers().len())
            .field("concept", &self.concept())
            .field("clinical_date", &self.clinical_date())
            .field("sort_start", &self.sort_start)
            .finish()
    }
}

thread_local! {
    /// A view's three lists as they are read, kept between items.
    static LISTS: std::cell::RefCell<Vec<(Option<Str>, Str)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// A view's text as it is written: each string put after the last.
#[derive(Default)]
struct Packer(String);

impl Packer {
    fn put(&mut self, s: &str) -> Str {
        let start = self.0.len() as u32;
        self.0.push_str(s);
        Str(start, self.0.len() as u32)
    }

    /// Puts each pair's strings, noting where they lie in `out`.
    fn pairs<S: AsRef<str>>(
        &mut self,
        list: impl IntoIterator<Item = (Option<S>, S)>,
        out: &mut Vec<(Option<Str>, Str)>,
    ) {
        for (system, code) in list {
            let system = system.map(|s| self.put(s.as_ref()));
            out.push((system, self.put(code.as_ref())));
        }
    }
}

impl Item {
    /// Every `reference` string in the resource, in document order.
    pub fn references(&self) -> impl Iterator<Item = &str> {
        let json = self.json();
        self.0
            .references
            .iter()
            .map(move |r| reference_value(json, r))
    }

    /// The relative references (`Type/id`) among [`Item::references`].
    pub fn relative_references(&self) -> impl Iterator<Item = (&str, &str)> {
        self.references()
            .filter_map(super::reference::split_relative)
    }
}

/// Why a text is not a resource.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a JSON object: {0}")]
pub struct NotAResource(String);

impl Item {
    /// Reads a resource's JSON text (kept as given).
    pub fn parse(json: &str) -> Result<Item, NotAResource> {
        let source: Source = Arc::new(json.to_owned());
        Item::parse_in(&source, &source)
    }

    /// Reads a resource whose text `json` is part of `source` (an answer's body): the item
    /// keeps its place in the shared text rather than a copy of its own. One pass of the
    /// scanner checks the text and finds its members and references.
    pub fn parse_in(source: &Source, json: &str) -> Result<Item, NotAResource> {
        let mut s = super::scan::Scan::new(json);
        s.ws();
        let scanned = super::scan::resource(&mut s)
            .and_then(|r| s.end().map(|()| r))
            .map_err(|e| NotAResource(e.to_string()))?;
        Item::of_scan(source, scanned)
    }

    /// [`Item::parse_in`] of a Bundle entry's resource, which the Bundle's reading already
    /// made (the text is not read a second time).
    pub fn parse_entry(source: &Source, resource: &ResourceText<'_>) -> Result<Item, NotAResource> {
        match &resource.item {
            Some(made) => made.clone(),
            None => Item::parse_in(source, resource.text),
        }
    }

    /// The item of a resource the scanner read, whose text is part of `source`.
    fn of_scan(
        source: &Source,
        scanned: super::scan::ResourceScan<'_>,
    ) -> Result<Item, NotAResource> {
        let mut members = Vec::new();
        Item::of_parts(
            source,
            (scanned.text, &scanned.members, &scanned.references),
            &mut members,
        )
    }

    /// The item of a resource the scanner read (its text, members and references), whose
    /// text is part of `source`; `members` is a list to read its members into, kept by the
    /// caller for the next (its contents are not kept).
    fn of_parts<'a>(
        source: &Source,
        (json, literals, found): ScannedParts<'a, '_>,
        members: &mut Vec<(Key<'a>, &'a str)>,
    ) -> Result<Item, NotAResource> {
        let offset = (json.as_ptr() as usize)
            .checked_sub(source.as_ptr() as usize)
            .filter(|o| o + json.len() <= source.len())
            .ok_or_else(|| NotAResource("not part of its answer".into()))?;
        members.clear();
        members.extend(
            literals
                .iter()
                .map(|(k, v)| (Key(k.value().unwrap_or_default()), *v)),
        );
        let members_read = Members(std::mem::take(members));
        let made = Item::of_members(source, (json, offset), &members_read, found);
        *members = members_read.0;
        made
    }

    fn of_members(
        source: &Source,
        (json, offset): (&str, usize),
        members: &Members<'_>,
        found: &[super::scan::ReferenceAt],
    ) -> Result<Item, NotAResource> {
        let at = |part: &str| (part.as_ptr() as usize - json.as_ptr() as usize) as u32;
        let range = |part: &str| (at(part), at(part) + part.len() as u32);
        // Each list made at its length (collecting through `Option` or `Result` cannot know
        // it, and grew each list three times over; a profile under load found allocation
        // the largest cost).
        let mut spans = Vec::with_capacity(members.0.len());
        for (k, v) in &members.0 {
            match &k.0 {
                Cow::Borrowed(key) => spans.push(Span {
                    key: range(key),
                    value: range(v),
                }),
                Cow::Owned(_) => break,
            }
        }
        let spans = (spans.len() == members.0.len()).then(|| spans.into_boxed_slice());
        // Every reference, with where it lies; its value copied only when it had escapes.
        let mut references = Vec::with_capacity(found.len());
        for r in found {
            let escaped = match r.escaped {
                false => None,
                true => Some(
                    super::scan::unescape(&json[r.start + 1..r.end - 1])
                        .ok_or_else(|| NotAResource("a reference's escapes".into()))?
                        .into_boxed_str(),
                ),
            };
            references.push((r.start as u32, r.end as u32, escaped));
        }
        let references = references.into_boxed_slice();
        let view = ItemView::read(members);
        Ok(Item(Arc::new(Inner {
            source: source.clone(),
            at: (offset as u32, (offset + json.len()) as u32),
            view,
            spans,
            references,
        })))
    }

    /// A resource given as a tree (the directory record, tests).
    pub fn from_value(value: &Value) -> Result<Item, NotAResource> {
        Item::parse(&serde_json::to_string(value).unwrap_or_default())
    }

    pub fn json(&self) -> &str {
        &self.0.source[self.0.at.0 as usize..self.0.at.1 as usize]
    }

    pub fn view(&self) -> &ItemView {
        &self.0.view
    }

    /// The resource as a tree, for the few places that need all of it.
    pub fn to_value(&self) -> Value {
        serde_json::from_str(self.json()).unwrap_or(Value::Null)
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        (self.0.at.1 - self.0.at.0) as usize
    }

    /// `resourceType`.
    pub fn rtype(&self) -> &str {
        self.0.view.rtype()
    }

    /// `id` ("" when missing).
    pub fn id(&self) -> &str {
        self.0.view.id().unwrap_or("")
    }
}

/// A top-level member written otherwise in canonical JSON: its name, and what writes it
/// (given the member's text).
pub type Replaced<'a> = (&'a str, &'a dyn Fn(&str, &mut String));

impl Item {
    /// SHA-256 of the item's canonical JSON without the top-level members `skip`, read from
    /// its text (no tree is built): equal to [`super::canonical_digest_without`] of the item
    /// as a tree. The top-level member `replace.0`, when it is an object, is written instead
    /// by `replace.1` (given its text), which must write canonical JSON.
    pub fn content_digest(&self, skip: &[&str], replace: Option<Replaced<'_>>) -> [u8; 32] {
        // The members where the item's read noted them (keys without escapes), else read again.
        let json = self.json();
        let members = match &self.0.spans {
            Some(spans) => Some(
                spans
                    .iter()
                    .map(|s| {
                        let text = |(a, b): (u32, u32)| &json[a as usize..b as usize];
                        (Key(Cow::Borrowed(text(s.key))), text(s.value))
                    })
                    .collect(),
            ),
            None => Members::parse(json).ok().map(|m| m.0),
        };
        super::digest_written(|out| {
            let written =
                members.and_then(|members| write_canonical_object(members, skip, replace, out));
            if written.is_none() {
                // Not readable as a tree either (it parsed once): as the tree path does.
                out.clear();
                out.push_str("null");
            }
        })
    }
}

/// An object's canonical JSON (keys sorted, `skip` left out, `replace` applied).
fn write_canonical_object(
    members: Vec<(Key<'_>, &str)>,
    skip: &[&str],
    replace: Option<Replaced<'_>>,
    out: &mut String,
) -> Option<()> {
    let mut pairs = sorted_members(members);
    pairs.retain(|(k, _)| !skip.contains(&k.0.as_ref()));
    out.push('{');
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        super::write_string(&k.0, out);
        out.push(':');
        match replace {
            Some((name, write)) if k.0 == name && v.starts_with('{') => write(v, out),
            _ => write_canonical_text(v, out)?,
        }
    }
    out.push('}');
    Some(())
}

/// The text of an object's member `name` (the last, when repeated, as a tree keeps it).
/// Read in one pass of the scanner that keeps no list of members: it is asked of every
/// entry's patient reference as the entry is written, where a list made and dropped for each
/// was a tenth of a merge's allocations.
pub(crate) fn member_text<'a>(object: &'a str, name: &str) -> Option<&'a str> {
    let mut s = Scan::new(object);
    s.ws();
    let mut found = None;
    s.object(|s, key| {
        let from = s.at();
        s.skip()?;
        if key.is(name) {
            found = Some(s.since(from));
        }
        Ok(())
    })
    .ok()?;
    s.end().ok()?;
    found
}

/// An object's members sorted by key, a repeated key keeping its last value (as a tree does).
fn sorted_members<'a>(mut members: Vec<(Key<'a>, &'a str)>) -> Vec<(Key<'a>, &'a str)> {
    // Stable: of equal keys the last stays last, and is the one kept.
    members.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out: Vec<(Key<'a>, &'a str)> = Vec::with_capacity(members.len());
    for m in members {
        match out.last_mut() {
            Some(last) if last.0.0 == m.0.0 => *last = m,
            _ => out.push(m),
        }
    }
    out
}

/// Any JSON text written as [`super::canonical_json`] writes its tree: keys sorted at every
/// depth, strings escaped and numbers spelt as serde_json writes them. One pass of the
/// scanner over the text (each object's members are written as they are read, then put in
/// order); a string without escapes and a plain integer are copied as they are.
pub(crate) fn write_canonical_text(text: &str, out: &mut String) -> Option<()> {
    let mut s = Scan::new(text);
    s.ws();
    write_canonical_value(&mut s, out).ok()?;
    s.end().ok()
}

/// The value at the cursor, written canonically.
fn write_canonical_value(s: &mut Scan<'_>, out: &mut String) -> Result<(), ScanError> {
    match s.peek() {
        Some(b'{') => write_canonical_members(s, out),
        Some(b'[') => {
            out.push('[');
            let mut first = true;
            s.array(|s| {
                if !std::mem::take(&mut first) {
                    out.push(',');
                }
                write_canonical_value(s, out)
            })?;
            out.push(']');
            Ok(())
        }
        Some(b'"') => {
            let literal = s.string()?;
            if literal.escaped {
                super::write_string(&key_text(literal, s)?, out);
            } else {
                // Without escapes it holds no quote, backslash or control character: it is
                // what serde_json writes.
                out.push('"');
                out.push_str(literal.inner);
                out.push('"');
            }
            Ok(())
        }
        _ => {
            let from = s.at();
            s.skip()?;
            let text = s.since(from);
            if is_plain_integer(text) || matches!(text, "true" | "false" | "null") {
                out.push_str(text);
            } else {
                // As a tree's number is written (`1.50` is `1.5`, `1e2` is `100.0`, `-0` is
                // `-0.0`, an integer past 64 bits a float).
                let number: Value = serde_json::from_str(text).map_err(|_| ScanError {
                    at: from,
                    what: "a number",
                })?;
                out.push_str(&number.to_string());
            }
            Ok(())
        }
    }
}

/// An integer serde_json reads as one and writes back as it was: no sign but a minus, no
/// leading zero, not `-0`, and at most 18 digits (within both 64-bit ranges).
fn is_plain_integer(text: &str) -> bool {
    let digits = text.strip_prefix('-').unwrap_or(text);
    !digits.is_empty()
        && digits.len() <= 18
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (!digits.starts_with('0') || (digits == "0" && !text.starts_with('-')))
}

/// An object's members written canonically: sorted by key, a repeated key keeping its last
/// value (as a tree keeps it).
fn write_canonical_members(s: &mut Scan<'_>, out: &mut String) -> Result<(), ScanError> {
    let start = out.len();
    out.push('{');
    // Each member as written: its key and where `"key":value` lies in `out`.
    type Written<'k> = (Cow<'k, str>, (usize, usize));
    let mut members: smallvec::SmallVec<[Written<'_>; 16]> = smallvec::SmallVec::new();
    let mut sorted = true;
    s.object(|s, key| {
        if !members.is_empty() {
            out.push(',');
        }
        let from = out.len();
        let key = key_text(key, s)?;
        super::write_string(&key, out);
        out.push(':');
        write_canonical_value(s, out)?;
        if let Some((last, _)) = members.last() {
            sorted &= *last < key;
        }
        members.push((key, (from, out.len())));
        Ok(())
    })?;
    if sorted {
        out.push('}');
        return Ok(());
    }
    // Out of order, or a key repeated: sorted (stable, so of equal keys the last read is
    // last), each key once with its last value.
    members.sort_by(|a, b| a.0.cmp(&b.0));
    let written = out.split_off(start);
    out.push('{');
    let mut i = 0;
    let mut wrote_one = false;
    while i < members.len() {
        let mut last = i;
        while last + 1 < members.len() && members[last + 1].0 == members[i].0 {
            last += 1;
        }
        let (a, b) = members[last].1;
        if wrote_one {
            out.push(',');
        }
        out.push_str(&written[a - start..b - start]);
        wrote_one = true;
        i = last + 1;
    }
    out.push('}');
    Ok(())
}

/// Resources given as trees, as items (what is not a JSON object is left out).
pub fn items_of(values: impl IntoIterator<Item = Value>) -> Vec<Item> {
    values
        .into_iter()
        .filter_map(|v| Item::from_value(&v).ok())
        .collect()
}

/// An object's key, borrowed unless it had escapes.
///
/// Also a string element of the typed shapes: serde's derived readers borrow a `Cow<str>`
/// field only when it is not inside an `Option`, so an `Option<Cow<str>>` was a `String`
/// made for every string read (a profile found seven an item).
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Key<'a>(Cow<'a, str>);

impl std::ops::Deref for Key<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Key<'_> {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Key<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Key<'a>;
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
        d.deserialize_str(V(std::marker::PhantomData))
    }
}

/// An object's members, in order, each value left as its (checked) JSON text.
pub(crate) struct Members<'a>(Vec<(Key<'a>, &'a str)>);

impl<'de: 'a, 'a> Deserialize<'de> for Members<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Members<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(16));
                while let Some((k, v)) = map.next_entry::<Key<'a>, &'a RawValue>()? {
                    out.push((k, v.get()));
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// An array's elements, each left as text.
struct Elements<'a>(Vec<&'a str>);

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
                    out.push(v.get());
                }
                Ok(Elements(out))
            }
        }
        d.deserialize_seq(V)
    }
}

impl<'a> Members<'a> {
    /// An object's members, read by one pass of the scanner (which checks the whole text).
    pub(crate) fn parse(json: &'a str) -> Result<Members<'a>, NotAResource> {
        let mut s = super::scan::Scan::new(json);
        s.ws();
        let scanned = super::scan::resource(&mut s)
            .and_then(|r| s.end().map(|()| r))
            .map_err(|e| NotAResource(e.to_string()))?;
        Ok(Members::of_scan(scanned.members))
    }

    /// Members as the scanner found them: keys with escapes resolved (copied only then).
    fn of_scan(members: Vec<(super::scan::Literal<'a>, &'a str)>) -> Members<'a> {
        Members(
            members
                .into_iter()
                .map(|(k, v)| (Key(k.value().unwrap_or_default()), v))
                .collect(),
        )
    }

    pub(crate) fn get(&self, name: &str) -> Option<&'a str> {
        self.0.iter().find(|(k, _)| k.0 == name).map(|(_, v)| *v)
    }

    fn tree(&self, name: &str) -> Option<Value> {
        self.get(name)
            .and_then(|raw| serde_json::from_str(raw).ok())
    }

    /// A string member, borrowed from the text when it has no escapes.
    fn str(&self, name: &str) -> Option<Cow<'a, str>> {
        self.get(name).and_then(shape::string)
    }

    /// A member's text (`text`, of member `name`) as [`shape`]'s readers read it: as it came,
    /// unless it holds a surrogate's escape; then as its tree writes it (nothing when it has
    /// none, as for a lone surrogate), which [`shape`] reads as it reads any tree.
    fn element(&self, name: &str, text: Option<&'a str>) -> Option<Cow<'a, str>> {
        let text = text?;
        if shape::plain(text) {
            Some(Cow::Borrowed(text))
        } else {
            self.tree(name).map(|t| Cow::Owned(t.to_string()))
        }
    }
}

/// The members a view reads, found in one pass over the members (each the first given, as
/// [`Members::get`] finds it) rather than a search of them each.
#[derive(Default)]
struct ViewMembers<'a> {
    resource_type: Option<&'a str>,
    id: Option<&'a str>,
    meta: Option<&'a str>,
    category: Option<&'a str>,
    subject: Option<&'a str>,
    patient: Option<&'a str>,
    identifier: Option<&'a str>,
    /// Where the concept is read: [`CONCEPT_MEMBERS`], in order.
    concepts: [Option<&'a str>; 4],
}

/// The members the concept is read from, in the order they are tried.
const CONCEPT_MEMBERS: [&str; 4] = ["code", "medicationCodeableConcept", "vaccineCode", "type"];

impl<'a> ViewMembers<'a> {
    fn of(members: &Members<'a>) -> Self {
        let mut m = ViewMembers::default();
        for (key, value) in &members.0 {
            let slot = match &*key.0 {
                "resourceType" => &mut m.resource_type,
                "id" => &mut m.id,
                "meta" => &mut m.meta,
                "category" => &mut m.category,
                "subject" => &mut m.subject,
                "patient" => &mut m.patient,
                "identifier" => &mut m.identifier,
                "code" => &mut m.concepts[0],
                "medicationCodeableConcept" => &mut m.concepts[1],
                "vaccineCode" => &mut m.concepts[2],
                "type" => &mut m.concepts[3],
                _ => continue,
            };
            slot.get_or_insert(value);
        }
        m
    }
}

/// `meta.lastUpdated` as a time (Unix seconds of its start; `i64::MIN` when none).
fn updated_at_of(last_updated: Option<&str>) -> i64 {
    last_updated
        .and_then(|s| super::date::parse_interval(s).ok())
        .map_or(i64::MIN, |i| i.start)
}

impl ItemView {
    fn read(members: &Members<'_>) -> ItemView {
        let mut p = Packer(String::with_capacity(160));
        let found = ViewMembers::of(members);
        let rtype_text = found.resource_type.and_then(shape::string);
        let rtype_text = rtype_text.as_deref().unwrap_or("");
        let rtype = p.put(rtype_text);
        let kind = ResourceType::parse(rtype_text);
        // Each element read from its text as its tree would be (`fhir::shape`).
        // The three lists gathered in one (kept here between items, as an item is read on
        // one thread), then copied out at their length.
        let mut lists = LISTS.with_borrow_mut(std::mem::take);
        lists.clear();
        let last_updated = members.element("meta", found.meta).and_then(|meta| {
            let (last_updated, security) = shape::meta(&meta);
            p.pairs(security, &mut lists);
            last_updated.map(|l| (p.put(&l), updated_at_of(Some(&l))))
        });
        let (last_updated, updated_at) = last_updated.unzip();
        let updated_at = updated_at.unwrap_or(i64::MIN);
        let end_of_security = lists.len() as u32;
        if let Some(c) = members.element("category", found.category) {
            p.pairs(shape::categories(&c), &mut lists);
        }
        let end_of_categories = lists.len() as u32;
        let patient = kind
            .and_then(|k| match k.patient_element() {
                "patient" => members.element("patient", found.patient),
                _ => members.element("subject", found.subject),
            })
            .and_then(|r| shape::patient_link(&r));
        if let Some(list) = members.element("identifier", found.identifier) {
            for (system, value) in shape::identifiers(&list) {
                lists.push((Some(p.put(&system)), p.put(&value)));
            }
        }
        let packed_lists: Box<[(Option<Str>, Str)]> = lists.as_slice().into();
        if lists.capacity() <= 1024 {
            LISTS.with_borrow_mut(|kept| *kept = lists);
        }
        let concept = CONCEPT_MEMBERS
            .iter()
            .zip(found.concepts)
            .find_map(|(name, text)| shape::first_coding(&members.element(name, text)?))
            .map(|c| p.put(&c));
        let (clinical_date, sort_start) =
            kind.map_or((None, i64::MIN), |k| Self::clinical_date_of(members, k));
        let clinical_date = clinical_date.map(|d| p.put(&d));
        let id = found.id.and_then(shape::string).map(|id| p.put(&id));
        ItemView {
            text: p.0.into_boxed_str(),
            rtype,
            kind,
            id,
            last_updated,
            updated_at,
            lists: packed_lists,
            ends: [end_of_security, end_of_categories],
            patient,
            concept,
            clinical_date,
            sort_start,
        }
    }

    /// The canonical JSON of the first clinical date element present, and the start of the
    /// first that parses (`i64::MIN` when none). The first, when it is a plain string (the
    /// usual case) that parses, is read from its text; any other shape, or a path into an
    /// element, as trees.
    fn clinical_date_of<'a>(
        members: &Members<'a>,
        kind: ResourceType,
    ) -> (Option<Cow<'a, str>>, i64) {
        let first_plain = kind.sort_elements().iter().find_map(|p| {
            if p.contains('.') {
                return Some(None);
            }
            let text = members.get(p)?;
            Some((text.starts_with('"') && !text.contains('\\')).then_some(text))
        });
        if let Some(Some(text)) = first_plain
            && let Ok(interval) = super::date::parse_interval(&text[1..text.len() - 1])
        {
            return (Some(Cow::Borrowed(text)), interval.start);
        }
        let dates = Self::dates_of(members, kind);
        let start = dates
            .iter()
            .find_map(super::date::element_interval)
            .map_or(i64::MIN, |i| i.start);
        (
            dates.first().map(|d| Cow::Owned(super::canonical_json(d))),
            start,
        )
    }

    /// The clinical date elements present, in the type's order, as trees.
    fn dates_of(members: &Members<'_>, kind: ResourceType) -> Vec<Value> {
        kind.sort_elements()
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
            .collect()
    }
}

/// A `meta.tag` coding, as the writer compares it with the tags it adds.
#[derive(serde::Deserialize)]
struct CodingShape<'a> {
    #[serde(borrow, default)]
    system: Option<Key<'a>>,
    #[serde(borrow, default)]
    code: Option<Key<'a>>,
}

/// `meta.security`'s (system, code) pairs, from a `meta` tree.
pub fn security_of(meta: Option<&Value>) -> Vec<(Option<String>, String)> {
    meta.and_then(|m| m.get("security"))
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
        .collect()
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

/// An object's members as serde_json's raw values read them (key unescaped, value text): the
/// scanner's oracle.
#[cfg(test)]
pub(crate) fn raw_members(text: &str) -> Option<Vec<(String, String)>> {
    let members: Members<'_> = serde_json::from_str(text).ok()?;
    Some(
        members
            .0
            .into_iter()
            .map(|(k, v)| (k.0.into_owned(), v.to_owned()))
            .collect(),
    )
}

/// Every `reference` string in a JSON text, in document order.
pub fn references_in(json: &str) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(raw) = serde_json::from_str::<&RawValue>(json) {
        collect_references(raw.get(), &mut out);
    }
    out
}

/// Whether a text may hold a `reference` member (the walkers skip what cannot). Only an
/// object or an array can: a string, number or literal is not searched for one.
fn may_reference(text: &str) -> bool {
    // A key spelt with escapes (`"re\u0066erence"`) is a `reference` too.
    matches!(text.as_bytes().first(), Some(b'{' | b'['))
        && (text.contains("\"reference\"") || text.contains("\\u"))
}

/// Every `reference` string under `raw`, in document order.
fn collect_references(raw: &str, out: &mut Vec<String>) {
    if !may_reference(raw) {
        return;
    }
    match raw.as_bytes().first() {
        Some(b'{') => {
            let Ok(members) = serde_json::from_str::<Members<'_>>(raw) else {
                return;
            };
            for (k, v) in &members.0 {
                match (k.0 == "reference", serde_json::from_str::<String>(v)) {
                    (true, Ok(s)) => out.push(s),
                    _ => collect_references(v, out),
                }
            }
        }
        Some(b'[') => {
            if let Ok(elements) = serde_json::from_str::<Elements<'_>>(raw) {
                for v in elements.0 {
                    collect_references(v, out);
                }
            }
        }
        _ => {}
    }
}

/// Writes what a patient reference becomes, given its text (an object).
pub type Replace<'a> = dyn Fn(&str, &mut Writer<'_>) + 'a;

/// What changes in an item's `meta`: its source set, tags added unless one of the same system
/// and code is there, and extensions appended. Written from `meta`'s text where it has a plain
/// shape (everything else in it copied as it came), applied to a tree otherwise.
#[derive(Debug, Clone, Default)]
pub struct MetaEdit<'a> {
    pub source: &'a str,
    /// (system, code, display); inline for the few regions an item is held by (one list an
    /// entry, which a profile under load found among the allocations worth not making).
    pub tags: Tags<(&'a str, &'a str, &'a str)>,
    /// Appended to `meta.extension` when it is a list (or missing).
    /// Each already written (as serde_json writes its tree), not built as a tree and written.
    pub extensions: Vec<Box<serde_json::value::RawValue>>,
    /// `source` as a JSON string, and each of `tags` as its JSON object, when they are
    /// written once in a text the entries share (the writer then takes them as runs of it
    /// rather than writing them into every entry); empty: written each time.
    pub written: Option<WrittenMeta<'a>>,
}

/// [`MetaEdit::written`]: texts of a shared text, each as the gateway writes it.
#[derive(Debug, Clone, Default)]
pub struct WrittenMeta<'a> {
    pub source: &'a str,
    pub tags: Tags<&'a str>,
}

/// A list of an entry's region tags (or their texts), inline up to four.
pub type Tags<T> = smallvec::SmallVec<[T; 4]>;

impl MetaEdit<'_> {
    /// The edit on a tree (a `meta` that is not an object becomes one).
    pub fn apply(&self, meta: &mut Value) {
        if !meta.is_object() {
            *meta = Value::Object(Default::default());
        }
        meta["source"] = Value::String(self.source.to_owned());
        let obj = meta.as_object_mut().expect("meta is an object");
        let tags = obj.entry("tag").or_insert_with(|| Value::Array(vec![]));
        if !tags.is_array() {
            *tags = Value::Array(vec![]);
        }
        let tags = tags.as_array_mut().expect("tag is an array");
        for &(system, code, display) in &self.tags {
            let exists = tags.iter().any(|t| {
                t.get("system").and_then(Value::as_str) == Some(system)
                    && t.get("code").and_then(Value::as_str) == Some(code)
            });
            if !exists {
                tags.push(serde_json::json!({"system": system, "code": code, "display": display}));
            }
        }
        if !self.extensions.is_empty() {
            let ext = obj
                .entry("extension")
                .or_insert_with(|| Value::Array(vec![]));
            if let Some(list) = ext.as_array_mut() {
                list.extend(
                    self.extensions
                        .iter()
                        .map(|e| serde_json::from_str(e.get()).unwrap_or(Value::Null)),
                );
            }
        }
    }

    /// The edit written from `meta`'s text (`None`: the item has none), its unchanged
    /// members taken as runs of the item's text. `false`, having written nothing, when `meta`
    /// has a shape only a tree reads safely (repeated or escaped keys, references, tags that
    /// are not plain codings).
    fn write(&self, meta: Option<&str>, out: &mut Writer<'_>) -> bool {
        let members = match meta {
            Some(text) if text.starts_with('{') => {
                if text.contains("\"reference\"") {
                    return false;
                }
                match Members::parse(text) {
                    Ok(m) => m.0,
                    Err(_) => return false,
                }
            }
            _ => Vec::new(),
        };
        let plain = |k: &Key<'_>| matches!(k.0, Cow::Borrowed(_));
        let mut names: Vec<&str> = members.iter().map(|(k, _)| k.0.as_ref()).collect();
        names.sort_unstable();
        if !members.iter().all(|(k, _)| plain(k)) || names.windows(2).any(|w| w[0] == w[1]) {
            return false;
        }
        // The tags to add, worked out before anything is written.
        let listed = members.iter().find(|(k, _)| k.0 == "tag").map(|(_, v)| *v);
        let Some(added) = self.tags_to_add(listed.filter(|l| l.starts_with('['))) else {
            return false;
        };
        out.push(b"{");
        let mut first = true;
        let mut sep = |out: &mut Writer<'_>| {
            if !std::mem::take(&mut first) {
                out.push(b",");
            }
        };
        let (mut tagged, mut extended, mut sourced) = (false, false, false);
        for (k, v) in &members {
            sep(out);
            out.push(b"\"");
            out.copy(&k.0);
            out.push(b"\":");
            match k.0.as_ref() {
                "source" => {
                    sourced = true;
                    self.write_source(out);
                }
                "tag" => {
                    tagged = true;
                    let list = v.starts_with('[').then_some(*v);
                    self.write_tags(list, &added, out);
                }
                "extension" if !self.extensions.is_empty() => {
                    extended = true;
                    if v.starts_with('[') {
                        append_to_list(v, self.extensions.iter().map(|e| &**e), out.own());
                    } else {
                        out.copy(v);
                    }
                }
                _ => out.copy(v),
            }
        }
        if !sourced {
            sep(out);
            out.own().extend_from_slice(b"\"source\":");
            self.write_source(out);
        }
        if !tagged {
            sep(out);
            out.own().extend_from_slice(b"\"tag\":");
            self.write_tags(None, &added, out);
        }
        if !extended && !self.extensions.is_empty() {
            sep(out);
            out.own().extend_from_slice(b"\"extension\":");
            append_to_list("[]", self.extensions.iter().map(|e| &**e), out.own());
        }
        out.push(b"}");
        true
    }

    fn write_source(&self, out: &mut Writer<'_>) {
        match &self.written {
            Some(w) => out.copy(w.source),
            None => write_str(self.source, out.own()),
        }
    }

    /// Which of `tags` `meta.tag` lacks (`None`: there is no list); `None` when a tag is not
    /// a plain coding.
    ///
    /// Asked of every entry written: its lists are inline for the few tags an item has.
    fn tags_to_add(&self, list: Option<&str>) -> Option<Tags<usize>> {
        let mut present: smallvec::SmallVec<[CodingShape<'_>; 8]> = smallvec::SmallVec::new();
        if let Some(text) = list {
            let mut s = Scan::new(text);
            s.ws();
            let mut plain = true;
            s.array(|s| {
                let from = s.at();
                s.skip()?;
                let e = s.since(from);
                if e.starts_with('{') {
                    match serde_json::from_str::<CodingShape<'_>>(e) {
                        Ok(c) => present.push(c),
                        Err(_) => plain = false,
                    }
                }
                Ok(())
            })
            .ok()?;
            s.end().ok()?;
            if !plain {
                return None;
            }
        }
        let mut added = Tags::new();
        for (i, &(system, code, _)) in self.tags.iter().enumerate() {
            let exists = present
                .iter()
                .any(|c| c.system.as_deref() == Some(system) && c.code.as_deref() == Some(code));
            if !exists {
                present.push(CodingShape {
                    system: Some(Key(Cow::Borrowed(system))),
                    code: Some(Key(Cow::Borrowed(code))),
                });
                added.push(i);
            }
        }
        Some(added)
    }

    /// `meta.tag` (`None`: there is none) with the tags `added` appended, its own elements
    /// taken as they came.
    fn write_tags(&self, list: Option<&str>, added: &[usize], out: &mut Writer<'_>) {
        let list = list.unwrap_or("[]");
        let inner = list.trim_end().strip_suffix(']').unwrap_or("[");
        let empty = inner.trim_end() == "[";
        if empty {
            out.push(b"[");
        } else {
            out.copy(inner);
        }
        for (n, &i) in added.iter().enumerate() {
            if n > 0 || !empty {
                out.push(b",");
            }
            match self.written.as_ref().and_then(|w| w.tags.get(i)) {
                Some(json) => out.copy(json),
                None => {
                    let (system, code, display) = self.tags[i];
                    write_tag(system, code, display, out.own());
                }
            }
        }
        out.push(b"]");
    }
}

/// A JSON list's text with `more` appended (the list's own elements copied as they came).
fn append_to_list(
    list: &str,
    more: impl Iterator<Item = impl super::EntryJson>,
    out: &mut Vec<u8>,
) {
    let inner = list.trim_end().strip_suffix(']').unwrap_or("[");
    let empty = inner.trim_end() == "[";
    out.extend_from_slice(if empty { b"[" } else { inner.as_bytes() });
    for (i, v) in more.enumerate() {
        if i > 0 || !empty {
            out.push(b',');
        }
        v.write_json(out);
    }
    out.push(b']');
}

/// A tag the gateway adds, written as text (as serde_json writes the tree
/// `{"system": .., "code": .., "display": ..}`): one a written item.
struct TagText<'a>(&'a str, &'a str, &'a str);

impl super::EntryJson for TagText<'_> {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(br#"{"system":"#);
        write_str(self.0, out);
        out.extend_from_slice(br#","code":"#);
        write_str(self.1, out);
        out.extend_from_slice(br#","display":"#);
        write_str(self.2, out);
        out.push(b'}');
    }
}

/// How an item is written: what changes, everything else copied. (`meta` is borrowed for
/// less than what it borrows: it has lists of its own to drop.)
pub struct Splice<'a, 'm> {
    /// The `id` it is shown under.
    pub id: &'a str,
    /// The patient element and what replaces it (written as given).
    pub patient: Option<(&'static str, &'a Replace<'a>)>,
    /// What changes in `meta` (which is added when the item has none).
    pub meta: &'a MetaEdit<'m>,
    /// The address of a relative reference (`Type/id`).
    pub resolve: &'a dyn Fn(&str) -> String,
}

impl Item {
    /// Appends the item, spliced, to `out`.
    pub fn write_spliced(&self, splice: &Splice<'_, '_>, out: &mut Vec<u8>) {
        let mut w = Writer::new(Some(&self.0.source));
        self.write_spliced_runs(splice, &mut w);
        w.finish().write_to(out);
    }

    /// The item, spliced, written to `out`, whose source must be this item's for its
    /// unchanged text to be taken as runs of it rather than copied.
    pub fn write_spliced_runs(&self, splice: &Splice<'_, '_>, out: &mut Writer<'_>) {
        match &self.0.spans {
            Some(spans) => self.write_from_spans(spans, splice, out),
            None => self.write_reread(splice, out),
        }
    }

    /// The answer's text the item is part of.
    pub fn source(&self) -> &Source {
        &self.0.source
    }

    /// [`Item::write_spliced`] from where the members and references lie: unchanged text taken
    /// as runs of the source, the few changes written in between; nothing read again but
    /// `meta` and the patient element.
    fn write_from_spans(&self, spans: &[Span], splice: &Splice<'_, '_>, out: &mut Writer<'_>) {
        let whole = self.json();
        let text = |(a, b): (u32, u32)| &whole[a as usize..b as usize];
        let refs = &self.0.references;
        let mut next_ref = 0;
        match whole.get(..1) {
            Some("{") => out.copy(&whole[..1]),
            _ => out.push(b"{"),
        }
        let mut wrote = Wrote::default();
        for (i, span) in spans.iter().enumerate() {
            if i > 0 {
                out.push(b",");
            }
            let key = text(span.key);
            out.push(b"\"");
            out.copy(key);
            out.push(b"\":");
            let (start, end) = span.value;
            // The references inside this member, in order (a changed member's are not used).
            let first = next_ref;
            while next_ref < refs.len() && refs[next_ref].0 < end {
                next_ref += 1;
            }
            let inside = first..next_ref;
            splice.member(key, text(span.value), &mut wrote, out, |out| {
                let mut at = start as usize;
                for r in inside {
                    let (a, b, _) = refs[r];
                    let reference = reference_value(whole, &refs[r]);
                    if is_relative_reference(reference) {
                        out.copy(&whole[at..a as usize]);
                        write_str(&(splice.resolve)(reference), out.own());
                        at = b as usize;
                    }
                }
                out.copy(&whole[at..end as usize]);
            });
        }
        splice.finish(!spans.is_empty(), wrote, out);
    }

    /// [`Item::write_spliced`] by reading the item again (an item whose keys had escapes).
    fn write_reread(&self, splice: &Splice<'_, '_>, out: &mut Writer<'_>) {
        let Ok(members) = Members::parse(self.json()) else {
            out.push(b"null");
            return;
        };
        out.push(b"{");
        let mut wrote = Wrote::default();
        for (i, (k, v)) in members.0.iter().enumerate() {
            if i > 0 {
                out.push(b",");
            }
            write_str(&k.0, out.own());
            out.push(b":");
            splice.member(&k.0, v, &mut wrote, out, |out| {
                write_rewritten(v, splice.resolve, out.own())
            });
        }
        splice.finish(!members.0.is_empty(), wrote, out);
    }
}

/// Which of the members every written item has were met.
#[derive(Default)]
struct Wrote {
    id: bool,
    meta: bool,
}

impl Splice<'_, '_> {
    /// Writes one member's value (its key is written): the id, `meta` and the patient element
    /// as they change, any other as `other` writes it.
    fn member<'s>(
        &self,
        key: &str,
        value: &str,
        wrote: &mut Wrote,
        out: &mut Writer<'s>,
        other: impl FnOnce(&mut Writer<'s>),
    ) {
        match key {
            "id" => {
                wrote.id = true;
                write_str(self.id, out.own());
            }
            "meta" => {
                wrote.meta = true;
                if !self.meta.write(Some(value), out) {
                    let mut meta: Value = serde_json::from_str(value).unwrap_or(Value::Null);
                    self.meta.apply(&mut meta);
                    qualify_references(&mut meta, self.resolve);
                    let _ = serde_json::to_writer(out.own(), &meta);
                }
            }
            name if self.patient.is_some_and(|(e, _)| e == name) && value.starts_with('{') => {
                let (_, replace) = self.patient.expect("checked");
                replace(value, out);
            }
            _ => other(out),
        }
    }

    /// Adds `meta` and `id` when the item had none, and closes it.
    fn finish(&self, any: bool, wrote: Wrote, out: &mut Writer<'_>) {
        let mut more = any;
        let mut sep = |out: &mut Vec<u8>| {
            if more {
                out.push(b',');
            }
            more = true;
        };
        if !wrote.meta {
            sep(out.own());
            out.own().extend_from_slice(b"\"meta\":");
            self.meta.write(None, out);
        }
        if !wrote.id {
            sep(out.own());
            out.own().extend_from_slice(b"\"id\":");
            write_str(self.id, out.own());
        }
        out.push(b"}");
    }
}

/// A tag as the gateway writes it: `{"system":…,"code":…,"display":…}`.
pub(crate) fn write_tag(system: &str, code: &str, display: &str, out: &mut Vec<u8>) {
    super::EntryJson::write_json(&TagText(system, code, display), out)
}

/// A JSON string literal of `s`.
pub(crate) fn write_str(s: &str, out: &mut Vec<u8>) {
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Copies `raw`, writing each relative `reference` string as `resolve` gives it. Containers
/// on the way to a reference are written without whitespace; everything else byte for byte.
fn write_rewritten(raw: &str, resolve: &dyn Fn(&str) -> String, out: &mut Vec<u8>) {
    if !may_reference(raw) {
        out.extend_from_slice(raw.as_bytes());
        return;
    }
    match raw.as_bytes().first() {
        Some(b'{') => {
            let Ok(members) = serde_json::from_str::<Members<'_>>(raw) else {
                out.extend_from_slice(raw.as_bytes());
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
                    .then(|| serde_json::from_str::<String>(v).ok())
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
            let Ok(elements) = serde_json::from_str::<Elements<'_>>(raw) else {
                out.extend_from_slice(raw.as_bytes());
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
        _ => out.extend_from_slice(raw.as_bytes()),
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

/// A searchset entry around its resource: `{"fullUrl":…,"resource":…,"search":…}`, the
/// resource as `resource` writes it (its unchanged text taken as runs of its source).
pub fn write_entry<'s>(
    full_url: &str,
    mode: super::SearchMode,
    resource: impl FnOnce(&mut Writer<'s>),
    out: &mut Writer<'s>,
) {
    out.own().extend_from_slice(b"{\"fullUrl\":");
    write_str(full_url, out.own());
    out.own().extend_from_slice(b",\"resource\":");
    resource(out);
    let tail = out.own();
    tail.extend_from_slice(b",\"search\":{\"mode\":\"");
    tail.extend_from_slice(mode.as_str().as_bytes());
    tail.extend_from_slice(b"\"}}");
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
    pub mode: Option<Cow<'a, str>>,
    pub resource: Option<ResourceText<'a>>,
}

/// An entry's resource (a JSON object): its text and, when the Bundle's one pass read it, the
/// item made of it then (or why none could be).
pub struct ResourceText<'a> {
    text: &'a str,
    item: Option<Result<Item, NotAResource>>,
}

impl<'a> ResourceText<'a> {
    fn of_text(text: &'a str) -> Self {
        ResourceText { text, item: None }
    }

    pub fn get(&self) -> &'a str {
        self.text
    }
}

impl std::fmt::Debug for ResourceText<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Its length only: a resource's text is patient data.
        f.debug_struct("ResourceText")
            .field("bytes", &self.text.len())
            .finish()
    }
}

/// A Bundle's shape, read in one pass of the scanner. Each entry's resource is made into its
/// item as soon as it is read, so the members of one resource only are held at a time: a
/// 30 MB answer's members, all held until its last entry was read, were a third of its
/// reading's peak heap.
#[derive(Default)]
struct BundleShape<'a> {
    resource_type: Option<Cow<'a, str>>,
    bundle_type: Option<Cow<'a, str>>,
    total: Option<&'a str>,
    link: Option<&'a str>,
    entry: Option<Vec<EntryText<'a>>>,
}

use super::scan::{Literal, Scan, ScanError};

/// A key's text, its escapes resolved.
fn key_text<'a>(key: Literal<'a>, s: &Scan<'a>) -> Result<Cow<'a, str>, ScanError> {
    key.value().ok_or(ScanError {
        at: s.at(),
        what: "a key's escapes",
    })
}

/// A member read for the first time; one given twice is an error (the Bundle is then read
/// leniently), as serde's derived readers have it.
fn once(seen: &mut bool, s: &Scan<'_>) -> Result<(), ScanError> {
    if std::mem::replace(seen, true) {
        return Err(ScanError {
            at: s.at(),
            what: "a member given twice",
        });
    }
    Ok(())
}

/// A string or `null` (none); anything else is an error.
fn text_or_null<'a>(s: &mut Scan<'a>) -> Result<Option<Cow<'a, str>>, ScanError> {
    if s.null()? {
        return Ok(None);
    }
    let literal = s.string()?;
    key_text(literal, s).map(Some)
}

/// Any value's text, or `None` for `null`.
fn text_of<'a>(s: &mut Scan<'a>) -> Result<Option<&'a str>, ScanError> {
    if s.null()? {
        return Ok(None);
    }
    let from = s.at();
    s.skip()?;
    Ok(Some(s.since(from)))
}

/// Reads a Bundle's envelope and its entries' items (which share `source`).
fn scan_bundle(source: &Source) -> Result<BundleShape<'_>, ScanError> {
    let mut s = Scan::new(source.as_str());
    s.ws();
    let mut shape = BundleShape::default();
    let mut seen = [false; 5];
    s.object(|s, key| match &*key_text(key, s)? {
        "resourceType" => {
            once(&mut seen[0], s)?;
            shape.resource_type = text_or_null(s)?;
            Ok(())
        }
        "type" => {
            once(&mut seen[1], s)?;
            shape.bundle_type = text_or_null(s)?;
            Ok(())
        }
        "total" => {
            once(&mut seen[2], s)?;
            shape.total = text_of(s)?;
            Ok(())
        }
        "link" => {
            once(&mut seen[3], s)?;
            shape.link = text_of(s)?;
            Ok(())
        }
        "entry" => {
            once(&mut seen[4], s)?;
            if s.null()? {
                return Ok(());
            }
            let mut entries = Vec::with_capacity(64);
            let mut scratch = EntryLists {
                literals: Vec::with_capacity(32),
                references: Vec::with_capacity(16),
                members: Vec::with_capacity(32),
            };
            s.array(|s| {
                entries.push(scan_entry(s, source, &mut scratch)?);
                Ok(())
            })?;
            shape.entry = Some(entries);
            Ok(())
        }
        _ => s.skip(),
    })?;
    s.end()?;
    Ok(shape)
}

/// The lists reading a Bundle's resources reuses from one to the next (made for each, they
/// were two allocations an item).
struct EntryLists<'a> {
    literals: Vec<(super::scan::Literal<'a>, &'a str)>,
    references: Vec<super::scan::ReferenceAt>,
    members: Vec<(Key<'a>, &'a str)>,
}

/// One entry: its resource read and made into its item at once; its search kept as text. A
/// resource that is not an object is an error (the Bundle is then read leniently).
fn scan_entry<'a>(
    s: &mut Scan<'a>,
    source: &'a Source,
    scratch: &mut EntryLists<'a>,
) -> Result<EntryText<'a>, ScanError> {
    let (mut resource, mut search) = (None, None);
    let mut seen = [false; 2];
    s.object(|s, key| match &*key_text(key, s)? {
        "resource" => {
            once(&mut seen[0], s)?;
            if !s.null()? {
                let text =
                    super::scan::resource_in(s, &mut scratch.literals, &mut scratch.references)?;
                let parts = (text, &scratch.literals[..], &scratch.references[..]);
                resource = Some(ResourceText {
                    text,
                    item: Some(Item::of_parts(source, parts, &mut scratch.members)),
                });
            }
            Ok(())
        }
        "search" => {
            once(&mut seen[1], s)?;
            search = text_of(s)?;
            Ok(())
        }
        _ => s.skip(),
    })?;
    Ok(EntryText {
        mode: mode_of(search),
        resource,
    })
}

/// `entry.search` as the reader wants it: its mode.
#[derive(serde::Deserialize)]
struct SearchShape<'a> {
    #[serde(borrow, default)]
    mode: Option<Key<'a>>,
}

/// `entry.search.mode` from its text: typed (borrowed) when it has FHIR's shape, else read
/// from a tree with the same leniency (a mode that is not a string is none).
fn mode_of(search: Option<&str>) -> Option<Cow<'_, str>> {
    let text = search?;
    match serde_json::from_str::<SearchShape<'_>>(text) {
        Ok(shape) => shape.mode.map(|k| k.0),
        Err(_) => serde_json::from_str::<Value>(text)
            .ok()?
            .get("mode")?
            .as_str()
            .map(|m| Cow::Owned(m.to_owned())),
    }
}

impl<'a> BundleText<'a> {
    /// Reads a JSON object's envelope, and its entries' items (which share `source`); `Err`
    /// when the text is not an object. Elements of the wrong shape read as missing.
    pub fn parse(source: &'a Source) -> Result<BundleText<'a>, NotAResource> {
        let json = source.as_str();
        match scan_bundle(source).ok().map(BundleText::of_shape) {
            Some(bundle) => Ok(bundle),
            // Something of an unexpected shape (an entry that is not an object, a repeated
            // key): read again, element by element, leniently.
            None => BundleText::parse_leniently(json),
        }
    }

    /// The Bundle from its shape.
    fn of_shape(shape: BundleShape<'a>) -> BundleText<'a> {
        let tree =
            |raw: Option<&str>| -> Option<Value> { raw.and_then(|r| serde_json::from_str(r).ok()) };
        let next = tree(shape.link).and_then(|links| {
            links
                .as_array()?
                .iter()
                .find(|l| l.get("relation").and_then(Value::as_str) == Some("next"))?
                .get("url")?
                .as_str()
                .map(str::to_owned)
        });
        BundleText {
            resource_type: shape.resource_type.map(Cow::into_owned),
            bundle_type: shape.bundle_type.map(Cow::into_owned),
            total: tree(shape.total).and_then(|t| t.as_u64()),
            next,
            entries: shape.entry.unwrap_or_default(),
        }
    }

    fn parse_leniently(json: &'a str) -> Result<BundleText<'a>, NotAResource> {
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
            .and_then(|raw| serde_json::from_str::<Elements<'a>>(raw).ok())
            .map(|e| e.0)
            .unwrap_or_default()
            .into_iter()
            .map(|raw| {
                let Ok(entry) = serde_json::from_str::<Members<'a>>(raw) else {
                    return EntryText {
                        mode: None,
                        resource: None,
                    };
                };
                EntryText {
                    mode: mode_of(entry.get("search")),
                    resource: entry
                        .get("resource")
                        .filter(|r| r.starts_with('{'))
                        .map(ResourceText::of_text),
                }
            })
            .collect();
        Ok(BundleText {
            resource_type: members.str("resourceType").map(Cow::into_owned),
            bundle_type: members.str("type").map(Cow::into_owned),
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

    /// A tree as written JSON (an extension of a [`MetaEdit`]).
    fn raw(tree: Value) -> Box<serde_json::value::RawValue> {
        serde_json::value::to_raw_value(&tree).unwrap()
    }

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
    fn a_tag_written_as_text_is_the_tree_serde_writes() {
        use super::super::EntryJson;
        for (system, code, display) in [("s", "c", "d"), ("urn:\"q\"", "é\n", "")] {
            let mut out = Vec::new();
            TagText(system, code, display).write_json(&mut out);
            let tree = json!({"system": system, "code": code, "display": display});
            assert_eq!(String::from_utf8(out).unwrap(), tree.to_string());
        }
    }

    #[test]
    fn categories_and_dates_read_from_text_equal_the_trees() {
        let categories = [
            json!([{"coding": [{"system": "s", "code": "a"}, {"code": "b"}]}, "bare"]),
            json!({"coding": [{"system": "s", "code": "one"}], "text": "x"}),
            json!("just-a-code"),
            json!("esc\"aped"),
            json!([{"coding": [{"code": 3}]}]),
            json!([{"coding": null}, {"text": "no coding"}]),
            json!([{"coding": [{"system": 1, "code": "c"}]}]),
            json!(7),
            json!(null),
            json!([]),
        ];
        for c in categories {
            let item =
                Item::parse(&json!({"resourceType": "Observation", "category": c}).to_string())
                    .unwrap();
            assert_eq!(
                item.view()
                    .categories()
                    .map(|(s, c)| (s.map(str::to_owned), c.to_owned()))
                    .collect::<Vec<_>>(),
                categories_of(&c),
                "{c}"
            );
        }
        // A repeated `coding` keeps its last, as a tree does.
        let text = r#"{"resourceType":"Observation","category":{"coding":[{"code":"first"}],"coding":[{"code":"last"}]}}"#;
        let tree: Value = serde_json::from_str(text).unwrap();
        assert_eq!(
            Item::parse(text)
                .unwrap()
                .view()
                .categories()
                .map(|(s, c)| (s.map(str::to_owned), c.to_owned()))
                .collect::<Vec<_>>(),
            categories_of(&tree["category"])
        );
        let dates = [
            json!({"effectiveDateTime": "2024-04-30"}),
            json!({"effectiveDateTime": "not a date", "issued": "2024-05-02T10:00:00Z"}),
            json!({"effectivePeriod": {"start": "2024-01-01", "end": "2024-02-01"}}),
            json!({"effectiveDateTime": "2024-04\\u002d30"}),
            json!({"effectiveDateTime": null, "issued": "2024-05-02"}),
            json!({"issued": "2024-05-02"}),
            json!({}),
        ];
        for d in dates {
            let mut resource = d.clone();
            resource["resourceType"] = json!("Observation");
            let item = Item::parse(&resource.to_string()).unwrap();
            let trees: Vec<Value> = ResourceType::Observation
                .sort_elements()
                .iter()
                .filter_map(|p| resource.get(p).cloned())
                .collect();
            let v = item.view();
            assert_eq!(
                v.clinical_date().map(str::to_owned),
                trees.first().map(super::super::canonical_json),
                "{d}"
            );
            let start = trees
                .iter()
                .find_map(super::super::date::element_interval)
                .map_or(i64::MIN, |i| i.start);
            assert_eq!(v.sort_start, start, "{d}");
        }
        // A path into an element (DocumentReference's `context.period`) is read as a tree.
        let doc = json!({"resourceType": "DocumentReference", "context": {"period": {"start": "2023-03-03"}}});
        let v = Item::parse(&doc.to_string()).unwrap().view().clone();
        assert_eq!(v.clinical_date(), Some(r#"{"start":"2023-03-03"}"#));
        assert_ne!(v.sort_start, i64::MIN);
    }

    /// An element spelling a surrogate's escape is read as its tree: a pair as the character
    /// it stands for, and a lone one, which a tree refuses, as nothing.
    #[test]
    fn an_element_with_a_surrogate_escape_is_read_as_its_tree() {
        let text = r#"{"resourceType":"Observation","id":"o",
            "meta":{"lastUpdated":"2024-05-01","security":[{"code":"R","display":"\ud800"}]},
            "code":{"coding":[{"system":"s","code":"\ud83d\ude00"}]},
            "subject":{"reference":"Patient/p\u0031"}}"#;
        let item = Item::parse(text).unwrap();
        let v = item.view();
        assert_eq!(v.last_updated(), None);
        assert_eq!(v.security().len(), 0);
        assert_eq!(v.concept(), Some("s|\u{1f600}"));
        assert_eq!(v.patient, Some(PatientLink::Local("p1".into())));
    }

    /// The view's three lists share one allocation and, while a Bundle is read, one list
    /// reused from item to item: each list keeps its own elements whatever the others hold,
    /// and no item sees another's.
    #[test]
    fn each_of_the_view_s_lists_holds_its_own_elements() {
        let first = json!({"resourceType": "Observation", "id": "a",
            "meta": {"security": [{"system": "s1", "code": "R"}, {"code": "V"}]},
            "identifier": [{"system": "i1", "value": "1"}, {"system": "i2", "value": "2"}]});
        let second = json!({"resourceType": "Observation", "id": "b",
            "category": ["bare", {"coding": [{"system": "c", "code": "lab"}]}]});
        let bundle = json!({"resourceType": "Bundle", "type": "searchset",
            "entry": [{"resource": first}, {"resource": second}, {"resource": first}]});
        let source: Source = Arc::new(bundle.to_string());
        let read = BundleText::parse(&source).unwrap();
        let views: Vec<ItemView> = read
            .entries
            .iter()
            .map(|e| {
                let r = e.resource.as_ref().unwrap();
                Item::parse_entry(&source, r).unwrap().view().clone()
            })
            .collect();
        for v in [&views[0], &views[2]] {
            assert!(v.security().eq([(Some("s1"), "R"), (None, "V")]));
            assert_eq!(v.categories().len(), 0);
            assert!(v.identifiers().eq([("i1", "1"), ("i2", "2")]));
        }
        assert_eq!(views[1].security().len(), 0);
        assert!(
            views[1]
                .categories()
                .eq([(None, "bare"), (Some("c"), "lab")])
        );
        assert_eq!(views[1].identifiers().len(), 0);
        // As each is read alone.
        assert_eq!(views[0], *Item::from_value(&first).unwrap().view());
        assert_eq!(views[1], *Item::from_value(&second).unwrap().view());
    }

    #[test]
    fn the_view_holds_what_decisions_read() {
        let item = Item::from_value(&obs()).unwrap();
        let v = item.view();
        assert_eq!(v.rtype(), "Observation");
        assert_eq!(v.kind, Some(ResourceType::Observation));
        assert_eq!(v.id(), Some("o1"));
        assert_eq!(v.last_updated(), Some("2024-05-01T10:00:00Z"));
        assert_ne!(v.updated_at, i64::MIN);
        assert_eq!(v.security().len(), 1);
        assert_eq!(v.categories().next().unwrap().1, "laboratory");
        assert_eq!(v.patient, Some(PatientLink::Local("p1".into())));
        assert!(v.identifiers().eq([("urn:lab", "L-1")]));
        assert_eq!(v.concept(), Some("http://snomed.info/sct|1234"));
        assert_eq!(v.clinical_date(), Some("\"2024-04-30\""));
        assert_ne!(v.sort_start, i64::MIN);
        assert_eq!(
            item.references().collect::<Vec<_>>(),
            vec![
                "Patient/p1",
                "Practitioner/pr1",
                "https://x.example/Organization/o"
            ]
        );
        assert_eq!(
            item.relative_references().collect::<Vec<_>>(),
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
                meta: &MetaEdit {
                    source: "https://d.example",
                    ..MetaEdit::default()
                },
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
            out.contains(r#""performer":[ {"reference":"https://gw.example/Practitioner/pr1"} ]"#),
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
        let write = |old: &str, out: &mut Writer<'_>| {
            let _ = serde_json::to_writer(out.own(), &replace(&serde_json::from_str(old).unwrap()));
        };
        let edit = MetaEdit {
            source: "https://d.example",
            tags: smallvec::smallvec![("urn:r", "r", "R")],
            extensions: vec![raw(json!({"url": "urn:x", "valueCode": "y"}))],
            written: None,
        };
        let mut out = Vec::new();
        item.write_spliced(
            &Splice {
                id: "r.o1",
                patient: Some(("subject", &write)),
                meta: &edit,
                resolve: &|r| format!("https://gw/{r}"),
            },
            &mut out,
        );
        let got: Value = serde_json::from_slice(&out).unwrap();
        let mut want = obs();
        want["id"] = json!("r.o1");
        want["subject"] = replace(&want["subject"]);
        edit.apply(&mut want["meta"]);
        qualify_references(&mut want, &|r| format!("https://gw/{r}"));
        assert_eq!(got, want);
    }

    #[test]
    fn a_resource_read_in_the_bundles_pass_is_its_whole_text() {
        let resources = [
            json!({"resourceType": "Observation", "id": "o", "subject": {"reference": "Patient/p"}}),
            json!({"resourceType": "Patient", "name": [{"family": "Q"}], "n": 1.5}),
        ];
        let bundle = json!({"resourceType": "Bundle", "entry": [
            {"resource": resources[0]}, {"fullUrl": "x", "resource": resources[1], "search": {"mode": "include"}}]});
        for text in [
            bundle.to_string(),
            serde_json::to_string_pretty(&bundle).unwrap(),
        ] {
            let source: Source = Arc::new(text);
            let read = BundleText::parse(&source).unwrap();
            for (entry, want) in read.entries.iter().zip(&resources) {
                let resource = entry.resource.as_ref().unwrap();
                assert!(resource.item.is_some(), "read in one pass");
                let got: Value = serde_json::from_str(resource.get()).unwrap();
                assert_eq!(&got, want);
                // The item made from the Bundle pass's members is the item read from its
                // text alone (its members read again).
                let once = Item::parse_entry(&source, resource).unwrap();
                let twice = Item::parse_in(&source, resource.get()).unwrap();
                assert_eq!((once.json(), once.view()), (twice.json(), twice.view()));
                assert!(once.references().eq(twice.references()));
            }
        }
        // An empty resource, or one whose first key has escapes, is read leniently: the
        // same texts.
        for text in [
            r#"{"resourceType":"Bundle","entry":[{"resource":{ }},{"resource":{"id":"a"}}]}"#,
            r#"{"resourceType":"Bundle","entry":[{"resource":{"\u0069d":"a","x":1}}]}"#,
        ] {
            let source: Source = Arc::new(text.to_owned());
            let read = BundleText::parse(&source).unwrap();
            let tree: Value = serde_json::from_str(text).unwrap();
            for (entry, want) in read.entries.iter().zip(tree["entry"].as_array().unwrap()) {
                let got: Value =
                    serde_json::from_str(entry.resource.as_ref().unwrap().get()).unwrap();
                assert_eq!(got, want["resource"]);
            }
        }
    }

    #[test]
    fn a_views_debug_names_no_patient() {
        let text = r#"{"resourceType":"Condition","id":"c","identifier":[{"system":"urn:x","value":"MRN-77"}],"subject":{"identifier":{"system":"https://fhir.nhs.uk/Id/nhs-number","value":"9000000009"}}}"#;
        let shown = format!("{:?}", Item::parse(text).unwrap().view());
        assert!(shown.contains("an NHS number"), "{shown}");
        assert!(
            !shown.contains("9000000009") && !shown.contains("MRN-77"),
            "{shown}"
        );
    }

    #[test]
    fn a_member_given_twice_sends_the_bundle_to_the_lenient_reader() {
        for text in [
            r#"{"resourceType":"Bundle","entry":[{"resource":{"id":"a"}}],"entry":[]}"#,
            r#"{"resourceType":"Bundle","entry":[{"resource":{"id":"a"},"resource":{"id":"b"}}]}"#,
            r#"{"resourceType":"Bundle","entry":[{"resource":{"id":"a"},"search":{},"search":{}}]}"#,
        ] {
            let source: Source = Arc::new(text.to_owned());
            let read = BundleText::parse(&source).unwrap();
            let resource = read.entries[0].resource.as_ref().unwrap();
            assert!(resource.item.is_none(), "read leniently: {text}");
            assert_eq!(resource.get(), r#"{"id":"a"}"#, "{text}");
        }
    }

    #[test]
    fn entry_modes_are_read_from_text_with_the_trees_leniency() {
        let searches = [
            (json!({"mode": "match", "score": 1}), Some("match")),
            (json!({"mode": "a\"b"}), Some("a\"b")),
            (json!({"mode": 5}), None),
            (json!("match"), None),
            (json!(null), None),
            (json!({}), None),
        ];
        for (search, want) in searches {
            let text = json!({"resourceType": "Bundle", "entry": [
                {"resource": {"resourceType": "Patient"}, "search": search}]})
            .to_string();
            let source: Source = Arc::new(text);
            let bundle = BundleText::parse(&source).unwrap();
            assert_eq!(bundle.entries[0].mode.as_deref(), want, "{search}");
        }
        // A repeated mode keeps its last, as a tree does.
        let text = r#"{"resourceType":"Bundle","entry":[{"resource":{},"search":{"mode":"match","mode":"include"}}]}"#;
        assert_eq!(
            BundleText::parse(&Arc::new(text.to_owned()))
                .unwrap()
                .entries[0]
                .mode
                .as_deref(),
            Some("include")
        );
    }

    #[test]
    fn references_are_read_in_place_and_escaped_ones_unescaped() {
        let text = r#"{"resourceType":"Observation","performer":[{"reference":"Practitioner\/p1"},{"reference":"Organization/o"}],"note":[{"reference":"https://x/Location/\u006c"}]}"#;
        let item = Item::parse(text).unwrap();
        assert_eq!(
            item.references().collect::<Vec<_>>(),
            ["Practitioner/p1", "Organization/o", "https://x/Location/l"]
        );
        assert_eq!(
            item.relative_references().collect::<Vec<_>>(),
            [("Practitioner", "p1"), ("Organization", "o")]
        );
        // Both relative references are rewritten where they lie, the absolute one left.
        let mut out = Vec::new();
        let meta = MetaEdit::default();
        item.write_spliced(
            &Splice {
                id: "x",
                patient: None,
                meta: &meta,
                resolve: &|r| format!("https://gw/{r}"),
            },
            &mut out,
        );
        let written: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            written["performer"][0]["reference"],
            "https://gw/Practitioner/p1"
        );
        assert_eq!(
            written["performer"][1]["reference"],
            "https://gw/Organization/o"
        );
        assert_eq!(written["note"][0]["reference"], "https://x/Location/l");
    }

    #[test]
    fn odd_shapes_are_read_as_trees_and_escaped_keys_written_by_reading_again() {
        let text = r#"{"resourceType":"Condition","id":"c","meta":"x","identifier":{"system":"a","value":"b"},"subject":{"reference":null,"identifier":{"system":"https://fhir.nhs.uk/Id/nhs-number","value":"9000000009"}},"code":{"coding":[{"system":1,"code":"x"},{"system":"s","code":"c"}]},"no\u0074e":[{"reference":"Practitioner/p"}]}"#;
        let item = Item::parse(text).unwrap();
        let v = item.view();
        assert_eq!(v.last_updated(), None);
        assert_eq!(v.identifiers().len(), 0);
        assert_eq!(v.patient, Some(PatientLink::Nhs("9000000009".into())));
        assert_eq!(v.concept(), Some("s|c"));
        assert_eq!(item.references().collect::<Vec<_>>(), ["Practitioner/p"]);
        let mut out = Vec::new();
        item.write_spliced(
            &Splice {
                id: "r.c",
                patient: None,
                meta: &MetaEdit {
                    source: "s",
                    ..MetaEdit::default()
                },
                resolve: &|r| format!("https://gw/{r}"),
            },
            &mut out,
        );
        let got: Value = serde_json::from_slice(&out).unwrap();
        let mut want: Value = serde_json::from_str(text).unwrap();
        want["id"] = json!("r.c");
        want["meta"] = json!({"source": "s", "tag": []});
        qualify_references(&mut want, &|r| format!("https://gw/{r}"));
        assert_eq!(got, want);
    }

    #[test]
    fn not_an_object_is_refused() {
        assert!(Item::parse("[1]").is_err());
        assert!(Item::parse("{").is_err());
    }

    /// The digest read from text is the tree's, whatever the spelling: escapes, numbers spelt
    /// in other ways, repeated keys, unicode, nesting, whitespace.
    #[test]
    fn content_digest_from_text_equals_the_trees() {
        let texts = [
            obs().to_string(),
            serde_json::to_string_pretty(&obs()).unwrap(),
            r#"{"resourceType":"Observation","id":"x","valueQuantity":{"value":1.50,"unit":"mmol/L"},"n":[1e2,-0,0,12,-7,3.0,18446744073709551616,0.1],"s":"tab\tquote\" \u00e9 \u2028"}"#.into(),
            r#"{"b":1,"a":{"z":[{"y":null,"x":true}],"a":false},"b":2,"id":"dup","meta":{"k":1}}"#.into(),
            r#"{"esc\u0061ped":"k","subject":{"reference":"Patient/p","display":"D\u00e9"}}"#.into(),
            r#"{ "spaced" : [ 1 , { "k" : "v" } ] , "empty":{} , "none":[] }"#.into(),
            r#"{"deep":{"c":{"z":1,"y":{"q":[{"b":2,"a":1,"b":3}],"p":"\n"}},"a":[[],[{}],{"k":{"y":1,"x":2,"x":4}}]}}"#.into(),
            r#"{"keys":{"b":1,"\u0062":2,"a":0,"aa":1,"A":2,"é":3,"e":4}}"#.into(),
        ];
        for text in texts {
            let item = Item::parse(&text).unwrap();
            let tree: Value = serde_json::from_str(&text).unwrap();
            for skip in [&[][..], &["id", "meta"][..]] {
                assert_eq!(
                    item.content_digest(skip, None),
                    crate::fhir::canonical_digest_without(&tree, skip),
                    "{text} without {skip:?}"
                );
            }
        }
        // A replaced member is written as given.
        let item = Item::parse(r#"{"subject":{"reference":"Patient/1"},"a":1}"#).unwrap();
        let replaced = item.content_digest(
            &[],
            Some(("subject", &|_: &str, out: &mut String| out.push('7'))),
        );
        assert_eq!(
            replaced,
            crate::fhir::canonical_digest_without(&json!({"a": 1, "subject": 7}), &[])
        );
    }

    /// `meta` written from its text equals the edit applied to its tree, for every shape: none,
    /// tags present or not, a tag already there, lists that are not lists, extensions, and the
    /// shapes left to the tree (escaped or repeated keys, references, odd tags).
    #[test]
    fn meta_written_from_text_equals_the_tree_edit() {
        let shared = concat!(
            r#""https://b""#,
            r#"{"system":"urn:region","code":"dorset","display":"Dorset"}"#,
            r#"{"system":"urn:region","code":"wessex","display":"Wessex"}"#
        );
        assert_eq!(
            &shared[11..69],
            r#"{"system":"urn:region","code":"dorset","display":"Dorset"}"#
        );
        let edits = [
            MetaEdit {
                source: "https://a",
                ..MetaEdit::default()
            },
            MetaEdit {
                source: "https://b",
                tags: smallvec::smallvec![
                    ("urn:region", "dorset", "Dorset"),
                    ("urn:region", "wessex", "Wessex"),
                ],
                extensions: vec![raw(
                    json!({"url": "urn:other", "extension": [{"url": "region", "valueCode": "w"}]}),
                )],
                written: None,
            },
            // The same edit with its source and tags written once in a shared text (as a merge
            // writes them): the same result.
            MetaEdit {
                source: "https://b",
                tags: smallvec::smallvec![
                    ("urn:region", "dorset", "Dorset"),
                    ("urn:region", "wessex", "Wessex"),
                ],
                extensions: Vec::new(),
                written: Some(WrittenMeta {
                    source: &shared[..11],
                    tags: smallvec::smallvec![&shared[11..69], &shared[69..]],
                }),
            },
        ];
        let metas = [
            None,
            Some(r#"{}"#),
            Some(r#""x""#),
            Some(r#"{"lastUpdated":"2024-01-01T00:00:00Z","source":"old","versionId":"3"}"#),
            Some(
                r#"{"tag":[{"system":"urn:region","code":"dorset","display":"Old"},{"code":"z"}, "odd" ]}"#,
            ),
            Some(r#"{ "tag" : [ ] , "extension" : [ {"url":"urn:e"} ] }"#),
            Some(r#"{"tag":{"not":"a list"},"extension":"not a list","security":[{"code":"R"}]}"#),
            Some(r#"{"t\u0061g":[],"source":"s"}"#),
            Some(r#"{"source":"a","source":"b"}"#),
            Some(r#"{"tag":[{"system":1,"code":"dorset"}]}"#),
            Some(r#"{"extension":[{"valueReference":{"reference":"Device/d"}}]}"#),
        ];
        for edit in &edits {
            for meta in metas {
                let text = match meta {
                    Some(m) => format!(r#"{{"resourceType":"Observation","meta":{m},"id":"o"}}"#),
                    None => r#"{"resourceType":"Observation","id":"o"}"#.to_owned(),
                };
                let item = Item::parse(&text).unwrap();
                let resolve = |r: &str| format!("https://gw/{r}");
                let mut out = Vec::new();
                item.write_spliced(
                    &Splice {
                        id: "r.o",
                        patient: None,
                        meta: edit,
                        resolve: &resolve,
                    },
                    &mut out,
                );
                let got: Value = serde_json::from_slice(&out)
                    .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out)));
                let mut want: Value = serde_json::from_str(&text).unwrap();
                want["id"] = json!("r.o");
                let mut m = want.get("meta").cloned().unwrap_or(Value::Null);
                edit.apply(&mut m);
                qualify_references(&mut m, &resolve);
                want["meta"] = m;
                assert_eq!(got, want, "{text}");
            }
        }
    }

    #[test]
    fn a_member_s_text_is_the_one_a_tree_keeps() {
        let cases: [(&str, Option<&str>); 8] = [
            (
                r#"{"reference":"Patient/1","display":"A B"}"#,
                Some(r#""A B""#),
            ),
            (r#"{"display":"first","display":"last"}"#, Some(r#""last""#)),
            (r#"{"displ\u0061y":{"x":[1]}}"#, Some(r#"{"x":[1]}"#)),
            (
                r#"{"reference":"Patient/1","other":{"display":"inner"}}"#,
                None,
            ),
            (r#" { "display" : null } "#, Some("null")),
            (r#"{"display":"a"} x"#, None),
            (r#"{"display":"a""#, None),
            (r#"["display","a"]"#, None),
        ];
        for (text, want) in cases {
            assert_eq!(member_text(text, "display"), want, "{text}");
            // Where it finds one, it is what the tree holds under that key.
            if let Some(found) = want {
                let tree: Value = serde_json::from_str(text).unwrap();
                let found: Value = serde_json::from_str(found).unwrap();
                assert_eq!(tree["display"], found, "{text}");
            }
        }
    }
}
