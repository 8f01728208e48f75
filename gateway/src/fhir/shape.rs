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
//! A text holding a `\u` escape of a surrogate is not [`plain`], and the view reads it from
//! its tree's text instead: serde_json will not read a lone one into a tree, so such an
//! element reads as nothing there, and the readers here would not know to do the same.

use std::borrow::Cow;

use super::scan::{Literal, Scan, ScanError};
use crate::record::PatientLink;

/// A (system, code) pair as the text gives it.
pub type CodedText<'a> = (Option<Cow<'a, str>>, Cow<'a, str>);

/// Whether the readers here read `text` as its tree does: it has no `\u` escape of a
/// surrogate (a spelling FHIR's text never needs).
pub fn plain(text: &str) -> bool {
    let bytes = text.as_bytes();
    let mut at = 0;
    while let Some(i) = memchr::memchr(b'\\', &bytes[at..]) {
        let escape = at + i;
        if bytes.get(escape + 1) == Some(&b'u')
            && matches!(bytes.get(escape + 2), Some(b'd' | b'D'))
        {
            return false;
        }
        // Past the escape's two characters (`\\` is one escape, not the start of another).
        at = escape + 2;
        if at >= bytes.len() {
            break;
        }
    }
    true
}

/// A string value (`as_str`): `None` when the value is not a string.
pub fn string(text: &str) -> Option<Cow<'_, str>> {
    if !text.starts_with('"') {
        return None;
    }
    Scan::new(text).string().ok()?.value()
}

// The readers below read their element in one pass of the scanner: each member they look for
// is read where it lies (a key given again reading again over what it read), all else skipped.

/// The string at the cursor (`as_str`); any other value is passed over as `None`.
fn string_at<'a>(s: &mut Scan<'a>) -> Result<Option<Cow<'a, str>>, ScanError> {
    if s.peek() == Some(b'"') {
        Ok(s.string()?.value())
    } else {
        s.skip().map(|()| None)
    }
}

/// The object at the cursor, member by member; any other value is passed over.
fn object_at<'a>(
    s: &mut Scan<'a>,
    member: impl FnMut(&mut Scan<'a>, Literal<'a>) -> Result<(), ScanError>,
) -> Result<(), ScanError> {
    if s.peek() == Some(b'{') {
        s.object(member)
    } else {
        s.skip()
    }
}

/// The array at the cursor, element by element; any other value is passed over.
fn array_at<'a>(
    s: &mut Scan<'a>,
    element: impl FnMut(&mut Scan<'a>) -> Result<(), ScanError>,
) -> Result<(), ScanError> {
    if s.peek() == Some(b'[') {
        s.array(element)
    } else {
        s.skip()
    }
}

/// Two members' strings (`as_str`).
type Pair<'a> = (Option<Cow<'a, str>>, Option<Cow<'a, str>>);

/// The two string members `a` and `b` of the object at the cursor, each the last given.
fn pair_at<'a>(s: &mut Scan<'a>, (a, b): (&str, &str)) -> Result<Pair<'a>, ScanError> {
    let (mut first, mut second) = (None, None);
    object_at(s, |s, key| {
        if key.is(a) {
            first = string_at(s)?;
        } else if key.is(b) {
            second = string_at(s)?;
        } else {
            s.skip()?;
        }
        Ok(())
    })?;
    Ok((first, second))
}

/// A list of codings at the cursor, those with a string code put in `out`.
fn codings_at<'a>(s: &mut Scan<'a>, out: &mut Vec<CodedText<'a>>) -> Result<(), ScanError> {
    array_at(s, |s| {
        if let (system, Some(code)) = pair_at(s, ("system", "code"))? {
            out.push((system, code));
        }
        Ok(())
    })
}

/// Reads `text` with `reader`; a text that is not JSON (not reached: members are checked
/// before they are read) reads as nothing.
fn read<'a, T: Default>(
    text: &'a str,
    reader: impl FnOnce(&mut Scan<'a>) -> Result<T, ScanError>,
) -> T {
    reader(&mut Scan::new(text)).unwrap_or_default()
}

/// `meta`'s `lastUpdated` and its `security` codings.
pub fn meta(text: &str) -> (Option<Cow<'_, str>>, Vec<CodedText<'_>>) {
    read(text, |s| {
        let (mut last_updated, mut security) = (None, Vec::new());
        object_at(s, |s, key| {
            if key.is("lastUpdated") {
                last_updated = string_at(s)?;
            } else if key.is("security") {
                security.clear();
                codings_at(s, &mut security)?;
            } else {
                s.skip()?;
            }
            Ok(())
        })?;
        Ok((last_updated, security))
    })
}

/// A `category` element's codes: one or a list, each a bare code or a CodeableConcept.
pub fn categories(text: &str) -> Vec<CodedText<'_>> {
    read(text, |s| {
        let mut out = Vec::new();
        if s.peek() == Some(b'[') {
            s.array(|s| category_at(s, &mut out))?;
        } else {
            category_at(s, &mut out)?;
        }
        Ok(out)
    })
}

/// One category's codes: a bare code, or a CodeableConcept's codings (its last `coding`).
fn category_at<'a>(s: &mut Scan<'a>, out: &mut Vec<CodedText<'a>>) -> Result<(), ScanError> {
    if s.peek() == Some(b'"') {
        out.extend(s.string()?.value().map(|code| (None, code)));
        return Ok(());
    }
    let mark = out.len();
    object_at(s, |s, key| {
        if key.is("coding") {
            out.truncate(mark);
            codings_at(s, out)
        } else {
            s.skip()
        }
    })
}

/// Business identifiers: (system, value), each both strings.
pub fn identifiers(text: &str) -> Vec<(Cow<'_, str>, Cow<'_, str>)> {
    read(text, |s| {
        let mut out = Vec::new();
        array_at(s, |s| {
            if let (Some(system), Some(value)) = pair_at(s, ("system", "value"))? {
                out.push((system, value));
            }
            Ok(())
        })?;
        Ok(out)
    })
}

/// What a patient reference (`subject`, `patient`) points at: a local Patient by a literal
/// reference, or an NHS number by a logical one.
pub fn patient_link(text: &str) -> Option<PatientLink> {
    let (reference, (system, value)) = read(text, |s| {
        let (mut reference, mut identifier) = (None, (None, None));
        object_at(s, |s, key| {
            if key.is("reference") {
                reference = string_at(s)?;
            } else if key.is("identifier") {
                identifier = pair_at(s, ("system", "value"))?;
            } else {
                s.skip()?;
            }
            Ok(())
        })?;
        Ok((reference, identifier))
    });
    if let Some(reference) = reference {
        let mut parts = reference.rsplit('/');
        let id = parts.next()?;
        return (parts.next() == Some("Patient") && !id.is_empty())
            .then(|| PatientLink::Local(id.to_owned()));
    }
    (system.as_deref() == Some(super::nhs::NHS_NUMBER_SYSTEM))
        .then(|| value.map(|v| PatientLink::Nhs(v.into_owned())))
        .flatten()
}

/// The first `system|code` of a CodeableConcept (or of the first of a list of them).
pub fn first_coding(text: &str) -> Option<String> {
    read(text, |s| {
        let mut found = None;
        if s.peek() == Some(b'[') {
            let mut first = true;
            s.array(|s| {
                if std::mem::take(&mut first) {
                    found = concept_at(s)?;
                    Ok(())
                } else {
                    s.skip()
                }
            })?;
        } else {
            found = concept_at(s)?;
        }
        Ok(found)
    })
}

/// A CodeableConcept's first coding with a string system and code (its last `coding`).
fn concept_at(s: &mut Scan<'_>) -> Result<Option<String>, ScanError> {
    let mut found = None;
    object_at(s, |s, key| {
        if !key.is("coding") {
            return s.skip();
        }
        found = None;
        array_at(s, |s| {
            if let (Some(system), Some(code)) = pair_at(s, ("system", "code"))?
                && found.is_none()
            {
                found = Some([&*system, "|", &*code].concat());
            }
            Ok(())
        })
    })?;
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::item::{categories_of, security_of};
    use proptest::prelude::*;
    use serde_json::{Value, json};

    fn owned(list: Vec<CodedText<'_>>) -> Vec<(Option<String>, String)> {
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
            r#""a\\ud800""#,
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
        // An escaped backslash before `ud` is no escape of a surrogate.
        assert!(plain(r#""\\ud800""#));
        assert!(!plain(r#""\\\ud800""#));
        assert!(plain(r#""\u00e9""#));
        assert!(plain(r#"{"code":"\u0041"}"#));
    }
}
