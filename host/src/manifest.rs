//! The function manifest, `ferry.toml`: one function's name, routes, limits, outbound allow-list
//! and configuration. Parsed strictly: an unknown key or a bad value is an error naming it.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::model::{parse_size, DeliveryMode, DeliverySettings, Limits, NatsTriggerSpec};

/// A manifest as written by the user.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    /// Path of the component, relative to the manifest; used by the CLI only.
    pub component: Option<String>,
    #[serde(default)]
    pub limits: LimitsSection,
    #[serde(default)]
    pub delivery: DeliverySection,
    #[serde(default)]
    pub trigger: Triggers,
    #[serde(default)]
    pub outbound: Outbound,
    #[serde(default)]
    pub config: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    pub memory: Option<String>,
    pub timeout: Option<String>,
    pub concurrency: Option<u32>,
    pub max_body: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliverySection {
    pub mode: Option<String>,
    pub max_attempts: Option<u32>,
    pub backoff: Option<BackoffSection>,
    pub max_age: Option<String>,
    /// `whsec_...`, or `env:NAME` to read it from the host's environment.
    pub callback_secret: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackoffSection {
    pub initial: Option<String>,
    pub max: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Triggers {
    #[serde(default)]
    pub http: Vec<HttpTrigger>,
    #[serde(default)]
    pub nats: Vec<NatsTriggerSection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsTriggerSection {
    pub subject: String,
    pub queue: Option<String>,
    pub reply: Option<String>,
    pub stream: Option<String>,
    pub dead_letter: Option<String>,
    /// `binary` or `structured`: the mode of result events (default: the input's).
    pub format: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpTrigger {
    pub route: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outbound {
    #[serde(default)]
    pub allow: Vec<String>,
}

/// A manifest checked and resolved into what the runtime needs.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionSpec {
    pub name: String,
    pub routes: Vec<String>,
    pub limits: Limits,
    pub config: Vec<(String, String)>,
    pub outbound: Vec<String>,
    pub delivery: DeliverySettings,
    pub nats: Vec<NatsTriggerSpec>,
}

/// A manifest problem, naming the key at fault.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ManifestError {
    #[error("invalid manifest: {0}")]
    Syntax(String),
    #[error("invalid manifest: `{key}`: {message}")]
    Value { key: String, message: String },
}

fn bad(key: impl Into<String>, message: impl Into<String>) -> ManifestError {
    ManifestError::Value {
        key: key.into(),
        message: message.into(),
    }
}

/// The host-side ceilings that manifest values must stay within.
#[derive(Debug, Clone)]
pub struct Ceilings {
    pub max_memory: u64,
    pub max_concurrency: u32,
    pub max_timeout: Duration,
}

impl Manifest {
    pub fn parse(text: &str) -> Result<Self, ManifestError> {
        toml::from_str(text).map_err(|e| ManifestError::Syntax(e.to_string().trim().to_string()))
    }

    /// A manifest with defaults for a function deployed without one.
    pub fn with_name(name: &str, routes: &[String]) -> Self {
        Manifest {
            name: name.to_string(),
            trigger: Triggers {
                http: routes
                    .iter()
                    .map(|r| HttpTrigger { route: r.clone() })
                    .collect(),
                nats: Vec::new(),
            },
            ..Default::default()
        }
    }

    /// Checks every value and resolves defaults.
    pub fn resolve(&self, ceilings: &Ceilings) -> Result<FunctionSpec, ManifestError> {
        validate_name(&self.name).map_err(|m| bad("name", m))?;
        let mut limits = Limits::default();
        if let Some(m) = &self.limits.memory {
            let bytes = parse_size(m).map_err(|e| bad("limits.memory", e))?;
            if bytes < 1 << 20 {
                return Err(bad("limits.memory", "must be at least 1MiB"));
            }
            if bytes > ceilings.max_memory {
                return Err(bad(
                    "limits.memory",
                    format!(
                        "{m} is above this host's ceiling of {} (ferry serve --max-memory)",
                        bytesize::ByteSize(ceilings.max_memory).display().iec()
                    ),
                ));
            }
            limits.memory = bytes;
        }
        limits.memory = limits.memory.min(ceilings.max_memory);
        if let Some(t) = &self.limits.timeout {
            let d = humantime::parse_duration(t).map_err(|e| {
                bad(
                    "limits.timeout",
                    format!("{t:?} is not a duration like \"30s\": {e}"),
                )
            })?;
            if d.is_zero() || d > ceilings.max_timeout {
                return Err(bad(
                    "limits.timeout",
                    format!(
                        "must be above 0 and at most {}",
                        humantime::format_duration(ceilings.max_timeout)
                    ),
                ));
            }
            limits.timeout = d;
        }
        if let Some(c) = self.limits.concurrency {
            if c == 0 || c > ceilings.max_concurrency {
                return Err(bad(
                    "limits.concurrency",
                    format!(
                        "must be between 1 and {} (ferry serve --max-instances)",
                        ceilings.max_concurrency
                    ),
                ));
            }
            limits.concurrency = c;
        }
        limits.concurrency = limits.concurrency.min(ceilings.max_concurrency);
        if let Some(b) = &self.limits.max_body {
            limits.max_body = parse_size(b).map_err(|e| bad("limits.max_body", e))?;
        }
        let mut routes = Vec::new();
        for (i, t) in self.trigger.http.iter().enumerate() {
            validate_route(&t.route).map_err(|m| bad(format!("trigger.http[{i}].route"), m))?;
            if !routes.contains(&t.route) {
                routes.push(t.route.clone());
            }
        }
        for (i, host) in self.outbound.allow.iter().enumerate() {
            if host.is_empty() || host.contains(['/', ':', ' ']) {
                return Err(bad(
                    format!("outbound.allow[{i}]"),
                    format!("{host:?} is not a host name (write \"api.example.com\", no scheme or path)"),
                ));
            }
        }
        for key in self.config.keys() {
            let ok = !key.is_empty()
                && !key.starts_with(|c: char| c.is_ascii_digit())
                && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ok {
                return Err(bad(
                    format!("config.{key}"),
                    "config keys become environment variables: use letters, digits and _",
                ));
            }
        }
        let delivery = self.delivery.resolve()?;
        let mut nats = Vec::new();
        for (i, t) in self.trigger.nats.iter().enumerate() {
            let key = |k: &str| format!("trigger.nats[{i}].{k}");
            ferry_triggers::nats::validate_subject(&t.subject, true)
                .map_err(|m| bad(key("subject"), m))?;
            if let Some(stream) = &t.stream {
                let ok = !stream.is_empty() && !stream.contains(['.', '*', '>', ' ', '\t']);
                if !ok {
                    return Err(bad(
                        key("stream"),
                        format!("{stream:?} is not a stream name (no spaces, `.`, `*` or `>`)"),
                    ));
                }
            }
            for (k, v) in [("reply", &t.reply), ("dead_letter", &t.dead_letter)] {
                if let Some(v) = v {
                    ferry_triggers::nats::validate_subject(v, false).map_err(|m| bad(key(k), m))?;
                }
            }
            if let Some(reply) = &t.reply {
                if ferry_triggers::nats::subject_matches(&t.subject, reply) {
                    return Err(bad(
                        key("reply"),
                        format!("{reply:?} matches the trigger's own subject {:?}: results would feed back into the function", t.subject),
                    ));
                }
            }
            if let Some(f) = &t.format {
                if f != "binary" && f != "structured" {
                    return Err(bad(
                        key("format"),
                        format!("{f:?}: use \"binary\" or \"structured\""),
                    ));
                }
            }
            let queue = t.queue.clone().unwrap_or_else(|| self.name.clone());
            if queue.is_empty() || queue.contains(char::is_whitespace) {
                return Err(bad(key("queue"), "a queue group name has no spaces"));
            }
            nats.push(NatsTriggerSpec {
                subject: t.subject.clone(),
                queue,
                reply: t.reply.clone(),
                dead_letter: t
                    .dead_letter
                    .clone()
                    .unwrap_or_else(|| format!("ferry.deadletter.{}", self.name)),
                format: t.format.clone(),
                stream: t.stream.clone(),
            });
        }
        Ok(FunctionSpec {
            nats,
            delivery,
            name: self.name.clone(),
            routes,
            limits,
            config: self
                .config
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            outbound: self
                .outbound
                .allow
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
        })
    }
}

impl DeliverySection {
    fn resolve(&self) -> Result<DeliverySettings, ManifestError> {
        let mut out = DeliverySettings::default();
        if let Some(m) = &self.mode {
            out.mode = DeliveryMode::parse(m).ok_or_else(|| {
                bad(
                    "delivery.mode",
                    format!("{m:?}: use \"store-and-forward\" or \"fire-and-forget\""),
                )
            })?;
        }
        if let Some(n) = self.max_attempts {
            if n == 0 || n > 1000 {
                return Err(bad("delivery.max_attempts", "must be between 1 and 1000"));
            }
            out.retry.max_attempts = n;
        }
        let duration = |key: &str, v: &str| {
            humantime::parse_duration(v)
                .map_err(|e| bad(key, format!("{v:?} is not a duration like \"30s\": {e}")))
        };
        if let Some(b) = &self.backoff {
            if let Some(v) = &b.initial {
                out.retry.initial = duration("delivery.backoff.initial", v)?;
            }
            if let Some(v) = &b.max {
                out.retry.max = duration("delivery.backoff.max", v)?;
            }
        }
        if out.retry.initial > out.retry.max {
            return Err(bad("delivery.backoff", "`initial` must not exceed `max`"));
        }
        if let Some(v) = &self.max_age {
            out.retry.max_age = duration("delivery.max_age", v)?;
        }
        if let Some(secret) = &self.callback_secret {
            let value = match secret.strip_prefix("env:") {
                Some(var) => std::env::var(var).map_err(|_| {
                    bad(
                        "delivery.callback_secret",
                        format!("environment variable {var} is not set on the host"),
                    )
                })?,
                None => secret.clone(),
            };
            crate::delivery::signature::decode_secret(&value)
                .map_err(|e| bad("delivery.callback_secret", e))?;
            out.callback_secret = Some(value);
        }
        Ok(out)
    }
}

/// Function names: lowercase letters, digits and dashes, 1 to 63 characters, starting and ending
/// with a letter or digit (they are path segments and DNS-label-like).
pub fn validate_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid function name: use 1 to 63 lowercase letters, digits and \
             dashes, starting and ending with a letter or digit"
        ))
    }
}

/// Routes are absolute paths; a trailing `/...` matches everything below. `/_ferry` is reserved.
pub fn validate_route(route: &str) -> Result<(), String> {
    let path = route.strip_suffix("/...").unwrap_or(route);
    if !route.starts_with('/') {
        return Err(format!("{route:?} must start with /"));
    }
    if path == "/_ferry" || path.starts_with("/_ferry/") {
        return Err(format!("{route:?} is under /_ferry, which Ferry reserves"));
    }
    if path.len() > 1
        && path
            .split('/')
            .skip(1)
            .any(|s| s.is_empty() || s == "..." || s == "." || s == "..")
    {
        return Err(format!(
            "{route:?} has an empty or dot segment; write /a/b, or /a/... for everything below /a"
        ));
    }
    if route.contains(['?', '#', ' ', '*']) {
        return Err(format!("{route:?} may not contain ?, #, * or spaces"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ceilings() -> Ceilings {
        Ceilings {
            max_memory: 256 << 20,
            max_concurrency: 1000,
            max_timeout: Duration::from_secs(900),
        }
    }

    #[test]
    fn full_manifest_resolves() {
        let m = Manifest::parse(
            r#"
            name = "orders"
            component = "target/orders.wasm"
            [limits]
            memory = "64MiB"
            timeout = "5s"
            concurrency = 8
            max_body = "1MiB"
            [[trigger.http]]
            route = "/orders/..."
            [[trigger.http]]
            route = "/status"
            [delivery]
            mode = "fire-and-forget"
            max_attempts = 3
            backoff = { initial = "50ms", max = "2s" }
            max_age = "1h"
            [outbound]
            allow = ["API.example.com"]
            [config]
            GREETING = "hello"
            "#,
        )
        .unwrap();
        let spec = m.resolve(&ceilings()).unwrap();
        assert_eq!(spec.routes, vec!["/orders/...", "/status"]);
        assert_eq!(spec.limits.memory, 64 << 20);
        assert_eq!(spec.limits.timeout, Duration::from_secs(5));
        assert_eq!(spec.limits.concurrency, 8);
        assert_eq!(spec.limits.max_body, 1 << 20);
        assert_eq!(spec.outbound, vec!["api.example.com"]);
        assert_eq!(spec.delivery.mode, DeliveryMode::FireAndForget);
        assert_eq!(spec.delivery.retry.max_attempts, 3);
        assert_eq!(spec.delivery.retry.initial, Duration::from_millis(50));
        assert_eq!(spec.delivery.retry.max, Duration::from_secs(2));
        assert_eq!(spec.delivery.retry.max_age, Duration::from_secs(3600));
        assert_eq!(spec.config, vec![("GREETING".into(), "hello".into())]);
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Manifest::parse("name = \"a\"\n[limits]\nmemmory = \"1MiB\"\n").unwrap_err();
        assert!(err.to_string().contains("memmory"), "{err}");
    }

    #[test]
    fn bad_values_are_named() {
        let cases = [
            ("name = \"Bad_Name\"", "name"),
            ("name = \"a\"\n[limits]\nmemory = \"lots\"", "limits.memory"),
            ("name = \"a\"\n[limits]\nmemory = \"1GiB\"", "limits.memory"),
            (
                "name = \"a\"\n[limits]\ntimeout = \"soon\"",
                "limits.timeout",
            ),
            (
                "name = \"a\"\n[limits]\nconcurrency = 0",
                "limits.concurrency",
            ),
            (
                "name = \"a\"\n[[trigger.http]]\nroute = \"nope\"",
                "trigger.http[0].route",
            ),
            (
                "name = \"a\"\n[[trigger.http]]\nroute = \"/_ferry/x\"",
                "trigger.http[0].route",
            ),
            (
                "name = \"a\"\n[config]\n\"BAD-KEY\" = \"x\"",
                "config.BAD-KEY",
            ),
        ];
        for (text, key) in cases {
            let err = Manifest::parse(text)
                .unwrap()
                .resolve(&ceilings())
                .unwrap_err();
            match err {
                ManifestError::Value { key: k, .. } => assert_eq!(k, key, "{text}"),
                other => panic!("{text}: {other}"),
            }
        }
    }

    #[test]
    fn names() {
        for ok in ["a", "hello-http", "x1", &"a".repeat(63)] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", &"a".repeat(64), "_ferry"] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn routes() {
        for ok in ["/", "/a", "/a/b", "/a/...", "/..."] {
            assert!(validate_route(ok).is_ok(), "{ok}");
        }
        for bad in ["a", "/a//b", "/a/../b", "/_ferry", "/a?b", "/a/.../b"] {
            assert!(validate_route(bad).is_err(), "{bad}");
        }
    }
}
