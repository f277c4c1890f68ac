//! HTTP functions end to end: deploy by raw PUT and by manifest, call, routes, atomic redeploy,
//! a trapping / looping / memory-hungry guest, body limits, list / get / delete.

use std::time::{Duration, Instant};

use ferry_tests::receiver::Receiver;
use ferry_tests::{error_of, eventually, guests, with_custom_section, Ferry, Gate};

#[test]
fn raw_deploy_call_list_get_delete() {
    let ferry = Ferry::start();
    let (status, body) = ferry.deploy_raw("hello-http", guests::bytes(guests::HELLO_HTTP));
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["name"], "hello-http");
    assert_eq!(body["version"], 1);
    assert_eq!(body["world"], "http");
    assert_eq!(body["url"], ferry.url("/hello-http"));

    let (status, text) = ferry.get("/hello-http/abc/def?x=1");
    assert_eq!(status, 200);
    assert_eq!(text, "Hello from Ferry! path=/hello-http/abc/def?x=1\n");
    assert_eq!(ferry.get("/hello-http").0, 200);
    assert_eq!(ferry.get("/hello-http/").0, 200);
    let (status, text) = ferry.get("/hello-httpx");
    assert_eq!(status, 404);
    assert!(text.contains("no function serves /hello-httpx"), "{text}");

    let (status, list) = ferry.admin_get("/v1/functions");
    assert_eq!(status, 200);
    assert_eq!(list.as_array().unwrap().len(), 1);
    let (status, one) = ferry.admin_get("/v1/functions/hello-http");
    assert_eq!(status, 200);
    assert_eq!(one["digest"].as_str().unwrap().len(), 64);

    let resp = ferry
        .admin_req(reqwest::Method::DELETE, "/v1/functions/hello-http")
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    assert_eq!(ferry.get("/hello-http/abc").0, 404);
    let (status, body) = ferry.admin_get("/v1/functions/hello-http");
    assert_eq!(status, 404);
    assert!(error_of(&body).contains("hello-http"));
    let resp = ferry
        .admin_req(reqwest::Method::DELETE, "/v1/functions/hello-http")
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);
}

#[test]
fn manifest_routes_config_and_route_conflicts() {
    let ferry = Ferry::start();
    let manifest = r#"
        name = "hello-http"
        [[trigger.http]]
        route = "/greet/..."
        [[trigger.http]]
        route = "/exact"
        [config]
        GREETING = "Ahoy"
    "#;
    let (status, body) =
        ferry.deploy_manifest("hello-http", guests::bytes(guests::HELLO_HTTP), manifest);
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["routes"], serde_json::json!(["/greet/...", "/exact"]));
    assert_eq!(
        ferry.get("/greet/x/y").1,
        "Ahoy from Ferry! path=/greet/x/y\n"
    );
    assert_eq!(ferry.get("/greet").1, "Ahoy from Ferry! path=/greet\n");
    assert_eq!(ferry.get("/exact").1, "Ahoy from Ferry! path=/exact\n");
    assert_eq!(ferry.get("/exact/below").0, 404);
    assert_eq!(
        ferry.get("/hello-http/z").1,
        "Ahoy from Ferry! path=/hello-http/z\n"
    );

    // Another function may not take a route that is served already.
    let clash = "name = \"misbehave\"\n[[trigger.http]]\nroute = \"/greet/...\"\n";
    let (status, body) =
        ferry.deploy_manifest("misbehave", guests::bytes(guests::MISBEHAVE), clash);
    assert_eq!(status, 409, "{body}");
    let msg = error_of(&body);
    assert!(
        msg.contains("/greet/...") && msg.contains("hello-http"),
        "{msg}"
    );
    // Nor a function's own /{name} route.
    let clash = "name = \"misbehave\"\n[[trigger.http]]\nroute = \"/hello-http/...\"\n";
    assert_eq!(
        ferry
            .deploy_manifest("misbehave", guests::bytes(guests::MISBEHAVE), clash)
            .0,
        409
    );
    assert_eq!(
        ferry.admin_get("/v1/functions").1.as_array().unwrap().len(),
        1
    );
    assert_eq!(ferry.get("/greet/x").0, 200);
}

#[test]
fn redeploy_swaps_atomically_and_requests_in_flight_finish_on_the_old_version() {
    // The in-flight request is held inside the guest (an outbound call the receiver answers only
    // when the gate opens), so it certainly spans the redeploy however slow the machine is.
    let gate = Gate::default();
    let held = gate.clone();
    let holder = Receiver::with(move |req, _| {
        if req.path == "/hit/hold" {
            held.wait();
        }
        (200, vec![])
    });
    let ferry = Ferry::start();
    let v1 = format!(
        "name = \"slow\"\n[outbound]\nallow = [\"127.0.0.1\"]\n[config]\nGREETING = \"one\"\nRECORD_TO = \"{}\"\n",
        holder.addr
    );
    let (status, body) = ferry.deploy_manifest("slow", guests::bytes(guests::MISBEHAVE), &v1);
    assert_eq!(status, 201, "{body}");
    assert_eq!(ferry.get("/slow").1, "one from misbehave\n");

    let url = ferry.url("/slow/hold");
    let client = ferry.http.clone();
    let in_flight = std::thread::spawn(move || client.get(url).send().unwrap().text().unwrap());
    eventually(
        "the request to reach the guest",
        Duration::from_secs(60),
        || {
            holder
                .requests()
                .iter()
                .any(|r| r.path == "/hit/hold")
                .then_some(())
        },
    );
    // A changed component (different bytes and digest) with a changed config.
    let v2 = v1.replace("\"one\"", "\"two\"");
    let changed = with_custom_section(&guests::bytes(guests::MISBEHAVE), "v2");
    let (status, body) = ferry.deploy_manifest("slow", changed, &v2);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"], 2);
    assert_eq!(ferry.get("/slow").1, "two from misbehave\n");
    assert!(
        !in_flight.is_finished(),
        "the held request is still running"
    );

    gate.open();
    assert_eq!(in_flight.join().unwrap(), "one from misbehave after hold\n");
    assert_eq!(ferry.admin_get("/v1/functions/slow").1["version"], 2);
}

#[test]
fn a_trapping_guest_fails_its_own_request_and_the_host_keeps_serving() {
    let ferry = Ferry::start();
    assert_eq!(
        ferry
            .deploy_raw("misbehave", guests::bytes(guests::MISBEHAVE))
            .0,
        201
    );
    for _ in 0..3 {
        let (status, text) = ferry.get("/misbehave/panic");
        assert_eq!(status, 500);
        assert!(text.contains("function misbehave"), "{text}");
        assert!(text.len() < 300, "the body is short: {text}");
        assert_eq!(ferry.get("/misbehave/fine").0, 200);
    }
}

#[test]
fn timeout_and_memory_limits_stop_only_the_guest() {
    let ferry = Ferry::start();
    let manifest = "name = \"misbehave\"\n[limits]\ntimeout = \"1s\"\nmemory = \"16MiB\"\n";
    let (status, body) =
        ferry.deploy_manifest("misbehave", guests::bytes(guests::MISBEHAVE), manifest);
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["limits"]["memory"], 16 << 20);

    let started = Instant::now();
    let (status, text) = ferry.get("/misbehave/spin");
    assert_eq!(status, 504, "{text}");
    assert!(
        text.contains("misbehave") && text.contains("timeout"),
        "{text}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));

    // Waiting (not computing) past the timeout is stopped too.
    assert_eq!(ferry.get("/misbehave/sleep?ms=5000").0, 504);

    let (status, text) = ferry.get("/misbehave/alloc?mb=64");
    assert_eq!(status, 500, "{text}");
    assert!(text.contains("misbehave"), "{text}");
    let (status, text) = ferry.get("/misbehave/alloc?mb=4");
    assert_eq!(status, 200, "{text}");
    assert_eq!(ferry.get("/misbehave/fine").0, 200);
}

#[test]
fn request_bodies_over_the_limit_are_refused() {
    let ferry = Ferry::start();
    let manifest = "name = \"hello-http\"\n[limits]\nmax_body = \"1KiB\"\n";
    assert_eq!(
        ferry
            .deploy_manifest("hello-http", guests::bytes(guests::HELLO_HTTP), manifest)
            .0,
        201
    );
    let resp = ferry
        .http
        .post(ferry.url("/hello-http"))
        .body(vec![b'x'; 4096])
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 413);
    assert!(resp.text().unwrap().contains("max_body"));
    let resp = ferry
        .http
        .post(ferry.url("/hello-http"))
        .body(vec![b'x'; 512])
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
}

#[test]
fn event_functions_are_detected() {
    let ferry = Ferry::start();
    let (status, body) = ferry.deploy_raw("echo-event", guests::bytes(guests::ECHO_EVENT));
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["world"], "event");
}

#[test]
fn a_route_is_served_as_soon_as_its_deploy_is_answered_even_on_an_open_connection() {
    let ferry = Ferry::start();
    assert_eq!(
        ferry
            .deploy_raw("first", guests::bytes(guests::HELLO_HTTP))
            .0,
        201
    );
    // The client keeps this connection open and reuses it below.
    assert_eq!(ferry.get("/first/x").0, 200);
    for i in 0..5 {
        let manifest = format!("name = \"f{i}\"\n[[trigger.http]]\nroute = \"/route-{i}/...\"\n");
        let (status, body) = ferry.deploy_manifest(
            &format!("f{i}"),
            guests::bytes(guests::HELLO_HTTP),
            &manifest,
        );
        assert_eq!(status, 201, "{body}");
        let (status, text) = ferry.get(&format!("/route-{i}/y"));
        assert_eq!(status, 200, "{text}");
        assert!(text.contains(&format!("path=/route-{i}/y")), "{text}");
    }
    // And a removed function's routes are gone at once.
    let resp = ferry
        .admin_req(reqwest::Method::DELETE, "/v1/functions/f0")
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    assert_eq!(ferry.get("/route-0/y").0, 404);
}
