//! Ferry's plain data: what a function is (world, limits, delivery settings, its stored record)
//! and the small value types that travel between modules. No behaviour lives here beyond
//! defaults and parsing of values, so every other module can depend on this one without cycles.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// The two kinds of function, told apart by what the component exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum World {
    /// Exports `wasi:http/incoming-handler` (world `wasi:http/proxy`).
    Http,
    /// Exports `ferry:function/handler`.
    Event,
}

impl std::fmt::Display for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            World::Http => "http",
            World::Event => "event",
        })
    }
}

/// Per-function sandbox limits.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Limits {
    /// Linear memory ceiling in bytes.
    pub memory: u64,
    /// Wall-clock time an invocation may take.
    #[serde(with = "duration_text")]
    pub timeout: Duration,
    /// Instances of this function that may run at once.
    pub concurrency: u32,
    /// Largest request body accepted, in bytes.
    pub max_body: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory: 128 << 20,
            timeout: Duration::from_secs(30),
            concurrency: 64,
            max_body: 16 << 20,
        }
    }
}

/// Durations as human-readable text ("30s", "1m 30s") in JSON.
pub mod duration_text {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
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

/// The delivery guarantee of one invocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeliveryMode {
    /// Held in memory only; at most once.
    FireAndForget,
    /// Durable before the 202; retried; at least once.
    StoreAndForward,
}

impl DeliveryMode {
    pub fn parse(s: &str) -> Option<DeliveryMode> {
        match s.trim().to_ascii_lowercase().as_str() {
            "fire-and-forget" => Some(DeliveryMode::FireAndForget),
            "store-and-forward" => Some(DeliveryMode::StoreAndForward),
            _ => None,
        }
    }
}

/// How asynchronous invocations of a function are delivered by default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliverySettings {
    pub mode: DeliveryMode,
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

/// One NATS trigger, resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NatsTriggerSpec {
    pub subject: String,
    pub queue: String,
    pub reply: Option<String>,
    pub dead_letter: String,
    /// `binary`, `structured`, or None for the input's mode.
    pub format: Option<String>,
    /// JetStream stream for a durable consumer (at least once); None: core NATS.
    #[serde(default)]
    pub stream: Option<String>,
}

/// What Ferry remembers about one deployed function version.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FunctionRecord {
    pub name: String,
    /// Increases by one on every deploy of the same name.
    pub version: u64,
    pub world: World,
    /// sha256 of the component bytes, lower-case hex.
    pub digest: String,
    pub size: u64,
    /// Manifest HTTP routes, in addition to `/{name}` and below.
    pub routes: Vec<String>,
    pub limits: Limits,
    /// Values exposed to the guest as environment variables.
    pub config: Vec<(String, String)>,
    /// Hosts the function may reach with outbound HTTP.
    pub outbound: Vec<String>,
    /// Defaults for asynchronous invocations.
    #[serde(default)]
    pub delivery: DeliverySettings,
    /// NATS triggers (event functions only).
    #[serde(default)]
    pub nats: Vec<NatsTriggerSpec>,
    /// RFC 3339 time of this version's deploy.
    pub created: String,
}

impl FunctionRecord {
    pub fn now() -> String {
        humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
    }
}

/// A size like "128MiB" or "64MB" in bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    s.parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|_| format!("{s:?} is not a size like \"128MiB\""))
}
