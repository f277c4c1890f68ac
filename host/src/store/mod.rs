//! Persistent state behind a narrow trait: component bytes by sha256, precompiled artifacts by
//! content hash and engine compatibility, and function records. The embedded backend is sled, in
//! one data directory; a shared backend (NATS JetStream) can implement the same trait.

use std::path::Path;

use anyhow::Context as _;

use crate::model::FunctionRecord;

mod delivery;

/// The storage port of the runtime. Writes become durable on [`Store::flush`].
pub trait Store: Send + Sync + 'static {
    /// Keeps a component's bytes under their sha256 (lower-case hex).
    fn put_component(&self, digest: &str, bytes: &[u8]) -> anyhow::Result<()>;
    /// The component bytes with this sha256, if kept.
    fn component(&self, digest: &str) -> anyhow::Result<Option<Vec<u8>>>;
    /// Keeps a precompiled artifact under its [`artifact_key`].
    fn put_artifact(&self, key: &str, bytes: &[u8]) -> anyhow::Result<()>;
    /// The precompiled artifact under this [`artifact_key`], if kept.
    fn artifact(&self, key: &str) -> anyhow::Result<Option<Vec<u8>>>;
    /// Writes a function's record, replacing the one of the same name.
    fn put_function(&self, record: &FunctionRecord) -> anyhow::Result<()>;
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
    /// Makes every write so far durable.
    fn flush(&self) -> anyhow::Result<()>;
}

/// `kind NUL function NUL key`: no part can contain NUL, so keys never collide.
fn trigger_state_key(kind: &str, function: &str, key: &str) -> Vec<u8> {
    [kind.as_bytes(), function.as_bytes(), key.as_bytes()].join(&0u8)
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
    delivery: sled::Tree,
    settings: sled::Tree,
    trigger_state: sled::Tree,
}

impl SledStore {
    /// Opens (or creates) the store in the data directory `dir`, upgrading older delivery
    /// records. Only one process may have it open.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("failed to create data directory {}", dir.display()))?;
        let db = sled::Config::new()
            .path(dir.join("db"))
            .mode(sled::Mode::HighThroughput)
            .open()
            .with_context(|| {
                format!(
                    "failed to open the store in {} (is another ferry using it?)",
                    dir.display()
                )
            })?;
        let store = Self {
            components: db.open_tree("components")?,
            artifacts: db.open_tree("artifacts")?,
            functions: db.open_tree("functions")?,
            delivery: db.open_tree("delivery")?,
            settings: db.open_tree("settings")?,
            trigger_state: db.open_tree("trigger_state")?,
            db,
        };
        store.upgrade_delivery()?;
        Ok(store)
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
                let record: FunctionRecord = serde_json::from_slice(&v)
                    .with_context(|| format!("corrupt record for function {name}"))?;
                Ok(Some(record.upgrade()))
            }
            None => Ok(None),
        }
    }

    fn functions(&self) -> anyhow::Result<Vec<FunctionRecord>> {
        self.functions
            .iter()
            .map(|kv| {
                let (_, v) = kv?;
                Ok(serde_json::from_slice::<FunctionRecord>(&v)?.upgrade())
            })
            .collect()
    }

    fn delete_function(&self, name: &str) -> anyhow::Result<bool> {
        Ok(self.functions.remove(name)?.is_some())
    }

    fn setting(&self, key: &str) -> anyhow::Result<Option<String>> {
        Ok(self
            .settings
            .get(key)?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    fn put_setting(&self, key: &str, value: &str) -> anyhow::Result<()> {
        self.settings.insert(key, value.as_bytes())?;
        Ok(())
    }

    fn trigger_state(
        &self,
        kind: &str,
        function: &str,
        key: &str,
    ) -> anyhow::Result<Option<Vec<u8>>> {
        let k = trigger_state_key(kind, function, key);
        Ok(self.trigger_state.get(k)?.map(|v| v.to_vec()))
    }

    fn put_trigger_state(
        &self,
        kind: &str,
        function: &str,
        key: &str,
        value: &[u8],
    ) -> anyhow::Result<()> {
        self.trigger_state
            .insert(trigger_state_key(kind, function, key), value)?;
        Ok(())
    }

    fn flush(&self) -> anyhow::Result<()> {
        self.db.flush().context("failed to flush the store")?;
        Ok(())
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
        s.functions
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
