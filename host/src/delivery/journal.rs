//! The submit journal: what makes a store-and-forward 202 durable.
//!
//! A submit applies its invocation to the store (not yet durable), appends the same record to
//! this append-only file, and waits until a `fdatasync` that covers it has finished. One task
//! does all file I/O: it writes whatever submits have appended since the last sync and syncs once
//! for all of them (group commit), so durability costs one disk sync per batch, not per event.
//! Every second it checkpoints: flushes the store (which then holds every journaled record
//! durably) and empties the journal. After a crash, records still in the journal are written
//! back into the store before anything else runs.
//!
//! Record framing: `len: u32 LE | crc32(payload): u32 LE | payload (JSON invocation)`. A torn or
//! corrupt tail (a crash mid-write, never acknowledged) ends the replay.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::sync::{watch, Notify};

use super::record::Invocation;
use super::store::DeliveryStore;

/// How often the journal is folded into the store and emptied.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

struct Pending {
    buf: Vec<u8>,
    /// Sequence number of the last record appended.
    seq: u64,
}

/// The submit journal of one process: submits append to it and wait for its sync.
pub struct Journal {
    path: PathBuf,
    store: Arc<dyn DeliveryStore>,
    pending: Mutex<Pending>,
    file: Mutex<File>,
    /// The highest sequence number known to be durable.
    synced: watch::Sender<u64>,
    wake: Notify,
    /// Benchmark baseline: every submit writes and syncs on its own, one at a time.
    per_submit: bool,
}

fn frame(inv: &Invocation) -> anyhow::Result<Vec<u8>> {
    let payload = serde_json::to_vec(inv)?;
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// The records of a journal file, up to the first torn or corrupt one.
fn read_records(bytes: &[u8]) -> Vec<Invocation> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while let Some((len, tail)) = rest.split_first_chunk::<4>() {
        let Some((crc, tail)) = tail.split_first_chunk::<4>() else {
            break;
        };
        let len = u32::from_le_bytes(*len) as usize;
        let crc = u32::from_le_bytes(*crc);
        let Some(payload) = tail.get(..len) else {
            break;
        };
        if crc32fast::hash(payload) != crc {
            break;
        }
        match serde_json::from_slice(payload) {
            Ok(inv) => out.push(inv),
            Err(_) => break,
        }
        rest = &tail[len..];
    }
    out
}

// Both locks are used as they are when poisoned: nothing that runs under them panics halfway
// through a change (appending a framed record, bumping the counter, writing or emptying the
// file), so what they guard stays valid, and submits must go on being made durable.
impl Journal {
    fn pending(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn file(&self) -> MutexGuard<'_, File> {
        self.file.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens the journal in `dir`, first writing back into the store whatever a previous
    /// process journaled but did not checkpoint. Returns the journal and the recovered records.
    pub fn open(
        dir: &Path,
        store: Arc<dyn DeliveryStore>,
        per_submit: bool,
    ) -> anyhow::Result<(Arc<Self>, Vec<Invocation>)> {
        let path = dir.join("submits.journal");
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("failed to open the submit journal {}", path.display()))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let recovered = read_records(&bytes);
        file.set_len(0)?;
        file.seek(SeekFrom::Start(0))?;
        let journal = Arc::new(Self {
            path,
            store,
            pending: Mutex::new(Pending {
                buf: Vec::new(),
                seq: 0,
            }),
            file: Mutex::new(file),
            synced: watch::Sender::new(0),
            wake: Notify::new(),
            per_submit,
        });
        Ok((journal, recovered))
    }

    /// Makes a submitted invocation durable: journaled and synced (group commit, or on its own
    /// in the per-submit baseline).
    pub async fn commit(self: &Arc<Self>, inv: &Invocation) -> anyhow::Result<()> {
        if self.per_submit {
            let framed = frame(inv)?;
            let this = self.clone();
            return tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                let mut file = this.file();
                file.write_all(&framed)?;
                file.sync_data()?;
                Ok(())
            })
            .await?;
        }
        let seq = self.append(inv)?;
        self.durable(seq).await
    }

    /// Appends a submitted invocation; returns its sequence number.
    pub fn append(&self, inv: &Invocation) -> anyhow::Result<u64> {
        let framed = frame(inv)?;
        let mut p = self.pending();
        p.buf.extend_from_slice(&framed);
        p.seq += 1;
        Ok(p.seq)
    }

    /// The sequence number of the latest record appended.
    pub fn latest(&self) -> u64 {
        self.pending().seq
    }

    /// Returns once record `seq` (and every one before it) is durable.
    pub async fn durable(self: &Arc<Self>, seq: u64) -> anyhow::Result<()> {
        let mut synced = self.synced.subscribe();
        self.wake.notify_one();
        synced.wait_for(|s| *s >= seq).await?;
        Ok(())
    }

    /// Writes and syncs what is pending; returns the sequence number now durable.
    fn sync_now(&self) -> anyhow::Result<u64> {
        let mut file = self.file();
        let (buf, seq) = {
            let mut p = self.pending();
            (std::mem::take(&mut p.buf), p.seq)
        };
        if !buf.is_empty() {
            file.write_all(&buf)
                .and_then(|_| file.sync_data())
                .with_context(|| {
                    format!("failed to write the submit journal {}", self.path.display())
                })?;
        }
        self.synced.send_if_modified(|s| {
            let advanced = seq > *s;
            *s = (*s).max(seq);
            advanced
        });
        Ok(seq)
    }

    /// Folds the journal into the store: flush the store (every journaled record was applied
    /// to it before being journaled), then empty the file.
    fn checkpoint(&self) -> anyhow::Result<()> {
        let mut file = self.file();
        let seq = {
            let mut p = self.pending();
            // Records still only in memory are made durable by this store flush too.
            p.buf.clear();
            p.seq
        };
        self.store.flush_delivery()?;
        file.set_len(0)?;
        file.seek(SeekFrom::Start(0))?;
        self.synced.send_if_modified(|s| {
            let advanced = seq > *s;
            *s = (*s).max(seq);
            advanced
        });
        Ok(())
    }

    /// Syncs submits as they come (group commit) and checkpoints every second, until shutdown;
    /// then checkpoints once more, so the journal is empty when the process ends. Start it after
    /// the records [`Journal::open`] recovered are in the store and flushed.
    pub async fn run(self: Arc<Self>, mut shutdown: ferry_triggers::Shutdown) {
        let mut last_checkpoint = Instant::now();
        loop {
            let due = CHECKPOINT_EVERY.saturating_sub(last_checkpoint.elapsed());
            let woken = tokio::select! {
                _ = self.wake.notified() => true,
                _ = tokio::time::sleep(due) => false,
                () = shutdown.requested() => {
                    let this = self.clone();
                    match tokio::task::spawn_blocking(move || this.checkpoint()).await {
                        Ok(Ok(())) => tracing::debug!("the submit journal is folded into the store"),
                        Ok(Err(e)) => tracing::error!(error = %format!("{e:#}"), "the last checkpoint failed; the journal is replayed on the next start"),
                        Err(e) => tracing::error!(error = %e, "the last checkpoint failed"),
                    }
                    return;
                }
            };
            let this = self.clone();
            let checkpoint = !woken || last_checkpoint.elapsed() >= CHECKPOINT_EVERY;
            let result = tokio::task::spawn_blocking(move || {
                if checkpoint {
                    this.checkpoint()
                } else {
                    this.sync_now().map(drop)
                }
            })
            .await;
            if checkpoint {
                last_checkpoint = Instant::now();
            }
            match result {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = %format!("{e:#}"), "the submit journal failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    self.wake.notify_one();
                }
                Err(e) => tracing::error!(error = %e, "the journal task failed"),
            }
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
            payload: Payload::Event {
                event: StoredEvent::new(
                    &ferry_triggers::cloudevents::CloudEvent::new(id, "/test", "t").unwrap(),
                ),
            },
            result: None,
            error: None,
            history: vec![],
            callback: None,
            idempotency_key: None,
            replayed_as: None,
        }
    }

    #[test]
    fn framing_stops_at_a_torn_or_corrupt_tail() {
        let mut bytes = Vec::new();
        for id in ["a", "b", "c"] {
            bytes.extend(frame(&inv(id)).unwrap());
        }
        let ids = |b: &[u8]| {
            read_records(b)
                .into_iter()
                .map(|i| i.id)
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&bytes), ["a", "b", "c"]);
        assert_eq!(ids(&bytes[..bytes.len() - 3]), ["a", "b"], "torn tail");
        let mut corrupt = bytes.clone();
        let second = frame(&inv("a")).unwrap().len() + 10;
        corrupt[second] ^= 0xff;
        assert_eq!(ids(&corrupt), ["a"], "a flipped byte ends the replay");
        assert!(ids(&[]).is_empty());
    }
}
