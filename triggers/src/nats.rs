//! The NATS trigger: CloudEvents on NATS subjects to event functions.
//!
//! Messages carry events in binary mode (`ce-` headers, `content-type`, data as payload) or
//! structured mode (the event as JSON, with `content-type: application/cloudevents+json` or with
//! no headers at all, as the CloudEvents NATS binding 1.0.2 and the SDKs send it), decoded with
//! [`crate::cloudevents`]. Each binding is a queue
//! subscription (several hosts in one queue group share the work). A result event goes to the
//! binding's `reply` subject and, for request-reply, to the message's reply inbox; results use the
//! input's mode unless the binding says otherwise. Core NATS is at most once: a failed event is
//! logged (and answered with an error to a requester), never redelivered. A message that is not a
//! valid CloudEvent goes to the binding's dead-letter subject with the reason in `Ferry-Error`
//! and never blocks the subject.
//!
//! The bindings come from the runtime through a watch channel: a deploy that adds, changes or
//! removes NATS triggers is reconciled while running. async-nats reconnects with backoff and
//! restores subscriptions by itself.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::cloudevents::{from_headers, CloudEvent, ContentMode, ExtensionValue};
use crate::port::{
    parse_section, ConfigError, EventFailure, FunctionInfo, FunctionKind, Runtime, Sections,
    TriggerKind,
};
use crate::{Shutdown, Trigger};
use serde::Deserialize;

/// One `[[trigger.nats]]` of one function, resolved.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NatsBinding {
    /// The function the events go to.
    pub function: String,
    /// Subject to subscribe to; wildcards allowed.
    pub subject: String,
    /// Queue group; hosts in the same group share the messages.
    pub queue: String,
    /// Where result events are published, if anywhere.
    pub reply: Option<String>,
    /// Where messages that are not valid CloudEvents go.
    pub dead_letter: String,
    /// The mode of result events; None: the input's.
    pub output: Option<ContentMode>,
    /// JetStream stream: a durable consumer, at least once. None: core NATS, at most once.
    pub stream: Option<String>,
    /// Deliveries of one event before it is dead-lettered (JetStream).
    pub max_attempts: u32,
    /// Redelivery delay after the first failure, doubling up to `backoff_max` (JetStream).
    pub backoff_initial: Duration,
    /// Ceiling of the redelivery delay (JetStream).
    pub backoff_max: Duration,
    /// How long the server waits for an ack before redelivering (JetStream): longer than the
    /// function's timeout.
    pub ack_wait: Duration,
}

impl NatsBinding {
    /// The durable consumer name: the same on every host, so they share the work.
    pub fn durable_name(&self) -> String {
        // FNV-1a of the subject: stable across hosts and builds.
        let hash = self.subject.bytes().fold(0xcbf29ce484222325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100000001b3)
        });
        format!("ferry_{}_{:08x}", self.function, hash as u32)
    }

    /// The delay before redelivery after `failed` deliveries.
    pub fn backoff(&self, failed: u32) -> Duration {
        crate::backoff(self.backoff_initial, self.backoff_max, failed)
    }
}

/// The NATS trigger's registration: `[[trigger.nats]]` sections, for event functions.
pub const KIND: TriggerKind = TriggerKind {
    name: "nats",
    accepts: &[FunctionKind::Event],
    validate,
    validate_all: |_| Ok(()),
    disabled_hint:
        "this host runs without NATS: start it with --nats nats://HOST:4222 (or FERRY_NATS)",
};

/// One `[[trigger.nats]]` section as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NatsSection {
    subject: String,
    queue: Option<String>,
    reply: Option<String>,
    stream: Option<String>,
    dead_letter: Option<String>,
    /// `binary` or `structured`: the mode of result events (default: the input's).
    format: Option<String>,
}

fn validate(function: &str, sections: &[toml::Table]) -> Result<(), ConfigError> {
    for (i, section) in sections.iter().enumerate() {
        let s: NatsSection = parse_section("nats", i, section)?;
        s.check(function, i)?;
    }
    Ok(())
}

impl NatsSection {
    fn check(&self, function: &str, i: usize) -> Result<(), ConfigError> {
        let bad = |key: &str, m: String| ConfigError::at("nats", i, key, m);
        validate_subject(&self.subject, true).map_err(|m| bad("subject", m))?;
        if let Some(stream) = &self.stream {
            if stream.is_empty() || stream.contains(['.', '*', '>', ' ', '\t']) {
                return Err(bad(
                    "stream",
                    format!("{stream:?} is not a stream name (no spaces, `.`, `*` or `>`)"),
                ));
            }
        }
        for (k, v) in [("reply", &self.reply), ("dead_letter", &self.dead_letter)] {
            if let Some(v) = v {
                validate_subject(v, false).map_err(|m| bad(k, m))?;
            }
        }
        if let Some(reply) = &self.reply {
            if subject_matches(&self.subject, reply) {
                return Err(bad(
                    "reply",
                    format!("{reply:?} matches the trigger's own subject {:?}: results would feed back into the function", self.subject),
                ));
            }
        }
        if let Some(f) = &self.format {
            if f != "binary" && f != "structured" {
                return Err(bad(
                    "format",
                    format!("{f:?}: use \"binary\" or \"structured\""),
                ));
            }
        }
        let queue = self.queue.as_deref().unwrap_or(function);
        if queue.is_empty() || queue.contains(char::is_whitespace) {
            return Err(bad("queue", "a queue group name has no spaces".into()));
        }
        Ok(())
    }

    fn binding(self, f: &FunctionInfo) -> NatsBinding {
        NatsBinding {
            function: f.name.clone(),
            queue: self.queue.unwrap_or_else(|| f.name.clone()),
            dead_letter: self
                .dead_letter
                .unwrap_or_else(|| format!("ferry.deadletter.{}", f.name)),
            subject: self.subject,
            reply: self.reply,
            output: match self.format.as_deref() {
                Some("binary") => Some(ContentMode::Binary),
                Some("structured") => Some(ContentMode::Structured),
                _ => None,
            },
            stream: self.stream,
            max_attempts: f.max_attempts,
            backoff_initial: f.backoff_initial,
            backoff_max: f.backoff_max,
            ack_wait: f.timeout + Duration::from_secs(5),
        }
    }
}

/// The bindings of every function's sections (those that do not parse are skipped: deploys
/// refuse them).
pub fn bindings(all: &[Sections]) -> Vec<NatsBinding> {
    all.iter()
        .filter(|f| f.function.kind == FunctionKind::Event)
        .flat_map(|f| {
            f.sections.iter().enumerate().filter_map(|(i, section)| {
                let s: NatsSection = parse_section("nats", i, section).ok()?;
                s.check(&f.function.name, i).ok()?;
                Some(s.binding(&f.function))
            })
        })
        .collect()
}

/// Connects to NATS. The client retries the first connection and reconnects with backoff
/// (doubling from 100 ms to 5 s) forever, logging each change of state.
pub async fn connect(url: &str) -> anyhow::Result<async_nats::Client> {
    let options = async_nats::ConnectOptions::new()
        .name("ferry")
        .retry_on_initial_connect()
        .max_reconnects(None)
        .reconnect_delay_callback(|attempts| {
            let ms = 100u64.saturating_mul(1 << attempts.min(6));
            Duration::from_millis(ms.min(5_000))
        })
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => tracing::info!("nats connected"),
                async_nats::Event::Disconnected => {
                    tracing::warn!("nats disconnected; reconnecting")
                }
                other => tracing::info!(event = %other, "nats event"),
            }
        });
    options
        .connect(url)
        .await
        .map_err(|e| anyhow::anyhow!("failed to connect to NATS at {url}: {e}"))
}

/// The NATS trigger of one process.
pub struct NatsTrigger<R> {
    client: async_nats::Client,
    runtime: Arc<R>,
    /// Events handled at once per binding.
    concurrency: usize,
    /// After shutdown, how long events in flight may take to finish.
    shutdown_grace: Duration,
}

impl<R: Runtime> NatsTrigger<R> {
    /// The NATS trigger on `client` for the functions of `runtime`; after shutdown, events in
    /// flight get `shutdown_grace` to finish.
    pub fn new(client: async_nats::Client, runtime: Arc<R>, shutdown_grace: Duration) -> Self {
        Self {
            client,
            runtime,
            concurrency: 64,
            shutdown_grace,
        }
    }
}

/// Runs each message's handler as a task of its own: at most `concurrency` at once per binding,
/// all tracked, so that shutdown can wait for the ones in flight.
#[derive(Clone)]
struct Handlers {
    tracker: TaskTracker,
    slots: Arc<Semaphore>,
}

impl Handlers {
    fn new(tracker: &TaskTracker, concurrency: usize) -> Self {
        Self {
            tracker: tracker.clone(),
            slots: Arc::new(Semaphore::new(concurrency)),
        }
    }

    /// Waits for a free slot, then runs `work` in `span`.
    async fn spawn(&self, span: tracing::Span, work: impl Future<Output = ()> + Send + 'static) {
        let Ok(permit) = self.slots.clone().acquire_owned().await else {
            return;
        };
        self.tracker.spawn(
            async move {
                work.await;
                drop(permit);
            }
            .instrument(span),
        );
    }
}

impl<R: Runtime> Trigger for NatsTrigger<R> {
    const KIND: &'static str = "nats";

    async fn run(self, mut shutdown: Shutdown) -> anyhow::Result<()> {
        let mut sections = self.runtime.sections(KIND.name);
        let mut running: HashMap<NatsBinding, JoinHandle<()>> = HashMap::new();
        let handlers = TaskTracker::new();
        loop {
            let wanted = bindings(&sections.borrow_and_update());
            running.retain(|b, task| {
                let keep = wanted.contains(b);
                if !keep {
                    tracing::info!(function = %b.function, subject = %b.subject, "trigger.nats unsubscribed");
                    task.abort();
                }
                keep
            });
            self.runtime.report(
                KIND.name,
                serde_json::json!({ "subscriptions": wanted.len() }),
            );
            for b in wanted {
                if running.contains_key(&b) {
                    continue;
                }
                let task = tokio::spawn(subscription(
                    self.client.clone(),
                    self.runtime.clone(),
                    b.clone(),
                    Handlers::new(&handlers, self.concurrency),
                ));
                running.insert(b, task);
            }
            tokio::select! {
                changed = sections.changed() => if changed.is_err() { break },
                _ = shutdown.requested() => break,
            }
        }
        // Stop taking messages, then let the events in flight finish (JetStream redelivers any
        // that do not within the grace period; they were not acked).
        for (_, task) in running {
            task.abort();
        }
        handlers.close();
        if tokio::time::timeout(self.shutdown_grace, handlers.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                in_flight = handlers.len(),
                "trigger.nats: events still running after the grace period"
            );
        }
        Ok(())
    }
}

/// One binding: subscribe (retrying while NATS is unreachable) and handle messages.
async fn subscription<R: Runtime>(
    client: async_nats::Client,
    runtime: Arc<R>,
    b: NatsBinding,
    handlers: Handlers,
) {
    if b.stream.is_some() {
        return jetstream_subscription(client, runtime, b, handlers).await;
    }
    let mut delay = Duration::from_millis(100);
    let mut sub = loop {
        match client
            .queue_subscribe(b.subject.clone(), b.queue.clone())
            .await
        {
            Ok(sub) => break sub,
            Err(e) => {
                tracing::warn!(function = %b.function, subject = %b.subject, error = %e, "failed to subscribe; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    };
    tracing::info!(function = %b.function, subject = %b.subject, queue = %b.queue, "trigger.nats subscribed");
    let b = Arc::new(b);
    while let Some(msg) = sub.next().await {
        let (client, runtime, b) = (client.clone(), runtime.clone(), b.clone());
        let span = tracing::info_span!("trigger.nats.message", messaging.system = "nats", function = %b.function, subject = %msg.subject);
        handlers
            .spawn(span, async move {
                handle_message(&client, &*runtime, &b, msg).await
            })
            .await;
    }
}

/// Runs the binding's function (its current version) on one event.
async fn invoke<R: Runtime>(
    runtime: &R,
    b: &NatsBinding,
    event: CloudEvent,
) -> Result<Option<CloudEvent>, EventFailure> {
    match runtime.function(&b.function) {
        // Boxed: the invocation's future is large, and the handler's task (moved a few times
        // on its way to the scheduler, once per event) then holds only a pointer to it.
        Some(f) => Box::pin(runtime.invoke_event(f, event)).await,
        None => Err(EventFailure {
            retryable: false,
            message: format!("function {} no longer exists", b.function),
        }),
    }
}

/// NATS headers as an `http::HeaderMap` (lower-case names), for the CloudEvents binding.
pub fn http_headers(headers: Option<&async_nats::HeaderMap>) -> http::HeaderMap {
    let mut out = http::HeaderMap::new();
    for (name, values) in headers.into_iter().flat_map(|h| h.iter()) {
        let Ok(name) =
            http::HeaderName::from_bytes(name.to_string().to_ascii_lowercase().as_bytes())
        else {
            continue;
        };
        for v in values {
            if let Ok(v) = http::HeaderValue::from_str(v.as_str()) {
                out.append(name.clone(), v);
            }
        }
    }
    out
}

/// An `http::HeaderMap` as NATS headers.
pub fn nats_headers(headers: &http::HeaderMap) -> async_nats::HeaderMap {
    let mut out = async_nats::HeaderMap::new();
    for (name, value) in headers {
        if let Ok(v) = value.to_str() {
            out.insert(name.as_str(), v);
        }
    }
    out
}

async fn handle_message<R: Runtime>(
    client: &async_nats::Client,
    runtime: &R,
    b: &NatsBinding,
    msg: async_nats::Message,
) {
    runtime.count("nats", &b.function, "received");
    let headers = http_headers(msg.headers.as_ref());
    let (mut event, mode) = match from_headers(&headers, msg.payload.clone()) {
        Ok(ok) => ok,
        Err(invalid) => {
            runtime.count("nats", &b.function, "dead_lettered");
            let h = malformed_dead_letter(b, &msg, &invalid);
            publish(client, &b.dead_letter, h, msg.payload.clone()).await;
            if let Some(inbox) = &msg.reply {
                let mut h = async_nats::HeaderMap::new();
                h.insert(
                    "Ferry-Error",
                    format!("invalid CloudEvent: {invalid}").as_str(),
                );
                publish(client, inbox, h, Bytes::new()).await;
            }
            return;
        }
    };
    event.adopt_trace_headers(&headers);
    let result = invoke(runtime, b, event).await;
    let outcome = if result.is_ok() { "ok" } else { "failed" };
    runtime.count("nats", &b.function, outcome);
    match result {
        Ok(Some(out)) => {
            let (h, body) = out.to_headers(b.output.unwrap_or(mode));
            let h = nats_headers(&h);
            if let Some(reply) = &b.reply {
                publish(client, reply, h.clone(), body.clone()).await;
            }
            if let Some(inbox) = &msg.reply {
                publish(client, inbox, h, body).await;
            }
        }
        Ok(None) => {
            if let Some(inbox) = &msg.reply {
                publish(client, inbox, async_nats::HeaderMap::new(), Bytes::new()).await;
            }
        }
        Err(failure) => {
            // Core NATS is at most once: the event is not redelivered.
            tracing::warn!(error = %failure.message, "event function failed");
            if let Some(inbox) = &msg.reply {
                let mut h = async_nats::HeaderMap::new();
                h.insert("Ferry-Error", failure.message.as_str());
                publish(client, inbox, h, Bytes::new()).await;
            }
        }
    }
}

/// A JetStream binding: a durable pull consumer on the stream (created with the binding's subject
/// if missing), recreated after errors such as a lost connection.
async fn jetstream_subscription<R: Runtime>(
    client: async_nats::Client,
    runtime: Arc<R>,
    b: NatsBinding,
    handlers: Handlers,
) {
    use async_nats::jetstream::{self, consumer};
    let js = jetstream::new(client.clone());
    let stream_name = b.stream.clone().unwrap_or_default();
    let durable = b.durable_name();
    let b = Arc::new(b);
    let streams = Arc::new(StreamLookup::default());
    let mut delay = Duration::from_millis(100);
    loop {
        let consumer: Result<consumer::PullConsumer, String> = async {
            let stream = js
                .get_or_create_stream(jetstream::stream::Config {
                    name: stream_name.clone(),
                    subjects: vec![b.subject.clone()],
                    ..Default::default()
                })
                .await
                .map_err(|e| format!("stream {stream_name}: {e}"))?;
            stream
                .get_or_create_consumer(
                    &durable,
                    consumer::pull::Config {
                        durable_name: Some(durable.clone()),
                        filter_subject: b.subject.clone(),
                        ack_policy: consumer::AckPolicy::Explicit,
                        ack_wait: b.ack_wait,
                        ..Default::default()
                    },
                )
                .await
                .map_err(|e| format!("consumer {durable}: {e}"))
        }
        .await;
        let messages = match consumer {
            Ok(c) => c.messages().await.map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        match messages {
            Ok(mut messages) => {
                tracing::info!(function = %b.function, subject = %b.subject, stream = %stream_name, consumer = %durable, "trigger.nats consuming");
                delay = Duration::from_millis(100);
                while let Some(next) = messages.next().await {
                    match next {
                        Ok(msg) => {
                            let (client, runtime, b, streams) =
                                (client.clone(), runtime.clone(), b.clone(), streams.clone());
                            let span = tracing::info_span!("trigger.nats.jetstream", messaging.system = "nats", function = %b.function, subject = %msg.subject);
                            handlers
                                .spawn(span, async move {
                                    handle_jetstream(&client, &*runtime, &b, &streams, msg).await
                                })
                                .await;
                        }
                        Err(e) => {
                            tracing::warn!(function = %b.function, error = %e, "jetstream consumer failed; recreating");
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(function = %b.function, error = %e, "jetstream consumer unavailable; retrying")
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// At least once: ack (confirmed by the server) after success; nak with backoff after a
/// retryable failure; after the last attempt, publish the event with the error to the
/// dead-letter subject and terminate it. A malformed message is dead-lettered at once, and so is
/// one the server delivers more than `max_attempts` times (its ack or nak was lost), so no path
/// redelivers past the limit.
async fn handle_jetstream<R: Runtime>(
    client: &async_nats::Client,
    runtime: &R,
    b: &NatsBinding,
    streams: &StreamLookup,
    msg: async_nats::jetstream::Message,
) {
    use async_nats::jetstream::AckKind;
    let delivered = msg.info().map(|i| i.delivered.max(1) as u32).unwrap_or(1);
    runtime.count("nats", &b.function, "received");
    let headers = http_headers(msg.headers.as_ref());
    let (mut event, mode) = match from_headers(&headers, msg.payload.clone()) {
        Ok(ok) => ok,
        Err(invalid) => {
            let h = malformed_dead_letter(b, &msg, &invalid);
            match publish_durably(client, streams, &b.dead_letter, h, msg.payload.clone()).await {
                Ok(()) => {
                    runtime.count("nats", &b.function, "dead_lettered");
                    settle(&msg, true).await
                }
                Err(e) => {
                    tracing::error!(subject = %b.dead_letter, error = %e, "publishing a dead letter failed; the message will be redelivered")
                }
            }
            return;
        }
    };
    event.adopt_trace_headers(&headers);
    if delivered > b.max_attempts {
        let error = format!(
            "delivered {delivered} times, more than max_attempts ({}): earlier attempts were not settled in time (ack_wait)",
            b.max_attempts
        );
        if dead_letter(client, b, streams, &msg, event, mode, delivered, &error).await {
            runtime.count("nats", &b.function, "dead_lettered");
        }
        return;
    }
    let failure = match invoke(runtime, b, event.clone()).await {
        Ok(out) => {
            let published = match (out, &b.reply) {
                (Some(out), Some(reply)) => {
                    let (h, body) = out.to_headers(b.output.unwrap_or(mode));
                    publish_durably(client, streams, reply, nats_headers(&h), body)
                        .await
                        .map_err(|e| format!("publishing the result to {reply:?} failed: {e}"))
                }
                _ => Ok(()),
            };
            match published {
                Ok(()) => {
                    runtime.count("nats", &b.function, "acked");
                    return settle(&msg, false).await;
                }
                // The result is part of success: try again rather than lose it.
                Err(e) => EventFailure {
                    retryable: true,
                    message: e,
                },
            }
        }
        Err(failure) => failure,
    };
    if failure.retryable && delivered < b.max_attempts {
        let delay = b.backoff(delivered);
        tracing::info!(attempt = delivered, retry_in_ms = delay.as_millis() as u64, error = %failure.message, "event failed; redelivering");
        runtime.count("nats", &b.function, "nakked");
        if let Err(e) = msg.ack_with(AckKind::Nak(Some(delay))).await {
            tracing::warn!(error = %e, "nak failed; the server redelivers after ack_wait");
        }
        return;
    }
    if dead_letter(
        client,
        b,
        streams,
        &msg,
        event,
        mode,
        delivered,
        &failure.message,
    )
    .await
    {
        runtime.count("nats", &b.function, "dead_lettered");
    }
}

/// Publishes the event with the error to the binding's dead-letter subject (durably when a
/// stream captures it), then terminates the message. If the dead letter cannot be published,
/// the message is left to be redelivered rather than lost (and this returns false).
#[allow(clippy::too_many_arguments)]
async fn dead_letter(
    client: &async_nats::Client,
    b: &NatsBinding,
    streams: &StreamLookup,
    msg: &async_nats::jetstream::Message,
    mut event: CloudEvent,
    mode: ContentMode,
    delivered: u32,
    error: &str,
) -> bool {
    event.set_extension("ferryerror", ExtensionValue::String(error.to_string()));
    event.set_extension("ferryattempts", ExtensionValue::Integer(delivered.into()));
    event.set_extension("ferrysubject", msg.subject.as_str().into());
    event.set_extension("ferryfunction", b.function.as_str().into());
    let (h, body) = event.to_headers(mode);
    if let Err(e) = publish_durably(client, streams, &b.dead_letter, nats_headers(&h), body).await {
        tracing::error!(subject = %b.dead_letter, error = %e, "publishing a dead letter failed; the event will be redelivered");
        return false;
    }
    tracing::warn!(attempts = delivered, %error, "event dead-lettered");
    settle(msg, true).await;
    true
}

/// Which subjects a JetStream stream captures, looked up from the server and remembered for a
/// few seconds (streams are rarely created or removed; a lookup per message would halve the
/// event rate).
#[derive(Default)]
struct StreamLookup {
    known: std::sync::Mutex<HashMap<String, (std::time::Instant, bool)>>,
}

impl StreamLookup {
    const FRESH_FOR: Duration = Duration::from_secs(5);

    async fn captured(&self, client: &async_nats::Client, subject: &str) -> Result<bool, String> {
        let now = std::time::Instant::now();
        if let Some((at, captured)) = self.lock().get(subject) {
            if now.duration_since(*at) < Self::FRESH_FOR {
                return Ok(*captured);
            }
        }
        use async_nats::jetstream::context::GetStreamByNameErrorKind;
        let js = async_nats::jetstream::new(client.clone());
        let captured = match js.stream_by_subject(subject).await {
            Ok(_) => true,
            Err(e) if e.kind() == GetStreamByNameErrorKind::NotFound => false,
            Err(e) => return Err(format!("looking up the stream of {subject:?}: {e}")),
        };
        self.lock().insert(subject.to_string(), (now, captured));
        Ok(captured)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (std::time::Instant, bool)>> {
        // A poisoned cache is still a valid cache.
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Publishes for a JetStream trigger. When a stream captures the subject, waits for the stream's
/// acknowledgement, so an acked input never loses its result; otherwise it is a core publish,
/// flushed, to the subject's subscribers (core NATS promises no more).
async fn publish_durably(
    client: &async_nats::Client,
    streams: &StreamLookup,
    subject: &str,
    headers: async_nats::HeaderMap,
    payload: Bytes,
) -> Result<(), String> {
    if !streams.captured(client, subject).await? {
        client
            .publish_with_headers(subject.to_string(), headers, payload)
            .await
            .map_err(|e| e.to_string())?;
        return client.flush().await.map_err(|e| e.to_string());
    }
    let js = async_nats::jetstream::new(client.clone());
    let ack = js
        .publish_with_headers(subject.to_string(), headers, payload)
        .await
        .map_err(|e| e.to_string())?;
    ack.await.map(drop).map_err(|e| e.to_string())
}

/// Acks (or, with `term`, terminates) and waits for the server to confirm; retries a few times.
async fn settle(msg: &async_nats::jetstream::Message, term: bool) {
    use async_nats::jetstream::AckKind;
    for attempt in 1..=3u64 {
        let kind = if term { AckKind::Term } else { AckKind::Ack };
        match msg.double_ack_with(kind).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(attempt, error = %e, "ack not confirmed; retrying");
                tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
            }
        }
    }
}

/// The dead letter of a message that is not a valid CloudEvent: the original payload and
/// headers, plus the reason, the subject and the function.
fn malformed_dead_letter(
    b: &NatsBinding,
    msg: &async_nats::Message,
    invalid: &crate::cloudevents::Invalid,
) -> async_nats::HeaderMap {
    tracing::warn!(error = %invalid, "malformed CloudEvent; dead-lettered");
    let mut h = msg.headers.clone().unwrap_or_default();
    h.insert(
        "Ferry-Error",
        format!("invalid CloudEvent: {invalid}").as_str(),
    );
    h.insert("Ferry-Subject", msg.subject.as_str());
    h.insert("Ferry-Function", b.function.as_str());
    h
}

async fn publish(
    client: &async_nats::Client,
    subject: &str,
    headers: async_nats::HeaderMap,
    payload: Bytes,
) {
    if let Err(e) = client
        .publish_with_headers(subject.to_string(), headers, payload)
        .await
    {
        tracing::warn!(%subject, error = %e, "publishing failed");
    }
}

/// Checks a subject (or a subscription pattern when `wildcards`): dot-separated non-empty
/// tokens without spaces; `*` as a whole token and `>` as the last token only in patterns.
pub fn validate_subject(subject: &str, wildcards: bool) -> Result<(), String> {
    let tokens: Vec<&str> = subject.split('.').collect();
    for (i, t) in tokens.iter().enumerate() {
        if t.is_empty() || t.chars().any(|c| c.is_whitespace()) {
            return Err(format!(
                "{subject:?} is not a NATS subject: tokens are non-empty and have no spaces"
            ));
        }
        let wild = *t == "*" || (*t == ">" && i == tokens.len() - 1);
        if (t.contains('*') || t.contains('>')) && !(wildcards && wild) {
            return Err(if wildcards {
                format!("{subject:?}: `*` must be a whole token and `>` the last token")
            } else {
                format!("{subject:?}: wildcards are not allowed here")
            });
        }
    }
    Ok(())
}

/// The connection state for health reports: `connected`, `disconnected` or `pending`.
pub fn state(client: &async_nats::Client) -> &'static str {
    match client.connection_state() {
        async_nats::connection::State::Connected => "connected",
        async_nats::connection::State::Disconnected => "disconnected",
        async_nats::connection::State::Pending => "pending",
    }
}

/// Whether `subject` matches the subscription `pattern` (`*` one token, `>` the rest).
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut p = pattern.split('.');
    let mut s = subject.split('.');
    loop {
        match (p.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching() {
        assert!(subject_matches("orders.*", "orders.echoed"));
        assert!(subject_matches("orders.>", "orders.a.b"));
        assert!(subject_matches(">", "x"));
        assert!(subject_matches("a.b", "a.b"));
        assert!(!subject_matches("orders.*", "orders.a.b"));
        assert!(!subject_matches("orders.>", "orders"));
        assert!(!subject_matches("a.b", "a.c"));
        assert!(!subject_matches("a", "a.b"));
    }

    #[test]
    fn subjects() {
        for ok in [
            "orders",
            "orders.created",
            "orders.*",
            "orders.>",
            "*.created",
            ">",
        ] {
            assert!(validate_subject(ok, true).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "orders.",
            ".orders",
            "or ders",
            "orders.>.x",
            "ord*ers",
            "orders.a>",
        ] {
            assert!(validate_subject(bad, true).is_err(), "{bad}");
        }
        assert!(validate_subject("orders.*", false).is_err());
        assert!(validate_subject("orders.out", false).is_ok());
    }

    #[test]
    fn headers_round_trip() {
        let mut h = http::HeaderMap::new();
        h.insert("ce-id", http::HeaderValue::from_static("1"));
        h.insert("content-type", http::HeaderValue::from_static("text/plain"));
        let back = http_headers(Some(&nats_headers(&h)));
        assert_eq!(back.get("ce-id").unwrap(), "1");
        assert_eq!(back.get("content-type").unwrap(), "text/plain");
    }
}
