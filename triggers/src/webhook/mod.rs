//! The webhook trigger: signed deliveries from a provider (GitHub, Stripe, Slack, any Standard
//! Webhooks sender, or any HMAC-SHA256 signer) on a path of the public listener.
//!
//! ```toml
//! [[trigger.webhook]]
//! path = "/hooks/github"
//! scheme = "github"          # github | standard-webhooks | stripe | slack | hmac-sha256
//! secret = "env:GITHUB_WEBHOOK_SECRET"
//! previous_secret = "env:GITHUB_WEBHOOK_SECRET_OLD"   # optional, during a rotation
//! tolerance = "5m"           # timestamped schemes; default 300 s
//! ```
//!
//! A delivery is checked in this order, and a refused one stores nothing and runs nothing: POST
//! only (405), the body within the function's `max_body` (413), the signature on the raw body
//! ([`verify`]: 401 with a short reason, 400 for a timestamp outside the tolerance). A verified
//! delivery is submitted store-and-forward, deduplicated by the provider's delivery id (a
//! repeat is answered 200 with `Ferry-Idempotent-Replay: true` and runs nothing), and answered
//! 202 with the status URL only once it is durable. An HTTP function receives the request as it
//! came; an event function a CloudEvent (type from the provider's event name, source the hook
//! path, id the delivery id, data the raw body).
//!
//! The HTTP trigger owns the public listener: it asks [`Hooks`] whether a path is a webhook's
//! before it looks for a function route.

pub mod verify;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;

use crate::cloudevents::{CloudEvent, ExtensionValue};
use crate::http::{read_body, text_response, Body, BodyError};
use crate::port::{ConfigError, FunctionKind, Payload, Runtime, Sections, Submission};
use crate::{parse_section, DeliveryMode, TriggerKind};
use verify::{Encoding, Keys, Scheme};

/// The webhook trigger kind.
pub const KIND: TriggerKind = TriggerKind {
    name: "webhook",
    accepts: &[FunctionKind::Http, FunctionKind::Event],
    validate,
    validate_all,
    disabled_hint: "",
};

/// Default tolerance of timestamped schemes.
const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

/// One `[[trigger.webhook]]` section as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhookSection {
    path: String,
    scheme: String,
    secret: String,
    previous_secret: Option<String>,
    tolerance: Option<String>,
    /// hmac-sha256: the signature header.
    header: Option<String>,
    /// hmac-sha256: `hex` or `base64`.
    encoding: Option<String>,
    /// hmac-sha256: what precedes the signature.
    prefix: Option<String>,
    /// hmac-sha256: the header with the provider's delivery id (deduplication).
    id_header: Option<String>,
    /// hmac-sha256: the header with the provider's event name (the CloudEvent type).
    event_header: Option<String>,
}

/// A webhook ready to take deliveries.
#[derive(Debug, Clone)]
pub struct Hook {
    /// The function it runs.
    pub function: String,
    /// Its path on the public listener.
    pub path: String,
    scheme: Scheme,
    keys: Keys,
    tolerance: Duration,
    id_header: Option<String>,
    event_header: Option<String>,
}

/// `env:NAME` from the host's environment, or the literal.
fn resolve_secret(value: &str) -> Result<String, String> {
    match value.strip_prefix("env:") {
        Some(name) => match std::env::var(name) {
            Ok(v) if !v.is_empty() => Ok(v),
            Ok(_) => Err(format!("the environment variable {name} is empty")),
            Err(_) => Err(format!(
                "the environment variable {name} is not set on the host (set it where `ferry serve` runs)"
            )),
        },
        None => Ok(value.to_string()),
    }
}

fn scheme_of(s: &WebhookSection) -> Result<Scheme, (&'static str, String)> {
    let generic_only = [
        ("header", s.header.is_some()),
        ("encoding", s.encoding.is_some()),
        ("prefix", s.prefix.is_some()),
        ("id_header", s.id_header.is_some()),
        ("event_header", s.event_header.is_some()),
    ];
    let scheme = match s.scheme.as_str() {
        "github" => Scheme::Github,
        "standard-webhooks" => Scheme::StandardWebhooks,
        "stripe" => Scheme::Stripe,
        "slack" => Scheme::Slack,
        "hmac-sha256" => {
            let header = s.header.clone().ok_or((
                "header",
                "hmac-sha256 needs the header that carries the signature, like header = \"X-Shopify-Hmac-Sha256\"".to_string(),
            ))?;
            http::HeaderName::from_bytes(header.as_bytes())
                .map_err(|_| ("header", format!("{header:?} is not a header name")))?;
            let encoding = match s.encoding.as_deref() {
                None | Some("hex") => Encoding::Hex,
                Some("base64") => Encoding::Base64,
                Some(other) => {
                    return Err(("encoding", format!("{other:?} is not hex or base64")));
                }
            };
            return Ok(Scheme::HmacSha256 {
                header: header.to_ascii_lowercase(),
                encoding,
                prefix: s.prefix.clone().unwrap_or_default(),
            });
        }
        other => {
            return Err((
                "scheme",
                format!("{other:?} is not a scheme; use github, standard-webhooks, stripe, slack or hmac-sha256"),
            ))
        }
    };
    if let Some((key, _)) = generic_only.iter().find(|(_, set)| *set) {
        return Err((
            key,
            format!("`{key}` applies only to scheme = \"hmac-sha256\""),
        ));
    }
    Ok(scheme)
}

/// Parses and checks one section into a hook; secrets are resolved now.
fn hook(function: &str, index: usize, section: &toml::Table) -> Result<Hook, ConfigError> {
    let s: WebhookSection = parse_section("webhook", index, section)?;
    let at = |key: &str, m: String| ConfigError::at("webhook", index, key, m);
    crate::http::validate_route(&s.path).map_err(|m| at("path", m))?;
    if s.path.ends_with("/...") {
        return Err(at(
            "path",
            format!("{:?}: a webhook path is one exact path", s.path),
        ));
    }
    let scheme = scheme_of(&s).map_err(|(key, m)| at(key, m))?;
    let secret = resolve_secret(&s.secret).map_err(|m| at("secret", m))?;
    let previous = match &s.previous_secret {
        Some(p) => Some(resolve_secret(p).map_err(|m| at("previous_secret", m))?),
        None => None,
    };
    let keys = Keys::new(&scheme, &secret, previous.as_deref()).map_err(|m| at("secret", m))?;
    let tolerance = match &s.tolerance {
        Some(t) => humantime::parse_duration(t).map_err(|e| {
            at(
                "tolerance",
                format!("{t:?} is not a duration like \"5m\": {e}"),
            )
        })?,
        None => DEFAULT_TOLERANCE,
    };
    Ok(Hook {
        function: function.to_string(),
        path: s.path,
        scheme,
        keys,
        tolerance,
        id_header: s.id_header.map(|h| h.to_ascii_lowercase()),
        event_header: s.event_header.map(|h| h.to_ascii_lowercase()),
    })
}

fn validate(function: &str, sections: &[toml::Table]) -> Result<(), ConfigError> {
    let mut paths = Vec::new();
    for (i, section) in sections.iter().enumerate() {
        let h = hook(function, i, section)?;
        if paths.contains(&h.path) {
            return Err(ConfigError::at(
                "webhook",
                i,
                "path",
                format!("{:?} appears twice", h.path),
            ));
        }
        paths.push(h.path);
    }
    Ok(())
}

/// Every webhook of every function, by path; the first path two functions both claim is an
/// error.
fn hooks_of(all: &[Sections]) -> Result<HashMap<String, Arc<Hook>>, String> {
    let mut out: HashMap<String, Arc<Hook>> = HashMap::new();
    for f in all {
        for (i, section) in f.sections.iter().enumerate() {
            let h = match hook(&f.function.name, i, section) {
                Ok(h) => h,
                // Deploys refuse bad sections; one whose env secret went away is skipped.
                Err(e) => {
                    tracing::error!(function = %f.function.name, error = %e, "trigger.webhook: section skipped");
                    continue;
                }
            };
            if let Some(other) = out.get(&h.path) {
                if other.function != h.function {
                    return Err(format!(
                        "webhook path {} of function {} is already taken by function {}",
                        h.path, h.function, other.function
                    ));
                }
            }
            out.insert(h.path.clone(), Arc::new(h));
        }
    }
    Ok(out)
}

fn validate_all(all: &[Sections]) -> Result<(), String> {
    hooks_of(all).map(drop)
}

/// The webhooks of the live functions, by path.
#[derive(Debug, Default)]
pub struct Hooks {
    by_path: HashMap<String, Arc<Hook>>,
    /// Functions with at least one webhook.
    functions: std::collections::HashSet<String>,
}

impl Hooks {
    /// The webhooks of `all` (the `webhook` sections of every deployed function).
    pub fn of(all: &[Sections]) -> Hooks {
        let by_path = hooks_of(all).unwrap_or_else(|e| {
            tracing::error!(error = %e, "trigger.webhook: table rejected");
            HashMap::new()
        });
        let functions = by_path.values().map(|h| h.function.clone()).collect();
        Hooks { by_path, functions }
    }

    /// Whether `function` has webhooks: then its own route (`/{name}/...`) serves nothing, so
    /// that it runs only on signed deliveries (its `[[trigger.http]]` routes, if the author
    /// gave it any, still serve).
    pub fn guards(&self, function: &str) -> bool {
        self.functions.contains(function)
    }

    /// The webhook on `path`, if any.
    pub fn get(&self, path: &str) -> Option<Arc<Hook>> {
        self.by_path.get(path).cloned()
    }
}

/// What each webhook path last did, reported to the runtime (under `webhook`, by path) after
/// every delivery: the last accepted delivery and the last refusal with its reason.
#[derive(Debug, Default)]
pub struct Activity {
    by_path: std::sync::Mutex<std::collections::BTreeMap<String, serde_json::Value>>,
}

impl Activity {
    fn note<R: Runtime>(&self, runtime: &R, path: &str, field: &str, value: serde_json::Value) {
        let snapshot = {
            let mut all = self.by_path.lock().unwrap_or_else(|e| e.into_inner());
            let entry = all
                .entry(path.to_string())
                .or_insert_with(|| serde_json::json!({}));
            entry[field] = value;
            serde_json::to_value(&*all).unwrap_or_default()
        };
        runtime.report(KIND.name, snapshot);
    }
}

fn now_rfc3339() -> String {
    chrono::DateTime::<chrono::Utc>::from(SystemTime::now())
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The first value of a header as text.
fn header(headers: &http::HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// A string field of a JSON body, by a path of keys.
fn json_field(body: &[u8], path: &[&str]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let mut at = &v;
    for key in path {
        at = at.get(key)?;
    }
    at.as_str().map(str::to_string)
}

/// The provider's delivery id (for deduplication) and event name, read after verification.
fn delivery_of(
    hook: &Hook,
    headers: &http::HeaderMap,
    body: &[u8],
) -> (Option<String>, Option<String>) {
    match &hook.scheme {
        Scheme::Github => (
            header(headers, "x-github-delivery"),
            header(headers, "x-github-event"),
        ),
        Scheme::StandardWebhooks => (header(headers, "webhook-id"), json_field(body, &["type"])),
        Scheme::Stripe => (json_field(body, &["id"]), json_field(body, &["type"])),
        Scheme::Slack => (
            json_field(body, &["event_id"]),
            json_field(body, &["event", "type"]).or_else(|| json_field(body, &["type"])),
        ),
        Scheme::HmacSha256 { .. } => (
            hook.id_header.as_deref().and_then(|h| header(headers, h)),
            hook.event_header
                .as_deref()
                .and_then(|h| header(headers, h)),
        ),
    }
}

/// The CloudEvent `type` of a delivery: `com.github.push`, `com.stripe.charge.succeeded`, …
fn event_type(hook: &Hook, event: Option<&str>) -> String {
    let provider = match hook.scheme {
        Scheme::Github => "com.github",
        Scheme::Stripe => "com.stripe",
        Scheme::Slack => "com.slack",
        Scheme::StandardWebhooks | Scheme::HmacSha256 { .. } => "dev.ferry.webhook",
    };
    let event: String = event
        .unwrap_or("delivery")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{provider}.{event}")
}

fn scheme_name(s: &Scheme) -> &'static str {
    match s {
        Scheme::Github => "github",
        Scheme::StandardWebhooks => "standard-webhooks",
        Scheme::Stripe => "stripe",
        Scheme::Slack => "slack",
        Scheme::HmacSha256 { .. } => "hmac-sha256",
    }
}

/// Answers one delivery to `hook`'s path.
pub async fn handle<R: Runtime>(
    runtime: &R,
    activity: &Activity,
    hook: &Hook,
    req: Request<Incoming>,
    within: std::time::Duration,
) -> Response<Body> {
    let refused = |status: StatusCode, why: String| {
        tracing::info!(function = %hook.function, path = %hook.path, status = status.as_u16(), reason = %why, "trigger.webhook: delivery refused");
        activity.note(
            runtime,
            &hook.path,
            "last_refusal",
            serde_json::json!({ "at": now_rfc3339(), "status": status.as_u16(), "reason": why }),
        );
        text_response(status, why)
    };
    if req.method() != http::Method::POST {
        return refused(StatusCode::METHOD_NOT_ALLOWED, "webhooks take POST".into());
    }
    let Some(f) = runtime.function(&hook.function) else {
        return refused(
            StatusCode::NOT_FOUND,
            format!("no function serves {}", hook.path),
        );
    };
    let info = R::info(&f).clone();
    let (parts, body) = match read_body(req, info.max_body, within).await {
        Ok(read) => read,
        Err(e @ BodyError::TooLarge(_)) => {
            return refused(
                e.status(),
                format!(
                    "the delivery is larger than function {}'s limit of {} bytes (limits.max_body)",
                    info.name, info.max_body
                ),
            )
        }
        Err(e) => return refused(e.status(), e.to_string()),
    };
    if let Err(refusal) = verify::verify(
        &hook.scheme,
        &hook.keys,
        &parts.headers,
        &body,
        SystemTime::now(),
        hook.tolerance,
    ) {
        let status = StatusCode::from_u16(refusal.status()).unwrap_or(StatusCode::UNAUTHORIZED);
        runtime.count("webhook", &hook.function, "rejected");
        return refused(status, format!("webhook refused: {refusal}"));
    }
    runtime.count("webhook", &hook.function, "verified");
    let (delivery_id, event_name) = delivery_of(hook, &parts.headers, &body);
    let payload = match info.kind {
        FunctionKind::Http => Payload::Http {
            method: parts.method.to_string(),
            path: parts
                .uri
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_else(|| hook.path.clone()),
            headers: parts
                .headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect(),
            body,
        },
        FunctionKind::Event => {
            match cloud_event(
                hook,
                &parts.headers,
                delivery_id.as_deref(),
                event_name.as_deref(),
                body,
            ) {
                Ok(mut e) => {
                    e.adopt_trace_headers(&parts.headers);
                    Payload::Event(e)
                }
                Err(e) => {
                    return refused(
                        StatusCode::BAD_REQUEST,
                        format!("the delivery cannot be an event: {e}"),
                    )
                }
            }
        }
    };
    let submission = Submission {
        mode: Some(DeliveryMode::StoreAndForward),
        callback_url: None,
        idempotency_key: delivery_id
            .as_ref()
            .map(|id| format!("webhook\u{0}{}\u{0}{id}", hook.path)),
        payload,
        trigger: "webhook",
    };
    match runtime.submit(f, submission).await {
        Ok(accepted) if accepted.new => {
            runtime.count("webhook", &hook.function, "accepted");
            tracing::info!(function = %hook.function, path = %hook.path, invocation_id = %accepted.id, delivery = ?delivery_id, "trigger.webhook: delivery accepted");
            activity.note(
                runtime,
                &hook.path,
                "last_delivery",
                // Not the invocation id: /healthz shows this, and a status URL is a capability.
                serde_json::json!({ "at": now_rfc3339(), "delivery_id": delivery_id }),
            );
            crate::http::accepted_response(&accepted)
        }
        Ok(accepted) => {
            // A repeated delivery: the first one's invocation, nothing runs again.
            runtime.count("webhook", &hook.function, "duplicate");
            let mut resp = crate::http::accepted_response(&accepted);
            *resp.status_mut() = StatusCode::OK;
            resp
        }
        Err(e) => crate::http::refusal_response(&e),
    }
}

/// The CloudEvent of a verified delivery.
fn cloud_event(
    hook: &Hook,
    headers: &http::HeaderMap,
    delivery_id: Option<&str>,
    event_name: Option<&str>,
    body: Bytes,
) -> Result<CloudEvent, crate::cloudevents::Invalid> {
    let id = match delivery_id {
        Some(id) if !id.is_empty() => id.to_string(),
        _ => uuid_like(),
    };
    let mut event = CloudEvent::new(id, hook.path.clone(), event_type(hook, event_name))?;
    event.datacontenttype = header(headers, "content-type");
    event.data = (!body.is_empty()).then_some(body);
    event.extensions = vec![(
        "webhookscheme".to_string(),
        ExtensionValue::from(scheme_name(&hook.scheme)),
    )];
    event.validate()?;
    Ok(event)
}

/// A unique id for a delivery that carries none (no deduplication then).
fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("{nanos:x}-{:x}", COUNTER.fetch_add(1, Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::port::section_of as section;

    #[test]
    fn sections_are_checked_naming_the_key() {
        let ok = section(&[("path", "/hooks/gh"), ("scheme", "github"), ("secret", "s")]);
        assert!(validate("f", std::slice::from_ref(&ok)).is_ok());
        let e = validate("f", &[ok.clone(), ok]).unwrap_err();
        assert!(e.to_string().contains("appears twice"), "{e}");
        let bad_scheme = section(&[("path", "/h"), ("scheme", "gitlab"), ("secret", "s")]);
        assert!(validate("f", &[bad_scheme])
            .unwrap_err()
            .to_string()
            .contains("scheme"));
        let missing_env = section(&[
            ("path", "/h"),
            ("scheme", "github"),
            ("secret", "env:FERRY_TEST_SURELY_UNSET_VARIABLE"),
        ]);
        let e = validate("f", &[missing_env]).unwrap_err().to_string();
        assert!(e.contains("secret") && e.contains("not set"), "{e}");
        let generic_without_header =
            section(&[("path", "/h"), ("scheme", "hmac-sha256"), ("secret", "s")]);
        assert!(validate("f", &[generic_without_header])
            .unwrap_err()
            .to_string()
            .contains("header"));
        let header_on_github = section(&[
            ("path", "/h"),
            ("scheme", "github"),
            ("secret", "s"),
            ("header", "x-sig"),
        ]);
        assert!(validate("f", &[header_on_github])
            .unwrap_err()
            .to_string()
            .contains("hmac-sha256"));
        let prefix_path = section(&[("path", "/h/..."), ("scheme", "github"), ("secret", "s")]);
        assert!(validate("f", &[prefix_path]).is_err());
        let unknown = section(&[
            ("path", "/h"),
            ("scheme", "github"),
            ("secret", "s"),
            ("sekret", "x"),
        ]);
        assert!(validate("f", &[unknown])
            .unwrap_err()
            .to_string()
            .contains("sekret"));
    }

    #[test]
    fn event_types_name_the_provider_and_event() {
        let h = hook(
            "f",
            0,
            &section(&[("path", "/h"), ("scheme", "github"), ("secret", "s")]),
        )
        .unwrap();
        assert_eq!(event_type(&h, Some("push")), "com.github.push");
        assert_eq!(event_type(&h, Some("a b")), "com.github.a_b");
        assert_eq!(event_type(&h, None), "com.github.delivery");
    }
}
