//! The moving parts of the delivery engine: the scanner that finds due work, the workers that
//! run attempts, the callback sender, and the janitor that enforces retention.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tokio::sync::{mpsc, Mutex};
use tracing::Instrument;

use super::record::{now_ms, Attempt, Invocation, Mode, Op, Payload, Status};
use super::{callback, Delivery};
use crate::invoke::{self, EventFailure};

/// Largest response body kept as an invocation's result.
const MAX_RESULT_BODY: usize = 1 << 20;

/// Why an attempt failed, and whether trying again can help.
struct Failure {
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

pub(super) fn spawn_workers(
    this: &Arc<Delivery>,
    ready: mpsc::Receiver<String>,
    ff: mpsc::Receiver<String>,
    callbacks: mpsc::Receiver<String>,
) {
    let pool = |rx: mpsc::Receiver<String>, size: usize, callbacks: bool| {
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..size {
            let (this, rx) = (this.clone(), rx.clone());
            tokio::spawn(async move {
                while let Some(id) = next(&rx).await {
                    if callbacks {
                        this.deliver_callback(&id).await;
                    } else {
                        this.attempt(&id).await;
                    }
                }
            });
        }
    };
    pool(ready, this.options.workers, false);
    pool(ff, this.options.workers, false);
    pool(callbacks, 8, true);
    tokio::spawn(this.clone().scan(false));
    tokio::spawn(this.clone().scan(true));
    tokio::spawn(this.clone().janitor());
}

/// Rebuilds a stored HTTP request, marked with the invocation id and attempt number.
fn stored_request(
    inv: &Invocation,
    method: &str,
    path: &str,
    headers: &[super::record::Header],
    body: &[u8],
) -> Result<http::Request<invoke::StoredBody>, http::Error> {
    let mut req = http::Request::builder().method(method).uri(path);
    for super::record::Header(name, value) in headers {
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

async fn next(rx: &Mutex<mpsc::Receiver<String>>) -> Option<String> {
    rx.lock().await.recv().await
}

impl Delivery {
    /// Finds due attempts (or callbacks) and hands them to workers; sleeps until the next one
    /// is due or new work arrives.
    async fn scan(self: Arc<Self>, callbacks: bool) {
        let (wake, tx, prefix) = if callbacks {
            (&self.wake_callbacks, &self.callbacks, "cb:")
        } else {
            (&self.wake_scanner, &self.ready, "")
        };
        loop {
            let due = match self.store.due(now_ms(), callbacks, 256) {
                Ok(d) => d,
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "scanning due work failed");
                    Vec::new()
                }
            };
            let mut handed = 0;
            for (_, id) in &due {
                let key = format!("{prefix}{id}");
                if self.claim(&key) {
                    if tx.send(id.clone()).await.is_err() {
                        return;
                    }
                    handed += 1;
                }
            }
            if handed > 0 && due.len() == 256 {
                continue;
            }
            let until_next = match self.store.next_due(callbacks) {
                Ok(Some(at)) => Duration::from_millis(at.saturating_sub(now_ms())),
                _ => Duration::from_secs(1),
            };
            // Claimed work stays in the index until it finishes: poll at a modest pace.
            let nap = until_next.clamp(Duration::from_millis(20), Duration::from_secs(1));
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(nap) => {}
            }
        }
    }

    /// Runs one attempt of an invocation and records its outcome.
    async fn attempt(&self, id: &str) {
        let span = tracing::info_span!("delivery.attempt", invocation_id = %id);
        async {
            if let Err(e) = self.try_attempt(id).await {
                tracing::error!(error = %format!("{e:#}"), "recording an attempt failed");
            }
        }
        .instrument(span)
        .await;
        self.release(id);
    }

    async fn try_attempt(&self, id: &str) -> anyhow::Result<()> {
        let Some(mut inv) = self.store.invocation(id)? else {
            return Ok(());
        };
        if inv.status.is_final() {
            if let Some(due) = inv.due_ms.take() {
                self.store.apply(vec![Op::Unschedule {
                    due_ms: due,
                    id: id.to_string(),
                    callback: false,
                }])?;
            }
            return Ok(());
        }
        // "running" is not written to the store: it would cost a write per attempt and mean
        // nothing after a crash. The status view overlays it from the in-memory set.
        inv.attempts += 1;
        self.running
            .lock()
            .expect("running lock")
            .insert(id.to_string());

        let started_ms = now_ms();
        let started = Instant::now();
        let outcome = self.execute(&inv).await;
        self.running.lock().expect("running lock").remove(id);
        let duration_ms = started.elapsed().as_millis() as u64;
        let now = now_ms();
        inv.updated_ms = now;
        inv.history.push(Attempt {
            number: inv.attempts,
            started_ms,
            duration_ms,
            error: outcome.as_ref().err().map(|f| f.message.clone()),
        });
        let mut ops = Vec::new();
        if let Some(due) = inv.due_ms.take() {
            ops.push(Op::Unschedule {
                due_ms: due,
                id: id.to_string(),
                callback: false,
            });
        }
        match outcome {
            Ok(result) => {
                inv.status = Status::Succeeded;
                inv.result = Some(result);
                inv.error = None;
            }
            Err(failure) => {
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
                        let due = now + delay.as_millis() as u64;
                        inv.status = Status::Pending;
                        inv.due_ms = Some(due);
                        ops.push(Op::Schedule {
                            due_ms: due,
                            id: id.to_string(),
                            callback: false,
                        });
                        tracing::info!(function = %inv.function, attempt = inv.attempts, retry_in_ms = delay.as_millis() as u64, error = %failure.message, "attempt failed; will retry");
                    }
                    (None, Mode::StoreAndForward) => {
                        inv.status = Status::DeadLettered;
                        ops.push(Op::MarkDead(id.to_string()));
                        tracing::warn!(function = %inv.function, attempts = inv.attempts, error = %failure.message, "dead-lettered");
                    }
                    (None, Mode::FireAndForget) => {
                        inv.status = Status::Failed;
                        tracing::warn!(function = %inv.function, error = %failure.message, "fire-and-forget invocation failed");
                    }
                }
            }
        }
        let finished = inv.status.is_final();
        if finished {
            if let Some(cb) = inv.callback.as_mut() {
                cb.due_ms = Some(now);
                ops.push(Op::Schedule {
                    due_ms: now,
                    id: id.to_string(),
                    callback: true,
                });
            }
        }
        ops.push(Op::Put(Box::new(inv)));
        self.store.apply(ops)?;
        if finished {
            let _ = self.done.send(id.to_string());
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
        match &inv.payload {
            Payload::Http {
                method,
                path,
                headers,
                body,
            } => {
                let req = stored_request(inv, method, path, headers, body).map_err(|e| {
                    Failure::permanent(format!("the stored request is invalid: {e}"))
                })?;
                let resp = invoke::http_result(&self.runtime, f, req)
                    .await
                    .map_err(|e| Failure::retry(e.to_string()))?;
                let (parts, body) = resp.into_parts();
                let body = collect_limited(body, MAX_RESULT_BODY).await.map_err(|e| {
                    Failure::retry(format!("reading the function's response failed: {e}"))
                })?;
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
                        result["body_base64"] =
                            json!(base64::engine::general_purpose::STANDARD.encode(&body));
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
            Payload::Event { event } => {
                let event = event
                    .event()
                    .map_err(|e| Failure::permanent(format!("the stored event is invalid: {e}")))?;
                let guest = crate::cloudevent::to_guest(&event);
                match invoke::event(&self.runtime, &f, &guest).await {
                    Ok(None) => Ok(Value::Null),
                    Ok(Some(out)) => match crate::cloudevent::from_guest(out) {
                        Ok(e) => {
                            Ok(serde_json::from_slice(&e.to_structured()).unwrap_or(Value::Null))
                        }
                        Err(e) => Err(Failure::permanent(format!(
                            "function {} returned an invalid event: {e}",
                            inv.function
                        ))),
                    },
                    Err(
                        e @ EventFailure::Guest {
                            kind: "invalid-event",
                            ..
                        },
                    ) => Err(Failure::permanent(e.to_string())),
                    Err(e) => Err(Failure::retry(e.to_string())),
                }
            }
        }
    }

    /// POSTs an invocation's final state to its callback URL, signed.
    async fn deliver_callback(&self, id: &str) {
        let key = format!("cb:{id}");
        let span = tracing::info_span!("delivery.callback", invocation_id = %id);
        if let Err(e) = self.try_deliver_callback(id).instrument(span).await {
            tracing::error!(invocation_id = %id, error = %format!("{e:#}"), "recording a callback failed");
        }
        self.release(&key);
    }

    async fn try_deliver_callback(&self, id: &str) -> anyhow::Result<()> {
        let Some(mut inv) = self.store.invocation(id)? else {
            return Ok(());
        };
        let Some(cb) = inv.callback.clone().filter(|c| c.status == "pending") else {
            if let Some(due) = inv.callback.as_ref().and_then(|c| c.due_ms) {
                self.store.apply(vec![Op::Unschedule {
                    due_ms: due,
                    id: id.to_string(),
                    callback: true,
                }])?;
            }
            return Ok(());
        };
        let body = serde_json::to_vec(&self.view(&inv))?;
        let secret = self
            .registry
            .get(&inv.function)
            .and_then(|f| f.record.delivery.callback_secret.clone())
            .unwrap_or_else(|| self.options.callback_secret.clone());
        let key = callback::decode_secret(&secret).map_err(anyhow::Error::msg)?;
        let timestamp = now_ms() / 1000;
        let signature = callback::sign(&key, &inv.id, timestamp, &body);
        let duration_ms: u64 = inv.history.iter().map(|a| a.duration_ms).sum();
        let outcome = match url::Url::parse(&cb.url)
            .map_err(|e| e.to_string())
            .and_then(|u| self.guard.check_literal(&u).map(|_| u))
        {
            Err(e) => Err((format!("callback URL refused: {e}"), false, None)),
            Ok(url) => {
                let sent = self
                    .http
                    .post(url)
                    .header("content-type", "application/json")
                    .header("webhook-id", inv.id.as_str())
                    .header("webhook-timestamp", timestamp.to_string())
                    .header("webhook-signature", signature)
                    .header("ferry-function", inv.function.as_str())
                    .header(
                        "ferry-outcome",
                        serde_json::to_value(inv.status)?.as_str().unwrap_or(""),
                    )
                    .header("ferry-attempts", inv.attempts.to_string())
                    .header("ferry-duration-ms", duration_ms.to_string())
                    .body(body)
                    .send()
                    .await;
                match sent {
                    Ok(resp) if resp.status().is_success() => Ok(()),
                    Ok(resp) if resp.status() == reqwest::StatusCode::GONE => {
                        Err(("the receiver answered 410 Gone".to_string(), false, None))
                    }
                    Ok(resp) => {
                        let status = resp.status();
                        let after = matches!(status.as_u16(), 429 | 503)
                            .then(|| {
                                resp.headers()
                                    .get("retry-after")
                                    .and_then(|v| v.to_str().ok())
                                    .and_then(|v| v.trim().parse::<u64>().ok())
                            })
                            .flatten()
                            .map(Duration::from_secs);
                        Err((format!("the receiver answered {status}"), true, after))
                    }
                    Err(e) => Err((format!("sending failed: {e}"), true, None)),
                }
            }
        };
        let now = now_ms();
        let mut ops = Vec::new();
        let cbm = inv.callback.as_mut().expect("checked above");
        if let Some(due) = cbm.due_ms.take() {
            ops.push(Op::Unschedule {
                due_ms: due,
                id: id.to_string(),
                callback: true,
            });
        }
        cbm.attempts += 1;
        match outcome {
            Ok(()) => {
                cbm.status = "delivered".into();
                cbm.last_error = None;
            }
            Err((error, retryable, retry_after)) => {
                cbm.last_error = Some(error.clone());
                let age = Duration::from_millis(now.saturating_sub(inv.created_ms));
                let policy = self.options.callback_retry;
                let next = retryable
                    .then(|| policy.next(cbm.attempts, age, fastrand::f64()))
                    .flatten();
                match next {
                    Some(delay) => {
                        let delay = retry_after.map(|a| a.min(policy.max)).unwrap_or(delay);
                        let due = now + delay.as_millis() as u64;
                        cbm.due_ms = Some(due);
                        ops.push(Op::Schedule {
                            due_ms: due,
                            id: id.to_string(),
                            callback: true,
                        });
                        tracing::info!(attempt = cbm.attempts, %error, "callback failed; will retry");
                    }
                    None if retryable => {
                        cbm.status = "dead_lettered".into();
                        ops.push(Op::MarkDead(id.to_string()));
                        tracing::warn!(attempts = cbm.attempts, %error, "callback dead-lettered");
                    }
                    None => {
                        cbm.status = "failed".into();
                        tracing::warn!(%error, "callback failed; not retrying");
                    }
                }
            }
        }
        inv.updated_ms = now;
        ops.push(Op::Put(Box::new(inv)));
        self.store.apply(ops)?;
        Ok(())
    }

    /// Removes finished invocations (and their idempotency keys) after the retention window.
    /// Dead letters stay until they are replayed or purged.
    async fn janitor(self: Arc<Self>) {
        // Sweep often enough that nothing outlives the window by more than a tenth of it.
        let every = (self.options.retention / 10)
            .clamp(Duration::from_millis(100), Duration::from_secs(60));
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let cutoff = now_ms().saturating_sub(self.options.retention.as_millis() as u64);
            let Ok(all) = self.store.invocations() else {
                continue;
            };
            let dead: std::collections::HashSet<String> =
                self.store.dead().unwrap_or_default().into_iter().collect();
            let mut removed = 0;
            for inv in all {
                let callback_pending = inv.callback.as_ref().is_some_and(|c| c.status == "pending");
                if inv.status.is_final()
                    && inv.updated_ms < cutoff
                    && !callback_pending
                    && !dead.contains(&inv.id)
                {
                    let mut ops = vec![Op::Delete(inv.id.clone())];
                    if let Some(k) = inv.idempotency_key {
                        ops.push(Op::DeleteKey(k));
                    }
                    if self.store.apply(ops).is_ok() {
                        removed += 1;
                    }
                }
            }
            if removed > 0 {
                tracing::info!(removed, "removed invocations past retention");
            }
        }
    }
}
