//! Running one invocation: a fresh instance from the function's `InstancePre`, limits applied,
//! failures told apart (a guest's error, a trap, a timeout) and turned into answers.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferry_triggers::http::{text_response, Body, BoxError};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::OwnedSemaphorePermit;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::WasiHttpView;

use crate::bindings::{GuestError, GuestEvent};
use crate::call::Call;
use crate::guest_output::GuestOutput;
use crate::trace::TraceContext;
use ferry_triggers::http as http_trigger;

use crate::engine::{new_store, HostState, LimitsHit, Prepared, Runtime};
use crate::registry::Deployed;

/// How an invocation failed, from the host's point of view. Every message names the limit that
/// was hit and never carries a WebAssembly backtrace (that goes to the host's debug log).
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    /// Every instance was busy and no waiting place (or no instance within the wait) came free
    /// (503 with `Retry-After`).
    #[error(
        "function {function} is busy: all {limit} instances are running (limits.concurrency) and \
         {why}; try again shortly"
    )]
    Busy {
        /// The function's name.
        function: String,
        /// Its `limits.concurrency`.
        limit: u32,
        /// Why the caller could not wait: the queue is full, or the wait was too long.
        why: String,
    },
    /// All instances of the host together hold `--max-total-memory` (503 with `Retry-After`).
    #[error(
        "function {function} could not get memory: the instances of this host together hold its \
         limit of {cap} (ferry serve --max-total-memory); try again shortly"
    )]
    HostMemory {
        /// The function's name.
        function: String,
        /// The host's cap, as text.
        cap: String,
    },
    /// The invocation ran past the function's timeout and was stopped (504).
    #[error("function {function} exceeded its timeout of {timeout} (limits.timeout)")]
    Timeout {
        /// The function's name.
        function: String,
        /// Its `limits.timeout`, as text like `30s`.
        timeout: String,
    },
    /// The invocation spent its CPU budget running WebAssembly (504).
    #[error("function {function} exceeded its CPU time of {cpu} (limits.cpu)")]
    Cpu {
        /// The function's name.
        function: String,
        /// Its `limits.cpu`, as text.
        cpu: String,
    },
    /// The guest ran out of its memory (500).
    #[error(
        "function {function} ran out of memory: it needed more than its limit of {limit} \
         (limits.memory)"
    )]
    Memory {
        /// The function's name.
        function: String,
        /// Its `limits.memory`, as text.
        limit: String,
    },
    /// The guest's call stack overflowed (500).
    #[error(
        "function {function} exhausted its WebAssembly call stack of {size} (too deep a \
         recursion; ferry serve --max-wasm-stack)"
    )]
    Stack {
        /// The function's name.
        function: String,
        /// The stack size, as text.
        size: String,
    },
    /// The guest trapped: it panicked, or broke a WebAssembly rule (500).
    #[error("function {function} trapped: {reason}")]
    Trap {
        /// The function's name.
        function: String,
        /// wasmtime's description of the trap.
        reason: String,
    },
    /// Any other failure: the guest answered with an error code, sent no response, or the host
    /// could not run it (500).
    #[error("function {function} failed: {reason}")]
    Failed {
        /// The function's name.
        function: String,
        /// What went wrong.
        reason: String,
    },
}

impl InvokeError {
    /// The HTTP status a caller gets for this failure.
    pub fn status(&self) -> StatusCode {
        match self {
            InvokeError::Busy { .. } | InvokeError::HostMemory { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            InvokeError::Timeout { .. } | InvokeError::Cpu { .. } => StatusCode::GATEWAY_TIMEOUT,
            InvokeError::Memory { .. }
            | InvokeError::Stack { .. }
            | InvokeError::Trap { .. }
            | InvokeError::Failed { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The answer for a caller: the status, the message, and `Retry-After` when trying again
    /// soon can help.
    pub fn response(&self) -> Response<Body> {
        let mut resp = text_response(self.status(), self.to_string());
        if self.status() == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut().insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from_static("1"),
            );
        }
        resp
    }

    /// The outcome label of this failure in the metrics, and the limit it names, if any.
    fn outcome(&self) -> (&'static str, Option<&'static str>) {
        match self {
            InvokeError::Busy { .. } => ("busy", Some("concurrency")),
            InvokeError::HostMemory { .. } => ("host_memory", Some("total_memory")),
            InvokeError::Timeout { .. } => ("timeout", Some("timeout")),
            InvokeError::Cpu { .. } => ("cpu", Some("cpu")),
            InvokeError::Memory { .. } => ("memory", Some("memory")),
            InvokeError::Stack { .. } => ("stack", Some("stack")),
            InvokeError::Trap { .. } => ("trap", None),
            InvokeError::Failed { .. } => ("failed", None),
        }
    }

    /// Whether the invocation ran at all (a busy function or a full host never started it).
    fn ran(&self) -> bool {
        !matches!(
            self,
            InvokeError::Busy { .. } | InvokeError::HostMemory { .. }
        )
    }

    fn from_wasmtime(
        runtime: &Runtime,
        f: &Deployed,
        hit: &LimitsHit,
        err: wasmtime::Error,
    ) -> Self {
        use std::sync::atomic::Ordering::Relaxed;
        let function = f.name().to_string();
        let limits = &f.record.limits;
        if err
            .downcast_ref::<crate::engine::DeadlineExceeded>()
            .is_some()
        {
            return InvokeError::Timeout {
                function,
                timeout: humantime::format_duration(limits.timeout).to_string(),
            };
        }
        if err.downcast_ref::<crate::engine::CpuExceeded>().is_some() {
            return InvokeError::Cpu {
                function,
                cpu: humantime::format_duration(limits.cpu.unwrap_or_default()).to_string(),
            };
        }
        // A guest whose memory could not grow usually aborts (a trap) or fails right after.
        if hit.host_memory.load(Relaxed) {
            return InvokeError::HostMemory {
                function,
                cap: crate::model::size_text(runtime.memory().cap()),
            };
        }
        if hit.memory.load(Relaxed) {
            return InvokeError::Memory {
                function,
                limit: crate::model::size_text(limits.memory),
            };
        }
        match err.downcast_ref::<wasmtime::Trap>() {
            Some(wasmtime::Trap::StackOverflow) => InvokeError::Stack {
                function,
                size: crate::model::size_text(runtime.max_wasm_stack()),
            },
            Some(trap) => InvokeError::Trap {
                function,
                reason: trap.to_string(),
            },
            None => InvokeError::Failed {
                function,
                // The root cause only: outer contexts may hold the WebAssembly backtrace.
                reason: err.root_cause().to_string(),
            },
        }
    }
}

/// Who waits for an instance, and so how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiter {
    /// A caller on the line: at most `limits.queue` wait, each at most `limits.queue_timeout`.
    Caller,
    /// An asynchronous worker, already bounded by its pool: waits up to `limits.timeout`, so that
    /// a busy function does not use up attempts.
    Worker,
}

/// Waits for a free instance of the function: at once if one is free, else as `waiter` may.
async fn acquire(f: &Deployed, waiter: Waiter) -> Result<OwnedSemaphorePermit, InvokeError> {
    use std::sync::atomic::Ordering::AcqRel;
    let limits = &f.record.limits;
    let busy = |why: String| InvokeError::Busy {
        function: f.name().to_string(),
        limit: limits.concurrency,
        why,
    };
    if let Ok(p) = f.permits.clone().try_acquire_owned() {
        return Ok(p);
    }
    if waiter == Waiter::Worker {
        return match tokio::time::timeout(limits.timeout, f.permits.clone().acquire_owned()).await {
            Ok(Ok(p)) => Ok(p),
            _ => Err(busy(format!(
                "none came free within {} (limits.timeout)",
                humantime::format_duration(limits.timeout)
            ))),
        };
    }
    let queued = f.waiting.fetch_add(1, AcqRel);
    let _leave = scopeguard(|| {
        f.waiting.fetch_sub(1, AcqRel);
    });
    if queued >= limits.queue {
        return Err(busy(format!(
            "{} callers are already waiting (limits.queue)",
            limits.queue
        )));
    }
    match tokio::time::timeout(limits.queue_timeout, f.permits.clone().acquire_owned()).await {
        Ok(Ok(p)) => Ok(p),
        _ => Err(busy(format!(
            "none came free within {} (limits.queue_timeout)",
            humantime::format_duration(limits.queue_timeout)
        ))),
    }
}

/// Runs `f` when dropped.
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

fn new_state(rt: &Runtime, f: &Deployed, hit: &Arc<LimitsHit>, call: &Arc<Call>) -> HostState {
    let outbound = crate::outbound::OutboundPolicy::new(
        rt.outbound().clone(),
        call.clone(),
        f.outbound.clone(),
        f.record.limits.outbound_requests,
    );
    let output = GuestOutput::new(call.clone(), rt.logs().clone(), rt.metrics().clone());
    HostState::new(
        &f.record.limits,
        &f.record.config,
        outbound,
        output,
        rt.memory().clone(),
        hit.clone(),
    )
    .counted_in(rt.metrics().instances())
}

/// A request body Ferry can hand to a function: a live one, or one replayed from the store.
pub trait RequestBody:
    hyper::body::Body<Data = Bytes, Error: Into<wasmtime_wasi_http::Error>> + Send + Unpin + 'static
{
}
impl<B> RequestBody for B where
    B: hyper::body::Body<Data = Bytes, Error: Into<wasmtime_wasi_http::Error>>
        + Send
        + Unpin
        + 'static
{
}

/// The body of a stored request.
pub type StoredBody = http_body_util::combinators::MapErr<
    http_body_util::Full<Bytes>,
    fn(std::convert::Infallible) -> wasmtime_wasi_http::Error,
>;

/// A stored request body, to hand to a function like a live one.
pub fn stored_body(bytes: Bytes) -> StoredBody {
    fn never(e: std::convert::Infallible) -> wasmtime_wasi_http::Error {
        match e {}
    }
    http_body_util::Full::new(bytes).map_err(never as fn(_) -> _)
}

/// Runs an HTTP function on a stored request for an asynchronous worker; a host-side failure is
/// returned, not turned into a response.
pub async fn http_result<B: RequestBody>(
    runtime: &Runtime,
    f: Arc<Deployed>,
    req: Request<B>,
    call: &Arc<Call>,
) -> Result<Response<Body>, InvokeError> {
    let started = std::time::Instant::now();
    let result = try_http(runtime, &f, req, Waiter::Worker, call).await;
    count(runtime, &f, call, "async", result.as_ref().err(), started);
    result
}

/// Counts one invocation in the metrics and, when spans are exported, exports its span.
fn count(
    runtime: &Runtime,
    f: &Deployed,
    call: &Call,
    mode: &'static str,
    error: Option<&InvokeError>,
    started: std::time::Instant,
) {
    let (outcome, limit) = error.map_or(("ok", None), InvokeError::outcome);
    let ran = error.is_none_or(InvokeError::ran);
    finish(
        runtime,
        f,
        call,
        mode,
        (outcome, limit),
        ran,
        started,
        error.map(|e| e as &dyn std::fmt::Display),
    );
}

/// Records how an invocation ended: metrics, and its span when spans are exported.
#[allow(clippy::too_many_arguments)]
fn finish(
    runtime: &Runtime,
    f: &Deployed,
    call: &Call,
    mode: &'static str,
    (outcome, limit): (&'static str, Option<&'static str>),
    ran: bool,
    started: std::time::Instant,
    error: Option<&dyn std::fmt::Display>,
) {
    let took = started.elapsed();
    let metrics = runtime.metrics();
    let handles = f.metrics.get_or_init(|| metrics.function(f.name()));
    metrics.invocation(
        handles,
        f.name(),
        call.trigger,
        mode,
        outcome,
        limit,
        ran.then_some(took),
    );
    if runtime.log_outcomes() {
        let mut text = format!(
            "{} {mode} {outcome} in {:.1} ms",
            call.trigger,
            took.as_secs_f64() * 1000.0
        );
        if let Some(e) = error {
            text.push_str(&format!(": {e}"));
        }
        runtime
            .logs()
            .push(&call.function, &call.id, vec![("outcome", text)]);
    }
    if crate::otel::enabled() {
        use opentelemetry::KeyValue;
        let (name, kind) = match (mode, call.trigger) {
            ("async", _) => ("ferry.attempt", crate::otel::Kind::Consumer),
            (_, "nats") => ("ferry.invoke", crate::otel::Kind::Consumer),
            _ => ("ferry.invoke", crate::otel::Kind::Server),
        };
        crate::otel::span(
            name,
            kind,
            &call.trace,
            took,
            vec![
                KeyValue::new("faas.invoked_name", f.name().to_string()),
                KeyValue::new("faas.invocation_id", call.id.to_string()),
                KeyValue::new("ferry.trigger", call.trigger),
                KeyValue::new("ferry.mode", mode),
                KeyValue::new("ferry.outcome", outcome),
            ],
            error.map(ToString::to_string),
        );
    }
}

/// Serves one HTTP request: an HTTP function gets the request itself, an event function the
/// CloudEvent the request carries.
pub async fn http(runtime: &Runtime, f: Arc<Deployed>, req: Request<Incoming>) -> Response<Body> {
    let started = std::time::Instant::now();
    let call = Arc::new(Call::new(
        f.name.clone(),
        TraceContext::from_headers(req.headers()),
        "http",
    ));
    let result = try_http(runtime, &f, req, Waiter::Caller, &call).await;
    if matches!(f.prepared, Prepared::Http(_)) {
        count(runtime, &f, &call, "sync", result.as_ref().err(), started);
    }
    let mut resp = match result {
        Ok(resp) => resp,
        Err(e) => {
            tracing::warn!(function = f.name(), invocation_id = %call.id, trace_id = %call.trace.trace_id_hex(), error = %e, "invoke failed");
            e.response()
        }
    };
    if let Some(id) = &call.header {
        resp.headers_mut().insert(INVOCATION_ID, id.clone());
    }
    resp
}

/// The header that names the invocation, in the request a function gets and in the answer.
const INVOCATION_ID: &str = "ferry-invocation-id";

async fn try_http<B: RequestBody>(
    runtime: &Runtime,
    f: &Arc<Deployed>,
    mut req: Request<B>,
    waiter: Waiter,
    call: &Arc<Call>,
) -> Result<Response<Body>, InvokeError> {
    let Prepared::Http(pre) = &f.prepared else {
        return Ok(event_over_http(runtime, f, req, call).await);
    };
    call.trace.inject(req.headers_mut());
    if let Some(id) = &call.header {
        req.headers_mut().insert(INVOCATION_ID, id.clone());
    }
    let max_body = f.record.limits.max_body;
    if let Some(len) = http_trigger::content_length(&req).filter(|len| *len > max_body) {
        http_trigger::linger(req.into_body(), len, max_body).await;
        return Ok(too_large(f, max_body));
    }
    let permit = acquire(f, waiter).await?;
    let hit = Arc::new(LimitsHit::default());
    let mut store = new_store(f.prepared.engine(), new_state(runtime, f, &hit, call));
    let over = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let req = req.map(|body| LimitedBody::new(body, max_body).noting(over.clone()));
    let (tx, rx) = tokio::sync::oneshot::channel();
    let mut view = store.data_mut().http();
    let (req, out) = match (
        view.new_incoming_request(Scheme::Http, req),
        view.new_response_outparam(tx),
    ) {
        (Ok(req), Ok(out)) => (req, out),
        (Err(e), _) | (_, Err(e)) => {
            return Ok(text_response(
                StatusCode::BAD_REQUEST,
                format!("bad request: {e}"),
            ))
        }
    };
    let pre = pre.clone();
    let timeout = f.record.limits.timeout;
    // Whether the invocation failed, sent before the store (and with it the response body's
    // sender) goes away: a body that ends because its guest trapped must fail, not end.
    let (failed_tx, failed_rx) = tokio::sync::oneshot::channel::<bool>();
    let task = tokio::spawn(async move {
        let _permit = permit;
        let result = {
            let run = async {
                let proxy = pre.instantiate_async(&mut store).await?;
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, req, out)
                    .await
            };
            // The epoch callback stops guests that compute; this also stops ones that wait.
            match tokio::time::timeout(timeout + Duration::from_millis(50), run).await {
                Ok(result) => result,
                Err(_) => Err(wasmtime::Error::new(crate::engine::DeadlineExceeded)),
            }
        };
        let _ = failed_tx.send(result.is_err());
        drop(store);
        result
    });
    let answer = rx.await;
    // A body without a length that turned out too long: whatever the function made of the part
    // it got, the caller gets 413.
    if over.load(std::sync::atomic::Ordering::Relaxed) {
        return Ok(too_large(f, max_body));
    }
    match answer {
        Ok(Ok(resp)) => {
            let late = call.clone();
            // The guest may still be writing the body: report late failures in the log.
            tokio::spawn(async move {
                match task.await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(function = %late.function, invocation_id = %late.id, trace_id = %late.trace.trace_id_hex(), error = %format!("{e:?}"), "function failed after sending its response head")
                    }
                    Err(e) => {
                        tracing::error!(function = %late.function, invocation_id = %late.id, trace_id = %late.trace.trace_id_hex(), error = %e, "invocation task panicked")
                    }
                }
            });
            let cap = ResponseCap {
                left: f.record.limits.max_response,
                max: f.record.limits.max_response,
                call: call.clone(),
                failed: failed_rx,
            };
            Ok(resp.map(|b| cap.wrap(b.map_err(|e| Box::new(e) as BoxError).boxed_unsync())))
        }
        Ok(Err(code)) => Err(InvokeError::Failed {
            function: f.name().to_string(),
            reason: format!("the function answered with error {code:?}"),
        }),
        Err(_) => match task.await {
            Ok(Err(e)) => {
                tracing::debug!(function = f.name(), invocation_id = %call.id, trace_id = %call.trace.trace_id_hex(), error = %format!("{e:?}"), "invocation error detail");
                Err(InvokeError::from_wasmtime(runtime, f, &hit, e))
            }
            Ok(Ok(())) => Err(InvokeError::Failed {
                function: f.name().to_string(),
                reason: "the function returned without sending a response".into(),
            }),
            Err(e) => Err(InvokeError::Failed {
                function: f.name().to_string(),
                reason: format!("the invocation task failed: {e}"),
            }),
        },
    }
}

fn too_large(f: &Deployed, max: u64) -> Response<Body> {
    text_response(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "request body is larger than function {}'s limit of {} bytes (limits.max_body)",
            f.name(),
            max
        ),
    )
}

/// A response body held to `limits.max_response`: past it, the body fails (the connection is
/// cut, so the caller cannot take a truncated body for a whole one) and the log says why. A body
/// that ends because its guest failed (trapped, timed out) fails the same way.
struct ResponseCap {
    left: u64,
    max: u64,
    call: Arc<Call>,
    failed: tokio::sync::oneshot::Receiver<bool>,
}

impl ResponseCap {
    fn wrap(self, inner: Body) -> Body {
        use futures::StreamExt as _;
        let Self {
            mut left,
            max,
            call,
            mut failed,
        } = self;
        let function = call.function.clone();
        let name = function.clone();
        let frames = http_body_util::BodyStream::new(inner).map(move |frame| {
            let frame = frame?;
            if let Some(data) = frame.data_ref() {
                let n = data.len() as u64;
                if n > left {
                    tracing::warn!(function = %function, invocation_id = %call.id, trace_id = %call.trace.trace_id_hex(), limit = max, "the response body passed limits.max_response; cut");
                    return Err(format!(
                        "function {function} sent a response body larger than its limit of {} \
                         (limits.max_response)",
                        crate::model::size_text(max)
                    )
                    .into());
                }
                left -= n;
            }
            Ok(frame)
        });
        // At the end of the body: if the guest failed, the end is a failure. (A guest that
        // finished its body normally may still be running; then nothing is waited for.)
        let end = futures::stream::once(async move {
            match failed.try_recv() {
                Ok(true) => Some(Err::<hyper::body::Frame<Bytes>, BoxError>(
                    format!("function {name} failed while writing its response body").into(),
                )),
                _ => None,
            }
        })
        .filter_map(std::future::ready);
        http_body_util::StreamBody::new(frames.chain(end)).boxed_unsync()
    }
}

/// A request body that fails once more than `max` bytes have arrived (for bodies without a
/// `content-length`, which is checked up front), and notes that it did.
struct LimitedBody<B> {
    inner: B,
    remaining: u64,
    max: u64,
    over: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// Once over the limit: bytes of the rest read and dropped so far.
    drained: Option<u64>,
}

impl<B> LimitedBody<B> {
    fn new(inner: B, max: u64) -> Self {
        Self {
            inner,
            remaining: max,
            max,
            over: None,
            drained: None,
        }
    }

    /// Sets `over` when the body passes the limit.
    fn noting(mut self, over: Arc<std::sync::atomic::AtomicBool>) -> Self {
        self.over = Some(over);
        self
    }
}

impl<B: RequestBody> hyper::body::Body for LimitedBody<B> {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        use std::task::Poll;
        let this = &mut *self;
        let too_large = || wasmtime_wasi_http::Error::HttpRequestBodySize(Some(this.max));
        if let Some(drained) = &mut this.drained {
            // Over the limit: read and drop the rest (up to LINGER more bytes) before failing,
            // so that the caller, still sending, gets its 413 instead of a reset connection.
            loop {
                match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        *drained += frame.data_ref().map_or(0, |d| d.len() as u64);
                        if *drained > http_trigger::LINGER {
                            return Poll::Ready(Some(Err(too_large())));
                        }
                    }
                    Poll::Ready(_) => return Poll::Ready(Some(Err(too_large()))),
                    Poll::Pending => return Poll::Pending,
                }
            }
        }
        match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    if len > this.remaining {
                        if let Some(over) = &this.over {
                            over.store(true, std::sync::atomic::Ordering::Relaxed);
                        }
                        this.drained = Some(0);
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                    this.remaining -= len;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            other => other.map(|o| o.map(|r| r.map_err(Into::into))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// The kind of a typed error an event function returns (the WIT `error` variant).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestErrorKind {
    /// The event can never succeed: not retried, dead-lettered at once.
    InvalidEvent,
    /// Trying again may help.
    Retryable,
    /// The function failed; trying again may help.
    Internal,
}

impl GuestErrorKind {
    /// Whether another attempt may succeed.
    pub fn is_retryable(self) -> bool {
        !matches!(self, GuestErrorKind::InvalidEvent)
    }

    /// The WIT name of the case.
    pub fn as_str(self) -> &'static str {
        match self {
            GuestErrorKind::InvalidEvent => "invalid-event",
            GuestErrorKind::Retryable => "retryable",
            GuestErrorKind::Internal => "internal",
        }
    }
}

impl std::fmt::Display for GuestErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How an event invocation failed: the function's own typed error, or a host-side failure.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// The function returned an `error` of the WIT interface.
    #[error("function {function} returned error {kind}: {message}")]
    Guest {
        /// The function's name.
        function: String,
        /// Which case of the WIT `error` it returned.
        kind: GuestErrorKind,
        /// The message the function gave with it.
        message: String,
    },
    /// The host could not get an answer from the function: busy, timed out, trapped or failed.
    #[error(transparent)]
    Invoke(#[from] InvokeError),
}

impl EventError {
    /// Whether another attempt may succeed: everything but the guest's `invalid-event` (traps,
    /// timeouts and busy functions included).
    pub fn is_retryable(&self) -> bool {
        match self {
            EventError::Guest { kind, .. } => kind.is_retryable(),
            EventError::Invoke(_) => true,
        }
    }
}

/// Runs an event function on one event.
pub async fn event(
    runtime: &Runtime,
    f: &Deployed,
    event: &GuestEvent,
    waiter: Waiter,
    call: &Arc<Call>,
) -> Result<Option<GuestEvent>, EventError> {
    let started = std::time::Instant::now();
    let result = run_event(runtime, f, event, waiter, call).await;
    let mode = match waiter {
        Waiter::Caller => "sync",
        Waiter::Worker => "async",
    };
    match &result {
        Ok(_) => count(runtime, f, call, mode, None, started),
        Err(EventError::Invoke(e)) => count(runtime, f, call, mode, Some(e), started),
        Err(e @ EventError::Guest { .. }) => finish(
            runtime,
            f,
            call,
            mode,
            ("guest_error", None),
            true,
            started,
            Some(e as &dyn std::fmt::Display),
        ),
    }
    result
}

async fn run_event(
    runtime: &Runtime,
    f: &Deployed,
    event: &GuestEvent,
    waiter: Waiter,
    call: &Arc<Call>,
) -> Result<Option<GuestEvent>, EventError> {
    let Prepared::Event(pre) = &f.prepared else {
        return Err(InvokeError::Failed {
            function: f.name().to_string(),
            reason: "it is an HTTP function, not an event function".into(),
        }
        .into());
    };
    let _permit = acquire(f, waiter).await?;
    let hit = Arc::new(LimitsHit::default());
    let mut store = new_store(f.prepared.engine(), new_state(runtime, f, &hit, call));
    let run = async {
        let instance = pre.instantiate_async(&mut store).await?;
        instance
            .ferry_function_handler()
            .call_handle(&mut store, event)
            .await
    };
    let timeout = f.record.limits.timeout + Duration::from_millis(50);
    let result = match tokio::time::timeout(timeout, run).await {
        Ok(r) => r,
        Err(_) => Err(wasmtime::Error::new(crate::engine::DeadlineExceeded)),
    };
    match result {
        Ok(Ok(out)) => Ok(out),
        Ok(Err(e)) => {
            let (kind, message) = match e {
                GuestError::InvalidEvent(m) => (GuestErrorKind::InvalidEvent, m),
                GuestError::Retryable(m) => (GuestErrorKind::Retryable, m),
                GuestError::Internal(m) => (GuestErrorKind::Internal, m),
            };
            Err(EventError::Guest {
                function: f.name().to_string(),
                kind,
                message,
            })
        }
        Err(e) => {
            tracing::debug!(function = f.name(), invocation_id = %call.id, trace_id = %call.trace.trace_id_hex(), error = %format!("{e:?}"), "invocation error detail");
            Err(InvokeError::from_wasmtime(runtime, f, &hit, e).into())
        }
    }
}

/// Serves a CloudEvent POSTed to an event function: the result event comes back in the request's
/// mode (binary or structured), or 204 when the function returns none.
async fn event_over_http<B: RequestBody>(
    runtime: &Runtime,
    f: &Deployed,
    req: Request<B>,
    call: &Arc<Call>,
) -> Response<Body> {
    if req.method() != http::Method::POST {
        let mut resp = text_response(
            StatusCode::METHOD_NOT_ALLOWED,
            format!(
                "function {} is an event function: POST it a CloudEvent (binary or structured mode)",
                f.name()
            ),
        );
        resp.headers_mut()
            .insert(http::header::ALLOW, http::HeaderValue::from_static("POST"));
        return resp;
    }
    let max_body = f.record.limits.max_body;
    if let Some(len) = http_trigger::content_length(&req).filter(|len| *len > max_body) {
        http_trigger::linger(req.into_body(), len, max_body).await;
        return too_large(f, max_body);
    }
    let (parts, body) = req.into_parts();
    let body = match LimitedBody::new(body, max_body).collect().await {
        Ok(b) => b.to_bytes(),
        Err(wasmtime_wasi_http::Error::HttpRequestBodySize(_)) => return too_large(f, max_body),
        Err(e) => {
            return text_response(
                StatusCode::BAD_REQUEST,
                format!("failed to read the request body: {e:?}"),
            )
        }
    };
    let (mut event, mode) = match ferry_triggers::cloudevents::from_headers(&parts.headers, body) {
        Ok(ok) => ok,
        Err(e) => {
            return text_response(StatusCode::BAD_REQUEST, format!("invalid CloudEvent: {e}"))
        }
    };
    // The event's own trace context wins over the request's (which `call` was made from).
    let call = &if event.extensions.iter().any(|(k, _)| k == "traceparent") {
        Arc::new(Call::with_id(
            call.id.clone(),
            f.name.clone(),
            TraceContext::from_event(&event, None),
            call.trigger,
        ))
    } else {
        call.clone()
    };
    call.trace.inject_event(&mut event);
    let guest_event = crate::guest_event::to_guest(&event);
    match self::event(runtime, f, &guest_event, Waiter::Caller, call).await {
        #[allow(
            clippy::expect_used,
            reason = "a StatusCode and a body cannot make the builder fail"
        )]
        Ok(None) => Response::builder()
            .status(StatusCode::NO_CONTENT)
            .body(ferry_triggers::http::full_body(Bytes::new()))
            .expect("static response is valid"),
        Ok(Some(out)) => match crate::guest_event::from_guest(out) {
            Ok(mut out) => {
                call.trace.inject_event_if_absent(&mut out);
                out.to_http(mode)
            }
            Err(e) => {
                let msg = format!("function {} returned an invalid event: {e}", f.name());
                tracing::warn!(function = f.name(), invocation_id = %call.id, trace_id = %call.trace.trace_id_hex(), "{msg}");
                text_response(StatusCode::INTERNAL_SERVER_ERROR, msg)
            }
        },
        #[allow(
            clippy::expect_used,
            reason = "a StatusCode and a static header name and value cannot make the builder fail"
        )]
        Err(EventError::Guest {
            function,
            kind,
            message,
        }) => {
            let status = match kind {
                GuestErrorKind::InvalidEvent => StatusCode::UNPROCESSABLE_ENTITY,
                GuestErrorKind::Retryable => StatusCode::SERVICE_UNAVAILABLE,
                GuestErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            };
            let body = serde_json::json!({ "error": message, "kind": kind.as_str(), "function": function });
            Response::builder()
                .status(status)
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(ferry_triggers::http::full_body(body.to_string()))
                .expect("static response is valid")
        }
        Err(EventError::Invoke(e)) => {
            tracing::warn!(function = f.name(), invocation_id = %call.id, trace_id = %call.trace.trace_id_hex(), error = %e, "invoke failed");
            e.response()
        }
    }
}
