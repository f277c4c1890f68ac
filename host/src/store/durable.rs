//! What makes the embedded store durable and lets a start tell a damaged store from a sound one.
//!
//! - **fsync.** sled's `flush` writes its log with `sync_file_range`, which flushes neither the
//!   device's write cache nor a file's size and metadata, and writes large values as blob files
//!   it never syncs. A durable flush therefore also `fsync`s every file of the store changed since
//!   the previous durable flush, and every directory (new and renamed entries).
//! - **The seal.** Each durable flush first writes a generation number into the store, then makes
//!   the store durable, and only then writes the same number into `store.seal` beside it (a
//!   small file, replaced atomically). A store that holds an older generation than its seal lost
//!   writes that were durable: sled drops what it cannot read (a truncated file, a flipped bit) as
//!   if it were a torn tail and starts without it, so this is how a start tells.
//! - **Health.** An I/O error on the store or the journal marks the store degraded, with the
//!   error, until the same part succeeds again; `/healthz` reports it.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// The seal file, beside the store's `db` directory.
pub const SEAL_FILE: &str = "store.seal";
/// The submit journal's file name in the data directory.
pub const JOURNAL_FILE: &str = "submits.journal";
/// The store's own directory in the data directory.
pub const DB_DIR: &str = "db";
/// Large invocation payloads, one file each, beside the database.
pub const PAYLOAD_DIR: &str = "payloads";
/// Where `--quarantine` and `--repair` move a damaged store.
pub const QUARANTINE_DIR: &str = "quarantine";

/// The store is damaged: what is wrong, and the file it is wrong with.
#[derive(Debug, thiserror::Error)]
#[error("the store in {} is damaged: {problem} ({})", dir.display(), file.display())]
pub struct Damaged {
    /// The data directory.
    pub dir: PathBuf,
    /// The file (or directory) that is damaged or missing.
    pub file: PathBuf,
    /// What is wrong, in words.
    pub problem: String,
}

impl Damaged {
    pub(super) fn new(dir: &Path, file: impl AsRef<Path>, problem: impl Into<String>) -> Self {
        Self {
            dir: dir.to_path_buf(),
            file: dir.join(file),
            problem: problem.into().replace(" backtrace ()", ""),
        }
    }
}

/// What `store.seal` holds.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub(super) struct Seal {
    /// The generation the store held durably when the seal was written.
    pub(super) generation: u64,
    /// Whether the submit journal existed then (it must exist from then on).
    pub(super) journal: bool,
}

/// Reads the seal; None when there is none (a new or an older store).
pub(super) fn read_seal(dir: &Path) -> Result<Option<Seal>, Damaged> {
    let path = dir.join(SEAL_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Damaged::new(dir, SEAL_FILE, format!("the seal file is unreadable: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Damaged::new(
            dir,
            SEAL_FILE,
            format!("the seal file cannot be read: {e}"),
        )),
    }
}

/// Replaces the seal atomically and durably: a new file, synced, renamed over the old one, and
/// the directory synced.
pub(super) fn write_seal(dir: &Path, seal: &Seal) -> std::io::Result<()> {
    let tmp = dir.join(format!("{SEAL_FILE}.tmp"));
    replace_file(&tmp, &serde_json::to_vec(seal)?, &dir.join(SEAL_FILE))?;
    sync_dir(dir)
}

/// Writes `bytes` to a new file `tmp` (the owner's alone), syncs it, and renames it to `to`:
/// `to` is then either what it was or all of `bytes`, never a part (the directory entry is
/// durable once the directory is synced).
pub(super) fn replace_file(tmp: &Path, bytes: &[u8], to: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(tmp, to)
}

/// fsyncs a directory, so that the entries created, renamed or removed in it are durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Clock granularity and skew allowance when deciding which files changed since a sync.
const MTIME_SLACK: Duration = Duration::from_secs(2);

/// fsyncs every file under `dir` modified at or after `since` (every file when None), and every
/// directory. Files that vanish meanwhile (sled removes old blobs and snapshots) are skipped.
pub(super) fn sync_changed(dir: &Path, since: Option<SystemTime>) -> std::io::Result<usize> {
    let since = since.map(|s| s.checked_sub(MTIME_SLACK).unwrap_or(SystemTime::UNIX_EPOCH));
    let mut synced = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let meta = match entry.metadata() {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if meta.is_dir() {
            synced += sync_changed(&path, since)?;
        } else if meta.is_file() && since.is_none_or(|s| meta.modified().is_ok_and(|m| m >= s)) {
            match File::open(&path) {
                Ok(f) => f.sync_all()?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            }
            synced += 1;
        }
    }
    sync_dir(dir)?;
    Ok(synced)
}

/// Whether the data directory takes writes again: writes, syncs and removes a 1 MiB file.
pub(super) fn probe_space(dir: &Path) -> anyhow::Result<()> {
    let path = dir.join(".space-probe");
    let result = (|| {
        let mut f = File::create(&path)?;
        f.write_all(&vec![0u8; 1 << 20])?;
        f.sync_all()
    })();
    let _ = std::fs::remove_file(&path);
    result.map_err(|e| anyhow::Error::new(e).context("the data directory takes no writes yet"))
}

/// Whether an error is the disk (or a quota) being full.
pub fn is_disk_full(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        let io = cause.downcast_ref::<std::io::Error>().or_else(|| {
            match cause.downcast_ref::<sled::Error>() {
                Some(sled::Error::Io(io)) => Some(io),
                _ => None,
            }
        });
        io.is_some_and(|io| {
            io.kind() == std::io::ErrorKind::StorageFull
                || io.kind() == std::io::ErrorKind::QuotaExceeded
                || matches!(io.raw_os_error(), Some(28 | 122))
        }) || cause.to_string().contains("No space left on device")
    })
}

/// The store's health: the latest I/O error of each part (the store, the journal) that has not
/// succeeded since.
#[derive(Debug, Default)]
pub struct Health {
    errors: Mutex<BTreeMap<&'static str, String>>,
}

impl Health {
    /// Records how an operation of `part` went: an error degrades the store, a success of the
    /// same part heals it.
    pub fn record<T>(&self, part: &'static str, result: &anyhow::Result<T>) {
        let mut errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(_) => {
                if errors.remove(part).is_some() {
                    tracing::info!(part, "the store works again");
                }
            }
            Err(e) => {
                let message = format!("{e:#}");
                if errors.get(part) != Some(&message) {
                    tracing::error!(part, error = %message, "the store is degraded");
                }
                errors.insert(part, message);
            }
        }
    }

    /// The parts that failed last time, with their errors; empty when healthy.
    pub fn errors(&self) -> BTreeMap<&'static str, String> {
        self.errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seal_round_trips_and_a_garbled_one_is_damage() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_seal(dir.path()).unwrap(), None);
        let seal = Seal {
            generation: 7,
            journal: true,
        };
        write_seal(dir.path(), &seal).unwrap();
        assert_eq!(read_seal(dir.path()).unwrap(), Some(seal));
        std::fs::write(dir.path().join(SEAL_FILE), b"{\"generation\": 7").unwrap();
        let e = read_seal(dir.path()).unwrap_err();
        assert!(e.to_string().contains("store.seal"), "{e}");
    }

    #[test]
    fn disk_full_is_recognised_through_contexts() {
        let e = anyhow::Error::new(std::io::Error::from_raw_os_error(28)).context("writing");
        assert!(is_disk_full(&e));
        let e = anyhow::Error::new(sled::Error::Io(std::io::Error::from_raw_os_error(28)));
        assert!(is_disk_full(&e));
        assert!(!is_disk_full(&anyhow::anyhow!("permission denied")));
    }

    #[test]
    fn health_degrades_per_part_and_heals() {
        let h = Health::default();
        h.record::<()>("journal", &Err(anyhow::anyhow!("disk full")));
        h.record("store", &Ok(()));
        assert_eq!(h.errors().len(), 1);
        h.record("journal", &Ok(()));
        assert!(h.errors().is_empty());
    }
}
