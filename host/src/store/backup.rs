//! Backups: `ferry backup DIR` asks a running host for every record of its store, as one stream
//! written while the host goes on serving; `ferry restore DIR` makes a new store from it.
//!
//! The stream is `FERRYBK1`, then frames `part: u8 | key length: u32 LE | value length: u32 LE |
//! key | value | crc32 of all before it in the frame: u32 LE`, and an end frame (part 255) whose
//! value is the number of frames before it (u64 LE). A stream without its end frame, or with any
//! frame whose checksum fails, is refused whole.
//!
//! Consistency while the host runs: function records are read before components and components
//! are never removed while a function needs them, so every function in a backup has its
//! component; each invocation is one whole record as it was at one moment during the backup (its
//! indexes are derived again on restore), so every submit acknowledged before the backup started
//! is in it.

use std::io::{BufReader, Read, Write};
use std::path::Path;

use anyhow::{bail, Context as _};

use super::{durable, SledStore, Store as _, GENERATION_KEY};

/// The backup file in a backup directory.
pub const BACKUP_FILE: &str = "ferry-backup.bin";
const MAGIC: &[u8; 8] = b"FERRYBK1";
const END: u8 = 255;

/// The parts of a backup, in the order they are written.
const PARTS: [(u8, &str); 6] = [
    (1, "functions"),
    (2, "components"),
    (3, "compiled artifacts"),
    (4, "settings"),
    (5, "trigger states"),
    (6, "invocations"),
];

fn frame(out: &mut impl Write, part: u8, key: &[u8], value: &[u8]) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(9);
    head.push(part);
    head.extend_from_slice(&(key.len() as u32).to_le_bytes());
    head.extend_from_slice(&(value.len() as u32).to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&head);
    crc.update(key);
    crc.update(value);
    out.write_all(&head)?;
    out.write_all(key)?;
    out.write_all(value)?;
    out.write_all(&crc.finalize().to_le_bytes())
}

/// Counts per part, in [`PARTS`] order.
pub type Counts = Vec<(&'static str, usize)>;

impl super::Trees {
    /// The tree of a backup part (see [`PARTS`]).
    fn part(&self, part: u8) -> &sled::Tree {
        match part {
            1 => &self.functions,
            2 => &self.components,
            3 => &self.artifacts,
            4 => &self.settings,
            5 => &self.trigger_state,
            _ => &self.delivery,
        }
    }
}

impl SledStore {
    /// Writes every record of the store as a backup stream.
    pub fn write_backup(&self, out: &mut impl Write) -> anyhow::Result<Counts> {
        let t = self.t()?;
        out.write_all(MAGIC)?;
        let mut frames: u64 = 0;
        let mut counts = Vec::new();
        for (part, name) in PARTS {
            let tree = t.part(part);
            let mut n = 0;
            if part == 6 {
                // Invocations as the store holds them, each record with its payload; their
                // indexes are derived again on restore.
                self.each_invocation(|k, v| {
                    frame(out, part, k, v)?;
                    frames += 1;
                    n += 1;
                    Ok(())
                })
                .map_err(|e| self.as_damage(e))?;
                counts.push((name, n));
                continue;
            }
            for kv in tree.iter() {
                let (k, v) = kv.map_err(|e| self.as_damage(e.into()))?;
                if part == 4 && k.as_ref() == GENERATION_KEY.as_bytes() {
                    continue;
                }
                if part == 3 {
                    // A cache: one that is not whole is left out (compiled again).
                    let key = String::from_utf8_lossy(&k);
                    let Some(bytes) = self.artifact_bytes(&key, &v)? else {
                        continue;
                    };
                    frame(out, part, &k, &bytes)?;
                } else {
                    frame(out, part, &k, &v)?;
                }
                frames += 1;
                n += 1;
            }
            counts.push((name, n));
        }
        frame(out, END, b"", &frames.to_le_bytes())?;
        out.flush()?;
        Ok(counts)
    }
}

/// Reads a backup stream, handing each frame to `each`; fails on a bad checksum, a torn frame or
/// a missing end.
fn read_frames(
    input: impl Read,
    mut each: impl FnMut(u8, Vec<u8>, Vec<u8>) -> anyhow::Result<()>,
) -> anyhow::Result<u64> {
    let mut input = BufReader::new(input);
    let mut magic = [0u8; 8];
    input
        .read_exact(&mut magic)
        .context("not a Ferry backup (too short)")?;
    if &magic != MAGIC {
        bail!("not a Ferry backup (it does not start with FERRYBK1)");
    }
    let mut frames = 0u64;
    loop {
        let mut head = [0u8; 9];
        input
            .read_exact(&mut head)
            .with_context(|| format!("the backup is cut short after {frames} records"))?;
        let part = head[0];
        let klen = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let vlen = u32::from_le_bytes([head[5], head[6], head[7], head[8]]) as usize;
        let mut key = vec![0u8; klen];
        let mut value = vec![0u8; vlen];
        let mut crc = [0u8; 4];
        input
            .read_exact(&mut key)
            .and_then(|()| input.read_exact(&mut value))
            .and_then(|()| input.read_exact(&mut crc))
            .with_context(|| format!("the backup is cut short in record {}", frames + 1))?;
        let mut h = crc32fast::Hasher::new();
        h.update(&head);
        h.update(&key);
        h.update(&value);
        if h.finalize() != u32::from_le_bytes(crc) {
            bail!("record {} of the backup is damaged (checksum)", frames + 1);
        }
        if part == END {
            let declared = <[u8; 8]>::try_from(value.as_slice())
                .map(u64::from_le_bytes)
                .unwrap_or(u64::MAX);
            if declared != frames {
                bail!("the backup declares {declared} records but holds {frames}");
            }
            return Ok(frames);
        }
        if !PARTS.iter().any(|(p, _)| *p == part) {
            bail!(
                "record {} of the backup has an unknown kind {part}",
                frames + 1
            );
        }
        each(part, key, value)?;
        frames += 1;
    }
}

/// Checks a backup file whole, without writing anything.
pub fn verify(file: &Path) -> anyhow::Result<Counts> {
    let mut counts: Vec<(&'static str, usize)> = PARTS.iter().map(|(_, n)| (*n, 0)).collect();
    let f =
        std::fs::File::open(file).with_context(|| format!("failed to open {}", file.display()))?;
    read_frames(f, |part, _, _| {
        if let Some(i) = PARTS.iter().position(|(p, _)| *p == part) {
            counts[i].1 += 1;
        }
        Ok(())
    })
    .with_context(|| format!("in {}", file.display()))?;
    Ok(counts)
}

/// Makes a new store in the data directory `dir` from the backup in `from` (a directory holding
/// [`BACKUP_FILE`]). Refuses when `dir` already has a store; checks the whole backup before it
/// writes anything.
pub fn restore(from: &Path, dir: &Path) -> anyhow::Result<Counts> {
    let file = from.join(BACKUP_FILE);
    let counts = verify(&file)?;
    for existing in [durable::DB_DIR, durable::SEAL_FILE, durable::JOURNAL_FILE] {
        if dir.join(existing).exists() {
            bail!(
                "{} already holds a store ({existing}); restore into an empty data directory, or move the store aside first",
                dir.display()
            );
        }
    }
    let store = SledStore::open(dir)?;
    let result = (|| -> anyhow::Result<()> {
        let t = store.t()?;
        let f = std::fs::File::open(&file)?;
        read_frames(f, |part, key, value| {
            if part == 3 {
                store.write_artifact(&String::from_utf8_lossy(&key), &value)?;
            } else {
                t.part(part).insert(key, value)?;
            }
            Ok(())
        })?;
        drop(t);
        store.upgrade_delivery_from_scratch()?;
        store.flush()
    })();
    if let Err(e) = result {
        drop(store);
        for made in [
            durable::DB_DIR,
            durable::SEAL_FILE,
            durable::JOURNAL_FILE,
            super::artifacts::ARTIFACT_DIR,
        ] {
            let p = dir.join(made);
            let _ = std::fs::remove_dir_all(&p).or_else(|_| std::fs::remove_file(&p));
        }
        return Err(e.context("the restore failed; nothing was kept"));
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backup_round_trips_and_damage_is_refused() {
        let src = tempfile::tempdir().unwrap();
        let s = SledStore::open(src.path()).unwrap();
        s.put_component("ab", b"bytes").unwrap();
        s.put_setting("host_id", "h").unwrap();
        let mut bytes = Vec::new();
        let counts = s.write_backup(&mut bytes).unwrap();
        assert_eq!(counts[1], ("components", 1));
        let out = tempfile::tempdir().unwrap();
        std::fs::write(out.path().join(BACKUP_FILE), &bytes).unwrap();
        let dst = tempfile::tempdir().unwrap();
        let data = dst.path().join("data");
        restore(out.path(), &data).unwrap();
        let r = SledStore::open(&data).unwrap();
        assert_eq!(r.component("ab").unwrap().unwrap(), b"bytes");
        assert_eq!(r.setting("host_id").unwrap().as_deref(), Some("h"));
        assert!(
            restore(out.path(), &data).is_err(),
            "refuses a data directory with a store"
        );

        let mut damaged = bytes.clone();
        let at = damaged.len() / 2;
        damaged[at] ^= 1;
        std::fs::write(out.path().join(BACKUP_FILE), &damaged).unwrap();
        assert!(verify(&out.path().join(BACKUP_FILE)).is_err());
        std::fs::write(out.path().join(BACKUP_FILE), &bytes[..bytes.len() - 3]).unwrap();
        let e = verify(&out.path().join(BACKUP_FILE)).unwrap_err();
        assert!(format!("{e:#}").contains("cut short"), "{e:#}");
    }
}
