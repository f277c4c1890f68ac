//! The HTTP trigger: serves the public listener, maps each request path to a function with a
//! [`Router`], and hands the request to the runtime through [`HttpPort`].

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tracing::Instrument;

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
pub fn text_response(status: StatusCode, text: impl Into<String>) -> Response<Body> {
    let mut text = text.into();
    text.push('\n');
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(full_body(text))
        .expect("static status and header are valid")
}

/// What the HTTP trigger needs from the runtime.
pub trait HttpPort: Send + Sync + 'static {
    /// A resolved function, held for the whole request (an in-flight request keeps the version
    /// it started on).
    type Target: Send + 'static;

    /// Finds the function that serves `path`, if any.
    fn route(&self, path: &str) -> Option<Self::Target>;

    /// Serves one request with `target`. Failures become error responses; this never fails.
    fn serve(
        &self,
        target: Self::Target,
        req: Request<Incoming>,
    ) -> impl Future<Output = Response<Body>> + Send;

    /// Accepts `req` for asynchronous invocation (`Prefer: respond-async`): 202 with a status
    /// URL, or an error response.
    fn submit(
        &self,
        target: Self::Target,
        req: Request<Incoming>,
        options: AsyncOptions,
    ) -> impl Future<Output = Response<Body>> + Send;

    /// The status document of invocation `id`, waiting up to `wait` for it to finish.
    fn status(
        &self,
        id: &str,
        wait: Option<Duration>,
    ) -> impl Future<Output = Response<Body>> + Send;
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
    /// How long a client may take to send the request head.
    pub header_read_timeout: Duration,
    /// After shutdown, how long requests in flight may take before their connections close.
    pub shutdown_grace: Duration,
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// The HTTP trigger on one listener.
pub struct HttpTrigger<P> {
    listener: TcpListener,
    port: Arc<P>,
    options: HttpOptions,
}

impl<P: HttpPort> HttpTrigger<P> {
    pub fn new(listener: TcpListener, port: Arc<P>, options: HttpOptions) -> Self {
        Self {
            listener,
            port,
            options,
        }
    }
}

impl<P: HttpPort> Trigger for HttpTrigger<P> {
    const KIND: &'static str = "http";

    async fn run(self, mut shutdown: Shutdown) -> anyhow::Result<()> {
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(self.options.header_read_timeout);
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
                _ = shutdown.requested() => break,
            };
            let _ = stream.set_nodelay(true);
            let port = self.port.clone();
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let port = port.clone();
                async move { Ok::<_, Infallible>(handle(&*port, req).await) }
            });
            let conn = http.serve_connection(TokioIo::new(stream), service);
            let conn = graceful.watch(conn);
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(%peer, error = %e, "trigger.http connection ended with an error");
                }
            });
        }
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

async fn handle<P: HttpPort>(port: &P, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path();
    if let Some(id) = path.strip_prefix(STATUS_PREFIX) {
        if req.method() != http::Method::GET {
            return text_response(StatusCode::METHOD_NOT_ALLOWED, "status URLs answer GET");
        }
        return match wait_param(req.uri().query()) {
            Ok(wait) => port.status(id, wait).await,
            Err(e) => text_response(StatusCode::BAD_REQUEST, e),
        };
    }
    match port.route(path) {
        Some(target) if prefers_async(req.headers()) => {
            let span =
                tracing::debug_span!("trigger.http.submit", method = %req.method(), path = %path);
            let options = AsyncOptions::from_headers(req.headers());
            port.submit(target, req, options).instrument(span).await
        }
        Some(target) => {
            let span =
                tracing::debug_span!("trigger.http.request", method = %req.method(), path = %path);
            port.serve(target, req).instrument(span).await
        }
        None => text_response(StatusCode::NOT_FOUND, format!("no function serves {path}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
