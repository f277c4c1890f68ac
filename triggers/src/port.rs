//! The one port from every trigger to the runtime, and the words it speaks: a function as
//! triggers see it ([`FunctionInfo`]), a submission for asynchronous delivery ([`Submission`]),
//! a trigger's sections of the deployed functions ([`Sections`]), and the small state record a
//! trigger may keep ([`StateKey`]). The host implements [`Runtime`]; a trigger uses nothing else.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::cloudevents::CloudEvent;
use crate::http::Body;

/// What a function exports, and so what it can be invoked with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FunctionKind {
    /// Exports `wasi:http/incoming-handler`: takes HTTP requests.
    Http,
    /// Exports `ferry:function/handler`: takes CloudEvents.
    Event,
}

impl std::fmt::Display for FunctionKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FunctionKind::Http => "http",
            FunctionKind::Event => "event",
        })
    }
}

/// The delivery guarantee of an asynchronous invocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeliveryMode {
    /// Held in memory only; at most once.
    FireAndForget,
    /// Durable before it is acknowledged; retried; at least once.
    StoreAndForward,
}

impl DeliveryMode {
    /// `fire-and-forget` or `store-and-forward` (any case, surrounding blanks ignored).
    pub fn parse(s: &str) -> Option<DeliveryMode> {
        match s.trim().to_ascii_lowercase().as_str() {
            "fire-and-forget" => Some(DeliveryMode::FireAndForget),
            "store-and-forward" => Some(DeliveryMode::StoreAndForward),
            _ => None,
        }
    }
}

/// The ceiling of the delay before retry `failed` (1 for the first retry): `initial` doubled
/// for each failure before it, at most `max`.
pub fn backoff(initial: Duration, max: Duration, failed: u32) -> Duration {
    let exp = failed.saturating_sub(1).min(31);
    initial.checked_mul(1u32 << exp).unwrap_or(max).min(max)
}

/// A function version as triggers see it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FunctionInfo {
    /// The function's name, unique on the host.
    pub name: String,
    /// Increases by one on every deploy of the same name.
    pub version: u64,
    /// Whether it takes HTTP requests or CloudEvents.
    pub kind: FunctionKind,
    /// How long one invocation may run.
    pub timeout: Duration,
    /// Largest request body the function accepts, in bytes.
    pub max_body: u64,
    /// Attempts in all for one event, the first included.
    pub max_attempts: u32,
    /// Delay before the first retry; doubles up to `backoff_max`.
    pub backoff_initial: Duration,
    /// Ceiling of any retry's delay.
    pub backoff_max: Duration,
}

/// The sections of one trigger kind (`[[trigger.<kind>]]`) of one deployed function. Every
/// deployed function is listed, with no sections when it has none of this kind.
#[derive(Debug, Clone, PartialEq)]
pub struct Sections {
    /// The deployed function version the sections belong to.
    pub function: FunctionInfo,
    /// Its `[[trigger.<kind>]]` tables, in manifest order, as the manifest had them.
    pub sections: Vec<toml::Table>,
}

/// What to run asynchronously.
#[derive(Debug, Clone)]
pub enum Payload {
    /// An HTTP request for an HTTP function.
    Http {
        /// The request method, like `POST`.
        method: String,
        /// Path and query.
        path: String,
        /// Every header in request order, its value as raw bytes.
        headers: Vec<(String, Vec<u8>)>,
        /// The whole request body.
        body: Bytes,
    },
    /// A CloudEvent for an event function.
    Event(CloudEvent),
}

/// An invocation handed to the delivery engine.
#[derive(Debug, Clone)]
pub struct Submission {
    /// None: the function's default.
    pub mode: Option<DeliveryMode>,
    /// Where the result is to be POSTed, signed.
    pub callback_url: Option<String>,
    /// Repeats with the same key (per function) return the first invocation; events without one
    /// use their `source` and `id`.
    pub idempotency_key: Option<String>,
    /// The request or event to run.
    pub payload: Payload,
    /// The trigger that submits it: `http`, `webhook`, `poll` or `schedule` (metrics, status).
    pub trigger: &'static str,
}

/// An accepted submission.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Accepted {
    /// The invocation's id.
    pub id: String,
    /// Where its status document is served on the public listener.
    pub status_url: String,
    /// Its status now, as in status documents (`pending`, or further on for a repeated key).
    pub status: String,
    /// The delivery guarantee it was accepted with.
    pub mode: DeliveryMode,
    /// False when an idempotency key matched an earlier invocation, which is returned.
    #[serde(skip)]
    pub new: bool,
}

/// Why a submission was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SubmitFailure {
    /// The caller's mistake (a callback URL that may not be reached, say).
    #[error("{0}")]
    BadRequest(String),
    /// The fire-and-forget queue is full: try again shortly.
    #[error("the fire-and-forget queue is full; retry later")]
    QueueFull,
    /// The store failed or did not become durable in time: nothing was accepted (503).
    #[error("{0}")]
    Unavailable(String),
    /// The store's disk is full: nothing was accepted (507).
    #[error("{0}")]
    StorageFull(String),
}

/// Why an event function did not produce a result.
#[derive(Debug, Clone)]
pub struct EventFailure {
    /// Whether trying again may help (a retryable error, a trap, a timeout).
    pub retryable: bool,
    /// What went wrong, naming the function.
    pub message: String,
}

/// Where a trigger keeps one small state record: per trigger kind, per function, per key (a
/// poll cursor, an ETag, the last time a schedule fired).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StateKey {
    /// The trigger kind that owns the record, like `nats`.
    pub kind: &'static str,
    /// The function the record belongs to.
    pub function: String,
    /// The trigger's own name for the record.
    pub key: String,
}

/// Everything a trigger may ask of the runtime.
pub trait Runtime: Send + Sync + 'static {
    /// A deployed function version. A trigger holds it for as long as one invocation needs it:
    /// an invocation finishes on the version it started with, whatever is deployed meanwhile.
    type Function: Clone + Send + Sync + 'static;

    /// The current version of a function, if it is deployed.
    fn function(&self, name: &str) -> Option<Self::Function>;

    /// What a function version is.
    fn info(function: &Self::Function) -> &FunctionInfo;

    /// Serves one HTTP request with an HTTP function (or a CloudEvent POSTed to an event
    /// function). Failures become error responses; this never fails.
    fn invoke_http(
        &self,
        function: Self::Function,
        request: Request<Incoming>,
    ) -> impl Future<Output = Response<Body>> + Send;

    /// Runs an event function on one event now.
    fn invoke_event(
        &self,
        function: Self::Function,
        event: CloudEvent,
    ) -> impl Future<Output = Result<Option<CloudEvent>, EventFailure>> + Send;

    /// Hands an invocation to the delivery engine. A store-and-forward submission is durable
    /// when this returns `Ok`.
    fn submit(
        &self,
        function: Self::Function,
        submission: Submission,
    ) -> impl Future<Output = Result<Accepted, SubmitFailure>> + Send;

    /// The status document of an invocation, waiting up to `wait` for it to finish; None when
    /// there is no such invocation.
    fn invocation(
        &self,
        id: &str,
        wait: Option<Duration>,
    ) -> impl Future<Output = anyhow::Result<Option<serde_json::Value>>> + Send;

    /// A trigger's state record, if it has written one.
    fn state(&self, key: &StateKey) -> anyhow::Result<Option<Vec<u8>>>;

    /// Writes a trigger's state record durably.
    fn put_state(&self, key: &StateKey, value: &[u8]) -> anyhow::Result<()>;

    /// Claims one occurrence (a schedule's slot, say) for this host among every host sharing
    /// the store: exactly one claimant wins while the claim lasts (`ttl`); a host alone always
    /// does.
    fn claim(&self, key: &StateKey, ttl: std::time::Duration) -> anyhow::Result<bool> {
        let _ = (key, ttl);
        Ok(true)
    }

    /// Reports a trigger's state for status pages (`/healthz`); the latest report wins.
    fn report(&self, kind: &'static str, status: serde_json::Value);

    /// Counts something a trigger saw, for the metrics: `trigger` is the trigger kind, `outcome`
    /// a fixed word (`received`, `acked`, `verified`, ...; see docs/operations.md).
    fn count(&self, trigger: &'static str, function: &str, outcome: &'static str) {
        let _ = (trigger, function, outcome);
    }

    /// The sections of `kind` of every deployed function; the receiver sees every change.
    fn sections(&self, kind: &'static str) -> watch::Receiver<Arc<[Sections]>>;

    /// An outbound GET for a trigger (a URL poll), under the host's outbound policy: private,
    /// loopback and link-local addresses are refused unless the operator allows the host, and
    /// every address is checked when it is connected to.
    fn fetch(&self, request: Fetch) -> impl Future<Output = Result<Fetched, String>> + Send;
}

/// An outbound GET of a trigger.
#[derive(Debug, Clone)]
pub struct Fetch {
    /// An http or https URL.
    pub url: String,
    /// Extra request headers (`If-None-Match`, say).
    pub headers: Vec<(String, String)>,
    /// The whole exchange must finish within this.
    pub timeout: Duration,
    /// Larger bodies are an error.
    pub max_bytes: u64,
}

/// The answer to a [`Fetch`].
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The HTTP status.
    pub status: u16,
    /// The response headers, names in lower case.
    pub headers: Vec<(String, String)>,
    /// The whole body.
    pub body: Bytes,
}

/// A configuration problem in a trigger section; `key` names it (`trigger.nats[0].subject`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{key}`: {message}")]
pub struct ConfigError {
    /// The manifest key at fault, like `trigger.nats[0].subject`.
    pub key: String,
    /// What is wrong with it.
    pub message: String,
}

impl ConfigError {
    /// An error about `key` of section `index` of `kind` (or the whole kind when `key` is empty).
    pub fn at(kind: &str, index: usize, key: &str, message: impl Into<String>) -> Self {
        let key = if key.is_empty() {
            format!("trigger.{kind}[{index}]")
        } else {
            format!("trigger.{kind}[{index}].{key}")
        };
        ConfigError {
            key,
            message: message.into(),
        }
    }
}

/// A trigger kind as the host registers it: its name in the manifest (`[[trigger.<name>]]`) and
/// how its sections are checked at deploy time.
pub struct TriggerKind {
    /// The kind's name: `[[trigger.<name>]]` in the manifest, and its key in stored records.
    pub name: &'static str,
    /// The kinds of function this trigger can invoke.
    pub accepts: &'static [FunctionKind],
    /// Checks one function's sections of this kind (typed, unknown keys refused), given the
    /// function's name.
    pub validate: fn(&str, &[toml::Table]) -> Result<(), ConfigError>,
    /// Checks every function's sections together, for what no one function can see alone (two
    /// functions claiming one route). The message says what collides.
    pub validate_all: fn(&[Sections]) -> Result<(), String>,
    /// What to tell a user whose host does not run this trigger.
    pub disabled_hint: &'static str,
}

/// A section of string values, for the triggers' unit tests.
#[cfg(test)]
pub(crate) fn section_of(pairs: &[(&str, &str)]) -> toml::Table {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), toml::Value::String(v.to_string())))
        .collect()
}

/// Parses one section into a trigger's typed configuration (`deny_unknown_fields`), naming the
/// key at fault.
pub fn parse_section<T: serde::de::DeserializeOwned>(
    kind: &str,
    index: usize,
    section: &toml::Table,
) -> Result<T, ConfigError> {
    T::deserialize(toml::Value::Table(section.clone())).map_err(|e| {
        // toml's messages name the field (`unknown field `subjet`, expected one of …`).
        ConfigError::at(kind, index, "", e.to_string().trim().to_string())
    })
}
