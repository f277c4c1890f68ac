//! The function manifest, `ferry.toml`: one function's name, routes, limits, outbound allow-list
//! and configuration. Parsed strictly: an unknown key or a bad value is an error naming it.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::model::{parse_size, DeliveryMode, DeliverySettings, Limits, Triggers};

/// A manifest as written by the user.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The function's name; must match the name in the deploy URL.
    pub name: String,
    /// Path of the component, relative to the manifest; used by the CLI only.
    pub component: Option<String>,
    /// `[build]`: how `ferry build` and `ferry dev` make the component; used by the CLI only.
    pub build: Option<BuildSection>,
    /// `[limits]`: the sandbox limits.
    #[serde(default)]
    pub limits: LimitsSection,
    /// `[delivery]`: defaults for asynchronous invocations.
    #[serde(default)]
    pub delivery: DeliverySection,
    /// `[[trigger.<kind>]]` sections, by kind; each trigger checks its own.
    #[serde(default)]
    pub trigger: Triggers,
    /// `[outbound]`: the hosts the function may call.
    #[serde(default)]
    pub outbound: Outbound,
    /// `[config]`: environment variables of the guest; a value may be marked secret.
    #[serde(default)]
    pub config: BTreeMap<String, ConfigValue>,
    /// `[secrets]`: environment variables of the guest whose values come from the host's
    /// environment (`env:NAME`) and are never shown.
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
}

/// `[build]`: the command that builds the component (run with `sh -c` in the manifest's
/// folder).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildSection {
    /// The command, e.g. `componentize-py -d wit -w http-function componentize app -o app.wasm`.
    pub command: String,
}

/// A `[config]` value: text, or `{ value = "...", secret = true }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ConfigValue {
    /// A plain value, shown by the API.
    Plain(String),
    /// A value with flags.
    Marked(MarkedValue),
}

/// `{ value = "...", secret = true }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MarkedValue {
    /// The value.
    pub value: String,
    /// Never shown by the API, the CLI or the logs.
    #[serde(default)]
    pub secret: bool,
}

impl From<&str> for ConfigValue {
    fn from(s: &str) -> Self {
        ConfigValue::Plain(s.to_string())
    }
}

/// `[limits]` as written; what is not set takes the host's default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    /// Linear memory ceiling, a size like `128MiB`.
    pub memory: Option<String>,
    /// Wall-clock time per invocation, a duration like `30s`.
    pub timeout: Option<String>,
    /// Time per invocation spent running WebAssembly, a duration like `2s`.
    pub cpu: Option<String>,
    /// Instances running at once.
    pub concurrency: Option<u32>,
    /// Callers that may wait for a busy function.
    pub queue: Option<u32>,
    /// How long a caller may wait for a busy function, a duration like `5s`.
    pub queue_timeout: Option<String>,
    /// Largest request body, a size like `16MiB`.
    pub max_body: Option<String>,
    /// Largest response body, a size like `64MiB`.
    pub max_response: Option<String>,
    /// Outbound HTTP requests one invocation may send.
    pub outbound_requests: Option<u32>,
}

/// `[delivery]` as written; what is not set takes the default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliverySection {
    /// `store-and-forward` or `fire-and-forget`.
    pub mode: Option<String>,
    /// Attempts in all, the first included.
    pub max_attempts: Option<u32>,
    /// `backoff = { initial, max }`: the retry delays.
    pub backoff: Option<BackoffSection>,
    /// No retry starts later than this after the submit, a duration like `24h`.
    pub max_age: Option<String>,
    /// `whsec_...`, or `env:NAME` to read it from the host's environment.
    pub callback_secret: Option<String>,
}

/// `delivery.backoff` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackoffSection {
    /// Ceiling of the first retry's delay, a duration like `1s`.
    pub initial: Option<String>,
    /// Ceiling of any retry's delay, a duration like `10m`.
    pub max: Option<String>,
}

/// `[outbound]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outbound {
    /// Bare host names the function may reach with outbound HTTP.
    #[serde(default)]
    pub allow: Vec<String>,
}

/// A manifest checked and resolved into what the runtime needs.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionSpec {
    /// The function's name, checked.
    pub name: String,
    /// The limits, within the host's ceilings.
    pub limits: Limits,
    /// Environment variables of the guest, sorted by name (secrets included).
    pub config: Vec<(String, String)>,
    /// The names among `config` whose values are secret.
    pub secrets: Vec<String>,
    /// Hosts the function may reach, lower-case.
    pub outbound: Vec<String>,
    /// Delivery defaults, with the callback secret read from the environment if it named one.
    pub delivery: DeliverySettings,
    /// The trigger sections by kind, each checked by its trigger; empty kinds dropped.
    pub triggers: Triggers,
}

/// A manifest problem, naming the key at fault.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ManifestError {
    /// Not TOML, or not the manifest's shape (an unknown key, a wrong type); toml's message
    /// names the key.
    #[error("invalid manifest: {0}")]
    Syntax(String),
    /// A value the manifest may not have.
    #[error("invalid manifest: `{key}`: {message}")]
    Value {
        /// The key at fault, like `limits.timeout`.
        key: String,
        /// What is wrong with its value.
        message: String,
    },
}

fn bad(key: impl Into<String>, message: impl Into<String>) -> ManifestError {
    ManifestError::Value {
        key: key.into(),
        message: message.into(),
    }
}

/// The host-side ceilings that manifest values must stay within, and the host's defaults for
/// what a manifest does not set.
#[derive(Debug, Clone)]
pub struct Ceilings {
    /// The most memory a function may ask for, in bytes (`ferry serve --max-memory`).
    pub max_memory: u64,
    /// The most instances a function may run at once (`ferry serve --max-instances`).
    pub max_concurrency: u32,
    /// The longest timeout (and CPU time and queue wait) a function may ask for
    /// (`ferry serve --max-timeout`).
    pub max_timeout: Duration,
    /// The most outbound requests per invocation a function may ask for
    /// (`ferry serve --max-outbound-requests`).
    pub max_outbound_requests: u32,
    /// The largest request or response body a function may allow (`ferry serve --max-body`).
    pub max_body: u64,
    /// The most callers that may wait for one function (`ferry serve --max-queue`).
    pub max_queue: u32,
    /// The limits of a function whose manifest does not set them (`ferry serve
    /// --limit-default`), within the ceilings.
    pub defaults: Limits,
}

impl Default for Ceilings {
    fn default() -> Self {
        Self {
            max_memory: 256 << 20,
            max_concurrency: 1000,
            max_timeout: Duration::from_secs(900),
            max_outbound_requests: 256,
            max_body: 256 << 20,
            max_queue: 10_000,
            defaults: Limits::default(),
        }
    }
}

impl Ceilings {
    /// Sets the host's defaults from `KEY=VALUE` pairs with the keys and values of `[limits]`
    /// (`--limit-default memory=64MiB`); each is checked against the ceilings, and a default
    /// above a ceiling is refused.
    pub fn with_defaults(mut self, pairs: &[String]) -> Result<Self, String> {
        let mut table = toml::Table::new();
        // An empty entry (FERRY_LIMIT_DEFAULTS set but empty) sets nothing.
        for pair in pairs.iter().filter(|p| !p.trim().is_empty()) {
            let (k, v) = pair.split_once('=').ok_or_else(|| {
                format!("--limit-default {pair:?}: write KEY=VALUE, like memory=64MiB")
            })?;
            let value = match v.trim().parse::<i64>() {
                Ok(n) => toml::Value::Integer(n),
                Err(_) => toml::Value::String(v.trim().to_string()),
            };
            table.insert(k.trim().to_string(), value);
        }
        let section: LimitsSection = toml::Value::Table(table)
            .try_into()
            .map_err(|e| format!("--limit-default: {}", e.to_string().trim()))?;
        self.defaults = self.clamp(Limits::default());
        self.defaults = section
            .resolve(&self)
            .map_err(|e| format!("--limit-default: {e}"))?;
        Ok(self)
    }

    /// Built-in defaults brought within the ceilings (a host with `--max-memory 64MiB` gives
    /// functions 64 MiB by default, not 128).
    fn clamp(&self, mut l: Limits) -> Limits {
        l.memory = l.memory.min(self.max_memory);
        l.timeout = l.timeout.min(self.max_timeout);
        l.concurrency = l.concurrency.min(self.max_concurrency);
        l.queue = l.queue.min(self.max_queue);
        l.queue_timeout = l.queue_timeout.min(self.max_timeout);
        l.max_body = l.max_body.min(self.max_body);
        l.max_response = l.max_response.min(self.max_body);
        l.outbound_requests = l.outbound_requests.min(self.max_outbound_requests);
        l
    }
}

impl Manifest {
    /// Parses `ferry.toml` text; values are checked later, by [`Manifest::resolve`].
    pub fn parse(text: &str) -> Result<Self, ManifestError> {
        // The message and the position only: toml's own text quotes the offending line, which
        // may hold a secret.
        toml::from_str(text).map_err(|e| {
            let at = e.span().map(|span| {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                format!("line {line}, column {column}: ")
            });
            ManifestError::Syntax(format!("{}{}", at.unwrap_or_default(), e.message().trim()))
        })
    }

    /// A manifest with defaults for a function deployed without one.
    pub fn with_name(name: &str, routes: &[String]) -> Self {
        Manifest {
            name: name.to_string(),
            trigger: Triggers::from([(
                "http".to_string(),
                routes
                    .iter()
                    .map(|r| toml::Table::from_iter([("route".to_string(), r.as_str().into())]))
                    .collect(),
            )]),
            ..Default::default()
        }
    }

    /// Checks every value and resolves defaults.
    pub fn resolve(&self, ceilings: &Ceilings) -> Result<FunctionSpec, ManifestError> {
        validate_name(&self.name).map_err(|m| bad("name", m))?;
        let limits = self.limits.resolve(ceilings)?;
        self.check_triggers()?;
        self.check_outbound_and_config()?;
        let (config, secrets) = self.config_and_secrets()?;
        let delivery = self.delivery.resolve()?;
        Ok(FunctionSpec {
            triggers: self
                .trigger
                .iter()
                .filter(|(_, sections)| !sections.is_empty())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            delivery,
            name: self.name.clone(),
            limits,
            config,
            secrets,
            outbound: self
                .outbound
                .allow
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
        })
    }

    /// `[config]` and `[secrets]` as the guest's environment, and which names are secret. A
    /// secret's value never appears in an error.
    fn config_and_secrets(&self) -> Result<(Env, Vec<String>), ManifestError> {
        let mut env = BTreeMap::new();
        let mut secrets = Vec::new();
        for (key, value) in &self.config {
            let (v, secret) = match value {
                ConfigValue::Plain(v) => (v.clone(), false),
                ConfigValue::Marked(m) => (m.value.clone(), m.secret),
            };
            if secret {
                secrets.push(key.clone());
            }
            env.insert(key.clone(), v);
        }
        for (key, reference) in &self.secrets {
            check_env_key(&format!("secrets.{key}"), key)?;
            if env.contains_key(key) {
                return Err(bad(
                    format!("secrets.{key}"),
                    "is also in [config]; give each name once",
                ));
            }
            let Some(var) = reference.strip_prefix("env:") else {
                return Err(bad(
                    format!("secrets.{key}"),
                    format!("write env:{SECRET_ENV_PREFIX}NAME: secrets come from the host's environment, never from the manifest (or use [config] with {{ value = \"...\", secret = true }})"),
                ));
            };
            // Only variables the operator meant for functions: a deployer must not be able to
            // hand the host's own credentials to a guest.
            if !var.starts_with(SECRET_ENV_PREFIX) || var.len() == SECRET_ENV_PREFIX.len() {
                return Err(bad(
                    format!("secrets.{key}"),
                    format!("{var} is not a function secret: functions may read only variables named {SECRET_ENV_PREFIX}*, which the operator sets for them"),
                ));
            }
            let value = std::env::var(var).map_err(|_| {
                bad(
                    format!("secrets.{key}"),
                    format!("environment variable {var} is not set where ferry serve runs"),
                )
            })?;
            env.insert(key.clone(), value);
            secrets.push(key.clone());
        }
        secrets.sort();
        Ok((env.into_iter().collect(), secrets))
    }

    /// Each `[[trigger.<kind>]]` checked by its trigger; an unknown kind is refused.
    fn check_triggers(&self) -> Result<(), ManifestError> {
        for (kind, sections) in &self.trigger {
            let Some(trigger) = ferry_triggers::trigger_kind(kind) else {
                let known: Vec<&str> = ferry_triggers::TRIGGERS.iter().map(|t| t.name).collect();
                return Err(bad(
                    format!("trigger.{kind}"),
                    format!("no such trigger; Ferry has {}", known.join(", ")),
                ));
            };
            (trigger.validate)(&self.name, sections).map_err(|e| bad(e.key, e.message))?;
        }
        Ok(())
    }

    /// Outbound hosts are bare host names or `*.domain` wildcards; config keys can be
    /// environment variables.
    fn check_outbound_and_config(&self) -> Result<(), ManifestError> {
        for (i, host) in self.outbound.allow.iter().enumerate() {
            let name = host.strip_prefix("*.").unwrap_or(host);
            let ok = !name.is_empty()
                && !name.contains('*')
                && name.split('.').all(|l| {
                    !l.is_empty()
                        && l.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                })
                || name.parse::<std::net::IpAddr>().is_ok();
            if !ok {
                return Err(bad(
                    format!("outbound.allow[{i}]"),
                    format!(
                        "{host:?} is not a host name: write \"api.example.com\" or \
                         \"*.example.com\" (no scheme, port or path)"
                    ),
                ));
            }
        }
        for key in self.config.keys() {
            check_env_key(&format!("config.{key}"), key)?;
        }
        Ok(())
    }
}

/// The prefix of the host's environment variables that `[secrets]` may read.
pub const SECRET_ENV_PREFIX: &str = "FERRY_SECRET_";

/// Environment variables of a guest, by name.
type Env = Vec<(String, String)>;

/// Config and secret names become environment variables.
fn check_env_key(at: &str, key: &str) -> Result<(), ManifestError> {
    let ok = !key.is_empty()
        && !key.starts_with(|c: char| c.is_ascii_digit())
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(bad(
            at,
            "names become environment variables: use letters, digits and _",
        ))
    }
}

impl LimitsSection {
    /// The limits, checked against the host's ceilings; the host's defaults for what is not set.
    fn resolve(&self, ceilings: &Ceilings) -> Result<Limits, ManifestError> {
        let mut limits = ceilings.clamp(ceilings.defaults.clone());
        let size = |key: &str, v: &str, min: u64, max: u64, flag: &str| {
            let bytes = parse_size(v).map_err(|e| bad(key, e))?;
            if bytes < min {
                return Err(bad(
                    key,
                    format!(
                        "must be at least {}",
                        bytesize::ByteSize(min).display().iec()
                    ),
                ));
            }
            if bytes > max {
                return Err(bad(
                    key,
                    format!(
                        "{v} is above this host's ceiling of {} (ferry serve {flag})",
                        crate::model::size_text(max)
                    ),
                ));
            }
            Ok(bytes)
        };
        let duration = |key: &str, v: &str| {
            let d = humantime::parse_duration(v)
                .map_err(|e| bad(key, format!("{v:?} is not a duration like \"30s\": {e}")))?;
            if d.is_zero() || d > ceilings.max_timeout {
                return Err(bad(
                    key,
                    format!(
                        "must be above 0 and at most {} (ferry serve --max-timeout)",
                        humantime::format_duration(ceilings.max_timeout)
                    ),
                ));
            }
            Ok(d)
        };
        let count = |key: &str, n: u32, min: u32, max: u32, flag: &str| {
            if n < min || n > max {
                return Err(bad(
                    key,
                    format!("must be between {min} and {max} (ferry serve {flag})"),
                ));
            }
            Ok(n)
        };
        if let Some(m) = &self.memory {
            limits.memory = size(
                "limits.memory",
                m,
                1 << 20,
                ceilings.max_memory,
                "--max-memory",
            )?;
        }
        if let Some(t) = &self.timeout {
            limits.timeout = duration("limits.timeout", t)?;
        }
        if let Some(c) = &self.cpu {
            limits.cpu = Some(duration("limits.cpu", c)?);
        }
        if let Some(c) = self.concurrency {
            limits.concurrency = count(
                "limits.concurrency",
                c,
                1,
                ceilings.max_concurrency,
                "--max-instances",
            )?;
        }
        if let Some(q) = self.queue {
            limits.queue = count("limits.queue", q, 0, ceilings.max_queue, "--max-queue")?;
        }
        if let Some(t) = &self.queue_timeout {
            limits.queue_timeout = duration("limits.queue_timeout", t)?;
        }
        if let Some(b) = &self.max_body {
            limits.max_body = size("limits.max_body", b, 0, ceilings.max_body, "--max-body")?;
        }
        if let Some(b) = &self.max_response {
            limits.max_response =
                size("limits.max_response", b, 0, ceilings.max_body, "--max-body")?;
        }
        if let Some(n) = self.outbound_requests {
            limits.outbound_requests = count(
                "limits.outbound_requests",
                n,
                0,
                ceilings.max_outbound_requests,
                "--max-outbound-requests",
            )?;
        }
        Ok(limits)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ceilings() -> Ceilings {
        Ceilings::default()
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
        assert_eq!(
            ferry_triggers::http::routes("orders", &spec.triggers["http"]),
            vec!["/orders/...", "/status"]
        );
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
    fn trigger_sections_are_checked_by_their_trigger() {
        let cases = [
            ("[[trigger.webhooks]]\npath = \"/x\"", "trigger.webhooks"),
            (
                "[[trigger.http]]\nroute = \"/a\"\nroutes = \"/b\"",
                "trigger.http[0]",
            ),
            (
                "[[trigger.nats]]\nsubject = \"a b\"",
                "trigger.nats[0].subject",
            ),
            (
                "[[trigger.nats]]\nsubject = \"a\"\nstream = \"S.1\"",
                "trigger.nats[0].stream",
            ),
            (
                "[[trigger.nats]]\nsubject = \"a.*\"\nreply = \"a.b\"",
                "trigger.nats[0].reply",
            ),
        ];
        for (text, key) in cases {
            let text = format!("name = \"a\"\n{text}");
            match Manifest::parse(&text).unwrap().resolve(&ceilings()) {
                Err(ManifestError::Value { key: k, message }) => {
                    assert_eq!(k, key, "{text}: {message}")
                }
                other => panic!("{text}: {other:?}"),
            }
        }
    }
}
