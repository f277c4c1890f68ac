//! The NATS trigger against a real nats-server: CloudEvents in binary and structured mode to an
//! event function, results on the reply subject and to requesters, malformed messages to the
//! dead-letter subject while valid ones keep flowing, and a host without NATS refusing NATS
//! triggers.

use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;
use ferry_tests::{ce_headers, error_of, eventually, guests, runtime, Ferry, NatsServer};
use futures::StreamExt;

fn deploy(ferry: &Ferry, extra: &str) {
    let manifest = format!(
        "name = \"echo-event\"\n[[trigger.nats]]\nsubject = \"orders.*\"\nreply = \"results.echoed\"\n{extra}"
    );
    let (status, body) =
        ferry.deploy_manifest("echo-event", guests::bytes(guests::ECHO_EVENT), &manifest);
    assert_eq!(status, 201, "{body}");
}

/// Waits until the host has subscribed (a request gets an answer). Every ping that reached the
/// function also publishes a result to `reply` (several, when answers were slower than the
/// wait for them): read results with [`next_result`], which skips them.
async fn until_subscribed(client: &async_nats::Client) {
    for _ in 0..100 {
        let req = client.request_with_headers(
            "orders.ping".to_string(),
            ce_headers("ping", "ping"),
            Bytes::new(),
        );
        match tokio::time::timeout(Duration::from_millis(500), req).await {
            Ok(Ok(_)) => return,
            // No responders yet (answered at once): ask again a little later.
            Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(_) => {}
        }
    }
    panic!("the NATS trigger never subscribed");
}

/// The next message on `sub` that is not the result of a ping of [`until_subscribed`].
async fn next_result(sub: &mut async_nats::Subscriber) -> async_nats::Message {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .expect("a result within 10 s")
            .expect("the subscription is open");
        let id = msg.headers.as_ref().and_then(|h| h.get("ce-id"));
        if id.map(|v| v.as_str()) != Some("ping-echo") {
            return msg;
        }
    }
}

#[test]
fn core_nats_events_run_the_function_in_both_modes() {
    let nats = NatsServer::start();
    let ferry = Ferry::start_with(&["--nats", &nats.url()]);
    deploy(&ferry, "");
    let health = eventually("nats to connect", Duration::from_secs(20), || {
        let h = ferry.admin_get("/healthz").1;
        (h["nats"]["state"] == "connected").then_some(h)
    });
    assert_eq!(health["functions"], 1);

    runtime().block_on(async {
        let client = async_nats::connect(nats.url()).await.unwrap();
        let mut out = client.subscribe("results.echoed").await.unwrap();
        let mut dead = client.subscribe("ferry.deadletter.echo-event").await.unwrap();
        client.flush().await.unwrap();
        until_subscribed(&client).await;

        // Binary mode in, binary mode out.
        client
            .publish_with_headers("orders.created", ce_headers("o-1", "order.created"), Bytes::from_static(br#"{"n":1}"#))
            .await
            .unwrap();
        let msg = next_result(&mut out).await;
        let h = msg.headers.clone().unwrap();
        assert_eq!(h.get("ce-id").unwrap().as_str(), "o-1-echo");
        assert_eq!(h.get("ce-type").unwrap().as_str(), "order.created.echo");
        assert_eq!(h.get("ce-echoedfrom").unwrap().as_str(), "/orders");
        assert_eq!(&msg.payload[..], br#"{"n":1}"#);

        // Structured mode in, structured mode out.
        let structured = serde_json::json!({"specversion": "1.0", "id": "o-2", "source": "/orders", "type": "order.created", "datacontenttype": "application/json", "data": {"n": 2}});
        let mut h = HeaderMap::new();
        h.insert("content-type", "application/cloudevents+json");
        client.publish_with_headers("orders.created", h, structured.to_string().into()).await.unwrap();
        let msg = next_result(&mut out).await;
        let v: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
        assert_eq!(v["id"], "o-2-echo");
        assert_eq!(v["data"]["n"], 2);

        // Structured mode with no headers at all, as the CloudEvents NATS binding 1.0.2 and the
        // SDKs send it; the data comes back byte for byte, and with no datacontenttype the JSON
        // data is application/json (not base64).
        let bare = br#"{"specversion":"1.0","id":"o-6","source":"/orders","type":"order.created","data":{"z": 1,  "a": [2]}}"#;
        client.publish("orders.created", Bytes::from_static(bare)).await.unwrap();
        let msg = next_result(&mut out).await;
        let text = String::from_utf8(msg.payload.to_vec()).unwrap();
        assert!(text.contains(r#""data":{"z": 1,  "a": [2]}"#), "{text}");
        assert!(text.contains(r#""datacontenttype":"application/json""#), "{text}");
        assert!(text.contains(r#""id":"o-6-echo""#), "{text}");

        // Request-reply: the result comes back to the requester too.
        let reply = client
            .request_with_headers("orders.created".to_string(), ce_headers("o-3", "order.created"), Bytes::from_static(b"{}"))
            .await
            .unwrap();
        assert_eq!(reply.headers.unwrap().get("ce-id").unwrap().as_str(), "o-3-echo");

        // A malformed message goes to the dead-letter subject with the reason; the next valid
        // one still flows.
        let mut bad = HeaderMap::new();
        bad.insert("ce-id", "x");
        client.publish_with_headers("orders.created", bad, Bytes::from_static(b"junk")).await.unwrap();
        let msg = tokio::time::timeout(Duration::from_secs(10), dead.next()).await.unwrap().unwrap();
        let h = msg.headers.unwrap();
        assert!(h.get("Ferry-Error").unwrap().as_str().contains("`source`"), "{:?}", h.get("Ferry-Error"));
        assert_eq!(h.get("Ferry-Subject").unwrap().as_str(), "orders.created");
        assert_eq!(&msg.payload[..], b"junk");
        client
            .publish_with_headers("orders.created", ce_headers("o-4", "order.created"), Bytes::from_static(b"{}"))
            .await
            .unwrap();
        loop {
            let msg = next_result(&mut out).await;
            if msg.headers.unwrap().get("ce-id").unwrap().as_str() == "o-4-echo" {
                break;
            }
        }

        // A typed error is answered to a requester.
        let reply = client
            .request_with_headers("orders.created".to_string(), ce_headers("o-5", "ferry.test.reject"), Bytes::new())
            .await
            .unwrap();
        assert!(reply.headers.unwrap().get("Ferry-Error").unwrap().as_str().contains("invalid-event"));
    });

    // Removing the function unsubscribes it.
    let resp = ferry
        .admin_req(reqwest::Method::DELETE, "/v1/functions/echo-event")
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    runtime().block_on(async {
        let client = async_nats::connect(nats.url()).await.unwrap();
        for _ in 0..50 {
            let req = client.request_with_headers(
                "orders.created".to_string(),
                ce_headers("z", "t"),
                Bytes::new(),
            );
            // With no subscriber left, the server answers "no responders" at once.
            if let Ok(Err(_)) = tokio::time::timeout(Duration::from_millis(500), req).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the subscription outlived its function");
    });
}

#[test]
fn nats_triggers_need_a_nats_host_and_an_event_function() {
    let ferry = Ferry::start();
    let manifest = "name = \"echo-event\"\n[[trigger.nats]]\nsubject = \"orders.created\"\n";
    let (status, body) =
        ferry.deploy_manifest("echo-event", guests::bytes(guests::ECHO_EVENT), manifest);
    assert_eq!(status, 422, "{body}");
    assert!(error_of(&body).contains("--nats"), "{body}");

    let nats = NatsServer::start();
    let ferry = Ferry::start_with(&["--nats", &nats.url()]);
    let manifest = "name = \"hello-http\"\n[[trigger.nats]]\nsubject = \"x\"\n";
    let (status, body) =
        ferry.deploy_manifest("hello-http", guests::bytes(guests::HELLO_HTTP), manifest);
    assert_eq!(status, 422, "{body}");
    assert!(error_of(&body).contains("event function"), "{body}");
    let manifest = "name = \"echo-event\"\n[[trigger.nats]]\nsubject = \"x\"\nstream = \"S.1\"\n";
    let (status, body) =
        ferry.deploy_manifest("echo-event", guests::bytes(guests::ECHO_EVENT), manifest);
    assert_eq!(status, 400, "{body}");
    assert!(error_of(&body).contains("trigger.nats[0].stream"), "{body}");
}

#[test]
fn enrich_order_over_core_nats_and_the_conformance_events() {
    let nats = NatsServer::start();
    let ferry = Ferry::start_with(&["--nats", &nats.url()]);
    let manifest = "name = \"enrich-order\"\n[[trigger.nats]]\nsubject = \"shop.orders\"\n";
    let (status, body) = ferry.deploy_manifest(
        "enrich-order",
        guests::bytes(guests::ENRICH_ORDER),
        manifest,
    );
    assert_eq!(status, 201, "{body}");
    let manifest = "name = \"echo-event\"\n[[trigger.nats]]\nsubject = \"conformance\"\n";
    let (status, body) =
        ferry.deploy_manifest("echo-event", guests::bytes(guests::ECHO_EVENT), manifest);
    assert_eq!(status, 201, "{body}");

    runtime().block_on(async {
        let client = async_nats::connect(nats.url()).await.unwrap();
        let ask = |subject: &'static str, h: HeaderMap, body: Bytes| {
            let client = client.clone();
            async move {
                for _ in 0..100 {
                    match tokio::time::timeout(Duration::from_millis(300), client.request_with_headers(subject.to_string(), h.clone(), body.clone())).await {
                        Ok(Ok(m)) => return m,
                        _ => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
                panic!("no answer on {subject}");
            }
        };
        let order = br#"{"id":"A7","items":[{"sku":"x","qty":2,"price":1.25},{"sku":"y","qty":1,"price":10}]}"#;
        let reply = ask("shop.orders", ce_headers("A7", "com.example.order.created"), Bytes::from_static(order)).await;
        let h = reply.headers.unwrap();
        assert_eq!(h.get("ce-type").unwrap().as_str(), "com.example.order.enriched");
        assert_eq!(h.get("ce-id").unwrap().as_str(), "A7-enriched");
        let v: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
        assert_eq!(v["total"], 12.5);
        assert_eq!(v["item_count"], 3);
        let reply = ask("shop.orders", ce_headers("B1", "com.example.order.created"), Bytes::from_static(b"not json")).await;
        assert!(reply.headers.unwrap().get("Ferry-Error").unwrap().as_str().contains("invalid-event"));

        // The same event in binary and in structured mode gives the same result.
        let structured = serde_json::json!({"specversion": "1.0", "id": "A7", "source": "/orders", "type": "com.example.order.created",
            "datacontenttype": "application/json", "data": serde_json::from_slice::<serde_json::Value>(order).unwrap()});
        let mut sh = HeaderMap::new();
        sh.insert("content-type", "application/cloudevents+json");
        let reply = ask("shop.orders", sh, structured.to_string().into()).await;
        let s: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
        assert_eq!(s["id"], "A7-enriched");
        assert_eq!(s["data"], v, "same result in both modes");

        // Every valid conformance event round-trips through the guest over NATS; every invalid
        // one is refused naming what is wrong.
        for (id, ev) in ferry_tests::conformance::events("valid-events.json") {
            let mut sh = HeaderMap::new();
            sh.insert("content-type", "application/cloudevents+json");
            let reply = ask("conformance", sh, ev.to_string().into()).await;
            let out: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap_or_else(|e| panic!("{id}: {e}"));
            assert_eq!(out["id"], format!("{}-echo", ev["id"].as_str().unwrap()), "{id}");
            assert_eq!(out["echoedfrom"], ev["source"], "{id}");
        }
        for (id, ev) in ferry_tests::conformance::events("invalid-events.json") {
            let mut sh = HeaderMap::new();
            sh.insert("content-type", "application/cloudevents+json");
            let reply = ask("conformance", sh, ev.to_string().into()).await;
            let err = reply.headers.and_then(|h| h.get("Ferry-Error").map(|v| v.as_str().to_string())).unwrap_or_default();
            let named = ["specversion", "`id`", "`type`", "`source`", "`time`", "datacontenttype", "dataschema", "subject", "extension", "data_base64"];
            assert!(named.iter().any(|n| err.contains(n)), "{id}: {err:?}");
        }
    });
}

#[test]
fn an_events_trace_context_reaches_the_guest_and_the_published_result() {
    const PARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let nats = NatsServer::start();
    let ferry = Ferry::start_with(&["--nats", &nats.url()]);
    deploy(&ferry, "");
    eventually("nats to connect", Duration::from_secs(20), || {
        (ferry.admin_get("/healthz").1["nats"]["state"] == "connected").then_some(())
    });
    runtime().block_on(async {
        let client = async_nats::connect(nats.url()).await.unwrap();
        let mut out = client.subscribe("results.echoed").await.unwrap();
        client.flush().await.unwrap();
        until_subscribed(&client).await;

        // The distributed-tracing extension in: the guest sees (and echo-event copies) the
        // event's trace with the invocation's span as the parent.
        let mut h = ce_headers("t-1", "order.created");
        h.insert("ce-traceparent", PARENT);
        h.insert("ce-tracestate", "vendor=x");
        client
            .publish_with_headers("orders.created", h, Bytes::from_static(b"{}"))
            .await
            .unwrap();
        let h = next_with_id(&mut out, "t-1-echo").await;
        let parent = h.get("ce-traceparent").unwrap().as_str().to_string();
        let p: Vec<&str> = parent.split('-').collect();
        assert_eq!(p[1], "0af7651916cd43dd8448eb211c80319c", "{parent}");
        assert_ne!(p[2], "b7ad6b7169203331", "{parent}");
        assert_eq!(h.get("ce-tracestate").unwrap().as_str(), "vendor=x");

        // A plain `traceparent` message header counts when the event has no extension.
        let mut h = ce_headers("t-3", "order.created");
        h.insert("traceparent", PARENT);
        client
            .publish_with_headers("orders.created", h, Bytes::from_static(b"{}"))
            .await
            .unwrap();
        let h = next_with_id(&mut out, "t-3-echo").await;
        let parent = h.get("ce-traceparent").unwrap().as_str().to_string();
        assert!(
            parent.contains("0af7651916cd43dd8448eb211c80319c"),
            "{parent}"
        );

        // Without it, a trace starts and the result carries it.
        client
            .publish_with_headers(
                "orders.created",
                ce_headers("t-2", "order.created"),
                Bytes::from_static(b"{}"),
            )
            .await
            .unwrap();
        let h = next_with_id(&mut out, "t-2-echo").await;
        let started = h.get("ce-traceparent").unwrap().as_str().to_string();
        assert_eq!(started.len(), 55, "{started}");
        assert!(!started.contains("0af7651916cd43dd8448eb211c80319c"));
    });
}

/// The headers of the next message on `sub` whose `ce-id` is `id` (others are skipped).
async fn next_with_id(sub: &mut async_nats::Subscriber, id: &str) -> HeaderMap {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .unwrap()
            .unwrap();
        let h = msg.headers.clone().unwrap();
        if h.get("ce-id").map(|v| v.as_str()) == Some(id) {
            return h;
        }
    }
}
