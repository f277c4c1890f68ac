//! `/metrics` with the real binary: counters and histograms move as invocations run.

use ferry_tests::{guests, Ferry};

/// The value of the sample whose line starts with `series` (name and labels), 0 when absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn scrape(ferry: &Ferry) -> String {
    let resp = ferry
        .admin_req(reqwest::Method::GET, "/metrics")
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    resp.text().unwrap()
}

#[test]
fn counters_and_histograms_move_as_invocations_run() {
    let ferry = Ferry::start();
    let (status, body) = ferry.deploy_raw("hello-http", guests::bytes(guests::HELLO_HTTP));
    assert_eq!(status, 201, "{body}");
    let (status, body) = ferry.deploy_manifest(
        "hostile",
        guests::bytes(guests::HOSTILE),
        "name = \"hostile\"\n[limits]\ntimeout = \"1s\"\n",
    );
    assert_eq!(status, 201, "{body}");
    // Behind the admin token like every admin route.
    let open = ferry.http.get(ferry.admin_url("/metrics")).send().unwrap();
    assert_eq!(open.status().as_u16(), 401);

    let ok =
        r#"ferry_invocations_total{function="hello-http",trigger="http",mode="sync",outcome="ok"}"#;
    let count = r#"ferry_invocation_duration_seconds_count{function="hello-http"}"#;
    let timeout = r#"ferry_limit_hits_total{function="hostile",limit="timeout"}"#;
    let trap =
        r#"ferry_invocations_total{function="hostile",trigger="http",mode="sync",outcome="trap"}"#;
    let before = scrape(&ferry);
    for _ in 0..3 {
        assert_eq!(ferry.get("/hello-http/x").0, 200);
    }
    assert_eq!(ferry.get("/hostile/loop").0, 504);
    assert_eq!(ferry.get("/hostile/panic").0, 500);
    let after = scrape(&ferry);
    assert_eq!(sample(&after, ok) - sample(&before, ok), 3.0, "{after}");
    assert_eq!(
        sample(&after, count) - sample(&before, count),
        3.0,
        "{after}"
    );
    assert_eq!(
        sample(&after, timeout) - sample(&before, timeout),
        1.0,
        "{after}"
    );
    assert_eq!(sample(&after, trap) - sample(&before, trap), 1.0, "{after}");
    assert!(after.contains("ferry_instance_memory_cap_bytes"), "{after}");
    // An async invocation counts as async once it has run.
    let id = ferry.submit_ok("/hello-http/later", &[]);
    assert_eq!(ferry.finished(&id)["status"], "succeeded");
    let asynced = r#"ferry_invocations_total{function="hello-http",trigger="http",mode="async",outcome="ok"}"#;
    assert_eq!(sample(&scrape(&ferry), asynced), 1.0);
}

#[test]
fn delivery_callbacks_and_compilations_are_counted() {
    use std::time::Duration;
    let receiver = ferry_tests::receiver::Receiver::start();
    let ferry = Ferry::start_with(&["--allow-callback-host", "127.0.0.1"]);
    let (status, body) = ferry.deploy_raw("hello-http", guests::bytes(guests::HELLO_HTTP));
    assert_eq!(status, 201, "{body}");
    let (status, body) = ferry.deploy_manifest(
        "hostile",
        guests::bytes(guests::HOSTILE),
        "name = \"hostile\"\n[delivery]\nmax_attempts = 2\nbackoff = { initial = \"10ms\", max = \"20ms\" }\n",
    );
    assert_eq!(status, 201, "{body}");
    let text = scrape(&ferry);
    assert!(
        sample(&text, r#"ferry_compilations_total{outcome="compiled"}"#) >= 2.0,
        "{text}"
    );
    assert!(
        sample(&text, "ferry_compile_seconds_count") >= 2.0,
        "{text}"
    );

    // A failing async invocation: one retry, then a dead letter.
    let id = ferry.submit_ok("/hostile/panic", &[]);
    assert_eq!(ferry.finished(&id)["status"], "dead_lettered");
    // A callback delivered.
    let id = ferry.submit_ok(
        "/hello-http/cb",
        &[("x-callback-url", &receiver.url("/cb"))],
    );
    assert_eq!(ferry.finished(&id)["status"], "succeeded");
    ferry_tests::eventually(
        "the callback to be counted",
        Duration::from_secs(60),
        || {
            let text = scrape(&ferry);
            (sample(
                &text,
                r#"ferry_callback_deliveries_total{outcome="delivered"}"#,
            ) == 1.0)
                .then_some(text)
        },
    );
    let text = scrape(&ferry);
    assert_eq!(
        sample(&text, r#"ferry_attempt_retries_total{function="hostile"}"#),
        1.0,
        "{text}"
    );
    assert_eq!(
        sample(&text, r#"ferry_dead_letters_total{function="hostile"}"#),
        1.0,
        "{text}"
    );
    assert!(
        text.contains(r#"ferry_async_queued{pool="store_and_forward"}"#),
        "{text}"
    );
}
