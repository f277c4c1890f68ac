//! The gateway: where the triggers meet the runtime. It implements the one port every trigger
//! uses, [`ferry_triggers::Runtime`], with the registry of deployed functions, the invoker, the
//! delivery engine and the store.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_triggers::cloudevents::CloudEvent;
use ferry_triggers::http::Body;
use ferry_triggers::{
    Accepted, EventFailure, FunctionInfo, Runtime as TriggerRuntime, Sections, StateKey,
    Submission, SubmitFailure,
};
use http::{Request, Response};
use hyper::body::Incoming;
use tokio::sync::watch;

use crate::call::Call;
use crate::delivery::record::{Header, Payload, StoredEvent};
use crate::delivery::{Delivery, SubmitRequest};
use crate::engine::Runtime;
use crate::registry::{Deployed, Registry};
use crate::store::Store;
use crate::trace::TraceContext;

/// The latest state each trigger reported, for `/healthz`.
#[derive(Default)]
pub struct TriggerReports(Mutex<BTreeMap<&'static str, serde_json::Value>>);

impl TriggerReports {
    /// Every report, by trigger kind.
    pub fn all(&self) -> BTreeMap<&'static str, serde_json::Value> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The adapter from the triggers to the runtime.
pub(crate) struct Gateway {
    pub(crate) runtime: Arc<Runtime>,
    pub(crate) registry: Arc<Registry>,
    pub(crate) delivery: Arc<Delivery>,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) reports: Arc<TriggerReports>,
}

impl TriggerRuntime for Gateway {
    type Function = Arc<Deployed>;

    fn function(&self, name: &str) -> Option<Arc<Deployed>> {
        self.registry.get(name)
    }

    fn info(function: &Arc<Deployed>) -> &FunctionInfo {
        &function.info
    }

    async fn invoke_http(&self, f: Arc<Deployed>, req: Request<Incoming>) -> Response<Body> {
        crate::invoke::http(&self.runtime, f, req).await
    }

    async fn invoke_event(
        &self,
        f: Arc<Deployed>,
        mut event: CloudEvent,
    ) -> Result<Option<CloudEvent>, EventFailure> {
        let trace = TraceContext::from_event(&event, None);
        trace.inject_event(&mut event);
        let call = Arc::new(Call::new(f.name.clone(), trace, "nats"));
        let guest = crate::guest_event::to_guest(&event);
        let waiter = crate::invoke::Waiter::Caller;
        match crate::invoke::event(&self.runtime, &f, &guest, waiter, &call).await {
            Ok(None) => Ok(None),
            Ok(Some(out)) => match crate::guest_event::from_guest(out) {
                Ok(mut out) => {
                    call.trace.inject_event_if_absent(&mut out);
                    Ok(Some(out))
                }
                Err(e) => Err(EventFailure {
                    retryable: false,
                    message: format!("function {} returned an invalid event: {e}", f.name()),
                }),
            },
            Err(e) => Err(EventFailure {
                retryable: e.is_retryable(),
                message: e.to_string(),
            }),
        }
    }

    async fn submit(
        &self,
        f: Arc<Deployed>,
        submission: Submission,
    ) -> Result<Accepted, SubmitFailure> {
        let trace = match &submission.payload {
            ferry_triggers::Payload::Http { headers, .. } => {
                let find = |name: &str| {
                    headers
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(name))
                        .map(|(_, v)| v.as_slice())
                };
                TraceContext::continue_or_start(find("traceparent"), find("tracestate"))
            }
            ferry_triggers::Payload::Event(event) => TraceContext::from_event(event, None),
        };
        let payload = match submission.payload {
            ferry_triggers::Payload::Http {
                method,
                path,
                headers,
                body,
            } => Payload::Http {
                method,
                path,
                headers: headers.into_iter().map(|(k, v)| Header(k, v)).collect(),
                body: body.to_vec(),
            },
            ferry_triggers::Payload::Event(event) => Payload::Event {
                event: StoredEvent::new(&event),
            },
        };
        let started = crate::otel::start();
        let receive = started.map(|_| (trace.clone(), submission.trigger, f.name().to_string()));
        let submitted = self
            .delivery
            .submit(SubmitRequest {
                function: f,
                mode: submission.mode,
                payload,
                callback_url: submission.callback_url,
                idempotency_key: submission.idempotency_key,
                replaces_key: None,
                trigger: submission.trigger,
                trace,
            })
            .await;
        if let (Some(started), Some((trace, trigger, name))) = (started, receive) {
            use opentelemetry::KeyValue;
            let mut attributes = vec![
                KeyValue::new("faas.invoked_name", name),
                KeyValue::new("ferry.trigger", trigger),
            ];
            if let Ok((inv, new)) = &submitted {
                attributes.push(KeyValue::new("faas.invocation_id", inv.id.clone()));
                attributes.push(KeyValue::new("ferry.new", *new));
            }
            crate::otel::span(
                "ferry.receive",
                crate::otel::Kind::Server,
                &trace,
                started.elapsed(),
                attributes,
                submitted.as_ref().err().map(ToString::to_string),
            );
        }
        let (inv, new) = submitted?;
        Ok(Accepted {
            status_url: self.delivery.status_url(&inv.id),
            id: inv.id,
            status: inv.status.as_str().to_string(),
            mode: inv.mode,
            new,
        })
    }

    async fn invocation(
        &self,
        id: &str,
        wait: Option<Duration>,
    ) -> anyhow::Result<Option<serde_json::Value>> {
        let found = match wait {
            Some(w) => self.delivery.wait(id, w).await?,
            None => self.delivery.get(id)?,
        };
        Ok(match found {
            Some(inv) => Some(serde_json::to_value(self.delivery.view(&inv))?),
            None => None,
        })
    }

    fn state(&self, key: &StateKey) -> anyhow::Result<Option<Vec<u8>>> {
        self.store.trigger_state(key.kind, &key.function, &key.key)
    }

    fn put_state(&self, key: &StateKey, value: &[u8]) -> anyhow::Result<()> {
        self.store
            .put_trigger_state(key.kind, &key.function, &key.key, value)?;
        self.store.flush()
    }

    fn claim(&self, key: &StateKey, ttl: std::time::Duration) -> anyhow::Result<bool> {
        self.store.claim(key.kind, &key.function, &key.key, ttl)
    }

    fn report(&self, kind: &'static str, status: serde_json::Value) {
        self.reports
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(kind, status);
    }

    fn count(&self, trigger: &'static str, function: &str, outcome: &'static str) {
        self.runtime
            .metrics()
            .trigger_event(trigger, function, outcome);
    }

    fn sections(&self, kind: &'static str) -> watch::Receiver<Arc<[Sections]>> {
        self.registry.sections(kind)
    }

    async fn fetch(
        &self,
        request: ferry_triggers::Fetch,
    ) -> Result<ferry_triggers::Fetched, String> {
        self.delivery.fetch(request).await
    }
}
