//! One validating pass over JSON text, for reading answers. Pure: no I/O.
//!
//! A region's answer is read once, byte by byte, by [`Scan`]: it checks the text is JSON
//! (RFC 8259, as serde_json reads it) and, on the way, notes where each member of a resource
//! lies and where every `reference` string under it lies. Nothing is copied or built; what a
//! decision reads is read afterwards, from the small members it names.
//!
//! Written by hand rather than driven through serde: serde_json's borrowed raw values scan
//! each member once to validate it, and finding the references (and the resource's own extent)
//! took a second scan of every member that might hold one. The scanner also accepts exactly
//! what serde_json accepts (lone surrogate escapes included, as its raw values do), which a
//! proptest holds it to.

/// How deeply arrays and objects may nest: as deeply as serde_json reads into a tree. (Its raw
/// values, which the reader used before, had no limit; this one is recursive, so it has one,
/// and no FHIR resource comes near it.)
const DEPTH: u32 = 127;

/// Why a text is not JSON, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanError {
    pub at: usize,
    pub what: &'static str,
}

impl std::fmt::Display for ScanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at byte {}", self.what, self.at)
    }
}

type Result<T> = std::result::Result<T, ScanError>;

/// A `reference` string found under a value: where its literal lies (quotes included, as
/// offsets into the scanned text) and whether it has escapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReferenceAt {
    pub start: usize,
    pub end: usize,
    pub escaped: bool,
}

/// A string literal's text between its quotes, and whether it has escapes.
#[derive(Debug, Clone, Copy)]
pub struct Literal<'a> {
    pub inner: &'a str,
    pub escaped: bool,
}

impl<'a> Literal<'a> {
    /// Its value: borrowed when it has no escapes, unescaped when it has (`None` when they are
    /// not valid text, such as a lone surrogate).
    pub fn value(&self) -> Option<std::borrow::Cow<'a, str>> {
        if self.escaped {
            unescape(self.inner).map(std::borrow::Cow::Owned)
        } else {
            Some(std::borrow::Cow::Borrowed(self.inner))
        }
    }

    /// Whether its value is `name` (escapes resolved).
    pub fn is(&self, name: &str) -> bool {
        if self.escaped {
            unescape(self.inner).as_deref() == Some(name)
        } else {
            self.inner == name
        }
    }
}

/// A literal's value with its escapes resolved (`None` when they are not valid text, such as
/// a lone surrogate, or when the text is not a literal's inside). Resolved as serde_json
/// resolves a string (a proptest holds the two equal); written here, into one string of the
/// literal's length, because wrapping the text in quotes for serde_json took two strings
/// and a parser's set-up for each (3 % of a merge of three 2 MB answers, by instruction count).
pub fn unescape(inner: &str) -> Option<String> {
    let mut out = String::with_capacity(inner.len());
    let mut rest = inner;
    loop {
        let Some(at) = memchr::memchr(b'\\', rest.as_bytes()) else {
            out.push_str(plain_text(rest)?);
            return Some(out);
        };
        out.push_str(plain_text(&rest[..at])?);
        let (ch, used) = escape(&rest[at..])?;
        out.push(ch);
        rest = &rest[at + used..];
    }
}

/// Text between escapes, which a literal holds only without quotes and control characters.
fn plain_text(text: &str) -> Option<&str> {
    text.bytes().all(|b| b != b'"' && b >= 0x20).then_some(text)
}

/// The character an escape at the start of `text` stands for, and its length in bytes.
fn escape(text: &str) -> Option<(char, usize)> {
    let simple = match text.as_bytes().get(1)? {
        b'"' => '"',
        b'\\' => '\\',
        b'/' => '/',
        b'b' => '\u{8}',
        b'f' => '\u{c}',
        b'n' => '\n',
        b'r' => '\r',
        b't' => '\t',
        b'u' => {
            let high = hex4(text.get(2..6)?)?;
            return match high {
                0xD800..=0xDBFF => {
                    // A leading surrogate: the trailing one must follow.
                    let low = text.get(6..8).filter(|u| *u == "\\u").and(text.get(8..12));
                    let low = hex4(low?)?;
                    if !(0xDC00..=0xDFFF).contains(&low) {
                        return None;
                    }
                    let code = 0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00);
                    Some((char::from_u32(code)?, 12))
                }
                0xDC00..=0xDFFF => None,
                _ => Some((char::from_u32(high)?, 6)),
            };
        }
        _ => return None,
    };
    Some((simple, 2))
}

/// Four hexadecimal digits' value.
fn hex4(digits: &str) -> Option<u32> {
    // Checked first: `from_str_radix` would also take a sign.
    if digits.len() == 4 && digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        u32::from_str_radix(digits, 16).ok()
    } else {
        None
    }
}

/// A cursor over JSON text.
pub struct Scan<'a> {
    text: &'a str,
    at: usize,
    depth: u32,
}

impl<'a> Scan<'a> {
    pub fn new(text: &'a str) -> Self {
        Scan {
            text,
            at: 0,
            depth: 0,
        }
    }

    /// Where the cursor is.
    pub fn at(&self) -> usize {
        self.at
    }

    /// The text from `start` to the cursor.
    pub fn since(&self, start: usize) -> &'a str {
        &self.text[start..self.at]
    }

    fn fail<T>(&self, what: &'static str) -> Result<T> {
        Err(ScanError { at: self.at, what })
    }

    pub fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    /// Skips whitespace.
    pub fn ws(&mut self) {
        let bytes = self.text.as_bytes();
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = bytes.get(self.at) {
            self.at += 1;
        }
    }

    /// The end of the text, after whitespace.
    pub fn end(&mut self) -> Result<()> {
        self.ws();
        match self.peek() {
            None => Ok(()),
            Some(_) => self.fail("text after the value"),
        }
    }

    fn eat(&mut self, byte: u8, what: &'static str) -> Result<()> {
        if self.peek() == Some(byte) {
            self.at += 1;
            Ok(())
        } else {
            self.fail(what)
        }
    }

    fn enter(&mut self) -> Result<()> {
        self.depth += 1;
        if self.depth > DEPTH {
            return self.fail("nested too deeply");
        }
        Ok(())
    }

    /// An object: `member` is called with each key, the cursor at the member's value, which
    /// it must read.
    pub fn object(
        &mut self,
        mut member: impl FnMut(&mut Self, Literal<'a>) -> Result<()>,
    ) -> Result<()> {
        self.eat(b'{', "an object")?;
        self.enter()?;
        self.ws();
        if self.peek() == Some(b'}') {
            self.at += 1;
            self.depth -= 1;
            return Ok(());
        }
        loop {
            if self.peek() != Some(b'"') {
                return self.fail("a key");
            }
            let key = self.string()?;
            self.ws();
            self.eat(b':', "a colon")?;
            self.ws();
            member(self, key)?;
            self.ws();
            match self.peek() {
                Some(b',') => {
                    self.at += 1;
                    self.ws();
                }
                Some(b'}') => {
                    self.at += 1;
                    self.depth -= 1;
                    return Ok(());
                }
                _ => return self.fail("a comma or the object's end"),
            }
        }
    }

    /// An array: `element` is called with the cursor at each element, which it must read.
    pub fn array(&mut self, mut element: impl FnMut(&mut Self) -> Result<()>) -> Result<()> {
        self.eat(b'[', "an array")?;
        self.enter()?;
        self.ws();
        if self.peek() == Some(b']') {
            self.at += 1;
            self.depth -= 1;
            return Ok(());
        }
        loop {
            element(self)?;
            self.ws();
            match self.peek() {
                Some(b',') => {
                    self.at += 1;
                    self.ws();
                }
                Some(b']') => {
                    self.at += 1;
                    self.depth -= 1;
                    return Ok(());
                }
                _ => return self.fail("a comma or the array's end"),
            }
        }
    }

    /// Any value, checked and passed over.
    pub fn skip(&mut self) -> Result<()> {
        self.value(&mut None)
    }

    /// Any value, checked and passed over, noting into `references` (when given) every
    /// `reference` member under it whose value is a string.
    pub fn value(&mut self, references: &mut Option<&mut Vec<ReferenceAt>>) -> Result<()> {
        match self.peek() {
            Some(b'{') => self.object(|s, key| {
                if references.is_some() && s.peek() == Some(b'"') && key.is("reference") {
                    let start = s.at;
                    let literal = s.string()?;
                    if let Some(out) = references {
                        out.push(ReferenceAt {
                            start,
                            end: s.at,
                            escaped: literal.escaped,
                        });
                    }
                    Ok(())
                } else {
                    s.value(references)
                }
            }),
            Some(b'[') => self.array(|s| s.value(references)),
            Some(b'"') => self.string().map(drop),
            Some(b't') => self.word(b"true"),
            Some(b'f') => self.word(b"false"),
            Some(b'n') => self.word(b"null"),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => self.fail("a value"),
        }
    }

    /// `null`, if that is what is next (consumed); else nothing is read.
    pub fn null(&mut self) -> Result<bool> {
        if self.peek() == Some(b'n') {
            self.word(b"null")?;
            return Ok(true);
        }
        Ok(false)
    }

    fn word(&mut self, word: &'static [u8]) -> Result<()> {
        if self.text.as_bytes()[self.at..].starts_with(word) {
            self.at += word.len();
            Ok(())
        } else {
            self.fail("a literal")
        }
    }

    fn digits(&mut self) -> usize {
        let bytes = self.text.as_bytes();
        let start = self.at;
        while bytes.get(self.at).is_some_and(u8::is_ascii_digit) {
            self.at += 1;
        }
        self.at - start
    }

    fn number(&mut self) -> Result<()> {
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.peek() {
            Some(b'0') => self.at += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return self.fail("a digit"),
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            if self.digits() == 0 {
                return self.fail("a digit after the point");
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            if self.digits() == 0 {
                return self.fail("a digit in the exponent");
            }
        }
        Ok(())
    }

    /// A string literal (the cursor at its opening quote).
    pub fn string(&mut self) -> Result<Literal<'a>> {
        self.eat(b'"', "a string")?;
        let start = self.at;
        let bytes = self.text.as_bytes();
        let mut escaped = false;
        loop {
            self.at = start_of_special(bytes, self.at);
            match bytes.get(self.at) {
                Some(b'"') => {
                    let inner = &self.text[start..self.at];
                    self.at += 1;
                    return Ok(Literal { inner, escaped });
                }
                Some(b'\\') => {
                    escaped = true;
                    self.at += 1;
                    match bytes.get(self.at) {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {
                            self.at += 1
                        }
                        Some(b'u') => {
                            let hex = bytes.get(self.at + 1..self.at + 5);
                            if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                                self.at += 1;
                                return self.fail("four hex digits");
                            }
                            self.at += 5;
                        }
                        _ => return self.fail("an escape"),
                    }
                }
                Some(_) => return self.fail("a control character in a string"),
                None => return self.fail("the string's end"),
            }
        }
    }
}

/// The first byte from `at` that ends a run of plain string text: a quote, a backslash or a
/// control character (or the text's end). Eight bytes at a time: for each test, a byte's high
/// bit is set in the word when it may match, and the lowest set is always a true match.
fn start_of_special(bytes: &[u8], mut at: usize) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    while let Some(chunk) = bytes.get(at..at + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word);
        let zero_in = |v: u64| v.wrapping_sub(ONES) & !v & HIGHS;
        let quote = zero_in(x ^ (ONES * u64::from(b'"')));
        let backslash = zero_in(x ^ (ONES * u64::from(b'\\')));
        let control = x.wrapping_sub(ONES * 0x20) & !x & HIGHS;
        let found = quote | backslash | control;
        if found != 0 {
            return at + (found.trailing_zeros() / 8) as usize;
        }
        at += 8;
    }
    while let Some(&b) = bytes.get(at) {
        if b == b'"' || b == b'\\' || b < 0x20 {
            return at;
        }
        at += 1;
    }
    at
}

/// A resource (a JSON object) read in one pass: each member's key and value text, and every
/// `reference` string under it (offsets from the resource's first byte).
pub struct ResourceScan<'a> {
    pub text: &'a str,
    pub members: Vec<(Literal<'a>, &'a str)>,
    pub references: Vec<ReferenceAt>,
}

/// Reads the object at the cursor as a resource.
pub fn resource<'a>(s: &mut Scan<'a>) -> Result<ResourceScan<'a>> {
    let mut members = Vec::with_capacity(16);
    let mut references = Vec::new();
    let text = resource_in(s, &mut members, &mut references)?;
    Ok(ResourceScan {
        text,
        members,
        references,
    })
}

/// [`resource`] into lists the caller keeps (emptied first), so that reading a Bundle's
/// resources one after another makes no lists of their own: its text.
pub fn resource_in<'a>(
    s: &mut Scan<'a>,
    members: &mut Vec<(Literal<'a>, &'a str)>,
    references: &mut Vec<ReferenceAt>,
) -> Result<&'a str> {
    members.clear();
    references.clear();
    let start = s.at();
    {
        let mut found = Some(&mut *references);
        s.object(|s, key| {
            let from = s.at();
            s.value(&mut found)?;
            members.push((key, s.since(from)));
            Ok(())
        })?;
    }
    let text = s.since(start);
    for r in references.iter_mut() {
        r.start -= start;
        r.end -= start;
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::value::RawValue;

    fn valid(text: &str) -> bool {
        let mut s = Scan::new(text);
        s.ws();
        s.skip().and_then(|()| s.end()).is_ok()
    }

    fn serde_valid(text: &str) -> bool {
        serde_json::from_str::<&RawValue>(text).is_ok()
    }

    #[test]
    fn reads_what_json_allows_and_refuses_what_it_does_not() {
        for ok in [
            r#"{}"#,
            r#" { "a" : [ 1 , -0.5e+3 , true , false , null , "x\"\\\/\b\f\n\r\t\u00e9" ] } "#,
            r#""\ud800""#,
            r#"[[[]]]"#,
            "0",
            "-0",
            "1E9",
            r#""é and 😀""#,
        ] {
            assert!(valid(ok), "{ok}");
            assert!(serde_valid(ok), "{ok}");
        }
        for bad in [
            "",
            "{",
            r#"{"a":1,}"#,
            "[1,]",
            "01",
            "1.",
            "1e",
            "-",
            ".5",
            "+1",
            r#""\x""#,
            r#""\u12g4""#,
            "\"tab\there\"",
            "tru",
            "nul",
            r#"{"a" 1}"#,
            r#"{a:1}"#,
            "[1 2]",
            "{} {}",
            "NaN",
        ] {
            assert!(!valid(bad), "{bad}");
            assert!(!serde_valid(bad), "{bad}");
        }
    }

    #[test]
    fn nesting_stops_where_serde_json_s_trees_do() {
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        let first_refused = |ok: &dyn Fn(&str) -> bool| (1..300).find(|n| !ok(&deep(*n)));
        let tree = |t: &str| serde_json::from_str::<serde_json::Value>(t).is_ok();
        assert_eq!(first_refused(&valid), first_refused(&tree));
        assert_eq!(first_refused(&valid), Some(128));
        let deep_object = |n: usize| format!("{}1{}", r#"{"a":"#.repeat(n), "}".repeat(n));
        assert!(valid(&deep_object(127)) && !valid(&deep_object(128)));
    }

    #[test]
    fn finds_a_resource_s_members_and_every_reference_under_it() {
        let text = r#"{"resourceType":"Observation","subject":{"reference":"Patient/1"},
            "performer":[{"reference":"Practitioner/2","display":"x"}],
            "note":[{"text":"reference"}],"reference":5,
            "extension":[{"valueReference":{"re\u0066erence":"Organization/3"}}],
            "contained":[{"reference":{"reference":"Location/4"}}]}"#;
        let mut s = Scan::new(text);
        let r = resource(&mut s).unwrap();
        let keys: Vec<&str> = r.members.iter().map(|(k, _)| k.inner).collect();
        assert_eq!(
            keys,
            [
                "resourceType",
                "subject",
                "performer",
                "note",
                "reference",
                "extension",
                "contained"
            ]
        );
        assert_eq!(r.members[1].1, r#"{"reference":"Patient/1"}"#);
        let found: Vec<&str> = r
            .references
            .iter()
            .map(|f| &r.text[f.start..f.end])
            .collect();
        assert_eq!(
            found,
            [
                r#""Patient/1""#,
                r#""Practitioner/2""#,
                r#""Organization/3""#,
                r#""Location/4""#
            ]
        );
    }

    #[test]
    fn the_plain_text_search_finds_each_special_byte_wherever_it_lies() {
        for len in 0..20 {
            for (special, at) in [(b'"', 0), (b'\\', 3), (0x1f, 7), (b'"', 8), (b'\n', 19)] {
                let mut bytes = vec![b'a'; len];
                bytes.extend("é".as_bytes());
                if at < bytes.len() {
                    bytes[at] = special;
                    assert_eq!(start_of_special(&bytes, 0), at);
                } else {
                    assert_eq!(start_of_special(&bytes, 0), bytes.len());
                }
            }
        }
    }

    /// JSON text of any shape, with whitespace between its tokens.
    fn json_text() -> impl Strategy<Value = String> {
        let ws = prop::sample::select(vec!["", " ", "\n\t", "\r\n  "]);
        let leaf = prop_oneof![
            Just("null".to_owned()),
            Just("true".to_owned()),
            Just("false".to_owned()),
            any::<i64>().prop_map(|n| n.to_string()),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| serde_json::to_string(&f).unwrap()),
            "[a-z\"\\\\/\u{1}\u{e9}\u{1F600} ]{0,12}"
                .prop_map(|s| serde_json::to_string(&s).unwrap()),
            Just(r#""\u00e9\ud83d\ude00\/""#.to_owned()),
            Just(r#""reference""#.to_owned()),
            prop::sample::select(vec![
                "1.50",
                "1E2",
                "-0",
                "-0.0",
                "0",
                "-1",
                "123456789012345678",
                "1234567890123456789",
                "-123456789012345678",
                "100000000000000000000",
                "0.0000001",
                "2.5e-3",
                "1e400",
            ])
            .prop_map(str::to_owned),
        ];
        leaf.prop_recursive(4, 48, 6, move |inner| {
            let ws = ws.clone();
            prop_oneof![
                (prop::collection::vec((inner.clone(), ws.clone()), 0..6)).prop_map(|v| {
                    let parts: Vec<String> =
                        v.into_iter().map(|(x, w)| format!("{w}{x}{w}")).collect();
                    format!("[{}]", parts.join(","))
                }),
                (prop::collection::vec(
                    (
                        prop::sample::select(vec![
                            "reference",
                            "a",
                            "re\\u0066erence",
                            "subject",
                            ""
                        ]),
                        inner,
                        ws
                    ),
                    0..6
                ))
                .prop_map(|v| {
                    let parts: Vec<String> = v
                        .into_iter()
                        .map(|(k, x, w)| format!("{w}\"{k}\"{w}:{w}{x}"))
                        .collect();
                    format!("{{{}}}", parts.join(","))
                }),
            ]
        })
    }

    /// Text with escapes of every kind, valid or not, and what a literal may not hold.
    fn escaped_text() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            "[a-zé😀 ]{0,4}",
            prop::sample::select(vec![
                "\\\"",
                "\\\\",
                "\\/",
                "\\b",
                "\\f",
                "\\n",
                "\\r",
                "\\t",
                "\\x",
                "\\",
                "\"",
                "\u{1}",
                "\u{1f}",
                "\\u",
                "\\u00",
                "\\u00e9",
                "\\u00E9",
                "\\u0000",
                "\\ud83d",
                "\\ude00",
                "\\ud83d\\ude00",
                "\\uD83D\\uDE00",
                "\\ud83d\\u0041",
                "\\udbff\\udfff",
                "\\ud800\\ud800",
                "\\u12g4",
            ])
            .prop_map(str::to_owned),
            (0u32..0x10000).prop_map(|u| format!("\\u{u:04x}")),
        ];
        prop::collection::vec(piece, 0..8).prop_map(|p| p.concat())
    }

    proptest! {
        /// Escapes resolve as serde_json resolves them, and a text serde_json refuses as a
        /// string's inside is refused.
        #[test]
        fn unescapes_as_serde_json_does(inner in escaped_text()) {
            let theirs = serde_json::from_str::<String>(&format!("\"{inner}\"")).ok();
            prop_assert_eq!(unescape(&inner), theirs, "{:?}", inner);
        }

        /// Canonical JSON written from the text equals the tree's: keys sorted at every depth,
        /// a repeated key's last value kept, strings and numbers spelt as serde_json spells them.
        #[test]
        fn canonical_text_is_the_tree_s(text in json_text()) {
            let mut out = String::new();
            let ours = crate::fhir::item::write_canonical_text(&text, &mut out).map(|()| out);
            let theirs = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .map(|v| crate::fhir::canonical_json(&v));
            prop_assert_eq!(ours, theirs, "{}", text);
        }

        /// The scanner accepts a text exactly when serde_json does, on JSON of any shape and on
        /// that JSON with a byte removed, doubled or replaced.
        #[test]
        fn accepts_exactly_what_serde_json_accepts(
            text in json_text(),
            cut in any::<prop::sample::Index>(),
            how in 0u8..4,
            with in prop::sample::select(vec!["", "\"", "\\", ",", "}", "]", "{", "[", "0", "-", ".", "e", "\u{1}", " ", ":"]),
        ) {
            prop_assert!(valid(&text), "{}", text);
            let mut mangled = text.clone();
            if !mangled.is_empty() {
                let mut at = cut.index(mangled.len());
                while !mangled.is_char_boundary(at) { at -= 1; }
                let ch = mangled[at..].chars().next().map_or(0, char::len_utf8);
                match how {
                    0 => { mangled.replace_range(at..at + ch, ""); }
                    1 => { let c = mangled[at..at + ch].to_owned(); mangled.insert_str(at, &c); }
                    2 => { mangled.replace_range(at..at + ch, with); }
                    _ => { mangled.insert_str(at, with); }
                }
            }
            prop_assert_eq!(valid(&mangled), serde_valid(&mangled), "{}", mangled);
        }

        /// A resource's members and references are those serde_json's raw values find.
        #[test]
        fn a_resource_s_members_and_references_are_serde_json_s(
            first in json_text(),
            second in json_text(),
        ) {
            let text = format!(r#"{{"resourceType":"Observation", "a":{first},"reference" :{second}}}"#);
            let mut s = Scan::new(&text);
            let scanned = resource(&mut s).unwrap();
            let ours: Vec<(String, String)> = scanned
                .members
                .iter()
                .map(|(k, v)| (unescape(k.inner).unwrap_or_default(), (*v).to_owned()))
                .collect();
            let theirs = crate::fhir::item::raw_members(&text).unwrap();
            prop_assert_eq!(ours, theirs);
            let ours: Vec<String> = scanned
                .references
                .iter()
                .map(|f| serde_json::from_str::<String>(&scanned.text[f.start..f.end]).unwrap())
                .collect();
            // Under each member (a top-level `reference` is a member, not a reference).
            let theirs: Vec<String> = scanned
                .members
                .iter()
                .flat_map(|(_, v)| crate::fhir::item::references_in(v))
                .collect();
            prop_assert_eq!(ours, theirs);
        }
    }
}
