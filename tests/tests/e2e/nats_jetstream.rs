//! JetStream triggers against a real nats-server: at least once. 1,000 events with none missing;
//! failures redelivered with backoff and then dead-lettered with the error, attempts and subject
//! as extension attributes; malformed messages dead-lettered while valid ones keep flowing; the
//! nats-server killed and restarted mid-stream with no acknowledged event lost.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use async_nats::HeaderMap;
use bytes::Bytes;
use ferry_tests::{ce_headers, eventually, guests, runtime, Ferry, NatsServer};
use futures::StreamExt;

fn start(nats: &NatsServer) -> Ferry {
    let ferry = Ferry::start_with(&["--nats", &nats.url()]);
    let manifest = "name = \"echo-event\"\n[limits]\ntimeout = \"2s\"\n\
        [delivery]\nmax_attempts = 3\nbackoff = { initial = \"50ms\", max = \"200ms\" }\n\
        [[trigger.nats]]\nsubject = \"orders.created\"\nstream = \"ORDERS\"\nreply = \"results.echoed\"\n";
    let (status, body) =
        ferry.deploy_manifest("echo-event", guests::bytes(guests::ECHO_EVENT), manifest);
    assert_eq!(status, 201, "{body}");
    ferry
}

/// Streams that keep the results and dead letters, so that the test misses none of them.
async fn capture(js: &jetstream::Context) {
    for (name, subject) in [("RESULTS", "results.>"), ("DEAD", "ferry.deadletter.>")] {
        js.get_or_create_stream(stream::Config {
            name: name.into(),
            subjects: vec![subject.into()],
            ..Default::default()
        })
        .await
        .unwrap();
    }
    until_stream(js, "ORDERS").await;
}

/// Publishes to `orders.created` and waits for the stream's acknowledgement.
async fn publish(js: &jetstream::Context, headers: HeaderMap, body: Bytes) {
    js.publish_with_headers("orders.created", headers, body)
        .await
        .unwrap()
        .await
        .expect("JetStream acknowledged the publish");
}

/// Every message of a capture stream so far.
async fn read_all(js: &jetstream::Context, name: &str) -> Vec<async_nats::Message> {
    let stream = js.get_stream(name).await.unwrap();
    let consumer: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            ack_policy: consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut out = Vec::new();
    let mut batch = consumer
        .fetch()
        .max_messages(5_000)
        .expires(Duration::from_millis(500))
        .messages()
        .await
        .unwrap();
    while let Some(Ok(m)) = batch.next().await {
        out.push(m.message);
    }
    out
}

fn ids(messages: &[async_nats::Message]) -> HashSet<String> {
    messages
        .iter()
        .filter_map(|m| {
            m.headers
                .as_ref()?
                .get("ce-id")
                .map(|v| v.as_str().to_string())
        })
        .collect()
}

#[test]
fn a_thousand_events_none_missing_failures_retried_then_dead_lettered() {
    let nats = NatsServer::start();
    let _ferry = start(&nats);
    runtime().block_on(async {
        let client = async_nats::connect(nats.url()).await.unwrap();
        let js = jetstream::new(client);
        capture(&js).await;
        for i in 0..1000 {
            js.publish_with_headers(
                "orders.created",
                ce_headers(&format!("e-{i}"), "order.created"),
                Bytes::from_static(b"{}"),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        }
        let want: HashSet<String> = (0..1000).map(|i| format!("e-{i}-echo")).collect();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let got = ids(&read_all(&js, "RESULTS").await);
            if want.is_subset(&got) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "missing {} results",
                want.difference(&got).count()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        // A retryable failure: three deliveries, then the dead-letter subject with the reason.
        publish(&js, ce_headers("r-1", "ferry.test.retry"), Bytes::new()).await;
        // A trap too.
        publish(&js, ce_headers("p-1", "ferry.test.panic"), Bytes::new()).await;
        // A malformed message, then a valid one that must still flow.
        let mut bad = HeaderMap::new();
        bad.insert("ce-id", "m-1");
        publish(&js, bad, Bytes::from_static(b"junk")).await;
        publish(&js, ce_headers("after-bad", "order.created"), Bytes::new()).await;

        let deadline = Instant::now() + Duration::from_secs(60);
        let dead = loop {
            let dead = read_all(&js, "DEAD").await;
            let results = ids(&read_all(&js, "RESULTS").await);
            if dead.len() >= 3 && results.contains("after-bad-echo") {
                break dead;
            }
            assert!(Instant::now() < deadline, "dead letters: {}", dead.len());
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let header = |m: &async_nats::Message, k: &str| {
            m.headers
                .as_ref()
                .and_then(|h| h.get(k))
                .map(|v| v.as_str().to_string())
        };
        let retried = dead
            .iter()
            .find(|m| header(m, "ce-id").as_deref() == Some("r-1"))
            .expect("r-1 dead-lettered");
        assert_eq!(header(retried, "ce-ferryattempts").as_deref(), Some("3"));
        assert!(header(retried, "ce-ferryerror")
            .unwrap()
            .contains("retryable"));
        assert_eq!(
            header(retried, "ce-ferrysubject").as_deref(),
            Some("orders.created")
        );
        let trapped = dead
            .iter()
            .find(|m| header(m, "ce-id").as_deref() == Some("p-1"))
            .expect("p-1 dead-lettered");
        assert!(header(trapped, "ce-ferryerror")
            .unwrap()
            .contains("trapped"));
        let malformed = dead
            .iter()
            .find(|m| header(m, "Ferry-Error").is_some())
            .expect("malformed dead-lettered");
        assert!(header(malformed, "Ferry-Error")
            .unwrap()
            .contains("`source`"));
        assert_eq!(&malformed.payload[..], b"junk");
    });
}

#[test]
fn no_acknowledged_event_is_lost_when_nats_server_restarts_mid_stream() {
    let mut nats = NatsServer::start();
    let ferry = start(&nats);
    let rt = runtime();
    let mut published = 0;
    let burst = |js: jetstream::Context, from: usize, to: usize| async move {
        // Publish without waiting for each acknowledgement, then require every one.
        let mut acks = Vec::new();
        for i in from..to {
            acks.push(
                js.publish_with_headers(
                    "orders.created",
                    ce_headers(&format!("k-{i}"), "order.created"),
                    Bytes::new(),
                )
                .await
                .unwrap(),
            );
        }
        for ack in acks {
            ack.await.expect("JetStream acknowledged the publish");
        }
    };
    rt.block_on(async {
        let client = async_nats::connect(nats.url()).await.unwrap();
        let js = jetstream::new(client);
        capture(&js).await;
        burst(js.clone(), 0, 1000).await;
        published = 1000;
        let done = ids(&read_all(&js, "RESULTS").await).len();
        println!("results before the kill: {done} of {published}");
    });
    // SIGKILL the server mid-stream and bring it back on the same port and store.
    nats.restart();
    eventually("ferry to reconnect", Duration::from_secs(30), || {
        (ferry.admin_get("/healthz").1["nats"]["state"] == "connected").then_some(())
    });
    rt.block_on(async {
        let client = async_nats::connect(nats.url()).await.unwrap();
        let js = jetstream::new(client);
        burst(js.clone(), 1000, 2000).await;
        published = 2000;
        let want: HashSet<String> = (0..published).map(|i| format!("k-{i}-echo")).collect();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let got = ids(&read_all(&js, "RESULTS").await);
            if want.is_subset(&got) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "missing {} of {published} results after the restart",
                want.difference(&got).count()
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
}

#[test]
fn flaky_events_are_redelivered_then_dead_lettered() {
    let nats = NatsServer::start();
    let ferry = Ferry::start_with(&["--nats", &nats.url()]);
    let manifest = "name = \"flaky\"\n[delivery]\nmax_attempts = 3\nbackoff = { initial = \"20ms\", max = \"100ms\" }\n\
        [[trigger.nats]]\nsubject = \"flaky.in\"\nstream = \"FLAKY\"\n";
    let (status, body) = ferry.deploy_manifest("flaky", guests::bytes(guests::FLAKY), manifest);
    assert_eq!(status, 201, "{body}");
    runtime().block_on(async {
        let client = async_nats::connect(nats.url()).await.unwrap();
        let js = jetstream::new(client);
        js.get_or_create_stream(stream::Config {
            name: "DEAD".into(),
            subjects: vec!["ferry.deadletter.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
        until_stream(&js, "FLAKY").await;
        for (id, data) in [
            ("ok-1", "fine"),
            ("f-1", "FAIL"),
            ("ok-2", "fine"),
            ("b-1", "BROKEN"),
            ("f-2", "please FAIL"),
        ] {
            js.publish_with_headers("flaky.in", ce_headers(id, "t"), Bytes::from(data))
                .await
                .unwrap()
                .await
                .unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        let dead = loop {
            let dead = read_all(&js, "DEAD").await;
            if dead.len() >= 3 {
                break dead;
            }
            assert!(
                Instant::now() < deadline,
                "dead letters so far: {}",
                dead.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let attempts = |id: &str| {
            dead.iter()
                .find(|m| {
                    m.headers
                        .as_ref()
                        .and_then(|h| h.get("ce-id"))
                        .map(|v| v.as_str())
                        == Some(id)
                })
                .and_then(|m| {
                    m.headers
                        .as_ref()?
                        .get("ce-ferryattempts")
                        .map(|v| v.as_str().to_string())
                })
        };
        assert_eq!(attempts("f-1").as_deref(), Some("3"));
        assert_eq!(attempts("f-2").as_deref(), Some("3"));
        assert_eq!(
            attempts("b-1").as_deref(),
            Some("1"),
            "invalid-event is not retried"
        );
        assert_eq!(dead.len(), 3, "successful events are not dead-lettered");
        // Nothing is left unacknowledged or pending on ferry's consumer.
        settled(&js, "FLAKY").await;
    });
    // The metrics saw it all: f-1 and f-2 nakked twice each, three dead letters, two acks.
    let metrics = ferry.admin_text("/metrics");
    let nats = |outcome: &str| {
        ferry_tests::sample(
            &metrics,
            &format!("ferry_trigger_events_total{{trigger=\"nats\",function=\"flaky\",outcome=\"{outcome}\"}}"),
        )
    };
    assert_eq!(nats("nakked"), 4.0, "{metrics}");
    assert_eq!(nats("dead_lettered"), 3.0, "{metrics}");
    assert_eq!(nats("acked"), 2.0, "{metrics}");
    assert_eq!(nats("received"), 9.0, "{metrics}");
    assert_eq!(ferry_tests::sample(&metrics, "ferry_nats_connected"), 1.0);
}

/// Waits until ferry's consumer on `stream` has nothing pending or unacknowledged, and returns
/// how many redeliveries it has seen.
async fn settled(js: &jetstream::Context, stream: &str) -> u64 {
    let stream = js.get_stream(stream).await.unwrap();
    let mut names = stream.consumer_names();
    let name = names.next().await.expect("ferry's consumer").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let info = stream.consumer_info(&name).await.unwrap();
        if info.num_ack_pending == 0 && info.num_pending == 0 {
            return info.num_redelivered as u64;
        }
        assert!(
            Instant::now() < deadline,
            "ack pending {} / pending {}",
            info.num_ack_pending,
            info.num_pending
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn until_stream(js: &jetstream::Context, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while js.get_stream(name).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "ferry never created the {name} stream"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn results_reach_core_subscribers_once_and_unpublishable_results_are_dead_lettered() {
    let nats = NatsServer::start();
    let ferry = Ferry::start_with(&["--nats", &nats.url()]);
    // Results to a subject no stream captures: a plain core subscriber listens there.
    let core = "name = \"core\"\n[delivery]\nmax_attempts = 3\nbackoff = { initial = \"20ms\", max = \"100ms\" }\n\
        [[trigger.nats]]\nsubject = \"core.in\"\nstream = \"CORE\"\nreply = \"core.out\"\n";
    // Results to a subject whose stream refuses them (8-byte messages at most).
    let small = "name = \"small\"\n[delivery]\nmax_attempts = 2\nbackoff = { initial = \"20ms\", max = \"100ms\" }\n\
        [[trigger.nats]]\nsubject = \"small.in\"\nstream = \"SMALL\"\nreply = \"small.out\"\n";
    for (name, manifest) in [("core", core), ("small", small)] {
        let (status, body) =
            ferry.deploy_manifest(name, guests::bytes(guests::ECHO_EVENT), manifest);
        assert_eq!(status, 201, "{body}");
    }
    runtime().block_on(async {
        let client = async_nats::connect(nats.url()).await.unwrap();
        let js = jetstream::new(client.clone());
        for (name, subject, max_message_size) in [
            ("DEAD", "ferry.deadletter.>", -1),
            ("SMALLOUT", "small.out", 8),
        ] {
            js.get_or_create_stream(stream::Config {
                name: name.into(),
                subjects: vec![subject.into()],
                max_message_size,
                ..Default::default()
            })
            .await
            .unwrap();
        }
        let mut out = client.subscribe("core.out").await.unwrap();
        client.flush().await.unwrap();
        until_stream(&js, "CORE").await;
        until_stream(&js, "SMALL").await;

        for id in ["c-1", "c-2"] {
            js.publish_with_headers("core.in", ce_headers(id, "t"), Bytes::from_static(b"{}"))
                .await
                .unwrap()
                .await
                .unwrap();
            let msg = tokio::time::timeout(Duration::from_secs(20), out.next())
                .await
                .expect("a result on core.out")
                .unwrap();
            let got = msg
                .headers
                .unwrap()
                .get("ce-id")
                .unwrap()
                .as_str()
                .to_string();
            // The next result is this event's: no copy of an earlier one came in between.
            assert_eq!(got, format!("{id}-echo"));
            assert_eq!(
                settled(&js, "CORE").await,
                0,
                "acked at once, never redelivered"
            );
        }

        js.publish_with_headers(
            "small.in",
            ce_headers("s-1", "t"),
            Bytes::from_static(b"{\"big\": true}"),
        )
        .await
        .unwrap()
        .await
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let dead = loop {
            let dead = read_all(&js, "DEAD").await;
            if !dead.is_empty() {
                break dead;
            }
            assert!(Instant::now() < deadline, "no dead letter for s-1");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let h = dead[0].headers.clone().unwrap();
        assert_eq!(h.get("ce-id").unwrap().as_str(), "s-1");
        assert_eq!(h.get("ce-ferryattempts").unwrap().as_str(), "2");
        let error = h.get("ce-ferryerror").unwrap().as_str().to_string();
        assert!(error.contains("small.out"), "{error}");
        settled(&js, "SMALL").await;
        assert_eq!(read_all(&js, "DEAD").await.len(), 1, "dead-lettered once");
    });
}
