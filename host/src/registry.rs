//! The deployed functions of this host. Readers take a snapshot without locking; a deploy builds
//! a new snapshot, checks it with every trigger (two functions may not claim one route), and
//! swaps it in atomically, so requests in flight finish on the version they started with. Each
//! trigger follows its sections of the live functions through a watch channel.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arc_swap::ArcSwap;
use ferry_triggers::{FunctionInfo, Sections, TRIGGERS};
use tokio::sync::{watch, Semaphore};

use crate::engine::{Prepared, Tier};
use crate::model::FunctionRecord;

/// Which code serves a function version, as the API shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Code {
    /// The compiler that made the code serving now: `baseline` (Winch, compiled in seconds)
    /// or `optimized` (Cranelift).
    pub tier: Tier,
    /// The optimised code is being compiled behind the baseline code.
    pub optimizing: bool,
    /// Why the optimised code could not be made (the baseline code keeps serving).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One function version, ready to serve.
pub struct Deployed {
    /// What Ferry remembers about this version.
    pub record: FunctionRecord,
    /// The function as triggers see it.
    pub info: FunctionInfo,
    /// The component, linked and ready to instantiate.
    pub prepared: Prepared,
    /// One permit per instance that may run at once.
    pub permits: Arc<Semaphore>,
    /// Callers waiting for a permit now (at most `limits.queue`).
    pub waiting: Arc<std::sync::atomic::AtomicU32>,
    /// Hosts the function may reach, shared with every invocation's store.
    pub outbound: Arc<[String]>,
    /// The name, shared with every invocation (`Call`).
    pub name: Arc<str>,
    /// This function's metric handles, looked up once per version (not per invocation).
    pub metrics: std::sync::OnceLock<crate::metrics::FunctionMetrics>,
    /// The compiler that made `prepared`'s code.
    pub tier: Tier,
    /// Why the optimised code of a baseline version could not be made, once that is known.
    pub optimize_error: std::sync::Mutex<Option<String>>,
    /// Whether the optimised code of a baseline version is made (not with `ferry serve
    /// --optimized-compile false`).
    pub optimizes: bool,
}

impl Deployed {
    /// A version ready to serve `record` with `prepared` (code made by `tier`).
    pub fn new(record: FunctionRecord, prepared: Prepared, tier: Tier) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(record.limits.concurrency as usize)),
            waiting: Arc::new(std::sync::atomic::AtomicU32::new(0)),
            outbound: record.outbound.clone().into(),
            name: record.name.as_str().into(),
            metrics: std::sync::OnceLock::new(),
            info: record.info(),
            record,
            prepared,
            tier,
            optimize_error: std::sync::Mutex::new(None),
            optimizes: true,
        }
    }

    /// The same version, whose baseline code keeps serving: no optimised code is made of it.
    pub fn not_optimized(self) -> Self {
        Self {
            optimizes: false,
            ..self
        }
    }

    /// The same version served by its optimised code. It shares the instance permits and the
    /// queue count, so that
    /// invocations still running on the baseline code count against the function's concurrency.
    pub fn optimized(&self, prepared: Prepared) -> Self {
        Self {
            permits: self.permits.clone(),
            waiting: self.waiting.clone(),
            outbound: self.outbound.clone(),
            name: self.name.clone(),
            metrics: std::sync::OnceLock::new(),
            info: self.info.clone(),
            record: self.record.clone(),
            prepared,
            tier: Tier::Optimized,
            optimize_error: std::sync::Mutex::new(None),
            optimizes: self.optimizes,
        }
    }

    /// Which code serves this version.
    pub fn code(&self) -> Code {
        let error = self
            .optimize_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        Code {
            tier: self.tier,
            optimizing: self.tier == Tier::Baseline && self.optimizes && error.is_none(),
            error,
        }
    }

    /// The function's name.
    pub fn name(&self) -> &str {
        &self.record.name
    }

    /// The sections of trigger `kind` (none when it has none).
    pub fn sections(&self, kind: &str) -> &[toml::Table] {
        self.record
            .triggers
            .get(kind)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// Every HTTP route of the function: its own `/{name}/...` and its sections'.
    pub fn routes(&self) -> Vec<String> {
        ferry_triggers::http::routes(self.name(), self.sections("http"))
    }
}

/// An immutable view of what is deployed.
#[derive(Default)]
pub struct Snapshot {
    functions: BTreeMap<String, Arc<Deployed>>,
}

impl Snapshot {
    /// Checks the functions with every trigger kind; the message says what collides.
    fn build(functions: BTreeMap<String, Arc<Deployed>>) -> Result<Self, String> {
        let snapshot = Self { functions };
        for kind in TRIGGERS {
            (kind.validate_all)(&snapshot.sections(kind.name))?;
        }
        Ok(snapshot)
    }

    /// Every function with its sections of `kind`.
    fn sections(&self, kind: &str) -> Arc<[Sections]> {
        self.functions
            .values()
            .map(|f| Sections {
                function: f.info.clone(),
                sections: f.sections(kind).to_vec(),
            })
            .collect()
    }
}

/// The live set of functions.
pub struct Registry {
    current: ArcSwap<Snapshot>,
    /// Per trigger kind, the sections of the live functions.
    sections: HashMap<&'static str, watch::Sender<Arc<[Sections]>>>,
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            current: ArcSwap::default(),
            sections: TRIGGERS
                .iter()
                .map(|k| (k.name, watch::Sender::new(Arc::from(Vec::new()))))
                .collect(),
        }
    }
}

impl Registry {
    /// The live version of the function with this name.
    pub fn get(&self, name: &str) -> Option<Arc<Deployed>> {
        self.current.load().functions.get(name).cloned()
    }

    /// Every live function, by name.
    pub fn list(&self) -> Vec<Arc<Deployed>> {
        self.current.load().functions.values().cloned().collect()
    }

    /// Whether a live function is served by baseline code of the component `digest`: its
    /// optimised code is still wanted.
    pub fn serves_baseline(&self, digest: &str) -> bool {
        self.current
            .load()
            .functions
            .values()
            .any(|d| d.tier == Tier::Baseline && d.record.digest == digest)
    }

    /// How many functions are live.
    pub fn len(&self) -> usize {
        self.current.load().functions.len()
    }

    /// Whether no function is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A snapshot with `f` added or replacing its name, or why the triggers refuse it. Callers
    /// serialize changes (the deployer holds a lock), then [`Registry::commit`] the result.
    pub fn with(&self, f: Arc<Deployed>) -> Result<Snapshot, String> {
        let mut functions = self.current.load().functions.clone();
        functions.insert(f.name().to_string(), f);
        Snapshot::build(functions)
    }

    /// A snapshot without `name`.
    pub fn without(&self, name: &str) -> Snapshot {
        let mut functions = self.current.load().functions.clone();
        functions.remove(name);
        // Fewer functions claim fewer routes: nothing new can collide.
        Snapshot { functions }
    }

    /// Makes `snapshot` live and tells every trigger whose sections changed.
    pub fn commit(&self, snapshot: Snapshot) {
        let sections: Vec<_> = self
            .sections
            .keys()
            .map(|kind| (*kind, snapshot.sections(kind)))
            .collect();
        self.current.store(Arc::new(snapshot));
        for (kind, now) in sections {
            self.sections[kind].send_if_modified(|before| {
                let changed = **before != *now;
                *before = now;
                changed
            });
        }
    }

    /// Follows the sections of trigger `kind` of the live functions.
    pub fn sections(&self, kind: &'static str) -> watch::Receiver<Arc<[Sections]>> {
        match self.sections.get(kind) {
            Some(tx) => tx.subscribe(),
            // A kind that is not registered has no sections, ever.
            None => watch::Sender::new(Arc::from(Vec::new())).subscribe(),
        }
    }
}
