//! CloudEvents 1.0 protocol bindings shared by the triggers: strict validation (every error names
//! the attribute), binary mode (`ce-` headers, percent-encoded, content type as
//! `datacontenttype`) and structured mode (`application/cloudevents+json`). HTTP uses the headers
//! as they are; NATS maps its message headers onto the same `http::HeaderMap`.
//!
//! [`Parts`] is an event as plain fields, the shape of the WIT `event` record.

use crate::http::{full_body, Body};
use bytes::Bytes;
use cloudevents::event::{AttributeValue, Data};
use cloudevents::{AttributesReader, AttributesWriter, Event, EventBuilder, EventBuilderV10};
use http::{HeaderMap, HeaderValue, Response, StatusCode};

/// The media type of structured-mode events.
pub const STRUCTURED: &str = "application/cloudevents+json";

/// How an event was (or is to be) carried over HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    Binary,
    Structured,
}

/// An event that breaks the CloudEvents spec; the message names the attribute.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

fn invalid(msg: impl Into<String>) -> Invalid {
    Invalid(msg.into())
}

/// A context attribute value as it arrived, before typing.
enum Raw<'a> {
    Str(&'a str),
    Int,
    Bool,
    /// Anything else, described for the message ("a number with a fraction", "an object").
    Other(&'static str),
}

const REQUIRED: [&str; 4] = ["id", "source", "specversion", "type"];
const OPTIONAL: [&str; 4] = ["datacontenttype", "dataschema", "subject", "time"];

/// Checks one context attribute by its name.
fn check_attribute(name: &str, value: Raw<'_>) -> Result<(), Invalid> {
    let known = REQUIRED.contains(&name) || OPTIONAL.contains(&name);
    if !known {
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            return Err(invalid(format!(
                "extension attribute {name:?}: names must be lower-case letters and digits only"
            )));
        }
        return match value {
            Raw::Str(_) | Raw::Int | Raw::Bool => Ok(()),
            Raw::Other(what) => Err(invalid(format!(
                "extension attribute `{name}`: must be a string, boolean or integer, not {what}"
            ))),
        };
    }
    let s = match value {
        Raw::Str(s) => s,
        Raw::Int | Raw::Bool => {
            return Err(invalid(format!("attribute `{name}` must be a string")))
        }
        Raw::Other(what) => {
            return Err(invalid(format!(
                "attribute `{name}` must be a string, not {what}"
            )))
        }
    };
    if s.is_empty() {
        return Err(invalid(format!("attribute `{name}` must not be empty")));
    }
    match name {
        "specversion" if s != "1.0" => Err(invalid(format!(
            "attribute `specversion` is {s:?}; Ferry speaks CloudEvents \"1.0\""
        ))),
        "time" => chrono::DateTime::parse_from_rfc3339(s)
            .map(drop)
            .map_err(|e| {
                invalid(format!(
                    "attribute `time` is not an RFC 3339 timestamp ({s:?}): {e}"
                ))
            }),
        "datacontenttype" if !is_media_type(s) => Err(invalid(format!(
            "attribute `datacontenttype` is not a media type like \"application/json\": {s:?}"
        ))),
        _ => Ok(()),
    }
}

/// `type/subtype` with optional parameters (RFC 2046).
fn is_media_type(s: &str) -> bool {
    let essence = s.split(';').next().unwrap_or("").trim();
    let token = |t: &str| {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    matches!(essence.split_once('/'), Some((t, sub)) if token(t) && token(sub))
}

fn check_required_present(present: impl Fn(&str) -> bool) -> Result<(), Invalid> {
    for name in REQUIRED {
        if !present(name) {
            return Err(invalid(format!("required attribute `{name}` is missing")));
        }
    }
    Ok(())
}

/// Validates a structured-mode (JSON) event.
pub fn validate_json(value: &serde_json::Value) -> Result<(), Invalid> {
    let obj = value
        .as_object()
        .ok_or_else(|| invalid("a structured CloudEvent must be a JSON object"))?;
    check_required_present(|n| obj.get(n).is_some_and(|v| !v.is_null()))?;
    if obj.contains_key("data") && obj.contains_key("data_base64") {
        return Err(invalid(
            "an event may carry `data` or `data_base64`, not both",
        ));
    }
    for (name, v) in obj {
        if name == "data"
            || name == "data_base64"
            || (OPTIONAL.contains(&name.as_str()) && v.is_null())
        {
            continue;
        }
        let raw = match v {
            serde_json::Value::String(s) => Raw::Str(s),
            serde_json::Value::Bool(_) => Raw::Bool,
            serde_json::Value::Number(n)
                if n.is_i64() && i32::try_from(n.as_i64().unwrap_or(i64::MAX)).is_ok() =>
            {
                Raw::Int
            }
            serde_json::Value::Number(n) if n.is_i64() || n.is_u64() => {
                Raw::Other("an integer outside 32 bits")
            }
            serde_json::Value::Number(_) => Raw::Other("a number with a fraction"),
            serde_json::Value::Null => Raw::Other("null"),
            serde_json::Value::Array(_) => Raw::Other("an array"),
            serde_json::Value::Object(_) => Raw::Other("an object"),
        };
        check_attribute(name, raw)?;
    }
    Ok(())
}

/// Validates the `ce-` headers (and content type) of a binary-mode event.
pub fn validate_headers(headers: &HeaderMap) -> Result<(), Invalid> {
    check_required_present(|n| headers.contains_key(format!("ce-{n}").as_str()))?;
    for (name, value) in headers {
        let Some(attr) = name.as_str().strip_prefix("ce-") else {
            continue;
        };
        let text = value
            .to_str()
            .map_err(|_| invalid(format!("header {name} is not valid text")))?;
        let decoded = percent_decode(text);
        check_attribute(attr, Raw::Str(&decoded))?;
    }
    if let Some(ct) = headers.get(http::header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("");
        check_attribute("datacontenttype", Raw::Str(ct))?;
    }
    Ok(())
}

/// Reads an event from a message's headers and body (binary or structured mode).
pub fn from_headers(headers: &HeaderMap, body: Bytes) -> Result<(Event, Mode), Invalid> {
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let mode = if content_type.starts_with(STRUCTURED) {
        let json: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| invalid(format!("the structured CloudEvent is not valid JSON: {e}")))?;
        validate_json(&json)?;
        Mode::Structured
    } else if content_type.starts_with("application/cloudevents-batch+json") {
        return Err(invalid(
            "batched CloudEvents are not supported: send one event per request",
        ));
    } else if headers.contains_key("ce-specversion")
        || headers.keys().any(|k| k.as_str().starts_with("ce-"))
    {
        validate_headers(headers)?;
        Mode::Binary
    } else {
        return Err(invalid(
            "not a CloudEvent: send ce-id, ce-source, ce-type and ce-specversion headers (binary \
             mode) or a JSON event with Content-Type: application/cloudevents+json (structured mode)",
        ));
    };
    let event = match mode {
        Mode::Binary => from_binary(headers, body)?,
        Mode::Structured => cloudevents::binding::http::to_event(headers, body.to_vec())
            .map_err(|e| invalid(format!("invalid CloudEvent: {e}")))?,
    };
    Ok((event, mode))
}

/// An event as plain fields: every context attribute, extensions (sorted by name, values as
/// text) and the data as bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parts {
    pub id: String,
    pub source: String,
    pub specversion: String,
    pub ty: String,
    pub datacontenttype: Option<String>,
    pub dataschema: Option<String>,
    pub subject: Option<String>,
    pub time: Option<String>,
    pub extensions: Vec<(String, String)>,
    pub data: Option<Vec<u8>>,
}

/// The fields of an event.
pub fn to_parts(event: &Event) -> Parts {
    let data = event.data().map(|d| match d {
        Data::Binary(b) => b.clone(),
        Data::String(s) => s.clone().into_bytes(),
        Data::Json(v) => serde_json::to_vec(v).unwrap_or_default(),
    });
    let mut extensions: Vec<_> = event
        .iter_extensions()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    // Sorted by name, so the same event always gives the same fields.
    extensions.sort();
    Parts {
        id: event.id().to_string(),
        source: event.source().to_string(),
        specversion: event.specversion().to_string(),
        ty: event.ty().to_string(),
        datacontenttype: event.datacontenttype().map(String::from),
        dataschema: event.dataschema().map(|u| u.to_string()),
        subject: event.subject().map(String::from),
        time: event
            .time()
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)),
        extensions,
        data,
    }
}

/// An event from its fields, validated like any incoming event.
pub fn from_parts(g: Parts) -> Result<Event, Invalid> {
    for (name, v) in [
        ("id", &g.id),
        ("source", &g.source),
        ("specversion", &g.specversion),
        ("type", &g.ty),
    ] {
        check_attribute(name, Raw::Str(v))?;
    }
    for (name, v) in [
        ("datacontenttype", &g.datacontenttype),
        ("dataschema", &g.dataschema),
        ("subject", &g.subject),
        ("time", &g.time),
    ] {
        if let Some(v) = v {
            check_attribute(name, Raw::Str(v))?;
        }
    }
    for (k, v) in &g.extensions {
        check_attribute(k, Raw::Str(v))?;
    }
    let mut b = EventBuilderV10::new().id(&g.id).source(&g.source).ty(&g.ty);
    if let Some(s) = &g.subject {
        b = b.subject(s);
    }
    if let Some(t) = &g.time {
        b = b.time(t.as_str());
    }
    for (k, v) in &g.extensions {
        b = b.extension(k, v.as_str());
    }
    if let Some(bytes) = g.data {
        let ct = g
            .datacontenttype
            .as_deref()
            .unwrap_or("application/octet-stream");
        b = b.data(ct, typed_data(ct, bytes));
    }
    let mut event = b.build().map_err(|e| invalid(format!("{e}")))?;
    event.set_datacontenttype(g.datacontenttype);
    if let Some(schema) = &g.dataschema {
        let url = url::Url::parse(schema).map_err(|e| {
            invalid(format!(
                "attribute `dataschema` is not an absolute URI ({schema:?}): {e}"
            ))
        })?;
        event.set_dataschema(Some(url));
    }
    Ok(event)
}

/// A binary-mode event: `ce-` headers (percent-decoded), `content-type` and the body.
fn from_binary(headers: &HeaderMap, body: Bytes) -> Result<Event, Invalid> {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(percent_decode)
    };
    let required = |name: &str| {
        get(&format!("ce-{name}"))
            .ok_or_else(|| invalid(format!("required attribute `{name}` is missing")))
    };
    let known = [
        "id",
        "source",
        "specversion",
        "type",
        "dataschema",
        "subject",
        "time",
        "datacontenttype",
    ];
    let extensions = headers
        .keys()
        .filter_map(|k| k.as_str().strip_prefix("ce-"))
        .filter(|k| !known.contains(k))
        .map(|k| (k.to_string(), get(&format!("ce-{k}")).unwrap_or_default()))
        .collect();
    from_parts(Parts {
        id: required("id")?,
        source: required("source")?,
        specversion: required("specversion")?,
        ty: required("type")?,
        datacontenttype: get("content-type"),
        dataschema: get("ce-dataschema"),
        subject: get("ce-subject"),
        time: get("ce-time"),
        extensions,
        data: (!body.is_empty()).then(|| body.to_vec()),
    })
}

/// Data typed by content type: JSON stays JSON, text stays text, the rest is binary.
fn typed_data(content_type: &str, bytes: Vec<u8>) -> Data {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if essence == "application/json" || essence.ends_with("+json") || essence == "text/json" {
        if let Ok(v) = serde_json::from_slice(&bytes) {
            return Data::Json(v);
        }
    }
    if essence.starts_with("text/") {
        return match String::from_utf8(bytes) {
            Ok(s) => Data::String(s),
            Err(e) => Data::Binary(e.into_bytes()),
        };
    }
    Data::Binary(bytes)
}

/// Headers and body carrying `event` in `mode`.
pub fn to_headers(event: &Event, mode: Mode) -> (HeaderMap, Vec<u8>) {
    let mut headers = HeaderMap::new();
    match mode {
        Mode::Structured => {
            headers.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static(STRUCTURED),
            );
            (headers, serde_json::to_vec(event).unwrap_or_default())
        }
        Mode::Binary => {
            for (name, value) in event.iter_attributes() {
                if name != "datacontenttype" {
                    insert_ce(&mut headers, name, &attribute_text(&value));
                }
            }
            for (name, value) in event.iter_extensions() {
                insert_ce(&mut headers, name, &value.to_string());
            }
            if let Some(v) = event
                .datacontenttype()
                .and_then(|ct| HeaderValue::from_str(ct).ok())
            {
                headers.insert(http::header::CONTENT_TYPE, v);
            }
            let body = match event.data() {
                Some(Data::Binary(b)) => b.clone(),
                Some(Data::String(s)) => s.clone().into_bytes(),
                Some(Data::Json(v)) => serde_json::to_vec(v).unwrap_or_default(),
                None => Vec::new(),
            };
            (headers, body)
        }
    }
}

/// An HTTP response carrying `event` in `mode`.
pub fn to_http(event: &Event, mode: Mode) -> Response<Body> {
    let (headers, body) = to_headers(event, mode);
    let mut resp = Response::builder()
        .status(StatusCode::OK)
        .body(full_body(body))
        .expect("static status is valid");
    *resp.headers_mut() = headers;
    resp
}

fn attribute_text(v: &AttributeValue<'_>) -> String {
    match v {
        AttributeValue::Time(t) => t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        other => other.to_string(),
    }
}

fn insert_ce(headers: &mut HeaderMap, name: &str, value: &str) {
    let name = http::HeaderName::from_bytes(format!("ce-{name}").as_bytes());
    let value = HeaderValue::from_str(&percent_encode(value));
    if let (Ok(n), Ok(v)) = (name, value) {
        headers.insert(n, v);
    }
}

/// Header values in binary mode: printable ASCII except space, `"` and `%` pass; the rest is
/// percent-encoded UTF-8 (CloudEvents HTTP binding 3.1.3.2).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x21..=0x7e).contains(&b) && b != b'"' && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conformance(file: &str) -> Vec<(String, serde_json::Value)> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/conformance/cloudevents");
        let text = std::fs::read_to_string(dir.join(file)).unwrap_or_else(|e| {
            panic!(
                "reading {} (the shared/ folder beside the checkout): {e}",
                dir.join(file).display()
            )
        });
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        doc["tests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| (t["id"].as_str().unwrap().to_string(), t["event"].clone()))
            .collect()
    }

    fn structured(json: &serde_json::Value) -> Result<(Event, Mode), Invalid> {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static(STRUCTURED),
        );
        from_headers(&headers, Bytes::from(serde_json::to_vec(json).unwrap()))
    }

    #[test]
    fn every_valid_conformance_event_round_trips_through_parts() {
        for (id, json) in conformance("valid-events.json") {
            let (event, mode) = structured(&json).unwrap_or_else(|e| panic!("{id}: {e}"));
            assert_eq!(mode, Mode::Structured);
            let guest = to_parts(&event);
            let back = from_parts(guest.clone()).unwrap_or_else(|e| panic!("{id}: {e}"));
            assert_eq!(to_parts(&back), guest, "{id}");
            assert_eq!(guest.id, json["id"].as_str().unwrap(), "{id}");
            assert_eq!(guest.source, json["source"].as_str().unwrap(), "{id}");
            if let Some(t) = json["time"].as_str() {
                let a = chrono::DateTime::parse_from_rfc3339(t).unwrap();
                let b =
                    chrono::DateTime::parse_from_rfc3339(guest.time.as_deref().unwrap()).unwrap();
                assert_eq!(a, b, "{id}");
            }
            // And through binary mode.
            let resp = to_http(&back, Mode::Binary);
            let (parts, _) = resp.into_parts();
            validate_headers(&parts.headers).unwrap_or_else(|e| panic!("{id}: {e}"));
        }
    }

    #[test]
    fn every_invalid_conformance_event_is_refused_naming_the_problem() {
        for (id, json) in conformance("invalid-events.json") {
            let err = structured(&json).map(|_| ()).expect_err(&id);
            let named = [
                "specversion",
                "`id`",
                "`type`",
                "`source`",
                "`time`",
                "datacontenttype",
                "dataschema",
                "subject",
                "extension",
                "data_base64",
            ];
            assert!(named.iter().any(|n| err.0.contains(n)), "{id}: {err}");
        }
    }

    #[test]
    fn binary_mode_headers() {
        let mut h = HeaderMap::new();
        h.insert("ce-id", HeaderValue::from_static("1"));
        h.insert("ce-source", HeaderValue::from_static("/src"));
        h.insert("ce-type", HeaderValue::from_static("t"));
        h.insert("ce-specversion", HeaderValue::from_static("1.0"));
        h.insert("ce-subject", HeaderValue::from_static("caf%C3%A9"));
        h.insert("content-type", HeaderValue::from_static("application/json"));
        let (event, mode) = from_headers(&h, Bytes::from_static(b"{\"a\":1}")).unwrap();
        assert_eq!(mode, Mode::Binary);
        let g = to_parts(&event);
        assert_eq!(g.subject.as_deref(), Some("café"));
        assert_eq!(g.data.as_deref(), Some(&b"{\"a\":1}"[..]));
        h.remove("ce-type");
        assert!(from_headers(&h, Bytes::new())
            .unwrap_err()
            .0
            .contains("`type`"));
        h.insert("ce-type", HeaderValue::from_static("t"));
        h.insert("ce-time", HeaderValue::from_static("yesterday"));
        assert!(from_headers(&h, Bytes::new())
            .unwrap_err()
            .0
            .contains("`time`"));
    }

    #[test]
    fn percent_coding_round_trips() {
        for s in ["plain", "with space", "100%", "\"quoted\"", "café ☕"] {
            assert_eq!(percent_decode(&percent_encode(s)), s);
        }
    }
}
