//! W3C Trace Context (`traceparent`, https://www.w3.org/TR/trace-context/): an incoming trace
//! is continued, or a new one started; each request is a span of its own, whose id the peers'
//! requests name as their parent; the trace id is written into the audit records of every
//! region a query reaches, beside the request id. Pure.

/// The header's name.
pub const TRACEPARENT: &str = "traceparent";

/// A position in a trace: the trace, this span, and the flags (bit 0: sampled).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub flags: u8,
}

fn hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N
        || !text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

impl TraceContext {
    /// Reads a `traceparent` value. Version `00` must have exactly four fields; a later version
    /// is read by its first four (as the specification asks); `ff`, malformed fields, an
    /// all-zero trace or parent id: `None` (a new trace is started).
    pub fn parse(value: &str) -> Option<TraceContext> {
        let value = value.trim();
        let mut parts = value.split('-');
        let version = hex::<1>(parts.next()?)?[0];
        let trace_id = hex::<16>(parts.next()?)?;
        let span_id = hex::<8>(parts.next()?)?;
        let flags = hex::<1>(parts.next()?)?[0];
        let rest = parts.next();
        match version {
            0xff => return None,
            0 if rest.is_some() => return None,
            _ => {}
        }
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(TraceContext {
            trace_id,
            span_id,
            flags,
        })
    }

    /// A new trace (sampled), with `random` supplying the ids.
    pub fn start(random: [u8; 24]) -> TraceContext {
        let mut trace_id = [0u8; 16];
        let mut span_id = [0u8; 8];
        trace_id.copy_from_slice(&random[..16]);
        span_id.copy_from_slice(&random[16..]);
        // Never all zero (that would be invalid).
        trace_id[15] |= 1;
        span_id[7] |= 1;
        TraceContext {
            trace_id,
            span_id,
            flags: 1,
        }
    }

    /// A span of this trace, child of this one, with `random` as its id.
    pub fn child(&self, mut random: [u8; 8]) -> TraceContext {
        random[7] |= 1;
        TraceContext {
            span_id: random,
            ..*self
        }
    }

    /// The request's span: a child of the incoming `traceparent` when it is valid, else the
    /// first span of a new trace.
    pub fn for_request(incoming: Option<&str>, random: [u8; 24]) -> TraceContext {
        match incoming.and_then(TraceContext::parse) {
            Some(parent) => {
                let mut span = [0u8; 8];
                span.copy_from_slice(&random[16..]);
                parent.child(span)
            }
            None => TraceContext::start(random),
        }
    }

    /// The trace id, as 32 hexadecimal digits.
    pub fn trace_id_hex(&self) -> String {
        crate::audit::hex(&self.trace_id)
    }

    /// The `traceparent` value that names this span as the parent.
    pub fn header(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            crate::audit::hex(&self.trace_id),
            crate::audit::hex(&self.span_id),
            self.flags
        )
    }
}

/// 24 random bytes for [`TraceContext::for_request`].
pub fn random_ids() -> [u8; 24] {
    let mut out = [0u8; 24];
    let a = uuid::Uuid::new_v4();
    let b = uuid::Uuid::new_v4();
    out[..16].copy_from_slice(a.as_bytes());
    out[16..].copy_from_slice(&b.as_bytes()[..8]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_specification_s_example_is_read_and_written_back() {
        let t = TraceContext::parse(EXAMPLE).unwrap();
        assert_eq!(t.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.flags, 1);
        assert_eq!(t.header(), EXAMPLE);
    }

    #[test]
    fn malformed_or_invalid_values_start_a_new_trace() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad}");
        }
        // A later version is read by its first four fields.
        assert!(
            TraceContext::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x")
                .is_some()
        );
    }

    #[test]
    fn a_request_continues_the_trace_it_came_with_as_a_span_of_its_own() {
        let random = [7u8; 24];
        let own = TraceContext::for_request(Some(EXAMPLE), random);
        let parent = TraceContext::parse(EXAMPLE).unwrap();
        assert_eq!(own.trace_id, parent.trace_id);
        assert_ne!(own.span_id, parent.span_id);
        assert_eq!(own.flags, parent.flags);
        let fresh = TraceContext::for_request(Some("junk"), [0u8; 24]);
        assert!(
            TraceContext::parse(&fresh.header()).is_some(),
            "never all zero"
        );
        assert_eq!(fresh.flags, 1);
    }
}

/// A random span id (for a span made inside a request, such as a call to a peer).
pub fn random_span_id() -> [u8; 8] {
    let ids = random_ids();
    let mut id = [0u8; 8];
    id.copy_from_slice(&ids[16..]);
    id
}

tokio::task_local! {
    /// The `traceparent` the request being served sends on, for the calls it makes through
    /// interfaces that carry no request (the record server's client, under the record cache).
    pub static OUTGOING: String;
}

/// The `traceparent` of the request being served, when one is set for this task.
pub fn outgoing() -> Option<String> {
    OUTGOING
        .try_with(Clone::clone)
        .ok()
        .filter(|t| !t.is_empty())
}
