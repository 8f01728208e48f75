//! A JSON text held as the bytes the gateway wrote and, between them, runs of the text a
//! region sent, kept by reference to that text rather than copied. Pure: no I/O.
//!
//! An entry the merge writes is mostly its resource as it arrived: a few things change (its
//! id, `meta`, rewritten references, the patient reference) and the entry's envelope is added
//! around it. Copying every entry whole into a text of its own held a second copy of every
//! answer for as long as the view lived (48.7 MiB of entries for a 34.7 MiB answer). A
//! [`Spliced`] holds only what was written and where the runs of the answer go; the answer's
//! text is already held (by the answer cache and the items), and the bytes are joined only as
//! a body is sent.

use std::borrow::Cow;
use std::sync::Arc;

use super::item::Source;

/// A text written around runs of a [`Source`]. Cheap to clone (shared).
#[derive(Clone)]
pub struct Spliced(Arc<Parts>);

struct Parts {
    /// The text the runs are taken from (none when everything was written).
    source: Option<Source>,
    /// A second text runs are taken from: what many entries share (see [`Writer::sharing`]).
    shared: Option<Source>,
    /// The bytes written, in order; the runs go between them.
    own: Box<[u8]>,
    /// Inline for the few an entry has (one allocation fewer an entry).
    runs: smallvec::SmallVec<[Run; 6]>,
    /// Bytes in all.
    len: usize,
}

/// A run of the source (or, with [`SHARED`] set in `at`, of the shared text): it goes after
/// the first `own_at` written bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    own_at: u32,
    at: u32,
    len: u32,
}

/// The bit of [`Run::at`] that says the run is of the shared text (answers are far smaller
/// than 2 GiB: the client refuses any larger than its limit).
const SHARED: u32 = 1 << 31;

impl Spliced {
    /// A text written whole.
    pub fn text(text: String) -> Spliced {
        let len = text.len();
        Spliced(Arc::new(Parts {
            source: None,
            shared: None,
            own: text.into_bytes().into_boxed_slice(),
            runs: smallvec::SmallVec::new(),
            len,
        }))
    }

    /// How many bytes the text has.
    pub fn len(&self) -> usize {
        self.0.len
    }

    pub fn is_empty(&self) -> bool {
        self.0.len == 0
    }

    /// Bytes this text holds of its own (what it written and where its runs go), beside the
    /// source it shares.
    pub fn held(&self) -> usize {
        self.0.own.len() + self.0.runs.len() * std::mem::size_of::<Run>()
    }

    /// Appends the text to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let parts = &*self.0;
        if parts.runs.is_empty() {
            out.extend_from_slice(&parts.own);
            return;
        }
        fn bytes(text: &Option<Source>) -> &[u8] {
            text.as_deref().map_or(&[], |t| t.as_bytes())
        }
        let (source, shared) = (bytes(&parts.source), bytes(&parts.shared));
        out.reserve(parts.len);
        let mut written = 0;
        for run in parts.runs.iter() {
            let own_at = run.own_at as usize;
            out.extend_from_slice(&parts.own[written..own_at]);
            written = own_at;
            let (from, at) = match run.at & SHARED {
                0 => (source, run.at),
                _ => (shared, run.at & !SHARED),
            };
            out.extend_from_slice(&from[at as usize..(at + run.len) as usize]);
        }
        out.extend_from_slice(&parts.own[written..]);
    }

    /// The text in one piece (borrowed when it was written whole).
    pub fn as_text(&self) -> Cow<'_, str> {
        if self.0.runs.is_empty() {
            // Written from `&str`s and serde_json only: UTF-8.
            return Cow::Borrowed(std::str::from_utf8(&self.0.own).unwrap_or_default());
        }
        let mut out = Vec::with_capacity(self.0.len);
        self.write_to(&mut out);
        // Runs and written bytes each end on a JSON token's edge: joined, UTF-8.
        Cow::Owned(String::from_utf8(out).unwrap_or_default())
    }
}

impl From<String> for Spliced {
    fn from(text: String) -> Spliced {
        Spliced::text(text)
    }
}

impl From<&str> for Spliced {
    fn from(text: &str) -> Spliced {
        Spliced::text(text.to_owned())
    }
}

impl PartialEq for Spliced {
    fn eq(&self, other: &Spliced) -> bool {
        self.len() == other.len() && self.as_text() == other.as_text()
    }
}

impl Eq for Spliced {}

/// Its size and shape only: the text is a patient's record.
impl std::fmt::Debug for Spliced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spliced")
            .field("len", &self.0.len)
            .field("written", &self.0.own.len())
            .field("runs", &self.0.runs.len())
            .finish()
    }
}

/// Writes a [`Spliced`]: bytes written go to [`Writer::own`] (or [`Writer::push`]), text of
/// the source is taken by [`Writer::copy`] as a run. Adjacent runs join, and bytes pushed that
/// the source has right after the last run lengthen it, so a resource whose unchanged members
/// sit side by side in its answer is a few runs, not one per member.
pub struct Writer<'s> {
    source: Option<&'s Source>,
    shared: Option<&'s Source>,
    own: Vec<u8>,
    runs: Vec<Run>,
    len: usize,
}

/// Writers' buffers, kept by each thread between the entries it writes: a merge writes every
/// entry through a writer, and growing two buffers and then shrinking them to the text each
/// time was a tenth of its allocations. The text finished is copied out at its length.
struct Scratch {
    own: Vec<u8>,
    runs: Vec<Run>,
}

thread_local! {
    static SCRATCH: std::cell::Cell<Option<Scratch>> = const { std::cell::Cell::new(None) };
}

/// Buffers larger than this are let go rather than kept (a rare large resource should not
/// hold its size in every thread that wrote one).
const SCRATCH_KEPT: usize = 64 * 1024;

fn take_scratch() -> Scratch {
    SCRATCH
        .try_with(std::cell::Cell::take)
        .ok()
        .flatten()
        .unwrap_or_else(|| Scratch {
            own: Vec::with_capacity(256),
            runs: Vec::with_capacity(8),
        })
}

fn keep_scratch(mut own: Vec<u8>, mut runs: Vec<Run>) {
    if own.capacity() > SCRATCH_KEPT || runs.capacity() * std::mem::size_of::<Run>() > SCRATCH_KEPT
    {
        return;
    }
    own.clear();
    runs.clear();
    let _ = SCRATCH.try_with(|s| s.set(Some(Scratch { own, runs })));
}

impl Drop for Writer<'_> {
    fn drop(&mut self) {
        keep_scratch(
            std::mem::take(&mut self.own),
            std::mem::take(&mut self.runs),
        );
    }
}

impl<'s> Writer<'s> {
    /// A writer taking runs of `source` (none: everything is written).
    pub fn new(source: Option<&'s Source>) -> Writer<'s> {
        let Scratch { own, runs } = take_scratch();
        Writer {
            source,
            shared: None,
            own,
            runs,
            len: 0,
        }
    }

    /// Runs may also be taken of `shared`: a text written once for many entries (what the
    /// gateway puts in every entry of a region: its tag, the merged Patient's reference).
    pub fn sharing(mut self, shared: &'s Source) -> Writer<'s> {
        self.shared = Some(shared);
        self
    }

    /// The written bytes, to write more to (what is written here is not a run).
    pub fn own(&mut self) -> &mut Vec<u8> {
        &mut self.own
    }

    /// Writes `bytes`: as a longer last run when its text goes on with them.
    pub fn push(&mut self, bytes: &[u8]) {
        if let Some(last) = self.runs.last_mut()
            && last.own_at as usize == self.own.len()
        {
            let (from, at) = match last.at & SHARED {
                0 => (self.source, last.at),
                _ => (self.shared, last.at & !SHARED),
            };
            let end = (at + last.len) as usize;
            if from.is_some_and(|t| t.as_bytes()[end..].starts_with(bytes)) {
                last.len += bytes.len() as u32;
                self.len += bytes.len();
                return;
            }
        }
        self.own.extend_from_slice(bytes);
    }

    /// Takes `part` as a run when it lies in the source or the shared text (else writes it).
    pub fn copy(&mut self, part: &str) {
        let within = |text: Option<&Source>| {
            let text = text?;
            (part.as_ptr() as usize)
                .checked_sub(text.as_ptr() as usize)
                .filter(|at| at + part.len() <= text.len())
                // A run lies wholly below the bit that marks the shared text.
                .filter(|at| at + part.len() < SHARED as usize)
                .map(|at| at as u32)
        };
        let Some(at) = within(self.source).or_else(|| within(self.shared).map(|at| at | SHARED))
        else {
            self.own.extend_from_slice(part.as_bytes());
            return;
        };
        if part.is_empty() {
            return;
        }
        self.len += part.len();
        if let Some(last) = self.runs.last_mut()
            && last.own_at as usize == self.own.len()
            && last.at + last.len == at
        {
            last.len += part.len() as u32;
            return;
        }
        self.runs.push(Run {
            own_at: self.own.len() as u32,
            at,
            len: part.len() as u32,
        });
    }

    /// The bytes written, of a writer that took no runs (one without a source).
    pub fn into_written(mut self) -> Vec<u8> {
        debug_assert!(self.runs.is_empty(), "a writer with runs");
        std::mem::take(&mut self.own)
    }

    /// The text written.
    pub fn finish(self) -> Spliced {
        let len = self.len + self.own.len();
        // A text is held only when a run was taken of it.
        let shared_runs = self.runs.iter().any(|r| r.at & SHARED != 0);
        let source_runs = self.runs.iter().any(|r| r.at & SHARED == 0);
        Spliced(Arc::new(Parts {
            source: self.source.filter(|_| source_runs).cloned(),
            shared: self.shared.filter(|_| shared_runs).cloned(),
            own: self.own.as_slice().into(),
            runs: smallvec::SmallVec::from_slice(&self.runs),
            len,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(text: &str) -> Source {
        Arc::new(text.to_owned())
    }

    #[test]
    fn runs_and_written_bytes_join_in_order() {
        let s = source(r#"{"a":1,"b":"Patient/1","c":[2]}"#);
        let mut w = Writer::new(Some(&s));
        w.own().extend_from_slice(b"{\"entry\":");
        w.copy(&s[..11]);
        w.own().extend_from_slice(b"\"https://gw/Patient/9\"");
        w.copy(&s[22..]);
        w.push(b"}");
        let text = w.finish();
        assert_eq!(
            text.as_text(),
            r#"{"entry":{"a":1,"b":"https://gw/Patient/9","c":[2]}}"#
        );
        assert_eq!(text.len(), text.as_text().len());
        let mut out = b"x".to_vec();
        text.write_to(&mut out);
        assert_eq!(&out[1..], text.as_text().as_bytes());
    }

    #[test]
    fn adjacent_runs_and_pushed_bytes_the_source_has_make_one_run() {
        let s = source(r#"{"a":1,"b":2}"#);
        let mut w = Writer::new(Some(&s));
        w.copy(&s[..1]);
        w.push(b"\"");
        w.copy(&s[2..3]);
        w.push(b"\":");
        w.copy(&s[5..6]);
        w.push(b",");
        w.push(b"\"b\":2}");
        let text = w.finish();
        assert_eq!(text.as_text(), &s[..]);
        assert_eq!(text.0.runs.len(), 1, "{text:?}");
        assert_eq!(text.held(), std::mem::size_of::<Run>());
    }

    #[test]
    fn pushed_bytes_the_source_lacks_are_written() {
        let s = source(r#"{"a":1}"#);
        let mut w = Writer::new(Some(&s));
        w.copy(&s[..6]);
        w.push(b",\"z\":0");
        w.push(b"}");
        let text = w.finish();
        assert_eq!(text.as_text(), r#"{"a":1,"z":0}"#);
        assert_eq!(text.0.runs.len(), 1);
        assert_eq!(&*text.0.own, b",\"z\":0}");
    }

    #[test]
    fn text_not_in_the_source_is_written_not_run() {
        let s = source(r#"{"a":1}"#);
        let elsewhere = String::from(r#"{"a":1}"#);
        let mut w = Writer::new(Some(&s));
        w.copy(&elsewhere);
        let text = w.finish();
        assert_eq!(text.as_text(), elsewhere);
        assert_eq!(text.0.runs.len(), 0);
        assert!(text.0.source.is_none(), "no run: the source is not held");
    }

    #[test]
    fn a_whole_text_compares_equal_to_the_same_text_spliced() {
        let s = source(r#"{"a":1}"#);
        let mut w = Writer::new(Some(&s));
        w.copy(&s);
        assert_eq!(w.finish(), Spliced::from(r#"{"a":1}"#));
        assert_ne!(Spliced::from("{}"), Spliced::from(r#"{"a":1}"#));
    }

    #[test]
    fn runs_of_the_shared_text_join_with_the_sources() {
        let s = source(r#"{"a":1,"subject":{"reference":"Patient/1"}}"#);
        let shared = source(r#"{"reference":"https://gw/Patient/9"}"#);
        let mut w = Writer::new(Some(&s)).sharing(&shared);
        w.copy(&s[..17]);
        w.copy(&shared);
        w.push(b"}");
        let text = w.finish();
        assert_eq!(
            text.as_text(),
            r#"{"a":1,"subject":{"reference":"https://gw/Patient/9"}}"#
        );
        assert_eq!(text.0.runs.len(), 2, "{text:?}");
        assert_eq!(text.0.own.len(), 1, "only the closing brace is written");
        // A writer that took nothing of a text does not hold it.
        let mut w = Writer::new(Some(&s)).sharing(&shared);
        w.copy(&shared);
        let text = w.finish();
        assert!(text.0.source.is_none() && text.0.shared.is_some());
    }

    /// Writers on one thread reuse the last one's buffers: each starts empty, whether the one
    /// before it finished, gave its bytes away or was dropped, and a finished text keeps its own.
    #[test]
    fn a_writer_after_another_starts_empty() {
        let s = source(r#"{"a":1}"#);
        let mut w = Writer::new(Some(&s));
        w.own().extend_from_slice(b"[");
        w.copy(&s[..]);
        w.push(b"]");
        let first = w.finish();
        let mut w = Writer::new(None);
        w.own().extend_from_slice(b"\"given away\"");
        assert_eq!(w.into_written(), b"\"given away\"");
        let mut w = Writer::new(Some(&s));
        w.own().extend_from_slice(b"dropped");
        drop(w);
        let mut w = Writer::new(Some(&s));
        w.copy(&s[1..6]);
        let last = w.finish();
        assert_eq!(last.as_text(), r#""a":1"#);
        assert_eq!(first.as_text(), r#"[{"a":1}]"#);
    }

    #[test]
    fn debug_shows_no_text() {
        let text = Spliced::from(r#"{"name":"Jane Doe","nhs":"9000000009"}"#);
        let shown = format!("{text:?}");
        assert!(
            !shown.contains("Jane") && !shown.contains("9000000009"),
            "{shown}"
        );
    }
}
