//! Workers: run one attempt of an invocation and record its outcome (succeeded, retried with
//! backoff, dead-lettered or failed), then hand finished ones to the callback sender.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tracing::Instrument;

use super::record::{now_ms, Attempt, Header, Invocation, Payload, Status};
use super::store::Queue;
use super::Delivery;
use crate::call::Call;
use crate::invoke;
use crate::model::DeliveryMode;

/// Largest response body kept as an invocation's result.
const MAX_RESULT_BODY: usize = 1 << 20;

/// Why an attempt failed, and whether trying again can help.
pub(super) struct Failure {
    message: String,
    retryable: bool,
    result: Option<Value>,
}

impl Failure {
    fn retry(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: true,
            result: None,
        }
    }

    fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: false,
            result: None,
        }
    }
}

/// How an attempt ended.
enum Outcome {
    Done(Result<Value, Failure>),
    /// The host stopped and the attempt outran the shutdown grace period.
    Interrupted,
}

/// Rebuilds a stored HTTP request, marked with the invocation id and attempt number.
fn stored_request(
    inv: &Invocation,
    method: &str,
    path: &str,
    headers: &[Header],
    body: &[u8],
) -> Result<http::Request<invoke::StoredBody>, http::Error> {
    let mut req = http::Request::builder().method(method).uri(path);
    for Header(name, value) in headers {
        req = req.header(name.as_str(), value.as_slice());
    }
    req.header("ferry-invocation-id", inv.id.as_str())
        .header("ferry-attempt", inv.attempts.to_string())
        .body(invoke::stored_body(Bytes::copy_from_slice(body)))
}

/// Reads a response body of at most `max` bytes.
async fn collect_limited(
    mut body: ferry_triggers::http::Body,
    max: usize,
) -> Result<Bytes, String> {
    let mut out = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        if let Some(data) = frame.data_ref() {
            if out.len() + data.len() > max {
                return Err(format!("the response body is larger than {max} bytes"));
            }
            out.extend_from_slice(data);
        }
    }
    Ok(out.freeze())
}

impl Delivery {
    /// Runs one attempt of an invocation and records its outcome.
    pub(super) async fn attempt(&self, id: &str) {
        let span = tracing::info_span!("delivery.attempt", invocation_id = %id);
        async {
            if let Err(e) = self.try_attempt(id).await {
                tracing::error!(error = %format!("{e:#}"), "recording an attempt failed");
            }
        }
        .instrument(span)
        .await;
        self.dequeue(Queue::Attempts, id);
    }

    async fn try_attempt(&self, id: &str) -> anyhow::Result<()> {
        let Some(mut inv) = self.store.get(id)? else {
            return Ok(());
        };
        if inv.status.is_final() {
            // Finished meanwhile (by another host, say): end the lease.
            return self.store.put(&inv);
        }
        // "running" is not written to the store: it would cost a write per attempt and mean
        // nothing after a crash. The status view overlays it from the in-memory set.
        inv.attempts += 1;
        self.running_ids().insert(id.to_string());
        let started_ms = now_ms();
        let started = Instant::now();
        let outcome = tokio::select! {
            result = self.execute(&inv) => Outcome::Done(result),
            () = self.grace_expired() => Outcome::Interrupted,
        };
        self.running_ids().remove(id);
        inv.history.push(Attempt {
            number: inv.attempts,
            started_ms,
            duration_ms: started.elapsed().as_millis() as u64,
            error: match &outcome {
                Outcome::Done(Err(f)) => Some(f.message.clone()),
                Outcome::Done(Ok(_)) => None,
                Outcome::Interrupted => Some(INTERRUPTED.to_string()),
            },
        });
        self.record_outcome(inv, outcome)
    }

    /// Stores an attempt's outcome, and wakes whoever waits for it.
    fn record_outcome(&self, mut inv: Invocation, outcome: Outcome) -> anyhow::Result<()> {
        let now = now_ms();
        inv.updated_ms = now;
        inv.due_ms = None;
        match outcome {
            Outcome::Done(Ok(result)) => {
                inv.status = Status::Succeeded;
                inv.result = Some(result);
                inv.error = None;
            }
            Outcome::Done(Err(failure)) => {
                failed(&mut inv, failure, now);
                match inv.status {
                    Status::DeadLettered => {
                        self.runtime.metrics().attempt_failed(&inv.function, true)
                    }
                    _ if inv.due_ms.is_some() => {
                        self.runtime.metrics().attempt_failed(&inv.function, false)
                    }
                    _ => {}
                }
            }
            Outcome::Interrupted => interrupted(&mut inv, now),
        }
        let finished = inv.status.is_final();
        if finished {
            if let Some(cb) = inv.callback.as_mut() {
                cb.due_ms = Some(now);
            }
        }
        self.store.put(&inv)?;
        if finished {
            let _ = self.done.send(inv.id);
            self.wake_callbacks.notify_one();
        } else {
            self.wake_scanner.notify_one();
        }
        Ok(())
    }

    async fn execute(&self, inv: &Invocation) -> Result<Value, Failure> {
        let Some(f) = self.registry.get(&inv.function) else {
            return Err(Failure::permanent(format!(
                "function {} no longer exists",
                inv.function
            )));
        };
        let call = Arc::new(Call::with_id(
            inv.id.as_str().into(),
            f.name.clone(),
            inv.origin.child_span(),
            inv.origin.trigger_label(),
        ));
        let loaded;
        let payload = match &inv.payload {
            Some(p) => p,
            None => {
                loaded = self
                    .store
                    .payload(&inv.id)
                    .map_err(|e| {
                        Failure::retry(format!("reading the stored payload failed: {e:#}"))
                    })?
                    .ok_or_else(|| Failure::permanent("the stored payload is missing"))?;
                &loaded
            }
        };
        match payload {
            Payload::Http {
                method,
                path,
                headers,
                body,
            } => {
                let req = stored_request(inv, method, path, headers, body).map_err(|e| {
                    Failure::permanent(format!("the stored request is invalid: {e}"))
                })?;
                let resp = invoke::http_result(&self.runtime, f, req, &call)
                    .await
                    .map_err(|e| Failure::retry(e.to_string()))?;
                http_result(inv, resp).await
            }
            Payload::Event { event } => {
                let mut event = event
                    .event()
                    .map_err(|e| Failure::permanent(format!("the stored event is invalid: {e}")))?;
                call.trace.inject_event(&mut event);
                let guest = crate::guest_event::to_guest(&event);
                let waiter = invoke::Waiter::Worker;
                match invoke::event(&self.runtime, &f, &guest, waiter, &call).await {
                    Ok(None) => Ok(Value::Null),
                    Ok(Some(out)) => match crate::guest_event::from_guest(out) {
                        Ok(mut e) => {
                            call.trace.inject_event_if_absent(&mut e);
                            Ok(serde_json::from_slice(&e.to_structured()).unwrap_or(Value::Null))
                        }
                        Err(e) => Err(Failure::permanent(format!(
                            "function {} returned an invalid event: {e}",
                            inv.function
                        ))),
                    },
                    Err(e) if e.is_retryable() => Err(Failure::retry(e.to_string())),
                    Err(e) => Err(Failure::permanent(e.to_string())),
                }
            }
        }
    }
}

/// A failed attempt: retry after a backoff, or dead-letter (store-and-forward) or fail
/// (fire-and-forget) when no retry is left.
fn failed(inv: &mut Invocation, failure: Failure, now: u64) {
    if failure.result.is_some() {
        inv.result = failure.result;
    }
    inv.error = Some(failure.message.clone());
    let age = Duration::from_millis(now.saturating_sub(inv.created_ms));
    let retry = failure
        .retryable
        .then(|| inv.policy.next(inv.attempts, age, fastrand::f64()))
        .flatten();
    match (retry, inv.mode) {
        (Some(delay), _) => {
            inv.due_at(now + delay.as_millis() as u64);
            tracing::info!(function = %inv.function, invocation_id = %inv.id, trace_id = %inv.origin.trace_id(), attempt = inv.attempts, retry_in_ms = delay.as_millis() as u64, error = %failure.message, "attempt failed; will retry");
        }
        (None, DeliveryMode::StoreAndForward) => {
            inv.status = Status::DeadLettered;
            tracing::warn!(function = %inv.function, invocation_id = %inv.id, trace_id = %inv.origin.trace_id(), attempts = inv.attempts, error = %failure.message, "dead-lettered");
        }
        (None, DeliveryMode::FireAndForget) => {
            inv.status = Status::Failed;
            tracing::warn!(function = %inv.function, invocation_id = %inv.id, trace_id = %inv.origin.trace_id(), error = %failure.message, "fire-and-forget invocation failed");
        }
    }
}

/// What an attempt that the shutdown interrupted records as its error.
const INTERRUPTED: &str = "interrupted: the host stopped during this attempt";

/// An attempt cut short by shutdown does not count: a store-and-forward invocation is due again
/// at once (the next start runs it); a fire-and-forget one is lost, and says so.
fn interrupted(inv: &mut Invocation, now: u64) {
    inv.attempts -= 1;
    match inv.mode {
        DeliveryMode::StoreAndForward => inv.due_at(now),
        DeliveryMode::FireAndForget => {
            inv.status = Status::Failed;
            inv.error =
                Some("lost: the host stopped during this fire-and-forget invocation".to_string());
        }
    }
    tracing::warn!(function = %inv.function, invocation_id = %inv.id, trace_id = %inv.origin.trace_id(), status = ?inv.status, "attempt interrupted by shutdown");
}

/// An HTTP function's response as an invocation result: `{status, headers, body}` (or
/// `body_base64`); a 5xx is a retryable failure that keeps the response.
async fn http_result(
    inv: &Invocation,
    resp: http::Response<ferry_triggers::http::Body>,
) -> Result<Value, Failure> {
    let (parts, body) = resp.into_parts();
    let body = collect_limited(body, MAX_RESULT_BODY)
        .await
        .map_err(|e| Failure::retry(format!("reading the function's response failed: {e}")))?;
    let headers: serde_json::Map<String, Value> = parts
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), json!(String::from_utf8_lossy(v.as_bytes()))))
        .collect();
    let mut result = json!({ "status": parts.status.as_u16(), "headers": headers });
    match std::str::from_utf8(&body) {
        Ok(text) => result["body"] = json!(text),
        Err(_) => {
            use base64::Engine as _;
            result["body_base64"] = json!(base64::engine::general_purpose::STANDARD.encode(&body));
        }
    }
    if parts.status.is_server_error() {
        return Err(Failure {
            message: format!("function {} answered {}", inv.function, parts.status),
            retryable: true,
            result: Some(result),
        });
    }
    Ok(result)
}
