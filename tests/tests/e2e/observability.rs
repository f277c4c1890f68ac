//! Logs and traces with the real binary: guest output kept per invocation and followed with
//! `ferry logs -f`, W3C trace context from the caller into the guest, its outbound requests and
//! the callback, and the host's JSON log carrying invocation and trace ids.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ferry_tests::receiver::Receiver;
use ferry_tests::{eventually, guests, Ferry};

const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const PARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

fn deploy_hostile(ferry: &Ferry, extra: &str) {
    let (status, body) = ferry.deploy_manifest(
        "hostile",
        guests::bytes(guests::HOSTILE),
        &format!("name = \"hostile\"\n{extra}"),
    );
    assert_eq!(status, 201, "{body}");
}

/// GET with headers: status, the `ferry-invocation-id` header, body.
fn get(ferry: &Ferry, path: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
    let mut req = ferry.http.get(ferry.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().unwrap();
    let status = resp.status().as_u16();
    let id = resp
        .headers()
        .get("ferry-invocation-id")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, id, resp.text().unwrap())
}

/// The parts of a traceparent: (trace id, parent id, flags).
fn parts(traceparent: &str) -> (String, String, String) {
    let p: Vec<&str> = traceparent.trim().split('-').collect();
    assert_eq!(p.len(), 4, "{traceparent:?}");
    assert_eq!(p[0], "00", "{traceparent:?}");
    assert_eq!((p[1].len(), p[2].len()), (32, 16), "{traceparent:?}");
    (p[1].into(), p[2].into(), p[3].into())
}

#[test]
fn guest_output_is_kept_per_invocation_and_followed_by_ferry_logs() {
    let ferry = Ferry::start();
    deploy_hostile(&ferry, "");
    let mut follow = ferry
        .cli_command(&["logs", "hostile", "-f"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, lines) = mpsc::channel::<String>();
    let out = follow.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let until = |marker: &str| -> (String, Duration) {
        let asked = Instant::now();
        let deadline = asked + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) if line.contains(marker) => return (line, asked.elapsed()),
                Ok(_) => continue,
                Err(e) => panic!("`ferry logs -f` never showed {marker}: {e}"),
            }
        }
    };

    let (status, first, body) = get(
        &ferry,
        "/hostile/header?name=x-marker",
        &[("x-marker", "m1")],
    );
    assert_eq!((status, body.as_str()), (200, "m1"));
    assert_eq!(first.len(), 32, "the answer names the invocation");
    let (line, took) = until("x-marker=m1");
    // `TIME INVOCATION STREAM TEXT`
    let fields: Vec<&str> = line.splitn(4, ' ').collect();
    assert_eq!(fields[1], first, "{line}");
    assert_eq!(fields[2], "stdout", "{line}");
    assert_eq!(fields[3], "header x-marker=m1", "{line}");
    assert!(
        fields[0].ends_with('Z') && fields[0].contains('T'),
        "{line}"
    );
    // Now it is following: a new line shows up as it is written.
    let (_, second, _) = get(
        &ferry,
        "/hostile/header?name=x-marker",
        &[("x-marker", "m2")],
    );
    let (line, took2) = until("x-marker=m2");
    assert!(line.contains(&second), "{line}");
    eprintln!("ferry logs -f showed the lines {took:?} and {took2:?} after the answers");
    let _ = follow.kill();
    let _ = follow.wait();

    // One invocation's lines, and lines since a time.
    let out = ferry.cli(&["logs", "hostile", "--invocation", &first], None);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains("x-marker=m1"), "{text}");
    let out = ferry.cli(&["logs", "hostile", "--since", "1h", "--json"], None);
    let text = String::from_utf8(out.stdout).unwrap();
    let parsed: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(parsed.len(), 2, "{text}");
    assert_eq!(parsed[1]["invocation"], second.as_str());
    assert!(parsed[0]["seq"].as_u64().unwrap() < parsed[1]["seq"].as_u64().unwrap());

    // Bad input: a clear error, nothing else.
    let out = ferry.cli(&["logs", "hostile", "--since", "yesterday-ish"], None);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("neither a duration"), "{err}");
    for bad in [
        "limit=abc",
        "limit=0",
        "after=-1",
        "wait=soon&after=1",
        "since=never",
    ] {
        let (status, v) = ferry.admin_get(&format!("/v1/functions/hostile/logs?{bad}"));
        assert_eq!(status, 400, "{bad}: {v}");
        let name = bad.split('=').next().unwrap();
        assert!(v["error"].as_str().unwrap().contains(name), "{bad}: {v}");
    }
    let out = ferry.cli(&["logs", "nope"], None);
    assert!(!out.status.success());
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .contains("no function named"));

    // An asynchronous invocation's status document links to its logs.
    let id = ferry.submit_ok("/hostile/header?name=x-marker", &[("x-marker", "m3")]);
    let done = ferry.finished(&id);
    assert_eq!(done["status"], "succeeded", "{done}");
    let link = done["logs"].as_str().unwrap().to_string();
    assert_eq!(link, format!("/v1/functions/hostile/logs?invocation={id}"));
    let (status, page) = ferry.admin_get(&link);
    assert_eq!(status, 200, "{page}");
    let lines = page["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 1, "{page}");
    assert_eq!(lines[0]["text"], "header x-marker=m3");
    assert_eq!(lines[0]["invocation"], id.as_str());

    // Removing the function forgets its logs.
    let (status, _) = ferry.admin_get("/v1/functions/hostile/logs");
    assert_eq!(status, 200);
    assert_eq!(
        ferry
            .admin_req(reqwest::Method::DELETE, "/v1/functions/hostile")
            .send()
            .unwrap()
            .status()
            .as_u16(),
        204
    );
    assert_eq!(ferry.admin_get("/v1/functions/hostile/logs").0, 404);
}

#[test]
fn a_traceparent_reaches_the_guest_its_outbound_requests_and_the_callback() {
    let receiver = Receiver::start();
    let ferry = Ferry::start_with(&["--allow-callback-host", "127.0.0.1"]);
    deploy_hostile(&ferry, "[outbound]\nallow = [\"127.0.0.1\"]\n");
    let sent = [("traceparent", PARENT), ("tracestate", "vendor=opaque")];

    // The guest sees the caller's trace with Ferry's span as its parent.
    let (status, _, seen) = get(&ferry, "/hostile/header?name=traceparent", &sent);
    assert_eq!(status, 200);
    let (trace, parent, flags) = parts(&seen);
    assert_eq!(trace, TRACE);
    assert_ne!(
        parent, "b7ad6b7169203331",
        "the invocation is a span of its own"
    );
    assert_eq!(flags, "01");
    let (_, _, state) = get(&ferry, "/hostile/header?name=tracestate", &sent);
    assert_eq!(state, "vendor=opaque");

    // Without one (or with an invalid one) a new trace starts.
    let (_, _, fresh) = get(&ferry, "/hostile/header?name=traceparent", &[]);
    let (fresh_trace, _, _) = parts(&fresh);
    assert_ne!(fresh_trace, TRACE);
    let upper = PARENT.to_uppercase();
    let (_, _, replaced) = get(
        &ferry,
        "/hostile/header?name=traceparent",
        &[("traceparent", &upper), ("tracestate", "a=b")],
    );
    assert_ne!(parts(&replaced).0, TRACE);
    let (_, _, dropped_state) = get(
        &ferry,
        "/hostile/header?name=tracestate",
        &[("traceparent", &upper), ("tracestate", "a=b")],
    );
    assert_eq!(
        dropped_state, "",
        "the state of an invalid parent is dropped"
    );

    // The guest's outbound request carries the trace.
    let target = receiver.url("/outbound");
    let (status, _, body) = get(&ferry, &format!("/hostile/fetch?url={target}"), &sent);
    assert_eq!(status, 200, "{body}");
    let outbound = receiver
        .requests()
        .into_iter()
        .find(|r| r.path == "/outbound")
        .unwrap();
    assert_eq!(
        parts(outbound.header("traceparent").unwrap()).0,
        TRACE,
        "{:?}",
        outbound.headers
    );

    // Asynchronous: the attempt and the callback are in the caller's trace.
    let callback = receiver.url("/callback");
    let id = ferry.submit_ok(
        "/hostile/header?name=traceparent",
        &[("traceparent", PARENT), ("x-callback-url", &callback)],
    );
    let done = ferry.finished(&id);
    let in_guest = done["result"]["body"].as_str().unwrap();
    assert_eq!(parts(in_guest).0, TRACE, "{done}");
    let delivered = eventually("the callback", Duration::from_secs(30), || {
        receiver
            .requests()
            .into_iter()
            .find(|r| r.path == "/callback")
    });
    let (cb_trace, cb_parent, _) = parts(delivered.header("traceparent").unwrap());
    assert_eq!(cb_trace, TRACE);
    assert_ne!(
        cb_parent,
        parts(in_guest).1,
        "the callback is a span of its own"
    );
}

#[test]
fn the_json_log_carries_invocation_and_trace_ids() {
    let ferry = Ferry::start_with(&["--log-format", "json"]);
    deploy_hostile(&ferry, "[delivery]\nmax_attempts = 1\n");
    // An asynchronous failure too: its dead-letter record names the invocation and the trace.
    let async_id = ferry.submit_ok("/hostile/panic", &[("traceparent", PARENT)]);
    assert_eq!(ferry.finished(&async_id)["status"], "dead_lettered");
    let dead = eventually(
        "the dead letter in the log",
        Duration::from_secs(20),
        || {
            ferry.log().lines().find_map(|line| {
                let v: serde_json::Value = serde_json::from_str(line).ok()?;
                (v["invocation_id"] == async_id.as_str() && v["message"] == "dead-lettered")
                    .then_some(v)
            })
        },
    );
    assert_eq!(dead["trace_id"], TRACE, "{dead}");
    assert_eq!(dead["function"], "hostile", "{dead}");
    let (status, id, _) = get(&ferry, "/hostile/panic", &[("traceparent", PARENT)]);
    assert_eq!(status, 500);
    let record = eventually("the failure in the log", Duration::from_secs(20), || {
        ferry.log().lines().find_map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).ok()?;
            (v["invocation_id"] == id.as_str() && v["level"] == "WARN").then_some(v)
        })
    });
    assert_eq!(record["function"], "hostile", "{record}");
    assert_eq!(record["trace_id"], TRACE, "{record}");
    assert!(
        record["message"].as_str().unwrap().contains("failed"),
        "{record}"
    );
    // Every record about the invocation carries its trace id.
    for line in ferry.log().lines().filter(|l| l.contains(&id)) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["trace_id"], TRACE, "{line}");
    }
    assert!(record["timestamp"].is_string(), "{record}");
    // Every line the host wrote is one JSON object.
    for line in ferry.log().lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v.is_object(), "{line}");
    }
}

/// Every span the receiver got over OTLP/HTTP JSON, flattened.
fn exported_spans(receiver: &Receiver) -> Vec<serde_json::Value> {
    let mut spans = Vec::new();
    for r in receiver
        .requests()
        .iter()
        .filter(|r| r.path == "/v1/traces")
    {
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        for rs in v["resourceSpans"].as_array().into_iter().flatten() {
            let service = rs["resource"]["attributes"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|a| a["key"] == "service.name")
                .map(|a| a["value"]["stringValue"].clone())
                .unwrap_or_default();
            for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                for span in ss["spans"].as_array().into_iter().flatten() {
                    let mut span = span.clone();
                    span["service"] = service.clone();
                    spans.push(span);
                }
            }
        }
    }
    spans
}

#[test]
fn spans_are_exported_over_otlp_when_an_endpoint_is_set() {
    let collector = Receiver::start();
    let receiver = Receiver::start();
    let mut ferry = Ferry::stopped(&["--allow-callback-host", "127.0.0.1"]);
    ferry.env = vec![
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
            collector.url("").trim_end_matches('/').to_string(),
        ),
        ("OTEL_EXPORTER_OTLP_PROTOCOL".into(), "http/json".into()),
        ("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()),
    ];
    ferry.start_again();
    deploy_hostile(&ferry, "");

    // A call: its span is the parent the guest saw, in the caller's trace.
    let (_, id, seen) = get(
        &ferry,
        "/hostile/header?name=traceparent",
        &[("traceparent", PARENT)],
    );
    let (_, guest_parent, _) = parts(&seen);
    // An asynchronous invocation with a callback: receive, attempt and callback spans.
    let callback = receiver.url("/callback");
    let async_id = ferry.submit_ok(
        "/hostile/ok",
        &[("traceparent", PARENT), ("x-callback-url", &callback)],
    );
    ferry.finished(&async_id);
    eventually("the callback", Duration::from_secs(30), || {
        receiver
            .requests()
            .into_iter()
            .find(|r| r.path == "/callback")
    });

    let spans = eventually("the spans to be exported", Duration::from_secs(30), || {
        let spans = exported_spans(&collector);
        let names: Vec<&str> = spans.iter().filter_map(|s| s["name"].as_str()).collect();
        [
            "ferry.invoke",
            "ferry.receive",
            "ferry.attempt",
            "ferry.callback",
        ]
        .iter()
        .all(|n| names.contains(n))
        .then_some(spans)
    });
    let named = |name: &str| spans.iter().find(|s| s["name"] == name).unwrap().clone();
    let invoke = named("ferry.invoke");
    assert_eq!(invoke["traceId"], TRACE, "{invoke}");
    assert_eq!(invoke["spanId"], guest_parent.as_str(), "{invoke}");
    assert_eq!(invoke["parentSpanId"], "b7ad6b7169203331", "{invoke}");
    assert_eq!(invoke["service"], "ferry", "{invoke}");
    let attrs = invoke["attributes"].to_string();
    assert!(attrs.contains(&id) && attrs.contains("hostile"), "{invoke}");
    let receive = named("ferry.receive");
    for name in ["ferry.receive", "ferry.attempt", "ferry.callback"] {
        let span = named(name);
        assert_eq!(span["traceId"], TRACE, "{span}");
        let parent = if name == "ferry.receive" {
            "b7ad6b7169203331".to_string()
        } else {
            receive["spanId"].as_str().unwrap().to_string()
        };
        assert_eq!(span["parentSpanId"], parent.as_str(), "{span}");
    }
}

#[test]
fn an_unsupported_otlp_protocol_is_refused_at_start() {
    let mut ferry = Ferry::stopped(&[]);
    ferry.env = vec![
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
            "http://127.0.0.1:9".into(),
        ),
        ("OTEL_EXPORTER_OTLP_PROTOCOL".into(), "grpc".into()),
    ];
    let status = ferry.run_to_exit(&[], Duration::from_secs(30));
    assert_eq!(status.code(), Some(1));
    let log = ferry.log();
    assert!(
        log.contains("http/protobuf") && log.contains("grpc"),
        "{log}"
    );
}
