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
    pub fn new(function: Arc<str>, trace: TraceContext, trigger: &'static str) -> Self {
        let mut buf = [0u8; 32];
        let id = new_id_into(&mut buf);
        Self {
            header: http::HeaderValue::from_bytes(id.as_bytes()).ok(),
            id: id.into(),
            function,
            trace,
            trigger,
        }
    }

    /// A call with a known invocation id.
    pub fn with_id(
        id: Arc<str>,
        function: Arc<str>,
        trace: TraceContext,
        trigger: &'static str,
    ) -> Self {
        Self {
            header: http::HeaderValue::from_str(&id).ok(),
            id,
            function,
            trace,
            trigger,
        }
    }
}

/// A new invocation id: a UUIDv7 (so ids sort by time) in simple form, its random bits from the
/// thread's fast generator (ids are names, not secrets; no system call per request).
pub fn new_id() -> String {
    new_id_into(&mut [0u8; 32]).to_string()
}

/// [`new_id`] written into `buf`, without allocating.
fn new_id_into(buf: &mut [u8; 32]) -> &str {
    let ms = crate::delivery::record::now_ms();
    let random = fastrand::u128(..).to_le_bytes();
    let mut bytes = [0u8; 10];
    bytes.copy_from_slice(&random[..10]);
    uuid::Builder::from_unix_timestamp_millis(ms, &bytes)
        .into_uuid()
        .simple()
        .encode_lower(buf)
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
