//! Event functions over HTTP: a CloudEvent POSTed in binary or structured mode runs the function
//! and the result comes back in the same mode; the CloudEvents conformance data drives it.

use ferry_tests::{conformance, guests, Ferry};
use reqwest::blocking::Response;
use serde_json::{json, Value};

fn deployed() -> Ferry {
    let ferry = Ferry::start();
    let (status, body) = ferry.deploy_raw("echo-event", guests::bytes(guests::ECHO_EVENT));
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["world"], "event");
    ferry
}

fn post_structured(ferry: &Ferry, event: &Value) -> Response {
    ferry
        .http
        .post(ferry.url("/echo-event"))
        .header("content-type", "application/cloudevents+json")
        .body(event.to_string())
        .send()
        .unwrap()
}

/// A result event as attribute -> value, from either mode.
fn attributes_of(resp: Response) -> (Value, Vec<u8>) {
    let binary = !resp.headers().get("content-type").is_some_and(|v| {
        v.to_str()
            .unwrap()
            .starts_with("application/cloudevents+json")
    });
    if binary {
        let mut attrs = serde_json::Map::new();
        for (k, v) in resp.headers() {
            if let Some(name) = k.as_str().strip_prefix("ce-") {
                attrs.insert(name.to_string(), json!(v.to_str().unwrap()));
            }
        }
        if let Some(ct) = resp.headers().get("content-type") {
            attrs.insert("datacontenttype".into(), json!(ct.to_str().unwrap()));
        }
        (Value::Object(attrs), resp.bytes().unwrap().to_vec())
    } else {
        let mut v: Value = serde_json::from_slice(&resp.bytes().unwrap()).unwrap();
        let obj = v.as_object_mut().unwrap();
        let data = match (obj.remove("data"), obj.remove("data_base64")) {
            (Some(Value::String(s)), _) => s.into_bytes(),
            (Some(other), _) => serde_json::to_vec(&other).unwrap(),
            (None, Some(Value::String(b64))) => b64_decode(&b64),
            _ => Vec::new(),
        };
        // Extension values compare as text, as binary mode carries them.
        for (_, val) in obj.iter_mut() {
            if !val.is_string() {
                *val = json!(val.to_string());
            }
        }
        (v, data)
    }
}

fn b64_decode(s: &str) -> Vec<u8> {
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in s.bytes().filter(|c| *c != b'=') {
        bits = (bits << 6) | alphabet.iter().position(|a| *a == c).unwrap() as u32;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
        }
    }
    out
}

#[test]
fn binary_mode_in_binary_mode_out() {
    let ferry = deployed();
    let resp = ferry
        .http
        .post(ferry.url("/echo-event"))
        .header("ce-id", "42")
        .header("ce-source", "/orders")
        .header("ce-type", "com.example.order.created")
        .header("ce-specversion", "1.0")
        .header("ce-time", "2026-11-22T10:00:00Z")
        .header("ce-subject", "caf%C3%A9")
        .header("ce-tenant", "acme")
        .header("content-type", "application/json")
        .body(r#"{"order":1}"#)
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let h = resp.headers().clone();
    let get = |k: &str| {
        h.get(k)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    };
    assert_eq!(get("ce-id"), "42-echo");
    assert_eq!(get("ce-type"), "com.example.order.created.echo");
    assert_eq!(get("ce-source"), "/ferry/echo-event");
    assert_eq!(get("ce-echoedfrom"), "/orders");
    assert_eq!(get("ce-tenant"), "acme");
    assert_eq!(get("ce-subject"), "caf%C3%A9");
    assert_eq!(get("ce-time"), "2026-11-22T10:00:00Z");
    assert_eq!(get("content-type"), "application/json");
    assert_eq!(resp.text().unwrap(), r#"{"order":1}"#);
}

fn take_traceparent(attributes: &mut serde_json::Value) -> String {
    attributes
        .as_object_mut()
        .and_then(|o| o.remove("traceparent"))
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default()
}

#[test]
fn the_same_event_in_both_modes_gives_the_same_result() {
    let ferry = deployed();
    let binary = ferry
        .http
        .post(ferry.url("/echo-event"))
        .header("ce-id", "7")
        .header("ce-source", "https://example.com/src")
        .header("ce-type", "t")
        .header("ce-specversion", "1.0")
        .header("ce-flag", "on")
        .header("content-type", "text/plain")
        .body("hello")
        .send()
        .unwrap();
    let structured = post_structured(
        &ferry,
        &json!({"specversion": "1.0", "id": "7", "source": "https://example.com/src", "type": "t",
                "flag": "on", "datacontenttype": "text/plain", "data": "hello"}),
    );
    assert_eq!(binary.status().as_u16(), 200);
    assert_eq!(structured.status().as_u16(), 200);
    assert!(structured.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/cloudevents+json"));
    let (mut a, da) = attributes_of(binary);
    let (mut b, db) = attributes_of(structured);
    // Each call is a span of its own (in a trace of its own): the one attribute that differs.
    let (ta, tb) = (take_traceparent(&mut a), take_traceparent(&mut b));
    assert_eq!((ta.len(), tb.len()), (55, 55), "{ta} {tb}");
    assert_ne!(ta, tb);
    assert_eq!(a, b);
    assert_eq!(da, db);
    assert_eq!(da, b"hello");
}

#[test]
fn every_valid_conformance_event_round_trips_through_the_guest() {
    let ferry = deployed();
    for (id, event) in conformance::events("valid-events.json") {
        let resp = post_structured(&ferry, &event);
        assert_eq!(resp.status().as_u16(), 200, "{id}");
        let (out, data) = attributes_of(resp);
        assert_eq!(
            out["id"],
            json!(format!("{}-echo", event["id"].as_str().unwrap())),
            "{id}"
        );
        assert_eq!(
            out["type"],
            json!(format!("{}.echo", event["type"].as_str().unwrap())),
            "{id}"
        );
        assert_eq!(out["echoedfrom"], event["source"], "{id}");
        for (k, v) in event.as_object().unwrap() {
            match k.as_str() {
                "id" | "type" | "source" | "data" | "data_base64" => {}
                "time" if !v.is_null() => {
                    let want = chrono_like(v.as_str().unwrap());
                    assert_eq!(
                        chrono_like(out["time"].as_str().unwrap()),
                        want,
                        "{id}: time"
                    );
                }
                _ if v.is_null() => assert!(out.get(k).is_none(), "{id}: {k} should stay absent"),
                _ => {
                    let want = v
                        .as_str()
                        .map(String::from)
                        .unwrap_or_else(|| v.to_string());
                    assert_eq!(out[k], json!(want), "{id}: {k}");
                }
            }
        }
        match (&event.get("data"), &event.get("data_base64")) {
            (Some(Value::String(s)), _) => assert_eq!(data, s.as_bytes(), "{id}: data"),
            (Some(v), _) => assert_eq!(
                serde_json::from_slice::<Value>(&data).unwrap(),
                **v,
                "{id}: data"
            ),
            (None, Some(Value::String(b))) => assert_eq!(data, b64_decode(b), "{id}: data"),
            _ => assert!(data.is_empty(), "{id}: no data"),
        }
    }
}

/// RFC 3339 timestamps compared as instants: "17:31:00Z" == "18:31:00+01:00".
fn chrono_like(t: &str) -> i64 {
    let out = std::process::Command::new("date")
        .args(["-u", "-d", t, "+%s%N"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn every_invalid_conformance_event_is_refused_naming_what_is_wrong() {
    let ferry = deployed();
    for (id, event) in conformance::events("invalid-events.json") {
        let resp = post_structured(&ferry, &event);
        assert_eq!(resp.status().as_u16(), 400, "{id}");
        let text = resp.text().unwrap();
        assert!(conformance::names_the_problem(&text), "{id}: {text}");
    }
    // Binary mode: each missing required attribute is named.
    for missing in ["id", "source", "type", "specversion"] {
        let mut req = ferry.http.post(ferry.url("/echo-event"));
        for (k, v) in [
            ("id", "1"),
            ("source", "/s"),
            ("type", "t"),
            ("specversion", "1.0"),
        ] {
            if k != missing {
                req = req.header(format!("ce-{k}"), v);
            }
        }
        let resp = req.send().unwrap();
        assert_eq!(resp.status().as_u16(), 400);
        assert!(
            resp.text().unwrap().contains(&format!("`{missing}`")),
            "{missing}"
        );
    }
}

#[test]
fn the_http_protocol_binding_cases() {
    let ferry = deployed();
    for case in conformance::http_cases() {
        let mut req = ferry
            .http
            .post(ferry.url("/echo-event"))
            .body(case.body.clone());
        for (k, v) in &case.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let resp = req.send().unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{}", case.name);
        let (out, data) = attributes_of(resp);
        for (k, v) in &case.attributes {
            let want = match k.as_str() {
                "id" => format!("{v}-echo"),
                "type" => format!("{v}.echo"),
                "source" => {
                    assert_eq!(out["echoedfrom"], json!(v), "{}", case.name);
                    continue;
                }
                _ => v.clone(),
            };
            assert_eq!(out[k.as_str()], json!(want), "{}: {k}", case.name);
        }
        assert_eq!(
            serde_json::from_slice::<Value>(&data).unwrap(),
            case.data,
            "{}",
            case.name
        );
    }
}

#[test]
fn typed_errors_methods_and_non_events() {
    let ferry = deployed();
    let resp = post_structured(
        &ferry,
        &json!({"specversion": "1.0", "id": "1", "source": "/s", "type": "ferry.test.reject"}),
    );
    assert_eq!(resp.status().as_u16(), 422);
    let body: Value = resp.json().unwrap();
    assert_eq!(body["kind"], "invalid-event");
    assert_eq!(body["function"], "echo-event");
    assert!(body["error"].as_str().unwrap().contains("refuses"));

    let resp = ferry.http.get(ferry.url("/echo-event")).send().unwrap();
    assert_eq!(resp.status().as_u16(), 405);
    assert_eq!(resp.headers()["allow"], "POST");

    let resp = ferry
        .http
        .post(ferry.url("/echo-event"))
        .body("plain")
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    assert!(resp.text().unwrap().contains("not a CloudEvent"));
    let resp = ferry
        .http
        .post(ferry.url("/echo-event"))
        .header("content-type", "application/cloudevents+json")
        .body("{not json")
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    assert!(resp.text().unwrap().contains("not valid JSON"));
}

#[test]
fn data_passes_through_byte_for_byte_and_structured_json_data_is_application_json() {
    let ferry = deployed();
    let data = "{\"b\":1,  \"a\":[2, 3]}";
    // Binary mode: the result's body is the very bytes sent.
    let resp = ferry
        .http
        .post(ferry.url("/echo-event"))
        .header("ce-id", "1")
        .header("ce-source", "/s")
        .header("ce-type", "t")
        .header("ce-specversion", "1.0")
        .header("content-type", "application/json")
        .body(data)
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.text().unwrap(), data);
    // Structured mode without datacontenttype: the data is JSON (application/json), written back
    // as JSON exactly as it came, not as data_base64.
    let doc = format!(
        "{{\"specversion\":\"1.0\",\"id\":\"2\",\"source\":\"/s\",\"type\":\"t\",\"data\":{data}}}"
    );
    let resp = ferry
        .http
        .post(ferry.url("/echo-event"))
        .header("content-type", "application/cloudevents+json")
        .body(doc)
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let text = resp.text().unwrap();
    assert!(text.contains(&format!("\"data\":{data}")), "{text}");
    assert!(
        text.contains("\"datacontenttype\":\"application/json\""),
        "{text}"
    );
    assert!(!text.contains("data_base64"), "{text}");
}
