//! Ferry's plain data: what a function is (world, limits, delivery settings, its stored record)
//! and the small value types that travel between modules. No behaviour lives here beyond
//! defaults and parsing of values, so every other module can depend on this one without cycles.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// The two kinds of function, told apart by what the component exports (the WIT world), and
/// the delivery guarantees: the triggers' words, which the host speaks too.
pub use ferry_triggers::{DeliveryMode, FunctionKind as World};

/// Per-function sandbox limits.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Limits {
    /// Linear memory ceiling in bytes.
    pub memory: u64,
    /// Wall-clock time an invocation may take.
    #[serde(with = "duration_text")]
    pub timeout: Duration,
    /// Time an invocation may spend running WebAssembly (None: only the timeout bounds it).
    #[serde(
        default,
        with = "opt_duration_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub cpu: Option<Duration>,
    /// Instances of this function that may run at once.
    pub concurrency: u32,
    /// Callers that may wait for an instance when all are busy; more get 503 at once.
    #[serde(default = "defaults::queue")]
    pub queue: u32,
    /// How long a caller may wait for an instance before it gets 503.
    #[serde(default = "defaults::queue_timeout", with = "duration_text")]
    pub queue_timeout: Duration,
    /// Largest request body accepted, in bytes.
    pub max_body: u64,
    /// Largest response body a function may send, in bytes.
    #[serde(default = "defaults::max_response")]
    pub max_response: u64,
    /// Outbound HTTP requests one invocation may send.
    #[serde(default = "defaults::outbound_requests")]
    pub outbound_requests: u32,
}

/// Defaults of limits added after records were first stored.
mod defaults {
    use std::time::Duration;

    pub(super) fn queue() -> u32 {
        super::Limits::default().queue
    }
    pub(super) fn queue_timeout() -> Duration {
        super::Limits::default().queue_timeout
    }
    pub(super) fn max_response() -> u64 {
        super::Limits::default().max_response
    }
    pub(super) fn outbound_requests() -> u32 {
        super::Limits::default().outbound_requests
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory: 128 << 20,
            timeout: Duration::from_secs(30),
            cpu: None,
            concurrency: 64,
            queue: 256,
            queue_timeout: Duration::from_secs(5),
            max_body: 16 << 20,
            max_response: 64 << 20,
            outbound_requests: 32,
        }
    }
}

/// Optional durations as text, like [`duration_text`].
pub mod opt_duration_text {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    /// Writes a duration as text like `1m 30s` (None is skipped by the field's attribute).
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::duration_text::serialize(d, s),
            None => s.serialize_none(),
        }
    }
    /// Reads an optional duration from text like `30s`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(s) => humantime::parse_duration(&s)
                .map(Some)
                .map_err(serde::de::Error::custom),
            None => Ok(None),
        }
    }
}

/// Durations as human-readable text ("30s", "1m 30s") in JSON.
pub mod duration_text {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    /// Writes a duration as text like `1m 30s`.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
    /// Reads a duration from text like `30s` or `1m 30s`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

/// When to try again, and when to stop.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// Ceiling of the first retry's delay.
    #[serde(with = "duration_text")]
    pub initial: Duration,
    /// Ceiling of any retry's delay.
    #[serde(with = "duration_text")]
    pub max: Duration,
    /// No retry starts later than this after the first submit.
    #[serde(with = "duration_text")]
    pub max_age: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 10,
            initial: Duration::from_secs(1),
            max: Duration::from_secs(600),
            max_age: Duration::from_secs(24 * 3600),
        }
    }
}

/// How asynchronous invocations of a function are delivered by default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliverySettings {
    /// The guarantee a submit gets when it does not name one (`Ferry-Delivery`).
    pub mode: DeliveryMode,
    /// Retries of store-and-forward invocations.
    pub retry: RetryPolicy,
    /// Signs callbacks for this function instead of the host-wide secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_secret: Option<String>,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        Self {
            mode: DeliveryMode::StoreAndForward,
            retry: RetryPolicy::default(),
            callback_secret: None,
        }
    }
}

/// What Ferry remembers about one deployed function version.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FunctionRecord {
    /// The function's name, unique on the host; it is served at `/{name}` and below.
    pub name: String,
    /// Increases by one on every deploy of the same name.
    pub version: u64,
    /// Whether it is an HTTP or an event function, from what the component exports.
    pub world: World,
    /// sha256 of the component bytes, lower-case hex.
    pub digest: String,
    /// Size of the component in bytes.
    pub size: u64,
    /// Its sandbox limits.
    pub limits: Limits,
    /// Values exposed to the guest as environment variables.
    pub config: Vec<(String, String)>,
    /// The names among `config` whose values are secret: never shown by the API or the CLI.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// Hosts the function may reach with outbound HTTP.
    pub outbound: Vec<String>,
    /// Defaults for asynchronous invocations.
    #[serde(default)]
    pub delivery: DeliverySettings,
    /// The `[[trigger.<kind>]]` sections by kind, as the manifest had them: each trigger reads
    /// its own.
    #[serde(default)]
    pub triggers: Triggers,
    /// RFC 3339 time of this version's deploy.
    pub created: String,
    /// Records written before triggers owned their sections kept HTTP routes and NATS triggers
    /// here; [`FunctionRecord::upgrade`] moves them into `triggers`.
    #[serde(default, skip_serializing)]
    routes: Vec<String>,
    #[serde(default, skip_serializing)]
    nats: Vec<serde_json::Map<String, serde_json::Value>>,
}

/// Trigger sections by kind.
pub type Triggers = BTreeMap<String, Vec<toml::Table>>;

/// A record's `created` for now.
fn created_now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

impl FunctionRecord {
    /// A new record; `created` is now.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: String,
        version: u64,
        world: World,
        digest: String,
        size: u64,
        limits: Limits,
        config: Vec<(String, String)>,
        outbound: Vec<String>,
        delivery: DeliverySettings,
        triggers: Triggers,
    ) -> Self {
        FunctionRecord {
            name,
            version,
            world,
            digest,
            size,
            limits,
            config,
            secrets: Vec::new(),
            outbound,
            delivery,
            triggers,
            created: created_now(),
            routes: Vec::new(),
            nats: Vec::new(),
        }
    }

    /// This record as a new version, created now (a rollback).
    pub fn as_version(&self, version: u64) -> Self {
        FunctionRecord {
            version,
            created: created_now(),
            ..self.clone()
        }
    }

    /// Moves the sections of an older record's `routes` and `nats` into `triggers`.
    pub fn upgrade(mut self) -> Self {
        for route in std::mem::take(&mut self.routes) {
            let mut t = toml::Table::new();
            t.insert("route".into(), route.into());
            self.triggers.entry("http".into()).or_default().push(t);
        }
        for old in std::mem::take(&mut self.nats) {
            // The resolved form had nulls for unset keys; a section has no such thing.
            let section: toml::Table = old
                .into_iter()
                .filter_map(|(k, v)| Some((k, toml::Value::from(v.as_str()?))))
                .collect();
            self.triggers
                .entry("nats".into())
                .or_default()
                .push(section);
        }
        self
    }

    /// The function as triggers see it.
    pub fn info(&self) -> ferry_triggers::FunctionInfo {
        ferry_triggers::FunctionInfo {
            name: self.name.clone(),
            version: self.version,
            kind: self.world,
            timeout: self.limits.timeout,
            max_body: self.limits.max_body,
            max_attempts: self.delivery.retry.max_attempts,
            backoff_initial: self.delivery.retry.initial,
            backoff_max: self.delivery.retry.max,
        }
    }
}

/// A size as people write it: `32 MiB`, `512 KiB`, `1.5 GiB`.
pub fn size_text(bytes: u64) -> String {
    for (unit, name) in [(1u64 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")] {
        if bytes >= unit && bytes.is_multiple_of(unit) {
            return format!("{} {name}", bytes / unit);
        }
    }
    bytesize::ByteSize(bytes).display().iec().to_string()
}

/// A size like "128MiB" or "64MB" in bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    s.parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|_| format!("{s:?} is not a size like \"128MiB\""))
}
