//! The submit journal: what makes a store-and-forward 202 durable.
//!
//! A submit applies its invocation to the store (not yet durable), appends the same record to
//! this file, and waits until a `fdatasync` that covers it has finished. One task does all file
//! I/O: it writes whatever submits have appended since the last sync and syncs once for all of
//! them (group commit), so durability costs one disk sync per batch, not per event. Each batch
//! has one outcome: every submit in it is answered after the sync succeeded, or gets the error
//! if the write or the sync failed (a full disk): then the file is cut back to where the batch
//! began, and nothing of it is acknowledged.
//!
//! The file is reused, never emptied: a sync that only overwrites blocks the file already has
//! does not change its metadata, so it is one data write and one cache flush for the disk (a
//! tenth of an append's cost measured on ext4: 0.1-0.2 ms against 2 ms). The file grows in
//! zero-filled steps when a batch would pass its end, and its records carry a **generation**:
//! the file starts with a marker (a record with no invocation) naming the current generation,
//! and only records of that generation count; older ones are left-overs to be overwritten.
//!
//! Every second (when the journal holds anything) it checkpoints: writes what is pending, makes
//! the store durable (fsync and seal, see [`crate::store::durable`]) — which then holds every
//! journaled record — and only then starts a new generation by writing its marker over the old
//! one (one 16-byte write and sync): the records before it no longer count. Submits go on being
//! journaled while the store flushes: the records written meanwhile are copied, with the new
//! generation, to where they overwrite only records the store holds (or after the last record),
//! and synced, before the marker is written. A crash before the marker finds the old generation
//! whole (the copies are another generation's); a crash after it finds the copies. At start,
//! the records a previous process left are written back into the store and made durable before
//! anything else runs; the file keeps them until the first checkpoint, so a crash during
//! recovery loses nothing either.
//!
//! Record framing: `len: u32 LE | crc32(generation ‖ payload): u32 LE | generation: u64 LE |
//! payload (JSON invocation; empty in the marker)`. A torn or corrupt record (a crash mid-write,
//! never acknowledged) is skipped; so are records of other generations. An invocation whose
//! payload the store keeps in a file of its own (64 KiB or more) is journaled without it (the
//! store synced that file and its directory before it stored the record): the replay finds the
//! payload there. A journal written by an earlier version (`len | crc32(payload) | payload`,
//! emptied by truncation) is read as such once and rewritten in this format.

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

/// How often the journal is folded into the store and a new generation begins.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// Bytes of a record's framing: length, checksum, generation.
const HEADER: usize = 16;

/// Where the first record goes: after the generation's marker.
const FIRST: u64 = HEADER as u64;

/// The file grows in steps of at least this many zero bytes, written ahead of the records.
const GROW_STEP: u64 = 1 << 20;

/// ... and at most this many (a step is written under the lock every batch waits for).
const MAX_GROW_STEP: u64 = 8 << 20;

/// A file grown past this by a burst is cut back to it when a new generation begins.
const KEEP_AT_MOST: u64 = 64 << 20;

/// How a batch of submits ended: None while it is pending or being written.
type Outcome = Option<Result<(), Arc<str>>>;

/// Submits appended since the last write: one batch, framed without its generation yet.
struct Pending {
    buf: Vec<u8>,
    /// How many submits `buf` holds.
    count: usize,
    /// Told how the batch's write and sync ended.
    batch: watch::Sender<Outcome>,
}

/// The journal file: where the current generation's records end, how far the file is written.
struct Output {
    file: File,
    /// Just past the current generation's last record (whole and synced): where the next
    /// batch goes.
    len: u64,
    /// The file's length: bytes up to here are written, so overwriting them syncs no metadata.
    size: u64,
    /// The current generation (its marker is at offset 0).
    generation: u64,
    /// The next generation to begin: above every generation the file may hold a record of.
    next_generation: u64,
    /// While a checkpoint flushes the store: what was written after the part it covers, and
    /// where that began (kept when the new generation begins).
    tail: Option<(u64, Vec<u8>)>,
    /// Whether the current generation's marker is written and synced. A checkpoint whose
    /// marker write failed leaves the file's first bytes unknown: no batch is written until
    /// the marker is.
    marker_written: bool,
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

/// Appends a record of `payload` to `out`, its generation and checksum left for [`seal`].
fn frame_into(out: &mut Vec<u8>, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&[0; HEADER - 4]);
    out.extend_from_slice(payload);
}

fn frame(inv: &Invocation) -> anyhow::Result<Vec<u8>> {
    let payload = serde_json::to_vec(inv)?;
    let mut out = Vec::with_capacity(payload.len() + HEADER);
    frame_into(&mut out, &payload);
    Ok(out)
}

/// Gives every record framed in `buf` the generation `generation`, and its checksum. Done when
/// the records are written, not when they are appended: a checkpoint may begin a new generation
/// in between.
fn seal(buf: &mut [u8], generation: u64) {
    let mut at = 0;
    while let Some(&[a, b, c, d]) = buf.get(at..at + 4) {
        let len = u32::from_le_bytes([a, b, c, d]) as usize;
        buf[at + 8..at + HEADER].copy_from_slice(&generation.to_le_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(&buf[at + 8..at + HEADER + len]);
        buf[at + 4..at + 8].copy_from_slice(&crc.finalize().to_le_bytes());
        at += HEADER + len;
    }
}

/// A generation's marker: a record with nothing in it.
fn marker(generation: u64) -> Vec<u8> {
    let mut m = Vec::with_capacity(HEADER);
    frame_into(&mut m, &[]);
    seal(&mut m, generation);
    m
}

/// A whole record with a good checksum at the front of `bytes`.
struct Frame<'a> {
    generation: u64,
    payload: &'a [u8],
    /// With its framing.
    size: usize,
}

fn frame_at(bytes: &[u8]) -> Option<Frame<'_>> {
    let (len, rest) = bytes.split_first_chunk::<4>()?;
    let (crc, rest) = rest.split_first_chunk::<4>()?;
    let len = u32::from_le_bytes(*len) as usize;
    let covered = rest.get(..8 + len)?;
    if crc32fast::hash(covered) != u32::from_le_bytes(*crc) {
        return None;
    }
    let (generation, payload) = covered.split_first_chunk::<8>()?;
    Some(Frame {
        generation: u64::from_le_bytes(*generation),
        payload,
        size: HEADER + len,
    })
}

/// What a journal file holds.
struct Contents {
    /// The current generation's records, in file order.
    records: Vec<Invocation>,
    /// Just past the last of them.
    end: usize,
    /// Their bytes, with framing.
    bytes: usize,
    /// Corrupt bytes with records of the current generation after them.
    skipped: usize,
    /// The current generation (0: none, the file holds nothing of this format).
    generation: u64,
    /// Its marker is whole at offset 0.
    marker_ok: bool,
    /// The newest generation of any record in the file.
    newest: u64,
    /// Written by an earlier version (no generations).
    earlier_format: bool,
}

/// Walks `bytes` from `at`: the records of the generations `oldest..=current` (none when
/// `current` is 0: then it only finds the newest generation) wherever they are, skipping other
/// generations' records and corrupt bytes.
fn walk(bytes: &[u8], mut at: usize, oldest: u64, current: u64) -> Contents {
    let mut c = Contents {
        records: Vec::new(),
        end: at,
        bytes: 0,
        skipped: 0,
        generation: current,
        marker_ok: false,
        newest: current,
        earlier_format: false,
    };
    let counts = |g: u64| current > 0 && (oldest..=current).contains(&g);
    let mut corrupt = 0;
    // Bytes right after another generation's record are most likely the rest of a record it
    // overwrote (a checkpoint's copies), not damage.
    let mut overwritten = false;
    while at + HEADER <= bytes.len() {
        match frame_at(&bytes[at..]) {
            Some(f) if counts(f.generation) && !f.payload.is_empty() => {
                match serde_json::from_slice(f.payload) {
                    Ok(inv) => {
                        // Bytes before the first record are where a checkpoint's copies go: a
                        // crash tears them, no damage. Between records they are damage.
                        if !c.records.is_empty() {
                            c.skipped += corrupt;
                        }
                        corrupt = 0;
                        c.records.push(inv);
                        c.end = at + f.size;
                        c.bytes += f.size;
                    }
                    Err(_) => corrupt += f.size,
                }
                overwritten = false;
                at += f.size;
            }
            Some(f) => {
                c.newest = c.newest.max(f.generation);
                overwritten = !counts(f.generation);
                at += f.size;
            }
            None => {
                // Sixteen zero bytes start no record (a generation is never 0): jump to just
                // before the next non-zero byte, where one could.
                let zeros = bytes[at..].iter().take_while(|&&b| b == 0).count();
                let step = if zeros >= HEADER {
                    zeros - (HEADER - 1)
                } else {
                    1
                };
                if !overwritten {
                    corrupt += step;
                }
                at += step;
            }
        }
    }
    c
}

/// Reads a journal file: this format, or the earlier one.
fn read_contents(bytes: &[u8]) -> Contents {
    if !bytes.is_empty() && !bytes.starts_with(&[0; 4]) {
        let earlier = read_earlier(bytes);
        if !earlier.records.is_empty() {
            return earlier;
        }
    }
    match frame_at(bytes) {
        Some(m) if m.payload.is_empty() && m.generation > 0 => Contents {
            marker_ok: true,
            ..walk(bytes, HEADER, m.generation, m.generation)
        },
        // The marker is damaged: the current generation is the newest in the file or the one
        // before it (a checkpoint that failed after its copies leaves records of a generation
        // that never began). Both are replayed: a record the store holds already is harmless.
        _ => match walk(bytes, 0, 0, 0).newest {
            0 => walk(bytes, 0, 0, 0),
            newest => walk(bytes, 0, newest.saturating_sub(1).max(1), newest),
        },
    }
}

/// The earlier format: `len | crc32(payload) | payload`, the current records from offset 0. A
/// torn or corrupt record ends it, unless whole records follow (then its bytes are skipped).
fn read_earlier(bytes: &[u8]) -> Contents {
    let record_at = |b: &[u8]| -> Option<(Invocation, usize)> {
        let (len, tail) = b.split_first_chunk::<4>()?;
        let (crc, tail) = tail.split_first_chunk::<4>()?;
        let len = u32::from_le_bytes(*len) as usize;
        let payload = tail.get(..len)?;
        if crc32fast::hash(payload) != u32::from_le_bytes(*crc) {
            return None;
        }
        Some((serde_json::from_slice(payload).ok()?, 8 + len))
    };
    let mut c = Contents {
        records: Vec::new(),
        end: 0,
        bytes: 0,
        skipped: 0,
        generation: 0,
        marker_ok: false,
        newest: 0,
        earlier_format: true,
    };
    let mut at = 0;
    while at < bytes.len() {
        if let Some((inv, n)) = record_at(&bytes[at..]) {
            c.records.push(inv);
            at += n;
            c.end = at;
            c.bytes += n;
            continue;
        }
        let next = (at + 1..bytes.len().saturating_sub(8))
            .find(|&i| bytes.get(i + 8) == Some(&b'{') && record_at(&bytes[i..]).is_some());
        match next {
            Some(i) => {
                c.skipped += i - at;
                at = i;
            }
            None => break,
        }
    }
    c
}

/// What a journal file holds (for `ferry store check`).
#[derive(Debug, Default)]
pub struct JournalInfo {
    /// Records of the current generation: submits the store may not hold yet.
    pub records: usize,
    /// Their bytes, with framing.
    pub record_bytes: usize,
    /// Bytes of corrupt records with current records after them.
    pub skipped_bytes: usize,
    /// The file is in an earlier version's format (rewritten at the next start).
    pub earlier_format: bool,
}

/// Reads a journal file without changing it; a missing file holds nothing.
pub fn inspect(path: &Path) -> anyhow::Result<JournalInfo> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(JournalInfo::default()),
        Err(e) => return Err(e).with_context(|| format!("failed to read {}", path.display())),
    };
    let c = read_contents(&bytes);
    Ok(JournalInfo {
        records: c.records.len(),
        record_bytes: c.bytes,
        skipped_bytes: c.skipped,
        earlier_format: c.earlier_format,
    })
}

/// The current records of a journal file (for a store that reopens after an I/O error).
pub fn read_file(path: &Path) -> anyhow::Result<Vec<Invocation>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(read_contents(&bytes).records),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("failed to read {}", path.display())),
    }
}

/// Zeros written to grow the file.
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

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
    /// durable before [`Journal::run`] starts (whose first checkpoint begins a new generation).
    pub fn open(
        dir: &Path,
        store: Arc<dyn DeliveryStore>,
        health: Arc<Health>,
        per_submit: bool,
    ) -> anyhow::Result<(Arc<Self>, Vec<Invocation>)> {
        let path = dir.join(crate::store::durable::JOURNAL_FILE);
        let created = !path.exists();
        let failed = || format!("failed to open the submit journal {}", path.display());
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .with_context(failed)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).with_context(failed)?;
        let contents = read_contents(&bytes);
        drop(bytes);
        if contents.skipped > 0 {
            tracing::error!(
                journal = %path.display(),
                records = contents.records.len(),
                skipped_bytes = contents.skipped,
                "the submit journal holds corrupt bytes with whole records after them; kept every whole record"
            );
        }
        let (file, len, generation) = if contents.earlier_format {
            // Rewritten in this format beside it, then renamed into its place: a crash finds
            // one file or the other, each with every record.
            let generation = 1;
            let mut buf = marker(generation);
            for inv in &contents.records {
                buf.extend(frame(inv)?);
            }
            seal(&mut buf[HEADER..], generation);
            let tmp = path.with_extension("journal.tmp");
            let file = OpenOptions::new()
                .create(true)
                .read(true)
                .write(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .and_then(|f| {
                    f.write_all_at(&buf, 0)
                        .and_then(|()| f.sync_all())
                        .map(|()| f)
                })
                .and_then(|f| std::fs::rename(&tmp, &path).map(|()| f))
                .and_then(|f| crate::store::durable::sync_dir(dir).map(|()| f))
                .with_context(failed)?;
            tracing::info!(journal = %path.display(), records = contents.records.len(), "rewrote the submit journal in the current format");
            (file, buf.len() as u64, generation)
        } else if contents.generation == 0 {
            // New (or holding nothing readable): the first generation begins.
            let generation = contents.newest + 1;
            file.set_len(0)
                .and_then(|()| file.write_all_at(&marker(generation), 0))
                .and_then(|()| file.sync_all())
                .with_context(failed)?;
            if created {
                crate::store::durable::sync_dir(dir).with_context(failed)?;
            }
            (file, FIRST, generation)
        } else {
            // What follows the last record is left-overs: earlier generations' records, the
            // zeros the file grew by, or a torn batch that was never acknowledged (never whole:
            // a whole record of this generation would be before `end`). New records overwrite
            // it. A damaged marker is written again before the first batch.
            (file, (contents.end as u64).max(FIRST), contents.generation)
        };
        let size = file.metadata().with_context(failed)?.len();
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
                len,
                size,
                generation,
                next_generation: contents.newest.max(generation) + 1,
                tail: None,
                marker_written: contents.marker_ok
                    || contents.earlier_format
                    || contents.generation == 0,
                restored_at: 0,
            }),
            wake: Notify::new(),
            per_submit,
            metrics: std::sync::OnceLock::new(),
        });
        Ok((journal, contents.records))
    }

    /// Makes a submitted invocation durable: journaled and synced (group commit, or on its own
    /// in the per-submit baseline).
    pub async fn commit(self: &Arc<Self>, inv: &Invocation) -> anyhow::Result<()> {
        // A payload the store keeps in a file of its own was made durable there before its
        // record was stored, so the journal holds only the record: a large body is written to
        // disk once, not twice. (Nothing is awaited before the append: a duplicate submit's
        // barrier must cover this record.)
        let apart = inv
            .payload
            .as_ref()
            .is_some_and(|p| self.store.keeps_apart(p));
        let without_payload;
        let inv = if apart {
            without_payload = inv.without_payload();
            &without_payload
        } else {
            inv
        };
        if self.per_submit {
            let mut framed = frame(inv)?;
            let this = self.clone();
            return tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                let mut out = this.output();
                seal(&mut framed, out.generation);
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

    /// Writes `buf` (sealed with the current generation) after the current generation's
    /// records and syncs it; on failure, cuts the file back, so a partial write never sits
    /// where later records go. A write that would pass the file's end also writes zeros ahead
    /// (half the file again, at least [`GROW_STEP`]), so the batches after it only overwrite.
    fn write(&self, out: &mut Output, buf: &[u8]) -> anyhow::Result<()> {
        let failed = || format!("failed to write the submit journal {}", self.path.display());
        // Nothing is written after the current generation's records before its marker is: the
        // file may still name the generation before, whose records lie there.
        if let Err(e) = self.write_marker(out) {
            let result = Err(anyhow::Error::new(e).context(failed()));
            self.health.record("journal", &result);
            return result;
        }
        let end = out.len + buf.len() as u64;
        let size = if end > out.size {
            (end + (out.size / 2).clamp(GROW_STEP, MAX_GROW_STEP)).next_multiple_of(4096)
        } else {
            out.size
        };
        let result = out
            .file
            .write_all_at(buf, out.len)
            .and_then(|()| {
                let mut at = end.max(out.size);
                while at < size {
                    let n = (size - at).min(ZEROS.len() as u64);
                    out.file.write_all_at(&ZEROS[..n as usize], at)?;
                    at += n;
                }
                Ok(())
            })
            .and_then(|()| out.file.sync_data())
            .with_context(failed);
        match &result {
            Ok(()) => {
                out.len = end;
                out.size = size;
                if let Some((_, tail)) = &mut out.tail {
                    tail.extend_from_slice(buf);
                }
            }
            Err(_) => self.cut_back(out),
        }
        self.health.record("journal", &result);
        result
    }

    /// Cuts the file back to the current generation's last record (after a failed write, whose
    /// records were refused and must never be read back), as durably as the disk allows.
    fn cut_back(&self, out: &mut Output) {
        if out.file.set_len(out.len).is_ok() {
            let _ = out.file.sync_all();
            out.size = out.len;
        }
    }

    /// Writes and syncs the pending batch, and tells its submits how that went.
    fn sync_pending(&self, out: &mut Output) -> anyhow::Result<()> {
        let (mut buf, count, batch) = {
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
            seal(&mut buf, out.generation);
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
        let mut out = self.output();
        let result = self
            .write_marker(&mut out)
            .and_then(|()| {
                let written = out
                    .file
                    .write_all_at(&ZEROS[..4096], out.len)
                    .and_then(|()| out.file.sync_data());
                self.cut_back(&mut out);
                written
            })
            .with_context(|| format!("failed to write the submit journal {}", self.path.display()));
        self.health.record("journal", &result);
    }

    /// Whether a checkpoint has anything to fold into the store.
    fn holds_anything(&self) -> bool {
        self.output().len > FIRST || !self.pending().buf.is_empty()
    }

    /// Folds the journal into the store: write what is pending, make the store durable (every
    /// journaled record was applied to it before being journaled), then begin a new generation,
    /// so that the records the store now holds no longer count. Submits go on being journaled
    /// and synced while the store flushes: what they wrote meanwhile is copied into the new
    /// generation.
    fn checkpoint(&self) -> anyhow::Result<()> {
        let reopens = {
            let mut out = self.output();
            self.sync_pending(&mut out)?;
            if out.len <= FIRST {
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
            out.tail = Some((out.len, Vec::new()));
            reopens
        };
        crashpoint("checkpoint-start");
        let flushed = self.store.flush_delivery();
        let mut out = self.output();
        let (tail_from, mut copies) = out.tail.take().unwrap_or_default();
        flushed?;
        if self.store.reopens() != reopens {
            // Reopened during the flush: write back first, at the next checkpoint.
            return Ok(());
        }
        crashpoint("checkpoint-before-copies");
        // Never used before, even by a checkpoint that failed half-way.
        let generation = out.next_generation;
        out.next_generation += 1;
        let fail = |e| {
            anyhow::Error::new(e).context(format!(
                "failed to begin a new generation of the submit journal {}",
                self.path.display()
            ))
        };
        // The submits journaled during the flush, copied into the new generation and synced:
        // at the front if they fit before their originals (they overwrite records the store
        // holds now), else after the last record.
        seal(&mut copies, generation);
        let at = if FIRST + copies.len() as u64 <= tail_from {
            if !copies.is_empty() {
                out.file
                    .write_all_at(&copies, FIRST)
                    .and_then(|()| out.file.sync_data())
                    .map_err(fail)?;
            }
            FIRST
        } else {
            let at = out.len;
            self.write(&mut out, &copies)?;
            at
        };
        crashpoint("checkpoint-before-marker");
        // The copies are whole and synced: the generation begins with its marker. Until the
        // marker is written, no batch is (see `write`): a crash finds the old generation whole,
        // or the new one.
        out.generation = generation;
        out.len = at + copies.len() as u64;
        out.marker_written = false;
        let marked = self.write_marker(&mut out).map_err(fail);
        if marked.is_err() {
            // Told to the health check, so that the probe tries the marker again when no
            // submit does.
            self.health.record("journal", &marked);
        }
        marked?;
        if out.size > KEEP_AT_MOST && out.len <= KEEP_AT_MOST {
            // A burst grew the file: give the disk back what the records no longer need.
            if out.file.set_len(KEEP_AT_MOST).is_ok() {
                out.size = KEEP_AT_MOST;
            }
        }
        Ok(())
    }

    /// Writes and syncs the current generation's marker at the start of the file, if it has
    /// not been yet.
    fn write_marker(&self, out: &mut Output) -> std::io::Result<()> {
        if !out.marker_written {
            out.file.write_all_at(&marker(out.generation), 0)?;
            out.file.sync_data()?;
            out.marker_written = true;
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

    /// Records of `ids`, sealed with `generation`.
    fn records(generation: u64, ids: &[&str]) -> Vec<u8> {
        let mut b = Vec::new();
        for id in ids {
            b.extend(frame(&inv(id)).unwrap());
        }
        seal(&mut b, generation);
        b
    }

    fn ids(bytes: &[u8]) -> Vec<String> {
        read_contents(bytes)
            .records
            .into_iter()
            .map(|i| i.id)
            .collect()
    }

    #[test]
    fn only_the_current_generation_counts_and_a_torn_or_corrupt_record_is_skipped() {
        let mut bytes = marker(7);
        bytes.extend(records(7, &["a", "b", "c"]));
        assert_eq!(ids(&bytes), ["a", "b", "c"]);
        assert_eq!(ids(&bytes[..bytes.len() - 3]), ["a", "b"], "torn tail");
        let first = HEADER + frame(&inv("a")).unwrap().len();
        let mut corrupt = bytes.clone();
        corrupt[first + 20] ^= 0xff;
        assert_eq!(
            ids(&corrupt),
            ["a", "c"],
            "a flipped byte loses one record, not the rest"
        );
        let c = read_contents(&corrupt);
        assert_eq!(
            (c.end, c.skipped),
            (corrupt.len(), frame(&inv("b")).unwrap().len())
        );
        // A zero-filled hole (pages of an unacknowledged batch that a power cut did not keep).
        let mut holed = bytes.clone();
        holed[first..first + 40].fill(0);
        assert_eq!(ids(&holed), ["a", "c"]);

        // Left-overs of earlier generations, and zeros the file grew by, are not records, nor
        // damage.
        let mut reused = marker(8);
        reused.extend(records(8, &["d"]));
        let end = reused.len();
        reused.extend(&bytes[end..]);
        reused.extend(records(6, &["old"]));
        reused.extend([0; 5000]);
        let c = read_contents(&reused);
        assert_eq!(ids(&reused), ["d"]);
        assert_eq!((c.end, c.skipped, c.generation, c.newest), (end, 0, 8, 8));
        assert!(ids(&[]).is_empty());
        assert!(ids(&[0; 4096]).is_empty());
    }

    #[test]
    fn a_crash_before_a_new_generations_marker_finds_the_old_one_whole_and_after_it_the_new() {
        // Generation 3 holds a, b (in the store now) and c (journaled during the store's flush).
        let mut old = marker(3);
        old.extend(records(3, &["a", "b"]));
        let tail_from = old.len();
        old.extend(records(3, &["c"]));
        // The checkpoint copies c to the front as generation 4 (over a), then writes the marker.
        let mut copied = old.clone();
        let copy = records(4, &["c"]);
        copied[HEADER..HEADER + copy.len()].copy_from_slice(&copy);
        assert!(HEADER + copy.len() <= tail_from);
        let before_marker = read_contents(&copied);
        assert_eq!(
            ids(&copied),
            ["b", "c"],
            "the old generation, less what was overwritten"
        );
        assert_eq!((before_marker.generation, before_marker.newest), (3, 4));
        assert_eq!(
            before_marker.skipped, 0,
            "an overwritten record is not damage"
        );
        let mut after = copied.clone();
        after[..HEADER].copy_from_slice(&marker(4));
        assert_eq!(ids(&after), ["c"]);
        assert_eq!(read_contents(&after).end, HEADER + copy.len());
        // A damaged marker: the newest generation and the one before it are replayed.
        let mut damaged = after.clone();
        damaged[2] ^= 0x40;
        assert_eq!(ids(&damaged), ["c", "b", "c"]);
        assert!(!read_contents(&damaged).marker_ok);
        // Copies that do not fit before their originals go after the last record.
        let mut appended = old.clone();
        appended.extend(records(4, &["c"]));
        assert_eq!(ids(&appended), ["a", "b", "c"]);
        appended[..HEADER].copy_from_slice(&marker(4));
        assert_eq!(ids(&appended), ["c"]);
    }

    #[test]
    fn a_journal_in_the_earlier_format_is_replayed_and_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let mut earlier = Vec::new();
        for id in ["a", "b"] {
            let payload = serde_json::to_vec(&inv(id)).unwrap();
            earlier.extend((payload.len() as u32).to_le_bytes());
            earlier.extend(crc32fast::hash(&payload).to_le_bytes());
            earlier.extend(payload);
        }
        earlier.extend(b"torn");
        let path = dir.path().join(crate::store::durable::JOURNAL_FILE);
        std::fs::write(&path, &earlier).unwrap();
        let info = inspect(&path).unwrap();
        assert!(info.earlier_format);
        assert_eq!(info.records, 2);

        let store = Arc::new(crate::store::SledStore::open(dir.path()).unwrap());
        let health = store.health();
        let (journal, recovered) = Journal::open(dir.path(), store, health, false).unwrap();
        let recovered: Vec<_> = recovered.into_iter().map(|i| i.id).collect();
        assert_eq!(recovered, ["a", "b"]);
        let info = inspect(&path).unwrap();
        assert!(!info.earlier_format, "rewritten in the current format");
        assert_eq!(info.records, 2);
        assert_eq!(journaled(&journal), ["a", "b"]);
    }

    #[test]
    fn a_failed_marker_write_cuts_nothing_and_no_batch_is_written_until_it_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(crate::store::SledStore::open(dir.path()).unwrap());
        let (journal, _) = Journal::open(dir.path(), store.clone(), store.health(), false).unwrap();
        let submit = |id: &str| {
            store.insert(&inv(id), false, None).unwrap();
            let _ticket = journal.append(&inv(id)).unwrap();
            journal.sync_now()
        };
        for id in ["a", "b", "c"] {
            submit(id).unwrap();
        }
        let before = std::fs::read(&journal.path).unwrap();
        {
            // As a checkpoint leaves it when its marker write failed: the new generation
            // adopted, nothing of it on disk, and a disk that refuses writes.
            let mut out = journal.output();
            out.generation = out.next_generation;
            out.next_generation += 1;
            out.len = FIRST;
            out.marker_written = false;
            out.file = File::open(&journal.path).unwrap();
        }
        assert!(submit("d").is_err(), "refused");
        journal.probe();
        assert_eq!(
            std::fs::read(&journal.path).unwrap(),
            before,
            "nothing was cut or overwritten: the file still names the old generation"
        );
        assert_eq!(journaled(&journal), ["a", "b", "c"]);
        // The disk takes writes again: the marker first, then the batch.
        journal.output().file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&journal.path)
            .unwrap();
        submit("e").unwrap();
        assert_eq!(journaled(&journal), ["e"]);
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
        let submit = |id: &str| {
            store.insert(&inv(id), false, None).unwrap();
            let _ticket = journal.append(&inv(id)).unwrap();
            journal.sync_now().unwrap();
        };
        submit("a");
        assert_eq!(journaled(&journal), ["a"]);

        // "a" is in the store now; "b" and "c" came during the flush and stay journaled (copied
        // after "a": they do not fit before it).
        journal.checkpoint().unwrap();
        assert_eq!(journaled(&journal), ["b", "c"]);
        // Later submits follow them.
        submit("d");
        assert_eq!(journaled(&journal), ["b", "c", "d"]);
        // A checkpoint with nothing arriving begins an empty generation; the file is kept.
        journal.checkpoint().unwrap();
        assert!(journaled(&journal).is_empty());
        let size = std::fs::metadata(&journal.path).unwrap().len();
        assert!(
            size >= GROW_STEP,
            "the file is reused, not emptied ({size} bytes)"
        );

        // Many records, then one arriving during the flush: copied to the front.
        for i in 0..20 {
            submit(&format!("e{i}"));
        }
        store.arriving.lock().unwrap().push(inv("f"));
        journal.checkpoint().unwrap();
        assert_eq!(journaled(&journal), ["f"]);
        assert_eq!(
            journal.output().len,
            FIRST + records(1, &["f"]).len() as u64
        );
        submit("g");
        assert_eq!(journaled(&journal), ["f", "g"]);
        assert_eq!(
            std::fs::metadata(&journal.path).unwrap().len(),
            size,
            "overwritten in place"
        );
        for id in ["a", "b", "c", "d", "e0", "e19", "f", "g"] {
            assert!(inner.get(id).unwrap().is_some(), "{id} is stored");
        }
        // A crash now: "f" and "g" are replayed; the rest is in the store, made durable.
        store.journal.lock().unwrap().take();
        drop((journal, store, inner));
        let reopened = Arc::new(crate::store::SledStore::open(dir.path()).unwrap());
        for id in ["a", "b", "c", "d", "e0", "e19"] {
            assert!(reopened.get(id).unwrap().is_some(), "{id} survived");
        }
        let health = reopened.health();
        let (_journal, recovered) = Journal::open(dir.path(), reopened, health, false).unwrap();
        let recovered: Vec<_> = recovered.into_iter().map(|i| i.id).collect();
        assert_eq!(recovered, ["f", "g"]);
    }
}
