//! The wasmtime engine: configuration (component model, async, pooling allocator, epoch
//! interruption with one shared ticker), compiling and caching components, classifying them by
//! the world they export, and the per-invocation store state with its limits.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::UpdateDeadline;
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::bindings::{EventFunctionPre, ProxyPre, EVENT_EXPORT, HTTP_EXPORT_PREFIX};
use crate::compiler::{ChildCompiler, CompileLimits};
use crate::model::{Limits, World};
use crate::outbound::{Outbound, OutboundOptions, OutboundPolicy};

/// How often the shared ticker advances the engine's epoch: the resolution of timeouts.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// How much of each memory and table slot stays resident between instances (reset in place).
const KEEP_RESIDENT: usize = 4 << 20;

/// Host-wide engine settings (from `ferry serve` flags).
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// How many component instances may be alive at once across all functions.
    pub max_instances: u32,
    /// The largest linear memory any function may be given, in bytes.
    pub max_memory: u64,
    /// Linear memory all instances together may hold (None: half of the machine's memory).
    pub max_total_memory: Option<u64>,
    /// The WebAssembly call stack of each instance, in bytes.
    pub max_wasm_stack: u64,
    /// Guest outbound HTTP settings.
    pub outbound: OutboundOptions,
    /// This host's listeners, which guests may never reach.
    pub own_listeners: Vec<std::net::SocketAddr>,
    /// Compile in a child process with these bounds (None: in this process).
    pub compile: Option<CompileLimits>,
    /// The bytes of guest output kept for each function (`--log-buffer`).
    pub log_buffer: usize,
    /// Also put each invocation's outcome into its function's log (`--log-outcomes`).
    pub log_outcomes: bool,
    /// Serve a new component first with code from wasmtime's baseline compiler, Winch, while
    /// Cranelift's optimised code is compiled behind it (`--baseline-compile`).
    pub baseline: bool,
    /// Cranelift's per-function cache, used by the compiler processes (`--compile-cache-size`;
    /// None: every function is compiled).
    pub compile_cache: Option<crate::compile_cache::CacheSettings>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            max_instances: 1000,
            max_memory: 256 << 20,
            max_total_memory: None,
            max_wasm_stack: 512 << 10,
            outbound: OutboundOptions::default(),
            own_listeners: Vec::new(),
            compile: None,
            log_buffer: 1 << 20,
            log_outcomes: false,
            baseline: false,
            compile_cache: None,
        }
    }
}

/// A component linked against Ferry's imports, ready to instantiate many times.
#[derive(Clone)]
pub enum Prepared {
    /// An HTTP function: exports `wasi:http/incoming-handler`.
    Http(ProxyPre<HostState>),
    /// An event function: exports `ferry:function/handler`.
    Event(EventFunctionPre<HostState>),
}

impl Prepared {
    /// The engine the component was compiled for: its stores are made with it.
    pub fn engine(&self) -> &Engine {
        match self {
            Prepared::Http(p) => p.engine(),
            Prepared::Event(p) => p.engine(),
        }
    }

    /// Which kind of function the component is.
    pub fn world(&self) -> World {
        match self {
            Prepared::Http(_) => World::Http,
            Prepared::Event(_) => World::Event,
        }
    }
}

/// Why an upload cannot become a function. Each message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ComponentError {
    /// The bytes are not WebAssembly at all.
    #[error("the upload is not WebAssembly (it does not start with the \\0asm magic bytes)")]
    NotWasm,
    /// A core module, not a component.
    #[error(
        "the upload is a core WebAssembly module, not a component; build it with \
         `cargo component build` or `cargo build --target wasm32-wasip2`"
    )]
    CoreModule,
    /// Not a valid component: an unknown WebAssembly version, or bytes that do not validate;
    /// the message says why.
    #[error("the upload is not a valid component (is it truncated?): {0}")]
    Invalid(String),
    /// A component that exports neither world Ferry runs; the message lists what it exports.
    #[error(
        "the component exports neither wasi:http/incoming-handler (an HTTP function) nor \
         ferry:function/handler (an event function); it exports: {0}"
    )]
    UnknownWorld(String),
    /// A component that imports an interface Ferry does not provide; the message lists them.
    #[error("the component imports something Ferry does not provide: {0}")]
    UnsatisfiedImport(String),
    /// Compiling it passed the time or memory bound.
    #[error("the component is refused: {0}")]
    TooCostly(String),
    /// The compiler could not run (not the upload's fault).
    #[error("compiling failed: {0}")]
    Compile(String),
    /// A background compile stopped because its code was no longer wanted.
    #[error("the compile was stopped: its code is no longer wanted")]
    Stopped,
}

/// The engine configuration of a host with these settings. The pooling allocator is left out
/// where nothing is instantiated (the compiler process): what it compiles loads into an engine
/// with the pool.
fn engine_config(opts: &EngineOptions, pooling: bool) -> Config {
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        // Reserve exactly the memory ceiling per slot instead of 4 GiB, so that 1,000 slots
        // stay within a sane amount of virtual address space.
        .memory_reservation(opts.max_memory)
        .memory_guard_size(32 << 20)
        .memory_reservation_for_growth(0)
        .max_wasm_stack(opts.max_wasm_stack as usize)
        // The host's own frames (WASI calls) run on the same fiber stack, above the guest's.
        .async_stack_size(opts.max_wasm_stack as usize + (1 << 20));
    if pooling {
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool_config(
            opts,
            KEEP_RESIDENT,
        )));
    }
    config
}

/// The pooling allocator's settings, keeping `keep_resident` bytes of each memory and table
/// slot resident between instances.
fn pool_config(opts: &EngineOptions, keep_resident: usize) -> PoolingAllocationConfig {
    let mut pool = PoolingAllocationConfig::new();
    let instances = opts.max_instances;
    pool.total_component_instances(instances)
        // A Rust component is a handful of core instances (the program and wit-component's
        // shims); each may have a memory and a table.
        .total_core_instances(instances * 4)
        .total_memories(instances)
        .total_tables(instances * 4)
        .total_stacks(instances)
        .max_memory_size(opts.max_memory as usize)
        .max_memories_per_component(4)
        // Reset a returned instance by rewriting only the pages it dirtied (PAGEMAP_SCAN,
        // Linux 6.7+) instead of `madvise`: every madvise costs a TLB shootdown across all
        // cores, which was a third of the CPU of a hello request.
        .pagemap_scan(Enabled::Auto)
        .linear_memory_keep_resident(keep_resident)
        .table_keep_resident(keep_resident);
    pool
}

/// Which compiler made a component's code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// Winch, wasmtime's baseline compiler: a big component compiles in a fraction of the time,
    /// and its code runs slower. Served until the optimised code is ready.
    Baseline,
    /// Cranelift, the optimising compiler.
    Optimized,
}

impl Tier {
    /// The name the API, the metrics and the logs use.
    pub fn name(self) -> &'static str {
        match self {
            Tier::Baseline => "baseline",
            Tier::Optimized => "optimized",
        }
    }
}

/// The engine configuration of the baseline tier: the host's, compiled by Winch, instances
/// allocated on demand (the tier is short-lived: a second pool would reserve address space for
/// every instance slot again).
fn baseline_config(opts: &EngineOptions) -> Config {
    let mut config = engine_config(opts, false);
    config.strategy(wasmtime::Strategy::Winch);
    config
}

/// Checks the first bytes: WebAssembly, and a component rather than a core module.
fn check_header(bytes: &[u8]) -> Result<(), ComponentError> {
    match bytes.get(0..8) {
        Some([0, b'a', b's', b'm', 1, 0, 0, 0]) => Err(ComponentError::CoreModule),
        Some([0, b'a', b's', b'm', _, _, 1, 0]) => Ok(()),
        Some([0, b'a', b's', b'm', ..]) => Err(ComponentError::Invalid(
            "unknown WebAssembly version".into(),
        )),
        _ => Err(ComponentError::NotWasm),
    }
}

/// How one compile used the compile cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheUse {
    /// Functions whose code came from the cache.
    pub hits: u64,
    /// Functions compiled (and stored in the cache).
    pub misses: u64,
    /// Bytes this compile added to the cache.
    pub written: u64,
    /// Functions that could not be stored (an unwritable directory, a full disk).
    pub failed: u64,
}

/// The compile cache an optimised compile uses, if the host has one that can be opened.
fn open_cache(opts: &EngineOptions, tier: Tier) -> Option<Arc<crate::compile_cache::DiskCache>> {
    let settings = opts
        .compile_cache
        .as_ref()
        .filter(|_| tier == Tier::Optimized)?;
    match crate::compile_cache::DiskCache::open(&settings.dir, settings.max_size) {
        Ok(cache) => {
            if cache.budget() == 0 {
                // The host logs this line.
                eprintln!(
                    "the compile cache {} stores nothing while less than {} is free on its disk: \
                     free some space or lower --compile-cache-size",
                    settings.dir.display(),
                    crate::model::size_text(settings.max_size.saturating_mul(2))
                );
            }
            Some(Arc::new(cache))
        }
        Err(e) => {
            // Slower, not wrong: every function is compiled. The host logs this line.
            eprintln!(
                "the compile cache {} cannot be used ({e}): check its owner and permissions, \
                 or turn it off with --compile-cache-size 0",
                settings.dir.display()
            );
            None
        }
    }
}

/// Compiles an upload into an artifact for an engine with these settings (in the compiler
/// process). Optimised code looks each function up in the compile cache first, when the host
/// has one.
pub fn compile_artifact(
    opts: &EngineOptions,
    bytes: &[u8],
    tier: Tier,
) -> Result<(Vec<u8>, Option<CacheUse>), ComponentError> {
    check_header(bytes)?;
    let mut config = match tier {
        Tier::Baseline => baseline_config(opts),
        Tier::Optimized => engine_config(opts, false),
    };
    let cache = open_cache(opts, tier);
    if let Some(cache) = &cache {
        config
            .enable_incremental_compilation(cache.clone())
            .map_err(|e| ComponentError::Compile(format!("{e:#}")))?;
    }
    let engine = Engine::new(&config).map_err(|e| ComponentError::Compile(format!("{e:#}")))?;
    let (_, artifact) = compile_with(&engine, bytes)?;
    let used = cache.map(|cache| CacheUse {
        hits: cache.hits(),
        misses: cache.misses(),
        written: cache.written(),
        failed: cache.failed(),
    });
    Ok((artifact, used))
}

/// Compiles `bytes` with `engine`: the component and its serialized artifact.
fn compile_with(engine: &Engine, bytes: &[u8]) -> Result<(Component, Vec<u8>), ComponentError> {
    let component =
        Component::new(engine, bytes).map_err(|e| ComponentError::Invalid(format!("{e:#}")))?;
    let artifact = component
        .serialize()
        .map_err(|e| ComponentError::Compile(format!("{e:#}")))?;
    Ok((component, artifact))
}

/// The wasmtime engine with Ferry's linker. One per process.
pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    /// The baseline tier's engine and linker (`--baseline-compile`).
    baseline: Option<(Engine, Linker<HostState>)>,
    compat_key: String,
    compilations: AtomicU64,
    outbound: Arc<Outbound>,
    memory: Arc<MemoryBudget>,
    max_wasm_stack: u64,
    compiler: Option<ChildCompiler>,
    metrics: Arc<crate::metrics::Metrics>,
    logs: Arc<crate::logs::Logs>,
    log_outcomes: bool,
}

impl Runtime {
    /// The engine and linker with these settings; starts the epoch ticker thread.
    pub fn new(opts: &EngineOptions) -> anyhow::Result<Arc<Self>> {
        let engine = Engine::new(&engine_config(opts, true))
            .map_err(anyhow::Error::from)
            .context("failed to configure the wasmtime engine")?;
        let linker = ferry_linker(&engine)?;
        let baseline = if opts.baseline {
            let engine = Engine::new(&baseline_config(opts))
                .map_err(anyhow::Error::from)
                .context("failed to configure the baseline (Winch) engine")?;
            spawn_epoch_ticker(&engine)?;
            let linker = ferry_linker(&engine)?;
            Some((engine, linker))
        } else {
            None
        };

        let compat_key = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            engine.precompile_compatibility_hash().hash(&mut h);
            format!("{:016x}", h.finish())
        };
        spawn_epoch_ticker(&engine)?;
        Ok(Arc::new(Self {
            engine,
            linker,
            baseline,
            compat_key,
            compilations: AtomicU64::new(0),
            outbound: Arc::new(Outbound::new(
                opts.outbound.clone(),
                opts.own_listeners.clone(),
            )?),
            memory: Arc::new(MemoryBudget::new(
                opts.max_total_memory.unwrap_or_else(half_of_memory),
            )),
            max_wasm_stack: opts.max_wasm_stack,
            compiler: opts
                .compile
                .clone()
                .map(|limits| ChildCompiler::new(limits, opts.clone())),
            metrics: {
                let m = Arc::new(crate::metrics::Metrics::default());
                m.set_instance_capacity(opts.max_instances);
                m
            },
            logs: Arc::new(crate::logs::Logs::new(opts.log_buffer)),
            log_outcomes: opts.log_outcomes,
        }))
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Identifies the engine's compiled-code format: artifacts are cached under this key.
    pub fn compat_key(&self) -> &str {
        &self.compat_key
    }

    /// What the host counts, for `/metrics`.
    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.metrics
    }

    /// Whether each invocation's outcome goes into its function's log.
    pub fn log_outcomes(&self) -> bool {
        self.log_outcomes
    }

    /// What the functions wrote to stdout and stderr.
    pub fn logs(&self) -> &Arc<crate::logs::Logs> {
        &self.logs
    }

    /// The linear memory all instances together may hold.
    pub fn memory(&self) -> &Arc<MemoryBudget> {
        &self.memory
    }

    /// The WebAssembly call stack of each instance, in bytes (`--max-wasm-stack`).
    pub fn max_wasm_stack(&self) -> u64 {
        self.max_wasm_stack
    }

    /// What every invocation's outbound HTTP shares.
    pub fn outbound(&self) -> &Arc<Outbound> {
        &self.outbound
    }

    /// How many components this process has compiled from source bytes.
    pub fn compilations(&self) -> u64 {
        self.compilations.load(Ordering::Relaxed)
    }

    /// Validates and compiles an upload; returns the component and its artifact to cache.
    /// CPU-heavy and blocking: call it off the async threads. With compile limits (`ferry
    /// serve`) the compiler runs in a child process bounded in time and memory.
    pub fn compile(&self, bytes: &[u8]) -> Result<(Component, Vec<u8>), ComponentError> {
        self.compile_metered(bytes, None)
    }

    /// [`Runtime::compile`] for a function already served by baseline code: at a lower CPU
    /// priority, outside the `--compile-jobs` slots. With a compiler process, it stops with
    /// [`ComponentError::Stopped`] once `wanted` returns false (checked every few
    /// milliseconds); compiling in this process, it runs to the end.
    pub fn compile_behind(
        &self,
        bytes: &[u8],
        wanted: &dyn Fn() -> bool,
    ) -> Result<(Component, Vec<u8>), ComponentError> {
        self.compile_metered(bytes, Some(wanted))
    }

    fn compile_metered(
        &self,
        bytes: &[u8],
        wanted: Option<&dyn Fn() -> bool>,
    ) -> Result<(Component, Vec<u8>), ComponentError> {
        let started = Instant::now();
        let compiled = self.compile_unmetered(bytes, wanted);
        match &compiled {
            Ok(_) => self
                .metrics
                .compilation("compiled", Some(started.elapsed())),
            Err(ComponentError::TooCostly(_)) => self.metrics.compilation("refused", None),
            Err(ComponentError::Stopped) => self.metrics.compilation("stopped", None),
            Err(_) => {}
        }
        compiled
    }

    /// Whether new components are served first with baseline code (`--baseline-compile`).
    pub fn has_baseline(&self) -> bool {
        self.baseline.is_some()
    }

    /// Compiles an upload with the baseline compiler (Winch): seconds where Cranelift takes
    /// tens of them, for code that runs slower. Nothing is kept of it: the optimised code
    /// replaces it. Blocking, like [`Runtime::compile`].
    pub fn compile_baseline(&self, bytes: &[u8]) -> Result<Component, ComponentError> {
        let Some((engine, _)) = &self.baseline else {
            return Err(ComponentError::Compile(
                "this host compiles no baseline code (ferry serve --baseline-compile)".into(),
            ));
        };
        check_header(bytes)?;
        let started = Instant::now();
        let component = match &self.compiler {
            Some(child) => {
                let (artifact, _) = child.compile(bytes, Tier::Baseline, None)?;
                // SAFETY: as in `load_artifact`: the artifact was written just now by this
                // program's compiler process for this engine's settings.
                #[allow(unsafe_code)]
                let component = unsafe { Component::deserialize(engine, &artifact) };
                component.map_err(|e| ComponentError::Compile(format!("{e:#}")))?
            }
            None => Component::new(engine, bytes)
                .map_err(|e| ComponentError::Invalid(format!("{e:#}")))?,
        };
        self.metrics
            .compilation("baseline", Some(started.elapsed()));
        Ok(component)
    }

    /// Which compiler made `component`'s code.
    pub fn tier(&self, component: &Component) -> Tier {
        if Engine::same(component.engine(), &self.engine) {
            Tier::Optimized
        } else {
            Tier::Baseline
        }
    }

    fn compile_unmetered(
        &self,
        bytes: &[u8],
        wanted: Option<&dyn Fn() -> bool>,
    ) -> Result<(Component, Vec<u8>), ComponentError> {
        check_header(bytes)?;
        let (component, artifact) = match &self.compiler {
            Some(child) => {
                let (artifact, cache) = match child.compile(bytes, Tier::Optimized, wanted) {
                    Ok(made) => made,
                    // A compiler killed midway wrote to the cache without saying how much.
                    Err(e @ (ComponentError::Stopped | ComponentError::TooCostly(_))) => {
                        if let Some(settings) = child.cache_settings() {
                            crate::compile_cache::trim_in_background(settings);
                        }
                        return Err(e);
                    }
                    Err(e) => return Err(e),
                };
                if let Some(cache) = cache {
                    self.metrics.compile_cache(cache.hits, cache.misses);
                    tracing::debug!(
                        hits = cache.hits,
                        misses = cache.misses,
                        written = cache.written,
                        "compile cache: functions found and compiled"
                    );
                    if cache.failed > 0 {
                        tracing::warn!(
                            functions = cache.failed,
                            "the compile cache could not store some functions (a full disk or \
                             an unwritable compile cache directory?): they will be \
                             compiled again next time"
                        );
                    }
                    if cache.written > 0 {
                        if let Some(settings) = child.cache_settings() {
                            crate::compile_cache::trim_in_background(settings);
                        }
                    }
                }
                let component = self
                    .load_artifact(&artifact)
                    .map_err(|e| ComponentError::Compile(format!("{e:#}")))?;
                (component, artifact)
            }
            None => compile_with(&self.engine, bytes)?,
        };
        self.compilations.fetch_add(1, Ordering::Relaxed);
        Ok((component, artifact))
    }

    /// Loads an artifact previously produced by [`Component::serialize`] on an engine with the
    /// same [`Runtime::compat_key`].
    pub fn load_artifact(&self, artifact: &[u8]) -> anyhow::Result<Component> {
        // SAFETY: artifacts are written only by `Runtime::compile` + `serialize` of this program
        // into Ferry's own data directory and keyed by the engine's compatibility hash; wasmtime
        // additionally checks the header and rejects artifacts from an incompatible engine.
        #[allow(unsafe_code)]
        let component = unsafe { Component::deserialize(&self.engine, artifact) };
        component
            .map_err(anyhow::Error::from)
            .context("failed to load a precompiled artifact")
    }

    /// [`Runtime::load_artifact`] from a file, which wasmtime maps rather than copies: the
    /// code's pages are the file's, resident only while used.
    pub fn load_artifact_file(&self, path: &std::path::Path) -> anyhow::Result<Component> {
        // SAFETY: as in `load_artifact`; the store checked the file's length and checksum
        // against what it wrote just before this, and the file is only ever replaced whole
        // (renamed over), never changed in place.
        #[allow(unsafe_code)]
        let component = unsafe { Component::deserialize_file(&self.engine, path) }
            .map_err(anyhow::Error::from)
            .with_context(|| {
                format!("failed to load the precompiled artifact {}", path.display())
            })?;
        page_out(component.image_range());
        Ok(component)
    }

    /// Links a component and decides which kind of function it is.
    pub fn prepare(&self, component: &Component) -> Result<Prepared, ComponentError> {
        // Link first: an import Ferry does not provide is the more useful thing to report.
        let linker = match (&self.baseline, self.tier(component)) {
            (Some((_, linker)), Tier::Baseline) => linker,
            _ => &self.linker,
        };
        let pre = linker
            .instantiate_pre(component)
            .map_err(|e| self.unsatisfied(component, &e))?;
        let ty = component.component_type();
        let exports: Vec<String> = ty
            .exports(component.engine())
            .map(|(n, _)| n.to_string())
            .collect();
        let world = if exports.iter().any(|e| e.starts_with(HTTP_EXPORT_PREFIX)) {
            World::Http
        } else if exports.iter().any(|e| e == EVENT_EXPORT) {
            World::Event
        } else {
            let list = if exports.is_empty() {
                "nothing".to_string()
            } else {
                exports.join(", ")
            };
            return Err(ComponentError::UnknownWorld(list));
        };
        let link_err = |e: wasmtime::Error| ComponentError::UnknownWorld(format!("{e:#}"));
        Ok(match world {
            World::Http => Prepared::Http(ProxyPre::new(pre).map_err(link_err)?),
            World::Event => Prepared::Event(EventFunctionPre::new(pre).map_err(link_err)?),
        })
    }
}

/// Lets the kernel take back the pages of a mapped artifact that loading it touched (the kernel
/// maps 64 KiB around each page read, so loading maps most of a small artifact): an idle
/// function's code is then not resident, and the first call maps what it runs from the file
/// (still in the page cache, as a rule). The pages keep their contents: clean file pages are
/// dropped, and any page wasmtime wrote stays, as there is no swap to write it to.
fn page_out(image: std::ops::Range<*const u8>) {
    let (start, len) = (
        image.start as usize,
        image.end as usize - image.start as usize,
    );
    let page = 4096;
    let aligned = start & !(page - 1);
    // SAFETY: a hint about this process's own mapping (the artifact wasmtime just mapped and
    // keeps mapped while `component` lives); MADV_PAGEOUT never changes what the pages hold.
    #[allow(unsafe_code)]
    let _ = unsafe {
        libc::madvise(
            aligned as *mut libc::c_void,
            len + (start - aligned),
            libc::MADV_PAGEOUT,
        )
    };
}

/// The interfaces Ferry's linker provides (WASI 0.2.x, as wasmtime implements them).
const PROVIDED: &[&str] = &[
    "wasi:cli/environment",
    "wasi:cli/exit",
    "wasi:cli/stdin",
    "wasi:cli/stdout",
    "wasi:cli/stderr",
    "wasi:cli/terminal-input",
    "wasi:cli/terminal-output",
    "wasi:cli/terminal-stdin",
    "wasi:cli/terminal-stdout",
    "wasi:cli/terminal-stderr",
    "wasi:clocks/monotonic-clock",
    "wasi:clocks/wall-clock",
    "wasi:filesystem/types",
    "wasi:filesystem/preopens",
    "wasi:http/types",
    "wasi:http/outgoing-handler",
    "wasi:io/error",
    "wasi:io/poll",
    "wasi:io/streams",
    "wasi:random/random",
    "wasi:random/insecure",
    "wasi:random/insecure-seed",
    "wasi:sockets/network",
    "wasi:sockets/instance-network",
    "wasi:sockets/udp",
    "wasi:sockets/udp-create-socket",
    "wasi:sockets/tcp",
    "wasi:sockets/tcp-create-socket",
    "wasi:sockets/ip-name-lookup",
];

/// Whether an import names an interface Ferry provides, in a version it provides.
fn provided(import: &str) -> bool {
    let (interface, version) = import.split_once('@').unwrap_or((import, ""));
    version.starts_with("0.2.") && PROVIDED.contains(&interface)
}

impl Runtime {
    /// Why a component cannot be linked: every import from a package Ferry does not provide at
    /// all, then wasmtime's account of the first import that failed (a version or a function
    /// Ferry's linker lacks).
    fn unsatisfied(&self, component: &Component, error: &wasmtime::Error) -> ComponentError {
        let foreign: Vec<String> = component
            .component_type()
            .imports(component.engine())
            .map(|(name, _)| name.to_string())
            .filter(|name| !provided(name))
            .collect();
        let detail = format!("{error:#}");
        let message = if foreign.is_empty() {
            detail
        } else {
            format!(
                "{} (Ferry provides wasi:cli, wasi:clocks, wasi:filesystem, wasi:io, \
                 wasi:random, wasi:sockets and wasi:http types and outgoing-handler, version \
                 0.2); the first failure: {detail}",
                foreign.join(", ")
            )
        };
        ComponentError::UnsatisfiedImport(message)
    }
}

/// Ferry's linker for `engine`: WASI 0.2 and wasi:http.
fn ferry_linker(engine: &Engine) -> anyhow::Result<Linker<HostState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)
        .map_err(anyhow::Error::from)
        .context("failed to link WASI")?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
        .map_err(anyhow::Error::from)
        .context("failed to link wasi:http")?;
    Ok(linker)
}

/// One thread for the whole engine advances the epoch; it ends when the engine is dropped.
fn spawn_epoch_ticker(engine: &Engine) -> anyhow::Result<()> {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("ferry-epoch".into())
        .spawn(move || loop {
            std::thread::sleep(EPOCH_TICK);
            match weak.upgrade() {
                Some(engine) => engine.increment_epoch(),
                None => return,
            }
        })
        .context("failed to start the epoch thread")?;
    Ok(())
}

/// The marker error the epoch callback raises when a deadline passes.
#[derive(Debug, thiserror::Error)]
#[error("the function exceeded its timeout")]
pub struct DeadlineExceeded;

/// The marker error the epoch callback raises when an invocation's CPU budget is spent.
#[derive(Debug, thiserror::Error)]
#[error("the function exceeded its CPU time")]
pub struct CpuExceeded;

/// Half of the memory this process may use: the machine's (/proc/meminfo), or its cgroup's limit
/// when that is lower (in a container); 4 GiB where neither can be read.
fn half_of_memory() -> u64 {
    let machine = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kib| kib * 1024)
    });
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok());
    match (machine, cgroup) {
        (Some(m), Some(c)) => m.min(c) / 2,
        (Some(m), None) => m / 2,
        (None, Some(c)) => c / 2,
        (None, None) => 4 << 30,
    }
}

/// The linear memory all instances of the process hold together, against a cap.
#[derive(Debug)]
pub struct MemoryBudget {
    cap: u64,
    used: AtomicU64,
}

impl MemoryBudget {
    fn new(cap: u64) -> Self {
        Self {
            cap,
            used: AtomicU64::new(0),
        }
    }

    /// The cap, in bytes (`--max-total-memory`).
    pub fn cap(&self) -> u64 {
        self.cap
    }

    /// What live instances hold now, in bytes.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    fn reserve(&self, bytes: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                u.checked_add(bytes).filter(|n| *n <= self.cap)
            })
            .is_ok()
    }

    fn release(&self, bytes: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                Some(u.saturating_sub(bytes))
            });
    }
}

/// Which limits an invocation ran into, for the message its caller gets.
#[derive(Debug, Default)]
pub struct LimitsHit {
    /// Its memory could not grow past `limits.memory`.
    pub memory: AtomicBool,
    /// Its memory could not grow because all instances together hold `--max-total-memory`.
    pub host_memory: AtomicBool,
}

/// The resource limiter of one invocation: its own memory ceiling, and its share of the
/// process-wide budget, given back when the invocation's store goes away.
struct Limiter {
    memory: u64,
    held: u64,
    budget: Arc<MemoryBudget>,
    hit: Arc<LimitsHit>,
}

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired as u64 > self.memory {
            self.hit.memory.store(true, Ordering::Relaxed);
            return Ok(false);
        }
        let more = desired.saturating_sub(current) as u64;
        if !self.budget.reserve(more) {
            self.hit.host_memory.store(true, Ordering::Relaxed);
            return Ok(false);
        }
        self.held += more;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }

    fn instances(&self) -> usize {
        64
    }
}

impl Drop for Limiter {
    fn drop(&mut self) {
        self.budget.release(self.held);
    }
}

/// The data of one invocation's `Store`.
pub struct HostState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    hooks: OutboundPolicy,
    limiter: Limiter,
    deadline: Instant,
    /// Epoch ticks of WebAssembly execution left (`limits.cpu`), if it has a budget.
    cpu_ticks: Option<u64>,
    /// Counts this instance among the live ones while it exists.
    _live: Option<LiveInstance>,
}

/// One live instance in the `ferry_instances_in_use` gauge.
struct LiveInstance(prometheus_client::metrics::gauge::Gauge);

impl Drop for LiveInstance {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl HostState {
    /// Creates the state of one invocation of a function with these limits, environment,
    /// outbound policy and output sink, drawing memory from `budget` and noting the limits it hits in `hit`.
    pub fn new(
        limits: &Limits,
        env: &[(String, String)],
        hooks: OutboundPolicy,
        output: Arc<crate::guest_output::GuestOutput>,
        budget: Arc<MemoryBudget>,
        hit: Arc<LimitsHit>,
    ) -> Self {
        let mut wasi = WasiCtx::builder();
        wasi.envs(env)
            .stdout(output.stream(0))
            .stderr(output.stream(1));
        Self {
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            hooks,
            limiter: Limiter {
                memory: limits.memory,
                held: 0,
                budget,
                hit,
            },
            deadline: Instant::now() + limits.timeout,
            cpu_ticks: limits
                .cpu
                .map(|c| (c.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64),
            _live: None,
        }
    }

    /// Counts the instance in `gauge` until it is dropped.
    pub fn counted_in(mut self, gauge: &prometheus_client::metrics::gauge::Gauge) -> Self {
        gauge.inc();
        self._live = Some(LiveInstance(gauge.clone()));
        self
    }
}

/// Creates a store for one invocation: memory limits, and an epoch callback that yields to other
/// tasks every tick, traps once the wall-clock deadline has passed, and counts the ticks spent
/// running WebAssembly against the CPU budget.
pub fn new_store(engine: &Engine, state: HostState) -> wasmtime::Store<HostState> {
    let mut store = wasmtime::Store::new(engine, state);
    store.limiter(|s| &mut s.limiter);
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|mut ctx| {
        let state = ctx.data_mut();
        if Instant::now() >= state.deadline {
            return Err(wasmtime::Error::new(DeadlineExceeded));
        }
        if let Some(left) = &mut state.cpu_ticks {
            // The callback runs once per tick while WebAssembly runs (once after a wait).
            *left = left.saturating_sub(1);
            if *left == 0 {
                return Err(wasmtime::Error::new(CpuExceeded));
            }
        }
        Ok(UpdateDeadline::Yield(1))
    });
    store
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::{Instance, Module, Store};

    /// This thread's minor page faults so far (`minflt` in /proc/thread-self/stat).
    fn faults() -> u64 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
        after_name.split(' ').nth(7).unwrap().parse().unwrap()
    }

    /// Pages the scattered-writes module dirties: every other 4 KiB page of its memory.
    const PAGES: u32 = 96;

    /// Instantiates, four times one after another, a module with 1 MiB of memory whose image
    /// spans all of it (data at both ends), and calls its function that writes one byte into
    /// every other 4 KiB page (96 separate dirty pages) and returns the sum of the bytes it found
    /// there: 120, the data's "x" at 0, in a clean memory. Returns each round's minor page faults
    /// and sum.
    fn scattered_writes(engine: &Engine) -> (Vec<u64>, Vec<i32>) {
        let wat = format!(
            r#"(module
                (memory 16 16)
                (data (i32.const 0) "x")
                (data (i32.const 1048575) "x")
                (func (export "touch") (result i32) (local $i i32) (local $sum i32)
                    (loop $next
                        (local.set $sum (i32.add (local.get $sum)
                            (i32.load8_u (i32.mul (local.get $i) (i32.const 8192)))))
                        (i32.store8 (i32.mul (local.get $i) (i32.const 8192)) (i32.const 7))
                        (local.set $i (i32.add (local.get $i) (i32.const 1)))
                        (br_if $next (i32.lt_u (local.get $i) (i32.const {PAGES}))))
                    (local.get $sum)))"#
        );
        let module = Module::new(engine, wat::parse_str(&wat).unwrap()).unwrap();
        let mut per_round = Vec::new();
        let mut found = Vec::new();
        for _ in 0..4 {
            let before = faults();
            let mut store = Store::new(engine, ());
            store.set_epoch_deadline(u64::MAX / 2);
            let instance = Instance::new(&mut store, &module, &[]).unwrap();
            let touch = instance
                .get_typed_func::<(), i32>(&mut store, "touch")
                .unwrap();
            found.push(touch.call(&mut store, ()).unwrap());
            drop(store);
            per_round.push(faults() - before);
        }
        (per_round, found)
    }

    fn small_opts() -> EngineOptions {
        EngineOptions {
            max_instances: 4,
            ..EngineOptions::default()
        }
    }

    /// An interpreter writes all over its heap: a guest that dirties more separate runs of
    /// pages than wasmtime's reset asks the kernel for at once (32) must still find them
    /// resident in its next instance, not take a copy-on-write fault for each (the patch in
    /// vendor/wasmtime/FERRY-PATCH.md). Needs PAGEMAP_SCAN (Linux 6.7+); without it the reset
    /// rewrites the first KEEP_RESIDENT bytes, which also keeps them. Either way each instance
    /// must find the memory as the module defines it, none of the last instance's writes.
    #[test]
    fn an_instance_dirtying_many_scattered_pages_keeps_them_resident() {
        let engine = Engine::new(&engine_config(&small_opts(), true)).unwrap();
        let (per_round, found) = scattered_writes(&engine);
        assert_eq!(
            found, [120; 4],
            "every instance starts from the module's memory"
        );
        assert!(
            per_round[0] >= PAGES as u64,
            "the first instance faults its pages in: {per_round:?}"
        );
        assert!(
            per_round[2..].iter().all(|&f| f < PAGES as u64 / 2),
            "later instances find the pages resident: {per_round:?}"
        );
    }

    /// With room to keep only 40 of the 96 dirty pages resident, the reset rewrites those and
    /// decommits the rest, reached in a later scan than the first: each instance still starts
    /// from the module's memory, and faults the decommitted pages in again.
    #[test]
    fn a_small_resident_budget_still_resets_every_page() {
        let opts = small_opts();
        let mut config = engine_config(&opts, false);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool_config(
            &opts,
            40 << 12,
        )));
        let engine = Engine::new(&config).unwrap();
        let (per_round, found) = scattered_writes(&engine);
        assert_eq!(
            found, [120; 4],
            "every instance starts from the module's memory"
        );
        assert!(
            per_round[2..].iter().all(|&f| f >= (PAGES - 40) as u64),
            "the pages past the budget are decommitted: {per_round:?}"
        );
    }
}
