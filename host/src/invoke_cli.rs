//! `ferry invoke`: calls a deployed function through the host's public listener the way a
//! client would — an HTTP request for an HTTP function, a CloudEvent (binary mode) for an event
//! function — synchronously or asynchronously (`--async`, `--wait`, `--callback`).

use std::io::Read as _;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::{json, Value};

use crate::client::AdminClient;

/// What `ferry invoke` takes.
#[derive(Debug, Clone, clap::Args)]
pub struct InvokeArgs {
    /// The function.
    pub name: String,
    /// Path below the function's URL, with a query if any (HTTP functions), like `/orders?x=1`.
    #[arg(default_value = "")]
    pub path: String,
    /// The body: text, `@FILE` for a file's bytes, or `-` for standard input.
    #[arg(long, short = 'd')]
    pub data: Option<String>,
    /// A request header `NAME:VALUE` (repeatable).
    #[arg(long = "header", short = 'H')]
    pub headers: Vec<String>,
    /// The HTTP method (default: POST with --data, else GET; event functions always POST).
    #[arg(long, short = 'X')]
    pub method: Option<String>,
    /// The event's `type` (event functions).
    #[arg(long, default_value = "dev.ferry.invoke")]
    pub event_type: String,
    /// The event's `source` (event functions).
    #[arg(long, default_value = "/ferry/cli")]
    pub event_source: String,
    /// Invoke asynchronously (`Prefer: respond-async`): prints the accepted invocation.
    #[arg(long = "async")]
    pub asynchronous: bool,
    /// With --async: wait for the invocation to finish and print its status document.
    #[arg(long, requires = "asynchronous")]
    pub wait: bool,
    /// With --async: where the result is POSTed, signed (`X-Callback-Url`).
    #[arg(long, requires = "asynchronous")]
    pub callback: Option<String>,
    /// The longest --wait waits.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// What `ferry invoke` prints, and whether it succeeded.
pub struct Invoked {
    /// The lines for standard output.
    pub output: String,
    /// False when the function failed (an error status, an error event, a failed invocation).
    pub ok: bool,
}

fn body_of(data: Option<&str>) -> anyhow::Result<Vec<u8>> {
    Ok(match data {
        None => Vec::new(),
        Some("-") => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .context("cannot read the data from standard input")?;
            buf
        }
        Some(s) if s.starts_with('@') => std::fs::read(&s[1..])
            .with_context(|| format!("cannot read the data file {}", &s[1..]))?,
        Some(s) => s.as_bytes().to_vec(),
    })
}

fn header_pairs(headers: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    headers
        .iter()
        .map(|h| {
            let (k, v) = h
                .split_once(':')
                .with_context(|| format!("--header {h:?} is not NAME:VALUE"))?;
            let k = k.trim();
            if k.is_empty() {
                bail!("--header {h:?} has no name");
            }
            Ok((k.to_string(), v.trim().to_string()))
        })
        .collect()
}

fn text_of(bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(t) => json!(t),
        Err(_) => {
            json!({ "base64": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, bytes) })
        }
    }
}

/// Runs `ferry invoke`.
pub fn run(admin: &AdminClient, args: &InvokeArgs, json_out: bool) -> anyhow::Result<Invoked> {
    let f = admin.get(&args.name)?;
    let url = f["url"]
        .as_str()
        .context("the admin API did not give the function's URL")?;
    let event = f["world"] == "event";
    let body = body_of(args.data.as_deref())?;
    let headers = header_pairs(&args.headers)?;
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(15 * 60))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .context("failed to build an HTTP client")?;
    let mut req = if event {
        if !args.path.is_empty() {
            bail!("an event function takes no path: give the event with --data, --event-type and --event-source");
        }
        let content_type = if serde_json::from_slice::<Value>(&body).is_ok() {
            "application/json"
        } else {
            "text/plain"
        };
        http.post(url)
            .header("ce-specversion", "1.0")
            .header("ce-id", crate::call::new_id())
            .header("ce-source", &args.event_source)
            .header("ce-type", &args.event_type)
            .header("content-type", content_type)
    } else {
        let path = if args.path.is_empty() || args.path.starts_with('/') {
            args.path.clone()
        } else {
            format!("/{}", args.path)
        };
        let method = match &args.method {
            Some(m) => reqwest::Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                .with_context(|| format!("--method {m:?} is not an HTTP method"))?,
            None if args.data.is_some() => reqwest::Method::POST,
            None => reqwest::Method::GET,
        };
        http.request(method, format!("{url}{path}"))
    };
    for (k, v) in &headers {
        req = req.header(k.as_str(), v.as_str());
    }
    if args.asynchronous {
        req = req.header("prefer", "respond-async");
        if let Some(cb) = &args.callback {
            req = req.header("x-callback-url", cb.as_str());
        }
    }
    if !body.is_empty() || args.data.is_some() {
        req = req.body(body);
    }
    let resp = req
        .send()
        .with_context(|| format!("cannot reach the function at {url}"))?;
    let status = resp.status();
    let resp_headers = resp.headers().clone();
    let bytes = resp.bytes().context("reading the answer failed")?;
    // 202, or 200 for a repeated idempotency key.
    if args.asynchronous
        && matches!(
            status,
            reqwest::StatusCode::ACCEPTED | reqwest::StatusCode::OK
        )
    {
        let accepted: Value = serde_json::from_slice(&bytes).context("the 202 carried no JSON")?;
        if !args.wait {
            let text = if json_out {
                accepted.to_string()
            } else {
                format!(
                    "accepted {} ({}): {}",
                    accepted["id"].as_str().unwrap_or("?"),
                    accepted["mode"].as_str().unwrap_or("?"),
                    accepted["status_url"].as_str().unwrap_or("?")
                )
            };
            return Ok(Invoked {
                output: text,
                ok: true,
            });
        }
        return wait_for(&http, &accepted, args.timeout, json_out);
    }
    let ok = status.is_success();
    if event {
        // The result event, as the host answered it in binary mode, shown as structured JSON.
        if status == reqwest::StatusCode::NO_CONTENT {
            let output = if json_out {
                json!({ "status": 204, "event": null }).to_string()
            } else {
                "no result event (204)".to_string()
            };
            return Ok(Invoked { output, ok });
        }
        if ok {
            let mut out = serde_json::Map::new();
            for (k, v) in &resp_headers {
                if let (Some(attr), Ok(v)) = (k.as_str().strip_prefix("ce-"), v.to_str()) {
                    out.insert(attr.to_string(), json!(v));
                }
            }
            if let Some(ct) = resp_headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
            {
                out.insert("datacontenttype".into(), json!(ct));
            }
            out.insert("data".into(), text_of(&bytes));
            let event = Value::Object(out);
            let output = if json_out {
                json!({ "status": status.as_u16(), "event": event }).to_string()
            } else {
                serde_json::to_string_pretty(&event)?
            };
            return Ok(Invoked { output, ok });
        }
    }
    let output = if json_out {
        let headers: serde_json::Map<String, Value> = resp_headers
            .iter()
            .filter_map(|(k, v)| Some((k.to_string(), json!(v.to_str().ok()?))))
            .collect();
        json!({ "status": status.as_u16(), "headers": headers, "body": text_of(&bytes) })
            .to_string()
    } else {
        let text = String::from_utf8_lossy(&bytes).into_owned();
        if ok {
            text.strip_suffix('\n').unwrap_or(&text).to_string()
        } else {
            format!("{status}: {}", text.trim_end())
        }
    };
    Ok(Invoked { output, ok })
}

/// Long-polls an accepted invocation's status URL until it ends (or `timeout` passes), saying on
/// stderr that it waits.
fn wait_for(
    http: &reqwest::blocking::Client,
    accepted: &Value,
    timeout: Duration,
    json_out: bool,
) -> anyhow::Result<Invoked> {
    let status_url = accepted["status_url"]
        .as_str()
        .context("the 202 named no status URL")?;
    let id = accepted["id"].as_str().unwrap_or("?");
    let deadline = Instant::now() + timeout;
    eprintln!("waiting for {id} …");
    loop {
        let doc: Value = http
            .get(format!("{status_url}?wait=30s"))
            .send()
            .and_then(reqwest::blocking::Response::json)
            .with_context(|| format!("cannot read {status_url}"))?;
        let status = doc["status"].as_str().unwrap_or("");
        if matches!(status, "succeeded" | "failed" | "dead_lettered") {
            let ok = status == "succeeded";
            let output = if json_out {
                doc.to_string()
            } else {
                let mut text = format!(
                    "{id} {status} after {} attempt(s)",
                    doc["attempts"].as_u64().unwrap_or(0)
                );
                if let Some(e) = doc["error"].as_str() {
                    text.push_str(&format!(": {e}"));
                }
                if let Some(body) = doc["result"]["body"].as_str() {
                    text.push('\n');
                    text.push_str(body.strip_suffix('\n').unwrap_or(body));
                } else if !doc["result"].is_null() {
                    text.push('\n');
                    text.push_str(&serde_json::to_string_pretty(&doc["result"])?);
                }
                text
            };
            return Ok(Invoked { output, ok });
        }
        if Instant::now() >= deadline {
            bail!(
                "{id} is still {status} after {}; its status: {status_url}",
                humantime::format_duration(timeout)
            );
        }
        eprintln!("  {id}: {status}, attempt {}", doc["attempts"]);
    }
}
