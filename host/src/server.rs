//! `ferry serve`: opens the store, restores functions, binds the public and admin listeners and
//! runs every trigger on one `JoinSet` until Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ferry_triggers::http::{HttpOptions, HttpTrigger};
use ferry_triggers::nats::NatsTrigger;
use ferry_triggers::{Shutdown, Trigger};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::api::{self, AdminState};
use crate::delivery::signature;
use crate::delivery::{Delivery, DeliveryOptions};
use crate::deploy::Deployer;
use crate::engine::{EngineOptions, Runtime};
use crate::gateway::{Gateway, TriggerReports};
use crate::manifest::Ceilings;
use crate::registry::Registry;
use crate::store::{Recovery, SledStore, Store};

/// Everything `ferry serve` can be told.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// `--listen`: the public listener (functions, asynchronous submits, status URLs).
    pub listen: SocketAddr,
    /// `--admin-listen`: the admin API's listener.
    pub admin_listen: SocketAddr,
    /// `--data-dir`: the store, the submit journal and the host id live here.
    pub data_dir: PathBuf,
    /// `--token`, `FERRY_TOKEN` or `--token-file`: the admin API's bearer token; without one, the
    /// token kept in the data directory (made on first start) is used.
    pub admin_token: Option<crate::auth::Token>,
    /// `--insecure-no-admin-auth`: no admin authentication (loopback admin listener only).
    pub no_admin_auth: bool,
    /// `--max-upload`: the largest component upload, in bytes.
    pub max_upload: u64,
    /// Engine settings (`--max-instances`, `--max-memory`).
    pub engine: EngineOptions,
    /// The ceilings of functions' limits and the host's defaults (`--max-*`,
    /// `--limit-default`).
    pub ceilings: Ceilings,
    /// Delivery settings; the host fills in its URL, secret, journal, id and lease itself.
    pub delivery: DeliveryOptions,
    /// `--callback-secret`; generated and kept in the store when absent.
    pub callback_secret: Option<String>,
    /// `--nats`: the NATS server for NATS triggers.
    pub nats: Option<String>,
    /// `--cluster`: share function records and components over NATS JetStream.
    pub cluster: Option<ClusterOptions>,
    /// `--quarantine` or `--repair`: what to do when the store is damaged (else refuse to
    /// start).
    pub recovery: Option<Recovery>,
    /// Limits of the public listener itself (`--header-read-timeout`, `--body-read-timeout`,
    /// `--max-header-size`, `--max-connections`).
    pub http: HttpOptions,
    /// `--keep-versions`: how many versions of each function keep their component.
    pub keep_versions: usize,
    /// `--optimized-compile`: make the optimised code of what baseline code serves.
    pub optimized_compile: bool,
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| {
        let flag = if what == "admin" { "--admin-listen (FERRY_ADMIN_LISTEN)" } else { "--listen (FERRY_LISTEN)" };
        format!("failed to listen on {addr} for the {what} listener; is another `ferry serve` running? Stop it or choose another address with {flag}")
    })
}

/// `--cluster` and its settings.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Comma-separated NATS URLs.
    pub servers: String,
    /// The prefix of the bucket names.
    pub prefix: String,
    /// Copies of each bucket and stream (None: 3 when the NATS cluster has three servers or
    /// more, else 1).
    pub replicas: Option<usize>,
}

/// Runs the host until Ctrl-C or SIGTERM (or until a listener fails), then stops cleanly:
/// triggers take no new work, work in flight gets the grace period, the store is flushed.
pub async fn serve(opts: ServeOptions) -> anyhow::Result<()> {
    let started = Instant::now();
    crate::auth::check_no_auth(
        opts.admin_token.as_ref(),
        opts.no_admin_auth,
        opts.admin_listen,
    )?;
    // Listen first: a busy port must fail before anything is created or restored.
    let public = bind(opts.listen, "public").await?;
    let admin = bind(opts.admin_listen, "admin").await?;
    let (store, recovered) = SledStore::open_or_recover(&opts.data_dir, opts.recovery)?;
    let store = Arc::new(store);
    let data_dir = std::fs::canonicalize(&opts.data_dir).unwrap_or_else(|_| opts.data_dir.clone());
    println!("ferry: data directory {}", data_dir.display());
    let admin_token =
        crate::auth::for_serve(opts.admin_token.clone(), opts.no_admin_auth, &data_dir)?;
    match &admin_token {
        Some(_) => println!(
            "ferry: the admin API requires the token kept in {}",
            data_dir.join(crate::auth::TOKEN_FILE).display()
        ),
        None => println!(
            "ferry: WARNING: admin authentication is off (--insecure-no-admin-auth): anyone who \
             can reach the admin listener can deploy code"
        ),
    }
    if let Some(r) = recovered {
        report_recovery(&r);
    } else if let Some(flag) = opts.recovery {
        tracing::info!(?flag, "the store is sound; nothing to recover");
    }
    let runtime = Runtime::new(&EngineOptions {
        own_listeners: vec![public.local_addr()?, admin.local_addr()?],
        ..opts.engine.clone()
    })?;
    let registry = Arc::new(Registry::default());
    // What hosts share: the local store, or the cluster's buckets (compiled code stays local).
    let cluster = match &opts.cluster {
        Some(c) => {
            let client = crate::store::cluster::connect(&c.servers).await?;
            let names = crate::store::cluster::Names::new(&c.prefix)?;
            let c = &crate::server::ClusterOptions {
                replicas: Some(c.replicas.unwrap_or_else(|| {
                    crate::store::cluster::safest_replicas(&client, &c.servers)
                })),
                ..c.clone()
            };
            let replicas = c.replicas.unwrap_or(1);
            crate::store::cluster::check_replicas(&client, replicas)?;
            // Opening is idempotent; a NATS cluster still forming may refuse it for a while.
            let shared = crate::store::cluster::patiently("open the cluster's buckets", || {
                crate::store::cluster::ClusterStore::open(
                    client.clone(),
                    &names,
                    replicas,
                    store.clone(),
                )
            })
            .await?;
            // Refused here when the cluster stores another format than this version's.
            let me = crate::store::members::Member {
                id: host_id(&*store)?,
                version: env!("CARGO_PKG_VERSION").into(),
                format: crate::store::members::FORMAT,
                public_url: format!("http://{}", public.local_addr()?),
                admin_url: format!("http://{}", admin.local_addr()?),
                started_ms: crate::delivery::record::now_ms(),
                heartbeat_ms: 0,
                load: Default::default(),
                stopped: false,
            };
            let members = crate::store::cluster::patiently("join the cluster", || {
                crate::store::members::Members::join(client.clone(), &names, replicas, me.clone())
            })
            .await?;
            let delivery =
                crate::store::cluster::patiently("open the cluster's work queue", || {
                    crate::store::cluster_delivery::ClusterDelivery::open(
                        client.clone(),
                        &names,
                        replicas,
                        opts.delivery.retention,
                    )
                })
                .await?;
            println!(
                "ferry: cluster mode: functions, components and invocations in NATS at {} \
                 ({replicas} replica{} of each bucket and stream)",
                c.servers,
                if replicas == 1 { "" } else { "s" }
            );
            Some((Arc::new(shared), delivery, members))
        }
        None => None,
    };
    let delivery_store: Arc<dyn crate::delivery::store::DeliveryStore> = match &cluster {
        Some((_, d, _)) => d.clone(),
        None => store.clone(),
    };
    let shared: Arc<dyn crate::store::Store> = match &cluster {
        Some((c, _, _)) => c.clone(),
        None => store.clone(),
    };
    let deployer =
        restore(&opts, &runtime, &shared, &registry, started).map_err(|e| store.as_damage(e))?;

    let public_url = format!("http://{}", public.local_addr()?);
    let admin_addr = admin.local_addr()?;
    let (handle, shutdown) = Shutdown::new();
    let delivery = Delivery::start(
        runtime.clone(),
        registry.clone(),
        delivery_store,
        store.health(),
        DeliveryOptions {
            public_url: public_url.clone(),
            // Shared in a cluster: every host signs callbacks with the same secret.
            callback_secret: callback_secret(&opts, &*shared)?,
            journal_dir: opts.data_dir.clone(),
            own_listeners: vec![public.local_addr()?, admin.local_addr()?],
            host_id: host_id(&*store)?,
            attempt_lease: opts.ceilings.max_timeout + Duration::from_secs(60),
            ..opts.delivery.clone()
        },
        shutdown.clone(),
    )
    .map_err(|e| store.as_damage(e))?;
    let nats = match &opts.nats {
        Some(url) => Some(ferry_triggers::nats::connect(url).await?),
        None => None,
    };
    let reports = Arc::new(TriggerReports::default());
    let admin_state = Arc::new(AdminState {
        reports: reports.clone(),
        deployer,
        runtime: runtime.clone(),
        public_url: public_url.clone(),
        token: admin_token.map(|t| t.value),
        stopping: shutdown.clone(),
        max_upload: opts.max_upload,
        started,
        delivery: delivery.clone(),
        nats: nats.clone(),
        store_health: store.health(),
        store: store.clone(),
        members: cluster.as_ref().map(|(_, _, m)| m.clone()),
    });
    if let Some((c, _, members)) = &cluster {
        let (delivery, registry, runtime) = (delivery.clone(), registry.clone(), runtime.clone());
        members.clone().spawn_heartbeat(
            move || {
                let (running, queued) = delivery.load();
                crate::store::members::Load {
                    running,
                    queued,
                    instances: runtime.metrics().instances().get() as u64,
                    functions: registry.list().len(),
                }
            },
            shutdown.clone(),
        );
        tokio::spawn(crate::store::cluster::follow_functions(
            c.clone(),
            admin_state.deployer.clone(),
            shutdown.clone(),
        ));
    }
    let gateway = Arc::new(Gateway {
        runtime,
        registry,
        delivery: delivery.clone(),
        store: shared.clone(),
        reports: reports.clone(),
    });

    let mut tasks = JoinSet::new();
    let http_options = HttpOptions {
        shutdown_grace: opts.delivery.shutdown_grace,
        ..opts.http.clone()
    };
    spawn_trigger(
        &mut tasks,
        &shutdown,
        HttpTrigger::new(public, gateway.clone(), http_options.clone()),
    );
    spawn_trigger(
        &mut tasks,
        &shutdown,
        ferry_triggers::poll::PollTrigger::new(gateway.clone()),
    );
    if let Some(client) = nats {
        spawn_trigger(
            &mut tasks,
            &shutdown,
            NatsTrigger::new(client, gateway.clone(), opts.delivery.shutdown_grace),
        );
    }
    spawn_admin(&mut tasks, &shutdown, admin, admin_state, &http_options);
    tokio::spawn(heal_store(store.clone(), shutdown.clone()));

    // The one line scripts and tests wait for.
    println!("ferry: serving functions on {public_url} and the admin API on http://{admin_addr}");

    let result = until_stopped(&mut tasks).await;
    handle.trigger();
    drain(&mut tasks).await;
    // Triggers take no new work now; let the delivery engine record what is in flight.
    delivery.stopped().await;
    store.flush()?;
    tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, "stopped");
    result
}

/// The triggers and listeners of the process, each named for its log lines.
type Tasks = JoinSet<(&'static str, anyhow::Result<()>)>;

/// The admin API on its listener, under the shutdown signal.
fn spawn_admin(
    tasks: &mut Tasks,
    shutdown: &Shutdown,
    listener: TcpListener,
    state: Arc<AdminState>,
    http: &HttpOptions,
) {
    let mut shutdown = shutdown.clone();
    let app = api::router(state);
    let mut builder = hyper::server::conn::http1::Builder::new();
    // The same bounds on request heads as the public listener: the token is checked only once
    // a head has arrived, so a caller without one must not hold the listener either.
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(http.header_read_timeout)
        .max_header_size(http.max_header_size);
    let grace = http.shutdown_grace;
    tasks.spawn(async move {
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let slots = Arc::new(tokio::sync::Semaphore::new(ADMIN_CONNECTIONS));
        loop {
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::warn!(error = %e, "admin listener: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = shutdown.requested() => break,
            };
            // Over the cap: closed at once (the admin API is for operators, not crowds).
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                continue;
            };
            let service = hyper_util::service::TowerToHyperService::new(app.clone());
            let conn = graceful
                .watch(builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service));
            tokio::spawn(async move {
                let _slot = slot;
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "admin connection ended with an error");
                }
            });
        }
        tokio::select! {
            () = graceful.shutdown() => {}
            () = tokio::time::sleep(grace) => {}
        }
        ("admin", Ok(()))
    });
}

/// Connections the admin listener keeps open at once.
const ADMIN_CONNECTIONS: usize = 256;

/// Waits for Ctrl-C or SIGTERM (Ok), or for a listener to stop on its own (an error).
async fn until_stopped(tasks: &mut Tasks) -> anyhow::Result<()> {
    tokio::select! {
        _ = shutdown_signal() => {
            tracing::info!("shutting down");
            Ok(())
        }
        Some(done) = tasks.join_next() => match done {
            Ok((kind, Ok(()))) => Err(anyhow::anyhow!("the {kind} listener stopped unexpectedly")),
            Ok((kind, Err(e))) => Err(e.context(format!("the {kind} listener failed"))),
            Err(e) => Err(anyhow::anyhow!("a listener task panicked: {e}")),
        },
    }
}

/// Waits for every trigger and listener to finish its work in flight.
async fn drain(tasks: &mut Tasks) {
    while let Some(done) = tasks.join_next().await {
        if let Ok((kind, Err(e))) = done {
            tracing::warn!(trigger = kind, error = %format!("{e:#}"), "stopped with an error");
        }
    }
}

/// Runs a trigger on the process's task set under the shutdown signal.
fn spawn_trigger<T: Trigger>(tasks: &mut Tasks, shutdown: &Shutdown, trigger: T) {
    let shutdown = shutdown.clone();
    tasks.spawn(async move { (T::KIND, trigger.run(shutdown).await) });
}

/// Once a second while the store is degraded (an I/O error: a full disk, say), tries to make it
/// work again, so that the host recovers by itself once the cause is gone.
async fn heal_store(store: Arc<SledStore>, mut shutdown: Shutdown) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = shutdown.requested() => return,
        }
        if store.health().errors().is_empty() {
            continue;
        }
        let s = store.clone();
        match tokio::task::spawn_blocking(move || s.heal()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::debug!(error = %format!("{e:#}"), "the store is not healed yet"),
            Err(e) => tracing::error!(error = %e, "the store's healing task failed"),
        }
    }
}

/// Says loudly, on standard output and in the log, that the store was damaged and what was done.
fn report_recovery(r: &crate::store::recover::Recovered) {
    let kept: Vec<String> = r
        .kept
        .iter()
        .map(|(what, n)| format!("{n} {what}"))
        .collect();
    let what = if kept.is_empty() {
        "started with an empty store".to_string()
    } else {
        format!(
            "kept what could be read: {}; {} unreadable record(s) left behind",
            kept.join(", "),
            r.lost
        )
    };
    println!(
        "ferry: WARNING: {}; moved it to {} and {what}",
        r.damage,
        r.moved_to.display()
    );
    tracing::error!(damage = %r.damage, moved_to = %r.moved_to.display(), "{what}");
}

/// Loads every stored function into the registry (from cached artifacts where it can).
fn restore(
    opts: &ServeOptions,
    runtime: &Arc<Runtime>,
    store: &Arc<dyn crate::store::Store>,
    registry: &Arc<Registry>,
    started: Instant,
) -> anyhow::Result<Arc<Deployer>> {
    let ceilings = opts.ceilings.clone();
    let deployer = Arc::new(Deployer::new(
        runtime.clone(),
        store.clone(),
        registry.clone(),
        ceilings,
        enabled_triggers(opts),
        opts.keep_versions,
        opts.optimized_compile,
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
    Ok(deployer)
}

/// The trigger kinds this host runs: HTTP and webhooks (on the public listener) and polls
/// always, NATS with `--nats`.
fn enabled_triggers(opts: &ServeOptions) -> Vec<&'static str> {
    let mut kinds = vec![
        ferry_triggers::http::KIND.name,
        ferry_triggers::webhook::KIND.name,
        ferry_triggers::poll::KIND.name,
    ];
    if opts.nats.is_some() {
        kinds.push(ferry_triggers::nats::KIND.name);
    }
    kinds
}

/// The id this host leases work under, made on first start and kept in the data directory.
fn host_id(store: &dyn Store) -> anyhow::Result<String> {
    if let Some(id) = store.setting("host_id")? {
        return Ok(id);
    }
    let id = uuid::Uuid::now_v7().simple().to_string();
    store.put_setting("host_id", &id)?;
    store.flush()?;
    Ok(id)
}

/// `--callback-secret`, else the one kept in the store, else a new one, kept.
fn callback_secret(opts: &ServeOptions, store: &dyn Store) -> anyhow::Result<String> {
    if let Some(s) = &opts.callback_secret {
        return Ok(s.clone());
    }
    if let Some(s) = store.setting("callback_secret")? {
        return Ok(s);
    }
    let s = signature::generate_secret()?;
    store.put_setting("callback_secret", &s)?;
    store.flush()?;
    Ok(s)
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
