//! The gateway: where the triggers meet the runtime. It implements the ports that
//! `ferry-triggers` defines ([`HttpPort`] for the HTTP trigger, [`EventPort`] for NATS) with the
//! registry of deployed functions, the invoker and the delivery engine.

use std::sync::Arc;
use std::time::Duration;

use ferry_triggers::cloudevents::CloudEvent;
use ferry_triggers::http::{full_body, text_response, AsyncOptions, Body, HttpPort};
use ferry_triggers::nats::{EventFailure, EventPort, NatsBinding};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::delivery::record::{Header, Payload, StoredEvent};
use crate::delivery::{Delivery, SubmitError, SubmitRequest};
use crate::engine::Runtime;
use crate::model::{DeliveryMode, World};
use crate::registry::{Deployed, Registry};

/// The adapter from the triggers to the runtime: it implements each trigger's port.
pub(crate) struct Gateway {
    pub(crate) runtime: Arc<Runtime>,
    pub(crate) registry: Arc<Registry>,
    pub(crate) delivery: Arc<Delivery>,
}

fn json_response(status: StatusCode, value: &impl serde::Serialize) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(full_body(serde_json::to_vec(value).unwrap_or_default()))
        .expect("static headers are valid")
}

impl Gateway {
    /// Reads the request into what the delivery engine stores.
    async fn payload(
        &self,
        f: &Deployed,
        req: Request<Incoming>,
    ) -> Result<Payload, Response<Body>> {
        let max = f.record.limits.max_body;
        let (parts, body) = req.into_parts();
        let body = match http_body_util::Limited::new(body, max as usize).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return Err(text_response(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("request body is larger than function {}'s limit of {max} bytes (limits.max_body)", f.name()),
                ))
            }
            Err(e) => return Err(text_response(StatusCode::BAD_REQUEST, format!("failed to read the request body: {e}"))),
        };
        match f.record.world {
            World::Http => Ok(Payload::Http {
                method: parts.method.to_string(),
                path: parts
                    .uri
                    .path_and_query()
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "/".into()),
                headers: parts
                    .headers
                    .iter()
                    .map(|(k, v)| Header(k.to_string(), v.as_bytes().to_vec()))
                    .collect(),
                body: body.to_vec(),
            }),
            World::Event => match ferry_triggers::cloudevents::from_headers(&parts.headers, body) {
                Ok((event, _)) => Ok(Payload::Event {
                    event: StoredEvent::new(&event),
                }),
                Err(e) => Err(text_response(
                    StatusCode::BAD_REQUEST,
                    format!("invalid CloudEvent: {e}"),
                )),
            },
        }
    }
}

impl HttpPort for Gateway {
    type Target = Arc<Deployed>;

    fn route(&self, path: &str) -> Option<Arc<Deployed>> {
        self.registry.route(path)
    }

    async fn serve(&self, target: Arc<Deployed>, req: Request<Incoming>) -> Response<Body> {
        crate::invoke::http(&self.runtime, target, req).await
    }

    async fn submit(
        &self,
        target: Arc<Deployed>,
        req: Request<Incoming>,
        options: AsyncOptions,
    ) -> Response<Body> {
        let mode = match options
            .delivery
            .as_deref()
            .map(|m| (m, DeliveryMode::parse(m)))
        {
            None => None,
            Some((_, Some(mode))) => Some(mode),
            Some((m, None)) => {
                return text_response(
                    StatusCode::BAD_REQUEST,
                    format!(
                    "Ferry-Delivery: {m:?} is not a mode; use fire-and-forget or store-and-forward"
                ),
                )
            }
        };
        let payload = match self.payload(&target, req).await {
            Ok(p) => p,
            Err(resp) => return resp,
        };
        let submitted = self
            .delivery
            .submit(SubmitRequest {
                function: target,
                mode,
                payload,
                callback_url: options.callback_url,
                idempotency_key: options.idempotency_key,
                replaces_key: None,
            })
            .await;
        match submitted {
            Ok((inv, new)) => {
                let url = self.delivery.status_url(&inv.id);
                let body = serde_json::json!({ "id": inv.id, "status_url": url, "status": inv.status, "mode": inv.mode });
                let mut resp = json_response(StatusCode::ACCEPTED, &body);
                if let Ok(v) = http::HeaderValue::from_str(&url) {
                    resp.headers_mut().insert(http::header::LOCATION, v);
                }
                if !new {
                    resp.headers_mut().insert(
                        "ferry-idempotent-replay",
                        http::HeaderValue::from_static("true"),
                    );
                }
                resp
            }
            Err(e @ SubmitError::BadRequest(_)) => {
                text_response(StatusCode::BAD_REQUEST, e.to_string())
            }
            Err(e @ SubmitError::QueueFull) => {
                let mut resp = text_response(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
                resp.headers_mut().insert(
                    http::header::RETRY_AFTER,
                    http::HeaderValue::from_static("1"),
                );
                resp
            }
            Err(e @ SubmitError::Unavailable(_)) => {
                tracing::error!(error = %e, "submit failed");
                text_response(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            }
        }
    }

    async fn status(&self, id: &str, wait: Option<Duration>) -> Response<Body> {
        let found = match wait {
            Some(w) => self.delivery.wait(id, w).await,
            None => self.delivery.get(id),
        };
        match found {
            Ok(Some(inv)) => json_response(StatusCode::OK, &self.delivery.view(&inv)),
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
}

impl EventPort for Gateway {
    async fn handle(
        &self,
        function: &str,
        event: CloudEvent,
    ) -> Result<Option<CloudEvent>, EventFailure> {
        let failure = |retryable, message: String| EventFailure { retryable, message };
        let Some(f) = self.registry.get(function) else {
            return Err(failure(
                false,
                format!("function {function} no longer exists"),
            ));
        };
        match crate::invoke::event(&self.runtime, &f, &crate::guest_event::to_guest(&event)).await {
            Ok(None) => Ok(None),
            Ok(Some(out)) => crate::guest_event::from_guest(out).map(Some).map_err(|e| {
                failure(
                    false,
                    format!("function {function} returned an invalid event: {e}"),
                )
            }),
            Err(e) => Err(failure(e.is_retryable(), e.to_string())),
        }
    }

    fn bindings(&self) -> tokio::sync::watch::Receiver<Vec<NatsBinding>> {
        self.registry.nats_bindings()
    }
}
