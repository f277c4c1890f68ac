//! Webhooks: signed deliveries on the public listener, for every scheme, verified by the real
//! host, accepted durably, deduplicated by the provider's delivery id. The test signs the way each
//! provider does, with its own HMAC code.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use ferry_tests::receiver::Receiver;
use ferry_tests::{eventually, guests, Ferry};

fn hmac(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().to_vec()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// The headers a provider would send for `body`, signed with `secret`, at `ts`.
fn signed(scheme: &str, secret: &str, body: &[u8], ts: u64, id: &str) -> Vec<(String, String)> {
    let hex = |b: Vec<u8>| hex_string(&b);
    let b64 = |b: Vec<u8>| base64::engine::general_purpose::STANDARD.encode(b);
    let t = ts.to_string();
    match scheme {
        "github" => vec![
            (
                "x-hub-signature-256".into(),
                format!("sha256={}", hex(hmac(secret.as_bytes(), &[body]))),
            ),
            ("x-github-delivery".into(), id.into()),
            ("x-github-event".into(), "push".into()),
        ],
        "standard-webhooks" => {
            let key = base64::engine::general_purpose::STANDARD
                .decode(secret.strip_prefix("whsec_").unwrap())
                .unwrap();
            vec![
                ("webhook-id".into(), id.into()),
                ("webhook-timestamp".into(), t.clone()),
                (
                    "webhook-signature".into(),
                    format!(
                        "v1,{}",
                        b64(hmac(&key, &[id.as_bytes(), b".", t.as_bytes(), b".", body]))
                    ),
                ),
            ]
        }
        "stripe" => vec![(
            "stripe-signature".into(),
            format!(
                "t={t},v1={}",
                hex(hmac(secret.as_bytes(), &[t.as_bytes(), b".", body]))
            ),
        )],
        "slack" => vec![
            (
                "x-slack-signature".into(),
                format!(
                    "v0={}",
                    hex(hmac(secret.as_bytes(), &[b"v0:", t.as_bytes(), b":", body]))
                ),
            ),
            ("x-slack-request-timestamp".into(), t),
        ],
        "hmac-sha256" => vec![
            (
                "x-shopify-hmac-sha256".into(),
                b64(hmac(secret.as_bytes(), &[body])),
            ),
            ("x-shopify-webhook-id".into(), id.into()),
        ],
        other => panic!("no scheme {other}"),
    }
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// POSTs a delivery; returns (status, headers, body).
fn deliver(
    ferry: &Ferry,
    path: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> (u16, HashMap<String, String>, String) {
    let mut req = ferry
        .http
        .post(ferry.url(path))
        .header("content-type", "application/json")
        .body(body.to_vec());
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let resp = req.send().unwrap();
    let status = resp.status().as_u16();
    let h = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    (status, h, resp.text().unwrap())
}

/// The secret of each scheme's webhook in these tests.
fn secret_of(scheme: &str) -> &'static str {
    match scheme {
        "standard-webhooks" => WHSEC,
        "stripe" => "whsec_stripe_literal",
        "slack" => "8f742231b10e8888abcd99yyyzzz85a5",
        "hmac-sha256" => "shpss_generic",
        _ => "github-secret-from-env",
    }
}

const SCHEMES: [&str; 5] = [
    "github",
    "standard-webhooks",
    "stripe",
    "slack",
    "hmac-sha256",
];

/// misbehave, recording each run at `receiver`, with one webhook per scheme on
/// `/hooks/<scheme>/record`; the github secret comes from the host's environment.
fn recorder_with_hooks(receiver: &Receiver) -> Ferry {
    let mut ferry = Ferry::stopped(&[]);
    ferry.env = vec![(
        "FERRY_TEST_GITHUB_SECRET".into(),
        secret_of("github").into(),
    )];
    ferry.start_again();
    let mut manifest = format!(
        "name = \"misbehave\"\n[limits]\nmax_body = \"4KiB\"\n[outbound]\nallow = [\"127.0.0.1\"]\n[config]\nRECORD_TO = \"{}\"\n",
        receiver.addr
    );
    for scheme in SCHEMES {
        let secret = match scheme {
            "github" => "env:FERRY_TEST_GITHUB_SECRET".to_string(),
            s => secret_of(s).to_string(),
        };
        manifest.push_str(&format!(
            "[[trigger.webhook]]\npath = \"/hooks/{scheme}/record\"\nscheme = \"{scheme}\"\nsecret = \"{secret}\"\n"
        ));
        if scheme == "hmac-sha256" {
            manifest.push_str(
                "header = \"X-Shopify-Hmac-Sha256\"\nencoding = \"base64\"\nid_header = \"X-Shopify-Webhook-Id\"\n",
            );
        }
    }
    let (status, body) =
        ferry.deploy_manifest("misbehave", guests::bytes(guests::MISBEHAVE), &manifest);
    assert_eq!(status, 201, "{body}");
    ferry
}

fn hits(receiver: &Receiver) -> usize {
    receiver
        .requests()
        .iter()
        .filter(|r| r.path.starts_with("/hit/"))
        .count()
}

#[test]
fn every_scheme_accepts_signed_deliveries_and_refuses_the_rest_without_running_anything() {
    let receiver = Receiver::start();
    let ferry = recorder_with_hooks(&receiver);
    let body = br#"{"id": "evt_1", "type": "order.created", "event_id": "Ev1"}"#;
    let mut accepted = Vec::new();
    for scheme in SCHEMES {
        let path = format!("/hooks/{scheme}/record");
        let secret = secret_of(scheme);
        let id = format!("{scheme}-delivery-1");
        let good = signed(scheme, secret, body, now(), &id);
        let (status, headers, text) = deliver(&ferry, &path, &good, body);
        assert_eq!(status, 202, "{scheme}: {text}");
        assert!(
            headers.contains_key("location"),
            "{scheme}: 202 carries Location"
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        accepted.push(v["id"].as_str().unwrap().to_string());

        // Refused: each with its status, none stored or run.
        let mut tampered = body.to_vec();
        tampered[3] ^= 1;
        let (status, _, text) = deliver(&ferry, &path, &good, &tampered);
        assert_eq!(status, 401, "{scheme} tampered body: {text}");
        assert!(text.contains("does not match"), "{text}");
        let other_secret = match scheme {
            "standard-webhooks" => "whsec_c2VjcmV0LXRoYXQtaXMtbmV3LWFuZC1sb25n",
            _ => "not-the-secret-at-all-but-long",
        };
        let wrong = signed(scheme, other_secret, body, now(), &id);
        let (status, _, _) = deliver(&ferry, &path, &wrong, body);
        assert_eq!(status, 401, "{scheme} wrong secret");
        let (status, _, text) = deliver(&ferry, &path, &[], body);
        assert_eq!(status, 401, "{scheme} no signature");
        assert!(text.contains("missing"), "{text}");
        let garbage: Vec<(String, String)> = good
            .iter()
            .map(|(k, v)| {
                let signature = k.contains("signature") || k.contains("hmac");
                (
                    k.clone(),
                    if signature {
                        "v1,@@@ t=x,v1=zz v0=zz sha256=zz".into()
                    } else {
                        v.clone()
                    },
                )
            })
            .collect();
        let (status, _, _) = deliver(&ferry, &path, &garbage, body);
        assert_eq!(status, 401, "{scheme} garbage signature header");
        if matches!(scheme, "standard-webhooks" | "stripe" | "slack") {
            let stale = signed(scheme, secret, body, now() - 3600, &id);
            let (status, _, text) = deliver(&ferry, &path, &stale, body);
            assert_eq!(status, 400, "{scheme} stale: {text}");
            let future = signed(scheme, secret, body, now() + 3600, &id);
            let (status, _, text) = deliver(&ferry, &path, &future, body);
            assert_eq!(status, 400, "{scheme} future: {text}");
        }
    }
    for id in &accepted {
        assert_eq!(ferry.finished(id)["status"], "succeeded");
    }
    assert_eq!(
        hits(&receiver),
        SCHEMES.len(),
        "only the verified deliveries ran"
    );

    // What a provider can get wrong besides the signature.
    let big = vec![b'x'; 8 * 1024];
    let headers = signed("github", secret_of("github"), &big, now(), "big");
    assert_eq!(
        deliver(&ferry, "/hooks/github/record", &headers, &big).0,
        413
    );
    assert_eq!(deliver(&ferry, "/hooks/nobody", &[], b"{}").0, 404);
    let get = ferry
        .http
        .get(ferry.url("/hooks/github/record"))
        .send()
        .unwrap();
    assert_eq!(get.status().as_u16(), 405);
    // A function with webhooks runs only on signed deliveries, not on its own route.
    let direct = ferry.submit("/misbehave/record", &[], "{}");
    assert_eq!(direct.status().as_u16(), 404);
    assert!(direct.text().unwrap().contains("signed deliveries"));
    assert_eq!(ferry.get("/misbehave/record").0, 404);
    assert_eq!(hits(&receiver), SCHEMES.len(), "nothing refused ran");

    // The API lists the URLs to give the providers and never shows a secret.
    let (_, f) = ferry.admin_get("/v1/functions/misbehave");
    assert_eq!(
        f["webhooks"].as_array().unwrap().len(),
        SCHEMES.len(),
        "{f}"
    );
    let text = f.to_string();
    for scheme in SCHEMES {
        assert!(
            !text.contains(secret_of(scheme)),
            "a secret is shown: {text}"
        );
    }
    assert!(text.contains("env:FERRY_TEST_GITHUB_SECRET"), "{text}");
    let github = f["webhooks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["url"].as_str().unwrap().ends_with("/hooks/github/record"))
        .unwrap();
    assert_eq!(
        github["last_delivery"]["delivery_id"], "github-delivery-1",
        "{github}"
    );
    assert_eq!(
        github["last_refusal"]["status"], 405,
        "the last refusal, with its reason: {github}"
    );
    let shown = ferry.cli(&["show", "misbehave"], None);
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.contains("/hooks/github/record") && shown.contains("(webhooks take POST)"),
        "{shown}"
    );
}

#[test]
fn a_repeated_delivery_runs_once_and_a_rotation_takes_either_secret() {
    let receiver = Receiver::start();
    let ferry = Ferry::start();
    let manifest = format!(
        "name = \"misbehave\"\n[outbound]\nallow = [\"127.0.0.1\"]\n[config]\nRECORD_TO = \"{}\"\n\
         [[trigger.webhook]]\npath = \"/gh/record\"\nscheme = \"github\"\nsecret = \"new-secret\"\nprevious_secret = \"old-secret\"\n",
        receiver.addr
    );
    let (status, body) =
        ferry.deploy_manifest("misbehave", guests::bytes(guests::MISBEHAVE), &manifest);
    assert_eq!(status, 201, "{body}");
    let body = br#"{"ref": "refs/heads/main"}"#;
    let (status, _, first) = deliver(
        &ferry,
        "/gh/record",
        &signed("github", "old-secret", body, 0, "d-1"),
        body,
    );
    assert_eq!(
        status, 202,
        "the previous secret verifies during a rotation: {first}"
    );
    // GitHub redelivers the same delivery, now signed with the new secret.
    let (status, headers, again) = deliver(
        &ferry,
        "/gh/record",
        &signed("github", "new-secret", body, 0, "d-1"),
        body,
    );
    assert_eq!(status, 200, "{again}");
    assert_eq!(
        headers.get("ferry-idempotent-replay").map(String::as_str),
        Some("true")
    );
    let first: serde_json::Value = serde_json::from_str(&first).unwrap();
    let again: serde_json::Value = serde_json::from_str(&again).unwrap();
    assert_eq!(
        first["id"], again["id"],
        "the repeat answers with the first invocation"
    );
    let (status, _, _) = deliver(
        &ferry,
        "/gh/record",
        &signed("github", "new-secret", body, 0, "d-2"),
        body,
    );
    assert_eq!(status, 202);
    let (status, _, _) = deliver(
        &ferry,
        "/gh/record",
        &signed("github", "older-secret", body, 0, "d-3"),
        body,
    );
    assert_eq!(status, 401);
    // Another function may not take the path.
    let thief = "name = \"hello-http\"\n[[trigger.webhook]]\npath = \"/gh/record\"\nscheme = \"github\"\nsecret = \"x\"\n";
    let (status, body) =
        ferry.deploy_manifest("hello-http", guests::bytes(guests::HELLO_HTTP), thief);
    assert_eq!(status, 409, "{body}");
    assert!(body.to_string().contains("misbehave"), "{body}");
    eventually("two runs", Duration::from_secs(60), || {
        (hits(&receiver) == 2).then_some(())
    });
    assert_eq!(
        ferry.finished(first["id"].as_str().unwrap())["status"],
        "succeeded"
    );
    assert_eq!(hits(&receiver), 2, "d-1 ran once");
    let hook = |outcome: &str| {
        ferry.metric(&format!(
            "ferry_trigger_events_total{{trigger=\"webhook\",function=\"misbehave\",outcome=\"{outcome}\"}}"
        ))
    };
    assert_eq!(hook("verified"), 3.0);
    assert_eq!(hook("rejected"), 1.0);
    assert_eq!(hook("accepted"), 2.0);
    assert_eq!(hook("duplicate"), 1.0);
    let ok = r#"ferry_invocations_total{function="misbehave",trigger="webhook",mode="async",outcome="ok"}"#;
    eventually("both runs counted", Duration::from_secs(30), || {
        (ferry.metric(ok) == 2.0).then_some(())
    });
}

#[test]
fn an_event_function_gets_the_delivery_as_a_cloudevent() {
    let ferry = Ferry::start();
    let manifest = "name = \"echo-event\"\n[[trigger.webhook]]\npath = \"/hooks/push\"\nscheme = \"github\"\nsecret = \"s3cret\"\n";
    let (status, body) =
        ferry.deploy_manifest("echo-event", guests::bytes(guests::ECHO_EVENT), manifest);
    assert_eq!(status, 201, "{body}");
    let body = br#"{"ref": "refs/heads/main", "commits": []}"#;
    let (status, _, text) = deliver(
        &ferry,
        "/hooks/push",
        &signed("github", "s3cret", body, 0, "72d3162e"),
        body,
    );
    assert_eq!(status, 202, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let done = ferry.finished(v["id"].as_str().unwrap());
    assert_eq!(done["status"], "succeeded", "{done}");
    // echo-event answers with <type>.echo, <id>-echo, the same data, and echoedfrom = source.
    let result = &done["result"];
    assert_eq!(result["type"], "com.github.push.echo", "{result}");
    assert_eq!(result["id"], "72d3162e-echo", "{result}");
    assert_eq!(result["echoedfrom"], "/hooks/push", "{result}");
    assert_eq!(result["webhookscheme"], "github", "{result}");
    assert_eq!(result["data"]["ref"], "refs/heads/main", "{result}");
}

#[test]
fn a_delivery_acknowledged_before_sigkill_runs_after_the_restart() {
    let receiver = Receiver::start();
    let mut ferry = recorder_with_hooks(&receiver);
    let body = br#"{"id": "evt_crash", "type": "charge.succeeded"}"#;
    let headers = signed("stripe", secret_of("stripe"), body, now(), "");
    let (status, _, text) = deliver(&ferry, "/hooks/stripe/record", &headers, body);
    assert_eq!(status, 202, "{text}");
    ferry.kill();
    ferry.start_again();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let id = v["id"].as_str().unwrap();
    assert_eq!(ferry.finished(id)["status"], "succeeded");
    assert!(receiver
        .requests()
        .iter()
        .any(|r| r.path == format!("/hit/{id}")));
    // Stripe retries the same event: deduplicated by its id, also after the restart.
    let headers = signed("stripe", secret_of("stripe"), body, now(), "");
    let (status, _, again) = deliver(&ferry, "/hooks/stripe/record", &headers, body);
    assert_eq!(status, 200, "{again}");
}

#[test]
fn the_github_push_example_summarises_a_push_and_ignores_a_ping() {
    let ferry = Ferry::start();
    let manifest = "name = \"github-push\"\n[[trigger.webhook]]\npath = \"/hooks/github\"\nscheme = \"github\"\nsecret = \"example\"\n";
    let (status, body) =
        ferry.deploy_manifest("github-push", guests::bytes(guests::GITHUB_PUSH), manifest);
    assert_eq!(status, 201, "{body}");
    let push = br#"{"ref": "refs/heads/main", "compare": "https://github.com/o/r/compare/a...b",
        "repository": {"full_name": "o/r"}, "pusher": {"name": "ada"},
        "commits": [{"message": "Fix the journal\n\nDetails"}, {"message": "Docs"}]}"#;
    let (status, _, text) = deliver(
        &ferry,
        "/hooks/github",
        &signed("github", "example", push, 0, "p-1"),
        push,
    );
    assert_eq!(status, 202, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let done = ferry.finished(v["id"].as_str().unwrap());
    assert_eq!(done["status"], "succeeded", "{done}");
    let summary = &done["result"];
    assert_eq!(summary["type"], "com.example.push.summary", "{summary}");
    assert_eq!(summary["data"]["repository"], "o/r");
    assert_eq!(summary["data"]["branch"], "main");
    assert_eq!(summary["data"]["commits"], 2);
    assert_eq!(summary["data"]["messages"][0], "Fix the journal");
    // GitHub's ping when the webhook is set up: acknowledged, no event.
    let ping = br#"{"zen": "Keep it logically awesome."}"#;
    let mut headers = signed("github", "example", ping, 0, "p-2");
    for (k, v) in headers.iter_mut() {
        if k == "x-github-event" {
            *v = "ping".into();
        }
    }
    let (status, _, text) = deliver(&ferry, "/hooks/github", &headers, ping);
    assert_eq!(status, 202, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let done = ferry.finished(v["id"].as_str().unwrap());
    assert_eq!(done["status"], "succeeded", "{done}");
    assert!(done["result"].is_null(), "{done}");
}
