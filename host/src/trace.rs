//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>): what an invocation reads from
//! `traceparent`/`tracestate` (HTTP headers, or the CloudEvents distributed-tracing extension),
//! starts when they are absent or invalid, and passes on to the guest, to the guest's outbound
//! requests, to callbacks and to the events it publishes.
//!
//! Each invocation is one span: it keeps the caller's trace id, remembers the caller's span as
//! its parent, and gets a span id of its own, which is the parent everything downstream sees.

use ferry_triggers::cloudevents::{CloudEvent, ExtensionValue};

/// The trace context of one invocation (one span).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// The trace this span belongs to; never zero.
    pub trace_id: u128,
    /// This span; never zero.
    pub span_id: u64,
    /// The caller's span, when the context came in with the request or event.
    pub parent_id: Option<u64>,
    /// The trace flags (bit 0: sampled).
    pub flags: u8,
    /// The vendor state (`tracestate`) as it came, passed on unchanged.
    pub state: Option<String>,
}

fn nonzero_u64() -> u64 {
    loop {
        let v = fastrand::u64(..);
        if v != 0 {
            return v;
        }
    }
}

fn nonzero_u128() -> u128 {
    loop {
        let v = fastrand::u128(..);
        if v != 0 {
            return v;
        }
    }
}

/// Whether spans are exported, which sets the sampled flag of the traces Ferry starts.
static SAMPLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Marks the traces Ferry starts from now on as sampled (when spans are exported).
pub fn set_sampled(on: bool) {
    SAMPLED.store(on, std::sync::atomic::Ordering::Relaxed);
}

impl TraceContext {
    /// A new trace, with no parent.
    pub fn start() -> Self {
        Self {
            trace_id: nonzero_u128(),
            span_id: nonzero_u64(),
            parent_id: None,
            flags: u8::from(SAMPLED.load(std::sync::atomic::Ordering::Relaxed)),
            state: None,
        }
    }

    /// A span in the caller's trace, when `traceparent` is valid; otherwise a new trace (and
    /// the `tracestate`, which belongs to the invalid parent, is dropped, as the spec says).
    pub fn continue_or_start(traceparent: Option<&[u8]>, tracestate: Option<&[u8]>) -> Self {
        match traceparent.and_then(parse) {
            Some((trace_id, parent_id, flags)) => Self {
                trace_id,
                span_id: nonzero_u64(),
                parent_id: Some(parent_id),
                flags,
                state: tracestate
                    .and_then(|s| std::str::from_utf8(s).ok())
                    .map(str::trim)
                    .filter(|s| valid_state(s))
                    .map(String::from),
            },
            None => Self::start(),
        }
    }

    /// Reads `traceparent` and `tracestate` from HTTP headers.
    pub fn from_headers(headers: &http::HeaderMap) -> Self {
        Self::continue_or_start(
            headers.get("traceparent").map(|v| v.as_bytes()),
            headers.get("tracestate").map(|v| v.as_bytes()),
        )
    }

    /// The `traceparent` that names this span as the parent.
    pub fn traceparent(&self) -> String {
        String::from_utf8_lossy(&self.traceparent_bytes()).into_owned()
    }

    /// The `traceparent` as bytes, made without the formatting machinery (it is made for every
    /// request).
    fn traceparent_bytes(&self) -> [u8; 55] {
        let mut out = [b'-'; 55];
        out[..2].copy_from_slice(b"00");
        // The slices are exactly twice the bytes' length, so encoding cannot fail.
        let _ = hex::encode_to_slice(self.trace_id.to_be_bytes(), &mut out[3..35]);
        let _ = hex::encode_to_slice(self.span_id.to_be_bytes(), &mut out[36..52]);
        let _ = hex::encode_to_slice([self.flags], &mut out[53..55]);
        out
    }

    /// The trace id as 32 lowercase hex digits.
    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    /// The span id as 16 lowercase hex digits.
    pub fn span_id_hex(&self) -> String {
        format!("{:016x}", self.span_id)
    }

    /// Sets `traceparent` (and `tracestate`, when there is one) in `headers`, naming this span
    /// as the parent; replaces what was there.
    pub fn inject(&self, headers: &mut http::HeaderMap) {
        if let Ok(v) = http::HeaderValue::from_bytes(&self.traceparent_bytes()) {
            headers.insert("traceparent", v);
        }
        match self
            .state
            .as_deref()
            .and_then(|s| http::HeaderValue::try_from(s).ok())
        {
            Some(v) => {
                headers.insert("tracestate", v);
            }
            None => {
                headers.remove("tracestate");
            }
        }
    }
}

/// Whether a `tracestate` may be passed on: at most 512 characters of printable ASCII (the
/// spec's list members use nothing else), so it is always a valid header value. One that is
/// not is dropped, as the spec allows.
fn valid_state(s: &str) -> bool {
    !s.is_empty() && s.len() <= 512 && s.bytes().all(|b| (0x20..0x7f).contains(&b))
}

/// The CloudEvents distributed-tracing extension's attributes.
const EVENT_ATTRIBUTES: [&str; 2] = ["traceparent", "tracestate"];

fn extension<'a>(event: &'a CloudEvent, name: &str) -> Option<&'a [u8]> {
    event.extensions.iter().find_map(|(k, v)| match v {
        ExtensionValue::String(s) if k == name => Some(s.as_bytes()),
        _ => None,
    })
}

impl TraceContext {
    /// Reads the distributed-tracing extension of an event (or, when it has none, the HTTP
    /// headers it came with).
    pub fn from_event(event: &CloudEvent, headers: Option<&http::HeaderMap>) -> Self {
        match extension(event, "traceparent") {
            Some(parent) => Self::continue_or_start(Some(parent), extension(event, "tracestate")),
            None => headers.map_or_else(Self::start, Self::from_headers),
        }
    }

    /// Sets the distributed-tracing extension of `event` to name this span as the parent.
    pub fn inject_event(&self, event: &mut CloudEvent) {
        event
            .extensions
            .retain(|(k, _)| !EVENT_ATTRIBUTES.contains(&k.as_str()));
        event.extensions.push((
            "traceparent".into(),
            ExtensionValue::String(self.traceparent()),
        ));
        if let Some(state) = &self.state {
            event
                .extensions
                .push(("tracestate".into(), ExtensionValue::String(state.clone())));
        }
        event.extensions.sort_by(|a, b| a.0.cmp(&b.0));
    }

    /// Gives an event this function published the extension, unless it set one itself.
    pub fn inject_event_if_absent(&self, event: &mut CloudEvent) {
        if extension(event, "traceparent").is_none() {
            self.inject_event(event);
        }
    }
}

/// Parses a `traceparent`: `(trace id, parent id, flags)`, or None when it is invalid (bad
/// length or hex, uppercase, zero ids, version `ff`). Versions above `00` are read by their
/// first four fields, as the spec asks.
pub fn parse(value: &[u8]) -> Option<(u128, u64, u8)> {
    let value = std::str::from_utf8(value).ok()?.trim();
    // ASCII only: the fields below are cut by byte position.
    if value.len() < 55 || !value.is_ascii() {
        return None;
    }
    let (version, rest) = (&value[..2], &value[2..]);
    let version = hex_u8(version)?;
    if version == 0xff || (version == 0 && value.len() != 55) {
        return None;
    }
    if version > 0 && value.len() > 55 && value.as_bytes()[55] != b'-' {
        return None;
    }
    let b = rest.as_bytes();
    if b[0] != b'-' || b[33] != b'-' || b[50] != b'-' {
        return None;
    }
    let trace_id = hex_u128(&rest[1..33])?;
    let parent_id = hex_u64(&rest[34..50])?;
    let flags = hex_u8(&rest[51..53])?;
    (trace_id != 0 && parent_id != 0).then_some((trace_id, parent_id, flags))
}

fn lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn hex_u8(s: &str) -> Option<u8> {
    lower_hex(s)
        .then(|| u8::from_str_radix(s, 16).ok())
        .flatten()
}

fn hex_u64(s: &str) -> Option<u64> {
    lower_hex(s)
        .then(|| u64::from_str_radix(s, 16).ok())
        .flatten()
}

fn hex_u128(s: &str) -> Option<u128> {
    lower_hex(s)
        .then(|| u128::from_str_radix(s, 16).ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_parent_is_continued_with_a_span_of_our_own() {
        let t = TraceContext::continue_or_start(Some(GOOD.as_bytes()), Some(b"congo=t61rcWkgMzE"));
        assert_eq!(t.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.parent_id, Some(0x00f067aa0ba902b7));
        assert_ne!(t.span_id, 0x00f067aa0ba902b7);
        assert_eq!(t.flags, 1);
        assert_eq!(t.state.as_deref(), Some("congo=t61rcWkgMzE"));
        let out = t.traceparent();
        assert_eq!(out.len(), 55);
        assert!(out.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(out.ends_with("-01"));
        assert_eq!(parse(out.as_bytes()).map(|p| p.1), Some(t.span_id));
    }

    #[test]
    fn invalid_parents_start_a_new_trace_and_drop_the_state() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            assert_eq!(parse(bad.as_bytes()), None, "{bad}");
            let t = TraceContext::continue_or_start(Some(bad.as_bytes()), Some(b"a=b"));
            assert_eq!(t.parent_id, None, "{bad}");
            assert_eq!(t.state, None, "{bad}");
            assert_ne!(t.trace_id, 0);
        }
        // Not ASCII: refused, never cut inside a character.
        let odd = format!("0\u{e9}{}", &GOOD[2..GOOD.len() - 1]);
        assert!(odd.len() >= 55);
        assert_eq!(parse(odd.as_bytes()), None);
        let t = TraceContext::continue_or_start(Some(GOOD.as_bytes()), Some("a=\u{1}".as_bytes()));
        assert_eq!(t.state, None, "a state with control characters is dropped");
        // A later version may append fields.
        let v1 = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-ever";
        assert!(parse(v1.as_bytes()).is_some());
    }

    #[test]
    fn inject_replaces_what_the_headers_had() {
        let mut h = http::HeaderMap::new();
        h.insert("traceparent", http::HeaderValue::from_static(GOOD));
        h.insert("tracestate", http::HeaderValue::from_static("x=y"));
        let t = TraceContext::start();
        t.inject(&mut h);
        assert_eq!(h["traceparent"], t.traceparent().as_str());
        assert!(h.get("tracestate").is_none());
        assert_eq!(TraceContext::from_headers(&h).trace_id, t.trace_id);
    }
}
