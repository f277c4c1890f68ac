//! Deploying, removing and restoring functions: validation, compilation (or the artifact cache),
//! durable records, then an atomic swap in the registry. Nothing is stored unless every check
//! passes, and a failed deploy leaves the running version untouched.

use std::sync::Arc;

use anyhow::Context as _;
use bytes::Bytes;
use http::StatusCode;
use sha2::{Digest, Sha256};
use wasmtime::component::Component;

use crate::engine::{ComponentError, Runtime, Tier};
use crate::manifest::{Ceilings, Manifest, ManifestError};
use crate::model::{FunctionRecord, World};
use crate::registry::{Code, Deployed, Registry};
use crate::store::{artifact_key, Artifact, Store};

/// Why a deploy was refused.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The manifest is invalid (400).
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The upload cannot become a function (400 when it is not a valid component, 422 when it
    /// is one Ferry cannot run).
    #[error(transparent)]
    Component(#[from] ComponentError),
    /// The manifest's `name` is not the name in the request URL (400).
    #[error("the manifest names function {manifest:?} but the request is for {url:?}")]
    NameMismatch {
        /// The name in the manifest.
        manifest: String,
        /// The name in the request URL.
        url: String,
    },
    /// Two functions claim the same thing of a trigger (a route, say).
    #[error("{0}")]
    TriggerConflict(String),
    /// A trigger section the function or the host cannot serve: a trigger for the other kind of
    /// function, or one this host does not run (422).
    #[error("{0}")]
    Unsupported(String),
    /// No such function, or no such version of it kept (404).
    #[error("{0}")]
    NotFound(String),
    /// Another host of the cluster deployed or removed the function first (409).
    #[error("{0}")]
    Changed(String),
    /// The store or a task failed: not the caller's doing (500).
    #[error("internal error: {0:#}")]
    Internal(#[from] anyhow::Error),
}

impl DeployError {
    /// The HTTP status the admin API answers this error with.
    pub fn status(&self) -> StatusCode {
        match self {
            DeployError::Manifest(_) | DeployError::NameMismatch { .. } => StatusCode::BAD_REQUEST,
            DeployError::Component(ComponentError::NotWasm | ComponentError::Invalid(_)) => {
                StatusCode::BAD_REQUEST
            }
            DeployError::Component(ComponentError::Compile(_)) => StatusCode::INTERNAL_SERVER_ERROR,
            DeployError::Component(_) => StatusCode::UNPROCESSABLE_ENTITY,
            DeployError::TriggerConflict(_) | DeployError::Changed(_) => StatusCode::CONFLICT,
            DeployError::NotFound(_) => StatusCode::NOT_FOUND,
            DeployError::Unsupported(_) => StatusCode::UNPROCESSABLE_ENTITY,
            DeployError::Internal(e) if crate::store::is_disk_full(e) => {
                StatusCode::INSUFFICIENT_STORAGE
            }
            DeployError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// What a deploy did.
pub struct Deployment {
    /// The record of the version now serving.
    pub record: FunctionRecord,
    /// False when the name was new.
    pub replaced: bool,
    /// Which code serves it now.
    pub code: Code,
}

/// What a restart restored.
#[derive(Debug, Default)]
pub struct Restored {
    /// Functions restored and serving.
    pub functions: usize,
    /// Components loaded from a cached compiled artifact.
    pub from_cache: usize,
    /// Components compiled again from their stored bytes (no usable artifact).
    pub compiled: usize,
    /// Functions that could not be restored; each is logged and skipped.
    pub failed: usize,
}

/// Deploys, removes and restores functions: the one writer of function records and of the
/// registry.
pub struct Deployer {
    runtime: Arc<Runtime>,
    store: Arc<dyn Store>,
    registry: Arc<Registry>,
    ceilings: Ceilings,
    /// The trigger kinds this host runs (`nats` only with `ferry serve --nats`).
    enabled: Vec<&'static str>,
    /// Deploys and removals run one at a time, so versions and route checks never race.
    lock: Arc<tokio::sync::Mutex<()>>,
    /// How many versions of each function keep their component (the deployed one included).
    keep_versions: usize,
    /// Versions served by baseline code, for the optimiser thread (None without a baseline
    /// tier).
    optimize: Option<std::sync::mpsc::Sender<Optimize>>,
}

/// A function version served by baseline code whose optimised code is to be made.
struct Optimize {
    name: String,
    version: u64,
    digest: String,
}

/// What the optimiser thread needs of the deployer.
struct Optimizer {
    runtime: Arc<Runtime>,
    store: Arc<dyn Store>,
    registry: Arc<Registry>,
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl Optimizer {
    /// Compiles the optimised code of `job` (or loads it from the cache) and serves it in place
    /// of the baseline code, unless the function has moved on meanwhile. The code is stored by
    /// component: it stays wanted while any function serves baseline code of the same component
    /// (a redeploy of the same bytes, a rollback, another name); once none does, the compile
    /// stops where it is, so that the next one starts at once. A failure is kept on the version
    /// (the API shows it) and the baseline code keeps serving.
    fn run(&self, job: Optimize) {
        let current = || {
            self.registry.get(&job.name).filter(|d| {
                d.record.version == job.version
                    && d.record.digest == job.digest
                    && d.tier == Tier::Baseline
            })
        };
        if current().is_none() {
            return;
        }
        let started = std::time::Instant::now();
        let made = (|| -> Result<crate::engine::Prepared, DeployError> {
            let key = artifact_key(&job.digest, self.runtime.compat_key());
            let component = match cached(&self.runtime, &*self.store, &key)? {
                Some(c) => c,
                None => {
                    let bytes = self.store.component(&job.digest)?.with_context(|| {
                        format!("component {} is missing from the store", job.digest)
                    })?;
                    let wanted = || self.registry.serves_baseline(&job.digest);
                    let (c, artifact) = self.runtime.compile_behind(&bytes, &wanted)?;
                    self.store.put_artifact(&key, &artifact)?;
                    self.store.flush()?;
                    drop(artifact);
                    // Served from the stored file, mapped, rather than from a copy in memory.
                    stored(&self.runtime, &*self.store, &key)?.unwrap_or(c)
                }
            };
            Ok(self.runtime.prepare(&component)?)
        })();
        if let Err(DeployError::Component(ComponentError::Stopped)) = made {
            tracing::info!(
                function = %job.name,
                version = job.version,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "stopped making the optimized code: no function serves this component any more"
            );
            return;
        }
        let _guard = self.lock.blocking_lock();
        let Some(now) = current() else {
            return;
        };
        match made.and_then(|prepared| {
            self.registry
                .with(Arc::new(now.optimized(prepared)))
                .map_err(DeployError::TriggerConflict)
        }) {
            Ok(snapshot) => {
                self.registry.commit(snapshot);
                tracing::info!(
                    function = %job.name,
                    version = job.version,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "serving optimized code"
                );
            }
            Err(e) => {
                tracing::warn!(function = %job.name, version = job.version, error = %e, "the optimized code could not be made; the baseline code keeps serving");
                *now.optimize_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
            }
        }
    }
}

/// The settings key of a function's recent component digests, newest first.
fn versions_key(name: &str) -> String {
    format!("versions\u{0}{name}")
}

/// The settings key of a function's recent records, newest first (for a rollback).
fn history_key(name: &str) -> String {
    format!("history\u{0}{name}")
}

/// The most records of one function kept for a rollback.
const MAX_KEPT_RECORDS: usize = 16;

/// Records `record` as the newest version of its function, keeping `keep` components: their
/// digests (garbage collection keeps those) and the records that name them (a rollback needs
/// both).
fn remember_version(store: &dyn Store, record: &FunctionRecord, keep: usize) -> anyhow::Result<()> {
    let name = &record.name;
    let mut list = recent_versions(store, name)?;
    list.retain(|d| d != &record.digest);
    list.insert(0, record.digest.clone());
    list.truncate(keep.max(1));
    store.put_setting(&versions_key(name), &serde_json::to_string(&list)?)?;
    let mut records = kept_records(store, name)?;
    records.retain(|r| r.version != record.version && list.contains(&r.digest));
    records.insert(0, record.clone());
    records.truncate(MAX_KEPT_RECORDS);
    store.put_setting(&history_key(name), &serde_json::to_string(&records)?)
}

/// The records of `name` kept for a rollback, newest first.
fn kept_records(store: &dyn Store, name: &str) -> anyhow::Result<Vec<FunctionRecord>> {
    Ok(match store.setting(&history_key(name))? {
        Some(text) => serde_json::from_str(&text).unwrap_or_default(),
        None => Vec::new(),
    })
}

fn recent_versions(store: &dyn Store, name: &str) -> anyhow::Result<Vec<String>> {
    Ok(match store.setting(&versions_key(name))? {
        Some(text) => serde_json::from_str(&text).unwrap_or_default(),
        None => Vec::new(),
    })
}

/// What a garbage collection removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Collected {
    /// Components no function needs any more.
    pub components: usize,
    /// Compiled artifacts of those, and of other engine builds.
    pub artifacts: usize,
}

impl Deployer {
    /// A deployer over `store` and `registry`; `enabled` names the trigger kinds this host runs.
    pub fn new(
        runtime: Arc<Runtime>,
        store: Arc<dyn Store>,
        registry: Arc<Registry>,
        ceilings: Ceilings,
        enabled: Vec<&'static str>,
        keep_versions: usize,
        optimized_compile: bool,
    ) -> Self {
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        let optimize = (runtime.has_baseline() && optimized_compile).then(|| {
            let (tx, rx) = std::sync::mpsc::channel::<Optimize>();
            let optimizer = Optimizer {
                runtime: runtime.clone(),
                store: store.clone(),
                registry: registry.clone(),
                lock: lock.clone(),
            };
            // One optimised compile at a time, behind the deploys; the thread ends with the
            // deployer (its sender).
            let _ = std::thread::Builder::new()
                .name("ferry-optimize".into())
                .spawn(move || {
                    while let Ok(job) = rx.recv() {
                        optimizer.run(job);
                    }
                });
            tx
        });
        Self {
            runtime,
            store,
            registry,
            ceilings,
            enabled,
            lock,
            keep_versions: keep_versions.max(1),
            optimize,
        }
    }

    /// Has the optimised code of `deployed` made behind it, when baseline code serves it. Call
    /// it once the version is in the registry.
    fn optimize_later(&self, deployed: &Deployed) {
        if deployed.tier != Tier::Baseline {
            return;
        }
        if let Some(tx) = &self.optimize {
            let _ = tx.send(Optimize {
                name: deployed.record.name.clone(),
                version: deployed.record.version,
                digest: deployed.record.digest.clone(),
            });
        }
    }

    /// Removes components that neither a function record nor the last `--keep-versions`
    /// versions of a function need, the artifacts compiled from them, and artifacts of other
    /// engine builds. Runs under the deploy lock (or before anything is served).
    fn collect_garbage(&self) -> anyhow::Result<Collected> {
        let store = &*self.store;
        let mut needed = std::collections::HashSet::new();
        for f in store.functions()? {
            needed.extend(recent_versions(store, &f.name)?);
            needed.insert(f.digest);
        }
        let mut collected = Collected::default();
        for digest in store.component_digests()? {
            if !needed.contains(&digest) {
                store.remove_component(&digest)?;
                collected.components += 1;
            }
        }
        let compat = self.runtime.compat_key();
        for key in store.artifact_keys()? {
            let keep = key
                .split_once('/')
                .is_some_and(|(digest, c)| c == compat && needed.contains(digest));
            if !keep {
                store.remove_artifact(&key)?;
                collected.artifacts += 1;
            }
        }
        if collected != Collected::default() {
            store.flush()?;
            tracing::info!(
                components = collected.components,
                artifacts = collected.artifacts,
                "removed components and compiled code no function version needs"
            );
        }
        Ok(collected)
    }

    /// [`Deployer::collect_garbage`] off the async threads; a failure is logged, not returned
    /// (the deploy or removal it follows has succeeded).
    async fn collect_garbage_now(self: &Arc<Self>) {
        let this = self.clone();
        match tokio::task::spawn_blocking(move || this.collect_garbage()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %format!("{e:#}"), "garbage collection of components failed")
            }
            Err(e) => tracing::warn!(error = %e, "garbage collection of components failed"),
        }
    }

    /// Holds deploys, removals and the garbage collection of components until the guard is
    /// dropped (a backup reads function records, then components: none may go in between).
    pub async fn hold(&self) -> tokio::sync::OwnedMutexGuard<()> {
        self.lock.clone().lock_owned().await
    }

    /// The deployed functions.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Deploys `bytes` as the function `url_name` described by `manifest`.
    pub async fn deploy(
        self: &Arc<Self>,
        url_name: &str,
        manifest: Manifest,
        bytes: Bytes,
    ) -> Result<Deployment, DeployError> {
        if manifest.name != url_name {
            return Err(DeployError::NameMismatch {
                manifest: manifest.name,
                url: url_name.to_string(),
            });
        }
        let spec = manifest.resolve(&self.ceilings)?;
        let digest = hex::encode(Sha256::digest(&bytes));
        let (component, artifact) = self.compile_cached(&digest, bytes.clone()).await?;
        let tier = self.runtime.tier(&component);
        let prepared = self.runtime.prepare(&component)?;
        self.check_triggers(&spec.name, prepared.world(), &spec.triggers)?;

        let _guard = self.lock.lock().await;
        let (stored, version) = self.next_version(&spec.name).await?;
        let mut record = FunctionRecord::new(
            spec.name,
            version,
            prepared.world(),
            digest,
            bytes.len() as u64,
            spec.limits,
            spec.config,
            spec.outbound,
            spec.delivery,
            spec.triggers,
        );
        record.secrets = spec.secrets;
        self.install(record, (prepared, tier), bytes, artifact, stored)
            .await
    }

    /// Serves an earlier version of a function again, as a new version: `to`, or the newest
    /// kept version older than the one serving. Its component and manifest are the stored ones.
    pub async fn rollback(
        self: &Arc<Self>,
        name: &str,
        to: Option<u64>,
    ) -> Result<Deployment, DeployError> {
        let Some(current) = self.registry.get(name) else {
            return Err(DeployError::NotFound(format!("no function named {name:?}")));
        };
        let history = {
            let store = self.store.clone();
            let n = name.to_string();
            tokio::task::spawn_blocking(move || kept_records(&*store, &n))
                .await
                .context("store task failed")??
        };
        let serving = current.record.version;
        let target = match to {
            Some(v) => history.iter().find(|r| r.version == v),
            None => history.iter().find(|r| r.version < serving),
        };
        let Some(target) = target.cloned() else {
            let kept: Vec<String> = history.iter().map(|r| r.version.to_string()).collect();
            return Err(DeployError::NotFound(match to {
                Some(v) => format!(
                    "version {v} of {name} is not kept (kept: {}; ferry serve --keep-versions)",
                    kept.join(", ")
                ),
                None => format!(
                    "no version of {name} older than {serving} is kept (ferry serve --keep-versions)"
                ),
            }));
        };
        let bytes = {
            let (store, digest) = (self.store.clone(), target.digest.clone());
            tokio::task::spawn_blocking(move || store.component(&digest))
                .await
                .context("store task failed")??
        };
        let Some(bytes) = bytes else {
            return Err(DeployError::NotFound(format!(
                "the component of version {} of {name} is no longer kept",
                target.version
            )));
        };
        let bytes = Bytes::from(bytes);
        let (component, artifact) = self.compile_cached(&target.digest, bytes.clone()).await?;
        let tier = self.runtime.tier(&component);
        let prepared = self.runtime.prepare(&component)?;
        self.check_triggers(name, prepared.world(), &target.triggers)?;

        let _guard = self.lock.lock().await;
        let (stored, version) = self.next_version(name).await?;
        let record = target.as_version(version);
        tracing::info!(function = %name, from = serving, to = target.version, "rolling back");
        self.install(record, (prepared, tier), bytes, artifact, stored)
            .await
    }

    /// The stored record of `name` and the version a new deploy of it gets. Call it holding
    /// the deploy lock.
    async fn next_version(&self, name: &str) -> Result<(Option<FunctionRecord>, u64), DeployError> {
        let previous = self.registry.get(name);
        let stored = {
            let store = self.store.clone();
            let name = name.to_string();
            tokio::task::spawn_blocking(move || store.function(&name))
                .await
                .context("store task failed")??
        };
        let version = previous
            .map(|p| p.record.version)
            .into_iter()
            .chain(stored.as_ref().map(|r| r.version))
            .max()
            .unwrap_or(0)
            + 1;
        Ok((stored, version))
    }

    /// Stores `record` with its component (and the artifact compiled now), in place of
    /// `stored`, and serves it. Call it holding the deploy lock.
    async fn install(
        self: &Arc<Self>,
        record: FunctionRecord,
        (prepared, tier): (crate::engine::Prepared, Tier),
        bytes: Bytes,
        artifact: Option<Vec<u8>>,
        stored: Option<FunctionRecord>,
    ) -> Result<Deployment, DeployError> {
        let deployed = self.deployed(&record, prepared, tier);
        let snapshot = self
            .registry
            .with(deployed.clone())
            .map_err(DeployError::TriggerConflict)?;

        let store = self.store.clone();
        let digest = record.digest.clone();
        let key = artifact_key(&digest, self.runtime.compat_key());
        let rec = record.clone();
        let before = stored.clone();
        let keep = self.keep_versions;
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let written = (|| {
                store.put_component(&digest, &bytes)?;
                if let Some(artifact) = artifact {
                    store.put_artifact(&key, &artifact)?;
                }
                store.replace_function(&rec, before.as_ref())?;
                remember_version(&*store, &rec, keep)?;
                crate::crashpoint::crashpoint("deploy-before-flush");
                store.flush()
            })();
            let lost_race = written
                .as_ref()
                .is_err_and(|e| e.downcast_ref::<crate::store::Changed>().is_some());
            if written.is_err() && !lost_race {
                // The deploy is answered with an error: the record it may have written must
                // not come back after a restart. (One that lost the race to another host's
                // deploy wrote nothing, and the record stored is the winner's.)
                let _ = match &before {
                    Some(old) => store.replace_function(old, Some(&rec)),
                    None => store.delete_function(&rec.name).map(drop),
                };
            }
            written
        })
        .await
        .context("store task failed")?
        .map_err(|e| match e.downcast_ref::<crate::store::Changed>() {
            Some(changed) => DeployError::Changed(changed.0.clone()),
            None => DeployError::Internal(e),
        })?;
        self.registry.commit(snapshot);
        tracing::info!(function = %record.name, version = record.version, world = %record.world, code = tier.name(), "deployed");
        self.optimize_later(&deployed);
        self.collect_garbage_now().await;
        Ok(Deployment {
            record,
            replaced: stored.is_some(),
            code: deployed.code(),
        })
    }

    /// Whether this host runs each trigger the function has, and the trigger takes its kind of
    /// function.
    fn check_triggers(
        &self,
        name: &str,
        world: World,
        triggers: &crate::model::Triggers,
    ) -> Result<(), DeployError> {
        for kind in triggers.keys() {
            let Some(trigger) = ferry_triggers::trigger_kind(kind) else {
                continue; // the manifest refused unknown kinds already
            };
            if !trigger.accepts.contains(&world) {
                let wanted: Vec<String> = trigger
                    .accepts
                    .iter()
                    .map(|k| format!("{k} function"))
                    .collect();
                return Err(DeployError::Unsupported(format!(
                    "function {name} has [[trigger.{kind}]] but is an {world} function; {kind} triggers need an {}",
                    wanted.join(" or ")
                )));
            }
            if !self.enabled.contains(&trigger.name) {
                return Err(DeployError::Unsupported(format!(
                    "function {name} has [[trigger.{kind}]] but {}",
                    trigger.disabled_hint
                )));
            }
        }
        Ok(())
    }

    /// [`load_or_compile`] off the async threads.
    async fn compile_cached(
        &self,
        digest: &str,
        bytes: Bytes,
    ) -> Result<(Component, Option<Vec<u8>>), DeployError> {
        let runtime = self.runtime.clone();
        let store = self.store.clone();
        let key = artifact_key(digest, runtime.compat_key());
        tokio::task::spawn_blocking(move || load_or_compile(&runtime, &*store, &key, || Ok(bytes)))
            .await
            .context("compile task failed")?
    }

    /// Removes a function; false when there was none.
    pub async fn remove(self: &Arc<Self>, name: &str) -> Result<bool, DeployError> {
        let _guard = self.lock.lock().await;
        let store = self.store.clone();
        let n = name.to_string();
        let existed = tokio::task::spawn_blocking(move || -> anyhow::Result<bool> {
            let existed = store.delete_function(&n)?;
            store.put_setting(&versions_key(&n), "[]")?;
            store.put_setting(&history_key(&n), "[]")?;
            store.flush()?;
            Ok(existed)
        })
        .await
        .context("store task failed")??;
        let live = self.registry.get(name).is_some();
        self.registry.commit(self.registry.without(name));
        if existed || live {
            tracing::info!(function = %name, "removed");
        }
        self.collect_garbage_now().await;
        Ok(existed || live)
    }

    /// Loads every stored function at startup, from cached artifacts where possible. A function
    /// that cannot be restored is logged and skipped; it never stops the host.
    pub fn restore(&self) -> anyhow::Result<Restored> {
        let mut stats = Restored::default();
        for record in self.store.functions()? {
            match self.restore_one(&record, &mut stats) {
                Ok(deployed) => match self.registry.with(deployed.clone()) {
                    Ok(snapshot) => {
                        self.registry.commit(snapshot);
                        self.optimize_later(&deployed);
                        stats.functions += 1;
                    }
                    Err(e) => {
                        stats.failed += 1;
                        tracing::error!(function = %record.name, error = %e, "failed to restore function");
                    }
                },
                // A damaged store is not a function that failed: the host must not start without it.
                Err(e) if e.chain().any(|c| c.is::<crate::store::Damaged>()) => return Err(e),
                Err(e) => {
                    stats.failed += 1;
                    tracing::error!(function = %record.name, error = %format!("{e:#}"), "failed to restore function");
                }
            }
        }
        if stats.failed == 0 {
            // Only when every function is back: a function that failed still needs its bytes.
            self.collect_garbage()?;
        }
        Ok(stats)
    }

    /// Serves a function record another host wrote (cluster mode) when it is newer than the
    /// version this host serves; true when it was applied. Runs on a blocking thread.
    pub fn apply_remote(&self, record: &FunctionRecord) -> anyhow::Result<bool> {
        let _guard = self.lock.blocking_lock();
        if self
            .registry
            .get(&record.name)
            .is_some_and(|d| d.record.version >= record.version)
        {
            return Ok(false);
        }
        let deployed = self.restore_one(record, &mut Restored::default())?;
        let snapshot = self
            .registry
            .with(deployed.clone())
            .map_err(|e| anyhow::anyhow!(e))?;
        self.registry.commit(snapshot);
        self.optimize_later(&deployed);
        tracing::info!(function = %record.name, version = record.version, "serving a version deployed on another host");
        Ok(true)
    }

    /// Stops serving a function another host removed (cluster mode).
    pub fn remove_remote(&self, name: &str) {
        let _guard = self.lock.blocking_lock();
        if self.registry.get(name).is_some() {
            self.registry.commit(self.registry.without(name));
            tracing::info!(function = %name, "removed on another host");
        }
    }

    fn restore_one(
        &self,
        record: &FunctionRecord,
        stats: &mut Restored,
    ) -> anyhow::Result<Arc<Deployed>> {
        let key = artifact_key(&record.digest, self.runtime.compat_key());
        let (component, artifact) = load_or_compile(&self.runtime, &*self.store, &key, || {
            let bytes = self.store.component(&record.digest)?.with_context(|| {
                format!("component {} is missing from the store", record.digest)
            })?;
            Ok(Bytes::from(bytes))
        })?;
        let tier = self.runtime.tier(&component);
        let component = match (artifact, tier) {
            (Some(artifact), _) => {
                self.store.put_artifact(&key, &artifact)?;
                self.store.flush()?;
                stats.compiled += 1;
                drop(artifact);
                stored(&self.runtime, &*self.store, &key)?.unwrap_or(component)
            }
            (None, Tier::Baseline) => {
                stats.compiled += 1;
                component
            }
            (None, Tier::Optimized) => {
                stats.from_cache += 1;
                component
            }
        };
        let prepared = self.runtime.prepare(&component)?;
        Ok(self.deployed(record, prepared, tier))
    }

    /// `record` served by `prepared` (code made by `tier`); baseline code stays, saying so, on
    /// a host that makes no optimised code.
    fn deployed(
        &self,
        record: &FunctionRecord,
        prepared: crate::engine::Prepared,
        tier: Tier,
    ) -> Arc<Deployed> {
        let deployed = Deployed::new(record.clone(), prepared, tier);
        Arc::new(if self.optimize.is_some() {
            deployed
        } else {
            deployed.not_optimized()
        })
    }
}

/// The compiled component for `key`: the cached optimised code; else, on a host with a baseline
/// tier, baseline code compiled now (the optimised code is made behind it); else optimised
/// code compiled now, returned with its artifact to store. `bytes` is read only when something
/// is compiled. A component the baseline compiler cannot take (a WebAssembly feature Winch
/// lacks) is compiled optimised at once.
fn load_or_compile(
    runtime: &Runtime,
    store: &dyn Store,
    key: &str,
    bytes: impl FnOnce() -> anyhow::Result<Bytes>,
) -> Result<(Component, Option<Vec<u8>>), DeployError> {
    if let Some(component) = cached(runtime, store, key)? {
        return Ok((component, None));
    }
    let bytes = bytes()?;
    if runtime.has_baseline() {
        match runtime.compile_baseline(&bytes) {
            Ok(component) => return Ok((component, None)),
            Err(
                e @ (ComponentError::TooCostly(_)
                | ComponentError::NotWasm
                | ComponentError::CoreModule),
            ) => return Err(e.into()),
            Err(e) => {
                tracing::info!(error = %e, "the baseline compiler cannot take this component; compiling optimized code now");
            }
        }
    }
    let (component, artifact) = runtime.compile(&bytes)?;
    Ok((component, Some(artifact)))
}

/// The cached compiled component for `key`, if present and loadable; an artifact this engine
/// cannot load is compiled again, but a store that cannot be read is an error.
fn cached(runtime: &Runtime, store: &dyn Store, key: &str) -> anyhow::Result<Option<Component>> {
    let component = stored(runtime, store, key)?;
    if component.is_some() {
        runtime.metrics().compilation("cache_hit", None);
    }
    Ok(component)
}

/// [`cached`] without counting a cache hit (the artifact was stored just now).
fn stored(runtime: &Runtime, store: &dyn Store, key: &str) -> anyhow::Result<Option<Component>> {
    let loaded = match store.artifact(key)? {
        None => return Ok(None),
        Some(Artifact::File(path)) => runtime.load_artifact_file(&path),
        Some(Artifact::Bytes(bytes)) => runtime.load_artifact(&bytes),
    };
    match loaded {
        Ok(c) => Ok(Some(c)),
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "cached artifact unusable; recompiling");
            Ok(None)
        }
    }
}
