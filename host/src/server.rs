//! `ferry serve`: opens the store, restores functions, binds the public and admin listeners and
//! runs every trigger on one `JoinSet` until Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ferry_triggers::cloudevents::CloudEvent;
use ferry_triggers::http::{
    full_body, text_response, AsyncOptions, Body, HttpOptions, HttpPort, HttpTrigger,
};
use ferry_triggers::nats::{EventFailure, EventPort, NatsBinding, NatsTrigger};
use ferry_triggers::{Shutdown, Trigger};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::api::{self, AdminState};
use crate::delivery::callback;
use crate::delivery::record::{Header, Mode, Payload, StoredEvent};
use crate::delivery::{Delivery, DeliveryOptions, SubmitError, SubmitRequest};
use crate::deploy::Deployer;
use crate::engine::{EngineOptions, Runtime, World};
use crate::manifest::Ceilings;
use crate::registry::{Deployed, Registry};
use crate::store::{SledStore, Store};

/// Everything `ferry serve` can be told.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub data_dir: PathBuf,
    pub admin_token: Option<String>,
    pub max_upload: u64,
    pub engine: EngineOptions,
    pub max_timeout: Duration,
    pub delivery: DeliveryOptions,
    /// `--callback-secret`; generated and kept in the store when absent.
    pub callback_secret: Option<String>,
    /// `--nats`: the NATS server for NATS triggers.
    pub nats: Option<String>,
}

/// The runtime side of the HTTP trigger.
struct Gateway {
    runtime: Arc<Runtime>,
    registry: Arc<Registry>,
    delivery: Arc<Delivery>,
}

fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(full_body(value.to_string()))
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
        let mode = match options.delivery.as_deref().map(|m| (m, Mode::parse(m))) {
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
        match crate::invoke::event(&self.runtime, &f, &crate::cloudevent::to_guest(&event)).await {
            Ok(None) => Ok(None),
            Ok(Some(out)) => crate::cloudevent::from_guest(out).map(Some).map_err(|e| {
                failure(
                    false,
                    format!("function {function} returned an invalid event: {e}"),
                )
            }),
            Err(
                e @ crate::invoke::EventFailure::Guest {
                    kind: "invalid-event",
                    ..
                },
            ) => Err(failure(false, e.to_string())),
            Err(e) => Err(failure(true, e.to_string())),
        }
    }

    fn bindings(&self) -> tokio::sync::watch::Receiver<Vec<NatsBinding>> {
        self.registry.nats_bindings()
    }
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| {
        let flag = if what == "admin" { "--admin-listen (FERRY_ADMIN_LISTEN)" } else { "--listen (FERRY_LISTEN)" };
        format!("failed to listen on {addr} for the {what} listener; is another `ferry serve` running? Stop it or choose another address with {flag}")
    })
}

pub async fn serve(opts: ServeOptions) -> anyhow::Result<()> {
    let started = Instant::now();
    // Listen first: a busy port must fail before anything is created or restored.
    let public = bind(opts.listen, "public").await?;
    let admin = bind(opts.admin_listen, "admin").await?;
    let store = Arc::new(SledStore::open(&opts.data_dir)?);
    let data_dir = std::fs::canonicalize(&opts.data_dir).unwrap_or_else(|_| opts.data_dir.clone());
    println!("ferry: data directory {}", data_dir.display());
    let runtime = Runtime::new(&opts.engine)?;
    let registry = Arc::new(Registry::default());
    let ceilings = Ceilings {
        max_memory: opts.engine.max_memory,
        max_concurrency: opts.engine.max_instances,
        max_timeout: opts.max_timeout,
    };
    let deployer = Arc::new(Deployer::new(
        runtime.clone(),
        store.clone(),
        registry.clone(),
        ceilings,
        opts.nats.is_some(),
    ));
    let restored = tokio::task::block_in_place(|| deployer.restore())?;
    tracing::info!(
        functions = restored.functions,
        from_cache = restored.from_cache,
        compiled = restored.compiled,
        failed = restored.failed,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "restored functions"
    );

    let public_addr = public.local_addr()?;
    let admin_addr = admin.local_addr()?;
    let public_url = format!("http://{public_addr}");

    let callback_secret = match opts.callback_secret.clone() {
        Some(s) => s,
        None => match store.setting("callback_secret")? {
            Some(s) => s,
            None => {
                let s = callback::generate_secret()?;
                store.put_setting("callback_secret", &s)?;
                store.flush()?;
                s
            }
        },
    };
    let delivery = Delivery::start(
        runtime.clone(),
        registry.clone(),
        store.clone(),
        DeliveryOptions {
            public_url: public_url.clone(),
            callback_secret,
            journal_dir: opts.data_dir.clone(),
            ..opts.delivery.clone()
        },
    )?;

    let nats = match &opts.nats {
        Some(url) => Some(ferry_triggers::nats::connect(url).await?),
        None => None,
    };

    let admin_state = Arc::new(AdminState {
        deployer: deployer.clone(),
        runtime: runtime.clone(),
        public_url: public_url.clone(),
        token: opts.admin_token.clone(),
        max_upload: opts.max_upload,
        started,
        delivery: delivery.clone(),
        nats: nats.clone(),
    });

    let (handle, shutdown) = Shutdown::new();
    let mut tasks = JoinSet::new();
    let gateway = Arc::new(Gateway {
        runtime,
        registry,
        delivery,
    });
    let http = HttpTrigger::new(public, gateway.clone(), HttpOptions::default());
    if let Some(client) = nats {
        let trigger = NatsTrigger::new(client, gateway.clone());
        let shutdown = shutdown.clone();
        tasks.spawn(async move { (NatsTrigger::<Gateway>::KIND, trigger.run(shutdown).await) });
    }
    {
        let shutdown = shutdown.clone();
        tasks.spawn(async move { (HttpTrigger::<Gateway>::KIND, http.run(shutdown).await) });
    }
    {
        let mut shutdown = shutdown.clone();
        let app = api::router(admin_state);
        tasks.spawn(async move {
            let result = axum::serve(admin, app)
                .with_graceful_shutdown(async move { shutdown.requested().await })
                .await
                .context("admin listener failed");
            ("admin", result)
        });
    }

    // The one line scripts and tests wait for.
    println!("ferry: serving functions on {public_url} and the admin API on http://{admin_addr}");

    let result = tokio::select! {
        _ = shutdown_signal() => {
            tracing::info!("shutting down");
            Ok(())
        }
        Some(done) = tasks.join_next() => match done {
            Ok((kind, Ok(()))) => Err(anyhow::anyhow!("the {kind} listener stopped unexpectedly")),
            Ok((kind, Err(e))) => Err(e.context(format!("the {kind} listener failed"))),
            Err(e) => Err(anyhow::anyhow!("a listener task panicked: {e}")),
        },
    };
    handle.trigger();
    while let Some(done) = tasks.join_next().await {
        if let Ok((kind, Err(e))) = done {
            tracing::warn!(trigger = kind, error = %format!("{e:#}"), "stopped with an error");
        }
    }
    result
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return ctrl_c.await.unwrap_or(()),
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
