//! What the host counts, for `GET /metrics` on the admin listener (Prometheus / OpenMetrics
//! text, encoded by `prometheus-client`). Labels are bounded: function names, fixed outcome and
//! limit names, never invocation ids.

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// An invocation's labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Invocation {
    function: String,
    /// `sync` (a caller waits: HTTP, events over HTTP or NATS) or `async` (a worker).
    mode: &'static str,
    /// `ok`, or what failed: a limit (`timeout`, `memory`, ...), `trap`, `guest_error`, `failed`.
    outcome: &'static str,
}

/// A function's label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Function {
    function: String,
}

/// A limit hit's labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitHit {
    function: String,
    limit: &'static str,
}

fn duration_histogram() -> Histogram {
    // 100 µs to about 52 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 20))
}

/// The host's metrics.
pub struct Metrics {
    registry: Mutex<Registry>,
    invocations: Family<Invocation, Counter>,
    durations: Family<Function, Histogram, fn() -> Histogram>,
    limit_hits: Family<LimitHit, Counter>,
    instance_memory: Gauge,
    instance_memory_cap: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("ferry");
        let invocations = Family::<Invocation, Counter>::default();
        registry.register(
            "invocations",
            "Invocations by function, mode (sync or async) and outcome",
            invocations.clone(),
        );
        let durations: Family<Function, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(duration_histogram);
        registry.register(
            "invocation_duration_seconds",
            "How long invocations took, from a free instance to the answer",
            durations.clone(),
        );
        let limit_hits = Family::<LimitHit, Counter>::default();
        registry.register(
            "limit_hits",
            "Invocations stopped or refused by a limit, by function and limit",
            limit_hits.clone(),
        );
        let instance_memory = Gauge::default();
        registry.register(
            "instance_memory_bytes",
            "Linear memory the live instances hold",
            instance_memory.clone(),
        );
        let instance_memory_cap = Gauge::default();
        registry.register(
            "instance_memory_cap_bytes",
            "The cap on the memory of all instances together (--max-total-memory)",
            instance_memory_cap.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            invocations,
            durations,
            limit_hits,
            instance_memory,
            instance_memory_cap,
        }
    }
}

impl Metrics {
    /// Counts one invocation of `function` and, when it ran, how long it took; a limit that
    /// stopped or refused it is counted too.
    pub fn invocation(
        &self,
        function: &str,
        mode: &'static str,
        outcome: &'static str,
        limit: Option<&'static str>,
        took: Option<Duration>,
    ) {
        self.invocations
            .get_or_create(&Invocation {
                function: function.to_string(),
                mode,
                outcome,
            })
            .inc();
        if let Some(limit) = limit {
            self.limit_hits
                .get_or_create(&LimitHit {
                    function: function.to_string(),
                    limit,
                })
                .inc();
        }
        if let Some(took) = took {
            self.durations
                .get_or_create(&Function {
                    function: function.to_string(),
                })
                .observe(took.as_secs_f64());
        }
    }

    /// The metrics as OpenMetrics text, with the gauges read now.
    pub fn encode(&self, memory: &crate::engine::MemoryBudget) -> String {
        self.instance_memory.set(memory.used() as i64);
        self.instance_memory_cap.set(memory.cap() as i64);
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
            tracing::error!(error = %e, "encoding the metrics failed");
        }
        out
    }
}
