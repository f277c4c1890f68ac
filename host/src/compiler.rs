//! Compiling uploads with bounded cost. Cranelift cannot be stopped halfway, and a component can
//! be built to make it slow or hungry; so `ferry serve` compiles each upload in a child process
//! (`ferry internal-compile`, the same binary) that it kills when it passes the time or memory
//! bound, and loads the compiled artifact the child writes. The memory the compiler used goes
//! back to the operating system with the child. A few compilations run at once; more wait.
//!
//! Time is counted in the child's CPU time, not on the clock: on a busy machine a compile that
//! waits for a core is slow through no fault of the component (two big compiles beside a test
//! suite on two cores passed a 120 s clock bound). The bound is what the compile could use in
//! that long with every core to itself; the clock only stops a child that gets no CPU at all
//! for ten times the bound.

use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::engine::{CacheUse, ComponentError, EngineOptions, Tier};

/// Bounds of one compilation (from `ferry serve` flags).
#[derive(Debug, Clone)]
pub struct CompileLimits {
    /// The `ferry` binary to run as the compiler.
    pub exe: PathBuf,
    /// The longest a compilation may take with the machine to itself (`--max-compile-time`):
    /// its CPU time over the cores it may use.
    pub timeout: Duration,
    /// The most resident memory it may use (`--max-compile-memory`).
    pub memory: u64,
    /// How many compilations may run at once (`--compile-jobs`).
    pub jobs: usize,
}

/// Runs compilations in child processes, a few at a time.
pub(crate) struct ChildCompiler {
    limits: CompileLimits,
    engine: EngineOptions,
    running: Mutex<usize>,
    freed: Condvar,
}

/// The nice value of a background compile: below the host's request handling.
const BACKGROUND_NICE: libc::c_int = 10;

/// How the child says a component is invalid (its message is on stderr).
const EXIT_INVALID: i32 = 2;

impl ChildCompiler {
    pub(crate) fn new(limits: CompileLimits, engine: EngineOptions) -> Self {
        Self {
            limits,
            engine,
            running: Mutex::new(0),
            freed: Condvar::new(),
        }
    }

    /// Compiles `bytes` in a child process and returns the serialized artifact, and how the
    /// compile used the compile cache if it had one. Blocks: call it
    /// off the async threads. A `background` compile (the optimised code of a function already
    /// served by baseline code) runs at a lower CPU priority and outside the `--compile-jobs`
    /// slots, so that it never holds up a deploy: its caller runs one at a time. It is given as
    /// `Some(wanted)`, and stopped ([`ComponentError::Stopped`]) as soon as `wanted` says its
    /// code is no longer wanted, so that the next one starts at once.
    pub(crate) fn compile(
        &self,
        bytes: &[u8],
        tier: Tier,
        wanted: Option<&dyn Fn() -> bool>,
    ) -> Result<(Vec<u8>, Option<CacheUse>), ComponentError> {
        let background = wanted.is_some();
        let _slot = (!background).then(|| self.slot());
        let mut command = Command::new(&self.limits.exe);
        command
            .arg("internal-compile")
            .arg("--tier")
            .arg(tier.name());
        if background {
            command.arg("--background");
        }
        if let Some(cache) = &self.engine.compile_cache {
            command
                .arg("--compile-cache")
                .arg(&cache.dir)
                .arg("--compile-cache-size")
                .arg(format!("{}B", cache.max_size));
        }
        let mut child = command
            .arg("--max-instances")
            .arg(self.engine.max_instances.to_string())
            .arg("--max-memory")
            .arg(format!("{}B", self.engine.max_memory))
            .arg("--max-wasm-stack")
            .arg(format!("{}B", self.engine.max_wasm_stack))
            .arg("--max-compile-time")
            .arg(format!("{}s", self.limits.timeout.as_secs().max(1)))
            .arg("--max-compile-memory")
            .arg(format!("{}B", self.limits.memory))
            .env_clear()
            // Fewer malloc arenas: less address space reserved per compiler thread.
            .env("MALLOC_ARENA_MAX", "2")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                ComponentError::Compile(format!(
                    "could not start the compiler process {}: {e}",
                    self.limits.exe.display()
                ))
            })?;
        // Feed stdin and drain stdout and stderr on their own threads, so that neither side
        // can block the other, while this thread watches time and memory.
        let (Some(mut stdin), Some(mut stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(ComponentError::Compile(
                "the compiler's pipes are missing".into(),
            ));
        };
        // Scoped threads: the feeder writes `bytes` where they are (an 18 MB component is not
        // copied for it).
        let started = Instant::now();
        let (verdict, peak, artifact, message) = std::thread::scope(|scope| {
            let feeder = scope.spawn(move || {
                let _ = stdin.write_all(bytes);
            });
            let reader = scope.spawn(move || {
                let mut out = Vec::new();
                let _ = stdout.read_to_end(&mut out);
                out
            });
            let errors = scope.spawn(move || {
                let mut out = String::new();
                let _ = stderr.take(64 << 10).read_to_string(&mut out);
                out
            });
            let (verdict, peak) = self.watch(&mut child, started, wanted);
            let _ = feeder.join();
            let artifact = reader.join().unwrap_or_default();
            let message = errors.join().unwrap_or_default();
            (verdict, peak, artifact, message)
        });
        let status = verdict?;
        tracing::debug!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            peak_rss = peak,
            "compiled in a child process"
        );
        let said = if message.trim().is_empty() {
            String::new()
        } else {
            format!(": {}", message.trim())
        };
        match status.code() {
            Some(0) => {
                // Anything else the compiler said (the compile cache it could not use).
                for line in message.lines().filter(|l| !l.starts_with(CACHE_LINE)) {
                    tracing::warn!("compiler: {line}");
                }
                Ok((artifact, cache_use(&message)))
            }
            Some(EXIT_INVALID) => Err(ComponentError::Invalid(message.trim().to_string())),
            // Exited with an error of its own: not the upload's fault.
            Some(_) => Err(ComponentError::Compile(format!(
                "the compiler process failed ({status}){said}"
            ))),
            // Killed by a signal: its CPU or address-space limit (SIGXCPU, an aborted
            // allocation).
            None => Err(ComponentError::TooCostly(format!(
                "compiling it passed the compiler's limits ({status}; ferry serve \
                 --max-compile-time, --max-compile-memory){said}"
            ))),
        }
    }

    /// Watches a running compiler until it ends, killing it past the CPU-time or memory bound,
    /// or once `wanted` says its code is no longer wanted. Returns how it ended and its peak
    /// resident memory.
    fn watch(
        &self,
        child: &mut std::process::Child,
        started: Instant,
        wanted: Option<&dyn Fn() -> bool>,
    ) -> (Result<std::process::ExitStatus, ComponentError>, u64) {
        let cpu_budget = self.limits.timeout.as_secs_f64() * cores() as f64;
        let mut peak = 0u64;
        let verdict = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Ok(status),
                Ok(None) => {}
                Err(e) => {
                    break Err(ComponentError::Compile(format!(
                        "waiting for the compiler: {e}"
                    )))
                }
            }
            peak = peak.max(resident(child.id()));
            if peak > self.limits.memory {
                end(child);
                break Err(ComponentError::TooCostly(format!(
                    "compiling it needed more than {} of memory (ferry serve --max-compile-memory)",
                    crate::model::size_text(self.limits.memory)
                )));
            }
            if wanted.is_some_and(|wanted| !wanted()) {
                end(child);
                break Err(ComponentError::Stopped);
            }
            if cpu_seconds(child.id()) > cpu_budget || started.elapsed() > self.limits.timeout * 10
            {
                end(child);
                break Err(ComponentError::TooCostly(format!(
                    "compiling it took longer than {} (ferry serve --max-compile-time)",
                    humantime::format_duration(self.limits.timeout)
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        (verdict, peak)
    }

    /// The compile cache the children use, if any.
    pub(crate) fn cache_settings(&self) -> Option<&crate::compile_cache::CacheSettings> {
        self.engine.compile_cache.as_ref()
    }

    /// Waits for a free compilation slot; the slot is freed when the guard drops.
    fn slot(&self) -> impl Drop + '_ {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        while *running >= self.limits.jobs.max(1) {
            running = self.freed.wait(running).unwrap_or_else(|e| e.into_inner());
        }
        *running += 1;
        Slot(self)
    }
}

struct Slot<'a>(&'a ChildCompiler);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut running = self.0.running.lock().unwrap_or_else(|e| e.into_inner());
        *running -= 1;
        self.0.freed.notify_one();
    }
}

/// Kills a compiler and reaps it.
fn end(child: &mut std::process::Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// How the child says it used the compile cache: its last line on stderr.
const CACHE_LINE: &str = "compile-cache:";

/// The cache use a child reported on its last line (`compile-cache: HITS MISSES WRITTEN
/// FAILED`), if it did.
fn cache_use(stderr: &str) -> Option<CacheUse> {
    let line = stderr.lines().last()?.strip_prefix(CACHE_LINE)?;
    let numbers: Vec<u64> = line
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    match numbers[..] {
        [hits, misses, written, failed] => Some(CacheUse {
            hits,
            misses,
            written,
            failed,
        }),
        _ => None,
    }
}

/// The cores a compile may use (its threads' CPU time adds up over them).
fn cores() -> u64 {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get) as u64
}

/// The CPU time a process has used over all its threads, in seconds (0 when it cannot be read).
fn cpu_seconds(pid: u32) -> f64 {
    // Fields 14 and 15 of /proc/PID/stat (user and system time) are in USER_HZ ticks, which
    // Linux fixes at 100 per second for user space. The command (field 2) may hold spaces: count
    // from its closing parenthesis.
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // `rest` starts at field 3 (the state): user time is field 14, index 11.
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// The resident memory of a process, in bytes (0 when it cannot be read).
fn resident(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/statm"))
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .map_or(0, |pages| pages * 4096)
}

/// `ferry internal-compile`: reads a component on stdin, writes the compiled artifact on
/// stdout. Invalid input exits with code 2 and the reason on stderr. CPU-time and address-space
/// limits back the parent's CPU-time and resident-memory watch (which samples, so a burst
/// could slip past it). Returns the process's exit code.
pub fn run_child(
    engine: &EngineOptions,
    tier: Tier,
    background: bool,
    cpu: Duration,
    memory: u64,
) -> i32 {
    // The compiler dies with the host: a host killed mid-compile leaves no orphan compiling on.
    // SAFETY: prctl with PR_SET_PDEATHSIG reads only its integer arguments.
    #[allow(unsafe_code)]
    let _ = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    if background {
        // Before the compiler's threads start: on Linux each thread has its own nice value,
        // and new threads take their creator's.
        // SAFETY: setpriority only reads its integer arguments.
        #[allow(unsafe_code)]
        let _ = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, BACKGROUND_NICE) };
    }
    // CPU time adds up over the compiler's threads: the wall-clock bound times the cores is
    // what a compile within that bound can use (with one core's worth, a big component compiled
    // on two cores was stopped at half the time the operator allowed).
    let secs = cpu.as_secs().max(1).saturating_mul(cores());
    let _ = rlimit::setrlimit(rlimit::Resource::CPU, secs + 1, secs + 2);
    // Address space is more than resident memory (thread stacks, allocator arenas, the
    // engine's reservations): allow twice the bound plus 1 GiB before the allocator fails.
    let space = memory.saturating_mul(2).saturating_add(1 << 30);
    let _ = rlimit::setrlimit(rlimit::Resource::AS, space, space);
    let mut bytes = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut bytes) {
        eprintln!("reading the component: {e}");
        return 1;
    }
    let (artifact, cache) = match crate::engine::compile_artifact(engine, &bytes, tier) {
        Ok(a) => a,
        Err(ComponentError::Invalid(m)) => {
            eprintln!("{m}");
            return EXIT_INVALID;
        }
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    if let Err(e) = std::io::stdout().lock().write_all(&artifact) {
        eprintln!("writing the artifact: {e}");
        return 1;
    }
    if let Some(c) = cache {
        eprintln!(
            "{CACHE_LINE} {} {} {} {}",
            c.hits, c.misses, c.written, c.failed
        );
    }
    0
}
