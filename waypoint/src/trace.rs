//! W3C Trace Context: each request leaves the waypoint with a
//! `traceparent`. A valid incoming one keeps its trace id and flags and
//! gets a new parent id (the waypoint's own span); a missing or malformed
//! one is replaced by a new trace.

use std::fmt::Write as _;

use http::{HeaderMap, HeaderValue};

/// The header's name.
pub const TRACEPARENT: &str = "traceparent";

/// The trace a request belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceContext {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// The waypoint's span: 16 lowercase hex digits.
    pub span_id: String,
    /// The flags byte, 2 hex digits (`01`: sampled).
    pub flags: String,
    /// Whether the request came without a valid `traceparent`.
    pub started_here: bool,
}

impl TraceContext {
    /// The context for a request with `headers`: continued, or new.
    #[must_use]
    pub fn continue_or_start(headers: &HeaderMap) -> Self {
        let span_id = random_hex(8);
        match headers
            .get(TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .and_then(parse)
        {
            Some((trace_id, flags)) => Self {
                trace_id,
                span_id,
                flags,
                started_here: false,
            },
            None => Self {
                trace_id: random_hex(16),
                span_id,
                flags: "01".to_owned(),
                started_here: true,
            },
        }
    }

    /// Writes the `traceparent` the backend sees.
    pub fn inject(&self, headers: &mut HeaderMap) {
        let value = format!("00-{}-{}-{}", self.trace_id, self.span_id, self.flags);
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(TRACEPARENT, value);
        }
    }
}

/// The trace id and flags of a valid version-00 `traceparent`.
fn parse(value: &str) -> Option<(String, String)> {
    let mut parts = value.trim().split('-');
    let (version, trace_id, parent_id, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let valid = hex(version, 2)
        && version != "ff"
        && (version != "00" || parts.next().is_none())
        && hex(trace_id, 32)
        && trace_id.bytes().any(|b| b != b'0')
        && hex(parent_id, 16)
        && parent_id.bytes().any(|b| b != b'0')
        && hex(flags, 2);
    valid.then(|| (trace_id.to_owned(), flags.to_owned()))
}

/// `bytes` random bytes as lowercase hex, never all zero.
fn random_hex(bytes: usize) -> String {
    loop {
        let text = (0..bytes).fold(String::with_capacity(bytes * 2), |mut text, _| {
            let _ = write!(text, "{:02x}", fastrand::u8(..));
            text
        });
        if text.bytes().any(|b| b != b'0') {
            return text;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continues_a_valid_trace_and_starts_one_otherwise() {
        let mut headers = HeaderMap::new();
        headers.insert(
            TRACEPARENT,
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        let context = TraceContext::continue_or_start(&headers);
        assert_eq!(context.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(!context.started_here);
        assert_ne!(context.span_id, "00f067aa0ba902b7");
        let mut out = HeaderMap::new();
        context.inject(&mut out);
        let written = out[TRACEPARENT].to_str().unwrap();
        assert!(written.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(written.ends_with("-01"));

        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "garbage",
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(TRACEPARENT, HeaderValue::from_static(bad));
            let context = TraceContext::continue_or_start(&headers);
            assert!(context.started_here, "{bad}");
            assert_eq!(context.trace_id.len(), 32);
        }
        assert!(TraceContext::continue_or_start(&HeaderMap::new()).started_here);
    }
}
