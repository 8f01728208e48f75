//! The FHIR R4 pieces the gateway needs. A region's resources are held as the bytes they came
//! in, each with a small view of what decisions read ([`item`]), so that nothing a region sent
//! is dropped or re-encoded (see STACK.md, gotcha 6); this module reads and builds only the few
//! fields the gateway decides on.

pub mod date;
pub mod item;
pub mod nhs;
pub mod outcome;
pub mod reference;
pub mod scan;
pub mod shape;
pub mod spliced;
pub mod types;

use serde_json::{Value, json};

use spliced::Spliced;

/// The media type of FHIR JSON.
pub const FHIR_JSON: &str = "application/fhir+json";

/// The code system of the region tag put on every entry (`meta.tag`).
pub const REGION_TAG_SYSTEM: &str = "urn:gateway:region";

/// Whether `name` has the shape of a FHIR resource type name (`Observation`): an upper-case
/// letter, then letters, at most 64 characters.
pub fn is_resource_type_name(name: &str) -> bool {
    name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_uppercase())
        && name.chars().all(|c| c.is_ascii_alphabetic())
}

/// JSON with every object's keys sorted and no whitespace: one text for one value, whatever
/// order the keys arrived in. (serde_json keeps insertion order here, because a dependency
/// enables its `preserve_order` feature, so `to_string` is not canonical.)
pub fn canonical_json(value: &Value) -> String {
    canonical_json_without(value, &[])
}

/// [`canonical_json`] leaving out some top-level keys (the merge's content identity leaves
/// out `id` and `meta`) without copying the value.
pub fn canonical_json_without(value: &Value, skip: &[&str]) -> String {
    let mut out = String::with_capacity(256);
    write_top(value, skip, &mut out);
    out
}

/// SHA-256 of [`canonical_json_without`]: the merge's identity of content (short to keep and
/// quick to compare). The text is built in one buffer and hashed once (many small updates of
/// the hash cost more).
pub fn canonical_digest_without(value: &Value, skip: &[&str]) -> [u8; 32] {
    digest_written(|text| write_top(value, skip, text))
}

/// SHA-256 of the canonical text `write` writes, in a buffer kept between calls (the merge
/// digests many items; many small updates of the hash cost more than one).
pub(crate) fn digest_written(write: impl FnOnce(&mut String)) -> [u8; 32] {
    thread_local! {
        // The text's buffer, kept between calls: the merge digests every item.
        static TEXT: std::cell::RefCell<String> = std::cell::RefCell::new(String::with_capacity(4096));
    }
    TEXT.with_borrow_mut(|text| {
        text.clear();
        write(text);
        let digest = <sha2::Sha256 as sha2::Digest>::digest(text.as_bytes()).into();
        if text.capacity() > 1 << 20 {
            // One huge item does not pin a megabyte to the thread.
            *text = String::with_capacity(4096);
        }
        digest
    })
}

/// Where canonical JSON is written.
pub(crate) trait Out {
    fn put(&mut self, s: &str);
}

impl Out for String {
    fn put(&mut self, s: &str) {
        self.push_str(s);
    }
}

fn write_top(value: &Value, skip: &[&str], out: &mut impl Out) {
    match value {
        Value::Object(map) => write_object(map, skip, out),
        other => write_canonical(other, out),
    }
}

fn write_object(map: &serde_json::Map<String, Value>, skip: &[&str], out: &mut impl Out) {
    // Most FHIR objects have a few keys: sorted on the stack, not in a new Vec.
    let mut pairs: smallvec::SmallVec<[(&String, &Value); 16]> = map
        .iter()
        .filter(|(k, _)| !skip.contains(&k.as_str()))
        .collect();
    pairs.sort_unstable_by(|a, b| a.0.cmp(b.0));
    out.put("{");
    for (i, (k, v)) in pairs.into_iter().enumerate() {
        if i > 0 {
            out.put(",");
        }
        write_string(k, out);
        out.put(":");
        write_canonical(v, out);
    }
    out.put("}");
}

/// A JSON string literal, escaped as serde_json escapes it.
pub(crate) fn write_string(s: &str, out: &mut impl Out) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.put("\"");
        out.put(s);
        out.put("\"");
    } else {
        out.put(&Value::String(s.to_owned()).to_string());
    }
}

fn write_canonical(value: &Value, out: &mut impl Out) {
    match value {
        Value::Object(map) => write_object(map, &[], out),
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.put("[");
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.put(",");
                }
                write_canonical(v, out);
            }
            out.put("]");
        }
        Value::Bool(true) => out.put("true"),
        Value::Bool(false) => out.put("false"),
        Value::Null => out.put("null"),
        other => out.put(&other.to_string()),
    }
}

/// A piece of client input fit to echo in an error message (and so in the log): at most
/// `max` characters, and withheld entirely if it holds a run of six or more digits, which
/// could be an NHS number typed into the wrong place.
pub fn echo(input: &str, max: usize) -> String {
    let mut run = 0;
    for c in input.chars() {
        run = if c.is_ascii_digit() { run + 1 } else { 0 };
        if run >= 6 {
            return "<value withheld: it looks like an identifier>".into();
        }
    }
    input.chars().take(max).collect()
}

/// The media type of a `Content-Type` header, lower-cased, without parameters ("" if none).
pub fn media_type(headers: &http::HeaderMap) -> String {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// `Bundle.entry.search.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchMode {
    Match,
    Include,
    Outcome,
}

impl SearchMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SearchMode::Match => "match",
            SearchMode::Include => "include",
            SearchMode::Outcome => "outcome",
        }
    }
}

/// One `Bundle.entry` of a searchset.
pub fn entry(full_url: &str, resource: Value, mode: SearchMode) -> Value {
    // Built by hand: `json!` serialises an expression by reference, which would copy the
    // whole resource.
    let mut entry = serde_json::Map::with_capacity(3);
    entry.insert("fullUrl".into(), Value::String(full_url.to_owned()));
    entry.insert("resource".into(), resource);
    entry.insert("search".into(), json!({"mode": mode.as_str()}));
    Value::Object(entry)
}

/// A `searchset` Bundle. `total` counts the matches only (FHIR R4: includes and outcomes are not
/// counted).
pub fn searchset(
    id: &str,
    timestamp: &str,
    self_link: &str,
    total: usize,
    entries: Vec<Value>,
) -> Value {
    let mut bundle = json!({
        "resourceType": "Bundle",
        "id": id,
        "meta": {"lastUpdated": timestamp},
        "type": "searchset",
        "timestamp": timestamp,
        "total": total,
        "link": [{"relation": "self", "url": self_link}],
    });
    if !entries.is_empty() {
        bundle["entry"] = Value::Array(entries);
    }
    bundle
}

/// An entry (or an element of a list) written after what is already written: a tree, or
/// something that writes its own text (`merge::RequestEntry`, a tag).
pub trait EntryJson {
    fn write_json(&self, out: &mut Vec<u8>);
}

impl EntryJson for Value {
    fn write_json(&self, out: &mut Vec<u8>) {
        // Writing a Value to a Vec cannot fail.
        let _ = serde_json::to_writer(out, self);
    }
}

/// JSON already written: copied as it is.
impl EntryJson for serde_json::value::RawValue {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.get().as_bytes());
    }
}

impl<T: EntryJson + ?Sized> EntryJson for &T {
    fn write_json(&self, out: &mut Vec<u8>) {
        (**self).write_json(out)
    }
}

/// Entries written once, to be written into many Bundles: each entry's JSON text, shared
/// (a kept view and the Bundle being written hold the same texts, not copies).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SerializedEntries {
    parts: Vec<Spliced>,
    bytes: usize,
}

impl SerializedEntries {
    pub fn new(entries: &[Value]) -> Self {
        // Each entry apart (on every core when there are many).
        let parts = crate::parallel::map(entries.iter().collect(), |e: &Value| {
            // Writing a Value to a String cannot fail.
            Spliced::text(serde_json::to_string(e).unwrap_or_default())
        });
        Self::from_shared(parts)
    }

    /// Entries already written as JSON texts (copied).
    pub fn from_texts<'a>(texts: impl IntoIterator<Item = &'a str>) -> Self {
        Self::from_shared(texts.into_iter().map(Spliced::from).collect())
    }

    /// Entries already written as shared JSON texts (not copied).
    pub fn from_shared(parts: Vec<Spliced>) -> Self {
        let bytes = parts.iter().map(|p| p.len()).sum();
        SerializedEntries { parts, bytes }
    }

    pub fn len(&self) -> usize {
        self.parts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// Bytes of the entries' texts (what they would hold, written out whole).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The entries' texts.
    pub fn texts(&self) -> &[Spliced] {
        &self.parts
    }
}

/// The bytes of `serde_json::to_vec(&searchset(id, timestamp, self_link, total, entries))`
/// where `entries` are `first` (already serialised) followed by `rest`: a Bundle written
/// around entries serialised once for many requests.
pub fn write_searchset(
    id: &str,
    timestamp: &str,
    self_link: &str,
    total: usize,
    first: &SerializedEntries,
    rest: &[impl EntryJson],
) -> Vec<u8> {
    searchset_bytes(
        id,
        timestamp,
        &[("self", self_link.to_owned())],
        total,
        first,
        rest,
    )
    .into_vec()
}

/// [`write_searchset`] with these links (`relation`, `url`, the first of them `self`), as the
/// parts it is made of: the entries already written are
/// shared, not copied into one buffer, and joined only as the body is sent
/// ([`BundleBytes::chunks`]), so a large answer is not held twice.
pub fn searchset_bytes(
    id: &str,
    timestamp: &str,
    links: &[(&str, String)],
    total: usize,
    first: &SerializedEntries,
    rest: &[impl EntryJson],
) -> BundleBytes {
    let self_link = links.first().map_or("", |(_, u)| u.as_str());
    let mut envelope = searchset(id, timestamp, self_link, total, Vec::new());
    if links.len() > 1 {
        envelope["link"] = links
            .iter()
            .map(|(relation, url)| json!({"relation": relation, "url": url}))
            .collect();
    }
    let mut head = Vec::with_capacity(1024);
    let _ = serde_json::to_writer(&mut head, &envelope);
    if first.is_empty() && rest.is_empty() {
        return BundleBytes::whole(head);
    }
    // `searchset` adds "entry" last: reopen the object and write it.
    head.pop();
    head.extend_from_slice(b",\"entry\":[");
    let mut tail = Vec::with_capacity(1024 * (rest.len() + 1));
    for (i, e) in rest.iter().enumerate() {
        if i > 0 || !first.is_empty() {
            tail.push(b',');
        }
        e.write_json(&mut tail);
    }
    tail.extend_from_slice(b"]}");
    BundleBytes {
        head,
        entries: first.parts.clone(),
        tail,
    }
}

/// A Bundle's bytes: `head`, the shared `entries` separated by commas, then `tail`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BundleBytes {
    head: Vec<u8>,
    entries: Vec<Spliced>,
    tail: Vec<u8>,
}

impl BundleBytes {
    /// Bytes written whole.
    pub fn whole(bytes: Vec<u8>) -> Self {
        BundleBytes {
            head: bytes,
            ..BundleBytes::default()
        }
    }

    /// How many bytes the Bundle has.
    pub fn len(&self) -> usize {
        let entries: usize = self.entries.iter().map(|e| e.len()).sum();
        self.head.len() + entries + self.entries.len().saturating_sub(1) + self.tail.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The Bundle in one buffer.
    pub fn into_vec(self) -> Vec<u8> {
        let len = self.len();
        let mut out = self.head;
        out.reserve(len - out.len());
        for (i, e) in self.entries.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            e.write_to(&mut out);
        }
        out.extend_from_slice(&self.tail);
        out
    }

    /// The Bundle in chunks of about `size` bytes (an entry larger than that is a chunk of
    /// its own), made as they are asked for: what a response body sends.
    pub fn chunks(self, size: usize) -> impl Iterator<Item = Vec<u8>> + Send {
        let BundleBytes {
            head,
            entries,
            tail,
        } = self;
        let mut head = Some(head);
        let mut tail = Some(tail);
        let mut next = 0;
        std::iter::from_fn(move || {
            let mut chunk = head.take().unwrap_or_default();
            chunk.reserve(size);
            while next < entries.len() && chunk.len() < size {
                if next > 0 {
                    chunk.push(b',');
                }
                entries[next].write_to(&mut chunk);
                next += 1;
            }
            if next == entries.len()
                && let Some(t) = tail.take()
            {
                chunk.extend_from_slice(&t);
            }
            (!chunk.is_empty()).then_some(chunk)
        })
    }
}

/// An age for people: "45 seconds", "3 minutes", "2 hours".
pub fn describe_age(seconds: u64) -> String {
    let (n, unit) = match seconds {
        0..120 => (seconds, "second"),
        120..7200 => (seconds / 60, "minute"),
        _ => (seconds / 3600, "hour"),
    };
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

/// An RFC 3339 timestamp in UTC with seconds, as FHIR `instant` requires.
pub fn instant(t: time::OffsetDateTime) -> String {
    let t = t
        .to_offset(time::UtcOffset::UTC)
        .replace_nanosecond(0)
        .unwrap_or(t);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

/// Where a clinician's application gets a token (the region's identity provider), as SMART
/// on FHIR names its endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthEndpoints {
    pub authorize: String,
    pub token: String,
}

/// The CapabilityStatement of the clinician face: exactly what the gateway supports, and,
/// when the identity provider's endpoints are known, how to get a token (SMART on FHIR's
/// `rest.security`).
pub fn capability_statement(
    software_version: &str,
    base_url: &str,
    region_name: &str,
    now: &str,
    oauth: Option<&OAuthEndpoints>,
) -> Value {
    use types::ResourceType;
    let mut resources = vec![json!({
        "type": "Patient",
        "interaction": [{"code": "read"}, {"code": "search-type"}],
        "searchParam": [
            {"name": "identifier", "type": "token", "documentation": "Required: https://fhir.nhs.uk/Id/nhs-number|{NHS number}"},
            {"name": "_id", "type": "token", "documentation": "The NHS number"},
            {"name": "_count", "type": "number", "documentation": "Page size; 0 gives the total alone"},
            {"name": "_summary", "type": "token", "documentation": "count only: the total alone"},
            {"name": "_format", "type": "string", "documentation": "json, application/json or application/fhir+json"},
        ],
        "operation": [{"name": "everything", "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything",
                       "documentation": "Parameters: _type (federated types), start and end (the items' clinical dates), _since (last updated), _count (page size; 0 for the total alone), _summary=count, _format. The items' referenced resources (practitioners, organisations, locations, medications, ...) are included (search.mode = include)."}],
    })];
    let read_only = |t: &str, doc: &str| {
        json!({"type": t, "interaction": [{"code": "read"}],
               "documentation": format!("{doc} Read by the id the gateway gives it ({{region}}.{{id}}), from the region that holds it, under that region's release policy and this region's view policy.")})
    };
    for t in ResourceType::ALL {
        let mut params = vec![
            json!({"name": "patient.identifier", "type": "token",
                   "documentation": "Required (or patient=Patient/{NHS number}): https://fhir.nhs.uk/Id/nhs-number|{NHS number}"}),
            json!({"name": "patient", "type": "reference"}),
        ];
        for d in t.date_params() {
            params.push(json!({"name": d.name, "type": "date", "documentation": "Prefixes eq, ne, gt, lt, ge, le, sa, eb"}));
        }
        if t.category().is_some() {
            params.push(json!({"name": "category", "type": "token"}));
        }
        params.push(json!({"name": "_lastUpdated", "type": "date", "documentation": "Prefixes eq, ne, gt, lt, ge, le, sa, eb"}));
        params.push(json!({"name": "_count", "type": "number", "documentation": "Page size; 0 gives the total alone"}));
        params.push(json!({"name": "_summary", "type": "token", "documentation": "count only: the total alone"}));
        params.push(json!({"name": "_format", "type": "string"}));
        resources.push(json!({"type": t.as_str(), "interaction": [{"code": "read"}, {"code": "search-type"}], "searchParam": params,
            "documentation": "Read by the id the gateway gives it ({region}.{id})."}));
    }
    for t in reference::REFERENCE_TYPES {
        resources.push(read_only(t, "A resource the patient's items reference."));
    }
    resources.push(json!({
        "type": "Consent",
        "interaction": [{"code": "read"}, {"code": "update"}, {"code": "create"}, {"code": "search-type"}],
        "searchParam": [{"name": "patient.identifier", "type": "token", "documentation": "Required: https://fhir.nhs.uk/Id/nhs-number|{NHS number}"}],
        "documentation": "Patients' consent directives recorded through this gateway (roles allowed manage-consent).",
    }));
    resources.push(json!({
        "type": "AuditEvent",
        "supportedProfile": [
            "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.PatientQuery",
            "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.Query",
            "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.PatientRead",
            "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.PatientCreate",
            "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.PatientUpdate",
            "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.Create",
            "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.Update",
            "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.Delete",
        ],
        "interaction": [{"code": "read"}, {"code": "search-type"}],
        "searchParam": [
            {"name": "patient", "type": "reference", "documentation": "The patient's NHS number (or patient.identifier=https://fhir.nhs.uk/Id/nhs-number|{NHS number})"},
            {"name": "date", "type": "date", "documentation": "Prefixes eq, gt, lt, ge, le"},
            {"name": "agent", "type": "reference", "documentation": "The user id the identity provider issued (agent:identifier=urn:gateway:user-id|{id})"},
            {"name": "entity", "type": "reference", "documentation": "A region the query reached (urn:gateway:region:{code}), or entity:identifier= the patient's NHS number"},
            {"name": "type", "type": "token", "documentation": "rest (every record)"},
            {"name": "subtype", "type": "token", "documentation": "search, read, operation, create, update or delete (http://hl7.org/fhir/restful-interaction)"},
            {"name": "outcome", "type": "token", "documentation": "0, 4 or 8"},
            {"name": "_count", "type": "number", "documentation": "Page size, 1 to 500"},
        ],
        "documentation": "This region's audit trail, newest first, for the roles allowed read-audit; each record follows the IHE BALP profile named in its meta.profile.",
    }));
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": now,
        "kind": "instance",
        "software": {"name": "federation-gateway", "version": software_version},
        "implementation": {"description": format!("Federation gateway of {region_name}"), "url": base_url},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [{
            "mode": "server",
            "documentation": "Every query names one patient by NHS number and is answered from this region and its neighbours. Unknown parameters are refused unless 'Prefer: handling=lenient' is sent.",
            "security": security(oauth),
            "resource": resources,
        }],
    })
}

fn security(oauth: Option<&OAuthEndpoints>) -> Value {
    let description = "Bearer JWT from the region's identity provider (signature, iss, aud, exp, nbf checked). SMART on FHIR scopes (v2 user/Type.rs, patient/*.rs; v1 .read) bound what the role policy allows; a token with a patient claim may ask only about that patient. See .well-known/smart-configuration.";
    let mut security = json!({
        "cors": false,
        "service": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service", "code": "SMART-on-FHIR", "display": "SMART-on-FHIR"}], "text": "OAuth2 using SMART-on-FHIR profile (see http://docs.smarthealthit.org)"}],
        "description": description,
    });
    if let Some(o) = oauth {
        security["extension"] = json!([{
            "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
            "extension": [
                {"url": "authorize", "valueUri": o.authorize},
                {"url": "token", "valueUri": o.token},
            ],
        }]);
    }
    security
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_bundle_in_chunks_is_the_bundle_in_one_buffer() {
        let entries: Vec<Value> = (0..50)
            .map(|i| {
                entry(
                    &format!("urn:e:{i}"),
                    json!({"resourceType": "Basic", "n": i}),
                    SearchMode::Match,
                )
            })
            .collect();
        let first = SerializedEntries::new(&entries[..40]);
        for (first, rest) in [
            (first.clone(), &entries[40..]),
            (first.clone(), &entries[..0]),
            (SerializedEntries::default(), &entries[40..]),
            (SerializedEntries::default(), &entries[..0]),
        ] {
            let mut all: Vec<Value> = first
                .parts
                .iter()
                .map(|p| serde_json::from_str(&p.as_text()).unwrap())
                .collect();
            all.extend(rest.iter().cloned());
            let want = serde_json::to_vec(&searchset("b", "t", "https://s", 7, all)).unwrap();
            let bytes = searchset_bytes("b", "t", &[("self", "https://s".into())], 7, &first, rest);
            assert_eq!(bytes.len(), want.len());
            for size in [1, 100, 1 << 20] {
                let joined: Vec<u8> = bytes.clone().chunks(size).flatten().collect();
                assert_eq!(
                    String::from_utf8(joined).unwrap(),
                    String::from_utf8(want.clone()).unwrap(),
                    "chunks of {size}"
                );
            }
            // Every chunk but the last (which carries the tail) ends at the first entry that
            // takes it past its size.
            let chunks: Vec<Vec<u8>> = bytes.clone().chunks(100).collect();
            let largest = first.parts.iter().map(|p| p.len() + 1).max().unwrap_or(0);
            let head = bytes.head.len();
            let sizes: Vec<usize> = chunks.iter().map(Vec::len).collect();
            assert!(
                chunks[..chunks.len() - 1]
                    .iter()
                    .all(|c| c.len() < 100 + largest + head),
                "chunks stay near their size: {sizes:?}"
            );
            assert_eq!(bytes.into_vec(), want);
        }
    }

    use super::*;

    #[test]
    fn a_bundle_written_around_serialised_entries_is_the_bundle_serialised_whole() {
        // Enough entries to be written on several threads, and few.
        let many: Vec<Value> = (0..1100)
            .map(|i| {
                entry(
                    &format!("urn:x:{i}"),
                    json!({"resourceType": "Condition", "id": format!("c{i}"), "note": [{"text": "é \" \\"}]}),
                    SearchMode::Match,
                )
            })
            .collect();
        let whole = serde_json::to_vec(&searchset("b", "t", "l", 300, many.clone())).unwrap();
        let first = SerializedEntries::new(&many[..250]);
        assert_eq!(
            write_searchset("b", "t", "l", 300, &first, &many[250..]),
            whole
        );
        let in_place = crate::parallel::serially(|| SerializedEntries::new(&many[..250]));
        assert_eq!(first, in_place);
        let entries: Vec<Value> = (0..4)
            .map(|i| {
                entry(
                    &format!("https://r.example/fhir/Condition/c{i}"),
                    json!({"resourceType": "Condition", "id": format!("c{i}"),
                           "note": [{"text": "quote \" backslash \\ newline \n é \u{1}"}]}),
                    SearchMode::Match,
                )
            })
            .collect();
        let link = "https://gw.example/fhir/Condition?patient.identifier=x|1&_x=\"y\"";
        for split in 0..=entries.len() {
            let whole = serde_json::to_vec(&searchset(
                "b1",
                "2026-01-01T00:00:00Z",
                link,
                9,
                entries.clone(),
            ))
            .unwrap();
            let first = SerializedEntries::new(&entries[..split]);
            assert_eq!(first.len(), split);
            let written = write_searchset(
                "b1",
                "2026-01-01T00:00:00Z",
                link,
                9,
                &first,
                &entries[split..],
            );
            assert_eq!(
                String::from_utf8(written).unwrap(),
                String::from_utf8(whole).unwrap(),
                "split at {split}"
            );
        }
        // No entries at all: no "entry" element, as searchset makes it.
        let none = write_searchset(
            "b1",
            "t",
            link,
            0,
            &SerializedEntries::default(),
            &[] as &[Value],
        );
        assert_eq!(
            none,
            serde_json::to_vec(&searchset("b1", "t", link, 0, Vec::new())).unwrap()
        );
        assert!(!String::from_utf8(none).unwrap().contains("entry"));
    }

    #[test]
    fn echoed_input_never_carries_a_number_that_could_identify_a_patient() {
        assert_eq!(echo("colour", 64), "colour");
        assert_eq!(echo("2023-01-01", 64), "2023-01-01");
        assert!(!echo("9434765919", 64).contains("943476"));
        assert!(!echo("x943 476 5919".replace(' ', "").as_str(), 64).contains("9434"));
        assert_eq!(echo("abcdef", 3), "abc");
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_depth() {
        let a: Value =
            serde_json::from_str(r#"{"b":1,"a":{"z":[{"y":1,"x":2}],"c":"é"}}"#).unwrap();
        let b: Value =
            serde_json::from_str(r#"{"a":{"c":"é","z":[{"x":2,"y":1}]},"b":1}"#).unwrap();
        assert_eq!(canonical_json(&a), canonical_json(&b));
        assert_eq!(
            canonical_json(&a),
            r#"{"a":{"c":"é","z":[{"x":2,"y":1}]},"b":1}"#
        );
    }

    #[test]
    fn instants_have_seconds_and_zone() {
        let t = time::macros::datetime!(2024-03-01 10:20:30.123 +01:00);
        assert_eq!(instant(t), "2024-03-01T09:20:30Z");
    }

    #[test]
    fn capability_lists_every_supported_type() {
        let oauth = OAuthEndpoints {
            authorize: "https://idp/auth".into(),
            token: "https://idp/token".into(),
        };
        let cs = capability_statement(
            "0",
            "https://x/fhir",
            "Dorset",
            "2024-01-01T00:00:00Z",
            Some(&oauth),
        );
        let security = &cs["rest"][0]["security"];
        assert_eq!(security["service"][0]["coding"][0]["code"], "SMART-on-FHIR");
        let uris = &security["extension"][0]["extension"];
        assert_eq!(
            (uris[0]["url"].as_str(), uris[0]["valueUri"].as_str()),
            (Some("authorize"), Some("https://idp/auth"))
        );
        assert_eq!(
            (uris[1]["url"].as_str(), uris[1]["valueUri"].as_str()),
            (Some("token"), Some("https://idp/token"))
        );
        let types: Vec<&str> = cs["rest"][0]["resource"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["type"].as_str().unwrap())
            .collect();
        assert_eq!(
            types.len(),
            1 + types::ResourceType::ALL.len() + reference::REFERENCE_TYPES.len() + 2
        );
        assert!(types.contains(&"AuditEvent"));
        assert!(types.contains(&"AllergyIntolerance"));
        assert!(types.contains(&"Consent"));
        // Every type a reference may name is listed with its read.
        for r in cs["rest"][0]["resource"].as_array().unwrap() {
            let t = r["type"].as_str().unwrap();
            let reads = r["interaction"]
                .as_array()
                .unwrap()
                .iter()
                .any(|i| i["code"] == "read");
            assert_eq!(
                reads,
                t == "Patient" || t == "Consent" || t == "AuditEvent" || reference::served_by_id(t),
                "{t}"
            );
        }
        let everything = cs["rest"][0]["resource"][0]["operation"][0]["documentation"]
            .as_str()
            .unwrap();
        for p in ["start", "end", "_since", "_count", "_type"] {
            assert!(everything.contains(p), "{p}");
        }
    }
}
