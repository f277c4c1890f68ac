//! Persistent state behind a narrow trait: component bytes by sha256, precompiled artifacts by
//! content hash and engine compatibility, and function records. The embedded backend is sled, in
//! one data directory; a shared backend (NATS JetStream) can implement the same trait.

use std::path::Path;
use std::time::SystemTime;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::engine::{Limits, World};

/// What Ferry remembers about one deployed function version.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FunctionRecord {
    pub name: String,
    /// Increases by one on every deploy of the same name.
    pub version: u64,
    pub world: World,
    /// sha256 of the component bytes, lower-case hex.
    pub digest: String,
    pub size: u64,
    /// Manifest HTTP routes, in addition to `/{name}` and below.
    pub routes: Vec<String>,
    pub limits: Limits,
    /// Values exposed to the guest as environment variables.
    pub config: Vec<(String, String)>,
    /// Hosts the function may reach with outbound HTTP.
    pub outbound: Vec<String>,
    /// RFC 3339 time of this version's deploy.
    pub created: String,
}

impl FunctionRecord {
    pub fn now() -> String {
        humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
    }
}

/// The storage port of the runtime. Writes become durable on [`Store::flush`].
pub trait Store: Send + Sync + 'static {
    fn put_component(&self, digest: &str, bytes: &[u8]) -> anyhow::Result<()>;
    fn component(&self, digest: &str) -> anyhow::Result<Option<Vec<u8>>>;
    fn put_artifact(&self, key: &str, bytes: &[u8]) -> anyhow::Result<()>;
    fn artifact(&self, key: &str) -> anyhow::Result<Option<Vec<u8>>>;
    fn put_function(&self, record: &FunctionRecord) -> anyhow::Result<()>;
    fn function(&self, name: &str) -> anyhow::Result<Option<FunctionRecord>>;
    fn functions(&self) -> anyhow::Result<Vec<FunctionRecord>>;
    fn delete_function(&self, name: &str) -> anyhow::Result<bool>;
    /// Makes every write so far durable.
    fn flush(&self) -> anyhow::Result<()>;
}

/// The artifact cache key for a component digest under an engine compatibility key.
pub fn artifact_key(digest: &str, compat: &str) -> String {
    format!("{digest}/{compat}")
}

/// The embedded sled backend.
pub struct SledStore {
    db: sled::Db,
    components: sled::Tree,
    artifacts: sled::Tree,
    functions: sled::Tree,
}

impl SledStore {
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("failed to create data directory {}", dir.display()))?;
        let db = sled::Config::new()
            .path(dir.join("db"))
            .open()
            .with_context(|| {
                format!(
                    "failed to open the store in {} (is another ferry using it?)",
                    dir.display()
                )
            })?;
        Ok(Self {
            components: db.open_tree("components")?,
            artifacts: db.open_tree("artifacts")?,
            functions: db.open_tree("functions")?,
            db,
        })
    }
}

impl Store for SledStore {
    fn put_component(&self, digest: &str, bytes: &[u8]) -> anyhow::Result<()> {
        self.components.insert(digest, bytes)?;
        Ok(())
    }

    fn component(&self, digest: &str) -> anyhow::Result<Option<Vec<u8>>> {
        Ok(self.components.get(digest)?.map(|v| v.to_vec()))
    }

    fn put_artifact(&self, key: &str, bytes: &[u8]) -> anyhow::Result<()> {
        self.artifacts.insert(key, bytes)?;
        Ok(())
    }

    fn artifact(&self, key: &str) -> anyhow::Result<Option<Vec<u8>>> {
        Ok(self.artifacts.get(key)?.map(|v| v.to_vec()))
    }

    fn put_function(&self, record: &FunctionRecord) -> anyhow::Result<()> {
        self.functions
            .insert(&record.name, serde_json::to_vec(record)?)?;
        Ok(())
    }

    fn function(&self, name: &str) -> anyhow::Result<Option<FunctionRecord>> {
        match self.functions.get(name)? {
            Some(v) => {
                Ok(Some(serde_json::from_slice(&v).with_context(|| {
                    format!("corrupt record for function {name}")
                })?))
            }
            None => Ok(None),
        }
    }

    fn functions(&self) -> anyhow::Result<Vec<FunctionRecord>> {
        self.functions
            .iter()
            .map(|kv| {
                let (_, v) = kv?;
                Ok(serde_json::from_slice(&v)?)
            })
            .collect()
    }

    fn delete_function(&self, name: &str) -> anyhow::Result<bool> {
        Ok(self.functions.remove(name)?.is_some())
    }

    fn flush(&self) -> anyhow::Result<()> {
        self.db.flush().context("failed to flush the store")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, version: u64) -> FunctionRecord {
        FunctionRecord {
            name: name.into(),
            version,
            world: World::Http,
            digest: "ab".into(),
            size: 2,
            routes: vec!["/x/...".into()],
            limits: Limits::default(),
            config: vec![("K".into(), "V".into())],
            outbound: vec![],
            created: FunctionRecord::now(),
        }
    }

    #[test]
    fn records_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledStore::open(dir.path()).unwrap();
            s.put_component("ab", b"bytes").unwrap();
            s.put_artifact(&artifact_key("ab", "k"), b"art").unwrap();
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
        assert_eq!(s.artifact("ab/k").unwrap().unwrap(), b"art");
        assert_eq!(s.functions().unwrap(), vec![record_eq(&s, "b")]);
        assert_eq!(s.function("b").unwrap().unwrap().version, 3);
        assert!(s.function("a").unwrap().is_none());
    }

    fn record_eq(s: &SledStore, name: &str) -> FunctionRecord {
        s.function(name).unwrap().unwrap()
    }
}
