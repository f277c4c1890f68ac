//! Cranelift's incremental compilation cache, on disk in the data directory.
//!
//! Components made by one toolchain share most of their code: every componentize-py component
//! carries the same CPython, every componentize-js one the same JavaScript engine, and an edited
//! function differs from its last version in a few functions. Cranelift can look up each
//! function's machine code by a SHA-256 of its compiler input and the compiler's settings, and
//! compile only what it has not seen. The store for those lookups is this directory: one file per
//! function, written by the compiler processes (several may run at once), bounded in size by
//! removing the least recently used files.
//!
//! A file holds a magic tag, a SHA-256 of its contents and the contents: a file damaged on disk
//! (or cut short by a crash mid-write) fails the check, is removed, and its function is compiled
//! again. Nothing here is synced: losing the cache costs only time.

use std::borrow::Cow;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use sha2::{Digest as _, Sha256};

/// The first bytes of every cache file (the format's version is its last byte).
const MAGIC: &[u8; 4] = b"FCC1";

/// Where a host's cache lives and how big it may grow (`ferry serve --compile-cache-size`).
#[derive(Debug, Clone)]
pub struct CacheSettings {
    /// The directory (`compile-cache` in the data directory).
    pub dir: PathBuf,
    /// The most bytes its files may hold; past it, the least recently used go.
    pub max_size: u64,
}

/// The cache as one compile uses it, counting what it found.
#[derive(Debug)]
pub struct DiskCache {
    dir: PathBuf,
    /// What this compile may write: its bound, or nothing when the disk is short of space.
    budget: u64,
    hits: AtomicU64,
    misses: AtomicU64,
    written: AtomicU64,
    failed: AtomicU64,
    next_temp: AtomicU64,
    /// This process's id, for the names of its temporary files.
    pid: u32,
}

impl DiskCache {
    /// The cache in `dir`, which is made if missing (private to the host's user, like the rest
    /// of the data directory). A compile writes at most `max_size` bytes to it, and nothing
    /// while the file system has less than twice `max_size` free: the cache never takes the
    /// space the store and the journal need.
    pub fn open(dir: &Path, max_size: u64) -> std::io::Result<Self> {
        private_dir(dir)?;
        let budget = if free_space(dir)? < max_size.saturating_mul(2) {
            0
        } else {
            max_size
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            budget,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            written: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            next_temp: AtomicU64::new(0),
            pid: std::process::id(),
        })
    }

    /// Functions found in the cache so far.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// The bytes this compile may add: 0 when the disk is short of space.
    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// Functions looked up and not found (compiled, then stored).
    pub fn misses(&self) -> u64 {
        self.misses.load(Ordering::Relaxed)
    }

    /// Bytes written to the cache so far.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Functions that could not be written (an unwritable directory, a full disk).
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// The file of `key`: 256 subdirectories, so that no directory holds every file.
    fn path(&self, key: &[u8]) -> PathBuf {
        let name = hex::encode(Sha256::digest(key));
        self.dir.join(&name[..2]).join(&name[2..])
    }

    fn read(&self, path: &Path) -> Option<Vec<u8>> {
        let mut file = std::fs::File::open(path).ok()?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).ok()?;
        let sound = bytes.len() >= MAGIC.len() + 32
            && bytes.starts_with(MAGIC)
            && Sha256::digest(&bytes[MAGIC.len() + 32..])[..] == bytes[MAGIC.len()..][..32];
        if !sound {
            // Damaged or cut short: compiled again and rewritten.
            let _ = std::fs::remove_file(path);
            return None;
        }
        // Recently used: eviction goes by modification time (access times are not kept on
        // every file system).
        let _ = file.set_modified(SystemTime::now());
        bytes.drain(..MAGIC.len() + 32);
        Some(bytes)
    }
}

impl wasmtime::CacheStore for DiskCache {
    fn get(&self, key: &[u8]) -> Option<Cow<'_, [u8]>> {
        match self.read(&self.path(key)) {
            Some(bytes) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                Some(Cow::Owned(bytes))
            }
            None => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    fn insert(&self, key: &[u8], value: Vec<u8>) -> bool {
        let size = (MAGIC.len() + 32 + value.len()) as u64;
        if self.written() + size > self.budget {
            // Past this compile's share (or the disk is short of space): compiled, not kept.
            return false;
        }
        let path = self.path(key);
        let Some(parent) = path.parent() else {
            return false;
        };
        // Written whole under a new name of this process's own, then renamed: a reader sees the
        // old file, the new one, or none, and two compilers writing the same function both
        // succeed.
        let temp = parent.join(format!(
            ".{}-{}",
            self.pid,
            self.next_temp.fetch_add(1, Ordering::Relaxed)
        ));
        let write = || -> std::io::Result<()> {
            use std::os::unix::fs::OpenOptionsExt as _;
            private_dir(parent)?;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&temp)?;
            // One write: a big component stores thousands of small functions.
            let mut whole = Vec::with_capacity(size as usize);
            whole.extend_from_slice(MAGIC);
            whole.extend_from_slice(&Sha256::digest(&value));
            whole.extend_from_slice(&value);
            file.write_all(&whole)?;
            drop(file);
            std::fs::rename(&temp, &path)
        };
        match write() {
            Ok(()) => {
                self.written.fetch_add(size, Ordering::Relaxed);
                true
            }
            Err(_) => {
                let _ = std::fs::remove_file(&temp);
                self.failed.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }
}

/// Settles where a host's cache is, from `ferry serve`'s `--compile-cache-dir` (`given`) and
/// `--compile-cache-size` (`max_size`, 0: off), and starts trimming it; returns what compiles
/// use (None: no cache). The data directory keeps no cache of its own when it is off or kept
/// elsewhere. A given directory is never removed; it must be one of its own (not the data
/// directory, inside it or holding it: trimming removes what it holds), and one that exists must
/// be this user's, writable by no one else and not a symbolic link (the code in it is loaded as
/// the host's own). Nothing is changed when a given directory is refused.
pub fn settle(
    data_dir: &Path,
    given: Option<&Path>,
    max_size: u64,
) -> anyhow::Result<Option<CacheSettings>> {
    use anyhow::Context as _;
    let own = data_dir.join("compile-cache");
    let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let is_own = given.is_some_and(|dir| absolute(dir) == absolute(&own));
    if let Some(dir) = given.filter(|_| !is_own) {
        let (cache, data) = (absolute(dir), absolute(data_dir));
        if cache.starts_with(&data) || data.starts_with(&cache) {
            anyhow::bail!(
                "cannot use {} as the compile cache (--compile-cache-dir): it {} the data \
                 directory {}; give a directory of its own",
                dir.display(),
                if cache == data {
                    "is"
                } else if cache.starts_with(&data) {
                    "is inside"
                } else {
                    "holds"
                },
                data_dir.display()
            );
        }
        if max_size > 0 {
            prepare(dir).with_context(|| {
                format!(
                    "cannot use {} as the compile cache (--compile-cache-dir); give a \
                     directory this user may create and write",
                    dir.display()
                )
            })?;
        }
    }
    if !is_own && (max_size == 0 || given.is_some()) {
        let _ = std::fs::remove_dir_all(&own);
    }
    if max_size == 0 {
        return Ok(None);
    }
    let settings = CacheSettings {
        dir: given.map_or(own, Path::to_path_buf),
        max_size,
    };
    trim_in_background(&settings);
    Ok(Some(settings))
}

/// Makes a cache directory given by the operator ready: made if missing (readable by this user
/// alone), and writable. One that exists must be this user's and writable by no one else.
fn prepare(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    private_dir(dir)?;
    let meta = std::fs::symlink_metadata(dir)?;
    // SAFETY: geteuid has no arguments and cannot fail.
    #[allow(unsafe_code)]
    let me = unsafe { libc::geteuid() };
    if !meta.is_dir() || meta.uid() != me || meta.mode() & 0o022 != 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "it must be a directory of this user's that no one else may write to (not a \
             symbolic link); `chmod go-w` it, or give another",
        ));
    }
    // Whether files can be made in it, as the compilers will.
    let probe = dir.join(format!(".probe-{}", std::process::id()));
    std::fs::File::create(&probe)?;
    std::fs::remove_file(&probe)
}

/// Makes `dir` (and its parents) if missing, readable by this user alone.
fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Bytes free to this user on the file system of `dir`.
fn free_space(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt as _;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `path` is a NUL-terminated string and `stat` a zeroed struct statvfs fills.
    #[allow(unsafe_code)]
    let stat = unsafe {
        let mut stat: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(path.as_ptr(), &mut stat) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        stat
    };
    Ok((stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
}

/// Removes the least recently used files of the cache in `dir` until they take at most
/// `max_size` bytes of disk (down to nine tenths of it, so that the next compile does not have to evict
/// again), and leftover temporary files of compilers that died mid-write. Returns the bytes the
/// cache holds afterwards. Files that vanish meanwhile (another compiler evicting) are skipped.
pub fn evict(dir: &Path, max_size: u64) -> u64 {
    let mut files = Vec::new();
    let mut total = 0u64;
    let now = SystemTime::now();
    // Only what the cache writes is counted and removed: a directory given by the operator
    // (`--compile-cache-dir`) may hold other files by mistake.
    let hex = |name: &str, len: usize| {
        name.len() == len
            && name
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    for sub in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if !hex(&sub.file_name().to_string_lossy(), 2) {
            continue;
        }
        for entry in std::fs::read_dir(sub.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            let temporary = name
                .strip_prefix('.')
                .and_then(|rest| rest.split_once('-'))
                .is_some_and(|(pid, n)| {
                    !pid.is_empty()
                        && !n.is_empty()
                        && pid.bytes().chain(n.bytes()).all(|b| b.is_ascii_digit())
                });
            if !temporary && !hex(&name, 62) {
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            let modified = meta.modified().unwrap_or(now);
            if temporary {
                // A temporary file: a compiler's write in progress, or one that died. An hour
                // is far past the longest compile.
                if now.duration_since(modified).unwrap_or_default().as_secs() > 3600 {
                    let _ = std::fs::remove_file(entry.path());
                }
                continue;
            }
            // The disk a file takes, not its length: most are a few KB, in whole blocks.
            let used = std::os::unix::fs::MetadataExt::blocks(&meta) * 512;
            total += used;
            files.push((modified, used, entry.path()));
        }
    }
    if total <= max_size {
        return total;
    }
    let goal = max_size / 10 * 9;
    files.sort_unstable_by_key(|(modified, _, _)| *modified);
    for (_, len, path) in files {
        if total <= goal {
            break;
        }
        if std::fs::remove_file(&path).is_ok() {
            total -= len;
        }
    }
    total
}

/// Trims the cache to its bound on a thread of its own, unless a trim is already running (one
/// at a time: two would each remove the excess). The host calls it at start and after each
/// compile that added to the cache.
pub fn trim_in_background(settings: &CacheSettings) {
    static TRIMMING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if TRIMMING.swap(true, Ordering::AcqRel) {
        return;
    }
    let settings = settings.clone();
    let spawned = std::thread::Builder::new()
        .name("compile-cache-trim".into())
        .spawn(move || {
            let left = evict(&settings.dir, settings.max_size);
            tracing::debug!(bytes = left, "compile cache trimmed");
            TRIMMING.store(false, Ordering::Release);
        });
    if spawned.is_err() {
        TRIMMING.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::CacheStore as _;

    #[test]
    fn a_given_directory_must_be_this_users_and_writable_by_no_one_else() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let made = dir.path().join("a/b");
        prepare(&made).unwrap();
        let mode = std::fs::metadata(&made).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "made private");
        std::fs::set_permissions(&made, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = prepare(&made).unwrap_err().to_string();
        assert!(e.contains("no one else may write"), "{e}");
        std::fs::set_permissions(&made, std::fs::Permissions::from_mode(0o755)).unwrap();
        prepare(&made).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&made, &link).unwrap();
        assert!(prepare(&link).is_err(), "a symbolic link is refused");
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        assert!(prepare(&file).is_err());
    }

    #[test]
    fn stored_values_come_back_and_unknown_keys_miss() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), 1 << 20).unwrap();
        assert!(cache.get(b"k1").is_none());
        assert!(cache.insert(b"k1", b"machine code".to_vec()));
        assert_eq!(cache.get(b"k1").unwrap().as_ref(), b"machine code");
        assert!(cache.get(b"k2").is_none());
        assert_eq!((cache.hits(), cache.misses()), (1, 2));
        // Another process (a later compile) sees what this one stored.
        let again = DiskCache::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(again.get(b"k1").unwrap().as_ref(), b"machine code");
    }

    #[test]
    fn a_damaged_or_cut_file_is_a_miss_and_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), 1 << 20).unwrap();
        for (key, damage) in [(b"flip", 0usize), (b"trun", 1)] {
            assert!(cache.insert(key, vec![7u8; 1000]));
            let path = cache.path(key);
            let mut bytes = std::fs::read(&path).unwrap();
            if damage == 0 {
                let last = bytes.len() - 1;
                bytes[last] ^= 1;
            } else {
                bytes.truncate(20);
            }
            std::fs::write(&path, bytes).unwrap();
            assert!(cache.get(key).is_none(), "{key:?}");
            assert!(!path.exists(), "{key:?}: the damaged file is removed");
        }
    }

    #[test]
    fn eviction_keeps_the_most_recently_used_files_within_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), 1 << 20).unwrap();
        let old = SystemTime::now() - std::time::Duration::from_secs(3600);
        for i in 0..10u8 {
            assert!(cache.insert(&[i], vec![i; 1000]));
            // Older keys were used longer ago.
            let when = old + std::time::Duration::from_secs(u64::from(i));
            std::fs::File::options()
                .write(true)
                .open(cache.path(&[i]))
                .unwrap()
                .set_modified(when)
                .unwrap();
        }
        // What one file takes on this file system (whole blocks).
        let used =
            std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(cache.path(&[0])).unwrap())
                * 512;
        // Reading key 0 makes it the most recently used.
        assert!(cache.get(&[0]).is_some());
        assert_eq!(
            evict(dir.path(), 100 * used),
            10 * used,
            "within the bound: nothing goes"
        );
        let left = evict(dir.path(), 5 * used);
        assert!(left <= 5 * used, "{left}");
        let kept: Vec<u8> = (0..10u8).filter(|i| cache.path(&[*i]).exists()).collect();
        assert!(kept.contains(&0), "the file read last stays: {kept:?}");
        assert!(
            kept.contains(&9) && !kept.contains(&1),
            "oldest go first: {kept:?}"
        );

        // What the cache did not write stays, whatever its age (a directory given with
        // --compile-cache-dir may hold other files by mistake); an old temporary file goes.
        let foreign = [
            dir.path().join("payloads/0123"),
            dir.path().join("ab/notes.txt"),
            dir.path().join("ab/.swp"),
        ];
        let temporary = dir.path().join("ab/.12-3");
        let two_hours_ago = old - std::time::Duration::from_secs(3600);
        for f in foreign.iter().chain([&temporary]) {
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(f, vec![0u8; 10_000]).unwrap();
            std::fs::File::options()
                .write(true)
                .open(f)
                .unwrap()
                .set_modified(two_hours_ago)
                .unwrap();
        }
        assert_eq!(evict(dir.path(), 0), 0, "foreign files are not counted");
        for f in &foreign {
            assert!(f.exists(), "{} is not the cache's: kept", f.display());
        }
        assert!(!temporary.exists(), "an hour-old temporary file goes");
        assert!(
            !cache.path(&[9]).exists(),
            "every cache file goes at a bound of 0"
        );
    }

    #[test]
    fn a_compile_writes_no_more_than_its_bound_and_files_are_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(&dir.path().join("cache"), 2500).unwrap();
        assert!(cache.insert(b"a", vec![1; 1000]));
        assert!(cache.insert(b"b", vec![2; 1000]));
        assert!(
            !cache.insert(b"c", vec![3; 1000]),
            "past the bound: not kept"
        );
        assert!(cache.get(b"c").is_none() && cache.get(b"a").is_some());
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.path().join("cache")), 0o700);
        assert_eq!(mode(&cache.path(b"a")), 0o600);
        assert_eq!(mode(cache.path(b"a").parent().unwrap()), 0o700);
    }
}
