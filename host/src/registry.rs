//! The deployed functions of this host and the routes that reach them. Readers take a snapshot
//! without locking; a deploy builds a new snapshot and swaps it in atomically, so requests in
//! flight finish on the version they started with.

use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use ferry_triggers::cloudevents::Mode;
use ferry_triggers::http::Router;
use ferry_triggers::nats::NatsBinding;
use tokio::sync::{watch, Semaphore};

use crate::engine::Prepared;
use crate::model::FunctionRecord;

/// One function version, ready to serve.
pub struct Deployed {
    pub record: FunctionRecord,
    pub prepared: Prepared,
    /// One permit per instance that may run at once.
    pub permits: Arc<Semaphore>,
    pub outbound: Arc<[String]>,
}

impl Deployed {
    pub fn new(record: FunctionRecord, prepared: Prepared) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(record.limits.concurrency as usize)),
            outbound: record.outbound.clone().into(),
            record,
            prepared,
        }
    }

    pub fn name(&self) -> &str {
        &self.record.name
    }

    /// Every route of the function: its own `/{name}/...` and the manifest's.
    pub fn routes(&self) -> impl Iterator<Item = String> + '_ {
        std::iter::once(format!("/{}/...", self.record.name))
            .chain(self.record.routes.iter().cloned())
    }
}

/// An immutable view of what is deployed.
#[derive(Default)]
pub struct Snapshot {
    functions: BTreeMap<String, Arc<Deployed>>,
    router: Router<Arc<Deployed>>,
}

impl Snapshot {
    fn build(functions: BTreeMap<String, Arc<Deployed>>) -> Result<Self, String> {
        let mut router = Router::default();
        for f in functions.values() {
            for route in f.routes() {
                if let Err(holder) = router.insert(&route, f.clone()) {
                    if holder.name() != f.name() {
                        return Err(format!(
                            "route {route} of function {} is already served by function {}",
                            f.name(),
                            holder.name()
                        ));
                    }
                }
            }
        }
        Ok(Self { functions, router })
    }
}

/// The live set of functions.
pub struct Registry {
    current: ArcSwap<Snapshot>,
    /// The NATS bindings of the live functions, for the NATS trigger.
    nats: watch::Sender<Vec<NatsBinding>>,
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            current: ArcSwap::default(),
            nats: watch::Sender::new(Vec::new()),
        }
    }
}

impl Registry {
    pub fn get(&self, name: &str) -> Option<Arc<Deployed>> {
        self.current.load().functions.get(name).cloned()
    }

    pub fn route(&self, path: &str) -> Option<Arc<Deployed>> {
        self.current.load().router.lookup(path).cloned()
    }

    pub fn list(&self) -> Vec<Arc<Deployed>> {
        self.current.load().functions.values().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.current.load().functions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A snapshot with `f` added or replacing its name, or why its routes conflict. Callers
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
        Snapshot::build(functions).expect("removing a function cannot create a route conflict")
    }

    pub fn commit(&self, snapshot: Snapshot) {
        let bindings: Vec<NatsBinding> = snapshot
            .functions
            .values()
            .flat_map(|f| {
                f.record.nats.iter().map(|t| NatsBinding {
                    function: f.record.name.clone(),
                    subject: t.subject.clone(),
                    queue: t.queue.clone(),
                    reply: t.reply.clone(),
                    dead_letter: t.dead_letter.clone(),
                    output: match t.format.as_deref() {
                        Some("binary") => Some(Mode::Binary),
                        Some("structured") => Some(Mode::Structured),
                        _ => None,
                    },
                    stream: t.stream.clone(),
                    max_attempts: f.record.delivery.retry.max_attempts,
                    backoff_initial: f.record.delivery.retry.initial,
                    backoff_max: f.record.delivery.retry.max,
                    ack_wait: f.record.limits.timeout + std::time::Duration::from_secs(5),
                })
            })
            .collect();
        self.current.store(Arc::new(snapshot));
        self.nats.send_if_modified(|b| {
            let changed = *b != bindings;
            *b = bindings;
            changed
        });
    }

    /// Follows the NATS bindings of the live functions.
    pub fn nats_bindings(&self) -> watch::Receiver<Vec<NatsBinding>> {
        self.nats.subscribe()
    }
}
