//! `/metrics` with the real binary: counters and histograms move as invocations run.

use ferry_tests::{guests, sample, Ferry};

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
    assert_eq!(body["code"]["tier"], "baseline", "{body}");
    ferry.optimized("hello-http");
    ferry.optimized("hostile");
    let text = scrape(&ferry);
    for outcome in ["baseline", "compiled"] {
        let line = format!("ferry_compilations_total{{outcome=\"{outcome}\"}}");
        assert!(sample(&text, &line) >= 2.0, "{text}");
    }
    assert!(
        sample(&text, "ferry_compile_seconds_count") >= 4.0,
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

#[test]
fn status_shows_the_host_and_each_functions_last_five_minutes() {
    let ferry = Ferry::start();
    for (name, wasm) in [
        ("hello-http", guests::HELLO_HTTP),
        ("hostile", guests::HOSTILE),
    ] {
        let (status, body) = ferry.deploy_raw(name, guests::bytes(wasm));
        assert_eq!(status, 201, "{body}");
    }
    for _ in 0..3 {
        assert_eq!(ferry.get("/hello-http/x").0, 200);
    }
    assert_eq!(ferry.get("/hostile/panic").0, 500);
    let (status, v) = ferry.admin_get("/v1/status");
    assert_eq!(status, 200, "{v}");
    let host = &v["host"];
    assert_eq!(host["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(host["ready"], true);
    assert_eq!(host["store"]["status"], "ok");
    assert!(host["store"]["size_bytes"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(host["instances"]["in_use"], 0, "{v}");
    assert_eq!(host["instances"]["capacity"], 1000, "{v}");
    assert!(host["nats"].is_null());
    let f = |name: &str| {
        v["functions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == name)
            .unwrap()
            .clone()
    };
    let hello = f("hello-http");
    assert_eq!(hello["last_5m"]["invocations"], 3, "{hello}");
    assert_eq!(hello["last_5m"]["failure_rate"], 0.0, "{hello}");
    let p50 = hello["last_5m"]["p50_ms"].as_f64().unwrap();
    let p99 = hello["last_5m"]["p99_ms"].as_f64().unwrap();
    assert!(p50 > 0.0 && p50 <= p99, "{hello}");
    assert_eq!(hello["triggers"][0]["kind"], "http");
    assert_eq!(hello["triggers"][0]["state"], "serving");
    assert_eq!(hello["dead_letters"], 0);
    let hostile = f("hostile");
    assert_eq!(hostile["last_5m"]["failures"], 1, "{hostile}");
    assert_eq!(hostile["last_5m"]["failure_rate"], 1.0, "{hostile}");

    let out = ferry.cli(&["status"], None);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("ready") && text.contains("FUNCTION"),
        "{text}"
    );
    let row = text.lines().find(|l| l.starts_with("hostile")).unwrap();
    assert!(
        row.contains("100.0%") && row.contains("http serving"),
        "{text}"
    );
    let out = ferry.cli(&["status", "--json"], None);
    let parsed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(parsed["functions"].as_array().unwrap().len(), 2);
    // Liveness and readiness stay apart.
    assert_eq!(ferry.admin_get("/readyz").1["ready"], true);
    assert_eq!(ferry.admin_get("/healthz").1["status"], "ok");
}

#[test]
fn every_metric_the_docs_and_the_dashboard_name_is_served() {
    let ferry = Ferry::start();
    let text = ferry.admin_text("/metrics");
    let served: std::collections::BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for file in ["docs/operations.md", "docs/grafana-dashboard.json"] {
        let whole = std::fs::read_to_string(root.join(file)).unwrap();
        // operations.md: its metrics section (elsewhere `ferry_host` is a log target).
        let doc = match (whole.find("### Metrics"), whole.find("### Function logs")) {
            (Some(a), Some(b)) if a < b => &whole[a..b],
            _ => whole.as_str(),
        };
        let mut named = 0;
        for word in doc.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if !word.starts_with("ferry_") || word.len() <= "ferry_".len() {
                continue;
            }
            let base = ["_total", "_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| word.strip_suffix(s))
                .unwrap_or(word);
            assert!(
                served.contains(base),
                "{file} names {word}, which /metrics does not serve: {served:?}"
            );
            named += 1;
        }
        assert!(named > 10, "{file} names the metrics");
    }
}
