//! The parsers a caller or a deployer reaches, as fuzz targets: each takes arbitrary bytes and
//! must return (an error is fine) without panicking. The libFuzzer targets in `fuzz/` call these,
//! and `cargo test` replays every input under `fuzz/seeds/` and `fuzz/regressions/` through
//! them, so a crash found once stays fixed.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};

/// A fuzz target: takes any bytes, never panics.
pub type Target = fn(&[u8]);

/// The targets by name, as `fuzz/` and the replay test know them.
pub const TARGETS: &[(&str, Target)] = &[
    ("manifest", manifest),
    ("cloudevent_binary", cloudevent_binary),
    ("cloudevent_structured", cloudevent_structured),
    ("webhook_signature", webhook_signature),
    ("async_headers", async_headers),
    ("upload", upload),
];

/// `ferry.toml` text, parsed and resolved against the default ceilings.
pub fn manifest(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(m) = crate::manifest::Manifest::parse(text) {
        let _ = m.resolve(&crate::manifest::Ceilings::default());
    }
}

/// Header lines (`name: value`, one per line) up to an empty line; the rest is the body.
fn request(data: &[u8]) -> (HeaderMap, Bytes) {
    let split = data
        .windows(2)
        .position(|w| w == b"\n\n")
        .map_or((data, &[][..]), |i| (&data[..i], &data[i + 2..]));
    let mut headers = HeaderMap::new();
    for line in split.0.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name),
            HeaderValue::from_bytes(value.trim_ascii()),
        ) {
            headers.append(n, v);
        }
    }
    (headers, Bytes::copy_from_slice(split.1))
}

/// A CloudEvent in binary mode: `ce-*` headers and a body.
pub fn cloudevent_binary(data: &[u8]) {
    let (headers, body) = request(data);
    if let Ok((event, mode)) = ferry_triggers::cloudevents::from_headers(&headers, body) {
        // What Ferry does next with an accepted event: hand it to a guest, answer with it.
        let guest = crate::guest_event::to_guest(&event);
        let _ = crate::guest_event::from_guest(guest);
        let _ = event.to_http(mode);
        let _ = event.to_structured();
    }
}

/// A CloudEvent in structured mode: a JSON body.
pub fn cloudevent_structured(data: &[u8]) {
    if let Ok(event) = ferry_triggers::cloudevents::CloudEvent::from_structured(data) {
        let _ = event.to_structured();
    }
}

/// A webhook delivery: the first byte picks the scheme, then headers and body as in
/// [`request`]; verified against fixed secrets.
pub fn webhook_signature(data: &[u8]) {
    use ferry_triggers::webhook::verify::{verify, Keys, Scheme};
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let scheme = match pick % 5 {
        0 => Scheme::Github,
        1 => Scheme::StandardWebhooks,
        2 => Scheme::Stripe,
        3 => Scheme::Slack,
        _ => Scheme::HmacSha256 {
            header: "x-signature".into(),
            encoding: ferry_triggers::webhook::verify::Encoding::Base64,
            prefix: "sha256=".into(),
        },
    };
    let secret = match scheme {
        Scheme::StandardWebhooks => "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        _ => "fuzzing-secret",
    };
    let Ok(keys) = Keys::new(&scheme, secret, Some(secret)) else {
        return;
    };
    let (headers, body) = request(rest);
    let _ = verify(
        &scheme,
        &keys,
        &headers,
        &body,
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        Duration::from_secs(300),
    );
}

/// The headers and query of an asynchronous submit: `Prefer`, `Ferry-Delivery`,
/// `X-Callback-Url`, `Idempotency-Key`, and a status URL's `wait` (the body, as a query).
pub fn async_headers(data: &[u8]) {
    let (headers, body) = request(data);
    let _ = ferry_triggers::http::prefers_async(&headers);
    let options = ferry_triggers::http::AsyncOptions::from_headers(&headers);
    if let Some(mode) = &options.delivery {
        let _ = ferry_triggers::DeliveryMode::parse(mode);
    }
    if let Some(url) = &options.callback_url {
        let guard = crate::delivery::guard::CallbackGuard::default();
        if let Ok(parsed) = url::Url::parse(url) {
            let _ = guard.check_literal(&parsed);
        }
    }
    if let Ok(query) = std::str::from_utf8(&body) {
        let _ = ferry_triggers::http::wait_param(Some(query));
    }
}

/// An upload: checked, compiled (in this process) and linked as a deploy would.
pub fn upload(data: &[u8]) {
    static RUNTIME: OnceLock<std::sync::Arc<crate::engine::Runtime>> = OnceLock::new();
    let runtime = RUNTIME.get_or_init(|| {
        #[allow(
            clippy::expect_used,
            reason = "a fuzz target without an engine cannot run"
        )]
        crate::engine::Runtime::new(&crate::engine::EngineOptions {
            max_instances: 4,
            ..crate::engine::EngineOptions::default()
        })
        .expect("the engine starts")
    });
    if let Ok((component, _)) = runtime.compile(data) {
        let _ = runtime.prepare(&component);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every seed and every input that once crashed a target, replayed.
    #[test]
    fn seeds_and_regressions_replay_cleanly() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
        let mut replayed = 0;
        for (name, target) in TARGETS {
            for kind in ["seeds", "regressions"] {
                let dir = root.join(kind).join(name);
                let Ok(entries) = std::fs::read_dir(&dir) else {
                    continue;
                };
                for entry in entries.flatten() {
                    let data = std::fs::read(entry.path()).unwrap();
                    target(&data);
                    replayed += 1;
                }
            }
        }
        assert!(
            replayed >= TARGETS.len(),
            "the seeds are in fuzz/seeds ({replayed} replayed)"
        );
    }
}
