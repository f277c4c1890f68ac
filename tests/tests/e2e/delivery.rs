//! The delivery engine end to end: store-and-forward and fire-and-forget submits, status URLs
//! with long-poll, retries, dead letters and replay, idempotency, signed callbacks and refused
//! callback addresses.

use std::time::{Duration, Instant};

use ferry_tests::receiver::Receiver;
use ferry_tests::{eventually, guests, webhook, Ferry};
use serde_json::Value;

/// Polls an invocation until its callback reaches `status`.
fn callback_reaches(ferry: &Ferry, id: &str, status: &str) -> Value {
    eventually(
        &format!("the callback to be {status}"),
        Duration::from_secs(30),
        || {
            let v = ferry.invocation(id, 1);
            (v["callback"]["status"] == status).then_some(v)
        },
    )
}

fn with_misbehave(args: &[&str], manifest_extra: &str) -> Ferry {
    let ferry = Ferry::start_with(args);
    let manifest = format!(
        "name = \"misbehave\"\n[delivery]\nmax_attempts = 3\nbackoff = {{ initial = \"50ms\", max = \"200ms\" }}\n{manifest_extra}"
    );
    let (status, body) =
        ferry.deploy_manifest("misbehave", guests::bytes(guests::MISBEHAVE), &manifest);
    assert_eq!(status, 201, "{body}");
    ferry
}

#[test]
fn store_and_forward_runs_the_request_and_long_poll_returns_when_done() {
    let ferry = Ferry::start();
    assert_eq!(
        ferry
            .deploy_raw("hello-http", guests::bytes(guests::HELLO_HTTP))
            .0,
        201
    );
    let resp = ferry.submit("/hello-http/async?x=1", &[], "the body");
    assert_eq!(resp.status().as_u16(), 202);
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    let body: Value = resp.json().unwrap();
    assert_eq!(body["status_url"], location);
    assert_eq!(body["mode"], "store-and-forward");
    assert!(location.starts_with(&ferry.url("/_ferry/invocations/")));

    let done: Value = ferry
        .http
        .get(format!("{location}?wait=30s"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["function"], "hello-http");
    assert_eq!(done["attempts"], 1);
    assert_eq!(done["result"]["status"], 200);
    assert_eq!(
        done["result"]["body"],
        "Hello from Ferry! path=/hello-http/async?x=1\n"
    );

    // A long-poll on a slow invocation answers as soon as it ends, not when the wait runs out.
    let ferry2 = with_misbehave(&[], "");
    let id = ferry2.submit_ok("/misbehave/sleep?ms=1500", &[]);
    let started = Instant::now();
    let v = ferry2.invocation(&id, 30);
    assert_eq!(v["status"], "succeeded", "{v}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "long-poll returned at completion"
    );
    // Without wait, the status is returned at once.
    let id = ferry2.submit_ok("/misbehave/sleep?ms=3000", &[]);
    let v: Value = ferry2
        .http
        .get(ferry2.url(&format!("/_ferry/invocations/{id}")))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert!(
        matches!(v["status"].as_str(), Some("pending" | "running")),
        "{v}"
    );
}

#[test]
fn fire_and_forget_runs_and_a_full_queue_is_refused_not_dropped() {
    let ferry = with_misbehave(&["--queue-size", "1", "--workers", "1"], "");
    let id = ferry.submit_ok("/misbehave/ok", &[("ferry-delivery", "fire-and-forget")]);
    let v = ferry.finished(&id);
    assert_eq!(v["status"], "succeeded");
    assert_eq!(v["mode"], "fire-and-forget");

    // One worker busy, one slot queued: the next submits must be refused with 503.
    let mut accepted = Vec::new();
    let mut refused = 0;
    for _ in 0..6 {
        let resp = ferry.submit(
            "/misbehave/sleep?ms=1500",
            &[("ferry-delivery", "fire-and-forget")],
            "",
        );
        match resp.status().as_u16() {
            202 => accepted.push(
                resp.json::<Value>().unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            ),
            503 => {
                assert_eq!(resp.headers()["retry-after"], "1");
                refused += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(
        refused >= 3,
        "a full queue refuses (accepted {}, refused {refused})",
        accepted.len()
    );
    for id in accepted {
        assert_eq!(
            ferry.finished(&id)["status"],
            "succeeded",
            "every accepted one runs"
        );
    }

    let resp = ferry.submit("/misbehave/ok", &[("ferry-delivery", "sometimes")], "");
    assert_eq!(resp.status().as_u16(), 400);
    assert!(resp
        .text()
        .unwrap()
        .contains("fire-and-forget or store-and-forward"));
}

#[test]
fn failures_are_retried_on_the_backoff_schedule() {
    let ferry = with_misbehave(&[], "");
    let id = ferry.submit_ok("/misbehave/flaky?fail=2", &[]);
    let v = ferry.finished(&id);
    assert_eq!(v["status"], "succeeded", "{v}");
    assert_eq!(v["attempts"], 3);
    let history = v["history"].as_array().unwrap();
    assert_eq!(history.len(), 3);
    assert!(history[0]["error"].as_str().unwrap().contains("503"), "{v}");
    assert!(history[1]["error"].as_str().unwrap().contains("503"));
    assert!(history[2]["error"].is_null());
    assert_eq!(v["result"]["body"], "attempt 3 succeeds\n");
}

#[test]
fn an_event_functions_dead_letter_is_replayed_as_a_new_invocation() {
    let ferry = Ferry::start();
    let once = "name = \"ev\"\n[delivery]\nmax_attempts = 1\n";
    assert_eq!(
        ferry
            .deploy_manifest("ev", guests::bytes(guests::FLAKY), once)
            .0,
        201
    );
    let event = [
        ("ce-id", "e-1"),
        ("ce-source", "/replay"),
        ("ce-type", "t"),
        ("ce-specversion", "1.0"),
        ("content-type", "text/plain"),
    ];
    let resp = ferry.submit("/ev", &event, "FAIL");
    assert_eq!(resp.status().as_u16(), 202);
    let id = resp.json::<Value>().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(ferry.finished(&id)["status"], "dead_lettered");

    // The same name now runs echo-event: the replay must run it, as a new invocation.
    assert_eq!(
        ferry
            .deploy_manifest("ev", guests::bytes(guests::ECHO_EVENT), once)
            .0,
        200
    );
    let out = ferry.cli(&["dlq", "replay", &id], None);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let new_id = text
        .split("as a new invocation ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no new invocation in {text:?}"))
        .to_string();
    assert_ne!(new_id, id);
    let done = ferry.finished(&new_id);
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["attempts"], 1);
    assert_eq!(done["result"]["id"], "e-1-echo");
    assert_eq!(done["result"]["data"], "FAIL");
    // The dead letter is gone, and says what replaced it.
    assert!(ferry
        .admin_get("/v1/deadletters")
        .1
        .as_array()
        .unwrap()
        .is_empty());
    assert_eq!(ferry.invocation(&id, 0)["replayed_as"], new_id.as_str());
    // The event's idempotency key now leads to the replacement.
    let again = ferry.submit("/ev", &event, "FAIL");
    assert_eq!(again.headers()["ferry-idempotent-replay"], "true");
    assert_eq!(again.json::<Value>().unwrap()["id"], new_id.as_str());
}

#[test]
fn exhausted_invocations_are_dead_lettered_then_replayed_and_purged() {
    let ferry = with_misbehave(&[], "");
    let id = ferry.submit_ok(
        "/misbehave/fail-unless-fixed",
        &[
            ("authorization", "Bearer hunter2-token"),
            ("cookie", "session=s3cr3t"),
            ("x-api-key", "k-12345"),
        ],
    );
    let v = ferry.finished(&id);
    assert_eq!(v["status"], "dead_lettered", "{v}");
    assert_eq!(v["attempts"], 3);
    assert!(v["error"].as_str().unwrap().contains("500"));
    assert_eq!(v["result"]["status"], 500, "the last response is kept");

    let out = ferry.cli(&["dlq", "list", "--json"], None);
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["id"], id.as_str());
    let text = String::from_utf8(ferry.cli(&["dlq", "list"], None).stdout).unwrap();
    assert!(
        text.contains(&id) && text.contains("misbehave") && text.contains("3 attempts"),
        "{text}"
    );
    let shown: Value =
        serde_json::from_slice(&ferry.cli(&["dlq", "show", &id], None).stdout).unwrap();
    assert_eq!(shown["payload"]["path"], "/misbehave/fail-unless-fixed");
    // Credentials are kept for the replay but never shown (nor their base64).
    let text = shown.to_string();
    for secret in ["hunter2-token", "s3cr3t", "k-12345"] {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(secret);
        assert!(
            !text.contains(secret) && !text.contains(&b64[..8]),
            "{secret} shown: {text}"
        );
    }
    assert!(text.contains("(redacted)"), "{text}");
    assert_eq!(shown["history"].as_array().unwrap().len(), 3);

    // Fix the function, then replay: the dead letter runs again and succeeds.
    let fixed = "name = \"misbehave\"\n[config]\nFIXED = \"1\"\n";
    assert_eq!(
        ferry
            .deploy_manifest("misbehave", guests::bytes(guests::MISBEHAVE), fixed)
            .0,
        200
    );
    let out = ferry.cli(&["dlq", "replay", &id, "--json"], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let replayed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let new_id = replayed["id"].as_str().unwrap();
    assert_ne!(new_id, id);
    assert_eq!(ferry.finished(new_id)["status"], "succeeded");
    assert!(ferry
        .admin_get("/v1/deadletters")
        .1
        .as_array()
        .unwrap()
        .is_empty());
    let out = ferry.cli(&["dlq", "replay", &id], None);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no dead letter")
    );

    // Purge.
    let again = "name = \"misbehave\"\n[delivery]\nmax_attempts = 1\n";
    assert_eq!(
        ferry
            .deploy_manifest("misbehave", guests::bytes(guests::MISBEHAVE), again)
            .0,
        200
    );
    for _ in 0..2 {
        let id = ferry.submit_ok("/misbehave/status?code=500", &[]);
        assert_eq!(ferry.finished(&id)["status"], "dead_lettered");
    }
    let out = ferry.cli(&["dlq", "purge", "--all"], None);
    assert!(String::from_utf8_lossy(&out.stdout).contains("purged 2"));
    assert!(ferry
        .admin_get("/v1/deadletters")
        .1
        .as_array()
        .unwrap()
        .is_empty());
}

#[test]
fn idempotency_keys_and_cloudevent_ids_return_the_first_invocation() {
    let recv = Receiver::start();
    let manifest = format!(
        "[outbound]\nallow = [\"127.0.0.1\"]\n[config]\nRECORD_TO = \"{}\"\n",
        recv.addr
    );
    let ferry = with_misbehave(&[], &manifest);
    let a = ferry.submit_ok("/misbehave/record", &[("idempotency-key", "order-1")]);
    let resp = ferry.submit("/misbehave/record", &[("idempotency-key", "order-1")], "");
    assert_eq!(resp.status().as_u16(), 202);
    assert_eq!(resp.headers()["ferry-idempotent-replay"], "true");
    let b: Value = resp.json().unwrap();
    assert_eq!(b["id"], a.as_str());
    let c = ferry.submit_ok("/misbehave/record", &[("idempotency-key", "order-2")]);
    assert_ne!(a, c);
    assert_eq!(ferry.finished(&a)["status"], "succeeded");
    assert_eq!(ferry.finished(&c)["status"], "succeeded");
    let hits: Vec<String> = recv.requests().iter().map(|r| r.path.clone()).collect();
    assert_eq!(
        hits.iter().filter(|p| p.ends_with(&a)).count(),
        1,
        "ran once: {hits:?}"
    );

    // CloudEvents: source + id identify the event.
    assert_eq!(
        ferry
            .deploy_raw("echo-event", guests::bytes(guests::ECHO_EVENT))
            .0,
        201
    );
    let ce = |id: &str| {
        ferry.submit(
            "/echo-event",
            &[
                ("ce-id", id),
                ("ce-source", "/orders"),
                ("ce-type", "t"),
                ("ce-specversion", "1.0"),
            ],
            "",
        )
    };
    let first: Value = ce("e-1").json().unwrap();
    let again: Value = ce("e-1").json().unwrap();
    let other: Value = ce("e-2").json().unwrap();
    assert_eq!(first["id"], again["id"]);
    assert_ne!(first["id"], other["id"]);
    let done = ferry.finished(first["id"].as_str().unwrap());
    assert_eq!(done["result"]["id"], "e-1-echo", "{done}");

    let resp = ferry.submit("/echo-event", &[("ce-id", "x")], "");
    assert_eq!(resp.status().as_u16(), 400);
    assert!(resp.text().unwrap().contains("`source`"));
    let resp = ferry.submit("/nothing-here", &[], "");
    assert_eq!(
        resp.status().as_u16(),
        404,
        "unknown functions fail at submit time"
    );
}

#[test]
fn callbacks_are_signed_and_retried() {
    // 429 and then 503, each with Retry-After, then 200.
    let recv = Receiver::with(|_, n| match n {
        0 => (429, vec![("retry-after".into(), "1".into())]),
        1 => (503, vec![("retry-after".into(), "1".into())]),
        _ => (200, vec![]),
    });
    let ferry = with_misbehave(
        &[
            "--allow-callback-host",
            "127.0.0.1",
            "--callback-backoff-initial",
            "50ms",
            "--callback-backoff-max",
            "200ms",
        ],
        "",
    );
    let secret = ferry.admin_get("/v1/callback-secret").1["secret"]
        .as_str()
        .unwrap()
        .to_string();
    let cb = recv.url("/hooks/result");
    let id = ferry.submit_ok("/misbehave/ok", &[("x-callback-url", &cb)]);
    let v = callback_reaches(&ferry, &id, "delivered");
    assert_eq!(v["callback"]["attempts"], 3);
    let reqs = recv.requests();
    assert_eq!(reqs.len(), 3);
    for r in &reqs {
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/hooks/result");
        assert_eq!(r.header("webhook-id"), Some(id.as_str()));
        let ts = r.header("webhook-timestamp").unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(now.abs_diff(ts.parse().unwrap()) < 300);
        assert!(
            webhook::verify(
                &secret,
                &id,
                ts,
                &r.body,
                r.header("webhook-signature").unwrap()
            ),
            "signature"
        );
        assert!(!webhook::verify(
            &secret,
            &id,
            ts,
            b"tampered",
            r.header("webhook-signature").unwrap()
        ));
        assert_eq!(r.header("ferry-function"), Some("misbehave"));
        assert_eq!(r.header("ferry-outcome"), Some("succeeded"));
        assert_eq!(r.header("ferry-attempts"), Some("1"));
        assert!(r.header("ferry-duration-ms").is_some());
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["id"], id.as_str());
        assert_eq!(body["result"]["body"], "Hello from misbehave\n");
    }
    assert_eq!(
        ferry.invocation(&id, 0)["status"],
        "succeeded",
        "the callback does not change the outcome"
    );
}

#[test]
fn callback_410_stops_and_redirects_are_failures_that_dead_letter() {
    let gone = Receiver::with(|_, _| (410, vec![]));
    let redirect =
        Receiver::with(|_, _| (302, vec![("location".into(), "http://example.com/".into())]));
    let ferry = with_misbehave(
        &[
            "--allow-callback-host",
            "127.0.0.1",
            "--callback-max-attempts",
            "3",
            "--callback-backoff-initial",
            "20ms",
            "--callback-backoff-max",
            "50ms",
        ],
        "",
    );
    let a = ferry.submit_ok("/misbehave/ok", &[("x-callback-url", &gone.url("/gone"))]);
    let v = callback_reaches(&ferry, &a, "failed");
    assert_eq!(v["callback"]["attempts"], 1);
    assert!(v["callback"]["last_error"]
        .as_str()
        .unwrap()
        .contains("410"));

    let b = ferry.submit_ok(
        "/misbehave/status?code=500",
        &[("x-callback-url", &redirect.url("/r"))],
    );
    let v = callback_reaches(&ferry, &b, "dead_lettered");
    assert_eq!(
        v["status"], "dead_lettered",
        "the invocation failed too (500)"
    );
    assert_eq!(
        redirect.requests().len(),
        3,
        "3xx is retried, never followed"
    );
    let outcome = redirect.requests()[0]
        .header("ferry-outcome")
        .map(String::from);
    assert_eq!(outcome.as_deref(), Some("dead_lettered"));
}

#[test]
fn callback_addresses_in_private_ranges_are_refused() {
    let ferry = with_misbehave(&[], "");
    for url in [
        "http://127.0.0.1:9/cb",
        "http://localhost/cb",
        "http://169.254.169.254/latest/meta-data",
        "http://10.0.0.1/cb",
        "http://192.168.1.20/cb",
        "http://[::1]/cb",
        "http://[fe80::1]/cb",
        "http://100.64.0.1/cb",
        "ftp://example.com/cb",
        "not a url",
    ] {
        let resp = ferry.submit("/misbehave/ok", &[("x-callback-url", url)], "");
        assert_eq!(resp.status().as_u16(), 400, "{url}");
        let text = resp.text().unwrap();
        assert!(text.contains("X-Callback-Url"), "{url}: {text}");
    }
    assert!(ferry
        .admin_get("/v1/deadletters")
        .1
        .as_array()
        .unwrap()
        .is_empty());
}

/// Waits until the invocation `id` is gone (its status reads 404).
fn expires(ferry: &Ferry, id: &str) {
    eventually(
        &format!("invocation {id} to expire"),
        Duration::from_secs(60),
        || {
            let resp = ferry
                .http
                .get(ferry.url(&format!("/_ferry/invocations/{id}")))
                .send()
                .unwrap();
            (resp.status().as_u16() == 404).then_some(())
        },
    );
}

#[test]
fn finished_invocations_and_their_keys_expire_after_retention() {
    let ferry = with_misbehave(&["--retention", "2s"], "");
    let id = ferry.submit_ok("/misbehave/ok", &[("idempotency-key", "k")]);
    assert_eq!(ferry.finished(&id)["status"], "succeeded");
    expires(&ferry, &id);
    // The key expired with it: the same key is a new invocation now.
    let again = ferry.submit_ok("/misbehave/ok", &[("idempotency-key", "k")]);
    assert_ne!(again, id);
    // Dead letters are kept until replayed or purged, whatever the retention.
    let dead = ferry.submit_ok("/misbehave/status?code=500", &[]);
    assert_eq!(ferry.finished(&dead)["status"], "dead_lettered");
    // An invocation that finished after the dead letter expires: the janitor has swept past the
    // dead letter's age, and kept it.
    let later = ferry.submit_ok("/misbehave/ok", &[]);
    assert_eq!(ferry.finished(&later)["status"], "succeeded");
    expires(&ferry, &later);
    assert_eq!(ferry.invocation(&dead, 0)["status"], "dead_lettered");
}

/// What may expire is written at checkpoints (expiry logs), so it must outlive a crash: the
/// invocations finish, a checkpoint stores them, the host is killed, and the restarted host
/// (which serves them as stored, not run again) removes them after the retention.
#[test]
fn an_invocation_finished_before_a_crash_still_expires_after_the_restart() {
    // The retention is counted from when they finish: long enough for the wait for a quiet
    // store, the kill and the restart on a loaded machine.
    let mut ferry = with_misbehave(&["--retention", "30s"], "");
    // Its optimized code first: storing it flushes the store, which would restart the wait.
    ferry.optimized("misbehave");
    let ids: Vec<String> = (0..3)
        .map(|_| ferry.submit_ok("/misbehave/ok", &[]))
        .collect();
    let finished: Vec<Value> = ids.iter().map(|id| ferry.finished(id)).collect();
    for v in &finished {
        assert_eq!(v["status"], "succeeded", "{v}");
    }
    ferry_tests::wait_until_checkpointed(&ferry.data_dir);
    ferry.kill();
    ferry.start_again();
    for (id, before) in ids.iter().zip(&finished) {
        // As stored before the kill (a re-run from the journal would have a new time).
        let after = ferry.invocation(id, 0);
        assert_eq!(after["status"], "succeeded", "{after}");
        assert_eq!(after["updated"], before["updated"], "{after} vs {before}");
    }
    for id in &ids {
        expires(&ferry, id);
    }
}

#[test]
fn event_function_failures_typed_errors_and_traps() {
    let ferry = Ferry::start();
    let manifest = "name = \"echo-event\"\n[delivery]\nmax_attempts = 2\nbackoff = { initial = \"20ms\", max = \"50ms\" }\n";
    assert_eq!(
        ferry
            .deploy_manifest("echo-event", guests::bytes(guests::ECHO_EVENT), manifest)
            .0,
        201
    );
    let submit = |id: &str, ty: &str| {
        let resp = ferry.submit(
            "/echo-event",
            &[
                ("ce-id", id),
                ("ce-source", "/t"),
                ("ce-type", ty),
                ("ce-specversion", "1.0"),
            ],
            "",
        );
        assert_eq!(resp.status().as_u16(), 202);
        resp.json::<Value>().unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    // invalid-event: the function says retrying will not help.
    let v = ferry.finished(&submit("1", "ferry.test.reject"));
    assert_eq!(v["status"], "dead_lettered", "{v}");
    assert_eq!(v["attempts"], 1);
    assert!(v["error"].as_str().unwrap().contains("invalid-event"));
    // retryable: retried up to max_attempts.
    let v = ferry.finished(&submit("2", "ferry.test.retry"));
    assert_eq!(v["attempts"], 2, "{v}");
    assert!(v["error"].as_str().unwrap().contains("retryable"));
    // A trap is a failure of its own kind, retried, and the host goes on.
    let v = ferry.finished(&submit("3", "ferry.test.panic"));
    assert_eq!(v["attempts"], 2, "{v}");
    assert!(v["error"].as_str().unwrap().contains("trapped"), "{v}");
    let v = ferry.finished(&submit("4", "fine"));
    assert_eq!(v["status"], "succeeded");
    assert_eq!(v["result"]["type"], "fine.echo");
    // Synchronously, a trap is a 500 naming the function.
    let resp = ferry
        .http
        .post(ferry.url("/echo-event"))
        .header("ce-id", "5")
        .header("ce-source", "/t")
        .header("ce-type", "ferry.test.panic")
        .header("ce-specversion", "1.0")
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 500);
    assert!(resp.text().unwrap().contains("function echo-event trapped"));
}

#[test]
fn a_callback_may_never_target_the_hosts_own_listeners() {
    let receiver = ferry_tests::receiver::Receiver::start();
    let ferry = Ferry::start_with(&["--allow-callback-host", "127.0.0.1"]);
    let (status, body) = ferry.deploy_raw("hello-http", guests::bytes(guests::HELLO_HTTP));
    assert_eq!(status, 201, "{body}");
    // The admin API and the public listener, on an allowed host: still refused.
    for target in [
        ferry.admin_url("/v1/deadletters"),
        ferry.url("/hello-http/loop"),
    ] {
        let resp = ferry.submit("/hello-http/x", &[("x-callback-url", &target)], "");
        let status = resp.status().as_u16();
        let text = resp.text().unwrap();
        assert_eq!(status, 400, "{target}: {text}");
        assert!(text.contains("own listener"), "{text}");
    }
    // Another port of the allowed host is fine.
    let id = ferry.submit_ok("/hello-http/x", &[("x-callback-url", &receiver.url("/cb"))]);
    assert_eq!(ferry.finished(&id)["status"], "succeeded");
    eventually("the callback", Duration::from_secs(60), || {
        receiver
            .requests()
            .iter()
            .any(|r| r.path == "/cb")
            .then_some(())
    });
}
