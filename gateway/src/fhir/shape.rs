//! The few elements an item's view reads, read from their text as a tree would give them.
//! Pure: no I/O.
//!
//! Each reader takes one member's text (already checked by [`super::scan`]) and reads what
//! the tree functions it stands for read ([`super::item::security_of`],
//! [`super::item::categories_of`], [`crate::record::patient_link`] and the like), with their
//! leniency: a value of another type than FHIR's is passed over as `as_str` and `as_array`
//! pass over it, and a key given twice keeps its last value. Nothing is built but the strings
//! that have escapes.
//!
//! A text holding a `\u` escape of a surrogate is left to the tree (`None` from [`plain`]):
//! serde_json will not read a lone one into a tree, so such an element reads as nothing there,
//! and the readers here would not know to do the same.

use std::borrow::Cow;

use super::scan::{Literal, Scan, unescape};
use crate::record::PatientLink;

/// A (system, code) pair as the text gives it.
pub type Coded<'a> = (Option<Cow<'a, str>>, Cow<'a, str>);

/// Whether the readers here read `text` as its tree does: it has no `\u` escape of a
/// surrogate (a spelling FHIR's text never needs).
pub fn plain(text: &str) -> bool {
    let bytes = text.as_bytes();
    text.match_indices("\\u")
        .all(|(at, _)| !matches!(bytes.get(at + 2), Some(b'd' | b'D')))
}

/// A literal's value: borrowed when it has no escapes.
fn literal(l: Literal<'_>) -> Option<Cow<'_, str>> {
    if l.escaped {
        unescape(l.inner).map(Cow::Owned)
    } else {
        Some(Cow::Borrowed(l.inner))
    }
}

/// A string value (`as_str`): `None` when the value is not a string.
pub fn string(text: &str) -> Option<Cow<'_, str>> {
    if !text.starts_with('"') {
        return None;
    }
    literal(Scan::new(text).string().ok()?)
}

/// The members `names` of an object, each the last given (as a tree keeps it); every one
/// `None` when the value is not an object.
fn fields<'a, const N: usize>(text: &'a str, names: [&str; N]) -> [Option<&'a str>; N] {
    let mut found = [None; N];
    if !text.starts_with('{') {
        return found;
    }
    let mut s = Scan::new(text);
    let read = s.object(|s, key| {
        let from = s.at();
        s.skip()?;
        if let Some(i) = names.iter().position(|n| key.is(n)) {
            found[i] = Some(s.since(from));
        }
        Ok(())
    });
    if read.is_err() {
        // Not reached for a checked member's text; read as nothing, as a tree would not be.
        return [None; N];
    }
    found
}

/// The elements of an array (`as_array`): none when the value is not an array.
fn elements(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    if !text.starts_with('[') {
        return out;
    }
    let mut s = Scan::new(text);
    let read = s.array(|s| {
        let from = s.at();
        s.skip()?;
        out.push(s.since(from));
        Ok(())
    });
    if read.is_err() {
        out.clear();
    }
    out
}

/// A coding's (system, code); `None` without a string code.
fn coding(text: &str) -> Option<Coded<'_>> {
    let [system, code] = fields(text, ["system", "code"]);
    Some((system.and_then(string), string(code?)?))
}

/// `meta`'s `lastUpdated` and its `security` codings.
pub fn meta(text: &str) -> (Option<Cow<'_, str>>, Vec<Coded<'_>>) {
    let [last_updated, security] = fields(text, ["lastUpdated", "security"]);
    (
        last_updated.and_then(string),
        security
            .map(elements)
            .unwrap_or_default()
            .into_iter()
            .filter_map(coding)
            .collect(),
    )
}

/// A `category` element's codes: one or a list, each a bare code or a CodeableConcept.
pub fn categories(text: &str) -> Vec<Coded<'_>> {
    if text.starts_with('[') {
        elements(text).into_iter().flat_map(category).collect()
    } else {
        category(text)
    }
}

/// One category's codes: a bare code, or a CodeableConcept's codings.
fn category(text: &str) -> Vec<Coded<'_>> {
    if let Some(code) = string(text) {
        return vec![(None, code)];
    }
    let [list] = fields(text, ["coding"]);
    list.map(elements)
        .unwrap_or_default()
        .into_iter()
        .filter_map(coding)
        .collect()
}

/// Business identifiers: (system, value), each both strings.
pub fn identifiers(text: &str) -> Vec<(Cow<'_, str>, Cow<'_, str>)> {
    elements(text)
        .into_iter()
        .filter_map(|i| {
            let [system, value] = fields(i, ["system", "value"]);
            Some((string(system?)?, string(value?)?))
        })
        .collect()
}

/// What a patient reference (`subject`, `patient`) points at: a local Patient by a literal
/// reference, or an NHS number by a logical one.
pub fn patient_link(text: &str) -> Option<PatientLink> {
    let [reference, identifier] = fields(text, ["reference", "identifier"]);
    if let Some(reference) = reference.and_then(string) {
        let mut parts = reference.rsplit('/');
        let id = parts.next()?;
        return (parts.next() == Some("Patient") && !id.is_empty())
            .then(|| PatientLink::Local(id.to_owned()));
    }
    let [system, value] = fields(identifier?, ["system", "value"]);
    (system.and_then(string).as_deref() == Some(super::nhs::NHS_NUMBER_SYSTEM))
        .then(|| {
            value
                .and_then(string)
                .map(|v| PatientLink::Nhs(v.into_owned()))
        })
        .flatten()
}

/// The first `system|code` of a CodeableConcept (or of the first of a list of them).
pub fn first_coding(text: &str) -> Option<String> {
    let concept = if text.starts_with('[') {
        *elements(text).first()?
    } else {
        text
    };
    let [list] = fields(concept, ["coding"]);
    if !list?.starts_with('[') {
        return None;
    }
    elements(list?).into_iter().find_map(|c| {
        let [system, code] = fields(c, ["system", "code"]);
        Some(format!("{}|{}", string(system?)?, string(code?)?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::item::{categories_of, security_of};
    use proptest::prelude::*;
    use serde_json::{Value, json};

    fn owned(list: Vec<Coded<'_>>) -> Vec<(Option<String>, String)> {
        list.into_iter()
            .map(|(s, c)| (s.map(Cow::into_owned), c.into_owned()))
            .collect()
    }

    /// The tree readers these stand for, on the element's tree.
    fn tree_first_coding(c: &Value) -> Option<String> {
        let c = match c {
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

    fn tree_identifiers(v: &Value) -> Vec<(String, String)> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| {
                Some((
                    i.get("system")?.as_str()?.to_owned(),
                    i.get("value")?.as_str()?.to_owned(),
                ))
            })
            .collect()
    }

    /// Elements of FHIR's shapes and of others: codings with codes of other types, lists
    /// where one is expected and the reverse, keys given twice, escapes, nulls.
    /// Any small JSON value, strings among them.
    fn any_value() -> BoxedStrategy<String> {
        let leaf = prop_oneof![
            Just("null".to_owned()),
            Just("7".to_owned()),
            Just("true".to_owned()),
            text(),
        ];
        leaf.prop_recursive(2, 8, 3, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3)
                    .prop_map(|list| format!("[{}]", list.join(", "))),
                prop::collection::vec(inner, 0..3).prop_map(|values| {
                    let members: Vec<String> = values
                        .iter()
                        .enumerate()
                        .map(|(i, v)| format!("\"k{i}\":{v}"))
                        .collect();
                    format!("{{{}}}", members.join(","))
                }),
            ]
        })
        .boxed()
    }

    fn text() -> BoxedStrategy<String> {
        let plain = prop::sample::select(vec![
            r#""a""#,
            r#""s""#,
            r#""2024-05-01T10:00:00Z""#,
            r#""Patient/p1""#,
            r#""https://x/Patient/p\u0032""#,
            r#""Observation/o""#,
            r#""Patient/""#,
            r#""https://fhir.nhs.uk/Id/nhs-number""#,
            r#""https://fhir.nhs.uk/Id/nhs-numbe\u0072""#,
            r#""9000000009""#,
            r#""\u00e9 \" \\""#,
        ]);
        // Seldom a surrogate's escape: a pair, or a lone one (not plain either way).
        let surrogate = prop::sample::select(vec![r#""\ud83d\ude00""#, r#""\ud800""#]);
        prop_oneof![30 => plain, 1 => surrogate]
            .prop_map(str::to_owned)
            .boxed()
    }

    /// Mostly a string, sometimes any other value.
    fn text_or_not() -> BoxedStrategy<String> {
        prop_oneof![4 => text(), 1 => any_value()].boxed()
    }

    /// An object of the members given (keys may repeat, as text allows), in any order, or
    /// sometimes any other value.
    fn object(members: Vec<(&'static str, BoxedStrategy<String>)>) -> BoxedStrategy<String> {
        let member =
            prop::sample::select((0..members.len()).collect::<Vec<_>>()).prop_flat_map(move |i| {
                let (key, value) = members[i].clone();
                value.prop_map(move |v| format!("\"{key}\": {v}"))
            });
        prop_oneof![
            6 => prop::collection::vec(member, 0..5)
                .prop_map(|list| format!("{{{}}}", list.join(","))),
            1 => any_value(),
        ]
        .boxed()
    }

    /// A list of `one`, or sometimes one alone or any other value.
    fn list(one: BoxedStrategy<String>) -> BoxedStrategy<String> {
        prop_oneof![
            6 => prop::collection::vec(one.clone(), 0..4)
                .prop_map(|list| format!("[{}]", list.join(", "))),
            1 => one,
            1 => any_value(),
        ]
        .boxed()
    }

    fn coding() -> BoxedStrategy<String> {
        object(vec![
            ("system", text_or_not()),
            ("code", text_or_not()),
            ("co\\u0064e", text_or_not()),
            ("display", text()),
        ])
    }

    fn concept() -> BoxedStrategy<String> {
        object(vec![("coding", list(coding())), ("text", text())])
    }

    fn identifier() -> BoxedStrategy<String> {
        object(vec![
            ("system", text_or_not()),
            ("value", text_or_not()),
            ("use", text()),
        ])
    }

    /// Elements of FHIR's shapes and of others: codings with codes of other types, lists
    /// where one is expected and the reverse, keys given twice or spelt with escapes, nulls.
    fn element() -> impl Strategy<Value = String> {
        prop_oneof![
            object(vec![
                ("lastUpdated", text_or_not()),
                ("security", list(coding())),
                ("tag", list(coding())),
            ]),
            concept(),
            list(concept()),
            list(prop_oneof![concept(), text()].boxed()),
            list(identifier()),
            object(vec![
                ("reference", text_or_not()),
                ("identifier", identifier()),
                ("display", text()),
            ]),
            any_value(),
        ]
    }

    fn tree(text: &str) -> Option<Value> {
        serde_json::from_str(text).ok()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(5000))]

        /// Every reader reads what its tree reader reads, on any shape, whenever the text is
        /// plain; a text that is not is read as a tree by the view.
        #[test]
        fn each_reader_reads_what_the_tree_reader_reads(text in element()) {
            if !plain(&text) {
                return Ok(());
            }
            let t = tree(&text).expect("plain JSON reads as a tree");
            let (last_updated, security) = meta(&text);
            prop_assert_eq!(
                last_updated.map(Cow::into_owned),
                t.get("lastUpdated").and_then(Value::as_str).map(str::to_owned)
            );
            prop_assert_eq!(owned(security), security_of(Some(&t)));
            prop_assert_eq!(owned(categories(&text)), categories_of(&t));
            prop_assert_eq!(
                identifiers(&text)
                    .into_iter()
                    .map(|(s, v)| (s.into_owned(), v.into_owned()))
                    .collect::<Vec<_>>(),
                tree_identifiers(&t)
            );
            prop_assert_eq!(
                patient_link(&text),
                crate::record::patient_link(&json!({ "subject": t }), "subject")
            );
            prop_assert_eq!(first_coding(&text), tree_first_coding(&t));
            prop_assert_eq!(string(&text).map(Cow::into_owned), t.as_str().map(str::to_owned));
        }

        /// What is not plain is what a tree may refuse: every text the readers would misread
        /// is held back by `plain`.
        #[test]
        fn plain_text_always_reads_as_a_tree(text in element()) {
            if plain(&text) {
                prop_assert!(tree(&text).is_some());
            }
        }
    }

    #[test]
    fn a_lone_surrogate_is_not_plain_and_a_pair_is_not_either() {
        assert!(!plain(r#""\ud800""#));
        assert!(!plain(r#""\uD83D\uDE00""#));
        // An escaped backslash before `ud` is held back too: read as a tree, as harmlessly.
        assert!(!plain(r#""\\ud800""#));
        assert!(plain(r#""\u00e9""#));
        assert!(plain(r#"{"code":"\u0041"}"#));
    }
}
