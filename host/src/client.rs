//! A thin client of the admin API, used by the CLI (`ferry deploy`, `ferry list`, `ferry rm`).

use std::time::Duration;

use anyhow::{bail, Context as _};
use reqwest::blocking::{multipart, Client, RequestBuilder, Response};
use serde_json::Value;

/// A connection to one host's admin API, with its token.
#[derive(Clone)]
pub struct AdminClient {
    base: String,
    token: Option<crate::auth::Token>,
    /// Where the token came from, or where the CLI looked for one, for the message after a 401.
    looked: String,
    http: Client,
}

impl AdminClient {
    /// A client of the admin API at `base` (like `http://127.0.0.1:8081`), sending `token` as a
    /// bearer token when given; `looked` says where the token came from (or where the CLI looked
    /// for one), for the message when the host refuses it.
    pub fn new(
        base: &str,
        token: Option<crate::auth::Token>,
        looked: String,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            base: base.trim_end_matches('/').to_string(),
            token,
            looked,
            http: Client::builder()
                .timeout(Duration::from_secs(600))
                .build()
                .context("failed to build an HTTP client")?,
        })
    }

    fn send(&self, req: RequestBuilder) -> anyhow::Result<Response> {
        let req = match &self.token {
            Some(t) => req.bearer_auth(&t.value),
            None => req,
        };
        let resp = req.send().map_err(|e| {
            anyhow::anyhow!(
                "cannot reach the Ferry admin API at {}: {}. Is `ferry serve` running? Start it, \
                 or point --admin (FERRY_ADMIN) at a running host",
                self.base,
                self.why_unreachable(&e)
            )
        })?;
        if resp.status() == reqwest::StatusCode::UNAUTHORIZED {
            match &self.token {
                Some(_) => bail!(
                    "the Ferry admin API at {} refused {} (401 unauthorized): give the token of \
                     that host with --token, FERRY_TOKEN or --token-file, or its --data-dir",
                    self.base,
                    self.looked
                ),
                None => bail!(
                    "the Ferry admin API at {} requires a token (401 unauthorized) and none was \
                     found: {}",
                    self.base,
                    self.looked
                ),
            }
        }
        Ok(resp)
    }

    /// Why a request did not get an answer, in a person's words. reqwest's own error for a
    /// refused connection depends on timing ("receiver is gone" when the body was still being
    /// sent), so a refused or unresolvable address is told by trying to connect again.
    fn why_unreachable(&self, error: &reqwest::Error) -> String {
        use std::net::{TcpStream, ToSocketAddrs};
        if error.is_timeout() {
            return "the request timed out".into();
        }
        let Ok(url) = url::Url::parse(&self.base) else {
            return format!("{:?} is not a URL like http://127.0.0.1:8081", self.base);
        };
        let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
            return format!("{:?} names no host", self.base);
        };
        let addrs = match (host, port).to_socket_addrs() {
            Ok(a) => a.collect::<Vec<_>>(),
            Err(e) => return format!("cannot resolve {host}: {e}"),
        };
        for addr in &addrs {
            match TcpStream::connect_timeout(addr, Duration::from_secs(2)) {
                Ok(_) => {
                    let mut cause: &dyn std::error::Error = error;
                    while let Some(next) = cause.source() {
                        cause = next;
                    }
                    return format!("the connection failed ({cause})");
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    return format!("nothing is listening on {addr} (connection refused)")
                }
                Err(_) => continue,
            }
        }
        format!("no answer from {host}:{port}")
    }

    /// Streams a backup of the host's store into `out`.
    pub fn backup(&self, out: &mut std::fs::File) -> anyhow::Result<()> {
        let mut resp = self.send(self.http.get(format!("{}/v1/store/backup", self.base)))?;
        if !resp.status().is_success() {
            let status = resp.status();
            return self
                .json(resp)
                .map(drop)
                .and_then(|()| bail!("the host refused the backup ({status})"));
        }
        resp.copy_to(out).context("the backup stream was cut off")?;
        Ok(())
    }

    fn json(&self, resp: Response) -> anyhow::Result<Value> {
        let status = resp.status();
        let text = resp.text().unwrap_or_default();
        if !status.is_success() {
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v.get("error").and_then(Value::as_str).map(String::from))
                .unwrap_or(text);
            bail!("{message} ({status})");
        }
        if text.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).context("the admin API answered with invalid JSON")
    }

    fn function_url(&self, name: &str) -> String {
        format!("{}/v1/functions/{name}", self.base)
    }

    /// Deploys `wasm` with the manifest in the file `manifest` (its `name` names the function).
    pub fn deploy_manifest_file(
        &self,
        manifest: &std::path::Path,
        wasm: Vec<u8>,
    ) -> anyhow::Result<Value> {
        let text = std::fs::read_to_string(manifest)
            .with_context(|| format!("failed to read {}", manifest.display()))?;
        let parsed = crate::manifest::Manifest::parse(&text)
            .with_context(|| format!("in {}", manifest.display()))?;
        self.deploy_with_manifest(&parsed.name, wasm, text)
    }

    /// Before an upload, one small request: a host that refuses the token answers 401 at once
    /// and closes the connection, which the client, still sending the component, sees only as
    /// a broken pipe.
    fn check_token_before_upload(&self, name: &str) -> anyhow::Result<()> {
        self.send(self.http.get(self.function_url(name)))?;
        Ok(())
    }

    /// Deploys raw component bytes with default settings.
    pub fn deploy_raw(&self, name: &str, wasm: Vec<u8>) -> anyhow::Result<Value> {
        self.check_token_before_upload(name)?;
        let req = self
            .http
            .put(self.function_url(name))
            .header("content-type", "application/wasm")
            .body(wasm);
        let resp = self.send(req)?;
        self.json(resp)
    }

    /// Deploys a component with a `ferry.toml` manifest.
    pub fn deploy_with_manifest(
        &self,
        name: &str,
        wasm: Vec<u8>,
        manifest: String,
    ) -> anyhow::Result<Value> {
        self.check_token_before_upload(name)?;
        let form = multipart::Form::new()
            .part(
                "component",
                multipart::Part::bytes(wasm).mime_str("application/wasm")?,
            )
            .part(
                "manifest",
                multipart::Part::text(manifest).mime_str("application/toml")?,
            );
        let resp = self.send(self.http.put(self.function_url(name)).multipart(form))?;
        self.json(resp)
    }

    /// The deployed functions (`GET /v1/functions`).
    pub fn list(&self) -> anyhow::Result<Value> {
        let resp = self.send(self.http.get(format!("{}/v1/functions", self.base)))?;
        self.json(resp)
    }

    /// One function (`GET /v1/functions/{name}`).
    pub fn get(&self, name: &str) -> anyhow::Result<Value> {
        let resp = self.send(self.http.get(self.function_url(name)))?;
        self.json(resp)
    }

    /// A function's logs (`GET /v1/functions/{name}/logs` with `query`).
    pub fn logs(&self, name: &str, query: &[(&str, String)]) -> anyhow::Result<Value> {
        let url = format!("{}/logs", self.function_url(name));
        let resp = self.send(self.http.get(url).query(query))?;
        self.json(resp)
    }

    /// The host's and the functions' status (`GET /v1/status`).
    pub fn status(&self) -> anyhow::Result<Value> {
        let resp = self.send(self.http.get(format!("{}/v1/status", self.base)))?;
        self.json(resp)
    }

    /// The dead letters (`GET /v1/deadletters`).
    pub fn dead_letters(&self) -> anyhow::Result<Value> {
        let resp = self.send(self.http.get(format!("{}/v1/deadletters", self.base)))?;
        self.json(resp)
    }

    /// One dead letter with its stored request or event (`GET /v1/deadletters/{id}`).
    pub fn dead_letter(&self, id: &str) -> anyhow::Result<Value> {
        let resp = self.send(self.http.get(format!("{}/v1/deadletters/{id}", self.base)))?;
        self.json(resp)
    }

    /// Submits a dead letter again; the answer is the new invocation, or the invocation whose
    /// callback is scheduled again.
    pub fn replay(&self, id: &str) -> anyhow::Result<Value> {
        let resp = self.send(
            self.http
                .post(format!("{}/v1/deadletters/{id}/replay", self.base)),
        )?;
        self.json(resp)
    }

    /// Removes one dead letter, or all of them; the answer says how many (`{"purged": n}`).
    pub fn purge(&self, id: Option<&str>) -> anyhow::Result<Value> {
        let url = match id {
            Some(id) => format!("{}/v1/deadletters/{id}", self.base),
            None => format!("{}/v1/deadletters", self.base),
        };
        let resp = self.send(self.http.delete(url))?;
        self.json(resp)
    }

    /// Serves an earlier version again (`POST /v1/functions/{name}/rollback[?to=N]`).
    pub fn rollback(&self, name: &str, to: Option<u64>) -> anyhow::Result<Value> {
        let mut url = format!("{}/rollback", self.function_url(name));
        if let Some(v) = to {
            url.push_str(&format!("?to={v}"));
        }
        let resp = self.send(self.http.post(url))?;
        self.json(resp)
    }

    /// Removes a function (`DELETE /v1/functions/{name}`).
    pub fn remove(&self, name: &str) -> anyhow::Result<()> {
        let resp = self.send(self.http.delete(self.function_url(name)))?;
        self.json(resp).map(drop)
    }
}
