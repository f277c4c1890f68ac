//! The HTTP trigger: serves the public listener. Every function is served at `/{name}` and
//! below, plus the routes of its `[[trigger.http]]` sections; a request runs the function now, or,
//! with `Prefer: respond-async`, is submitted for delivery (202 and a status URL, served here
//! too under [`STATUS_PREFIX`]). The route table is rebuilt from the runtime's sections whenever
//! a deploy changes them.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Deserialize;
use tokio::net::TcpListener;
use tracing::Instrument;

use crate::port::{
    parse_section, Accepted, ConfigError, DeliveryMode, FunctionKind, Payload, Runtime, Sections,
    Submission, SubmitFailure, TriggerKind,
};
use crate::{Shutdown, Trigger};

/// Errors of response bodies streamed from functions.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The response body type of the HTTP trigger.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// A complete body from bytes.
pub fn full_body(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A short plain-text response, for errors the platform itself answers.
#[allow(
    clippy::expect_used,
    reason = "a StatusCode and a static header name and value cannot make the builder fail"
)]
pub fn text_response(status: StatusCode, text: impl Into<String>) -> Response<Body> {
    let mut text = text.into();
    text.push('\n');
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(full_body(text))
        .expect("static status and header are valid")
}

/// What the caller of an asynchronous invocation asked for, from the request headers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AsyncOptions {
    /// `Ferry-Delivery`: the delivery mode, unparsed.
    pub delivery: Option<String>,
    /// `X-Callback-Url`.
    pub callback_url: Option<String>,
    /// `Idempotency-Key`.
    pub idempotency_key: Option<String>,
}

/// How much of a refused (too large) body is read and dropped, so that the client can read the
/// 413 instead of a connection reset while it is still sending; anything larger is cut off.
pub const LINGER: u64 = 1 << 20;

/// The `content-length` a request declares.
pub fn content_length<B>(req: &Request<B>) -> Option<u64> {
    req.headers()
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Reads and drops a refused body of `declared` bytes when it is at most [`LINGER`] over
/// `max`, for five seconds at most.
pub async fn linger<B: http_body::Body>(body: B, declared: u64, max: u64) {
    if declared <= max.saturating_add(LINGER) {
        let _ = tokio::time::timeout(Duration::from_secs(5), body.collect()).await;
    }
}

/// Why a request body was not read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The body declared or sent more than the limit, which it carries (in bytes).
    #[error("the body is larger than {0} bytes")]
    TooLarge(u64),
    /// Reading the body failed (the client went away, say); the message says how.
    #[error("failed to read the body: {0}")]
    Failed(String),
    /// The body did not arrive whole within the time allowed.
    #[error("the request body did not arrive within {} (ferry serve --body-read-timeout)", humantime::format_duration(*.0))]
    TimedOut(Duration),
}

/// Reads a whole request body of at most `max` bytes; a body that declares more is refused at
/// once (after [`linger`]).
pub async fn read_body<B>(
    req: Request<B>,
    max: u64,
    within: Duration,
) -> Result<(http::request::Parts, Bytes), BodyError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let declared = content_length(&req);
    let (parts, body) = req.into_parts();
    if let Some(len) = declared.filter(|len| *len > max) {
        linger(body, len, max).await;
        return Err(BodyError::TooLarge(max));
    }
    let collect = http_body_util::Limited::new(body, max as usize).collect();
    match tokio::time::timeout(within, collect).await {
        Err(_) => Err(BodyError::TimedOut(within)),
        Ok(Ok(b)) => Ok((parts, b.to_bytes())),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(BodyError::TooLarge(max)),
        Ok(Err(e)) => Err(BodyError::Failed(e.to_string())),
    }
}

impl BodyError {
    /// The status of a request whose body could not be read whole: 413, 408 or 400.
    pub fn status(&self) -> StatusCode {
        match self {
            BodyError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            BodyError::TimedOut(_) => StatusCode::REQUEST_TIMEOUT,
            BodyError::Failed(_) => StatusCode::BAD_REQUEST,
        }
    }
}

/// The answer to a body that could not be read whole; `what` owns the limit ("function f").
pub fn body_error_response(e: &BodyError, what: &str) -> Response<Body> {
    let message = match e {
        BodyError::TooLarge(max) => {
            format!("request body is larger than {what}'s limit of {max} bytes (limits.max_body)")
        }
        _ => e.to_string(),
    };
    text_response(e.status(), message)
}

/// The path prefix of status URLs.
pub const STATUS_PREFIX: &str = "/_ferry/invocations/";

/// Longest long-poll a client may ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// Whether the request asks to be answered asynchronously (RFC 7240 `Prefer: respond-async`).
pub fn prefers_async(headers: &http::HeaderMap) -> bool {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| {
            p.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("respond-async")
        })
}

fn header_text(headers: &http::HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

impl AsyncOptions {
    /// The options a request's headers ask for; blank headers count as absent.
    pub fn from_headers(headers: &http::HeaderMap) -> Self {
        Self {
            delivery: header_text(headers, "ferry-delivery"),
            callback_url: header_text(headers, "x-callback-url"),
            idempotency_key: header_text(headers, "idempotency-key"),
        }
    }
}

/// `?wait=30s` (or `wait=500ms`, `wait=10`) of a status URL, capped at [`MAX_WAIT`].
pub fn wait_param(query: Option<&str>) -> Result<Option<Duration>, String> {
    let Some(v) = query
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("wait="))
    else {
        return Ok(None);
    };
    let d = match v.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(v)
            .map_err(|_| format!("wait={v} is not a duration like 30s"))?,
    };
    Ok(Some(d.min(MAX_WAIT)))
}

/// Maps paths to values: exact routes (`/a/b`) and prefix routes (`/a/...`, which match `/a` and
/// everything below it). Exact beats prefix; a longer prefix beats a shorter one.
#[derive(Debug, Clone)]
pub struct Router<T> {
    exact: HashMap<String, T>,
    prefix: HashMap<String, T>,
}

impl<T> Default for Router<T> {
    fn default() -> Self {
        Self {
            exact: HashMap::new(),
            prefix: HashMap::new(),
        }
    }
}

impl<T> Router<T> {
    /// Whether no route is set.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.prefix.is_empty()
    }

    /// Adds a route; returns the value already holding it, if any (the route is not added then).
    pub fn insert(&mut self, route: &str, value: T) -> Result<(), &T> {
        let (map, key) = match route.strip_suffix("/...") {
            Some(p) => (&mut self.prefix, p.trim_end_matches('/')),
            None => (&mut self.exact, trim_path(route)),
        };
        if map.contains_key(key) {
            return Err(&map[key]);
        }
        map.insert(key.to_string(), value);
        Ok(())
    }

    /// Whether a route is taken (by exact text, not by matching).
    pub fn holder(&self, route: &str) -> Option<&T> {
        match route.strip_suffix("/...") {
            Some(p) => self.prefix.get(p.trim_end_matches('/')),
            None => self.exact.get(trim_path(route)),
        }
    }

    /// The value serving `path`.
    pub fn lookup(&self, path: &str) -> Option<&T> {
        let path = trim_path(path);
        if let Some(v) = self.exact.get(path) {
            return Some(v);
        }
        let mut candidate = if path == "/" { "" } else { path };
        loop {
            if let Some(v) = self.prefix.get(candidate) {
                return Some(v);
            }
            match candidate.rfind('/') {
                Some(i) => candidate = &candidate[..i],
                None => return None,
            }
        }
    }
}

/// `/a/b/` and `/a/b` are the same route; `/` stays `/`.
fn trim_path(path: &str) -> &str {
    let t = path.trim_end_matches('/');
    if t.is_empty() {
        "/"
    } else {
        t
    }
}

/// Limits of the HTTP listener itself (per-function limits live in the runtime).
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// How long a client may take to send a request head (also the idle time of a kept-alive
    /// connection before its next request).
    pub header_read_timeout: Duration,
    /// How long a body Ferry reads whole (asynchronous submits, webhooks) may take to arrive.
    pub body_read_timeout: Duration,
    /// The largest request head (request line and headers), in bytes.
    pub max_header_size: usize,
    /// Connections open at once; more are answered 503 and closed.
    pub max_connections: usize,
    /// After shutdown, how long requests in flight may take before their connections close.
    pub shutdown_grace: Duration,
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(60),
            max_header_size: 64 << 10,
            max_connections: 10_000,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// The HTTP trigger's registration: `[[trigger.http]]` sections with a `route`.
pub const KIND: TriggerKind = TriggerKind {
    name: "http",
    accepts: &[FunctionKind::Http, FunctionKind::Event],
    validate,
    validate_all,
    disabled_hint: "",
};

/// One `[[trigger.http]]` section.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpSection {
    /// An exact path (`/a/b`), or a prefix (`/a/...`: `/a` and everything below it).
    route: String,
}

fn validate(_function: &str, sections: &[toml::Table]) -> Result<(), ConfigError> {
    for (i, section) in sections.iter().enumerate() {
        let s: HttpSection = parse_section("http", i, section)?;
        validate_route(&s.route).map_err(|m| ConfigError::at("http", i, "route", m))?;
    }
    Ok(())
}

/// Every route of a function: its own `/{name}/...` and those of its sections, in order,
/// without repeats. Sections that do not parse are skipped (deploys refuse them).
pub fn routes(function: &str, sections: &[toml::Table]) -> Vec<String> {
    let mut out = vec![format!("/{function}/...")];
    for (i, section) in sections.iter().enumerate() {
        if let Ok(s) = parse_section::<HttpSection>("http", i, section) {
            if !out.contains(&s.route) {
                out.push(s.route);
            }
        }
    }
    out
}

/// The route table of every function, or the first route two functions both claim.
fn route_table(all: &[Sections]) -> Result<Router<String>, String> {
    let mut router = Router::default();
    for f in all {
        let name = &f.function.name;
        for route in routes(name, &f.sections) {
            if let Err(holder) = router.insert(&route, name.clone()) {
                if holder != name {
                    return Err(format!(
                        "route {route} of function {name} is already served by function {holder}"
                    ));
                }
            }
        }
    }
    Ok(router)
}

fn validate_all(all: &[Sections]) -> Result<(), String> {
    route_table(all).map(drop)
}

/// Routes are absolute paths; a trailing `/...` matches everything below. `/_ferry` is reserved.
pub fn validate_route(route: &str) -> Result<(), String> {
    let path = route.strip_suffix("/...").unwrap_or(route);
    if !route.starts_with('/') {
        return Err(format!("{route:?} must start with /"));
    }
    if path == "/_ferry" || path.starts_with("/_ferry/") {
        return Err(format!("{route:?} is under /_ferry, which Ferry reserves"));
    }
    if path.len() > 1
        && path
            .split('/')
            .skip(1)
            .any(|s| s.is_empty() || s == "..." || s == "." || s == "..")
    {
        return Err(format!(
            "{route:?} has an empty or dot segment; write /a/b, or /a/... for everything below /a"
        ));
    }
    if route.contains(['?', '#', ' ', '*']) {
        return Err(format!("{route:?} may not contain ?, #, * or spaces"));
    }
    Ok(())
}

/// The HTTP trigger on one listener.
pub struct HttpTrigger<R> {
    listener: TcpListener,
    runtime: Arc<R>,
    options: HttpOptions,
}

impl<R: Runtime> HttpTrigger<R> {
    /// The HTTP trigger serving `listener` for the functions of `runtime`.
    pub fn new(listener: TcpListener, runtime: Arc<R>, options: HttpOptions) -> Self {
        Self {
            listener,
            runtime,
            options,
        }
    }
}

/// What every connection of the trigger shares.
struct Shared<R> {
    runtime: Arc<R>,
    /// The `http` sections of the live functions, as the runtime last sent them.
    sections: tokio::sync::watch::Receiver<Arc<[Sections]>>,
    /// The route table, and the sections it was built from.
    routes: ArcSwap<Routes>,
    /// The `webhook` sections of the live functions, as the runtime last sent them.
    hook_sections: tokio::sync::watch::Receiver<Arc<[Sections]>>,
    /// The webhooks by path, and the sections they were built from.
    hooks: ArcSwap<(Arc<[Sections]>, crate::webhook::Hooks)>,
    /// What each webhook last did.
    activity: crate::webhook::Activity,
    /// How long a body read whole may take to arrive.
    body_read_timeout: Duration,
}

/// A receiver of the `http` sections of the live functions.
type SectionsRx = tokio::sync::watch::Receiver<Arc<[Sections]>>;

/// A route table (path to function name) and the sections it was built from.
struct Routes {
    from: Arc<[Sections]>,
    table: Router<String>,
}

impl<R: Runtime> Shared<R> {
    /// The webhook table, brought up to date as [`Shared::function`] does with the routes.
    fn hooks(&self, seen: &Mutex<SectionsRx>) -> Arc<(Arc<[Sections]>, crate::webhook::Hooks)> {
        let mut hooks = self.hooks.load_full();
        let changed = {
            let mut rx = seen.lock().unwrap_or_else(|e| e.into_inner());
            match rx.has_changed() {
                Ok(true) => Some(rx.borrow_and_update().clone()),
                _ => None,
            }
        };
        if let Some(current) = changed.filter(|c| !Arc::ptr_eq(&hooks.0, c)) {
            let table = crate::webhook::Hooks::of(&current);
            let _ = self
                .hooks
                .compare_and_swap(&hooks, Arc::new((current, table)));
            hooks = self.hooks.load_full();
        }
        hooks
    }

    /// The function serving `path`. `seen` is the connection's own view of the sections: when
    /// a deploy has changed them since, the table is rebuilt (once, by whichever request sees it
    /// first), so a function is served as soon as its deploy has been answered. On the common
    /// path this costs one uncontended lock and one atomic load.
    fn function(&self, path: &str, seen: &Mutex<SectionsRx>) -> Option<R::Function> {
        let mut routes = self.routes.load();
        let changed = {
            // A poisoned lock still holds a usable receiver.
            let mut rx = seen.lock().unwrap_or_else(|e| e.into_inner());
            match rx.has_changed() {
                Ok(true) => Some(rx.borrow_and_update().clone()),
                _ => None,
            }
        };
        if let Some(current) = changed.filter(|c| !Arc::ptr_eq(&routes.from, c)) {
            let table = match route_table(&current) {
                Ok(table) => table,
                Err(e) => {
                    // Deploys check routes before they commit; keep the last good table.
                    tracing::error!(error = %e, "trigger.http: route table rejected");
                    routes.table.clone()
                }
            };
            // Only over the table this request started from: a newer one stored meanwhile by
            // another connection must not be replaced with an older one.
            let _ = self.routes.compare_and_swap(
                &routes,
                Arc::new(Routes {
                    from: current,
                    table,
                }),
            );
            routes = self.routes.load();
        }
        routes
            .table
            .lookup(path)
            .and_then(|name| self.runtime.function(name))
    }
}

impl<R: Runtime> Trigger for HttpTrigger<R> {
    const KIND: &'static str = "http";

    async fn run(self, mut shutdown: Shutdown) -> anyhow::Result<()> {
        let mut sections = self.runtime.sections(KIND.name);
        let from = sections.borrow_and_update().clone();
        let table = route_table(&from).unwrap_or_else(|e| {
            tracing::error!(error = %e, "trigger.http: route table rejected");
            Router::default()
        });
        let mut hook_sections = self.runtime.sections(crate::webhook::KIND.name);
        let hooks_from = hook_sections.borrow_and_update().clone();
        let hooks = crate::webhook::Hooks::of(&hooks_from);
        let shared = Arc::new(Shared {
            runtime: self.runtime.clone(),
            sections,
            routes: ArcSwap::from_pointee(Routes { from, table }),
            hook_sections,
            hooks: ArcSwap::from_pointee((hooks_from, hooks)),
            activity: crate::webhook::Activity::default(),
            body_read_timeout: self.options.body_read_timeout,
        });
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(self.options.header_read_timeout)
            // At most 100 headers (hyper's default, parsed on the stack) and this many bytes.
            .max_header_size(self.options.max_header_size);
        self.accept(&shared, &http, &graceful, &mut shutdown).await;
        // Let requests in flight finish, but not forever.
        tokio::select! {
            _ = graceful.shutdown() => {}
            _ = tokio::time::sleep(self.options.shutdown_grace) => {
                tracing::warn!(grace = ?self.options.shutdown_grace, "trigger.http: connections still open after the grace period; closing");
            }
        }
        Ok(())
    }
}

impl<R: Runtime> HttpTrigger<R> {
    /// Accepts connections until shutdown is requested.
    async fn accept(
        &self,
        shared: &Arc<Shared<R>>,
        http: &hyper::server::conn::http1::Builder,
        graceful: &hyper_util::server::graceful::GracefulShutdown,
        shutdown: &mut Shutdown,
    ) {
        let slots = Arc::new(tokio::sync::Semaphore::new(
            self.options.max_connections.max(1),
        ));
        loop {
            let (stream, peer) = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        // Out of file descriptors and similar: log, back off briefly, go on.
                        tracing::warn!(error = %e, "trigger.http.accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = shutdown.requested() => return,
            };
            let _ = stream.set_nodelay(true);
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tokio::spawn(refuse(stream, self.options.max_connections));
                continue;
            };
            let shared = shared.clone();
            let seen = Arc::new(Seen {
                routes: Mutex::new(shared.sections.clone()),
                hooks: Mutex::new(shared.hook_sections.clone()),
            });
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let (shared, seen) = (shared.clone(), seen.clone());
                async move { Ok::<_, Infallible>(handle(&shared, &seen, req).await) }
            });
            let conn = http.serve_connection(TokioIo::new(stream), service);
            let conn = graceful.watch(conn);
            tokio::spawn(async move {
                let _slot = slot;
                if let Err(e) = conn.await {
                    tracing::debug!(%peer, error = %e, "trigger.http connection ended with an error");
                }
            });
        }
    }
}

/// Answers a connection over `--max-connections` with 503 without reading it, and closes it.
async fn refuse(mut stream: tokio::net::TcpStream, max: usize) {
    use tokio::io::AsyncWriteExt as _;
    let body = format!(
        "this host has {max} connections open, its limit (ferry serve --max-connections); try again shortly\n"
    );
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n\
         retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(answer.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// Whether a path has a `.` or `..` segment, which proxies and browsers resolve differently.
fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(|s| s == "." || s == "..")
}

/// A connection's own view of the sections the route and webhook tables were built from.
struct Seen {
    routes: Mutex<SectionsRx>,
    hooks: Mutex<SectionsRx>,
}

async fn handle<R: Runtime>(
    shared: &Shared<R>,
    seen: &Seen,
    req: Request<Incoming>,
) -> Response<Body> {
    let path = req.uri().path();
    if has_dot_segment(path) {
        return text_response(
            StatusCode::BAD_REQUEST,
            format!(
                "{path:?} has a dot segment (. or ..); send the path as it is meant, without them"
            ),
        );
    }
    if let Some(id) = path.strip_prefix(STATUS_PREFIX) {
        if req.method() != http::Method::GET {
            return text_response(StatusCode::METHOD_NOT_ALLOWED, "status URLs answer GET");
        }
        return match wait_param(req.uri().query()) {
            Ok(wait) => status(&*shared.runtime, id, wait).await,
            Err(e) => text_response(StatusCode::BAD_REQUEST, e),
        };
    }
    if path == "/_ferry" || path.starts_with("/_ferry/") {
        return text_response(
            StatusCode::NOT_FOUND,
            format!("{path} is not a Ferry endpoint (status URLs are under {STATUS_PREFIX})"),
        );
    }
    // Loaded once per request: the webhook on this path, and which functions have webhooks.
    let hooks = shared.hooks(&seen.hooks);
    if let Some(hook) = hooks.1.get(path) {
        let span = tracing::debug_span!("trigger.webhook.delivery", path = %path);
        // Boxed: the webhook path's state stays out of every other request's future.
        return Box::pin(
            crate::webhook::handle(
                &*shared.runtime,
                &shared.activity,
                &hook,
                req,
                shared.body_read_timeout,
            )
            .instrument(span),
        )
        .await;
    }
    let function = shared.function(path, &seen.routes);
    if let Some(name) = function.as_ref().map(|f| &R::info(f).name) {
        // A function with webhooks runs only on signed deliveries, not on its own route.
        let own = path
            .strip_prefix('/')
            .and_then(|p| p.strip_prefix(name.as_str()))
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
        if own && hooks.1.guards(name) {
            return text_response(
                StatusCode::NOT_FOUND,
                format!(
                    "function {name} has webhooks, so it runs only on signed deliveries to their paths (`ferry show {name}` lists them), not on {path}"
                ),
            );
        }
    }
    match function {
        Some(f) if prefers_async(req.headers()) => {
            let span =
                tracing::debug_span!("trigger.http.submit", method = %req.method(), path = %path);
            submit(&*shared.runtime, f, req, shared.body_read_timeout)
                .instrument(span)
                .await
        }
        Some(f) => {
            let span =
                tracing::debug_span!("trigger.http.request", method = %req.method(), path = %path);
            shared.runtime.invoke_http(f, req).instrument(span).await
        }
        None => text_response(StatusCode::NOT_FOUND, format!("no function serves {path}")),
    }
}

/// `Prefer: respond-async`: reads the request into a submission and answers 202 with the
/// status URL (or why not).
async fn submit<R: Runtime>(
    runtime: &R,
    f: R::Function,
    req: Request<Incoming>,
    within: Duration,
) -> Response<Body> {
    let options = AsyncOptions::from_headers(req.headers());
    let mode = match options.delivery.as_deref() {
        None => None,
        Some(m) => match DeliveryMode::parse(m) {
            Some(mode) => Some(mode),
            None => {
                return text_response(
                    StatusCode::BAD_REQUEST,
                    format!(
                    "Ferry-Delivery: {m:?} is not a mode; use fire-and-forget or store-and-forward"
                ),
                )
            }
        },
    };
    let payload = match payload(R::info(&f), req, within).await {
        Ok(p) => p,
        Err(resp) => return resp,
    };
    let submission = Submission {
        mode,
        callback_url: options.callback_url,
        idempotency_key: options.idempotency_key,
        payload,
        trigger: "http",
    };
    match runtime.submit(f, submission).await {
        Ok(accepted) => accepted_response(&accepted),
        Err(e) => refusal_response(&e),
    }
}

/// The answer to a submit the delivery engine refused.
pub(crate) fn refusal_response(e: &SubmitFailure) -> Response<Body> {
    match e {
        SubmitFailure::BadRequest(_) => text_response(StatusCode::BAD_REQUEST, e.to_string()),
        SubmitFailure::QueueFull => retry_later(StatusCode::SERVICE_UNAVAILABLE, e, "1"),
        SubmitFailure::Unavailable(_) => {
            tracing::error!(error = %e, "submit failed");
            retry_later(StatusCode::SERVICE_UNAVAILABLE, e, "5")
        }
        SubmitFailure::StorageFull(_) => {
            tracing::error!(error = %e, "submit failed");
            retry_later(StatusCode::INSUFFICIENT_STORAGE, e, "30")
        }
    }
}

/// A refusal that trying again later may cure, with `Retry-After` (seconds).
fn retry_later(status: StatusCode, e: &SubmitFailure, seconds: &'static str) -> Response<Body> {
    let mut resp = text_response(status, e.to_string());
    resp.headers_mut().insert(
        http::header::RETRY_AFTER,
        http::HeaderValue::from_static(seconds),
    );
    resp
}

/// Reads the request, within the function's body limit, into what the delivery engine runs:
/// the request itself for an HTTP function, the CloudEvent for an event function.
async fn payload(
    f: &crate::FunctionInfo,
    req: Request<Incoming>,
    within: Duration,
) -> Result<Payload, Response<Body>> {
    let (parts, body) = match read_body(req, f.max_body, within).await {
        Ok(read) => read,
        Err(e) => return Err(body_error_response(&e, &format!("function {}", f.name))),
    };
    match f.kind {
        FunctionKind::Http => Ok(Payload::Http {
            method: parts.method.to_string(),
            path: parts
                .uri
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_else(|| "/".into()),
            headers: parts
                .headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect(),
            body,
        }),
        FunctionKind::Event => match crate::cloudevents::from_headers(&parts.headers, body) {
            Ok((mut event, _)) => {
                event.adopt_trace_headers(&parts.headers);
                Ok(Payload::Event(event))
            }
            Err(e) => Err(text_response(
                StatusCode::BAD_REQUEST,
                format!("invalid CloudEvent: {e}"),
            )),
        },
    }
}

/// 202 with `Location` (and `Ferry-Idempotent-Replay` for a repeat).
pub(crate) fn accepted_response(accepted: &Accepted) -> Response<Body> {
    let mut resp = json_response(StatusCode::ACCEPTED, &accepted);
    if let Ok(v) = http::HeaderValue::from_str(&accepted.status_url) {
        resp.headers_mut().insert(http::header::LOCATION, v);
    }
    if !accepted.new {
        resp.headers_mut().insert(
            "ferry-idempotent-replay",
            http::HeaderValue::from_static("true"),
        );
    }
    resp
}

/// A status URL: the invocation's status document, or 404.
async fn status<R: Runtime>(runtime: &R, id: &str, wait: Option<Duration>) -> Response<Body> {
    match runtime.invocation(id, wait).await {
        Ok(Some(doc)) => json_response(StatusCode::OK, &doc),
        Ok(None) => text_response(
            StatusCode::NOT_FOUND,
            format!(
                "no invocation {id:?} (finished invocations are kept for the retention window)"
            ),
        ),
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "reading an invocation failed");
            text_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the store failed; see the host log",
            )
        }
    }
}

/// A JSON response.
#[allow(
    clippy::expect_used,
    reason = "a StatusCode and a static header name and value cannot make the builder fail"
)]
pub fn json_response(status: StatusCode, value: &impl serde::Serialize) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(full_body(serde_json::to_vec(value).unwrap_or_default()))
        .expect("static headers are valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_syntax() {
        for ok in ["/", "/a", "/a/b", "/a/...", "/..."] {
            assert!(validate_route(ok).is_ok(), "{ok}");
        }
        for bad in ["a", "/a//b", "/a/../b", "/_ferry", "/a?b", "/a/.../b"] {
            assert!(validate_route(bad).is_err(), "{bad}");
        }
    }

    fn info(name: &str) -> crate::FunctionInfo {
        crate::FunctionInfo {
            name: name.into(),
            version: 1,
            kind: FunctionKind::Http,
            timeout: Duration::from_secs(1),
            max_body: 1,
            max_attempts: 1,
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(1),
        }
    }

    fn route(r: &str) -> toml::Table {
        toml::Table::from_iter([("route".to_string(), r.into())])
    }

    #[test]
    fn two_functions_may_not_claim_one_route() {
        let a = Sections {
            function: info("a"),
            sections: vec![route("/shared/..."), route("/a-only")],
        };
        let b = Sections {
            function: info("b"),
            sections: vec![route("/b-only")],
        };
        let table = route_table(&[a.clone(), b.clone()]).unwrap();
        assert_eq!(table.lookup("/shared/x").map(String::as_str), Some("a"));
        assert_eq!(table.lookup("/b/anything").map(String::as_str), Some("b"));
        let c = Sections {
            function: info("c"),
            sections: vec![route("/shared/...")],
        };
        let err = validate_all(&[a, b, c]).unwrap_err();
        assert!(
            err.contains("/shared/... of function c is already served by function a"),
            "{err}"
        );
        // A function's own routes never collide with themselves.
        let d = Sections {
            function: info("d"),
            sections: vec![route("/d/..."), route("/x"), route("/x")],
        };
        assert!(validate_all(&[d]).is_ok());
    }

    fn router() -> Router<&'static str> {
        let mut r = Router::default();
        r.insert("/hello/...", "hello").unwrap();
        r.insert("/orders/...", "orders").unwrap();
        r.insert("/orders/special", "special").unwrap();
        r.insert("/orders/deep/...", "deep").unwrap();
        r
    }

    #[test]
    fn matching() {
        let r = router();
        assert_eq!(r.lookup("/hello"), Some(&"hello"));
        assert_eq!(r.lookup("/hello/"), Some(&"hello"));
        assert_eq!(r.lookup("/hello/a/b"), Some(&"hello"));
        assert_eq!(r.lookup("/helloo"), None);
        assert_eq!(r.lookup("/orders/special"), Some(&"special"));
        assert_eq!(r.lookup("/orders/special/x"), Some(&"orders"));
        assert_eq!(r.lookup("/orders/deep/x"), Some(&"deep"));
        assert_eq!(r.lookup("/orders/deeper"), Some(&"orders"));
        assert_eq!(r.lookup("/"), None);
        assert_eq!(r.lookup("/nothing"), None);
    }

    #[test]
    fn root_prefix_catches_all_but_loses_to_longer() {
        let mut r = router();
        r.insert("/...", "root").unwrap();
        assert_eq!(r.lookup("/"), Some(&"root"));
        assert_eq!(r.lookup("/nothing/here"), Some(&"root"));
        assert_eq!(r.lookup("/hello/x"), Some(&"hello"));
    }

    #[test]
    fn async_headers() {
        let mut h = http::HeaderMap::new();
        assert!(!prefers_async(&h));
        h.insert("prefer", "wait=10, Respond-Async".parse().unwrap());
        assert!(prefers_async(&h));
        h.insert("prefer", "respond-asyncx".parse().unwrap());
        assert!(!prefers_async(&h));
        h.insert("ferry-delivery", "fire-and-forget".parse().unwrap());
        h.insert("idempotency-key", " k1 ".parse().unwrap());
        let o = AsyncOptions::from_headers(&h);
        assert_eq!(o.delivery.as_deref(), Some("fire-and-forget"));
        assert_eq!(o.idempotency_key.as_deref(), Some("k1"));
        assert_eq!(o.callback_url, None);
    }

    #[test]
    fn wait_parameter() {
        assert_eq!(wait_param(None), Ok(None));
        assert_eq!(wait_param(Some("x=1")), Ok(None));
        assert_eq!(
            wait_param(Some("wait=30s")),
            Ok(Some(Duration::from_secs(30)))
        );
        assert_eq!(
            wait_param(Some("a=b&wait=500ms")),
            Ok(Some(Duration::from_millis(500)))
        );
        assert_eq!(wait_param(Some("wait=5")), Ok(Some(Duration::from_secs(5))));
        assert_eq!(wait_param(Some("wait=1h")), Ok(Some(MAX_WAIT)));
        assert!(wait_param(Some("wait=soon")).is_err());
    }

    #[test]
    fn conflicts_are_reported() {
        let mut r = router();
        assert_eq!(r.insert("/hello/...", "other"), Err(&"hello"));
        assert_eq!(r.insert("/orders/special/", "other"), Err(&"special"));
        assert_eq!(r.holder("/orders/..."), Some(&"orders"));
        assert!(r.insert("/hello", "exact").is_ok());
    }
}
