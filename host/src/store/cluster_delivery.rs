//! The cluster's delivery store: the delivery engine's storage port on NATS JetStream, shared by
//! every host of a cluster.
//!
//! - invocation records: KV `<prefix>_invocations`, one key per invocation id; a finished
//!   record (nothing pending, not a dead letter) is written with a per-key TTL of the retention;
//! - payloads: KV `<prefix>_payloads` (up to [`KV_PAYLOAD`] bytes), else the object store
//!   `<prefix>_payloads`; written with a TTL of the retry policy's age limit plus the retention,
//!   and again without one when the invocation is dead-lettered;
//! - idempotency keys: KV `<prefix>_idempotency`, the key's sha256 → invocation id, claimed with
//!   a compare-and-set (expected revision 0), with the payload's TTL;
//! - dead letters: KV `<prefix>_dead`, one key per dead-lettered invocation;
//! - due work: the work-queue stream `<prefix>_work` with subjects `<prefix>.work.attempts` and
//!   `<prefix>.work.callbacks`, each read by one durable pull consumer all hosts share
//!   (`<prefix>_attempts`, `<prefix>_callbacks`). A message is an invocation id: "look at this
//!   invocation". The record is the truth: a host that takes a message reads the record, and
//!   drops the message when the record is no longer due on that queue, or gives it back with a
//!   delay (`-NAK {"delay":…}`) when it is due later. A taken message is the lease: the host
//!   tells the server it is still working on it (`+WPI`) every [`KEEPALIVE`], and the server
//!   hands it to another host [`ACK_WAIT`] after its holder went silent. It is acknowledged only
//!   after the outcome is stored, so an invocation whose host died runs again elsewhere (at
//!   least once).
//!
//! Every write is acknowledged by JetStream before the call returns (how durable that is follows
//! the stream's replicas and the server's `sync_interval`: docs/cluster.md), so the host's
//! submit journal is not used in cluster mode: a 202 follows the JetStream acknowledgements.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer::pull, kv, object_store, AckKind};
use bytes::Bytes;
use futures::StreamExt as _;
use sha2::Digest as _;
use tokio::io::AsyncReadExt as _;
use tokio::sync::broadcast;

use super::cluster::{ttl_bucket, write, Names};
use crate::delivery::record::{now_ms, Invocation, Payload};
use crate::delivery::store::{DeliveryStore, Lease, Queue};
use crate::model::DeliveryMode;

/// Payloads up to this size (as stored) go to the payload bucket; larger ones to the object
/// store (a KV value must fit in one NATS message, 1 MiB by default).
const KV_PAYLOAD: usize = 256 * 1024;

/// How long a taken message is held for a host that stopped saying it still works on it.
const ACK_WAIT: Duration = Duration::from_secs(30);

/// How often a host says it still works on what it took.
const KEEPALIVE: Duration = Duration::from_secs(10);

/// Messages handed out and not yet acknowledged, per consumer: no limit, as a retry waiting
/// for its time is one of them (a limit would stop new work once that many wait). Work in
/// flight is bounded by each host, which takes no more than its workers can start.
const MAX_ACK_PENDING: i64 = -1;

/// The most messages one pull request asks for.
const MAX_PULL: usize = 64;

/// How long the server keeps a host's pull request waiting for messages. Every host keeps one
/// waiting while it has idle workers, and the server hands each new message to the next waiting
/// request in turn: a burst is shared across the hosts by the server, not by which host asks
/// first. A request the server lost (its leader changed) is replaced after this and a second.
const PULL_EXPIRES: Duration = Duration::from_secs(1);

/// A message may be ahead of the record it is about (a submit writes the work message, then
/// the record; a callback's message goes out before the finished record): a message whose
/// record is missing or not due is looked at again, with a growing delay, this many times
/// (about a minute in all) before it is dropped. Counted in deliveries, not by clocks.
const AHEAD_DELIVERIES: i64 = 20;

/// How long an idempotency key leading to no record may be the record's submit still at work.
const KEY_GRACE: Duration = Duration::from_secs(60);

/// The delay before looking again at a message ahead of its record, on its `delivered`th
/// delivery: soon at first (the record is usually a write away), then up to 5 s.
fn ahead_delay(delivered: i64) -> Duration {
    Duration::from_millis((10u64 << (delivered.clamp(1, 10) - 1)).min(5_000))
}

/// How long a new submit's record write is waited for before its message is given back.
const RECORD_WRITE: Duration = Duration::from_millis(5);

/// How long one store call may wait for JetStream.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

type Consumer = jetstream::consumer::Consumer<pull::Config>;

/// The delivery store of a cluster (see the module's documentation).
pub struct ClusterDelivery {
    runtime: tokio::runtime::Handle,
    nats: Nats,
    attempts: Arc<Pull>,
    callbacks: Arc<Pull>,
    subjects: Subjects,
    /// The messages this host holds: their reply subjects (acknowledging, or giving back, a
    /// message is a publish to it) and the end of the engine's lease on them.
    held: Arc<Mutex<HashMap<(Queue, String), Held>>>,
    retention: Duration,
    finished: broadcast::Sender<String>,
}

/// The connection and the buckets, cloned into each call's future.
#[derive(Clone)]
struct Nats {
    client: async_nats::Client,
    js: jetstream::Context,
    records: kv::Store,
    keys: kv::Store,
    dead: kv::Store,
    payloads: kv::Store,
    large: object_store::ObjectStore,
}

/// One queue's messages on their way to this host: a task keeps a pull request waiting on the
/// shared consumer for as many messages as the host can start, and the engine takes what
/// arrived.
struct Pull {
    consumer: Consumer,
    /// Messages the server handed to this host that the engine has not taken yet.
    arrived: Mutex<std::collections::VecDeque<jetstream::Message>>,
    /// How many messages the host could start, counting those arrived and not yet taken.
    room: std::sync::atomic::AtomicUsize,
    /// Wakes the pulling task when the room grows.
    more: tokio::sync::Notify,
    /// Wakes the engine when messages arrive.
    ready: Arc<tokio::sync::Notify>,
    /// The engine takes no more (the host is stopping): what arrives is given back at once.
    stopped: std::sync::atomic::AtomicBool,
}

impl Pull {
    fn new(consumer: Consumer) -> Arc<Self> {
        Arc::new(Self {
            consumer,
            arrived: Mutex::new(Default::default()),
            room: Default::default(),
            more: Default::default(),
            ready: Default::default(),
            stopped: Default::default(),
        })
    }

    fn arrived(&self) -> std::sync::MutexGuard<'_, std::collections::VecDeque<jetstream::Message>> {
        self.arrived.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps one pull request waiting while there is room for more than has arrived, and
    /// queues what it brings. Ends when the store is gone.
    async fn run(this: std::sync::Weak<Self>) {
        use std::sync::atomic::Ordering;
        loop {
            let Some(pull) = this.upgrade() else { return };
            if pull.stopped.load(Ordering::SeqCst) {
                return;
            }
            let want = pull
                .room
                .load(Ordering::SeqCst)
                .saturating_sub(pull.arrived().len())
                .min(MAX_PULL);
            if want == 0 {
                // The room is set again by each take.
                let _ = tokio::time::timeout(Duration::from_secs(1), pull.more.notified()).await;
                continue;
            }
            let request = pull
                .consumer
                .batch()
                .max_messages(want)
                .expires(PULL_EXPIRES)
                .messages();
            let mut batch = match request.await {
                Ok(batch) => batch,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot ask for due work; asking again in a moment");
                    drop(pull);
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    continue;
                }
            };
            // The server ends the request when it is filled or expires; a request it lost is
            // given up a second after it would have expired.
            let deadline = tokio::time::Instant::now() + PULL_EXPIRES + Duration::from_secs(1);
            loop {
                match tokio::time::timeout_at(deadline, batch.next()).await {
                    Ok(Some(Ok(msg))) if pull.stopped.load(Ordering::SeqCst) => {
                        let _ = msg.ack_with(AckKind::Nak(None)).await;
                    }
                    Ok(Some(Ok(msg))) => {
                        pull.arrived().push_back(msg);
                        pull.ready.notify_one();
                    }
                    Ok(Some(Err(e))) => {
                        // Refused by the server (no consumer leader during an election, the
                        // consumer deleted): ask again in a moment, not in a tight loop.
                        tracing::debug!(error = %e, "a request for due work ended early");
                        tokio::time::sleep(Duration::from_millis(250)).await;
                        break;
                    }
                    Ok(None) | Err(_) => break,
                }
            }
        }
    }

    /// Up to `limit` of the messages that arrived.
    fn take(&self, limit: usize) -> Vec<jetstream::Message> {
        let mut arrived = self.arrived();
        let n = limit.min(arrived.len());
        arrived.drain(..n).collect()
    }

    /// Asks for messages for `room` more starts, beyond those arrived and not yet taken.
    fn set_room(&self, room: usize) {
        self.room.store(room, std::sync::atomic::Ordering::SeqCst);
        self.more.notify_one();
    }

    /// Takes no more: asks for nothing, and gives back what arrived (at once, so that another
    /// host takes it without waiting for the ack wait).
    fn stop(&self, runtime: &tokio::runtime::Handle) {
        self.stopped
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.set_room(0);
        let arrived: Vec<_> = self.arrived().drain(..).collect();
        if !arrived.is_empty() {
            runtime.spawn(async move {
                for msg in arrived {
                    let _ = msg.ack_with(AckKind::Nak(None)).await;
                }
            });
        }
    }
}

/// A message this host took.
#[derive(Clone)]
struct Held {
    reply: async_nats::Subject,
    /// The message's sequence in the stream: a redelivery of it has the same one, a second
    /// message for the same invocation another.
    seq: u64,
}

#[derive(Clone)]
struct Subjects {
    attempts: String,
    callbacks: String,
    finished: String,
}

impl Subjects {
    fn of(&self, queue: Queue) -> &str {
        match queue {
            Queue::Attempts => &self.attempts,
            Queue::Callbacks => &self.callbacks,
        }
    }
}

/// Whether a publish failed because the subject's last sequence was not the expected one.
fn lost_race(e: &jetstream::context::PublishError) -> bool {
    e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence
}

/// The queue an invocation is due on, and when.
fn due_on(inv: &Invocation, queue: Queue) -> Option<u64> {
    let finished = inv.status.is_final();
    match queue {
        Queue::Attempts => (!finished && inv.mode == DeliveryMode::StoreAndForward)
            .then_some(inv.due_ms)
            .flatten(),
        Queue::Callbacks => (finished && inv.callback_pending())
            .then(|| inv.callback.as_ref().and_then(|c| c.due_ms).unwrap_or(0)),
    }
}

/// Whether a record may go once the retention has passed: finished, nothing pending, not a
/// dead letter (the sled store's expiry rule).
fn expirable(inv: &Invocation) -> bool {
    inv.status.is_final() && !inv.is_dead_letter() && !inv.callback_pending()
}

/// Seconds from `unix_s` (a time in seconds since the Unix epoch) to now; 0 for a future one.
fn age_s(unix_s: i64) -> u64 {
    ((now_ms() / 1000) as i64).saturating_sub(unix_s).max(0) as u64
}

/// A KV key for an idempotency key (which may hold any bytes).
fn key_of(idempotency_key: &str) -> String {
    hex::encode(sha2::Sha256::digest(idempotency_key.as_bytes()))
}

impl ClusterDelivery {
    /// Opens (creating when missing) the buckets, the work stream and its consumers named by
    /// `names`, with `replicas` copies of each. Finished invocations are kept for `retention`.
    pub async fn open(
        client: async_nats::Client,
        names: &Names,
        replicas: usize,
        retention: Duration,
    ) -> anyhow::Result<Arc<Self>> {
        let js = jetstream::new(client.clone());
        let records = ttl_bucket(
            &js,
            &names.invocations,
            "Ferry invocation records",
            replicas,
        )
        .await?;
        let keys = ttl_bucket(&js, &names.idempotency, "Ferry idempotency keys", replicas).await?;
        let dead = ttl_bucket(&js, &names.dead, "Ferry dead letters", replicas).await?;
        let payloads =
            ttl_bucket(&js, &names.payloads, "Ferry invocation payloads", replicas).await?;
        let large = match js.get_object_store(&names.payloads).await {
            Ok(store) => store,
            Err(_) => js
                .create_object_store(object_store::Config {
                    bucket: names.payloads.clone(),
                    description: Some("Ferry invocation payloads too large for a key".into()),
                    storage: jetstream::stream::StorageType::File,
                    num_replicas: replicas,
                    ..Default::default()
                })
                .await
                .with_context(|| format!("cannot create the object store {}", names.payloads))?,
        };
        let stream = js
            .get_or_create_stream(jetstream::stream::Config {
                name: names.work.clone(),
                description: Some("Ferry due work: invocation ids to look at".into()),
                subjects: vec![format!("{}.>", names.work_subject)],
                retention: jetstream::stream::RetentionPolicy::WorkQueue,
                storage: jetstream::stream::StorageType::File,
                num_replicas: replicas,
                ..Default::default()
            })
            .await
            .with_context(|| format!("cannot create the stream {}", names.work))?;
        let subjects = Subjects {
            attempts: format!("{}.attempts", names.work_subject),
            callbacks: format!("{}.callbacks", names.work_subject),
            finished: names.finished_subject.clone(),
        };
        let consumer = |name: String, subject: String| {
            let stream = stream.clone();
            async move {
                stream
                    .get_or_create_consumer(
                        &name,
                        pull::Config {
                            durable_name: Some(name.clone()),
                            description: Some("Ferry hosts take due work here".into()),
                            filter_subject: subject,
                            ack_policy: jetstream::consumer::AckPolicy::Explicit,
                            ack_wait: ACK_WAIT,
                            // The engine counts attempts and dead-letters; the stream only
                            // hands work out.
                            max_deliver: -1,
                            max_ack_pending: MAX_ACK_PENDING,
                            ..Default::default()
                        },
                    )
                    .await
                    .with_context(|| format!("cannot create the consumer {name}"))
            }
        };
        let attempts = consumer(names.attempts.clone(), subjects.attempts.clone()).await?;
        let callbacks = consumer(names.callbacks.clone(), subjects.callbacks.clone()).await?;
        let this = Arc::new(Self {
            runtime: tokio::runtime::Handle::current(),
            nats: Nats {
                client: client.clone(),
                js,
                records,
                keys,
                dead,
                payloads,
                large,
            },
            attempts: Pull::new(attempts),
            callbacks: Pull::new(callbacks),
            subjects,
            held: Arc::new(Mutex::new(HashMap::new())),
            retention,
            finished: broadcast::channel(4096).0,
        });
        this.clone().spawn_background().await?;
        Ok(this)
    }

    /// Keeps what this host holds from going to another host, and passes on which invocations
    /// any host finished (for long polls here).
    async fn spawn_background(self: Arc<Self>) -> anyhow::Result<()> {
        let mut finished = self
            .nats
            .client
            .subscribe(self.subjects.finished.clone())
            .await
            .context("cannot subscribe to finished invocations")?;
        let tx = self.finished.clone();
        tokio::spawn(async move {
            while let Some(msg) = finished.next().await {
                let _ = tx.send(String::from_utf8_lossy(&msg.payload).into_owned());
            }
        });
        for pull in [&self.attempts, &self.callbacks] {
            tokio::spawn(Pull::run(Arc::downgrade(pull)));
        }
        let this = Arc::downgrade(&self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(KEEPALIVE);
            loop {
                tick.tick().await;
                let Some(this) = this.upgrade() else { return };
                // Held until the engine is done with it (it stores the outcome, or releases
                // it); arrived until the engine has room to take it.
                let mut replies: Vec<_> = this.held().values().map(|h| h.reply.clone()).collect();
                for pull in [&this.attempts, &this.callbacks] {
                    replies.extend(pull.arrived().iter().filter_map(|m| m.reply.clone()));
                }
                let client = this.nats.client.clone();
                drop(this);
                for reply in replies {
                    let _ = client.publish(reply, AckKind::Progress.into()).await;
                }
            }
        });
        Ok(())
    }

    /// Runs `work` on the host's runtime and waits for it, at most [`CALL_TIMEOUT`].
    fn call<T: Send + 'static>(
        &self,
        what: &str,
        work: impl Future<Output = anyhow::Result<T>> + Send + 'static,
    ) -> anyhow::Result<T> {
        super::cluster::wait_on(&self.runtime, CALL_TIMEOUT, what, work)
    }

    fn pull(&self, queue: Queue) -> &Arc<Pull> {
        match queue {
            Queue::Attempts => &self.attempts,
            Queue::Callbacks => &self.callbacks,
        }
    }

    /// Tells the server what became of a message this host held.
    async fn settle(client: &async_nats::Client, reply: async_nats::Subject, kind: AckKind) {
        if let Err(e) = client.publish(reply, kind.into()).await {
            // Not acknowledged: the server hands the message out again after ACK_WAIT, and the
            // record says what it is due for by then.
            tracing::debug!(error = %e, "cannot settle a work message");
        }
    }

    /// Writes an invocation's new state over the stored one (compare-and-set on its revision),
    /// with its dead-letter index, and keeps a dead letter's payload and key for good. None
    /// when nothing was written: the invocation was removed meanwhile, or another host stored
    /// it as finished while this one still ran it (it stays finished).
    async fn store_state(
        n: &Nats,
        inv: &Invocation,
        retention: Duration,
    ) -> anyhow::Result<Option<Invocation>> {
        let Nats {
            js,
            records,
            dead,
            keys,
            payloads,
            ..
        } = n;
        let mut previous = None;
        for _ in 0..16 {
            let Some((before, revision)) = read_record(records, &inv.id).await? else {
                return Ok(None);
            };
            if before.status.is_final() && !inv.status.is_final() {
                return Ok(None);
            }
            let value = Bytes::from(serde_json::to_vec(inv)?);
            // A fire-and-forget invocation never finished by its host (stopped or lost with
            // it) goes too, in time.
            let ttl =
                (expirable(inv) || inv.mode == DeliveryMode::FireAndForget).then_some(retention);
            match write(js, records, &inv.id, value, ttl, Some(revision)).await {
                Ok(_) => {
                    previous = Some(before);
                    break;
                }
                Err(e) if lost_race(&e) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        let Some(before) = previous else {
            anyhow::bail!("the record of {} kept changing under this write", inv.id);
        };
        let now_dead = inv.is_dead_letter();
        if now_dead && !before.is_dead_letter() {
            dead.put(&inv.id, Bytes::new()).await?;
            // Kept for a replay, however long that takes.
            if let Some(v) = payloads.get(&inv.id).await? {
                write(js, payloads, &inv.id, v, None, None).await?;
            }
            if let Some(key) = &inv.idempotency_key {
                let k = key_of(key);
                if let Some(v) = keys.get(&k).await? {
                    if v == inv.id.as_bytes() {
                        write(js, keys, &k, v, None, None).await?;
                    }
                }
            }
        } else if !now_dead && before.is_dead_letter() {
            dead.purge(&inv.id).await?;
        }
        Ok(Some(inv.clone()))
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<(Queue, String), Held>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn decode(v: &[u8]) -> anyhow::Result<Invocation> {
    serde_json::from_slice(v).context("an invocation record is not valid JSON")
}

async fn read_record(records: &kv::Store, id: &str) -> anyhow::Result<Option<(Invocation, u64)>> {
    match records.entry(id).await? {
        Some(e) if e.operation == kv::Operation::Put => Ok(Some((decode(&e.value)?, e.revision))),
        _ => Ok(None),
    }
}

impl DeliveryStore for ClusterDelivery {
    fn insert(
        &self,
        inv: &Invocation,
        check_key: bool,
        _lease: Option<&Lease>,
    ) -> anyhow::Result<Option<Invocation>> {
        let Nats {
            js,
            records,
            keys,
            payloads,
            large,
            ..
        } = self.nats.clone();
        let (inv, subject) = (inv.clone(), self.subjects.attempts.clone());
        let keep = inv.policy.max_age + self.retention;
        let ff_ttl = self.retention;
        self.call("store an invocation", async move {
            if let Some(key) = &inv.idempotency_key {
                let k = key_of(key);
                let id = Bytes::from(inv.id.clone());
                let claimed = if check_key {
                    write(&js, &keys, &k, id.clone(), Some(keep), Some(0)).await
                } else {
                    write(&js, &keys, &k, id.clone(), Some(keep), None).await
                };
                match claimed {
                    Ok(_) => {}
                    Err(e) if lost_race(&e) => {
                        // The key leads somewhere: to a stored invocation, which is the answer,
                        // or to one that is gone (expired, or never stored), which it no
                        // longer leads to.
                        let Some(entry) = keys.entry(&k).await? else {
                            anyhow::bail!(
                                "the idempotency key changed while it was claimed; retry"
                            );
                        };
                        let earlier = String::from_utf8_lossy(&entry.value).into_owned();
                        if entry.operation == kv::Operation::Put {
                            if let Some((existing, _)) = read_record(&records, &earlier).await? {
                                return Ok(Some(existing));
                            }
                            // Its submit may still be writing it: a key is taken over only
                            // once that submit has had time to finish or fail.
                            if age_s(entry.created.unix_timestamp()) < KEY_GRACE.as_secs() {
                                anyhow::bail!(
                                    "an earlier submit with the same idempotency key is still \
                                     being stored; retry in a moment"
                                );
                            }
                        }
                        write(&js, &keys, &k, id, Some(keep), Some(entry.revision))
                            .await
                            .context("the idempotency key was claimed meanwhile; retry")?;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            let stored = async {
                if let Some(p) = &inv.payload {
                    let bytes = p.to_stored();
                    if bytes.len() <= KV_PAYLOAD {
                        write(&js, &payloads, &inv.id, bytes.into(), Some(keep), None).await?;
                    } else {
                        large.put(inv.id.as_str(), &mut bytes.as_slice()).await?;
                    }
                }
                // The work message goes first: a record without one would never run, while a
                // message without a record (a submit that failed in between) is dropped by the
                // hosts that take it, after AHEAD_DELIVERIES looks.
                if due_on(&inv, Queue::Attempts).is_some() {
                    js.publish(subject, Bytes::from(inv.id.clone()))
                        .await?
                        .await?;
                }
                let record = Bytes::from(serde_json::to_vec(&inv.without_payload())?);
                let ttl = (inv.mode == DeliveryMode::FireAndForget).then_some(keep.max(ff_ttl));
                write(&js, &records, &inv.id, record, ttl, Some(0)).await?;
                anyhow::Ok(())
            }
            .await;
            if let Err(e) = stored {
                // The record's write may have been stored and its acknowledgement lost: then
                // the invocation runs, and is accepted.
                if matches!(read_record(&records, &inv.id).await, Ok(Some(_))) {
                    return Ok(None);
                }
                // Not accepted: the key must not lead to an invocation that was never stored.
                if let Some(key) = &inv.idempotency_key {
                    let k = key_of(key);
                    if keys.get(&k).await.ok().flatten().as_deref() == Some(inv.id.as_bytes()) {
                        let _ = keys.purge(&k).await;
                    }
                }
                return Err(e);
            }
            Ok(None)
        })
    }

    fn put(&self, inv: &Invocation) -> anyhow::Result<()> {
        let nats = self.nats.clone();
        let (js, client) = (nats.js.clone(), nats.client.clone());
        let inv = inv.without_payload();
        let mut held = Vec::new();
        for queue in [Queue::Attempts, Queue::Callbacks] {
            let reply = self.held().remove(&(queue, inv.id.clone()));
            held.push((queue, reply.map(|h| h.reply)));
        }
        let subjects = self.subjects.clone();
        let retention = self.retention;
        self.call("store an invocation's state", async move {
            let give_back = |held: Vec<(Queue, Option<async_nats::Subject>)>| async {
                // Not stored: the messages come back in a moment, and the record (as it is)
                // says what they are due for.
                for reply in held.into_iter().filter_map(|(_, r)| r) {
                    let again = AckKind::Nak(Some(Duration::from_secs(1)));
                    Self::settle(&client, reply, again).await;
                }
            };
            // A queue this state is due on and no held message covers gets its message before
            // the record: a crash in between leaves a message too many (dropped by the hosts
            // that take it), never a due record without one.
            for (queue, reply) in &held {
                if reply.is_none() && due_on(&inv, *queue).is_some() {
                    let queued = async {
                        js.publish(subjects.of(*queue).to_string(), Bytes::from(inv.id.clone()))
                            .await?
                            .await
                    }
                    .await;
                    if let Err(e) = queued {
                        give_back(held).await;
                        return Err(e.into());
                    }
                }
            }
            let stored = Self::store_state(&nats, &inv, retention).await;
            let written = match stored {
                Ok(written) => written,
                Err(e) => {
                    give_back(held).await;
                    return Err(e);
                }
            };
            let Some(inv) = written else {
                // Removed meanwhile (purged, expired), or finished by another host: it stays so.
                for reply in held.into_iter().filter_map(|(_, r)| r) {
                    Self::settle(&client, reply, AckKind::Ack).await;
                }
                return Ok(());
            };
            let now = now_ms();
            for (queue, reply) in held {
                let Some(reply) = reply else { continue };
                let kind = match due_on(&inv, queue) {
                    Some(due) => AckKind::Nak(Some(Duration::from_millis(due.saturating_sub(now)))),
                    None => AckKind::Ack,
                };
                Self::settle(&client, reply, kind).await;
            }
            if inv.status.is_final() {
                let _ = client
                    .publish(subjects.finished.clone(), Bytes::from(inv.id.clone()))
                    .await;
            }
            Ok(())
        })
    }

    fn get(&self, id: &str) -> anyhow::Result<Option<Invocation>> {
        let (records, id) = (self.nats.records.clone(), id.to_string());
        self.call("read an invocation", async move {
            Ok(read_record(&records, &id).await?.map(|(inv, _)| inv))
        })
    }

    fn payload(&self, id: &str) -> anyhow::Result<Option<Payload>> {
        let (payloads, large, id) = (
            self.nats.payloads.clone(),
            self.nats.large.clone(),
            id.to_string(),
        );
        self.call("read a payload", async move {
            if let Some(v) = payloads.get(&id).await? {
                return Payload::from_stored(&v).map(Some);
            }
            let mut object = match large.get(&id).await {
                Ok(object) => object,
                Err(e) if e.kind() == object_store::GetErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            let mut bytes = Vec::new();
            object.read_to_end(&mut bytes).await?;
            Payload::from_stored(&bytes).map(Some)
        })
    }

    fn take_due(
        &self,
        queue: Queue,
        now_ms: u64,
        _lease: &Lease,
        limit: usize,
        skip: &dyn Fn(&str) -> bool,
    ) -> anyhow::Result<Vec<Invocation>> {
        // What the server handed to this host for the room it has (see [`Pull`]).
        let limit = limit.max(1);
        let pull = self.pull(queue).clone();
        let messages = pull.take(limit);
        if messages.is_empty() {
            pull.set_room(limit);
            return Ok(Vec::new());
        }
        let (records, client, js) = (
            self.nats.records.clone(),
            self.nats.client.clone(),
            self.nats.js.clone(),
        );
        let callbacks = self.subjects.callbacks.clone();
        // Messages with their records; what is not due now is settled there and then.
        let fetched = self.call("take due work", async move {
            let reads = messages.iter().map(|m| {
                let id = String::from_utf8_lossy(&m.payload).into_owned();
                let first = m.info().is_ok_and(|info| info.delivered == 1);
                let records = records.clone();
                async move {
                    match read_record(&records, &id).await {
                        // A new submit's message reaches a waiting host about as its submit
                        // starts writing the record: look again once that write has had time,
                        // rather than giving the message back.
                        Ok(None) if first => {
                            tokio::time::sleep(RECORD_WRITE).await;
                            read_record(&records, &id).await
                        }
                        read => read,
                    }
                }
            });
            let reads = futures::future::join_all(reads).await;
            let mut out = Vec::new();
            let mut seen = HashSet::new();
            for (msg, read) in messages.into_iter().zip(reads) {
                let Some(reply) = msg.reply.clone() else {
                    continue;
                };
                let (seq, delivered) = match msg.info() {
                    Ok(info) => (info.stream_sequence, info.delivered),
                    Err(_) => (0, i64::MAX),
                };
                let redelivered = delivered > 1;
                let ahead = delivered < AHEAD_DELIVERIES;
                let inv = match read {
                    Ok(Some((inv, _))) => inv,
                    // Its submit may still be writing the record.
                    Ok(None) if ahead => {
                        let again = AckKind::Nak(Some(ahead_delay(delivered)));
                        Self::settle(&client, reply, again).await;
                        continue;
                    }
                    Ok(None) => {
                        Self::settle(&client, reply, AckKind::Ack).await;
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), "cannot read the record of due work; it is tried again later");
                        Self::settle(&client, reply, AckKind::Nak(Some(Duration::from_secs(1))))
                            .await;
                        continue;
                    }
                };
                match due_on(&inv, queue) {
                    // Finished with its callback pending, and handed out again: the host that
                    // finished it may have died before queuing the callback.
                    None if queue == Queue::Attempts
                        && redelivered
                        && due_on(&inv, Queue::Callbacks).is_some() =>
                    {
                        let queued = async {
                            js.publish(callbacks.clone(), Bytes::from(inv.id.clone()))
                                .await?
                                .await
                        }
                        .await;
                        let kind = match queued {
                            Ok(_) => AckKind::Ack,
                            Err(_) => AckKind::Nak(Some(Duration::from_secs(1))),
                        };
                        Self::settle(&client, reply, kind).await;
                    }
                    // Maybe ahead of the record that makes it due (a callback's message).
                    None if ahead => {
                        let again = AckKind::Nak(Some(ahead_delay(delivered)));
                        Self::settle(&client, reply, again).await;
                    }
                    // Not due here any more, or seen twice in this batch.
                    None => Self::settle(&client, reply, AckKind::Ack).await,
                    Some(_) if !seen.insert(inv.id.clone()) => {
                        Self::settle(&client, reply, AckKind::Ack).await
                    }
                    Some(due) if due > now_ms => {
                        let delay = Duration::from_millis(due - now_ms);
                        Self::settle(&client, reply, AckKind::Nak(Some(delay))).await;
                    }
                    Some(_) => out.push((inv, Held { reply, seq })),
                }
            }
            Ok(out)
        })?;
        let mut taken = Vec::new();
        let mut duplicates = Vec::new();
        let mut held = self.held();
        for (inv, message) in fetched {
            let key = (queue, inv.id.clone());
            match held.get_mut(&key) {
                // The message this process holds, handed out again: answer for it with the
                // new delivery's reply subject.
                Some(h) if h.seq == message.seq => h.reply = message.reply,
                // A second message for work this process already has.
                Some(_) => duplicates.push(message.reply),
                None => {
                    // Work this process still has queued or running (which should be held):
                    // hold the message, and do not queue the work twice.
                    let queued_here = skip(&inv.id);
                    held.insert(key, message);
                    if !queued_here {
                        taken.push(inv);
                    }
                }
            }
        }
        drop(held);
        if !duplicates.is_empty() {
            let client = self.nats.client.clone();
            self.runtime.spawn(async move {
                for reply in duplicates {
                    Self::settle(&client, reply, AckKind::Ack).await;
                }
            });
        }
        // Room for as many more as were not started here (given back, not due yet, or already
        // queued here).
        pull.set_room(limit.saturating_sub(taken.len()));
        Ok(taken)
    }

    fn count_due(&self, queue: Queue, _now_ms: u64, cap: usize) -> anyhow::Result<usize> {
        let consumer = self.pull(queue).consumer.clone();
        self.call("count due work", async move {
            let info = consumer.get_info().await?;
            Ok((info.num_pending as usize + info.num_ack_pending).min(cap))
        })
    }

    fn next_due(&self, queue: Queue) -> anyhow::Result<Option<u64>> {
        // Messages arrive as the server hands them out (given back with a delay, they come out
        // on their own), and [`DeliveryStore::arrivals`] says when.
        Ok((!self.pull(queue).arrived().is_empty()).then_some(0))
    }

    fn dead_letters(&self) -> anyhow::Result<Vec<Invocation>> {
        let (dead, records) = (self.nats.dead.clone(), self.nats.records.clone());
        self.call("list dead letters", async move {
            let mut out = Vec::new();
            let mut keys = match dead.keys().await {
                Ok(keys) => keys,
                Err(e) => return Err(e.into()),
            };
            while let Some(id) = keys.next().await {
                let id = id?;
                if let Some((inv, _)) = read_record(&records, &id).await? {
                    if inv.is_dead_letter() {
                        out.push(inv);
                    }
                }
            }
            out.sort_by(|a, b| a.id.cmp(&b.id));
            Ok(out)
        })
    }

    fn remove(&self, id: &str) -> anyhow::Result<bool> {
        let Nats {
            records,
            keys,
            dead,
            payloads,
            large,
            client,
            ..
        } = self.nats.clone();
        let id = id.to_string();
        let held: Vec<_> = [Queue::Attempts, Queue::Callbacks]
            .into_iter()
            .filter_map(|q| self.held().remove(&(q, id.clone())))
            .map(|h| h.reply)
            .collect();
        self.call("remove an invocation", async move {
            for reply in held {
                Self::settle(&client, reply, AckKind::Ack).await;
            }
            let Some((inv, _)) = read_record(&records, &id).await? else {
                return Ok(false);
            };
            if let Some(key) = &inv.idempotency_key {
                let k = key_of(key);
                if let Some(entry) = keys.entry(&k).await? {
                    if entry.operation == kv::Operation::Put && entry.value == id.as_bytes() {
                        keys.purge(&k).await?;
                    }
                }
            }
            records.purge(&id).await?;
            payloads.purge(&id).await?;
            dead.purge(&id).await?;
            match large.delete(&id).await {
                Ok(()) => {}
                Err(e) if e.kind() == object_store::DeleteErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
            Ok(true)
        })
    }

    fn expire(&self, _before_ms: u64, limit: usize) -> anyhow::Result<usize> {
        // Records, small payloads and keys expire by their TTLs; a large payload whose record
        // is gone (expired) is removed here.
        let (records, large) = (self.nats.records.clone(), self.nats.large.clone());
        let grace = self.retention.min(Duration::from_secs(600));
        self.call("remove expired payloads", async move {
            let mut list = large.list().await?;
            let mut removed = 0;
            let cutoff = (now_ms() / 1000) as i64 - grace.as_secs() as i64;
            while let Some(info) = list.next().await {
                if removed >= limit {
                    break;
                }
                let info = info?;
                if info.deleted || info.modified.is_some_and(|m| m.unix_timestamp() > cutoff) {
                    continue;
                }
                if read_record(&records, &info.name).await?.is_none() {
                    large.delete(&info.name).await?;
                    removed += 1;
                }
            }
            Ok(removed)
        })
    }

    fn unfinished(&self) -> anyhow::Result<Vec<Invocation>> {
        // Store-and-forward work comes back from the stream by itself; a fire-and-forget
        // invocation lost with its host keeps its "pending" record until the TTL ends it.
        Ok(Vec::new())
    }

    fn release_leases(&self, _owner_prefix: &str) -> anyhow::Result<usize> {
        // Messages an earlier life of this host held come back after ACK_WAIT.
        Ok(0)
    }

    fn flush_delivery(&self) -> anyhow::Result<()> {
        // Every write was acknowledged by JetStream before its call returned.
        Ok(())
    }

    fn restore(&self, _inv: &Invocation) -> anyhow::Result<bool> {
        // There is no submit journal in cluster mode.
        Ok(false)
    }

    fn release(&self, queue: Queue, id: &str) {
        let Some(held) = self.held().remove(&(queue, id.to_string())) else {
            return;
        };
        // Its outcome was not stored (that settles the message): look at it again soon.
        let client = self.nats.client.clone();
        self.runtime.spawn(async move {
            let again = AckKind::Nak(Some(Duration::from_secs(1)));
            Self::settle(&client, held.reply, again).await;
        });
    }

    fn shared(&self) -> bool {
        true
    }

    fn finished(&self) -> Option<broadcast::Receiver<String>> {
        Some(self.finished.subscribe())
    }

    fn arrivals(&self, queue: Queue) -> Option<Arc<tokio::sync::Notify>> {
        Some(self.pull(queue).ready.clone())
    }

    fn stop_taking(&self, queue: Queue) {
        self.pull(queue).stop(&self.runtime);
    }
}
