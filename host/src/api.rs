//! The admin API on its own listener: deploy (raw `application/wasm` or multipart with a
//! `ferry.toml` manifest), list, get and delete functions, `/healthz` and `/readyz`. Unless the
//! host runs with `--insecure-no-admin-auth`, every route but `/healthz` and `/readyz` requires
//! `Authorization: Bearer <token>`; `/healthz` shows its details only to a caller with the token.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use serde::Serialize;
use serde_json::json;

use crate::delivery::Delivery;
use crate::delivery::InvocationView;
use crate::deploy::{DeployError, Deployer};
use crate::engine::Runtime;
use crate::manifest::{validate_name, Manifest};
use crate::model::FunctionRecord;

/// What the admin API's handlers share.
pub struct AdminState {
    /// Deploys and removes functions; holds the registry that lists them.
    pub deployer: Arc<Deployer>,
    /// The engine, for the compilation count in `/healthz`.
    pub runtime: Arc<Runtime>,
    /// Base URL of the public listener, for the `url` of each function.
    pub public_url: String,
    /// The bearer token every route but `/healthz` and `/readyz` requires; `None` (only with
    /// `--insecure-no-admin-auth`) leaves the API open.
    pub token: Option<String>,
    /// Set once shutdown begins: `/readyz` then answers 503.
    pub stopping: ferry_triggers::Shutdown,
    /// The largest component an upload may carry, in bytes (`ferry serve --max-upload`).
    pub max_upload: u64,
    /// When the host started, for the uptime in `/healthz`.
    pub started: Instant,
    /// The delivery engine, for dead letters and the callback secret.
    pub delivery: Arc<Delivery>,
    /// What each trigger last reported.
    pub reports: Arc<crate::gateway::TriggerReports>,
    /// The NATS connection, when the host runs with `--nats`.
    pub nats: Option<async_nats::Client>,
    /// The store's health, for `/healthz`.
    pub store_health: Arc<crate::store::Health>,
    /// The store, for backups.
    pub store: Arc<crate::store::SledStore>,
    /// This host's cluster membership, in cluster mode.
    pub members: Option<Arc<crate::store::members::Members>>,
}

/// Collects what a blocking writer writes into chunks for a streamed response body.
struct ChunkWriter {
    tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    buf: Vec<u8>,
}

impl ChunkWriter {
    const CHUNK: usize = 256 * 1024;

    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::take(&mut self.buf));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::other("the client went away"))
    }
}

impl std::io::Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= Self::CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

/// A consistent copy of every record of the store, streamed while the host serves (see
/// `crate::store::backup`). A failure midway ends the stream without its end record, which the
/// reader refuses.
async fn backup(State(state): State<Arc<AdminState>>) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let store = state.store.clone();
    // Deploys and removals wait while the backup reads the store.
    let hold = state.deployer.hold().await;
    tokio::task::spawn_blocking(move || {
        let _hold = hold;
        let mut out = ChunkWriter {
            tx,
            buf: Vec::new(),
        };
        match store.write_backup(&mut out) {
            Ok(counts) => tracing::info!(?counts, "backup written"),
            Err(e) => tracing::error!(error = %format!("{e:#}"), "backup failed"),
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    (
        [(header::CONTENT_TYPE, "application/octet-stream")],
        Body::from_stream(stream),
    )
        .into_response()
}

/// An error answer: `{"error": "..."}` with a status code.
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<DeployError> for ApiError {
    fn from(e: DeployError) -> Self {
        if let DeployError::Internal(inner) = &e {
            tracing::error!(error = %format!("{inner:#}"), "deploy failed");
            if crate::store::is_disk_full(inner) {
                return ApiError(
                    e.status(),
                    format!("not deployed: the disk of the store is full ({inner:#}); the function is unchanged, free some space and deploy again"),
                );
            }
        }
        ApiError(e.status(), e.to_string())
    }
}

/// A function as the API shows it.
#[derive(Serialize)]
pub struct FunctionView {
    /// The stored record, its fields inline; a callback secret shows only as `"(set)"`.
    #[serde(flatten)]
    pub record: FunctionRecord,
    /// The routes of its `[[trigger.http]]` sections (it is also served at `/{name}` and below).
    pub routes: Vec<String>,
    /// Where the function is served on the public listener.
    pub url: String,
    /// Each `[[trigger.webhook]]`: the URL to give the provider, the last delivery accepted and
    /// the last refusal with its reason (since the host started).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub webhooks: Vec<serde_json::Value>,
    /// The state of each `[[trigger.poll]]`, in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub polls: Vec<ferry_triggers::poll::PollState>,
    /// Which code serves it: baseline code (compiled in seconds) while the optimised code is
    /// made behind it, then optimised code.
    pub code: crate::registry::Code,
}

/// The admin API's routes, with the token check on every `/v1` route.
pub fn router(state: Arc<AdminState>) -> Router {
    let v1 = Router::new()
        .route("/v1/functions", get(list))
        .route("/v1/functions/{name}", get(show).put(deploy).delete(remove))
        .route("/v1/functions/{name}/logs", get(logs))
        .route(
            "/v1/functions/{name}/rollback",
            axum::routing::post(rollback),
        )
        .route("/v1/status", get(status))
        .route("/v1/cluster", get(cluster))
        .route("/v1/deadletters", get(dead_letters).delete(purge_all))
        .route("/v1/deadletters/{id}", get(dead_letter).delete(purge_one))
        .route("/v1/deadletters/{id}/replay", axum::routing::post(replay))
        .route("/v1/callback-secret", get(callback_secret))
        .route("/v1/store/backup", get(backup))
        .route("/metrics", get(metrics))
        .layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(v1)
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "no such admin endpoint".into()) })
        // Uploads are limited by --max-upload in `deploy`, with a message that says so.
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(state)
}

async fn require_token(
    State(state): State<Arc<AdminState>>,
    headers: HeaderMap,
    req: Request,
    next: Next,
) -> Response {
    if !authorized(&state, &headers) {
        // No detail: a caller without the token learns nothing about why.
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            Json(json!({ "error": "unauthorized" })),
        )
            .into_response();
    }
    next.run(req).await
}

/// Whether the request carries the admin token (always, when authentication is off).
fn authorized(state: &AdminState, headers: &HeaderMap) -> bool {
    let Some(token) = &state.token else {
        return true;
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    constant_time_eq(given.trim().as_bytes(), token.as_bytes())
}

/// Compares the SHA-256 digests of both in constant time, so neither the position of the first
/// difference nor the token's length shows in the timing.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use sha2::Digest as _;
    use subtle::ConstantTimeEq as _;
    sha2::Sha256::digest(a)
        .ct_eq(&sha2::Sha256::digest(b))
        .into()
}

/// Liveness: `ok`, or `degraded` with the store's errors. Without the admin token it says only
/// that; with it, also the functions, compilations, uptime, NATS and trigger reports.
async fn healthz(
    State(state): State<Arc<AdminState>>,
    headers: HeaderMap,
) -> Json<serde_json::Value> {
    let errors = state.store_health.errors();
    let status = if errors.is_empty() { "ok" } else { "degraded" };
    if !authorized(&state, &headers) {
        return Json(json!({ "status": status }));
    }
    let mut health = json!({
        "status": status,
        "functions": state.deployer.registry().len(),
        "compilations": state.runtime.compilations(),
        "uptime_seconds": state.started.elapsed().as_secs(),
        "memory": {
            "instances_bytes": state.runtime.memory().used(),
            "cap_bytes": state.runtime.memory().cap(),
        },
    });
    if let Some(client) = &state.nats {
        health["nats"] = json!({ "state": ferry_triggers::nats::state(client) });
    }
    health["triggers"] = json!(state.reports.all());
    health["store"] = if errors.is_empty() {
        json!({ "status": "ok" })
    } else {
        json!({ "status": "degraded", "errors": errors })
    };
    Json(health)
}

/// `GET /metrics`: Prometheus / OpenMetrics text (with the admin token, like every admin route).
async fn metrics(State(state): State<Arc<AdminState>>) -> Response {
    // Counting due work reads the store: off the async threads.
    let delivery = state.delivery.clone();
    let _ = tokio::task::spawn_blocking(move || delivery.note_queues()).await;
    if let Some(client) = &state.nats {
        state
            .runtime
            .metrics()
            .set_nats_connected(ferry_triggers::nats::state(client) == "connected");
    }
    let text = state.runtime.metrics().encode(state.runtime.memory());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// Readiness: 200 once the store is open, the journal replayed and the triggers started (the
/// admin listener serves only after all three), 503 while the store is degraded or the host is
/// shutting down.
async fn readyz(State(state): State<Arc<AdminState>>) -> Response {
    let mut not_ready = Vec::new();
    if !state.store_health.errors().is_empty() {
        not_ready.push("the store is degraded (see /healthz with the admin token)");
    }
    if state.stopping.is_requested() {
        not_ready.push("the host is shutting down");
    }
    if not_ready.is_empty() {
        Json(json!({ "ready": true })).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "ready": false, "reasons": not_ready })),
        )
            .into_response()
    }
}

fn internal(e: anyhow::Error) -> ApiError {
    tracing::error!(error = %format!("{e:#}"), "admin request failed");
    ApiError(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("internal error: {e:#}"),
    )
}

async fn dead_letters(
    State(state): State<Arc<AdminState>>,
) -> Result<Json<Vec<InvocationView>>, ApiError> {
    let list = state.delivery.dead_letters().map_err(internal)?;
    Ok(Json(list.iter().map(|i| state.delivery.view(i)).collect()))
}

fn no_dead_letter(id: &str) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, format!("no dead letter {id:?}"))
}

async fn dead_letter(
    State(state): State<Arc<AdminState>>,
    Path(id): Path<String>,
) -> Result<Json<InvocationView>, ApiError> {
    let list = state.delivery.dead_letters().map_err(internal)?;
    let inv = list
        .iter()
        .find(|i| i.id == id)
        .ok_or_else(|| no_dead_letter(&id))?;
    let mut v = state.delivery.view(inv);
    v.payload = state
        .delivery
        .payload(&id)
        .map_err(internal)?
        .map(|p| p.to_json());
    Ok(Json(v))
}

async fn replay(
    State(state): State<Arc<AdminState>>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<InvocationView>), ApiError> {
    use crate::delivery::SubmitFailure;
    match state.delivery.replay(&id).await {
        Ok(Some(inv)) => Ok((StatusCode::ACCEPTED, Json(state.delivery.view(&inv)))),
        Ok(None) => Err(no_dead_letter(&id)),
        Err(e @ SubmitFailure::BadRequest(_)) => Err(ApiError(StatusCode::CONFLICT, e.to_string())),
        Err(e @ SubmitFailure::StorageFull(_)) => {
            Err(ApiError(StatusCode::INSUFFICIENT_STORAGE, e.to_string()))
        }
        Err(e) => Err(ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string())),
    }
}

async fn purge_all(
    State(state): State<Arc<AdminState>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let n = state.delivery.purge(None).map_err(internal)?;
    Ok(Json(json!({ "purged": n })))
}

async fn purge_one(
    State(state): State<Arc<AdminState>>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    match state.delivery.purge(Some(&id)).map_err(internal)? {
        0 => Err(no_dead_letter(&id)),
        n => Ok(Json(json!({ "purged": n }))),
    }
}

async fn callback_secret(State(state): State<Arc<AdminState>>) -> Json<serde_json::Value> {
    Json(json!({ "secret": state.delivery.callback_secret() }))
}

fn view(
    state: &AdminState,
    mut record: FunctionRecord,
    code: crate::registry::Code,
) -> FunctionView {
    if record.delivery.callback_secret.is_some() {
        // Never echo a secret; say only that one is set.
        record.delivery.callback_secret = Some("(set)".into());
    }
    for (key, value) in &mut record.config {
        if record.secrets.contains(key) {
            *value = "(secret)".into();
        }
    }
    let url = format!("{}/{}", state.public_url, record.name);
    let sections = record
        .triggers
        .get("http")
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let routes = ferry_triggers::http::routes(&record.name, sections)
        .into_iter()
        .skip(1)
        .collect();
    let mut webhooks = Vec::new();
    let activity = state.reports.all().remove("webhook").unwrap_or_default();
    for hook in record.triggers.get_mut("webhook").into_iter().flatten() {
        if let Some(path) = hook.get("path").and_then(|p| p.as_str()) {
            let mut entry = json!({ "url": format!("{}{path}", state.public_url) });
            if let Some(seen) = activity.get(path).and_then(|a| a.as_object()) {
                for (k, v) in seen {
                    entry[k] = v.clone();
                }
            }
            webhooks.push(entry);
        }
        // Never echo a secret: an `env:NAME` reference shows as it is, a literal as "(set)".
        for key in ["secret", "previous_secret"] {
            if let Some(v) = hook.get_mut(key) {
                if !v.as_str().is_some_and(|s| s.starts_with("env:")) {
                    *v = toml::Value::String("(set)".into());
                }
            }
        }
    }
    // Each poll's state record: last and next fire, last result and error.
    let polls = (0..record.triggers.get("poll").map_or(0, Vec::len))
        .map(|i| {
            use crate::store::Store as _;
            state
                .store
                .trigger_state("poll", &record.name, &i.to_string())
                .ok()
                .flatten()
                .and_then(|b| serde_json::from_slice::<ferry_triggers::poll::PollState>(&b).ok())
                .map(|mut s| {
                    s.seen_count = s.seen.len();
                    s.seen.clear();
                    s
                })
                .unwrap_or_default()
        })
        .collect();
    FunctionView {
        record,
        routes,
        url,
        webhooks,
        polls,
        code,
    }
}

async fn list(State(state): State<Arc<AdminState>>) -> Json<Vec<FunctionView>> {
    Json(
        state
            .deployer
            .registry()
            .list()
            .into_iter()
            .map(|f| view(&state, f.record.clone(), f.code()))
            .collect(),
    )
}

fn unknown(name: &str) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, format!("no function named {name:?}"))
}

async fn show(
    State(state): State<Arc<AdminState>>,
    Path(name): Path<String>,
) -> Result<Json<FunctionView>, ApiError> {
    let f = state
        .deployer
        .registry()
        .get(&name)
        .ok_or_else(|| unknown(&name))?;
    Ok(Json(view(&state, f.record.clone(), f.code())))
}

async fn remove(
    State(state): State<Arc<AdminState>>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    if state.deployer.remove(&name).await? {
        state.runtime.logs().remove(&name);
        state.runtime.metrics().forget(&name);
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(unknown(&name))
    }
}

/// The bytes of the files below `dir`.
fn size_of_dir(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => size_of_dir(&e.path()),
            Ok(_) => e.metadata().map_or(0, |m| m.len()),
            Err(_) => 0,
        })
        .sum()
}

/// Each trigger of a function with its state, for `GET /v1/status`.
fn triggers_of(state: &AdminState, view: &FunctionView) -> Vec<serde_json::Value> {
    let mut out = vec![json!({
        "kind": "http",
        "url": view.url,
        "routes": view.routes,
        "state": "serving",
    })];
    for hook in &view.webhooks {
        let mut entry = hook.clone();
        entry["kind"] = json!("webhook");
        entry["state"] = json!("listening");
        out.push(entry);
    }
    let sections = view
        .record
        .triggers
        .get("poll")
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    for (section, poll) in sections.iter().zip(&view.polls) {
        let url = section.get("url").and_then(|u| u.as_str());
        let failing = poll.errors > 0;
        out.push(json!({
            "kind": if url.is_some() { "poll" } else { "schedule" },
            "url": url,
            "state": if failing { "failing" } else { "ok" },
            "fired": poll.fired,
            "next": poll.next_ms.map(crate::delivery::record::rfc3339),
            "last_error": poll.last_error,
        }));
    }
    for nats in view.record.triggers.get("nats").into_iter().flatten() {
        let subject = nats.get("subject").and_then(|s| s.as_str());
        let connection = state
            .nats
            .as_ref()
            .map_or("no NATS (--nats is not set)", ferry_triggers::nats::state);
        out.push(json!({
            "kind": "nats",
            "subject": subject,
            "stream": nats.get("stream").and_then(|s| s.as_str()),
            "state": connection,
        }));
    }
    out
}

/// `GET /v1/status`: the host, and per function its triggers and the last five minutes.
async fn status(State(state): State<Arc<AdminState>>) -> Result<Json<serde_json::Value>, ApiError> {
    let errors = state.store_health.errors();
    let dead = state.delivery.dead_letters().map_err(internal)?;
    let metrics = state.runtime.metrics();
    let functions: Vec<serde_json::Value> = state
        .deployer
        .registry()
        .list()
        .into_iter()
        .map(|f| {
            let view = view(&state, f.record.clone(), f.code());
            let name = &view.record.name;
            json!({
                "name": name,
                "version": view.record.version,
                "world": view.record.world,
                "triggers": triggers_of(&state, &view),
                "last_5m": metrics.recent(name),
                "dead_letters": dead.iter().filter(|d| &d.function == name).count(),
            })
        })
        .collect();
    let dir = state.store.dir().to_path_buf();
    let size = tokio::task::spawn_blocking(move || size_of_dir(&dir))
        .await
        .unwrap_or(0);
    Ok(Json(json!({
        "host": {
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_seconds": state.started.elapsed().as_secs(),
            "ready": errors.is_empty() && !state.stopping.is_requested(),
            "store": {
                "status": if errors.is_empty() { "ok" } else { "degraded" },
                "errors": errors,
                "dir": state.store.dir(),
                "size_bytes": size,
            },
            "nats": state.nats.as_ref().map(ferry_triggers::nats::state),
            "instances": {
                "in_use": metrics.instances().get(),
                "capacity": metrics.instances_capacity(),
            },
            "memory": {
                "instances_bytes": state.runtime.memory().used(),
                "cap_bytes": state.runtime.memory().cap(),
            },
            "dead_letters": dead.len(),
        },
        "cluster": members(&state).await?,
        "functions": functions,
    })))
}

/// The cluster's members with their state, or None on a host alone.
async fn members(state: &AdminState) -> Result<Option<serde_json::Value>, ApiError> {
    let Some(members) = &state.members else {
        return Ok(None);
    };
    let hosts = members.list().await.map_err(internal)?;
    Ok(Some(json!({
        "this_host": members.id(),
        "format": crate::store::members::FORMAT,
        "hosts": hosts,
    })))
}

/// `GET /v1/cluster`: every host of the cluster, its version, load and last heartbeat.
async fn cluster(
    State(state): State<Arc<AdminState>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    match members(&state).await? {
        Some(v) => Ok(Json(v)),
        None => Err(ApiError(
            StatusCode::NOT_FOUND,
            "this host is not in cluster mode (start it with ferry serve --cluster nats://…)"
                .into(),
        )),
    }
}

/// The query of `GET /v1/functions/{name}/logs`.
#[derive(serde::Deserialize)]
struct LogsQuery {
    invocation: Option<String>,
    /// A duration back from now (`10m`) or an RFC 3339 time.
    since: Option<String>,
    /// Only lines numbered above this (the `next` of an earlier answer).
    after: Option<String>,
    /// With `after`: wait up to this long (at most 60 s) for a new line.
    wait: Option<String>,
    limit: Option<String>,
}

/// A whole number from a query parameter, or 400 naming it.
fn number<T: std::str::FromStr>(name: &str, text: Option<&str>) -> Result<Option<T>, ApiError> {
    text.map(|t| {
        t.trim()
            .parse()
            .map_err(|_| bad_request(format!("{name}={t:?} is not a whole number")))
    })
    .transpose()
}

/// The most lines one answer carries.
const MAX_LOG_LINES: usize = 10_000;

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, message.into())
}

/// `GET /v1/functions/{name}/logs`: what the function wrote to stdout and stderr, oldest first,
/// with times and invocation ids; `after` + `wait` follow it (long poll).
async fn logs(
    State(state): State<Arc<AdminState>>,
    Path(name): Path<String>,
    axum::extract::Query(q): axum::extract::Query<LogsQuery>,
) -> Result<Json<crate::logs::Page>, ApiError> {
    if state.deployer.registry().get(&name).is_none() {
        return Err(unknown(&name));
    }
    let since_ms = match q.since.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(text) => Some(match humantime::parse_duration(text) {
            Ok(back) => crate::delivery::record::now_ms()
                .saturating_sub(u64::try_from(back.as_millis()).unwrap_or(u64::MAX)),
            Err(_) => chrono::DateTime::parse_from_rfc3339(text)
                .map_err(|_| {
                    bad_request(format!(
                        "since={text:?} is neither a duration (like 10m or 2h) nor an RFC 3339 time"
                    ))
                })?
                .timestamp_millis()
                .max(0) as u64,
        }),
    };
    let wait = match q.wait.as_deref() {
        None => None,
        Some(text) => Some(
            humantime::parse_duration(text)
                .map_err(|e| bad_request(format!("wait={text:?} is not a duration: {e}")))?
                .min(std::time::Duration::from_secs(60)),
        ),
    };
    let after: Option<u64> = number("after", q.after.as_deref())?;
    let limit = number("limit", q.limit.as_deref())?.unwrap_or(1000);
    if limit == 0 || limit > MAX_LOG_LINES {
        return Err(bad_request(format!(
            "limit must be between 1 and {MAX_LOG_LINES}"
        )));
    }
    let query = crate::logs::Query {
        after,
        since_ms,
        invocation: q.invocation.filter(|i| !i.is_empty()),
        limit,
    };
    let logs = state.runtime.logs();
    let mut page = logs.read(&name, &query);
    if let (Some(wait), Some(_), true) = (wait, after, page.lines.is_empty()) {
        // Follow: wait for any new line, then read again (until one of this function's
        // lines matches, or the time is up).
        let deadline = tokio::time::Instant::now() + wait;
        let mut stopping = state.stopping.clone();
        while page.lines.is_empty() {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            tokio::select! {
                () = logs.wait_after(page.next, left) => {}
                () = stopping.requested() => break,
            }
            page = logs.read(
                &name,
                &crate::logs::Query {
                    after: Some(page.next),
                    ..query.clone()
                },
            );
        }
    }
    Ok(Json(page))
}

async fn deploy(
    State(state): State<Arc<AdminState>>,
    Path(name): Path<String>,
    req: Request,
) -> Result<(StatusCode, Json<FunctionView>), ApiError> {
    validate_name(&name).map_err(|m| ApiError(StatusCode::BAD_REQUEST, m))?;
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    // The media type without its parameters: `application/wasmfoo` is not `application/wasm`.
    let media_type = content_type.split(';').next().unwrap_or("").trim();
    let (manifest, component) = if media_type == "application/wasm" {
        let bytes = read_limited(req, state.max_upload).await?;
        (Manifest::with_name(&name, &[]), bytes)
    } else if media_type == "multipart/form-data" {
        read_multipart(req, &name, state.max_upload).await?
    } else {
        return Err(ApiError(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the component with Content-Type: application/wasm, or as multipart/form-data \
             with parts `component` and `manifest` (ferry.toml)"
                .into(),
        ));
    };
    let deployment = state.deployer.deploy(&name, manifest, component).await?;
    let status = if deployment.replaced {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((
        status,
        Json(view(&state, deployment.record, deployment.code)),
    ))
}

/// The query of `POST /v1/functions/{name}/rollback`.
#[derive(serde::Deserialize)]
struct RollbackQuery {
    /// The version to serve again; default: the newest kept one older than the one serving.
    to: Option<String>,
}

/// `POST /v1/functions/{name}/rollback[?to=N]`: serves an earlier version's component and
/// manifest again, as a new version.
async fn rollback(
    State(state): State<Arc<AdminState>>,
    Path(name): Path<String>,
    axum::extract::Query(q): axum::extract::Query<RollbackQuery>,
) -> Result<Json<FunctionView>, ApiError> {
    let to = number::<u64>("to", q.to.as_deref())?;
    let deployment = state.deployer.rollback(&name, to).await?;
    Ok(Json(view(&state, deployment.record, deployment.code)))
}

fn too_large(max: u64) -> ApiError {
    ApiError(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "the upload is larger than this host's limit of {} (ferry serve --max-upload)",
            bytesize::ByteSize(max).display().iec()
        ),
    )
}

/// Reads a request body of at most `max` bytes (plus room for multipart framing).
async fn read_limited(req: Request, max: u64) -> Result<Bytes, ApiError> {
    use ferry_triggers::http::{read_body, BodyError};
    // An upload may be large and the link slow: a generous bound, but a bound.
    match read_body(req, max, std::time::Duration::from_secs(600)).await {
        Ok((_, bytes)) => Ok(bytes),
        Err(BodyError::TooLarge(_)) => Err(too_large(max)),
        Err(e) => Err(ApiError(
            e.status(),
            format!("failed to read the upload: {e}"),
        )),
    }
}

async fn read_multipart(req: Request, name: &str, max: u64) -> Result<(Manifest, Bytes), ApiError> {
    let (parts, body) = req.into_parts();
    // Framing and the manifest need a little room beyond the component itself.
    let bytes = read_limited(Request::from_parts(parts.clone(), body), max + (64 << 10)).await?;
    let req = Request::from_parts(parts, Body::from(bytes));
    let bad = |m: String| ApiError(StatusCode::BAD_REQUEST, m);
    let mut multipart = axum::extract::Multipart::from_request(req, &())
        .await
        .map_err(|e| bad(format!("malformed multipart upload: {e}")))?;
    let mut manifest = None;
    let mut component = None;
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|e| bad(format!("malformed multipart upload: {e}")))?
    {
        let field_name = field.name().unwrap_or("").to_string();
        let data = field
            .bytes()
            .await
            .map_err(|e| bad(format!("malformed multipart part {field_name:?}: {e}")))?;
        match field_name.as_str() {
            "component" => component = Some(data),
            "manifest" => {
                let text = String::from_utf8(data.to_vec())
                    .map_err(|_| bad("the manifest part is not UTF-8 text".into()))?;
                manifest = Some(Manifest::parse(&text).map_err(|e| bad(e.to_string()))?);
            }
            other => {
                return Err(bad(format!(
                    "unexpected multipart part {other:?}: send `component` and `manifest`"
                )))
            }
        }
    }
    let component = component.ok_or_else(|| bad("the upload has no `component` part".into()))?;
    if component.len() as u64 > max {
        return Err(too_large(max));
    }
    Ok((
        manifest.unwrap_or_else(|| Manifest::with_name(name, &[])),
        component,
    ))
}
