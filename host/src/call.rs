//! One invocation as the host sees it while it runs: its id, its function, its trace context and
//! the trigger that caused it. The guest's output, its outbound requests and the host's log
//! lines about it all carry these.

use std::sync::Arc;

use crate::trace::TraceContext;

/// An invocation under way.
#[derive(Debug, Clone)]
pub struct Call {
    /// The invocation id: an asynchronous invocation's own, or a new one for a call a caller
    /// waits for (UUIDv7, simple form, like asynchronous ones).
    pub id: Arc<str>,
    /// The function's name.
    pub function: Arc<str>,
    /// Its span in the caller's trace (or a new trace).
    pub trace: TraceContext,
    /// What caused it: `http`, `nats`, `webhook`, `poll` or `schedule`.
    pub trigger: &'static str,
    /// The id as a header value (`ferry-invocation-id`), made once.
    pub header: Option<http::HeaderValue>,
}

impl Call {
    /// A call of `function` with a new invocation id.
    pub fn new(function: &str, trace: TraceContext, trigger: &'static str) -> Self {
        Self::with_id(new_id().into(), function, trace, trigger)
    }

    /// A call with a known invocation id.
    pub fn with_id(
        id: Arc<str>,
        function: &str,
        trace: TraceContext,
        trigger: &'static str,
    ) -> Self {
        Self {
            header: http::HeaderValue::from_str(&id).ok(),
            id,
            function: function.into(),
            trace,
            trigger,
        }
    }
}

/// A new invocation id: a UUIDv7 (so ids sort by time) in simple form, its random bits from the
/// thread's fast generator (ids are names, not secrets; no system call per request).
pub fn new_id() -> String {
    let ms = crate::delivery::record::now_ms();
    let random: [u8; 10] = fastrand::u128(..).to_le_bytes()[..10]
        .try_into()
        .unwrap_or_default();
    uuid::Builder::from_unix_timestamp_millis(ms, &random)
        .into_uuid()
        .simple()
        .to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_version_7_and_distinct() {
        let a = super::new_id();
        let b = super::new_id();
        assert_ne!(a, b);
        let u = uuid::Uuid::parse_str(&a).unwrap();
        assert_eq!(u.get_version_num(), 7);
        assert_eq!(a.len(), 32);
    }
}
