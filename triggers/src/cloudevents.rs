//! CloudEvents 1.0: the event type the triggers and the runtime pass around, strict validation
//! (every error names the attribute), and the protocol bindings: binary mode (`ce-` headers,
//! percent-encoded, content type as `datacontenttype`) and structured mode (the JSON event
//! format, `application/cloudevents+json`). HTTP uses the headers as they are; NATS maps its
//! message headers onto the same `http::HeaderMap`.
//!
//! Data is carried as the bytes that arrived and is never re-serialised: a JSON payload keeps its
//! key order and white space from input to function to output, in either mode.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use serde_json::value::RawValue;

use crate::http::{full_body, Body};

/// The media type of structured-mode events.
pub const STRUCTURED: &str = "application/cloudevents+json";

/// The content type that a structured event's `data` implies when `datacontenttype` is absent
/// (JSON event format, section 3.1).
pub const IMPLIED_JSON: &str = "application/json";

/// How an event is carried over HTTP or NATS: the CloudEvents content mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ContentMode {
    /// Attributes in `ce-` headers, the data as the body with its own content type.
    Binary,
    /// The whole event as one JSON document, `application/cloudevents+json`.
    Structured,
}

/// The value of an extension attribute.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum ExtensionValue {
    /// A string; the other CloudEvents types (URI, timestamp, binary) travel as one too.
    String(String),
    /// A 32-bit integer: a JSON number in structured mode; binary mode writes it as text and
    /// reads it back as a string.
    Integer(i64),
    /// A boolean: JSON `true` or `false` in structured mode; text in binary mode, read back as a
    /// string.
    Boolean(bool),
}

impl fmt::Display for ExtensionValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExtensionValue::String(s) => f.write_str(s),
            ExtensionValue::Integer(i) => write!(f, "{i}"),
            ExtensionValue::Boolean(b) => write!(f, "{b}"),
        }
    }
}

impl From<&str> for ExtensionValue {
    fn from(s: &str) -> Self {
        ExtensionValue::String(s.to_string())
    }
}

/// A CloudEvents 1.0 event. Built only through [`CloudEvent::new`] and the decoders, all of
/// which validate, so every value of this type is a valid event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudEvent {
    /// Identifies the event; unique per `source`.
    pub id: String,
    /// The context in which the event happened (a URI-reference).
    pub source: String,
    /// The CloudEvents version, always `1.0`.
    pub specversion: String,
    /// The `type` attribute: what kind of occurrence this is, like `com.example.order.created`.
    pub ty: String,
    /// The media type of `data`, like `application/json`.
    pub datacontenttype: Option<String>,
    /// An absolute URI of the schema `data` adheres to.
    pub dataschema: Option<String>,
    /// What the event is about, within `source`.
    pub subject: Option<String>,
    /// As it arrived (RFC 3339), not re-formatted.
    pub time: Option<String>,
    /// Extension attributes, sorted by name.
    pub extensions: Vec<(String, ExtensionValue)>,
    /// The data exactly as it arrived.
    pub data: Option<Bytes>,
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
    Int(i64),
    Bool(bool),
    /// Anything else, described for the message ("a number with a fraction", "an object").
    Other(&'static str),
}

const REQUIRED: [&str; 4] = ["id", "source", "specversion", "type"];
const OPTIONAL: [&str; 4] = ["datacontenttype", "dataschema", "subject", "time"];

/// Checks one context attribute by its name.
fn check_attribute(name: &str, value: &Raw<'_>) -> Result<(), Invalid> {
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
            Raw::Str(_) | Raw::Int(_) | Raw::Bool(_) => Ok(()),
            Raw::Other(what) => Err(invalid(format!(
                "extension attribute `{name}`: must be a string, boolean or integer, not {what}"
            ))),
        };
    }
    let s = match value {
        Raw::Str(s) => *s,
        Raw::Int(_) | Raw::Bool(_) => {
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
        "dataschema" => url::Url::parse(s).map(drop).map_err(|e| {
            invalid(format!(
                "attribute `dataschema` is not an absolute URI ({s:?}): {e}"
            ))
        }),
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

/// Whether data of this content type is JSON (`application/json`, `text/json`, `*/*+json`).
pub fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || essence == "text/json" || essence.ends_with("+json")
}

impl CloudEvent {
    /// A new event with the required attributes, validated.
    pub fn new(
        id: impl Into<String>,
        source: impl Into<String>,
        ty: impl Into<String>,
    ) -> Result<Self, Invalid> {
        let event = CloudEvent {
            id: id.into(),
            source: source.into(),
            specversion: "1.0".into(),
            ty: ty.into(),
            datacontenttype: None,
            dataschema: None,
            subject: None,
            time: None,
            extensions: Vec::new(),
            data: None,
        };
        event.validate()?;
        Ok(event)
    }

    /// Checks every attribute; the error names the first one that is wrong.
    pub fn validate(&self) -> Result<(), Invalid> {
        for (name, v) in [
            ("id", &self.id),
            ("source", &self.source),
            ("specversion", &self.specversion),
            ("type", &self.ty),
        ] {
            check_attribute(name, &Raw::Str(v))?;
        }
        for (name, v) in [
            ("datacontenttype", &self.datacontenttype),
            ("dataschema", &self.dataschema),
            ("subject", &self.subject),
            ("time", &self.time),
        ] {
            if let Some(v) = v {
                check_attribute(name, &Raw::Str(v))?;
            }
        }
        for (name, v) in &self.extensions {
            if REQUIRED.contains(&name.as_str()) || OPTIONAL.contains(&name.as_str()) {
                return Err(invalid(format!(
                    "extension attribute `{name}` has the name of a context attribute"
                )));
            }
            let raw = match v {
                ExtensionValue::String(s) => Raw::Str(s),
                ExtensionValue::Integer(i) => Raw::Int(*i),
                ExtensionValue::Boolean(b) => Raw::Bool(*b),
            };
            check_attribute(name, &raw)?;
        }
        Ok(())
    }

    /// Takes the W3C `traceparent` and `tracestate` of the transport (HTTP or NATS headers) as
    /// the distributed-tracing extension, unless the event carries its own.
    pub fn adopt_trace_headers(&mut self, headers: &http::HeaderMap) {
        if self.extension("traceparent").is_some() {
            return;
        }
        for name in ["traceparent", "tracestate"] {
            if let Some(v) = headers.get(name).and_then(|v| v.to_str().ok()) {
                self.set_extension(name, ExtensionValue::String(v.to_string()));
            }
        }
    }

    /// Sets (or replaces) an extension attribute, keeping them sorted by name.
    pub fn set_extension(&mut self, name: &str, value: ExtensionValue) {
        match self
            .extensions
            .binary_search_by(|(n, _)| n.as_str().cmp(name))
        {
            Ok(i) => self.extensions[i].1 = value,
            Err(i) => self.extensions.insert(i, (name.to_string(), value)),
        }
    }

    /// An extension attribute's value.
    pub fn extension(&self, name: &str) -> Option<&ExtensionValue> {
        self.extensions
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }

    /// The event in the JSON event format (structured mode). JSON data is written as it arrived;
    /// other text as a JSON string; anything else as `data_base64`.
    pub fn to_structured(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 + self.data.as_ref().map_or(0, |d| d.len() * 4 / 3));
        out.push(b'{');
        let field = |out: &mut Vec<u8>, name: &str, value: &[u8]| {
            if out.len() > 1 {
                out.push(b',');
            }
            out.extend_from_slice(json_string(name).as_bytes());
            out.push(b':');
            out.extend_from_slice(value);
        };
        field(
            &mut out,
            "specversion",
            json_string(&self.specversion).as_bytes(),
        );
        field(&mut out, "id", json_string(&self.id).as_bytes());
        field(&mut out, "source", json_string(&self.source).as_bytes());
        field(&mut out, "type", json_string(&self.ty).as_bytes());
        for (name, v) in [
            ("datacontenttype", &self.datacontenttype),
            ("dataschema", &self.dataschema),
            ("subject", &self.subject),
            ("time", &self.time),
        ] {
            if let Some(v) = v {
                field(&mut out, name, json_string(v).as_bytes());
            }
        }
        for (name, v) in &self.extensions {
            let value = match v {
                ExtensionValue::String(s) => json_string(s),
                ExtensionValue::Integer(i) => i.to_string(),
                ExtensionValue::Boolean(b) => b.to_string(),
            };
            field(&mut out, name, value.as_bytes());
        }
        if let Some(data) = &self.data {
            let json_type = self.datacontenttype.as_deref().is_none_or(is_json);
            if json_type && serde_json::from_slice::<serde::de::IgnoredAny>(data).is_ok() {
                field(&mut out, "data", data);
            } else if let (false, Ok(text)) = (json_type, std::str::from_utf8(data)) {
                field(&mut out, "data", json_string(text).as_bytes());
            } else {
                let b64 = base64::engine::general_purpose::STANDARD.encode(data);
                field(&mut out, "data_base64", json_string(&b64).as_bytes());
            }
        }
        out.push(b'}');
        out
    }

    /// Reads an event in the JSON event format (structured mode). `data` keeps the bytes of the
    /// JSON value as written; a `data` member without `datacontenttype` is `application/json`.
    pub fn from_structured(body: &[u8]) -> Result<CloudEvent, Invalid> {
        let first = body.iter().find(|b| !b.is_ascii_whitespace());
        if first != Some(&b'{') {
            return Err(invalid("a structured CloudEvent must be a JSON object"));
        }
        let members: BTreeMap<String, &RawValue> = serde_json::from_slice(body)
            .map_err(|e| invalid(format!("the structured CloudEvent is not valid JSON: {e}")))?;
        let (mut text, extensions) = structured_attributes(&members)?;
        let mut datacontenttype = text.remove("datacontenttype");
        let data = structured_data(&members, &mut datacontenttype)?;
        Ok(assemble(text, datacontenttype, extensions, data))
    }

    /// Reads a binary-mode event: `ce-` headers (percent-decoded), `content-type` as
    /// `datacontenttype`, and the body as the data.
    pub fn from_binary(headers: &HeaderMap, body: Bytes) -> Result<CloudEvent, Invalid> {
        let mut text: BTreeMap<&str, String> = BTreeMap::new();
        let mut extensions = Vec::new();
        for (name, value) in headers {
            let Some(attr) = name.as_str().strip_prefix("ce-") else {
                continue;
            };
            // The content type is the `content-type` header in binary mode.
            if attr == "datacontenttype" {
                continue;
            }
            let value = value
                .to_str()
                .map_err(|_| invalid(format!("header {name} is not valid text")))?;
            let decoded = percent_decode(value);
            check_attribute(attr, &Raw::Str(&decoded))?;
            if REQUIRED.contains(&attr) || OPTIONAL.contains(&attr) {
                text.insert(attr, decoded);
            } else {
                extensions.push((attr.to_string(), ExtensionValue::String(decoded)));
            }
        }
        for name in REQUIRED {
            if !text.contains_key(name) {
                return Err(invalid(format!("required attribute `{name}` is missing")));
            }
        }
        let datacontenttype = match headers.get(http::header::CONTENT_TYPE) {
            Some(ct) => {
                let ct = ct.to_str().map_err(|_| {
                    invalid(
                        "attribute `datacontenttype` (the content-type header) is not valid text",
                    )
                })?;
                check_attribute("datacontenttype", &Raw::Str(ct))?;
                Some(ct.to_string())
            }
            None => None,
        };
        extensions.sort();
        let data = (!body.is_empty()).then_some(body);
        Ok(assemble(text, datacontenttype, extensions, data))
    }

    /// Headers and body carrying the event in `mode`.
    pub fn to_headers(&self, mode: ContentMode) -> (HeaderMap, Bytes) {
        let mut headers = HeaderMap::new();
        match mode {
            ContentMode::Structured => {
                headers.insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static(STRUCTURED),
                );
                (headers, Bytes::from(self.to_structured()))
            }
            ContentMode::Binary => {
                insert_ce(&mut headers, "specversion", &self.specversion);
                insert_ce(&mut headers, "id", &self.id);
                insert_ce(&mut headers, "source", &self.source);
                insert_ce(&mut headers, "type", &self.ty);
                for (name, v) in [
                    ("dataschema", &self.dataschema),
                    ("subject", &self.subject),
                    ("time", &self.time),
                ] {
                    if let Some(v) = v {
                        insert_ce(&mut headers, name, v);
                    }
                }
                for (name, value) in &self.extensions {
                    insert_ce(&mut headers, name, &value.to_string());
                }
                if let Some(v) = self
                    .datacontenttype
                    .as_deref()
                    .and_then(|ct| HeaderValue::from_str(ct).ok())
                {
                    headers.insert(http::header::CONTENT_TYPE, v);
                }
                (headers, self.data.clone().unwrap_or_default())
            }
        }
    }

    /// An HTTP response carrying the event in `mode`.
    pub fn to_http(&self, mode: ContentMode) -> Response<Body> {
        let (headers, body) = self.to_headers(mode);
        #[allow(
            clippy::expect_used,
            reason = "a builder with only a status cannot fail"
        )]
        let mut resp = Response::builder()
            .status(StatusCode::OK)
            .body(full_body(body))
            .expect("static status is valid");
        *resp.headers_mut() = headers;
        resp
    }
}

/// An event from checked parts: the context attributes as text (the required ones present).
fn assemble(
    mut text: BTreeMap<&str, String>,
    datacontenttype: Option<String>,
    extensions: Extensions,
    data: Option<Bytes>,
) -> CloudEvent {
    let mut take = |name: &str| text.remove(name);
    CloudEvent {
        id: take("id").unwrap_or_default(),
        source: take("source").unwrap_or_default(),
        specversion: take("specversion").unwrap_or_default(),
        ty: take("type").unwrap_or_default(),
        datacontenttype,
        dataschema: take("dataschema"),
        subject: take("subject"),
        time: take("time"),
        extensions,
        data,
    }
}

/// Extension attributes by name.
type Extensions = Vec<(String, ExtensionValue)>;

/// The context attributes (as text) and extensions of a structured event, checked.
fn structured_attributes<'a>(
    members: &'a BTreeMap<String, &RawValue>,
) -> Result<(BTreeMap<&'a str, String>, Extensions), Invalid> {
    let mut attributes: BTreeMap<&str, serde_json::Value> = BTreeMap::new();
    for (name, raw) in members {
        if name == "data" || name == "data_base64" {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(raw.get())
            .map_err(|e| invalid(format!("attribute `{name}`: {e}")))?;
        attributes.insert(name, v);
    }
    for name in REQUIRED {
        if attributes.get(name).is_none_or(|v| v.is_null()) {
            return Err(invalid(format!("required attribute `{name}` is missing")));
        }
    }
    let mut text: BTreeMap<&str, String> = BTreeMap::new();
    let mut extensions = Vec::new();
    for (&name, v) in &attributes {
        if OPTIONAL.contains(&name) && v.is_null() {
            continue;
        }
        let raw = match v {
            serde_json::Value::String(s) => Raw::Str(s),
            serde_json::Value::Bool(b) => Raw::Bool(*b),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) if i32::try_from(i).is_ok() => Raw::Int(i),
                Some(_) => Raw::Other("an integer outside 32 bits"),
                None if n.is_u64() => Raw::Other("an integer outside 32 bits"),
                None => Raw::Other("a number with a fraction"),
            },
            serde_json::Value::Null => Raw::Other("null"),
            serde_json::Value::Array(_) => Raw::Other("an array"),
            serde_json::Value::Object(_) => Raw::Other("an object"),
        };
        check_attribute(name, &raw)?;
        if REQUIRED.contains(&name) || OPTIONAL.contains(&name) {
            if let Raw::Str(s) = raw {
                text.insert(name, s.to_string());
            }
        } else {
            extensions.push((
                name.to_string(),
                match raw {
                    Raw::Str(s) => ExtensionValue::String(s.to_string()),
                    Raw::Int(i) => ExtensionValue::Integer(i),
                    Raw::Bool(b) => ExtensionValue::Boolean(b),
                    Raw::Other(_) => unreachable!("refused by check_attribute"),
                },
            ));
        }
    }
    Ok((text, extensions))
}

/// The data of a structured event: `data` as the text of its JSON value (a JSON string when the
/// content type is not JSON), or `data_base64` decoded. `data` without `datacontenttype` makes
/// it `application/json`.
fn structured_data(
    members: &BTreeMap<String, &RawValue>,
    datacontenttype: &mut Option<String>,
) -> Result<Option<Bytes>, Invalid> {
    let data = match (members.get("data"), members.get("data_base64")) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "an event may carry `data` or `data_base64`, not both",
            ))
        }
        (Some(raw), None) if raw.get() == "null" => None,
        (Some(raw), None) => {
            let json_type = datacontenttype.as_deref().is_none_or(is_json);
            if datacontenttype.is_none() {
                *datacontenttype = Some(IMPLIED_JSON.to_string());
            }
            match serde_json::from_str::<serde_json::Value>(raw.get()) {
                Ok(serde_json::Value::String(s)) if !json_type => Some(Bytes::from(s)),
                _ => Some(Bytes::copy_from_slice(raw.get().as_bytes())),
            }
        }
        (None, Some(raw)) => {
            let s: Option<String> = serde_json::from_str(raw.get())
                .map_err(|_| invalid("attribute `data_base64` must be a string of base64"))?;
            match s {
                None => None,
                Some(s) => Some(Bytes::from(
                    base64::engine::general_purpose::STANDARD
                        .decode(s.trim())
                        .map_err(|e| {
                            invalid(format!("attribute `data_base64` is not base64: {e}"))
                        })?,
                )),
            }
        }
        (None, None) => None,
    };
    Ok(data)
}

/// Reads an event from a message's headers and body: structured mode when the content type
/// says so (or, with no content type and no `ce-` headers, when the body is a JSON object, as the
/// NATS binding and SDKs send it), binary mode when there are `ce-` headers.
pub fn from_headers(
    headers: &HeaderMap,
    body: Bytes,
) -> Result<(CloudEvent, ContentMode), Invalid> {
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or("?").to_ascii_lowercase());
    let has_ce = headers.keys().any(|k| k.as_str().starts_with("ce-"));
    match content_type.as_deref() {
        Some(ct) if ct.starts_with(STRUCTURED) => {
            Ok((CloudEvent::from_structured(&body)?, ContentMode::Structured))
        }
        Some(ct) if ct.starts_with("application/cloudevents-batch+json") => Err(invalid(
            "batched CloudEvents are not supported: send one event per message",
        )),
        _ if has_ce => Ok((CloudEvent::from_binary(headers, body)?, ContentMode::Binary)),
        None if body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') => {
            Ok((CloudEvent::from_structured(&body)?, ContentMode::Structured))
        }
        _ => Err(invalid(
            "not a CloudEvent: send ce-id, ce-source, ce-type and ce-specversion headers (binary \
             mode) or a JSON event with Content-Type: application/cloudevents+json (structured mode)",
        )),
    }
}

/// A string as a JSON string literal.
#[allow(
    clippy::expect_used,
    reason = "serde_json writes any string: escaping cannot fail and there is no map key to reject"
)]
fn json_string(s: &str) -> String {
    serde_json::to_string(s).expect("a string always serialises")
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

    fn binary_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("ce-id", HeaderValue::from_static("1"));
        h.insert("ce-source", HeaderValue::from_static("/src"));
        h.insert("ce-type", HeaderValue::from_static("t"));
        h.insert("ce-specversion", HeaderValue::from_static("1.0"));
        h
    }

    #[test]
    fn binary_mode_headers() {
        let mut h = binary_headers();
        h.insert("ce-subject", HeaderValue::from_static("caf%C3%A9"));
        h.insert("content-type", HeaderValue::from_static("application/json"));
        let (event, mode) = from_headers(&h, Bytes::from_static(b"{\"a\":1}")).unwrap();
        assert_eq!(mode, ContentMode::Binary);
        assert_eq!(event.subject.as_deref(), Some("café"));
        assert_eq!(event.data.as_deref(), Some(&b"{\"a\":1}"[..]));
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
    fn json_data_keeps_its_bytes_in_both_modes() {
        let data = "{\"b\":1,  \"a\":[2, 3]}";
        let mut h = binary_headers();
        h.insert("content-type", HeaderValue::from_static("application/json"));
        let (event, _) = from_headers(&h, Bytes::from(data)).unwrap();
        // Binary out: the body is the bytes that came in.
        let (_, body) = event.to_headers(ContentMode::Binary);
        assert_eq!(body, data.as_bytes());
        // Structured out, then in again: the same bytes.
        let structured = event.to_structured();
        let text = String::from_utf8(structured.clone()).unwrap();
        assert!(text.contains(&format!("\"data\":{data}")), "{text}");
        let back = CloudEvent::from_structured(&structured).unwrap();
        assert_eq!(back, event);
    }

    #[test]
    fn structured_data_without_a_content_type_is_json() {
        let doc =
            br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":{"z":1,"a":2}}"#;
        let event = CloudEvent::from_structured(doc).unwrap();
        assert_eq!(event.datacontenttype.as_deref(), Some("application/json"));
        assert_eq!(event.data.as_deref(), Some(&br#"{"z":1,"a":2}"#[..]));
        let out = String::from_utf8(event.to_structured()).unwrap();
        assert!(out.contains(r#""data":{"z":1,"a":2}"#), "{out}");
        assert!(!out.contains("data_base64"), "{out}");
    }

    #[test]
    fn text_and_binary_data_in_structured_mode() {
        let mut event = CloudEvent::new("1", "/s", "t").unwrap();
        event.datacontenttype = Some("text/plain".into());
        event.data = Some(Bytes::from_static(b"hi \"there\""));
        let out = event.to_structured();
        assert!(String::from_utf8_lossy(&out).contains(r#""data":"hi \"there\"""#));
        assert_eq!(CloudEvent::from_structured(&out).unwrap(), event);

        event.datacontenttype = Some("application/octet-stream".into());
        event.data = Some(Bytes::from_static(&[0, 159, 146, 150]));
        let out = event.to_structured();
        assert!(String::from_utf8_lossy(&out).contains("data_base64"));
        assert_eq!(CloudEvent::from_structured(&out).unwrap(), event);

        // JSON content type but bytes that are not JSON: kept exactly, as base64.
        event.datacontenttype = Some("application/json".into());
        event.data = Some(Bytes::from_static(b"{not json"));
        let out = event.to_structured();
        assert_eq!(CloudEvent::from_structured(&out).unwrap(), event);
    }

    #[test]
    fn a_json_body_without_headers_is_a_structured_event() {
        let body =
            Bytes::from_static(br#"{"specversion":"1.0","id":"1","source":"/s","type":"t"}"#);
        let (event, mode) = from_headers(&HeaderMap::new(), body).unwrap();
        assert_eq!(mode, ContentMode::Structured);
        assert_eq!(event.id, "1");
        // Still refused, with the reason, when it is not an event.
        let err =
            from_headers(&HeaderMap::new(), Bytes::from_static(br#"{"id":"1"}"#)).unwrap_err();
        assert!(err.0.contains("required attribute"), "{err}");
        let err = from_headers(&HeaderMap::new(), Bytes::from_static(b"hello")).unwrap_err();
        assert!(err.0.contains("not a CloudEvent"), "{err}");
    }

    #[test]
    fn extensions_keep_their_types_in_structured_mode() {
        let doc =
            br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","n":10,"b":true,"s":"x"}"#;
        let event = CloudEvent::from_structured(doc).unwrap();
        assert_eq!(event.extension("n"), Some(&ExtensionValue::Integer(10)));
        assert_eq!(event.extension("b"), Some(&ExtensionValue::Boolean(true)));
        assert_eq!(
            CloudEvent::from_structured(&event.to_structured()).unwrap(),
            event
        );
        let (h, _) = event.to_headers(ContentMode::Binary);
        assert_eq!(h["ce-n"], "10");
    }

    #[test]
    fn percent_coding_round_trips() {
        for s in ["plain", "with space", "100%", "\"quoted\"", "café ☕"] {
            assert_eq!(percent_decode(&percent_encode(s)), s);
        }
    }
}
