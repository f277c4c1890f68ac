//! The delivery engine: asynchronous invocations with the guarantee the caller picks.
//!
//! - fire-and-forget: a bounded in-memory queue; at most once; lost if the process dies;
//! - store-and-forward: written and flushed (group commit) before the 202; workers run due
//!   invocations, retry failures with exponential backoff and full jitter, and dead-letter what
//!   still fails; at least once, across crashes;
//! - callbacks: the final result is POSTed to the caller, signed (Standard Webhooks), itself
//!   delivered store-and-forward;
//! - status polling with long-poll, idempotency keys, dead-letter listing and replay.

mod callbacks;
mod fair;
pub mod guard;
mod janitor;
pub mod journal;
pub mod record;
pub mod retry;
mod scanner;
pub mod signature;
pub mod store;
mod view;
mod worker;

pub use view::{AttemptView, CallbackView, InvocationView};

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, Notify};

use crate::engine::Runtime;
use crate::model::DeliveryMode;
use crate::model::RetryPolicy;
use crate::registry::{Deployed, Registry};
use ferry_triggers::Shutdown;
use guard::CallbackGuard;
use journal::Journal;
use record::{now_ms, Callback, CallbackStatus, Invocation, Origin, Payload, Status};
use store::{DeliveryStore, Lease, Queue};
use tokio_util::task::TaskTracker;

/// Host-wide delivery settings (from `ferry serve` flags).
#[derive(Debug, Clone)]
pub struct DeliveryOptions {
    /// Store-and-forward attempts running at once.
    pub workers: usize,
    /// The most workers one function may hold at once (0: three quarters of `workers`), so
    /// that a slow function leaves room for the others.
    pub workers_per_function: usize,
    /// Capacity of the fire-and-forget queue.
    pub queue_size: usize,
    /// How long finished invocations (and their idempotency keys) are kept.
    pub retention: Duration,
    /// Sync the journal once per submit instead of group commit (a benchmark baseline).
    pub flush_per_submit: bool,
    /// Where the submit journal lives (the data directory).
    pub journal_dir: std::path::PathBuf,
    /// Callback hosts allowed even when they resolve to non-public addresses (`host`, or
    /// `host:port` for one port).
    pub allow_callback_hosts: Vec<String>,
    /// This host's own listeners, which callbacks and polls may never target.
    pub own_listeners: Vec<std::net::SocketAddr>,
    /// Host-wide callback signing secret (`whsec_...`).
    pub callback_secret: String,
    /// When to try a failed callback again, and when to dead-letter it.
    pub callback_retry: RetryPolicy,
    /// Base URL of the public listener, for status URLs.
    pub public_url: String,
    /// After shutdown is requested, how long an attempt in flight may take to finish before it
    /// is recorded as interrupted.
    pub shutdown_grace: Duration,
    /// Names this host in the leases it takes (kept in the data directory).
    pub host_id: String,
    /// How long an attempt taken by this host is held before another host may take it: longer
    /// than any function's timeout.
    pub attempt_lease: Duration,
}

impl Default for DeliveryOptions {
    fn default() -> Self {
        Self {
            workers: 32,
            workers_per_function: 0,
            queue_size: 10_000,
            retention: Duration::from_secs(24 * 3600),
            flush_per_submit: false,
            journal_dir: std::path::PathBuf::from("."),
            allow_callback_hosts: Vec::new(),
            own_listeners: Vec::new(),
            // Set by `ferry serve` (flag, or generated and kept in the store).
            callback_secret: String::new(),
            callback_retry: RetryPolicy {
                max_attempts: 8,
                initial: Duration::from_secs(1),
                max: Duration::from_secs(300),
                max_age: Duration::from_secs(24 * 3600),
            },
            public_url: String::new(),
            shutdown_grace: Duration::from_secs(30),
            host_id: uuid::Uuid::now_v7().simple().to_string(),
            attempt_lease: Duration::from_secs(16 * 60),
        }
    }
}

/// An asynchronous submit.
pub struct SubmitRequest {
    /// The function, whose version at submit time gives the default mode and the retry policy;
    /// each attempt runs the version deployed when it starts.
    pub function: Arc<Deployed>,
    /// None: the function's default.
    pub mode: Option<DeliveryMode>,
    /// The request or event to run.
    pub payload: Payload,
    /// Where the final status document is POSTed, signed (`X-Callback-Url`); the callback guard
    /// checks it before anything is stored.
    pub callback_url: Option<String>,
    /// The caller's `Idempotency-Key`, if any.
    pub idempotency_key: Option<String>,
    /// Set by a dead-letter replay: the idempotency key (if any) of the dead invocation, which
    /// the new invocation takes over without the duplicate check (that would find the dead one).
    pub replaces_key: Option<Option<String>>,
    /// What submitted it: `http`, `webhook`, `poll`, `schedule` or `nats`.
    pub trigger: &'static str,
    /// The submit's span: every attempt and the callback are its children.
    pub trace: crate::trace::TraceContext,
}

/// Why a submit was refused: the triggers' words (a bad request, a full queue, an unavailable
/// store).
pub use ferry_triggers::SubmitFailure;

/// How long a callback taken by this process is held before others may take it.
const CALLBACK_LEASE: Duration = Duration::from_secs(120);

/// The delivery engine of one process: takes submits, runs them on its workers, delivers
/// callbacks, and answers for status, dead letters and replays.
pub struct Delivery {
    runtime: Arc<Runtime>,
    registry: Arc<Registry>,
    store: Arc<dyn DeliveryStore>,
    /// The submit journal (none when the store is shared: its writes are durable as they
    /// return, and a host's own disk is not the cluster's).
    journal: Option<Arc<Journal>>,
    /// Ids whose attempt is running right now in this process: the "running" of status
    /// documents (the store knows only that an invocation is leased).
    running: Mutex<HashSet<String>>,
    /// Work this process has queued or is running, per queue: a single-host guard on top of the
    /// store's leases, so that a lease that lapses while its work still waits in a channel does
    /// not get the same work queued twice here.
    in_process: Mutex<HashSet<(Queue, String)>>,
    /// Keyed submits between their store insert and the end of their journal commit: a
    /// duplicate that finds one waits for it (the receiver sees its sender dropped) before it
    /// answers with it.
    committing: Mutex<HashMap<String, tokio::sync::watch::Receiver<()>>>,
    /// Who this process is when it leases work: `<host id>/<start id>`.
    owner: String,
    ready: Arc<fair::FairQueue>,
    ff: Arc<fair::FairQueue>,
    callbacks: mpsc::Sender<String>,
    done: broadcast::Sender<String>,
    wake_scanner: Notify,
    wake_callbacks: Notify,
    /// The process's shutdown signal: every task of the engine ends on it.
    shutdown: Shutdown,
    /// When the shutdown signal came.
    stop_requested: std::sync::OnceLock<tokio::time::Instant>,
    /// Ends the journal task, after everything else has stopped.
    journal_closing: tokio::sync::watch::Sender<bool>,
    journal_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Every task of the engine, so that shutdown can wait for them.
    tasks: TaskTracker,
    guard: CallbackGuard,
    http: reqwest::Client,
    options: DeliveryOptions,
}

impl Delivery {
    /// Recovers what a previous process left, then starts workers, scanners and the janitor.
    pub fn start(
        runtime: Arc<Runtime>,
        registry: Arc<Registry>,
        store: Arc<dyn DeliveryStore>,
        health: Arc<crate::store::Health>,
        options: DeliveryOptions,
        shutdown: Shutdown,
    ) -> anyhow::Result<Arc<Self>> {
        signature::decode_secret(&options.callback_secret)
            .map_err(|e| anyhow::anyhow!("invalid --callback-secret: {e}"))?;
        let guard = CallbackGuard::new(
            options.allow_callback_hosts.clone(),
            options.own_listeners.clone(),
        );
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            // A proxy from the environment would connect to the target itself, past the guard.
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .dns_resolver(Arc::new(guard.clone()))
            .user_agent(concat!("ferry/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let ready = Arc::new(fair::FairQueue::new(options.workers * 4));
        let ff = Arc::new(fair::FairQueue::new(options.queue_size.max(1)));
        let (callbacks, callbacks_rx) = mpsc::channel(256);
        let (journal_closing, closing) = tokio::sync::watch::channel(false);
        let (journal, journal_task) = if store.shared() {
            (None, None)
        } else {
            let (journal, journaled) = Journal::open(
                &options.journal_dir,
                store.clone(),
                health,
                options.flush_per_submit,
            )?;
            journal.set_metrics(runtime.metrics().clone());
            Self::restore_journaled(&*store, journaled)?;
            let orphans = store.tidy()?;
            if orphans > 0 {
                tracing::info!(
                    orphans,
                    "removed payload files of invocations that are gone or finished"
                );
            }
            let task = tokio::spawn(journal.clone().run(closing));
            (Some(journal), Some(task))
        };
        let tasks = TaskTracker::new();
        let this = Arc::new(Self {
            runtime,
            registry,
            store,
            journal,
            running: Mutex::new(HashSet::new()),
            in_process: Mutex::new(HashSet::new()),
            committing: Mutex::new(HashMap::new()),
            owner: format!("{}/{}", options.host_id, uuid::Uuid::now_v7().simple()),
            ready,
            ff,
            callbacks,
            done: broadcast::channel(4096).0,
            wake_scanner: Notify::new(),
            wake_callbacks: Notify::new(),
            shutdown,
            stop_requested: std::sync::OnceLock::new(),
            journal_closing,
            journal_task: Mutex::new(journal_task),
            tasks,
            guard,
            http,
            options,
        });
        this.recover()?;
        scanner::spawn(&this, callbacks_rx);
        Ok(this)
    }

    /// Writes back submits that a previous process journaled (and acknowledged) but had not yet
    /// checkpointed into the store, and makes them durable there. The journal keeps them until
    /// its first checkpoint, so a crash in between replays them again (those already in the
    /// store are skipped).
    fn restore_journaled(
        store: &dyn DeliveryStore,
        journaled: Vec<Invocation>,
    ) -> anyhow::Result<()> {
        let n = journaled.len();
        for inv in journaled {
            store.restore(&inv)?;
            crate::crashpoint::crashpoint("journal-replaying");
        }
        store.flush_delivery()?;
        if n > 0 {
            tracing::info!(records = n, "replayed the submit journal");
        }
        Ok(())
    }

    /// After a crash or restart: this host's earlier lives run nothing any more, so their leases
    /// end (what they held is due again); fire-and-forget invocations they held are lost.
    fn recover(&self) -> anyhow::Result<()> {
        let released = self
            .store
            .release_leases(&format!("{}/", self.options.host_id))?;
        let (mut lost, mut requeued) = (0, 0);
        for mut inv in self.store.unfinished()? {
            if inv.mode == DeliveryMode::FireAndForget && inv.handed_back() {
                // Handed back by a graceful stop before it ever started: run it now. The mark
                // goes first, so that a crash while it runs cannot queue it a second time.
                inv.due_ms = None;
                self.store.put(&inv)?;
                if self
                    .ff
                    .try_push(&inv.function, inv.id.clone(), self.share(&inv.function))
                {
                    requeued += 1;
                    continue;
                }
            }
            if inv.mode == DeliveryMode::FireAndForget {
                inv.status = Status::Failed;
                inv.error = Some(
                    "lost: the host stopped before this fire-and-forget invocation finished".into(),
                );
                inv.due_ms = None;
                inv.updated_ms = now_ms();
                self.store.put(&inv)?;
                lost += 1;
            }
        }
        self.store.flush_delivery()?;
        if released + lost + requeued > 0 {
            tracing::info!(released, lost, requeued, "recovered unfinished invocations");
        }
        Ok(())
    }

    /// Keeps a queued fire-and-forget invocation that a graceful stop did not run for the next
    /// start; false when it is gone or already started.
    fn hand_back(&self, id: &str) -> bool {
        let result = (|| -> anyhow::Result<bool> {
            let Some(mut inv) = self.store.get(id)? else {
                return Ok(false);
            };
            if inv.status.is_final() || inv.attempts > 0 {
                return Ok(false);
            }
            if self.store.shared() {
                // No later start of this host runs it (another host would not know it): it
                // is lost, as it would be on a crash, and says so.
                inv.status = Status::Failed;
                inv.error = Some(
                    "lost: the host stopped before this fire-and-forget invocation started".into(),
                );
                inv.due_ms = None;
                inv.updated_ms = now_ms();
                self.store.put(&inv)?;
                return Ok(false);
            }
            inv.due_ms = Some(now_ms());
            inv.updated_ms = now_ms();
            self.store.put(&inv)?;
            Ok(true)
        })();
        result.unwrap_or_else(|e| {
            tracing::warn!(invocation_id = %id, error = %format!("{e:#}"), "a queued fire-and-forget invocation could not be kept for the next start");
            false
        })
    }

    /// How many workers of a pool one function may hold at once: its share of the pool
    /// (`--workers-per-function`), and no more than its `limits.concurrency`.
    fn share(&self, function: &str) -> usize {
        let workers = self.options.workers.max(1);
        let share = match self.options.workers_per_function {
            0 => workers - workers / 4,
            n => n.min(workers),
        };
        let concurrency = self
            .registry
            .get(function)
            .map_or(1, |f| f.record.limits.concurrency as usize);
        share.min(concurrency).max(1)
    }

    /// Marks work as queued in this process; false when it already is.
    fn enqueue(&self, queue: Queue, id: &str) -> bool {
        self.in_process
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((queue, id.to_string()))
    }

    /// Whether this process has the work queued or running.
    fn in_process(&self, queue: Queue, id: &str) -> bool {
        self.in_process
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&(queue, id.to_string()))
    }

    /// Work that this process has finished with (stored its outcome, or given up).
    fn dequeue(&self, queue: Queue, id: &str) {
        // Released first: once out of `in_process`, a new delivery of it may be taken and held
        // here, and must not be released with this one.
        self.store.release(queue, id);
        self.in_process
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(queue, id.to_string()));
        if queue == Queue::Attempts && self.store.shared() {
            // A worker is free: take more from the shared queue.
            self.wake_scanner.notify_one();
        }
    }

    /// A lease on work taken now by this process.
    fn lease(&self, queue: Queue) -> Lease {
        let hold = match queue {
            Queue::Attempts => self.options.attempt_lease,
            Queue::Callbacks => CALLBACK_LEASE,
        };
        Lease {
            owner: self.owner.clone(),
            until_ms: now_ms() + hold.as_millis() as u64,
        }
    }

    /// Attempts running in this process now, and taken attempts waiting for a worker.
    pub fn load(&self) -> (usize, usize) {
        (self.running_ids().len(), self.ready.len())
    }

    /// Sets the metrics' queue gauges from the worker pools (at scrape time).
    pub fn note_queues(&self) {
        let metrics = self.runtime.metrics();
        metrics.set_queued("store_and_forward", self.ready.len());
        metrics.set_queued("fire_and_forget", self.ff.len());
        let due = self
            .store
            .count_due(Queue::Attempts, now_ms(), 100_000)
            .unwrap_or(0);
        metrics.set_running_and_due(self.running_ids().len(), due);
    }

    /// The host-wide secret that signs callbacks.
    pub fn callback_secret(&self) -> &str {
        &self.options.callback_secret
    }

    /// The public URL of an invocation's status document.
    pub fn status_url(&self, id: &str) -> String {
        format!(
            "{}{}{id}",
            self.options.public_url,
            ferry_triggers::http::STATUS_PREFIX
        )
    }

    /// Accepts an asynchronous invocation. Store-and-forward returns only once it is durable.
    /// The bool is false when an idempotency key matched an earlier invocation.
    pub async fn submit(&self, req: SubmitRequest) -> Result<(Invocation, bool), SubmitFailure> {
        let callback = match &req.callback_url {
            Some(url) => Some(Callback::new(
                self.guard
                    .check(url)
                    .await
                    .map_err(|e| SubmitFailure::BadRequest(format!("X-Callback-Url: {e}")))?
                    .to_string(),
            )),
            None => None,
        };
        let key = idempotency_key(&req);
        let check_key = req.replaces_key.is_none();
        let inv = new_invocation(req, key, callback);
        match inv.mode {
            DeliveryMode::StoreAndForward => {
                // Fast path: with a worker slot free, take the new invocation at once (leased,
                // so the scanner leaves it alone); otherwise the scanner will.
                // A shared store hands work out to every host: it goes that way only.
                let slot = (!self.store.shared() && self.ready.room() > 0).then_some(());
                let lease = slot.as_ref().map(|_| self.lease(Queue::Attempts));
                // Registered before the insert, so a duplicate that finds the insert finds this.
                let _committing = inv
                    .idempotency_key
                    .as_ref()
                    .map(|_| Committing::register(self, &inv.id));
                if let Some(existing) = self.store_new(&inv, check_key, lease.as_ref())? {
                    // It may still be on its way to disk: wait until its own submit has been
                    // journaled (or has failed), then for what is journaled so far.
                    let original = self.lock_committing().get(&existing.id).cloned();
                    if let Some(mut original) = original {
                        Self::within(async {
                            let _ = original.changed().await;
                            Ok(())
                        })
                        .await?;
                    }
                    if let Some(journal) = &self.journal {
                        Self::within(journal.durable(journal.barrier())).await?;
                    }
                    // Its own submit may have failed meanwhile (and removed it).
                    if self
                        .store
                        .get(&existing.id)
                        .map_err(store_failed)?
                        .is_none()
                    {
                        return Err(SubmitFailure::Unavailable(
                            "not accepted: an earlier submit with the same key was not stored; retry".into(),
                        ));
                    }
                    return Ok((existing, false));
                }
                if let Err(e) = self.commit(&inv).await {
                    // Not acknowledged, so it must not run either (nor hold its lease, nor its
                    // idempotency key): the caller was told it failed.
                    if let Err(removing) = self.store.remove(&inv.id) {
                        tracing::warn!(invocation_id = %inv.id, error = %format!("{removing:#}"), "an invocation that was not made durable could not be removed; it may still run");
                    }
                    return Err(e);
                }
                match slot {
                    Some(()) if self.enqueue(Queue::Attempts, &inv.id) => {
                        self.ready
                            .push(&inv.function, inv.id.clone(), self.share(&inv.function))
                    }
                    _ => self.wake_scanner.notify_one(),
                }
            }
            DeliveryMode::FireAndForget => {
                if let Some(existing) = self.store_new(&inv, check_key, None)? {
                    return Ok((existing, false));
                }
                if !self
                    .ff
                    .try_push(&inv.function, inv.id.clone(), self.share(&inv.function))
                {
                    self.store.remove(&inv.id).map_err(store_failed)?;
                    self.runtime.metrics().async_refused("fire_and_forget");
                    return Err(SubmitFailure::QueueFull);
                }
            }
        }
        Ok((inv, true))
    }

    /// Stores a new invocation and claims its idempotency key, atomically; with `check_key`,
    /// an invocation that already holds the key is returned instead and nothing is stored.
    fn store_new(
        &self,
        inv: &Invocation,
        check_key: bool,
        lease: Option<&Lease>,
    ) -> Result<Option<Invocation>, SubmitFailure> {
        self.store
            .insert(inv, check_key, lease)
            .map_err(store_failed)
    }

    async fn commit(&self, inv: &Invocation) -> Result<(), SubmitFailure> {
        match &self.journal {
            Some(journal) => Self::within(journal.commit(inv)).await,
            // A shared store's insert was durable when it returned.
            None => Ok(()),
        }
    }

    fn lock_committing(&self) -> MutexGuard<'_, HashMap<String, tokio::sync::watch::Receiver<()>>> {
        self.committing.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn within(
        f: impl std::future::Future<Output = anyhow::Result<()>>,
    ) -> Result<(), SubmitFailure> {
        match tokio::time::timeout(Duration::from_secs(30), f).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(store_failed(e)),
            Err(_) => Err(SubmitFailure::Unavailable(
                "the store did not flush within 30s".into(),
            )),
        }
    }

    /// The payload of an invocation (the request or event it runs), if it exists.
    pub fn payload(&self, id: &str) -> anyhow::Result<Option<Payload>> {
        self.store.payload(id)
    }

    /// The invocation as stored now, if it exists (finished ones are kept for the retention).
    pub fn get(&self, id: &str) -> anyhow::Result<Option<Invocation>> {
        self.store.get(id)
    }

    /// The invocation once it has finished, or as it is when `max` has passed.
    pub async fn wait(&self, id: &str, max: Duration) -> anyhow::Result<Option<Invocation>> {
        let mut done = self.done.subscribe();
        // Finished by another host sharing the store (never resolves when there is none).
        let mut elsewhere = self.store.finished();
        let deadline = tokio::time::Instant::now() + max;
        loop {
            let inv = self.store.get(id)?;
            match &inv {
                Some(i) if !i.status.is_final() => {}
                _ => return Ok(inv),
            }
            loop {
                let next = async {
                    match &mut elsewhere {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                };
                let finished = tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => return self.store.get(id),
                    finished = done.recv() => finished,
                    finished = next => finished,
                };
                match finished {
                    Ok(finished) if finished != id => continue,
                    // Ours finished, or we lagged behind: look again.
                    _ => break,
                }
            }
        }
    }

    /// The status document of an invocation.
    pub fn view(&self, inv: &Invocation) -> InvocationView {
        let running = inv.status == Status::Pending && self.running_ids().contains(&inv.id);
        InvocationView::of(inv, running, self.status_url(&inv.id))
    }

    /// The ids whose attempt runs in this process now. A set of ids stays valid whatever
    /// panicked while the lock was held, so a poisoned lock is used as it is.
    fn running_ids(&self) -> MutexGuard<'_, HashSet<String>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// When the shutdown signal came (now, if it has not been seen yet).
    fn stop_requested_at(&self) -> tokio::time::Instant {
        *self.stop_requested.get_or_init(tokio::time::Instant::now)
    }

    /// Resolves once shutdown has been requested and the grace period has passed since.
    async fn grace_expired(&self) {
        let mut shutdown = self.shutdown.clone();
        shutdown.requested().await;
        tokio::time::sleep_until(self.stop_requested_at() + self.options.shutdown_grace).await;
    }

    /// Waits until every task of the engine has ended, after the shutdown signal: attempts in
    /// flight are recorded (finished, or interrupted after the grace period) and the journal is
    /// folded into the store.
    pub async fn stopped(&self) {
        self.tasks.close();
        self.tasks.wait().await;
        // Only now: submits in flight while the triggers drained still needed it.
        self.journal_closing.send_replace(true);
        let task = self
            .journal_task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(task) = task {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "the journal task failed");
            }
        }
    }

    /// Dead-lettered invocations (and invocations whose callback was dead-lettered).
    pub fn dead_letters(&self) -> anyhow::Result<Vec<Invocation>> {
        self.store.dead_letters()
    }

    /// Submits a dead letter again. A dead invocation becomes a new store-and-forward
    /// invocation with a new id (returned), which takes over its idempotency key; the dead letter
    /// is removed only once the new invocation is durable, and records `replayed_as`. A dead
    /// callback is scheduled again on the same invocation (returned as it is).
    pub async fn replay(&self, id: &str) -> Result<Option<Invocation>, SubmitFailure> {
        let Some(mut inv) = self.store.get(id).map_err(store_failed)? else {
            return Ok(None);
        };
        if !inv.is_dead_letter() {
            return Ok(None);
        }
        if inv.status == Status::DeadLettered {
            let function = self.registry.get(&inv.function).ok_or_else(|| {
                SubmitFailure::BadRequest(format!(
                    "function {} no longer exists; deploy it before replaying",
                    inv.function
                ))
            })?;
            let trace = inv.origin.child_span();
            let started = crate::otel::start();
            let (new, _) = self
                .submit(SubmitRequest {
                    function,
                    mode: Some(DeliveryMode::StoreAndForward),
                    payload: match inv.payload.take() {
                        Some(p) => p,
                        None => self
                            .store
                            .payload(id)
                            .map_err(store_failed)?
                            .ok_or_else(|| {
                                SubmitFailure::BadRequest(format!(
                                    "the stored payload of {id} is missing; it cannot be replayed"
                                ))
                            })?,
                    },
                    callback_url: inv.callback.as_ref().map(|c| c.url.clone()),
                    idempotency_key: None,
                    replaces_key: Some(inv.idempotency_key.clone()),
                    trigger: inv.origin.trigger_label(),
                    trace: trace.clone(),
                })
                .await?;
            if let Some(started) = started {
                // The replay is the parent of the new attempts and callback.
                use opentelemetry::KeyValue;
                crate::otel::span(
                    "ferry.receive",
                    crate::otel::Kind::Server,
                    &trace,
                    started.elapsed(),
                    vec![
                        KeyValue::new("faas.invoked_name", inv.function.clone()),
                        KeyValue::new("faas.invocation_id", new.id.clone()),
                        KeyValue::new("ferry.trigger", "replay"),
                        KeyValue::new("ferry.replay_of", inv.id.clone()),
                    ],
                    None,
                );
            }
            // The new invocation is durable (submit waited for the journal): only now does the
            // dead letter go. Its key now belongs to the new invocation.
            inv.idempotency_key = None;
            inv.replayed_as = Some(new.id.clone());
            inv.updated_ms = now_ms();
            if let Some(cb) = inv.callback.as_mut() {
                // The replacement delivers its own callback; this one is settled.
                if cb.status == CallbackStatus::DeadLettered {
                    cb.status = CallbackStatus::Failed;
                    cb.last_error = Some(format!("replaced: replayed as {}", new.id));
                }
            }
            self.store.put(&inv).map_err(store_failed)?;
            return Ok(Some(new));
        }
        // The invocation finished; its callback was dead-lettered.
        let now = now_ms();
        if let Some(cb) = inv.callback.as_mut() {
            cb.status = CallbackStatus::Pending;
            cb.attempts = 0;
            cb.due_ms = Some(now);
        }
        inv.updated_ms = now;
        self.store.put(&inv).map_err(store_failed)?;
        self.wake_callbacks.notify_one();
        Ok(Some(inv))
    }

    /// Removes dead letters (all, or one); returns how many.
    pub fn purge(&self, only: Option<&str>) -> anyhow::Result<usize> {
        let mut n = 0;
        for inv in self.dead_letters()? {
            if only.is_some_and(|id| id != inv.id) {
                continue;
            }
            if self.store.remove(&inv.id)? {
                n += 1;
            }
        }
        self.store.flush_delivery()?;
        Ok(n)
    }
}

/// A store error as a submit's answer: 507 when the disk is full, else 503; both say the submit
/// was not accepted, so trying again later is safe.
fn store_failed(e: anyhow::Error) -> SubmitFailure {
    if crate::store::is_disk_full(&e) {
        SubmitFailure::StorageFull(format!(
            "not accepted: the disk of the store is full ({e:#}); nothing was stored, retry later"
        ))
    } else {
        SubmitFailure::Unavailable(format!(
            "not accepted: the store failed ({e:#}); nothing was stored, retry later"
        ))
    }
}

/// The idempotency key of a submit: the caller's `Idempotency-Key`, or an event's `source` + `id`,
/// scoped to the function; a replay takes over the dead letter's key.
fn idempotency_key(req: &SubmitRequest) -> Option<String> {
    let name = req.function.name();
    match (&req.replaces_key, &req.idempotency_key, &req.payload) {
        (Some(replaced), _, _) => replaced.clone(),
        (None, Some(k), _) => Some(format!("{name}\u{0}{k}")),
        (None, None, Payload::Event { event }) => event
            .event()
            .ok()
            .map(|e| format!("{name}\u{0}ce\u{0}{}\u{0}{}", e.source, e.id)),
        (None, None, Payload::Http { .. }) => None,
    }
}

/// A new pending invocation of `req`, due now when it is store-and-forward.
fn new_invocation(
    req: SubmitRequest,
    key: Option<String>,
    callback: Option<Callback>,
) -> Invocation {
    let f = &req.function;
    let mode = req.mode.unwrap_or(f.record.delivery.mode);
    let now = now_ms();
    Invocation {
        id: uuid::Uuid::now_v7().simple().to_string(),
        function: f.name().to_string(),
        mode,
        status: Status::Pending,
        attempts: 0,
        created_ms: now,
        updated_ms: now,
        due_ms: (mode == DeliveryMode::StoreAndForward).then_some(now),
        policy: match mode {
            DeliveryMode::StoreAndForward => f.record.delivery.retry,
            DeliveryMode::FireAndForget => RetryPolicy::once(),
        },
        payload: Some(req.payload),
        result: None,
        error: None,
        history: Vec::new(),
        callback,
        idempotency_key: key,
        replayed_as: None,
        origin: Origin {
            trigger: Some(req.trigger.to_string()),
            traceparent: Some(req.trace.traceparent()),
            tracestate: req.trace.state.clone(),
        },
    }
}

/// A keyed submit on its way to disk (see `Delivery::committing`): dropped when its commit has
/// ended, one way or the other.
struct Committing<'a> {
    delivery: &'a Delivery,
    id: String,
    _done: tokio::sync::watch::Sender<()>,
}

impl<'a> Committing<'a> {
    fn register(delivery: &'a Delivery, id: &str) -> Self {
        let (done, waiting) = tokio::sync::watch::channel(());
        delivery.lock_committing().insert(id.to_string(), waiting);
        Self {
            delivery,
            id: id.to_string(),
            _done: done,
        }
    }
}

impl Drop for Committing<'_> {
    fn drop(&mut self) {
        self.delivery.lock_committing().remove(&self.id);
    }
}
