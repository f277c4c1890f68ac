//! Compiled artifacts as files: `artifacts/<digest>.<engine>.cwasm` beside the database, each
//! named in the `artifacts` tree with its length and crc32. wasmtime maps such a file instead of
//! copying it into the heap, so a function's code is file-backed: only the pages that run are
//! resident, and the kernel can drop them again (at 1,000 functions the copies were 400 MB of
//! the host's idle RSS).
//!
//! An artifact is a cache (the component's bytes are the truth): a file is written under a
//! temporary name, synced and renamed, then named in the tree; one that is missing, or whose length or
//! checksum no longer match (a crash before the kernel wrote it out, a damaged disk), is not
//! loaded (wasmtime must never map a damaged artifact) and the component is compiled again.
//! Files the tree does not name are removed when the store opens.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use super::{Artifact, SledStore};

/// The artifact files' directory in the data directory.
pub const ARTIFACT_DIR: &str = "artifacts";

/// What the tree holds for an artifact kept as a file: this tag, its length and its crc32.
const FILE_TAG: &[u8; 4] = b"FAF1";

fn entry(len: u64, crc: u32) -> Vec<u8> {
    let mut v = FILE_TAG.to_vec();
    v.extend_from_slice(&len.to_le_bytes());
    v.extend_from_slice(&crc.to_le_bytes());
    v
}

/// The length and crc32 in a tree entry; None for an artifact stored in the tree itself (by
/// an earlier Ferry).
fn parse(v: &[u8]) -> Option<(u64, u32)> {
    if v.len() != 16 || &v[..4] != FILE_TAG {
        return None;
    }
    let len = u64::from_le_bytes(v[4..12].try_into().ok()?);
    let crc = u32::from_le_bytes(v[12..16].try_into().ok()?);
    Some((len, crc))
}

/// The crc32 and length of a file's contents, read in blocks (through the page cache, not into
/// the process's memory).
fn checksum(path: &Path) -> std::io::Result<(u64, u32)> {
    let mut f = std::fs::File::open(path)?;
    let mut crc = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut len = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok((len, crc.finalize()));
        }
        crc.update(&buf[..n]);
        len += n as u64;
    }
}

impl SledStore {
    fn artifact_dir(&self) -> PathBuf {
        self.dir.join(ARTIFACT_DIR)
    }

    /// The file of the artifact under `key` (`<digest>/<engine>`, both hex).
    fn artifact_file(&self, key: &str) -> anyhow::Result<PathBuf> {
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_hexdigit() || c == '/') {
            anyhow::bail!("not an artifact key: {key:?}");
        }
        Ok(self
            .artifact_dir()
            .join(format!("{}.cwasm", key.replace('/', "."))))
    }

    pub(super) fn write_artifact(&self, key: &str, bytes: &[u8]) -> anyhow::Result<()> {
        let path = self.artifact_file(key)?;
        static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = path.with_extension(format!("tmp{}-{n}", std::process::id()));
        // Synced before it is mapped: the kernel can then drop its pages from an idle host's
        // memory (it does not write back dirty pages on request).
        if let Err(e) = super::durable::replace_file(&tmp, bytes, &path) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e).with_context(|| format!("cannot write {}", path.display()));
        }
        let crc = crc32fast::hash(bytes);
        self.t()?
            .artifacts
            .insert(key, entry(bytes.len() as u64, crc))?;
        Ok(())
    }

    pub(super) fn read_artifact(&self, key: &str) -> anyhow::Result<Option<Artifact>> {
        let Some(v) = self
            .t()?
            .artifacts
            .get(key)
            .map_err(|e| self.unreadable(e, format_args!("compiled artifact {key}")))?
        else {
            return Ok(None);
        };
        let Some(expected) = parse(&v) else {
            return Ok(Some(Artifact::Bytes(v.to_vec())));
        };
        let path = self.artifact_file(key)?;
        match checksum(&path) {
            Ok(found) if found == expected => Ok(Some(Artifact::File(path))),
            Ok(_) => {
                tracing::warn!(file = %path.display(), "a compiled artifact does not match its checksum; compiling the component again");
                Ok(None)
            }
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "a compiled artifact cannot be read; compiling the component again");
                Ok(None)
            }
        }
    }

    /// The bytes of the artifact under `key` (for a backup), if it is whole.
    pub(super) fn artifact_bytes(&self, key: &str, v: &[u8]) -> anyhow::Result<Option<Vec<u8>>> {
        let Some(expected) = parse(v) else {
            return Ok(Some(v.to_vec()));
        };
        let bytes = match std::fs::read(self.artifact_file(key)?) {
            Ok(bytes) => bytes,
            Err(_) => return Ok(None),
        };
        let found = (bytes.len() as u64, crc32fast::hash(&bytes));
        Ok((found == expected).then_some(bytes))
    }

    pub(super) fn delete_artifact(&self, key: &str) -> anyhow::Result<()> {
        self.t()?.artifacts.remove(key)?;
        match std::fs::remove_file(self.artifact_file(key)?) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Removes artifact files the tree does not name (written just before a crash, or left by
    /// a store moved aside); returns how many.
    pub(super) fn remove_orphan_artifacts(&self) -> anyhow::Result<usize> {
        let t = self.t()?;
        let mut n = 0;
        for entry in std::fs::read_dir(self.artifact_dir())? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let named = name
                .strip_suffix(".cwasm")
                .map(|key| key.replacen('.', "/", 1))
                .is_some_and(|key| t.artifacts.get(key).ok().flatten().is_some());
            if !named {
                let _ = std::fs::remove_file(entry.path());
                n += 1;
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store as _;

    #[test]
    fn artifacts_are_files_checked_before_use_and_orphans_go() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        let key = "ab12/00ff";
        s.put_artifact(key, b"compiled code").unwrap();
        let Some(Artifact::File(path)) = s.artifact(key).unwrap() else {
            panic!("kept as a file");
        };
        assert_eq!(std::fs::read(&path).unwrap(), b"compiled code");
        assert_eq!(s.artifact_keys().unwrap(), vec![key.to_string()]);

        // A damaged file is not offered (it is compiled again).
        std::fs::write(&path, b"compiled cxde").unwrap();
        assert!(s.artifact(key).unwrap().is_none());
        std::fs::remove_file(&path).unwrap();
        assert!(s.artifact(key).unwrap().is_none());

        // Keys are hex: nothing else names a file.
        assert!(s.put_artifact("../x/00", b"x").is_err());

        // A file no entry names is removed at the next open.
        s.put_artifact(key, b"compiled code").unwrap();
        s.remove_artifact(key).unwrap();
        assert!(!path.exists());
        std::fs::write(&path, b"left by a crash").unwrap();
        s.flush().unwrap();
        drop(s);
        let s = SledStore::open(dir.path()).unwrap();
        assert!(!path.exists());
        assert!(s.artifact(key).unwrap().is_none());
    }
}
