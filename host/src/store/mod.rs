//! Persistent state behind a narrow trait: component bytes by sha256, precompiled artifacts by
//! content hash and engine compatibility, and function records. The embedded backend is sled, in
//! one data directory; a shared backend (NATS JetStream) can implement the same trait.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use anyhow::Context as _;

use crate::crashpoint::crashpoint;
use crate::model::FunctionRecord;

/// A write refused because another host changed the record first (cluster mode).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Changed(pub String);

pub mod artifacts;
pub mod backup;
pub mod cluster;
pub mod cluster_delivery;
mod delivery;
pub mod durable;
pub mod members;
mod overlay;
pub mod recover;

pub use durable::{is_disk_full, Damaged, Health};
pub use recover::{check, Recovery};

/// A stored function record (JSON), upgraded to the current form.
pub(crate) fn decode_record(name: &str, bytes: &[u8]) -> anyhow::Result<FunctionRecord> {
    let record: FunctionRecord = serde_json::from_slice(bytes)
        .with_context(|| format!("corrupt record for function {name}"))?;
    Ok(record.upgrade())
}

/// The storage port of the runtime. Writes become durable on [`Store::flush`].
pub trait Store: Send + Sync + 'static {
    /// Keeps a component's bytes under their sha256 (lower-case hex).
    fn put_component(&self, digest: &str, bytes: &[u8]) -> anyhow::Result<()>;
    /// The component bytes with this sha256, if kept.
    fn component(&self, digest: &str) -> anyhow::Result<Option<Vec<u8>>>;
    /// Keeps a precompiled artifact under its [`artifact_key`].
    fn put_artifact(&self, key: &str, bytes: &[u8]) -> anyhow::Result<()>;
    /// The precompiled artifact under this [`artifact_key`], if kept and whole.
    fn artifact(&self, key: &str) -> anyhow::Result<Option<Artifact>>;
    /// The digests of every kept component.
    fn component_digests(&self) -> anyhow::Result<Vec<String>>;
    /// Forgets a component's bytes.
    fn remove_component(&self, digest: &str) -> anyhow::Result<()>;
    /// The keys of every kept artifact.
    fn artifact_keys(&self) -> anyhow::Result<Vec<String>>;
    /// Forgets an artifact.
    fn remove_artifact(&self, key: &str) -> anyhow::Result<()>;
    /// Writes a function's record, replacing the one of the same name.
    fn put_function(&self, record: &FunctionRecord) -> anyhow::Result<()>;
    /// Writes a function's record in place of `replacing` (None: in place of no record). A
    /// store several hosts share fails with [`Changed`] when the stored record is another one
    /// (a deploy on another host came first); a store one host uses, whose deploys run one at a
    /// time, writes it.
    fn replace_function(
        &self,
        record: &FunctionRecord,
        replacing: Option<&FunctionRecord>,
    ) -> anyhow::Result<()> {
        let _ = replacing;
        self.put_function(record)
    }
    /// The record of the function with this name, upgraded to the current form.
    fn function(&self, name: &str) -> anyhow::Result<Option<FunctionRecord>>;
    /// Every function record, upgraded to the current form.
    fn functions(&self) -> anyhow::Result<Vec<FunctionRecord>>;
    /// Removes a function's record; false when there was none. Its component bytes stay.
    fn delete_function(&self, name: &str) -> anyhow::Result<bool>;
    /// Host settings that must survive restarts (e.g. the generated callback secret).
    fn setting(&self, key: &str) -> anyhow::Result<Option<String>>;
    /// Writes a host setting.
    fn put_setting(&self, key: &str, value: &str) -> anyhow::Result<()>;
    /// A trigger's state record (a cursor, an ETag, a last-fired time), by trigger kind,
    /// function and key.
    fn trigger_state(
        &self,
        kind: &str,
        function: &str,
        key: &str,
    ) -> anyhow::Result<Option<Vec<u8>>>;
    /// Writes a trigger's state record (durable after [`Store::flush`]).
    fn put_trigger_state(
        &self,
        kind: &str,
        function: &str,
        key: &str,
        value: &[u8],
    ) -> anyhow::Result<()>;
    /// Makes every write so far durable (fsynced, and sealed).
    fn flush(&self) -> anyhow::Result<()>;
    /// Claims one occurrence of a trigger (a schedule's slot) among every host sharing the
    /// store: true for exactly one caller while the claim lasts (`ttl`). A store that only one
    /// host uses grants every claim.
    fn claim(
        &self,
        kind: &str,
        function: &str,
        key: &str,
        ttl: std::time::Duration,
    ) -> anyhow::Result<bool> {
        let _ = (kind, function, key, ttl);
        Ok(true)
    }
}

/// `kind NUL function NUL key`: no part can contain NUL, so keys never collide.
fn trigger_state_key(kind: &str, function: &str, key: &str) -> Vec<u8> {
    [kind.as_bytes(), function.as_bytes(), key.as_bytes()].join(&0u8)
}

/// Every key of a tree, as text.
fn keys(tree: &sled::Tree) -> anyhow::Result<Vec<String>> {
    tree.iter()
        .keys()
        .map(|k| Ok(String::from_utf8_lossy(&k?).into_owned()))
        .collect()
}

/// A kept precompiled artifact: a file to map (see [`artifacts`]), or bytes.
pub enum Artifact {
    /// A file checked against the length and checksum it was written with.
    File(PathBuf),
    /// Bytes kept in the database (by an earlier Ferry).
    Bytes(Vec<u8>),
}

/// The artifact cache key for a component digest under an engine compatibility key.
pub fn artifact_key(digest: &str, compat: &str) -> String {
    format!("{digest}/{compat}")
}

/// The settings key of the generation the seal counts (see [`durable`]).
const GENERATION_KEY: &str = "\0generation";

/// The embedded sled backend.
pub struct SledStore {
    /// The data directory (the store itself is in its `db` directory).
    dir: PathBuf,
    /// Held while a durable flush runs; the start time of the previous durable flush.
    synced: Mutex<Option<SystemTime>>,
    health: Arc<Health>,
    /// The open database; None while it is being reopened after an I/O error.
    trees: RwLock<Option<Arc<Trees>>>,
    /// The delivery tree's changes since the last durable flush (they outlive a reopen).
    changes: overlay::WriteBack,
    /// Invocations removed since the last durable flush whose payload files go once it is done.
    doomed: Mutex<Vec<String>>,
    /// While above zero (a backup reads payload files), doomed files wait for a later flush.
    held: std::sync::atomic::AtomicUsize,
    /// How many times the database was reopened (the journal writes its records back after
    /// each reopen before it empties itself).
    reopens: std::sync::atomic::AtomicU64,
    /// A durable flush failed after sled's own flush (an fsync or the seal): what the kernel
    /// reports afterwards cannot be trusted until the database is read again from disk.
    broken: std::sync::atomic::AtomicBool,
}

/// The sled database and its trees.
pub(crate) struct Trees {
    db: sled::Db,
    components: sled::Tree,
    artifacts: sled::Tree,
    functions: sled::Tree,
    delivery: sled::Tree,
    settings: sled::Tree,
    trigger_state: sled::Tree,
}

impl SledStore {
    /// Opens (or creates) the store in the data directory `dir`, upgrading older delivery
    /// records. Only one process may have it open. A store that lost durable writes, or whose
    /// seal, journal or function records are missing or unreadable, is refused with
    /// [`Damaged`].
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        create_private_dir(dir)?;
        let seal = durable::read_seal(dir)?;
        if let Some(seal) = &seal {
            if !dir.join(durable::DB_DIR).join("db").exists() {
                return Err(Damaged::new(
                    dir,
                    Path::new(durable::DB_DIR).join("db"),
                    "the store file is missing although the seal says it was written",
                )
                .into());
            }
            if seal.journal && !dir.join(durable::JOURNAL_FILE).exists() {
                return Err(Damaged::new(
                    dir,
                    durable::JOURNAL_FILE,
                    "the submit journal is missing; submits it held may be lost",
                )
                .into());
            }
        }
        let store = Self::open_unchecked(dir)?;
        let generation = store.generation().map_err(|e| store.as_damage(e))?;
        match seal {
            Some(seal) if generation < seal.generation => {
                return Err(Damaged::new(
                    dir,
                    durable::DB_DIR,
                    format!(
                        "it holds writes up to generation {generation} but generation {} was made durable: part of it is truncated or corrupt, and sled dropped what it could not read",
                        seal.generation
                    ),
                )
                .into());
            }
            Some(_) => {}
            None if generation > 0 => {
                return Err(Damaged::new(
                    dir,
                    durable::SEAL_FILE,
                    "the seal file is missing, but the store was sealed before",
                )
                .into());
            }
            // A new store, or one from before seals: seal what it holds now (generation 0
            // first, so that a crash before the first durable flush is not taken for damage).
            None => {
                let seal = durable::Seal {
                    generation,
                    journal: dir.join(durable::JOURNAL_FILE).exists(),
                };
                durable::write_seal(dir, &seal).context("failed to write the store's seal")?;
                store.flush()?;
            }
        }
        store.check_functions().map_err(|e| store.as_damage(e))?;
        if store.upgrade_delivery().map_err(|e| store.as_damage(e))? > 0 {
            store.flush()?;
        }
        store
            .remove_orphan_artifacts()
            .context("cannot tidy the compiled artifacts")?;
        // Payload files that no payload key names are removed once the journal has been
        // replayed (`DeliveryStore::tidy`): a journaled submit's payload file may be all there
        // is of it.
        Ok(store)
    }

    /// Opens the sled database and its trees in `dir`.
    fn open_trees(dir: &Path) -> anyhow::Result<Trees> {
        create_private_dir(&dir.join(durable::PAYLOAD_DIR))?;
        create_private_dir(&dir.join(artifacts::ARTIFACT_DIR))?;
        let corrupt = |e: sled::Error| -> anyhow::Error {
            match e {
                e @ sled::Error::Corruption { .. } => {
                    Damaged::new(dir, durable::DB_DIR, format!("sled cannot open it: {e}")).into()
                }
                e => anyhow::Error::new(e).context(format!(
                    "failed to open the store in {} (is another ferry using it?)",
                    dir.display()
                )),
            }
        };
        let db = sled::Config::new()
            .path(dir.join(durable::DB_DIR))
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(corrupt)?;
        // sled creates its files with the default mode; its directory is the owner's alone.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let _ = std::fs::set_permissions(
                dir.join(durable::DB_DIR),
                std::fs::Permissions::from_mode(0o700),
            );
        }
        let tree = |name: &str| db.open_tree(name).map_err(corrupt);
        Ok(Trees {
            components: tree("components")?,
            artifacts: tree("artifacts")?,
            functions: tree("functions")?,
            delivery: tree("delivery")?,
            settings: tree("settings")?,
            trigger_state: tree("trigger_state")?,
            db,
        })
    }

    /// Opens the sled database in `dir` without any check.
    fn open_unchecked(dir: &Path) -> anyhow::Result<Self> {
        Ok(Self {
            dir: dir.to_path_buf(),
            synced: Mutex::new(None),
            health: Arc::new(Health::default()),
            trees: RwLock::new(Some(Arc::new(Self::open_trees(dir)?))),
            changes: overlay::WriteBack::new(),
            doomed: Mutex::new(Vec::new()),
            held: std::sync::atomic::AtomicUsize::new(0),
            reopens: std::sync::atomic::AtomicU64::new(0),
            broken: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// After an I/O error (a full disk), sled fails every later write until it is reopened.
    /// Once the data directory takes writes again, this closes the database, opens it anew,
    /// writes back the journaled submits it may have lost, and makes it durable; until then
    /// every operation fails with a clear error. Returns whether the store works (again).
    pub fn heal(&self) -> anyhow::Result<bool> {
        use std::sync::atomic::Ordering;
        let broken = self.broken.load(Ordering::SeqCst);
        if !broken && self.health.errors().is_empty() && self.t().is_ok() {
            return Ok(true);
        }
        durable::probe_space(&self.dir)?;
        if !broken && self.t().is_ok() {
            match self.flush() {
                Ok(()) => return Ok(true),
                Err(e) if !sled_failed(&e) && !self.broken.load(Ordering::SeqCst) => return Err(e),
                Err(_) => {}
            }
        }
        self.reopen()?;
        Ok(true)
    }

    fn reopen(&self) -> anyhow::Result<()> {
        let taken = self.trees.write().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(mut old) = taken {
            // Operations in flight hold the database for a moment.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            loop {
                match Arc::try_unwrap(old) {
                    Ok(trees) => {
                        drop(trees);
                        break;
                    }
                    Err(still) if std::time::Instant::now() >= deadline => {
                        *self.trees.write().unwrap_or_else(|e| e.into_inner()) = Some(still);
                        anyhow::bail!("the store is still in use; reopening it later");
                    }
                    Err(still) => {
                        old = still;
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                }
            }
        }
        tracing::warn!("reopening the store after an I/O error");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let trees = loop {
            match Self::open_trees(&self.dir) {
                Ok(t) => break t,
                Err(e) if std::time::Instant::now() >= deadline => return Err(e),
                // sled's flusher thread lets go of the file a moment after the close.
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
            }
        };
        // Counted before the new database is in use: a checkpoint that flushed it sees the
        // count change and writes its journal back before it empties itself.
        self.reopens
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        *self.trees.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(trees));
        self.broken
            .store(false, std::sync::atomic::Ordering::SeqCst);
        // What the journal file holds now goes back at once (the journal's next checkpoint
        // also writes back what it appends meanwhile, before it empties itself).
        let mut restored = 0;
        for inv in crate::delivery::journal::read_file(&self.dir.join(durable::JOURNAL_FILE))? {
            if crate::delivery::store::DeliveryStore::restore(self, &inv)? {
                restored += 1;
            }
        }
        // Outcomes that could not be written left their leases behind. One process has the
        // embedded store, and it never queues what it already runs, so every lease can end:
        // what was not finished is due again.
        let released = crate::delivery::store::DeliveryStore::release_leases(self, "")?;
        self.flush()?;
        tracing::info!(restored, released, "the store is reopened and works again");
        Ok(())
    }

    /// How many times the database was reopened after an I/O error.
    pub fn reopens(&self) -> u64 {
        self.reopens.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The open database, or an error while it is being reopened.
    pub(crate) fn t(&self) -> anyhow::Result<Arc<Trees>> {
        self.trees
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| {
                anyhow::anyhow!("the store is being reopened after an I/O error; retry shortly")
            })
    }

    /// The generation of the last durable flush the store holds (0 for a new store).
    fn generation(&self) -> anyhow::Result<u64> {
        match self.t()?.settings.get(GENERATION_KEY)? {
            None => Ok(0),
            Some(v) => match <[u8; 8]>::try_from(v.as_ref()) {
                Ok(b) => Ok(u64::from_be_bytes(b)),
                Err(_) => Err(Damaged::new(
                    &self.dir,
                    durable::DB_DIR,
                    "the store's generation record is unreadable",
                )
                .into()),
            },
        }
    }

    /// Every function record must be readable, and its component present.
    fn check_functions(&self) -> anyhow::Result<()> {
        for kv in self.t()?.functions.iter() {
            let (k, v) = kv.map_err(|e| self.damaged(format!("reading function records: {e}")))?;
            let name = String::from_utf8_lossy(&k);
            let record: FunctionRecord = serde_json::from_slice(&v).map_err(|e| {
                self.damaged(format!("the record of function {name} is unreadable: {e}"))
            })?;
            if !self.t()?.components.contains_key(&record.digest)? {
                return Err(self.damaged(format!(
                    "the component of function {name} (sha256 {}) is missing",
                    record.digest
                )));
            }
        }
        Ok(())
    }

    /// An error as [`Damaged`] when sled found corrupt data anywhere in its chain, else as it is.
    pub fn as_damage(&self, e: anyhow::Error) -> anyhow::Error {
        let corrupt = e.chain().any(|c| {
            matches!(
                c.downcast_ref::<sled::Error>(),
                Some(sled::Error::Corruption { .. })
            )
        });
        if corrupt && !e.chain().any(|c| c.is::<Damaged>()) {
            return self.damaged(format!("{e:#}"));
        }
        e
    }

    /// Notes a write error that leaves sled failing (a full disk): the store is degraded, and
    /// the healing task reopens it once the disk takes writes again.
    pub(crate) fn noted<T>(&self, result: anyhow::Result<T>) -> anyhow::Result<T> {
        if let Err(e) = &result {
            if sled_failed(e) {
                self.health
                    .record::<()>("store", &Err(anyhow::anyhow!("{e:#}")));
            }
        }
        result
    }

    /// A read error as [`Damaged`] when sled found corrupt data, else as it is.
    fn unreadable(&self, e: sled::Error, what: std::fmt::Arguments<'_>) -> anyhow::Error {
        match e {
            sled::Error::Corruption { .. } => self.damaged(format!("{what} cannot be read: {e}")),
            e => anyhow::Error::new(e).context(format!("failed to read {what}")),
        }
    }

    fn damaged(&self, problem: String) -> anyhow::Error {
        Damaged::new(&self.dir, durable::DB_DIR, problem).into()
    }

    /// The store's health, shared with the submit journal.
    pub fn health(&self) -> Arc<Health> {
        self.health.clone()
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The durable flush: the delivery changes and the next generation into the store, sled's
    /// flush, fsync of every changed file and directory, then the seal.
    fn flush_durably(&self) -> anyhow::Result<()> {
        let t = self.t()?;
        let mut synced = self.synced.lock().unwrap_or_else(|e| e.into_inner());
        // Every removal whose file is doomed is among the changes applied now.
        let doomed = std::mem::take(&mut *self.doomed.lock().unwrap_or_else(|e| e.into_inner()));
        let applied = match self.changes.apply(&t.delivery, delivery::expiry_log_key) {
            Ok(applied) => applied,
            Err(e) => {
                self.keep_doomed(doomed);
                return Err(e).context("failed to write the delivery changes into the store");
            }
        };
        let flushed = (|| {
            let generation = self.generation()? + 1;
            t.settings
                .insert(GENERATION_KEY, &generation.to_be_bytes())?;
            t.db.flush().context("failed to flush the store")?;
            anyhow::Ok(generation)
        })();
        let generation = match flushed {
            Ok(generation) => generation,
            Err(e) => {
                self.keep_doomed(doomed);
                return Err(e);
            }
        };
        let started = SystemTime::now();
        let synced_now = durable::sync_changed(&self.dir.join(durable::DB_DIR), *synced)
            .and_then(|_| durable::sync_changed(&self.dir.join(durable::PAYLOAD_DIR), *synced))
            .context("failed to fsync the store")
            .and_then(|_| {
                crashpoint("store-before-seal");
                let seal = durable::Seal {
                    generation,
                    journal: self.dir.join(durable::JOURNAL_FILE).exists(),
                };
                durable::write_seal(&self.dir, &seal).context("failed to write the store's seal")
            });
        if let Err(e) = synced_now {
            // After a failed fsync the kernel may have dropped the pages it could not write
            // and report the next fsync as a success: only reading the store again from disk
            // tells what it holds.
            self.broken.store(true, std::sync::atomic::Ordering::SeqCst);
            self.keep_doomed(doomed);
            return Err(e);
        }
        *synced = Some(started);
        applied.settle(true);
        if self.held.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            self.keep_doomed(doomed);
            return Ok(());
        }
        for id in doomed {
            match std::fs::remove_file(self.payload_file(&id)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    tracing::warn!(invocation_id = %id, error = %e, "a payload file could not be removed; it goes at the next start");
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Keeps every payload file until the guard is dropped (a reader of payload keys may then
    /// read their files: a file is deleted only after its key's removal is durable, and a
    /// flush that checked before the guard existed deleted files whose keys no later read sees).
    fn hold_payload_files(&self) -> HeldPayloads<'_> {
        self.held.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        HeldPayloads(&self.held)
    }

    /// Payload files whose removal a failed flush did not make durable: for the next one.
    fn keep_doomed(&self, doomed: Vec<String>) {
        self.doomed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(doomed);
    }
}

/// Payload files are kept while this lives (see [`SledStore::hold_payload_files`]).
struct HeldPayloads<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for HeldPayloads<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Whether an error is sled's own failure state: after an I/O error it fails every write until
/// the database is reopened.
fn sled_failed(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<sled::Error>(),
            Some(sled::Error::Io(_) | sled::Error::ReportableBug(_))
        )
    })
}

/// Creates the data directory if needed, readable by its owner only (0700).
pub fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    let fail = |e| {
        anyhow::Error::new(e).context(format!(
            "the data directory {} cannot be used",
            dir.display()
        ))
    };
    std::fs::create_dir_all(dir).map_err(fail)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(fail)?;
    }
    std::fs::read_dir(dir).map_err(fail)?;
    Ok(())
}

impl Store for SledStore {
    fn put_component(&self, digest: &str, bytes: &[u8]) -> anyhow::Result<()> {
        self.t()?.components.insert(digest, bytes)?;
        Ok(())
    }

    fn component(&self, digest: &str) -> anyhow::Result<Option<Vec<u8>>> {
        let v = self
            .t()?
            .components
            .get(digest)
            .map_err(|e| self.unreadable(e, format_args!("component {digest}")))?;
        Ok(v.map(|v| v.to_vec()))
    }

    fn put_artifact(&self, key: &str, bytes: &[u8]) -> anyhow::Result<()> {
        self.write_artifact(key, bytes)
    }

    fn artifact(&self, key: &str) -> anyhow::Result<Option<Artifact>> {
        self.read_artifact(key)
    }

    fn component_digests(&self) -> anyhow::Result<Vec<String>> {
        keys(&self.t()?.components)
    }

    fn remove_component(&self, digest: &str) -> anyhow::Result<()> {
        self.t()?.components.remove(digest)?;
        Ok(())
    }

    fn artifact_keys(&self) -> anyhow::Result<Vec<String>> {
        keys(&self.t()?.artifacts)
    }

    fn remove_artifact(&self, key: &str) -> anyhow::Result<()> {
        self.delete_artifact(key)
    }

    fn put_function(&self, record: &FunctionRecord) -> anyhow::Result<()> {
        self.t()?
            .functions
            .insert(&record.name, serde_json::to_vec(record)?)?;
        Ok(())
    }

    fn function(&self, name: &str) -> anyhow::Result<Option<FunctionRecord>> {
        self.t()?
            .functions
            .get(name)?
            .map(|v| decode_record(name, &v))
            .transpose()
    }

    fn functions(&self) -> anyhow::Result<Vec<FunctionRecord>> {
        self.t()?
            .functions
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                decode_record(&String::from_utf8_lossy(&k), &v)
            })
            .collect()
    }

    fn delete_function(&self, name: &str) -> anyhow::Result<bool> {
        Ok(self.t()?.functions.remove(name)?.is_some())
    }

    fn setting(&self, key: &str) -> anyhow::Result<Option<String>> {
        Ok(self
            .t()?
            .settings
            .get(key)?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    fn put_setting(&self, key: &str, value: &str) -> anyhow::Result<()> {
        self.t()?.settings.insert(key, value.as_bytes())?;
        Ok(())
    }

    fn trigger_state(
        &self,
        kind: &str,
        function: &str,
        key: &str,
    ) -> anyhow::Result<Option<Vec<u8>>> {
        let k = trigger_state_key(kind, function, key);
        Ok(self.t()?.trigger_state.get(k)?.map(|v| v.to_vec()))
    }

    fn put_trigger_state(
        &self,
        kind: &str,
        function: &str,
        key: &str,
        value: &[u8],
    ) -> anyhow::Result<()> {
        self.t()?
            .trigger_state
            .insert(trigger_state_key(kind, function, key), value)?;
        Ok(())
    }

    fn flush(&self) -> anyhow::Result<()> {
        let result = self.flush_durably();
        self.health.record("store", &result);
        result
    }
}

// Keys of the delivery tree: one tree, so that a state change is one atomic batch.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DeliverySettings, Limits, World};

    fn record(name: &str, version: u64) -> FunctionRecord {
        let route = toml::Table::from_iter([("route".to_string(), "/x/...".into())]);
        FunctionRecord::new(
            name.into(),
            version,
            World::Http,
            "ab".into(),
            2,
            Limits::default(),
            vec![("K".into(), "V".into())],
            vec![],
            DeliverySettings::default(),
            [("http".to_string(), vec![route])].into(),
        )
    }

    #[test]
    fn records_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledStore::open(dir.path()).unwrap();
            s.put_component("ab", b"bytes").unwrap();
            s.put_artifact(&artifact_key("ab", "0f"), b"art").unwrap();
            s.put_function(&record("a", 1)).unwrap();
            s.put_function(&record("b", 3)).unwrap();
            assert!(s.delete_function("a").unwrap());
            assert!(!s.delete_function("a").unwrap());
            s.flush().unwrap();
        }
        // sled's flusher thread may hold the lock for a moment after the drop.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let s = loop {
            match SledStore::open(dir.path()) {
                Ok(s) => break s,
                Err(e) if std::time::Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => panic!("reopening the store: {e:#}"),
            }
        };
        assert_eq!(s.component("ab").unwrap().unwrap(), b"bytes");
        let Some(Artifact::File(art)) = s.artifact("ab/0f").unwrap() else {
            panic!("the artifact is kept");
        };
        assert_eq!(std::fs::read(art).unwrap(), b"art");
        assert_eq!(s.functions().unwrap(), vec![record_eq(&s, "b")]);
        assert_eq!(s.function("b").unwrap().unwrap().version, 3);
        assert!(s.function("a").unwrap().is_none());
    }

    fn record_eq(s: &SledStore, name: &str) -> FunctionRecord {
        s.function(name).unwrap().unwrap()
    }

    #[test]
    fn records_from_before_trigger_sections_are_upgraded() {
        // A record as an earlier Ferry wrote it: routes and NATS triggers in fields of their own.
        let old = serde_json::json!({
            "name": "f", "version": 2, "world": "event", "digest": "ab", "size": 2,
            "routes": ["/orders/..."],
            "limits": {"memory": 1048576, "timeout": "1s", "concurrency": 1, "max_body": 1024},
            "config": [], "outbound": [],
            "nats": [{"subject": "a.b", "queue": "f", "reply": null, "dead_letter": "ferry.deadletter.f", "format": null, "stream": "S"}],
            "created": "2026-01-01T00:00:00Z"
        });
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        s.t()
            .unwrap()
            .functions
            .insert("f", serde_json::to_vec(&old).unwrap())
            .unwrap();
        let r = s.function("f").unwrap().unwrap();
        assert_eq!(r.triggers["http"][0]["route"].as_str(), Some("/orders/..."));
        assert_eq!(r.triggers["nats"][0]["stream"].as_str(), Some("S"));
        // And the sections still pass their triggers' checks.
        for (kind, sections) in &r.triggers {
            let k = ferry_triggers::trigger_kind(kind).unwrap();
            (k.validate)("f", sections).unwrap();
        }
    }

    #[test]
    fn trigger_state_is_kept_per_kind_function_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        assert_eq!(s.trigger_state("poll", "f", "cursor").unwrap(), None);
        s.put_trigger_state("poll", "f", "cursor", b"42").unwrap();
        s.put_trigger_state("poll", "g", "cursor", b"7").unwrap();
        assert_eq!(
            s.trigger_state("poll", "f", "cursor").unwrap().as_deref(),
            Some(&b"42"[..])
        );
        assert_eq!(
            s.trigger_state("poll", "g", "cursor").unwrap().as_deref(),
            Some(&b"7"[..])
        );
        assert_eq!(s.trigger_state("webhook", "f", "cursor").unwrap(), None);
    }
}
