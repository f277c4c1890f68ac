//! `ferry serve`: opens the store, restores functions, binds the public and admin listeners and
//! runs every trigger on one `JoinSet` until Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ferry_triggers::http::{Body, HttpOptions, HttpPort, HttpTrigger};
use ferry_triggers::{Shutdown, Trigger};
use http::{Request, Response};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::api::{self, AdminState};
use crate::deploy::Deployer;
use crate::engine::{EngineOptions, Runtime};
use crate::manifest::Ceilings;
use crate::registry::{Deployed, Registry};
use crate::store::SledStore;

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
}

/// The runtime side of the HTTP trigger.
struct Gateway {
    runtime: Arc<Runtime>,
    registry: Arc<Registry>,
}

impl HttpPort for Gateway {
    type Target = Arc<Deployed>;

    fn route(&self, path: &str) -> Option<Arc<Deployed>> {
        self.registry.route(path)
    }

    async fn serve(&self, target: Arc<Deployed>, req: Request<Incoming>) -> Response<Body> {
        crate::invoke::http(&self.runtime, target, req).await
    }
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("failed to listen on {addr} for the {what} listener"))
}

pub async fn serve(opts: ServeOptions) -> anyhow::Result<()> {
    let started = Instant::now();
    let store = Arc::new(SledStore::open(&opts.data_dir)?);
    let runtime = Runtime::new(&opts.engine)?;
    let registry = Arc::new(Registry::default());
    let ceilings = Ceilings {
        max_memory: opts.engine.max_memory,
        max_concurrency: opts.engine.max_instances,
        max_timeout: opts.max_timeout,
    };
    let deployer = Arc::new(Deployer::new(
        runtime.clone(),
        store,
        registry.clone(),
        ceilings,
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

    let public = bind(opts.listen, "public").await?;
    let admin = bind(opts.admin_listen, "admin").await?;
    let public_addr = public.local_addr()?;
    let admin_addr = admin.local_addr()?;
    let public_url = format!("http://{public_addr}");

    let admin_state = Arc::new(AdminState {
        deployer: deployer.clone(),
        runtime: runtime.clone(),
        public_url: public_url.clone(),
        token: opts.admin_token.clone(),
        max_upload: opts.max_upload,
        started,
    });

    let (handle, shutdown) = Shutdown::new();
    let mut tasks = JoinSet::new();
    let gateway = Arc::new(Gateway { runtime, registry });
    let http = HttpTrigger::new(public, gateway, HttpOptions::default());
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
