//! The submit journal: what makes a store-and-forward 202 durable.
//!
//! A submit applies its invocation to the store (not yet durable), appends the same record to
//! this append-only file, and waits until a `fdatasync` that covers it has finished. One task
//! does all file I/O: it writes whatever submits have appended since the last sync and syncs once
//! for all of them (group commit), so durability costs one disk sync per batch, not per event.
//! Each batch has one outcome: every submit in it is answered after the sync succeeded, or gets
//! the error if the write or the sync failed (a full disk): then the file is cut back to where
//! the batch began, and nothing of it is acknowledged.
//!
//! Every second (when the journal holds anything) it checkpoints: writes what is pending, makes
//! the store durable (fsync and seal, see [`crate::store::durable`]) — which then holds every
//! journaled record — and only then empties the file. Submits go on being journaled while the
//! store flushes: the records written meanwhile are kept (the file is replaced, in one rename,
//! by a synced file that holds only them). At start, the records a previous process
//! left are written back into the store and made durable before anything else runs; the file
//! keeps them until the first checkpoint, so a crash during recovery loses nothing either.
//!
//! Record framing: `len: u32 LE | crc32(payload): u32 LE | payload (JSON invocation)`. A torn or
//! corrupt tail (a crash mid-write, never acknowledged) ends the replay and is cut off. An
//! invocation whose payload the store keeps in a file of its own (64 KiB or more) is journaled
//! without it (the store synced that file and its directory before it stored the record): the
//! replay finds the payload there.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::{watch, Notify};

use super::record::Invocation;
use super::store::DeliveryStore;
use crate::crashpoint::crashpoint;
use crate::store::Health;

/// How often the journal is folded into the store and emptied.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// How a batch of submits ended: None while it is pending or being written.
type Outcome = Option<Result<(), Arc<str>>>;

/// Submits appended since the last write: one batch.
struct Pending {
    buf: Vec<u8>,
    /// How many submits `buf` holds.
    count: usize,
    /// Told how the batch's write and sync ended.
    batch: watch::Sender<Outcome>,
}

/// The journal file and the length of what it holds that is whole and synced.
struct Output {
    file: File,
    len: u64,
    /// While a checkpoint flushes the store: what was written after the part it covers (kept
    /// when the file is emptied).
    tail: Option<Vec<u8>>,
    /// The file was renamed into place and its directory not yet synced: no write is durable
    /// until it is (a power cut could bring back the file it replaced).
    dir_unsynced: bool,
    /// The store's reopen count when the journal's records were last written back into it.
    restored_at: u64,
}

/// A submit's place in a batch: wait on it with [`Journal::durable`].
pub struct Ticket(watch::Receiver<Outcome>);

/// The submit journal of one process: submits append to it and wait for its sync.
pub struct Journal {
    path: PathBuf,
    store: Arc<dyn DeliveryStore>,
    health: Arc<Health>,
    pending: Mutex<Pending>,
    output: Mutex<Output>,
    wake: Notify,
    /// Benchmark baseline: every submit writes and syncs on its own, one at a time.
    per_submit: bool,
    /// Where batch sizes and sync times are counted, once the host has set it.
    metrics: std::sync::OnceLock<Arc<crate::metrics::Metrics>>,
}

fn frame(inv: &Invocation) -> anyhow::Result<Vec<u8>> {
    let payload = serde_json::to_vec(inv)?;
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// The record that starts at the front of `bytes`, and its length with framing, if it is whole
/// and its checksum and JSON hold.
fn record_at(bytes: &[u8]) -> Option<(Invocation, usize)> {
    let (len, tail) = bytes.split_first_chunk::<4>()?;
    let (crc, tail) = tail.split_first_chunk::<4>()?;
    let len = u32::from_le_bytes(*len) as usize;
    let payload = tail.get(..len)?;
    if crc32fast::hash(payload) != u32::from_le_bytes(*crc) {
        return None;
    }
    let inv = serde_json::from_slice(payload).ok()?;
    Some((inv, 8 + len))
}

/// The records of a journal file, and the offset just past the last whole one. A torn or
/// corrupt record ends the file, unless whole records follow it (then the bad bytes are
/// skipped, counted in the third value, and reading goes on: a power cut can persist the later
/// pages of a batch that was never acknowledged, and a record that a flipped bit damaged must
/// not take the acknowledged ones after it along).
fn read_records(bytes: &[u8]) -> (Vec<Invocation>, usize, usize) {
    let mut out = Vec::new();
    let (mut at, mut end, mut skipped) = (0, 0, 0);
    while at < bytes.len() {
        if let Some((inv, n)) = record_at(&bytes[at..]) {
            out.push(inv);
            at += n;
            end = at;
            continue;
        }
        // Resynchronise: the next offset where a whole record starts (a JSON object).
        let next = (at + 1..bytes.len().saturating_sub(8))
            .find(|&i| bytes.get(i + 8) == Some(&b'{') && record_at(&bytes[i..]).is_some());
        match next {
            Some(i) => {
                skipped += i - at;
                at = i;
            }
            None => break,
        }
    }
    (out, end, skipped)
}

/// What a journal file holds (for `ferry store check`).
#[derive(Debug, Default)]
pub struct JournalInfo {
    /// Whole records.
    pub records: usize,
    /// Bytes after the last whole record.
    pub torn_bytes: usize,
    /// Bytes of corrupt records with whole records after them.
    pub skipped_bytes: usize,
}

/// Reads a journal file without changing it; a missing file holds nothing.
pub fn inspect(path: &Path) -> anyhow::Result<JournalInfo> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(JournalInfo::default()),
        Err(e) => return Err(e).with_context(|| format!("failed to read {}", path.display())),
    };
    let (records, len, skipped) = read_records(&bytes);
    Ok(JournalInfo {
        records: records.len(),
        torn_bytes: bytes.len() - len,
        skipped_bytes: skipped,
    })
}

/// The whole records of a journal file (for a store that reopens after an I/O error).
pub fn read_file(path: &Path) -> anyhow::Result<Vec<Invocation>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(read_records(&bytes).0),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("failed to read {}", path.display())),
    }
}

// Both locks are used as they are when poisoned: nothing that runs under them panics halfway
// through a change (appending a framed record, writing or cutting back the file), so what they
// guard stays valid, and submits must go on being made durable.
impl Journal {
    fn pending(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn output(&self) -> MutexGuard<'_, Output> {
        self.output.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens the journal in `dir`. Returns it and the records a previous process journaled but
    /// did not checkpoint: the caller writes them back into the store and makes the store
    /// durable before [`Journal::run`] starts (whose first checkpoint empties the file).
    pub fn open(
        dir: &Path,
        store: Arc<dyn DeliveryStore>,
        health: Arc<Health>,
        per_submit: bool,
    ) -> anyhow::Result<(Arc<Self>, Vec<Invocation>)> {
        let path = dir.join(crate::store::durable::JOURNAL_FILE);
        let created = !path.exists();
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("failed to open the submit journal {}", path.display()))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .with_context(|| format!("failed to read the submit journal {}", path.display()))?;
        let (recovered, len, skipped) = read_records(&bytes);
        if skipped > 0 {
            tracing::error!(
                journal = %path.display(),
                records = recovered.len(),
                skipped_bytes = skipped,
                "the submit journal holds corrupt bytes with whole records after them; kept every whole record"
            );
        }
        if len < bytes.len() {
            tracing::warn!(
                journal = %path.display(),
                records = recovered.len(),
                ignored_bytes = bytes.len() - len,
                "the submit journal ends with a torn record (a write cut short, never acknowledged); cutting it off"
            );
            file.set_len(len as u64)?;
            file.sync_all()?;
        }
        if created {
            file.sync_all()?;
            crate::store::durable::sync_dir(dir)?;
        }
        crashpoint("journal-opened");
        let journal = Arc::new(Self {
            path,
            store,
            health,
            pending: Mutex::new(Pending {
                buf: Vec::new(),
                count: 0,
                batch: watch::Sender::new(None),
            }),
            output: Mutex::new(Output {
                file,
                len: len as u64,
                tail: None,
                dir_unsynced: false,
                restored_at: 0,
            }),
            wake: Notify::new(),
            per_submit,
            metrics: std::sync::OnceLock::new(),
        });
        Ok((journal, recovered))
    }

    /// Makes a submitted invocation durable: journaled and synced (group commit, or on its own
    /// in the per-submit baseline).
    pub async fn commit(self: &Arc<Self>, inv: &Invocation) -> anyhow::Result<()> {
        // A payload the store keeps in a file of its own was made durable there before its
        // record was stored, so the journal holds only the record: a large body is written to
        // disk once, not twice. (Nothing is awaited before the append: a duplicate submit's
        // barrier must cover this record.)
        let apart = inv.payload.is_some() && self.store.payload_file_of(&inv.id).is_some();
        let without_payload;
        let inv = if apart {
            without_payload = inv.without_payload();
            &without_payload
        } else {
            inv
        };
        if self.per_submit {
            let framed = frame(inv)?;
            let this = self.clone();
            return tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                let mut out = this.output();
                this.write(&mut out, &framed)
            })
            .await?;
        }
        let ticket = self.append(inv)?;
        self.durable(ticket).await
    }

    /// Counts batch sizes and write-and-sync times in `metrics` from now on.
    pub fn set_metrics(&self, metrics: Arc<crate::metrics::Metrics>) {
        let _ = self.metrics.set(metrics);
    }

    /// Appends a submitted invocation to the next batch.
    pub fn append(&self, inv: &Invocation) -> anyhow::Result<Ticket> {
        let framed = frame(inv)?;
        let mut p = self.pending();
        p.buf.extend_from_slice(&framed);
        p.count += 1;
        Ok(Ticket(p.batch.subscribe()))
    }

    /// A ticket that is settled once everything appended so far has been written.
    pub fn barrier(&self) -> Ticket {
        Ticket(self.pending().batch.subscribe())
    }

    /// Returns once the ticket's batch is durable, or with the error that kept it from being so.
    pub async fn durable(self: &Arc<Self>, mut ticket: Ticket) -> anyhow::Result<()> {
        self.wake.notify_one();
        let outcome = ticket.0.wait_for(Option::is_some).await?.clone();
        match outcome {
            Some(Err(e)) => Err(anyhow::anyhow!("{e}")),
            _ => Ok(()),
        }
    }

    /// Writes `buf` after what the file holds and syncs it; on failure, cuts the file back, so a
    /// partial write never sits before later records.
    fn write(&self, out: &mut Output, buf: &[u8]) -> anyhow::Result<()> {
        let result = out
            .file
            .write_all_at(buf, out.len)
            .and_then(|()| out.file.sync_data())
            .and_then(|()| self.sync_dir_if_renamed(out))
            .with_context(|| format!("failed to write the submit journal {}", self.path.display()));
        match &result {
            Ok(()) => {
                out.len += buf.len() as u64;
                if let Some(tail) = &mut out.tail {
                    tail.extend_from_slice(buf);
                }
            }
            Err(_) => {
                let _ = out.file.set_len(out.len);
            }
        }
        self.health.record("journal", &result);
        result
    }

    /// Writes and syncs the pending batch, and tells its submits how that went.
    fn sync_pending(&self, out: &mut Output) -> anyhow::Result<()> {
        let (buf, count, batch) = {
            let mut p = self.pending();
            let batch = std::mem::replace(&mut p.batch, watch::Sender::new(None));
            (
                std::mem::take(&mut p.buf),
                std::mem::take(&mut p.count),
                batch,
            )
        };
        let result = if buf.is_empty() {
            Ok(())
        } else {
            let started = std::time::Instant::now();
            let written = self.write(out, &buf);
            if let Some(m) = self.metrics.get() {
                m.journal_batch(count, started.elapsed());
            }
            written
        };
        batch.send_replace(Some(
            result
                .as_ref()
                .map(drop)
                .map_err(|e| Arc::from(format!("{e:#}"))),
        ));
        result
    }

    fn sync_now(&self) -> anyhow::Result<()> {
        let mut out = self.output();
        self.sync_pending(&mut out)
    }

    /// After a failed write: whether the file takes writes again (a block written past the end,
    /// synced, and cut off), so that the journal's health recovers without waiting for a submit.
    fn probe(&self) {
        if !self.health.errors().contains_key("journal") {
            return;
        }
        let out = self.output();
        let result = out
            .file
            .write_all_at(&[0u8; 4096], out.len)
            .and_then(|()| out.file.sync_data())
            .with_context(|| format!("failed to write the submit journal {}", self.path.display()));
        let _ = out.file.set_len(out.len);
        self.health.record("journal", &result);
    }

    /// Whether a checkpoint has anything to fold into the store.
    fn holds_anything(&self) -> bool {
        self.output().len > 0 || !self.pending().buf.is_empty()
    }

    /// Folds the journal into the store: write what is pending, make the store durable (every
    /// journaled record was applied to it before being journaled), then empty the file of what
    /// the store now holds. Submits go on being journaled and synced while the store flushes:
    /// what they wrote meanwhile stays in the file.
    fn checkpoint(&self) -> anyhow::Result<()> {
        let reopens = {
            let mut out = self.output();
            self.sync_pending(&mut out)?;
            if out.len == 0 {
                return Ok(());
            }
            let reopens = self.store.reopens();
            if reopens != out.restored_at {
                // The store reopened after an I/O error and lost what it held only in memory:
                // the journal holds every submit acknowledged since its last checkpoint.
                let mut restored = 0;
                for inv in read_file(&self.path)? {
                    if self.store.restore(&inv)? {
                        restored += 1;
                    }
                }
                out.restored_at = reopens;
                tracing::info!(restored, "wrote the journal back into the reopened store");
            }
            out.tail = Some(Vec::new());
            reopens
        };
        crashpoint("checkpoint-start");
        let flushed = self.store.flush_delivery();
        let mut out = self.output();
        let tail = out.tail.take().unwrap_or_default();
        flushed?;
        if self.store.reopens() != reopens {
            // Reopened during the flush: write back first, at the next checkpoint.
            return Ok(());
        }
        crashpoint("checkpoint-before-truncate");
        if tail.is_empty() {
            out.file
                .set_len(0)
                .and_then(|()| out.file.sync_data())
                .with_context(|| {
                    format!("failed to empty the submit journal {}", self.path.display())
                })?;
            out.len = 0;
            return Ok(());
        }
        // Submits journaled during the flush: a new file with only them (synced) takes the
        // journal's place in one rename, so a crash finds either file, each with every record
        // the store may lack. Writes go to the new file from the rename on; none is durable
        // until the directory is synced.
        let tmp = self.path.with_extension("journal.tmp");
        let fail = |e| {
            anyhow::Error::new(e).context(format!(
                "failed to empty the submit journal {}",
                self.path.display()
            ))
        };
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|f| {
                f.write_all_at(&tail, 0)
                    .and_then(|()| f.sync_all())
                    .map(|()| f)
            })
            .and_then(|f| std::fs::rename(&tmp, &self.path).map(|()| f))
            .map_err(fail)?;
        out.file = file;
        out.len = tail.len() as u64;
        out.dir_unsynced = true;
        self.sync_dir_if_renamed(&mut out).map_err(fail)
    }

    /// Syncs the journal's directory if the file was renamed into place since it last was.
    fn sync_dir_if_renamed(&self, out: &mut Output) -> std::io::Result<()> {
        if out.dir_unsynced {
            crate::store::durable::sync_dir(self.path.parent().unwrap_or(Path::new(".")))?;
            out.dir_unsynced = false;
        }
        Ok(())
    }

    /// Syncs submits as they come (group commit) and checkpoints every second, until `closing`
    /// turns true (after the triggers have drained, so that submits still in flight during
    /// shutdown are made durable); then checkpoints once more, so the journal is empty when the
    /// process ends. Start it after the records [`Journal::open`] recovered are in the store and
    /// flushed.
    pub async fn run(self: Arc<Self>, mut closing: watch::Receiver<bool>) {
        let checkpoints = tokio::spawn(self.clone().checkpoints(closing.clone()));
        loop {
            tokio::select! {
                _ = self.wake.notified() => {}
                () = async { let _ = closing.wait_for(|c| *c).await; } => break,
            }
            let this = self.clone();
            let result = tokio::task::spawn_blocking(move || this.sync_now()).await;
            self.went(result).await;
        }
        let _ = checkpoints.await;
        let this = self.clone();
        match tokio::task::spawn_blocking(move || this.checkpoint()).await {
            Ok(Ok(())) => tracing::debug!("the submit journal is folded into the store"),
            Ok(Err(e)) => {
                tracing::error!(error = %format!("{e:#}"), "the last checkpoint failed; the journal is replayed on the next start")
            }
            Err(e) => tracing::error!(error = %e, "the last checkpoint failed"),
        }
    }

    /// Checkpoints every second (or makes the store's other changes durable, or, with nothing
    /// to do, checks whether a journal that failed takes writes again), beside the group
    /// commits, until `closing` turns true.
    async fn checkpoints(self: Arc<Self>, mut closing: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(CHECKPOINT_EVERY) => {}
                () = async { let _ = closing.wait_for(|c| *c).await; } => return,
            }
            let this = self.clone();
            let result = tokio::task::spawn_blocking(move || {
                if this.holds_anything() {
                    this.checkpoint()
                } else if this.store.unflushed() {
                    // No submits, but outcomes, retries or expiries since the last checkpoint.
                    this.store.flush_delivery()
                } else {
                    this.probe();
                    this.sync_now()
                }
            })
            .await;
            self.went(result).await;
        }
    }

    /// Logs a failed write, sync or checkpoint, and waits a little before the next try.
    async fn went(&self, result: Result<anyhow::Result<()>, tokio::task::JoinError>) {
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                // The batch's submits were told; try again shortly (a checkpoint, or the next
                // batch).
                tracing::error!(error = %format!("{e:#}"), "the submit journal failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => tracing::error!(error = %e, "the journal task failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::record::{Payload, Status, StoredEvent};
    use crate::delivery::retry::RetryPolicy;
    use crate::model::DeliveryMode as Mode;

    fn inv(id: &str) -> Invocation {
        Invocation {
            id: id.into(),
            function: "f".into(),
            mode: Mode::StoreAndForward,
            status: Status::Pending,
            attempts: 0,
            created_ms: 1,
            updated_ms: 1,
            due_ms: Some(1),
            policy: RetryPolicy::default(),
            payload: Some(Payload::Event {
                event: StoredEvent::new(
                    &ferry_triggers::cloudevents::CloudEvent::new(id, "/test", "t").unwrap(),
                ),
            }),
            result: None,
            error: None,
            history: vec![],
            callback: None,
            idempotency_key: None,
            replayed_as: None,
            origin: Default::default(),
        }
    }

    #[test]
    fn framing_stops_at_a_torn_tail_and_skips_a_corrupt_record_before_whole_ones() {
        let mut bytes = Vec::new();
        for id in ["a", "b", "c"] {
            bytes.extend(frame(&inv(id)).unwrap());
        }
        let ids = |b: &[u8]| {
            read_records(b)
                .0
                .into_iter()
                .map(|i| i.id)
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&bytes), ["a", "b", "c"]);
        assert_eq!(ids(&bytes[..bytes.len() - 3]), ["a", "b"], "torn tail");
        let mut corrupt = bytes.clone();
        let first = frame(&inv("a")).unwrap().len();
        corrupt[first + 10] ^= 0xff;
        assert_eq!(
            ids(&corrupt),
            ["a", "c"],
            "a flipped byte loses one record, not the rest"
        );
        let (_, end, skipped) = read_records(&corrupt);
        assert_eq!(end, corrupt.len());
        assert_eq!(skipped, frame(&inv("b")).unwrap().len());
        // A zero-filled hole (pages of an unacknowledged batch that a power cut did not keep).
        let mut holed = bytes.clone();
        holed[first..first + 20].fill(0);
        assert_eq!(ids(&holed), ["a", "c"]);
        let mut torn_last = bytes.clone();
        let n = torn_last.len();
        torn_last[n - 5] ^= 1;
        assert_eq!(
            read_records(&torn_last).1,
            n - frame(&inv("c")).unwrap().len()
        );
        assert!(ids(&[]).is_empty());
    }

    /// A store whose durable flush lets a submit be journaled while it runs, as one arriving
    /// then would be.
    struct Busy {
        inner: Arc<crate::store::SledStore>,
        journal: Mutex<Option<Arc<Journal>>>,
        arriving: Mutex<Vec<Invocation>>,
    }

    impl DeliveryStore for Busy {
        fn insert(
            &self,
            inv: &Invocation,
            check_key: bool,
            lease: Option<&crate::delivery::store::Lease>,
        ) -> anyhow::Result<Option<Invocation>> {
            self.inner.insert(inv, check_key, lease)
        }
        fn put(&self, inv: &Invocation) -> anyhow::Result<()> {
            self.inner.put(inv)
        }
        fn get(&self, id: &str) -> anyhow::Result<Option<Invocation>> {
            self.inner.get(id)
        }
        fn payload(&self, id: &str) -> anyhow::Result<Option<Payload>> {
            self.inner.payload(id)
        }
        fn take_due(
            &self,
            queue: crate::delivery::store::Queue,
            now_ms: u64,
            lease: &crate::delivery::store::Lease,
            limit: usize,
            skip: &dyn Fn(&str) -> bool,
        ) -> anyhow::Result<Vec<Invocation>> {
            self.inner.take_due(queue, now_ms, lease, limit, skip)
        }
        fn count_due(
            &self,
            queue: crate::delivery::store::Queue,
            now_ms: u64,
            cap: usize,
        ) -> anyhow::Result<usize> {
            self.inner.count_due(queue, now_ms, cap)
        }
        fn next_due(&self, queue: crate::delivery::store::Queue) -> anyhow::Result<Option<u64>> {
            self.inner.next_due(queue)
        }
        fn dead_letters(&self) -> anyhow::Result<Vec<Invocation>> {
            self.inner.dead_letters()
        }
        fn remove(&self, id: &str) -> anyhow::Result<bool> {
            self.inner.remove(id)
        }
        fn expire(&self, before_ms: u64, limit: usize) -> anyhow::Result<usize> {
            self.inner.expire(before_ms, limit)
        }
        fn unfinished(&self) -> anyhow::Result<Vec<Invocation>> {
            self.inner.unfinished()
        }
        fn release_leases(&self, owner_prefix: &str) -> anyhow::Result<usize> {
            self.inner.release_leases(owner_prefix)
        }
        fn restore(&self, inv: &Invocation) -> anyhow::Result<bool> {
            self.inner.restore(inv)
        }
        fn flush_delivery(&self) -> anyhow::Result<()> {
            self.inner.flush_delivery()?;
            // Submits arriving while the flush runs: stored after it took its batch, journaled
            // and synced before it ends.
            let journal = self.journal.lock().unwrap().clone().unwrap();
            for inv in std::mem::take(&mut *self.arriving.lock().unwrap()) {
                self.inner.insert(&inv, false, None)?;
                let _ticket = journal.append(&inv)?;
                journal.sync_now()?;
            }
            Ok(())
        }
    }

    fn journaled(journal: &Journal) -> Vec<String> {
        read_file(&journal.path)
            .unwrap()
            .into_iter()
            .map(|i| i.id)
            .collect()
    }

    #[test]
    fn a_checkpoint_keeps_what_was_journaled_while_the_store_flushed() {
        let dir = tempfile::tempdir().unwrap();
        let inner = Arc::new(crate::store::SledStore::open(dir.path()).unwrap());
        let store = Arc::new(Busy {
            inner: inner.clone(),
            journal: Default::default(),
            arriving: Mutex::new(vec![inv("b"), inv("c")]),
        });
        let (journal, recovered) =
            Journal::open(dir.path(), store.clone(), inner.health(), false).unwrap();
        assert!(recovered.is_empty());
        *store.journal.lock().unwrap() = Some(journal.clone());
        store.insert(&inv("a"), false, None).unwrap();
        let _ticket = journal.append(&inv("a")).unwrap();
        journal.sync_now().unwrap();
        assert_eq!(journaled(&journal), ["a"]);

        // "a" is in the store now; "b" and "c" came during the flush and stay journaled.
        journal.checkpoint().unwrap();
        assert_eq!(journaled(&journal), ["b", "c"]);
        let len = std::fs::metadata(&journal.path).unwrap().len();
        assert_eq!(
            journal.output().len,
            len,
            "the journal's length is the new file's"
        );
        // Later submits are appended to the new file.
        store.insert(&inv("d"), false, None).unwrap();
        let _ticket = journal.append(&inv("d")).unwrap();
        journal.sync_now().unwrap();
        assert_eq!(journaled(&journal), ["b", "c", "d"]);
        // A checkpoint with nothing arriving empties it.
        journal.checkpoint().unwrap();
        assert!(journaled(&journal).is_empty());
        assert_eq!(std::fs::metadata(&journal.path).unwrap().len(), 0);
        for id in ["a", "b", "c", "d"] {
            assert!(inner.get(id).unwrap().is_some(), "{id} is stored");
        }
        // A crash now loses nothing: every record is in the store, made durable.
        store.journal.lock().unwrap().take();
        drop((journal, store, inner));
        let reopened = crate::store::SledStore::open(dir.path()).unwrap();
        for id in ["a", "b", "c", "d"] {
            assert!(reopened.get(id).unwrap().is_some(), "{id} survived");
        }
    }
}
