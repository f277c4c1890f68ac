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
    /// What caused it: `http`, `nats`, `webhook`, `poll`, `schedule` (or `unknown` for
    /// invocations stored by an older version).
    trigger: &'static str,
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

/// A callback delivery's label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallbackOutcome {
    /// `delivered`, `retry`, `dead_lettered` or `failed`.
    outcome: &'static str,
}

/// A compilation's label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Compilation {
    /// `compiled` (optimised code), `baseline` (Winch code served until then), `cache_hit`,
    /// `refused` or `stopped` (a background compile whose component no function served any more).
    outcome: &'static str,
}

/// A compile cache lookup's label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLookup {
    /// `hit` (the function's code came from the cache) or `miss` (it was compiled).
    result: &'static str,
}

/// An async pool's label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Pool {
    /// `store_and_forward` or `fire_and_forget`.
    pool: &'static str,
}

/// A trigger event's labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TriggerEvent {
    /// `nats`, `webhook`, `poll` or `schedule`.
    trigger: &'static str,
    function: String,
    /// What happened, per trigger (see docs/operations.md).
    outcome: &'static str,
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

/// The triggers, in the order of [`FunctionMetrics`]' counters.
const TRIGGERS: [&str; 6] = ["http", "nats", "webhook", "poll", "schedule", "unknown"];

/// One function's metric handles, found once per deployed version so that an invocation that
/// ends well costs no label lookup: its `ok` counters by trigger and mode, its duration
/// histogram and its recent minutes.
pub struct FunctionMetrics {
    ok: [std::sync::OnceLock<Counter>; 2 * TRIGGERS.len()],
    duration: Histogram,
    recent: std::sync::Arc<Mutex<Recent>>,
}

/// The host's metrics.
pub struct Metrics {
    registry: Mutex<Registry>,
    invocations: Family<Invocation, Counter>,
    durations: Family<Function, Histogram, fn() -> Histogram>,
    limit_hits: Family<LimitHit, Counter>,
    instance_memory: Gauge,
    instance_memory_cap: Gauge,
    retries: Family<Function, Counter>,
    dead_letters: Family<Function, Counter>,
    callbacks: Family<CallbackOutcome, Counter>,
    compilations: Family<Compilation, Counter>,
    compile_seconds: Histogram,
    compile_cache: Family<CacheLookup, Counter>,
    queued: Family<Pool, Gauge>,
    journal_batch: Histogram,
    journal_sync: Histogram,
    guest_log_evicted: Family<Function, Counter>,
    guest_output_dropped: Family<Function, Counter>,
    instances: Gauge,
    instances_cap: Gauge,
    trigger_events: Family<TriggerEvent, Counter>,
    async_refused: Family<Pool, Counter>,
    async_running: Gauge,
    due: Gauge,
    nats_connected: Gauge,
    recent: std::sync::RwLock<std::collections::HashMap<String, std::sync::Arc<Mutex<Recent>>>>,
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
        let retries = Family::<Function, Counter>::default();
        registry.register(
            "attempt_retries",
            "Failed asynchronous attempts scheduled to run again, by function",
            retries.clone(),
        );
        let dead_letters = Family::<Function, Counter>::default();
        registry.register(
            "dead_letters",
            "Store-and-forward invocations dead-lettered, by function",
            dead_letters.clone(),
        );
        let callbacks = Family::<CallbackOutcome, Counter>::default();
        registry.register(
            "callback_deliveries",
            "Callback deliveries by outcome",
            callbacks.clone(),
        );
        let compilations = Family::<Compilation, Counter>::default();
        registry.register(
            "compilations",
            "Components compiled, loaded from the compiled-code cache, refused, or whose background compile stopped",
            compilations.clone(),
        );
        let compile_seconds = Histogram::new(exponential_buckets(0.01, 2.0, 14));
        registry.register(
            "compile_seconds",
            "How long compiling a component took",
            compile_seconds.clone(),
        );
        let compile_cache = Family::<CacheLookup, Counter>::default();
        registry.register(
            "compile_cache_functions",
            "Functions of optimised compiles whose code came from the compile cache (hit) or was \
             compiled (miss)",
            compile_cache.clone(),
        );
        let queued = Family::<Pool, Gauge>::default();
        registry.register(
            "async_queued",
            "Asynchronous work waiting for a worker, by pool",
            queued.clone(),
        );
        let journal_batch = Histogram::new(exponential_buckets(1.0, 2.0, 12));
        registry.register(
            "journal_batch_submits",
            "Store-and-forward submits made durable by one journal write and sync (group commit)",
            journal_batch.clone(),
        );
        let journal_sync = Histogram::new(exponential_buckets(0.00005, 2.0, 16));
        registry.register(
            "journal_sync_seconds",
            "How long one journal write and fdatasync took",
            journal_sync.clone(),
        );
        let guest_log_evicted = Family::<Function, Counter>::default();
        registry.register(
            "guest_log_evicted_lines",
            "Lines of guest output dropped from a function's log to make room for newer ones",
            guest_log_evicted.clone(),
        );
        let guest_output_dropped = Family::<Function, Counter>::default();
        registry.register(
            "guest_output_dropped_bytes",
            "Guest output beyond the per-invocation bound, never stored",
            guest_output_dropped.clone(),
        );
        let instances = Gauge::default();
        registry.register(
            "instances_in_use",
            "Component instances alive now (running an invocation)",
            instances.clone(),
        );
        let instances_cap = Gauge::default();
        registry.register(
            "instances_capacity",
            "How many instances may be alive at once (--max-instances)",
            instances_cap.clone(),
        );
        let trigger_events = Family::<TriggerEvent, Counter>::default();
        registry.register(
            "trigger_events",
            "What the triggers saw, by trigger, function and outcome (NATS messages received, acked, nakked, dead-lettered; webhook verifications; polls)",
            trigger_events.clone(),
        );
        let async_refused = Family::<Pool, Counter>::default();
        registry.register(
            "async_refused",
            "Asynchronous submits refused because the pool's queue was full, by pool",
            async_refused.clone(),
        );
        let async_running = Gauge::default();
        registry.register(
            "async_running",
            "Asynchronous attempts running in this process now (both pools)",
            async_running.clone(),
        );
        let due = Gauge::default();
        registry.register(
            "store_and_forward_due",
            "Store-and-forward invocations due now in the store (first attempts and retries whose time has come), taken or not (counted up to 100,000)",
            due.clone(),
        );
        let nats_connected = Gauge::default();
        registry.register(
            "nats_connected",
            "1 while the NATS connection is up, 0 while it is not or the host runs without --nats",
            nats_connected.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            invocations,
            durations,
            limit_hits,
            instance_memory,
            instance_memory_cap,
            retries,
            dead_letters,
            callbacks,
            compilations,
            compile_seconds,
            compile_cache,
            queued,
            journal_batch,
            journal_sync,
            guest_log_evicted,
            guest_output_dropped,
            instances,
            instances_cap,
            trigger_events,
            async_refused,
            async_running,
            due,
            nats_connected,
            recent: std::sync::RwLock::default(),
        }
    }
}

impl Metrics {
    /// The metric handles of `function`, for [`Metrics::invocation`].
    pub fn function(&self, function: &str) -> FunctionMetrics {
        FunctionMetrics {
            ok: Default::default(),
            duration: self
                .durations
                .get_or_create(&Function {
                    function: function.to_string(),
                })
                .clone(),
            recent: self.recent_of(function),
        }
    }

    /// Counts one invocation of `function` (whose handles are `handles`) and, when it ran, how
    /// long it took; a limit that stopped or refused it is counted too.
    #[allow(clippy::too_many_arguments)]
    pub fn invocation(
        &self,
        handles: &FunctionMetrics,
        function: &str,
        trigger: &'static str,
        mode: &'static str,
        outcome: &'static str,
        limit: Option<&'static str>,
        took: Option<Duration>,
    ) {
        let slot = TRIGGERS
            .iter()
            .position(|t| *t == trigger)
            .map(|t| t * 2 + usize::from(mode == "async"));
        match slot {
            Some(slot) if outcome == "ok" => handles.ok[slot]
                .get_or_init(|| {
                    self.invocations
                        .get_or_create(&Invocation {
                            function: function.to_string(),
                            trigger,
                            mode,
                            outcome,
                        })
                        .clone()
                })
                .inc(),
            _ => self
                .invocations
                .get_or_create(&Invocation {
                    function: function.to_string(),
                    trigger,
                    mode,
                    outcome,
                })
                .inc(),
        };
        if let Some(limit) = limit {
            self.limit_hits
                .get_or_create(&LimitHit {
                    function: function.to_string(),
                    limit,
                })
                .inc();
        }
        if let Some(took) = took {
            handles.duration.observe(took.as_secs_f64());
        }
        let minute = minute_now();
        handles
            .recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .note(minute, outcome != "ok", took);
    }

    /// Counts a failed attempt that will run again, or one that was dead-lettered.
    pub fn attempt_failed(&self, function: &str, dead_lettered: bool) {
        let family = if dead_lettered {
            &self.dead_letters
        } else {
            &self.retries
        };
        family
            .get_or_create(&Function {
                function: function.to_string(),
            })
            .inc();
    }

    /// Counts a callback delivery: `delivered`, `retry`, `dead_lettered` or `failed`.
    pub fn callback(&self, outcome: &'static str) {
        self.callbacks
            .get_or_create(&CallbackOutcome { outcome })
            .inc();
    }

    /// Counts a compilation (`compiled` or `baseline` with how long it took, `cache_hit`,
    /// `refused`).
    pub fn compilation(&self, outcome: &'static str, took: Option<Duration>) {
        self.compilations
            .get_or_create(&Compilation { outcome })
            .inc();
        if let Some(took) = took {
            self.compile_seconds.observe(took.as_secs_f64());
        }
    }

    /// Counts one optimised compile's compile cache lookups.
    pub fn compile_cache(&self, hits: u64, misses: u64) {
        for (result, n) in [("hit", hits), ("miss", misses)] {
            self.compile_cache
                .get_or_create(&CacheLookup { result })
                .inc_by(n);
        }
    }

    /// Counts one journal batch: how many submits it made durable and how long that took.
    pub fn journal_batch(&self, submits: usize, took: Duration) {
        self.journal_batch.observe(submits as f64);
        self.journal_sync.observe(took.as_secs_f64());
    }

    /// Sets how much asynchronous work waits in `pool`.
    pub fn set_queued(&self, pool: &'static str, n: usize) {
        self.queued.get_or_create(&Pool { pool }).set(n as i64);
    }

    /// Counts lines dropped from `function`'s log to make room.
    pub fn guest_log_evicted(&self, function: &str, lines: u64) {
        self.guest_log_evicted
            .get_or_create(&Function {
                function: function.to_string(),
            })
            .inc_by(lines);
    }

    /// Counts output an invocation of `function` wrote beyond its bound.
    pub fn guest_output_dropped(&self, function: &str, bytes: u64) {
        self.guest_output_dropped
            .get_or_create(&Function {
                function: function.to_string(),
            })
            .inc_by(bytes);
    }

    /// The gauge of live instances (incremented when one is made, decremented when dropped).
    pub fn instances(&self) -> &Gauge {
        &self.instances
    }

    /// The instance capacity (`--max-instances`).
    pub fn instances_capacity(&self) -> i64 {
        self.instances_cap.get()
    }

    /// Sets the instance capacity (`--max-instances`).
    pub fn set_instance_capacity(&self, n: u32) {
        self.instances_cap.set(i64::from(n));
    }

    /// Counts something a trigger saw.
    pub fn trigger_event(&self, trigger: &'static str, function: &str, outcome: &'static str) {
        self.trigger_events
            .get_or_create(&TriggerEvent {
                trigger,
                function: function.to_string(),
                outcome,
            })
            .inc();
    }

    /// Counts a submit refused because `pool`'s queue was full.
    pub fn async_refused(&self, pool: &'static str) {
        self.async_refused.get_or_create(&Pool { pool }).inc();
    }

    /// Sets how many asynchronous attempts run in this process, and how many store-and-forward
    /// invocations are due.
    pub fn set_running_and_due(&self, running: usize, due: usize) {
        self.async_running.set(running as i64);
        self.due.set(due as i64);
    }

    /// Sets the NATS connection state.
    pub fn set_nats_connected(&self, up: bool) {
        self.nats_connected.set(i64::from(up));
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

/// The last few minutes of one function's invocations, for `ferry status`: counts, failures and
/// a coarse duration histogram per minute: the current minute and the [`WINDOW_MINUTES`] before
/// it (so at least five whole minutes).
#[derive(Default)]
struct Recent {
    minutes: [Minute; SLOTS],
}

/// How many minutes `ferry status` looks back.
pub const WINDOW_MINUTES: usize = 5;

/// The current minute and the whole ones before it.
const SLOTS: usize = WINDOW_MINUTES + 1;

/// Duration bins: four per doubling from 10 µs (bin 0: up to 10 µs) to about 4.5 min.
const BINS: usize = 100;

#[derive(Clone)]
struct Minute {
    /// Which minute (since the epoch) this slot holds.
    at: u64,
    invocations: u64,
    failures: u64,
    bins: [u32; BINS],
}

impl Default for Minute {
    fn default() -> Self {
        Self {
            at: 0,
            invocations: 0,
            failures: 0,
            bins: [0; BINS],
        }
    }
}

fn bin_of(took: Duration) -> usize {
    let us = took.as_secs_f64() * 1e6;
    if us <= 10.0 {
        return 0;
    }
    ((4.0 * (us / 10.0).log2()).ceil() as usize).min(BINS - 1)
}

/// The upper bound of a bin.
fn bin_upper(bin: usize) -> Duration {
    Duration::from_secs_f64(10e-6 * 2f64.powf(bin as f64 / 4.0))
}

/// One function's last minutes, as `ferry status` shows them.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RecentStats {
    /// Invocations that ended in the window.
    pub invocations: u64,
    /// Of those, the ones that failed (any outcome but `ok`).
    pub failures: u64,
    /// failures / invocations (0 without invocations).
    pub failure_rate: f64,
    /// The median duration of those that ran, in milliseconds (to within 19 %: the upper bound
    /// of its bin).
    pub p50_ms: Option<f64>,
    /// The 99th percentile, likewise.
    pub p99_ms: Option<f64>,
}

impl Recent {
    fn note(&mut self, minute: u64, failed: bool, took: Option<Duration>) {
        let slot = &mut self.minutes[(minute % SLOTS as u64) as usize];
        if slot.at != minute {
            *slot = Minute {
                at: minute,
                ..Minute::default()
            };
        }
        slot.invocations += 1;
        slot.failures += u64::from(failed);
        if let Some(took) = took {
            slot.bins[bin_of(took)] += 1;
        }
    }

    fn stats(&self, minute: u64) -> RecentStats {
        let live = self
            .minutes
            .iter()
            .filter(|m| m.at + (SLOTS as u64) > minute && m.at <= minute);
        let mut out = RecentStats::default();
        let mut bins = [0u64; BINS];
        for m in live {
            out.invocations += m.invocations;
            out.failures += m.failures;
            for (sum, n) in bins.iter_mut().zip(m.bins.iter()) {
                *sum += u64::from(*n);
            }
        }
        if out.invocations > 0 {
            out.failure_rate = out.failures as f64 / out.invocations as f64;
        }
        let ran: u64 = bins.iter().sum();
        let percentile = |p: f64| -> Option<f64> {
            let want = ((ran as f64) * p).ceil().max(1.0) as u64;
            let mut seen = 0;
            bins.iter().enumerate().find_map(|(i, n)| {
                seen += n;
                (seen >= want).then(|| bin_upper(i).as_secs_f64() * 1000.0)
            })
        };
        if ran > 0 {
            out.p50_ms = percentile(0.5);
            out.p99_ms = percentile(0.99);
        }
        out
    }
}

fn minute_now() -> u64 {
    crate::delivery::record::now_ms() / 60_000
}

impl Metrics {
    /// The recent minutes of `function`, shared by its versions.
    fn recent_of(&self, function: &str) -> std::sync::Arc<Mutex<Recent>> {
        self.recent
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(function.to_string())
            .or_default()
            .clone()
    }

    /// A function's invocations over the last [`WINDOW_MINUTES`] minutes.
    pub fn recent(&self, function: &str) -> RecentStats {
        self.recent
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(function)
            .map(|r| {
                r.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .stats(minute_now())
            })
            .unwrap_or_default()
    }

    /// Forgets a removed function's recent invocations.
    pub fn forget(&self, function: &str) {
        self.recent
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(function);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_minutes_give_counts_rates_and_percentiles() {
        let mut r = Recent::default();
        for i in 0..99 {
            r.note(100, false, Some(Duration::from_millis(1 + i % 3)));
        }
        r.note(102, true, Some(Duration::from_secs(2)));
        r.note(102, true, None);
        let s = r.stats(103);
        assert_eq!((s.invocations, s.failures), (101, 2));
        assert!((s.failure_rate - 2.0 / 101.0).abs() < 1e-9);
        let p50 = s.p50_ms.unwrap();
        assert!((2.0..=2.4).contains(&p50), "{p50}");
        let p99 = s.p99_ms.unwrap();
        assert!((3.0..=3.6).contains(&p99), "{p99}");
        // Minute 100 is still in the window at 105 (five whole minutes back), not at 106.
        assert_eq!(r.stats(105).invocations, 101);
        let later = r.stats(106);
        assert_eq!(later.invocations, 2);
        assert!(later.p99_ms.unwrap() >= 2000.0);
        // An old slot is reused for a new minute.
        r.note(106, false, None);
        assert_eq!(r.stats(106).invocations, 3);
        assert_eq!(Recent::default().stats(1).p50_ms, None);
    }
}
