//! The CloudEvents conformance data against Ferry's CloudEvents codec directly: every valid event
//! parses and round-trips through structured and binary mode unchanged; every invalid one is
//! refused with a message naming what is wrong. (The HTTP and NATS tests run the same data
//! through the real host.)

use bytes::Bytes;
use ferry_tests::conformance;
use ferry_triggers::cloudevents::{from_headers, CloudEvent, ContentMode};

fn structured(json: &serde_json::Value) -> Result<CloudEvent, String> {
    let mut headers = http::HeaderMap::new();
    headers.insert(
        "content-type",
        http::HeaderValue::from_static("application/cloudevents+json"),
    );
    let (event, mode) = from_headers(&headers, Bytes::from(json.to_string())).map_err(|e| e.0)?;
    assert_eq!(mode, ContentMode::Structured);
    Ok(event)
}

#[test]
fn every_valid_conformance_event_round_trips_in_both_modes() {
    for (id, json) in conformance::events("valid-events.json") {
        let event = structured(&json).unwrap_or_else(|e| panic!("{id}: {e}"));
        assert_eq!(event.id, json["id"].as_str().unwrap(), "{id}");
        assert_eq!(event.source, json["source"].as_str().unwrap(), "{id}");
        assert_eq!(
            event.time.as_deref(),
            json["time"].as_str(),
            "{id}: time as sent"
        );
        let again = CloudEvent::from_structured(&event.to_structured())
            .unwrap_or_else(|e| panic!("{id}: {e}"));
        assert_eq!(again, event, "{id}: structured round trip");
        let (headers, body) = event.to_headers(ContentMode::Binary);
        let (binary, mode) = from_headers(&headers, body).unwrap_or_else(|e| panic!("{id}: {e}"));
        assert_eq!(mode, ContentMode::Binary);
        assert_eq!(binary.data, event.data, "{id}: data through binary mode");
        assert_eq!(binary.datacontenttype, event.datacontenttype, "{id}");
        assert_eq!(binary.time, event.time, "{id}");
    }
}

#[test]
fn every_invalid_conformance_event_is_refused_naming_the_problem() {
    for (id, json) in conformance::events("invalid-events.json") {
        let err = structured(&json).map(|_| ()).expect_err(&id);
        assert!(conformance::names_the_problem(&err), "{id}: {err}");
    }
}
