//! The callback sender: POSTs an invocation's final status document to the caller's URL, signed
//! per Standard Webhooks, and records the outcome: delivered, retried with backoff (honouring
//! `Retry-After` on 429/503), dead-lettered after the last attempt, or given up on a 410.

use std::time::Duration;

use tracing::Instrument;

use super::record::{now_ms, Callback, CallbackStatus, Invocation};
use super::store::Queue;
use super::{signature, Delivery};

/// Why a callback was not delivered.
struct NotDelivered {
    error: String,
    /// Whether another attempt may succeed (not after a 410 or a refused URL).
    retryable: bool,
    /// The receiver's `Retry-After`, if it sent one with 429 or 503.
    retry_after: Option<Duration>,
}

impl NotDelivered {
    fn new(error: impl Into<String>, retryable: bool) -> Self {
        Self {
            error: error.into(),
            retryable,
            retry_after: None,
        }
    }
}

impl Delivery {
    /// A trigger's outbound GET under the callback policy (the same allow-list, the same check
    /// of every address at connect time, no redirects followed).
    pub async fn fetch(
        &self,
        req: ferry_triggers::Fetch,
    ) -> Result<ferry_triggers::Fetched, String> {
        let url =
            url::Url::parse(&req.url).map_err(|e| format!("{:?} is not a URL: {e}", req.url))?;
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(format!("{} must be http or https", req.url));
        }
        self.guard
            .check(url.as_str())
            .await
            .map_err(|e| format!("the poll URL is refused: {e}"))?;
        let mut get = self.http.get(url).timeout(req.timeout);
        for (k, v) in &req.headers {
            get = get.header(k.as_str(), v.as_str());
        }
        let mut resp = get.send().await.map_err(|e| {
            let mut cause: &dyn std::error::Error = &e;
            while let Some(next) = cause.source() {
                cause = next;
            }
            format!("GET {} failed: {cause}", req.url)
        })?;
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let mut body = bytes::BytesMut::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| format!("reading {} failed: {e}", req.url))?
        {
            if (body.len() + chunk.len()) as u64 > req.max_bytes {
                return Err(format!(
                    "{} answered more than {} bytes",
                    req.url, req.max_bytes
                ));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(ferry_triggers::Fetched {
            status,
            headers,
            body: body.freeze(),
        })
    }

    /// POSTs an invocation's final state to its callback URL, signed.
    pub(super) async fn deliver_callback(&self, id: &str) {
        let span = tracing::info_span!("delivery.callback", invocation_id = %id);
        if let Err(e) = self.try_deliver_callback(id).instrument(span).await {
            tracing::error!(invocation_id = %id, error = %format!("{e:#}"), "recording a callback failed");
        }
        self.dequeue(Queue::Callbacks, id);
    }

    async fn try_deliver_callback(&self, id: &str) -> anyhow::Result<()> {
        let Some(inv) = self.store.get(id)? else {
            return Ok(());
        };
        let Some(cb) = inv
            .callback
            .clone()
            .filter(|c| c.status == CallbackStatus::Pending)
        else {
            // Delivered meanwhile (by another host, say): end the lease.
            return self.store.put(&inv);
        };
        let outcome = self.send_callback(&inv, &cb).await?;
        self.record_callback(inv, outcome)
    }

    /// One POST of the status document to `cb.url`.
    async fn send_callback(
        &self,
        inv: &Invocation,
        cb: &Callback,
    ) -> anyhow::Result<Result<(), NotDelivered>> {
        let body = serde_json::to_vec(&self.view(inv))?;
        let secret = self
            .registry
            .get(&inv.function)
            .and_then(|f| f.record.delivery.callback_secret.clone())
            .unwrap_or_else(|| self.options.callback_secret.clone());
        let key = signature::decode_secret(&secret).map_err(anyhow::Error::msg)?;
        let timestamp = now_ms() / 1000;
        let signed = signature::sign(&key, &inv.id, timestamp, &body);
        let duration_ms: u64 = inv.history.iter().map(|a| a.duration_ms).sum();
        // The whole check again at every delivery (names are resolved again, the port counts):
        // what a name points at may have changed since the submit.
        let url = match self.guard.check(&cb.url).await {
            Ok(url) => url,
            Err(e) => {
                return Ok(Err(NotDelivered::new(
                    format!("callback URL refused: {e}"),
                    false,
                )))
            }
        };
        let trace = inv.origin.child_span();
        let started = std::time::Instant::now();
        let host = url.host_str().unwrap_or_default().to_string();
        let mut request = self.http.post(url);
        if let Some(state) = &trace.state {
            request = request.header("tracestate", state.as_str());
        }
        let sent = request
            .header("traceparent", trace.traceparent())
            .header("content-type", "application/json")
            .header("webhook-id", inv.id.as_str())
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signed)
            .header("ferry-function", inv.function.as_str())
            .header("ferry-outcome", inv.status.as_str())
            .header("ferry-attempts", inv.attempts.to_string())
            .header("ferry-duration-ms", duration_ms.to_string())
            .body(body)
            .send()
            .await;
        if crate::otel::enabled() {
            use opentelemetry::KeyValue;
            let (status, error) = match &sent {
                Ok(resp) if resp.status().is_success() => (Some(resp.status().as_u16()), None),
                Ok(resp) => (
                    Some(resp.status().as_u16()),
                    Some(format!("the receiver answered {}", resp.status())),
                ),
                Err(e) => (None, Some(format!("sending failed: {e}"))),
            };
            let mut attributes = vec![
                KeyValue::new("http.request.method", "POST"),
                KeyValue::new("server.address", host),
                KeyValue::new("faas.invocation_id", inv.id.clone()),
                KeyValue::new("ferry.callback.attempt", i64::from(cb.attempts) + 1),
            ];
            if let Some(status) = status {
                attributes.push(KeyValue::new(
                    "http.response.status_code",
                    i64::from(status),
                ));
            }
            crate::otel::span(
                "ferry.callback",
                crate::otel::Kind::Client,
                &trace,
                started.elapsed(),
                attributes,
                error,
            );
        }
        Ok(match sent {
            Ok(resp) if resp.status().is_success() => Ok(()),
            Ok(resp) if resp.status() == reqwest::StatusCode::GONE => {
                Err(NotDelivered::new("the receiver answered 410 Gone", false))
            }
            Ok(resp) => {
                let status = resp.status();
                let retry_after = matches!(status.as_u16(), 429 | 503)
                    .then(|| {
                        resp.headers()
                            .get("retry-after")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.trim().parse::<u64>().ok())
                    })
                    .flatten()
                    .map(Duration::from_secs);
                Err(NotDelivered {
                    retry_after,
                    ..NotDelivered::new(format!("the receiver answered {status}"), true)
                })
            }
            Err(e) => Err(NotDelivered::new(format!("sending failed: {e}"), true)),
        })
    }

    /// Stores the outcome of a callback attempt.
    fn record_callback(
        &self,
        mut inv: Invocation,
        outcome: Result<(), NotDelivered>,
    ) -> anyhow::Result<()> {
        let now = now_ms();
        let age = Duration::from_millis(now.saturating_sub(inv.created_ms));
        let (function, id, trace_id) =
            (inv.function.clone(), inv.id.clone(), inv.origin.trace_id());
        let Some(cb) = inv.callback.as_mut() else {
            return Ok(());
        };
        cb.due_ms = None;
        cb.attempts += 1;
        match outcome {
            Ok(()) => {
                cb.status = CallbackStatus::Delivered;
                cb.last_error = None;
                self.runtime.metrics().callback("delivered");
            }
            Err(failed) => {
                cb.last_error = Some(failed.error.clone());
                let policy = self.options.callback_retry;
                let next = failed
                    .retryable
                    .then(|| policy.next(cb.attempts, age, fastrand::f64()))
                    .flatten();
                match next {
                    Some(delay) => {
                        let delay = failed
                            .retry_after
                            .map(|a| a.min(policy.max))
                            .unwrap_or(delay);
                        cb.due_ms = Some(now + delay.as_millis() as u64);
                        self.runtime.metrics().callback("retry");
                        tracing::info!(function = %function, invocation_id = %id, %trace_id, attempt = cb.attempts, error = %failed.error, "callback failed; will retry");
                    }
                    None if failed.retryable => {
                        cb.status = CallbackStatus::DeadLettered;
                        self.runtime.metrics().callback("dead_lettered");
                        tracing::warn!(function = %function, invocation_id = %id, %trace_id, attempts = cb.attempts, error = %failed.error, "callback dead-lettered");
                    }
                    None => {
                        cb.status = CallbackStatus::Failed;
                        self.runtime.metrics().callback("failed");
                        tracing::warn!(function = %function, invocation_id = %id, %trace_id, error = %failed.error, "callback failed; not retrying");
                    }
                }
            }
        }
        inv.updated_ms = now;
        self.store.put(&inv)
    }
}
