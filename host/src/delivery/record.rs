//! What the delivery engine stores about an asynchronous invocation.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use ferry_triggers::cloudevents::{CloudEvent, Invalid};

use crate::model::{DeliveryMode, RetryPolicy};

/// Where an invocation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Waiting for its first attempt or a retry, or running one.
    Pending,
    /// An attempt runs in this process now: status documents only, never stored.
    Running,
    /// An attempt succeeded; the result is kept.
    Succeeded,
    /// A fire-and-forget invocation that failed, or was lost when the host stopped.
    Failed,
    /// A store-and-forward invocation with no retry left; kept until replayed or purged.
    DeadLettered,
}

impl Status {
    /// Whether the invocation has ended: no attempt will run any more.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Status::Succeeded | Status::Failed | Status::DeadLettered
        )
    }

    /// The name used in status documents and the `ferry-outcome` header.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Running => "running",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::DeadLettered => "dead_lettered",
        }
    }
}

/// Where a callback stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallbackStatus {
    /// Not delivered yet; an attempt is due.
    Pending,
    /// The receiver answered 2xx.
    Delivered,
    /// Given up without retrying (the receiver answered 410 Gone, or the URL was refused).
    Failed,
    /// Every attempt failed; listed with the dead letters.
    DeadLettered,
}

/// Bytes as base64 in JSON.
pub mod b64 {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes the bytes as a base64 string.
    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }
    /// Reads the bytes back from a base64 string.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(serde::de::Error::custom)
    }
}

/// Whether a header carries a credential, by its name.
pub fn is_credential(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    matches!(
        n.as_str(),
        "authorization" | "proxy-authorization" | "cookie" | "set-cookie"
    ) || [
        "token",
        "secret",
        "api-key",
        "apikey",
        "password",
        "signature",
        "session",
    ]
    .iter()
    .any(|word| n.contains(word))
}

/// One header, its value as raw bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header(pub String, #[serde(with = "b64")] pub Vec<u8>);

/// What to run: the stored request or event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Payload {
    /// An HTTP request for an HTTP function, replayed into the component.
    Http {
        /// The request method, like `POST`.
        method: String,
        /// Path and query.
        path: String,
        /// Every header in request order.
        headers: Vec<Header>,
        /// The whole request body.
        #[serde(with = "b64")]
        body: Vec<u8>,
    },
    /// A CloudEvent for an event function.
    Event {
        /// The event as it arrived.
        event: StoredEvent,
    },
}

impl Payload {
    /// The payload as the store keeps it: `meta length: u32 LE | meta (JSON) | body`, where the
    /// meta is the payload without its body, so a request body is kept as its raw bytes.
    pub fn to_stored(&self) -> Vec<u8> {
        let (meta, body) = self.stored_parts();
        let mut out = Vec::with_capacity(4 + meta.len() + body.len());
        let _ = Self::write_parts(&mut out, &meta, body);
        out
    }

    /// Writes the stored form from its [`Payload::stored_parts`] (to a file, without assembling
    /// it in memory first).
    pub fn write_parts(
        out: &mut impl std::io::Write,
        meta: &[u8],
        body: &[u8],
    ) -> std::io::Result<()> {
        out.write_all(&(meta.len() as u32).to_le_bytes())?;
        out.write_all(meta)?;
        out.write_all(body)
    }

    /// The meta (JSON) and the body of the stored form.
    pub fn stored_parts(&self) -> (Vec<u8>, &[u8]) {
        match self {
            Payload::Http {
                method,
                path,
                headers,
                body,
            } => {
                let meta = Payload::Http {
                    method: method.clone(),
                    path: path.clone(),
                    headers: headers.clone(),
                    body: Vec::new(),
                };
                (serde_json::to_vec(&meta).unwrap_or_default(), body)
            }
            Payload::Event { .. } => (serde_json::to_vec(self).unwrap_or_default(), &[]),
        }
    }

    /// The payload from [`Payload::to_stored`]'s form.
    pub fn from_stored(bytes: &[u8]) -> anyhow::Result<Payload> {
        let (len, rest) = bytes
            .split_first_chunk::<4>()
            .ok_or_else(|| anyhow::anyhow!("a stored payload is cut short"))?;
        let len = u32::from_le_bytes(*len) as usize;
        let (meta, body) = (rest.get(..len), rest.get(len..));
        let (Some(meta), Some(body)) = (meta, body) else {
            anyhow::bail!("a stored payload is cut short");
        };
        let mut payload: Payload = serde_json::from_slice(meta)?;
        if let Payload::Http { body: b, .. } = &mut payload {
            *b = body.to_vec();
        }
        Ok(payload)
    }

    /// The payload as JSON for people: an event as its JSON event format (an object).
    ///
    /// Credentials in a stored request's headers (`Authorization`, `Cookie`, API keys, tokens,
    /// signatures) are shown as `"(redacted)"`: they stay stored, because a replay needs them,
    /// but no status, dead-letter view or log shows them.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        match self {
            Payload::Event { event } => {
                v["event"] = serde_json::from_str(&event.0).unwrap_or(serde_json::Value::Null);
            }
            Payload::Http { headers, .. } => {
                for (i, Header(name, _)) in headers.iter().enumerate() {
                    if is_credential(name) {
                        v["headers"][i][1] = serde_json::Value::from("(redacted)");
                    }
                }
            }
        }
        v
    }
}

/// A CloudEvent as the exact text of its JSON event format, so its data keeps every byte. Stored
/// as a JSON string; records written before as a JSON object are read too.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent(String);

impl StoredEvent {
    /// Stores an event in the JSON event format.
    pub fn new(event: &CloudEvent) -> Self {
        // The JSON event format is UTF-8 JSON: data that is not text is written as base64.
        StoredEvent(String::from_utf8_lossy(&event.to_structured()).into_owned())
    }

    /// The event again, validated like any incoming one.
    pub fn event(&self) -> Result<CloudEvent, Invalid> {
        CloudEvent::from_structured(self.0.as_bytes())
    }
}

impl Serialize for StoredEvent {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for StoredEvent {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(StoredEvent(match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(text) => text,
            object => object.to_string(),
        }))
    }
}

/// One attempt in an invocation's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    /// 1 for the first attempt.
    pub number: u32,
    /// When it started (ms since the epoch).
    pub started_ms: u64,
    /// How long it ran.
    pub duration_ms: u64,
    /// Why it failed; None when it succeeded.
    pub error: Option<String>,
}

/// Delivery state of the result to a callback URL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Callback {
    /// Where the status document is POSTed.
    pub url: String,
    /// Where the delivery stands.
    pub status: CallbackStatus,
    /// Delivery attempts so far.
    pub attempts: u32,
    /// Why the latest attempt failed.
    pub last_error: Option<String>,
    /// When the next attempt is due (ms since the epoch), while pending.
    pub due_ms: Option<u64>,
}

impl Callback {
    /// A callback to `url`, not yet attempted.
    pub fn new(url: String) -> Self {
        Callback {
            url,
            status: CallbackStatus::Pending,
            attempts: 0,
            last_error: None,
            due_ms: None,
        }
    }
}

/// An asynchronous invocation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Invocation {
    /// A UUIDv7 in simple form, so ids sort by submit time.
    pub id: String,
    /// The name of the function it runs.
    pub function: String,
    /// The delivery guarantee it was submitted with.
    pub mode: DeliveryMode,
    /// Where it stands (never [`Status::Running`]: that is not stored).
    pub status: Status,
    /// Attempts started so far; one cut short by shutdown does not count.
    pub attempts: u32,
    /// When it was submitted (ms since the epoch).
    pub created_ms: u64,
    /// When it last changed (ms since the epoch); retention counts from here.
    pub updated_ms: u64,
    /// When the next attempt is due (ms since the epoch), while pending or running.
    pub due_ms: Option<u64>,
    /// Its retry policy, fixed at submit time.
    pub policy: RetryPolicy,
    /// What each attempt runs. The store keeps it apart from the record (written once, read
    /// only to run or show it), so records read back from the store hold None: ask the store
    /// for the payload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Payload>,
    /// The result: for HTTP functions `{status, headers, body}`, for event functions the
    /// result event (structured JSON) or null.
    pub result: Option<serde_json::Value>,
    /// Why the latest attempt failed, or why the invocation was lost; None once it succeeds.
    pub error: Option<String>,
    /// Every attempt so far, oldest first.
    pub history: Vec<Attempt>,
    /// Where the final status document goes, if the caller asked for it.
    pub callback: Option<Callback>,
    /// The key, scoped to the function, under which a repeated submit finds this invocation.
    pub idempotency_key: Option<String>,
    /// The new invocation that a replay of this dead letter made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replayed_as: Option<String>,
    /// What submitted it, and the trace its attempts and callback belong to.
    #[serde(default, skip_serializing_if = "Origin::is_empty")]
    pub origin: Origin,
}

/// Where an invocation came from: the trigger and the submit's span (W3C trace context).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// `http`, `webhook`, `poll`, `schedule` or `nats` (None in records of older versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<String>,
    /// The `traceparent` naming the submit as the parent of every attempt and the callback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// The caller's `tracestate`, passed on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
}

impl Origin {
    fn is_empty(&self) -> bool {
        self == &Origin::default()
    }

    /// The trigger, as a metrics label.
    pub fn trigger_label(&self) -> &'static str {
        match self.trigger.as_deref() {
            Some("http") => "http",
            Some("webhook") => "webhook",
            Some("poll") => "poll",
            Some("schedule") => "schedule",
            Some("nats") => "nats",
            _ => "unknown",
        }
    }

    /// The trace id (32 hex digits) for log records; empty when none was kept.
    pub fn trace_id(&self) -> String {
        self.traceparent
            .as_deref()
            .and_then(|t| crate::trace::parse(t.as_bytes()))
            .map(|(trace, _, _)| format!("{trace:032x}"))
            .unwrap_or_default()
    }

    /// A new span in the submit's trace (an attempt's, or a callback's).
    pub fn child_span(&self) -> crate::trace::TraceContext {
        crate::trace::TraceContext::continue_or_start(
            self.traceparent.as_deref().map(str::as_bytes),
            self.tracestate.as_deref().map(str::as_bytes),
        )
    }
}

impl Invocation {
    /// The record without its payload (which is cloned only if it is needed).
    pub fn without_payload(&self) -> Invocation {
        Invocation {
            id: self.id.clone(),
            function: self.function.clone(),
            mode: self.mode,
            status: self.status,
            attempts: self.attempts,
            created_ms: self.created_ms,
            updated_ms: self.updated_ms,
            due_ms: self.due_ms,
            policy: self.policy,
            payload: None,
            result: self.result.clone(),
            error: self.error.clone(),
            history: self.history.clone(),
            callback: self.callback.clone(),
            idempotency_key: self.idempotency_key.clone(),
            replayed_as: self.replayed_as.clone(),
            origin: self.origin.clone(),
        }
    }

    /// A fire-and-forget invocation that a graceful stop kept for the next start: it never
    /// started (a fire-and-forget invocation has a due time only then).
    pub fn handed_back(&self) -> bool {
        self.mode == DeliveryMode::FireAndForget
            && self.status == Status::Pending
            && self.attempts == 0
            && self.due_ms.is_some()
    }

    /// Makes it pending with its next attempt due at `due_ms`.
    pub fn due_at(&mut self, due_ms: u64) {
        self.status = Status::Pending;
        self.due_ms = Some(due_ms);
    }

    /// Whether it is a dead letter: dead-lettered (and not replayed since), or its callback is.
    pub fn is_dead_letter(&self) -> bool {
        (self.status == Status::DeadLettered && self.replayed_as.is_none())
            || self
                .callback
                .as_ref()
                .is_some_and(|c| c.status == CallbackStatus::DeadLettered)
    }

    /// Whether its callback is still to be delivered.
    pub fn callback_pending(&self) -> bool {
        self.callback
            .as_ref()
            .is_some_and(|c| c.status == CallbackStatus::Pending)
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// RFC 3339 text of a millisecond timestamp.
pub fn rfc3339(ms: u64) -> String {
    let t = UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_headers_are_recognised_by_name() {
        for h in [
            "Authorization",
            "cookie",
            "X-Api-Key",
            "x-auth-token",
            "X-Hub-Signature-256",
            "x-session-id",
        ] {
            assert!(is_credential(h), "{h}");
        }
        for h in ["content-type", "accept", "x-request-id", "user-agent"] {
            assert!(!is_credential(h), "{h}");
        }
    }
}
