//! The `ferry` command: `ferry serve` runs a host; the other commands talk to a host's admin API.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use ferry_host::auth;
use ferry_host::client::AdminClient;
use ferry_host::compile_cache::CacheSettings;
use ferry_host::delivery::retry::RetryPolicy;
use ferry_host::delivery::{DeliveryOptions, InvocationView};
use ferry_host::engine::EngineOptions;
use ferry_host::manifest::{Ceilings, Manifest};
use ferry_host::model::parse_size;
use ferry_host::outbound::OutboundOptions;
use ferry_host::server::{self, ServeOptions};
use ferry_host::store::{Damaged, Recovery};
use serde_json::Value;

/// mimalloc: glibc's malloc contends on its arena locks when many tasks allocate at once.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Ferry runs WebAssembly components as functions: on HTTP requests, on CloudEvents from NATS, and
/// asynchronously with the delivery guarantee you pick.
///
/// `ferry serve` runs a host; the other commands manage a running host through its admin API.
#[derive(Parser)]
#[command(name = "ferry", version, args_override_self = true)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// The options every command takes.
#[derive(clap::Args)]
struct Global {
    /// Admin API of the host to talk to.
    #[arg(
        long,
        global = true,
        env = "FERRY_ADMIN",
        default_value = "http://127.0.0.1:8081"
    )]
    admin: String,
    /// Admin API token. `serve` requires it on every admin request but /healthz and /readyz
    /// (default: the one kept in DATA_DIR/admin.token, made on first start); the other commands
    /// send it (default: the one kept in the data directory of a host on this machine).
    #[arg(long, global = true, env = "FERRY_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A file holding the admin token, so that it need not appear on a command line (--token or
    /// FERRY_TOKEN, when also given, wins).
    #[arg(
        long,
        global = true,
        env = "FERRY_TOKEN_FILE",
        conflicts_with = "token"
    )]
    token_file: Option<PathBuf>,
    /// The host's data directory: where `serve` keeps its store and admin token, and where the
    /// other commands look for the token [default for serve: ./.ferry; the other commands look
    /// for .ferry/admin.token in this directory and its parents].
    #[arg(long, global = true, env = "FERRY_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Print JSON instead of human-readable output.
    #[arg(long, global = true, env = "FERRY_JSON")]
    json: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Run a Ferry host: public listener for functions, admin listener for management.
    Serve(Box<ServeArgs>),
    /// Deploy a component: `ferry deploy FILE.wasm`, or `ferry deploy` in a folder with ferry.toml.
    Deploy(DeployArgs),
    /// List deployed functions.
    List,
    /// Show one function.
    Show {
        /// Function name.
        name: String,
    },
    /// The inner loop: build, deploy (to the host at --admin, or to one it starts), print where
    /// the function is served, stream its logs and outcomes, rebuild and redeploy on every change.
    Dev(ferry_host::dev_cli::DevArgs),
    /// Build the function project in this folder (`cargo build --target wasm32-wasip2 --release`,
    /// or `cargo component build --release` with --component) and say what came out.
    Build(ferry_host::build_cli::BuildArgs),
    /// Call a function through the public listener: an HTTP request, or a CloudEvent for an
    /// event function; `--async` (with `--wait`, `--callback`) for an asynchronous invocation.
    Invoke(ferry_host::invoke_cli::InvokeArgs),
    /// Make a new function project: `ferry new http NAME` or `ferry new event NAME`, then build
    /// and deploy it with the commands its README gives.
    New {
        /// What kind of function.
        #[arg(value_enum)]
        kind: ferry_host::scaffold::Kind,
        /// The function's name (lower-case letters, digits and dashes); also the folder's.
        name: String,
        /// The language of the project.
        #[arg(long, value_enum, default_value = "rust")]
        lang: ferry_host::scaffold::Lang,
        /// Where to make it (default: ./NAME); must not exist or be empty.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Write Ferry's WIT (the `http-function` and `event-function` worlds and the WASI packages
    /// they use) for a guest project to bind to.
    Wit {
        /// The folder to write into (world.wit and deps/).
        #[arg(long, default_value = "wit")]
        out: PathBuf,
        /// Write the WASI packages at this 0.2 release instead of the one Ferry vendors (for
        /// tools that bind to one release only: componentize-js needs 0.2.10). Items newer than
        /// the release are left out; a host serves every 0.2 release.
        #[arg(long, value_name = "0.2.N")]
        wasi: Option<String>,
        /// Also write the Rust bindings of the event-function world to this file (what
        /// `ferry new event` puts in src/world.rs; for Ferry's own WASI release only).
        #[arg(long, value_name = "FILE", conflicts_with = "wasi")]
        rust: Option<PathBuf>,
    },
    /// The host (version, uptime, store, NATS) and every function: triggers and their state,
    /// invocations, failure rate and p50/p99 duration over the last 5 minutes, dead letters.
    Status,
    /// Show what a function wrote to stdout and stderr, with times and invocation ids.
    Logs {
        /// Function name.
        name: String,
        /// Keep printing new lines as they are written (until interrupted).
        #[arg(short, long)]
        follow: bool,
        /// Only this invocation's lines (its id: the `ferry-invocation-id` response header, or
        /// an asynchronous invocation's id).
        #[arg(long)]
        invocation: Option<String>,
        /// Only lines newer than this: a duration back from now (`10m`, `2h`) or an RFC 3339
        /// time.
        #[arg(long)]
        since: Option<String>,
        /// At most this many lines (the newest) before following.
        #[arg(long, default_value_t = 1000)]
        tail: usize,
    },
    /// Remove a function.
    Rm {
        /// Function name.
        name: String,
    },
    /// Serve an earlier version again (its component and manifest), as a new version.
    Rollback {
        /// Function name.
        name: String,
        /// The version to serve again; default: the newest kept one before the current one.
        #[arg(long)]
        to: Option<u64>,
    },
    /// Dead letters: invocations (or callbacks) that failed for good.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// The embedded store of a stopped host: check it.
    #[command(subcommand)]
    Store(StoreCommand),
    /// Copy every record of a running host's store into DIR (the host goes on serving).
    Backup {
        /// A new or empty directory for the backup.
        dir: PathBuf,
    },
    /// Used by `ferry serve`: compile the component on stdin into an artifact on stdout.
    #[command(name = "internal-compile", hide = true)]
    InternalCompile(InternalCompileArgs),
    /// Make a new store in --data-dir from a backup made by `ferry backup` (the host must be
    /// stopped, and the data directory must hold no store).
    Restore {
        /// The backup directory.
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Read every record of the store and report what is unreadable (exit code 3 if anything
    /// is). The host using the data directory (--data-dir) must be stopped.
    Check,
}

#[derive(Subcommand)]
enum DlqCommand {
    /// List dead letters.
    List,
    /// Show one dead letter with its attempt history.
    Show { id: String },
    /// Submit a dead letter again.
    Replay { id: String },
    /// Remove one dead letter, or all with --all.
    Purge {
        id: Option<String>,
        #[arg(long, conflicts_with = "id")]
        all: bool,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Public listener: functions, asynchronous invocations and their status URLs.
    #[arg(long, env = "FERRY_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Admin listener: deploy and manage, /healthz.
    #[arg(long, env = "FERRY_ADMIN_LISTEN", default_value = "127.0.0.1:8081")]
    admin_listen: SocketAddr,
    /// Turn admin authentication off. Refused unless the admin listener is a loopback address.
    #[arg(long, env = "FERRY_INSECURE_NO_ADMIN_AUTH")]
    insecure_no_admin_auth: bool,
    /// Largest component upload accepted.
    #[arg(long, env = "FERRY_MAX_UPLOAD", default_value = "64MiB", value_parser = parse_size)]
    max_upload: u64,
    /// Instances that may be alive at once across all functions (sizes the pooling allocator).
    #[arg(long, env = "FERRY_MAX_INSTANCES", default_value_t = 1000)]
    max_instances: u32,
    /// Ceiling of any function's memory limit.
    #[arg(long, env = "FERRY_MAX_MEMORY", default_value = "256MiB", value_parser = parse_size)]
    max_memory: u64,
    /// Ceiling of any function's timeout.
    #[arg(long, env = "FERRY_MAX_TIMEOUT", default_value = "15m", value_parser = humantime::parse_duration)]
    max_timeout: Duration,
    /// Ceiling of any function's `limits.outbound_requests` (outbound HTTP requests per
    /// invocation).
    #[arg(long, env = "FERRY_MAX_OUTBOUND_REQUESTS", default_value_t = 256)]
    max_outbound_requests: u32,
    /// Ceiling of any function's `limits.max_body` and `limits.max_response`.
    #[arg(long, env = "FERRY_MAX_BODY", default_value = "256MiB", value_parser = parse_size)]
    max_body: u64,
    /// Ceiling of any function's `limits.queue` (callers waiting for a busy function).
    #[arg(long, env = "FERRY_MAX_QUEUE", default_value_t = 10_000)]
    max_queue: u32,
    /// The host's default of a `[limits]` key for functions whose manifest does not set it:
    /// KEY=VALUE with the manifest's keys and values, like memory=64MiB (repeatable;
    /// comma-separated in the env var).
    #[arg(
        long = "limit-default",
        env = "FERRY_LIMIT_DEFAULTS",
        value_delimiter = ','
    )]
    limit_defaults: Vec<String>,
    /// Linear memory all instances together may hold; an instance that would pass it gets
    /// no more (and its caller 503). Default: half of this machine's memory.
    #[arg(long, env = "FERRY_MAX_TOTAL_MEMORY", value_parser = parse_size)]
    max_total_memory: Option<u64>,
    /// The longest compiling one upload may take with the machine to itself (its CPU time over
    /// the cores); a component that takes longer is refused.
    #[arg(long, env = "FERRY_MAX_COMPILE_TIME", default_value = "120s", value_parser = humantime::parse_duration)]
    max_compile_time: Duration,
    /// The most memory compiling one upload may use; a component that needs more is refused.
    #[arg(long, env = "FERRY_MAX_COMPILE_MEMORY", default_value = "2GiB", value_parser = parse_size)]
    max_compile_memory: u64,
    /// Serve a new component within seconds with code from wasmtime's baseline compiler
    /// (Winch), while Cranelift compiles the optimised code in the background; false: deploys
    /// wait for the optimised code.
    #[arg(long, env = "FERRY_BASELINE_COMPILE", default_value_t = true, action = clap::ArgAction::Set)]
    baseline_compile: bool,
    /// Make the optimised code (Cranelift) of what baseline code serves; false: baseline code
    /// keeps serving, and no compile runs behind it (a development or CI host, a machine
    /// whose CPU is worth more than the functions' speed).
    #[arg(long, env = "FERRY_OPTIMIZED_COMPILE", default_value_t = true, action = clap::ArgAction::Set)]
    optimized_compile: bool,
    /// The disk Cranelift's per-function compile cache (`compile-cache/` in the data
    /// directory) is trimmed to, least recently used first, at start and after each compile
    /// that adds to it; it stops growing while less than twice this is free. A component whose
    /// functions were compiled before (the same language runtime, an edited function) compiles
    /// in a fraction of the time. 0 turns the cache off.
    #[arg(long, env = "FERRY_COMPILE_CACHE_SIZE", default_value = "1GiB", value_parser = parse_size)]
    compile_cache_size: u64,
    /// Where the compile cache lives, instead of `compile-cache/` in the data directory. Hosts
    /// of one user on one machine may share one: each compiles only the functions none of them
    /// compiled before (the data directory's own `compile-cache/` is then removed).
    #[arg(long, env = "FERRY_COMPILE_CACHE_DIR")]
    compile_cache_dir: Option<PathBuf>,
    /// Uploads compiled at once; more wait their turn.
    #[arg(long, env = "FERRY_COMPILE_JOBS", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    compile_jobs: u32,
    /// The WebAssembly call stack each instance may use (one engine-wide setting).
    #[arg(long, env = "FERRY_MAX_WASM_STACK", default_value = "512KiB", value_parser = parse_size)]
    max_wasm_stack: u64,
    /// Guest output kept for each function (`ferry logs`), newest lines; older ones are dropped.
    #[arg(long, env = "FERRY_LOG_BUFFER", default_value = "1MiB", value_parser = parse_size)]
    log_buffer: u64,
    /// Also put each invocation's outcome (trigger, mode, outcome, duration, error) into its
    /// function's log, as stream `outcome` (`ferry dev` turns it on for the host it starts).
    #[arg(long, env = "FERRY_LOG_OUTCOMES")]
    log_outcomes: bool,
    /// The host log's format on stderr: `human` (one line per record) or `json` (one JSON object
    /// per line, for log collectors).
    #[arg(long, env = "FERRY_LOG_FORMAT", default_value = "human", value_parser = ["human", "json"])]
    log_format: String,
    /// Host a guest may reach with outbound HTTP even though it resolves to a loopback, private
    /// or other non-public address: HOST (any port) or HOST:PORT (repeatable). The function must
    /// still list the host in `[outbound] allow`; this host's own listeners are never allowed.
    #[arg(
        long = "allow-private-outbound",
        env = "FERRY_ALLOW_PRIVATE_OUTBOUND",
        value_delimiter = ','
    )]
    allow_private_outbound: Vec<String>,
    /// Longest a guest's outbound connection (with its TLS handshake) may take.
    #[arg(long, env = "FERRY_OUTBOUND_CONNECT_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    outbound_connect_timeout: Duration,
    /// Longest one outbound request of a guest may take, from send to the last response byte.
    #[arg(long, env = "FERRY_OUTBOUND_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    outbound_timeout: Duration,
    /// Largest response body a guest's outbound request may receive.
    #[arg(long, env = "FERRY_OUTBOUND_MAX_RESPONSE", default_value = "64MiB", value_parser = parse_size)]
    outbound_max_response: u64,
    /// How long a client may take to send a request head, and how long a kept-alive connection
    /// may stay idle; then the connection is closed.
    #[arg(long, env = "FERRY_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    header_read_timeout: Duration,
    /// How long a request body Ferry reads whole (an asynchronous submit, a webhook delivery)
    /// may take to arrive; then 408.
    #[arg(long, env = "FERRY_BODY_READ_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    body_read_timeout: Duration,
    /// Largest request head (request line and headers); larger gets 431.
    #[arg(long, env = "FERRY_MAX_HEADER_SIZE", default_value = "64KiB", value_parser = parse_size)]
    max_header_size: u64,
    /// Connections the public listener keeps open at once; more are answered 503 and closed.
    #[arg(long, env = "FERRY_MAX_CONNECTIONS", default_value_t = 10_000)]
    max_connections: usize,
    /// Store-and-forward attempts (and fire-and-forget invocations) running at once.
    #[arg(long, env = "FERRY_WORKERS", default_value_t = 32)]
    workers: usize,
    /// The most asynchronous workers one function may hold at once, so that a slow function
    /// leaves workers for the others [default: three quarters of --workers].
    #[arg(long, env = "FERRY_WORKERS_PER_FUNCTION")]
    workers_per_function: Option<usize>,
    /// Capacity of the fire-and-forget queue; a full queue answers 503.
    #[arg(long, env = "FERRY_QUEUE_SIZE", default_value_t = 10_000)]
    queue_size: usize,
    /// How long finished invocations and idempotency keys are kept.
    #[arg(long, env = "FERRY_RETENTION", default_value = "24h", value_parser = humantime::parse_duration)]
    retention: Duration,
    /// Callback host allowed even if it resolves to a loopback/private/link-local address (repeatable).
    #[arg(
        long = "allow-callback-host",
        env = "FERRY_ALLOW_CALLBACK_HOST",
        value_delimiter = ','
    )]
    allow_callback_hosts: Vec<String>,
    /// Secret that signs callbacks (whsec_...); generated and kept in the data directory if unset.
    #[arg(long, env = "FERRY_CALLBACK_SECRET", hide_env_values = true)]
    callback_secret: Option<String>,
    /// Attempts to deliver one callback.
    #[arg(long, env = "FERRY_CALLBACK_MAX_ATTEMPTS", default_value_t = 8)]
    callback_max_attempts: u32,
    /// First callback retry delay ceiling.
    #[arg(long, env = "FERRY_CALLBACK_BACKOFF_INITIAL", default_value = "1s", value_parser = humantime::parse_duration)]
    callback_backoff_initial: Duration,
    /// Longest callback retry delay.
    #[arg(long, env = "FERRY_CALLBACK_BACKOFF_MAX", default_value = "5m", value_parser = humantime::parse_duration)]
    callback_backoff_max: Duration,
    /// NATS server for NATS triggers, e.g. nats://127.0.0.1:4222.
    #[arg(long, env = "FERRY_NATS")]
    nats: Option<String>,
    /// Cluster mode: share functions, components, invocations and the work queue with every
    /// host on these NATS JetStream servers (comma-separated URLs; nats-server 2.11 or newer).
    #[arg(long, env = "FERRY_CLUSTER")]
    cluster: Option<String>,
    /// The prefix of the cluster's bucket names, so that clusters can share a NATS account.
    #[arg(long, env = "FERRY_CLUSTER_PREFIX", default_value = "ferry")]
    cluster_prefix: String,
    /// Copies of each cluster bucket and stream (at most the number of NATS servers; 1 to 5).
    /// Default: 3 when the NATS cluster has three servers or more, else 1.
    #[arg(long, env = "FERRY_CLUSTER_REPLICAS", value_parser = clap::value_parser!(u8).range(1..=5))]
    cluster_replicas: Option<u8>,
    /// After Ctrl-C or SIGTERM, how long requests and asynchronous attempts in flight may take
    /// to finish; attempts still running then are recorded as interrupted (store-and-forward
    /// ones run again on the next start).
    #[arg(long, env = "FERRY_SHUTDOWN_GRACE", default_value = "30s", value_parser = humantime::parse_duration)]
    shutdown_grace: Duration,
    /// Flush the store once per store-and-forward submit instead of group commit (a benchmark
    /// baseline; slower).
    #[arg(long, env = "FERRY_FLUSH_PER_SUBMIT")]
    flush_per_submit: bool,
    /// How many versions of each function keep their component in the store (the deployed one
    /// included); older components and their compiled code are removed.
    #[arg(long, env = "FERRY_KEEP_VERSIONS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    keep_versions: u32,
    /// If the store is damaged, move it aside (to quarantine/ in the data directory) and start
    /// with every record that can still be read from it.
    #[arg(long, conflicts_with = "quarantine")]
    repair: bool,
    /// If the store is damaged, move it aside (to quarantine/ in the data directory) and start
    /// with an empty store.
    #[arg(long)]
    quarantine: bool,
}

#[derive(clap::Args)]
struct InternalCompileArgs {
    #[arg(long, value_parser = ["baseline", "optimized"])]
    tier: String,
    #[arg(long)]
    background: bool,
    #[arg(long)]
    max_instances: u32,
    #[arg(long, value_parser = parse_size)]
    max_memory: u64,
    #[arg(long, value_parser = parse_size)]
    max_wasm_stack: u64,
    #[arg(long, value_parser = humantime::parse_duration)]
    max_compile_time: Duration,
    #[arg(long, value_parser = parse_size)]
    max_compile_memory: u64,
    #[arg(long, requires = "compile_cache_size")]
    compile_cache: Option<PathBuf>,
    #[arg(long, value_parser = parse_size)]
    compile_cache_size: Option<u64>,
}

#[derive(clap::Args)]
struct DeployArgs {
    /// The component. Without it, the component named by ferry.toml is deployed.
    file: Option<PathBuf>,
    /// Function name (default: the file name without extension).
    #[arg(long, env = "FERRY_NAME")]
    name: Option<String>,
    /// Extra HTTP route, like /api/... (repeatable).
    #[arg(long = "route", env = "FERRY_ROUTE", value_delimiter = ',')]
    routes: Vec<String>,
    /// The manifest to deploy with (default: ./ferry.toml when no FILE is given).
    #[arg(long, env = "FERRY_MANIFEST")]
    manifest: Option<PathBuf>,
}

/// Prints one line of the CLI's own output. A closed pipe (`ferry list | head -1`) ends the
/// command quietly instead of panicking, as a Unix tool would.
macro_rules! say {
    ($($arg:tt)*) => {
        emit(format_args!($($arg)*))
    };
}

fn emit(line: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(line).and_then(|()| out.write_all(b"\n")) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: failed to write to standard output: {e}");
        std::process::exit(1);
    }
}

/// The exit code of a damaged store: `serve` refused to start, or `store check` found problems.
const EXIT_DAMAGED: u8 = 3;

fn main() -> std::process::ExitCode {
    // mimalloc asks for transparent huge pages for its memory, and one touched byte then takes
    // 2 MiB: an idle host held 70 MB instead of 25. Pages touched from here on are small.
    #[cfg(target_os = "linux")]
    #[allow(unsafe_code)]
    // SAFETY: prctl with PR_SET_THP_DISABLE takes integer arguments and changes only this
    // process's paging policy.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if let Some(damage) = e.chain().find_map(|c| c.downcast_ref::<Damaged>()) {
                let dir = damage.dir.display();
                eprintln!(
                    "Ferry did not start. What to do:\n  \
                     - see what is unreadable:   ferry store check --data-dir {dir}\n  \
                     - keep what can be read:    ferry serve --repair --data-dir {dir}\n  \
                     - start with an empty store: ferry serve --quarantine --data-dir {dir}\n\
                     Both flags move the damaged store to {dir}/quarantine/ first; nothing is deleted."
                );
                return std::process::ExitCode::from(EXIT_DAMAGED);
            }
            std::process::ExitCode::FAILURE
        }
    }
}

/// The data directory `serve`, `restore` and `store check` use: `--data-dir`, else `./.ferry`
/// (relative to where the command runs; `serve` prints the absolute path on start).
fn data_dir(cli: &Global) -> PathBuf {
    cli.data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("./.ferry"))
}

/// A client of the admin API with the token the CLI found (see [`auth::for_cli`]).
fn client(cli: &Global) -> anyhow::Result<AdminClient> {
    let (token, looked) = auth::for_cli(&given(cli), &cli.admin, cli.data_dir.as_deref())?;
    AdminClient::new(&cli.admin, token, looked)
}

fn given(cli: &Global) -> auth::Given {
    auth::Given {
        token: cli.token.clone(),
        token_file: cli.token_file.clone(),
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let Cli {
        global: cli,
        command,
    } = cli;
    match command {
        Command::InternalCompile(a) => {
            let engine = EngineOptions {
                max_instances: a.max_instances,
                max_memory: a.max_memory,
                max_wasm_stack: a.max_wasm_stack,
                compile_cache: a.compile_cache.map(|dir| CacheSettings {
                    dir,
                    max_size: a.compile_cache_size.unwrap_or(0),
                }),
                ..EngineOptions::default()
            };
            let tier = if a.tier == "baseline" {
                ferry_host::engine::Tier::Baseline
            } else {
                ferry_host::engine::Tier::Optimized
            };
            std::process::exit(ferry_host::compiler::run_child(
                &engine,
                tier,
                a.background,
                a.max_compile_time,
                a.max_compile_memory,
            ))
        }
        Command::Store(StoreCommand::Check) => store_check(&data_dir(&cli), cli.json),
        Command::Backup { dir } => backup(&client(&cli)?, &dir, cli.json),
        Command::Restore { dir } => {
            let data_dir = data_dir(&cli);
            let counts = ferry_host::store::backup::restore(&dir, &data_dir)?;
            print_counts(
                &format!("restored into {}", data_dir.display()),
                &counts,
                cli.json,
            );
            Ok(())
        }
        Command::Serve(args) => serve(*args, given(&cli).resolve()?, data_dir(&cli)),
        Command::Deploy(args) => {
            let out = deploy(&client(&cli)?, args)?;
            print_function(&out, cli.json, "deployed");
            Ok(())
        }
        Command::List => {
            let list = client(&cli)?.list()?;
            if cli.json {
                say!("{list:#}");
            } else {
                print_list(&list);
            }
            Ok(())
        }
        Command::Show { name } => {
            let f = client(&cli)?.get(&name)?;
            print_function(&f, cli.json, "function");
            Ok(())
        }
        Command::Dlq(cmd) => dlq(&client(&cli)?, cmd, cli.json),
        Command::Dev(ref args) => ferry_host::dev_cli::run(
            &cli.admin,
            &given(&cli),
            cli.data_dir.as_deref(),
            cli.json,
            args,
        ),
        Command::Build(ref args) => {
            let built = ferry_host::build_cli::run(args)?;
            if cli.json {
                say!("{}", serde_json::to_string(&built)?);
            } else {
                say!(
                    "built {} ({}, {} function)",
                    built.component.display(),
                    bytesize::ByteSize(built.size),
                    built.world
                );
            }
            Ok(())
        }
        Command::Invoke(ref args) => {
            let invoked = ferry_host::invoke_cli::run(&client(&cli)?, args, cli.json)?;
            if !invoked.output.is_empty() {
                say!("{}", invoked.output);
            }
            if !invoked.ok {
                bail!("function {} failed (the answer is above)", args.name);
            }
            Ok(())
        }
        Command::New {
            kind,
            ref name,
            lang,
            ref dir,
        } => {
            let dir = dir.clone().unwrap_or_else(|| PathBuf::from(name));
            let files = ferry_host::scaffold::new_project(kind, lang, name, &dir)?;
            if cli.json {
                say!(
                    "{}",
                    serde_json::json!({ "name": name, "dir": dir, "files": files })
                );
            } else {
                let kind = match kind {
                    ferry_host::scaffold::Kind::Http => "HTTP",
                    ferry_host::scaffold::Kind::Event => "event",
                };
                say!("made the {kind} function {name} in {}/:", dir.display());
                for f in files.iter().filter(|f| !f.starts_with("wit/deps/")) {
                    say!("  {f}");
                }
                say!("try it (see its README.md):");
                say!("  cd {}", dir.display());
                say!("  ferry dev      # builds, deploys, streams its output, redeploys on save");
            }
            Ok(())
        }
        Command::Wit {
            ref out,
            ref wasi,
            ref rust,
        } => {
            let patch = wasi
                .as_deref()
                .map(ferry_host::scaffold::parse_wasi)
                .transpose()?;
            // The bindings first: a --rust that names a folder is refused before anything is
            // written.
            if let Some(file) = rust {
                ferry_host::scaffold::write_rust_bindings(file)?;
            }
            let files = ferry_host::scaffold::write_wit(out, patch)?;
            let wasi = patch.map_or_else(
                || ferry_host::scaffold::WASI.to_string(),
                |p| format!("0.2.{p}"),
            );
            if cli.json {
                say!(
                    "{}",
                    serde_json::json!({ "files": files, "wasi": wasi, "rust": rust })
                );
            } else {
                say!(
                    "wrote Ferry's WIT ({} files, WASI {wasi}) to {}/: worlds ferry:function/http-function and ferry:function/event-function",
                    files.len(),
                    out.display()
                );
                if let Some(file) = rust {
                    say!(
                        "wrote the Rust bindings of ferry:function/event-function to {}",
                        file.display()
                    );
                }
            }
            Ok(())
        }
        Command::Status => {
            let status = client(&cli)?.status()?;
            if cli.json {
                say!("{status:#}");
            } else {
                print_status(&status);
            }
            Ok(())
        }
        Command::Logs {
            ref name,
            follow,
            ref invocation,
            ref since,
            tail,
        } => {
            let client = client(&cli)?;
            let mut query = vec![("limit", tail.to_string())];
            if let Some(i) = invocation {
                query.push(("invocation", i.clone()));
            }
            if let Some(s) = since {
                query.push(("since", s.clone()));
            }
            let mut page = client.logs(name, &query)?;
            loop {
                for line in page["lines"].as_array().into_iter().flatten() {
                    if cli.json {
                        say!("{line}");
                    } else {
                        let s = |k: &str| line[k].as_str().unwrap_or("");
                        say!(
                            "{} {} {} {}",
                            s("time"),
                            s("invocation"),
                            s("stream"),
                            s("text")
                        );
                    }
                }
                if !follow {
                    return Ok(());
                }
                let next = page["next"].as_u64().unwrap_or(0);
                query.retain(|(k, _)| *k == "invocation");
                query.push(("after", next.to_string()));
                query.push(("wait", "25s".into()));
                query.push(("limit", "1000".into()));
                page = client.logs(name, &query)?;
                query.retain(|(k, _)| *k == "invocation");
            }
        }
        Command::Rollback { name, to } => {
            let record = client(&cli)?.rollback(&name, to)?;
            if cli.json {
                say!("{record:#}");
            } else {
                say!(
                    "rolled back {name}: version {} serves the component {}",
                    record["version"],
                    record["digest"].as_str().unwrap_or("?")
                );
            }
            Ok(())
        }
        Command::Rm { name } => {
            client(&cli)?.remove(&name)?;
            if cli.json {
                say!("{}", serde_json::json!({ "removed": name }));
            } else {
                say!("removed {name}");
            }
            Ok(())
        }
    }
}

/// `ferry status` for people: a line about the host, then a table of functions.
fn print_status(status: &Value) {
    let host = &status["host"];
    let uptime = humantime::format_duration(Duration::from_secs(
        host["uptime_seconds"].as_u64().unwrap_or(0),
    ));
    let store = &host["store"];
    let nats = host["nats"]
        .as_str()
        .map_or(String::new(), |s| format!(" · NATS {s}"));
    say!(
        "ferry {} up {uptime} · {} · store {} {} · instances {}/{}{nats} · dead letters {}",
        host["version"].as_str().unwrap_or("?"),
        if host["ready"] == true {
            "ready"
        } else {
            "NOT READY"
        },
        store["status"].as_str().unwrap_or("?"),
        bytesize::ByteSize(store["size_bytes"].as_u64().unwrap_or(0)),
        host["instances"]["in_use"],
        host["instances"]["capacity"],
        host["dead_letters"],
    );
    if let Some(errors) = store["errors"].as_object().filter(|e| !e.is_empty()) {
        for (part, error) in errors {
            say!("  store {part}: {}", error.as_str().unwrap_or(""));
        }
    }
    say!(
        "{:<24} {:>7} {:<6} {:>8} {:>7} {:>9} {:>9} {:>5}  TRIGGERS",
        "FUNCTION",
        "VERSION",
        "WORLD",
        "LAST 5M",
        "FAILED",
        "P50",
        "P99",
        "DEAD"
    );
    let ms = |v: &Value| v.as_f64().map_or("-".to_string(), |m| format!("{m:.1}ms"));
    for f in status["functions"].as_array().into_iter().flatten() {
        let recent = &f["last_5m"];
        let triggers: Vec<String> = f["triggers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| {
                format!(
                    "{} {}",
                    t["kind"].as_str().unwrap_or("?"),
                    t["state"].as_str().unwrap_or("?")
                )
            })
            .collect();
        say!(
            "{:<24} {:>7} {:<6} {:>8} {:>6.1}% {:>9} {:>9} {:>5}  {}",
            f["name"].as_str().unwrap_or("?"),
            // (A JSON value ignores width: pad its text.)
            f["version"].to_string(),
            f["world"].as_str().unwrap_or("?"),
            recent["invocations"].to_string(),
            recent["failure_rate"].as_f64().unwrap_or(0.0) * 100.0,
            ms(&recent["p50_ms"]),
            ms(&recent["p99_ms"]),
            f["dead_letters"].to_string(),
            triggers.join(", ")
        );
    }
    print_cluster(&status["cluster"]);
}

/// The hosts of a cluster, in `ferry status` (nothing on a host alone).
fn print_cluster(cluster: &Value) {
    let Some(hosts) = cluster["hosts"].as_array() else {
        return;
    };
    let this = cluster["this_host"].as_str().unwrap_or("");
    say!(
        "\n{:<34} {:<8} {:<9} {:>9} {:>8} {:>7} {:>10}  ADMIN",
        "CLUSTER HOST",
        "STATE",
        "VERSION",
        "HEARTBEAT",
        "RUNNING",
        "QUEUED",
        "FUNCTIONS"
    );
    for h in hosts {
        let id = h["id"].as_str().unwrap_or("?");
        let age = h["heartbeat_age_ms"].as_u64().unwrap_or(0);
        say!(
            "{:<34} {:<8} {:<9} {:>9} {:>8} {:>7} {:>10}  {}",
            if id == this {
                format!("{id} *")
            } else {
                id.to_string()
            },
            h["state"].as_str().unwrap_or("?"),
            h["version"].as_str().unwrap_or("?"),
            format!("{:.1}s ago", age as f64 / 1000.0),
            h["load"]["running"].to_string(),
            h["load"]["queued"].to_string(),
            h["load"]["functions"].to_string(),
            h["admin_url"].as_str().unwrap_or("")
        );
    }
}

fn serve(args: ServeArgs, token: Option<auth::Token>, data_dir: PathBuf) -> anyhow::Result<()> {
    if !args.baseline_compile && !args.optimized_compile {
        anyhow::bail!(
            "--baseline-compile false and --optimized-compile false leave no compiler: turn one \
             of them on (the baseline compiler serves a deploy within seconds, the optimized \
             code runs faster)"
        );
    }
    let filter = tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let log = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if args.log_format == "json" {
        // One object per line: time, level, target, the record's fields (invocation, function,
        // trace_id, ...) flattened, and the spans it happened in.
        log.json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .init();
    } else {
        log.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
    // Every connection is a file: use all the process may have (the soft limit is often 1,024).
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(open_files = n, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")?;
    // Optional span export (OTEL_EXPORTER_OTLP_ENDPOINT); its client runs on a thread of its own.
    if let Some(endpoint) = ferry_host::otel::init_from_env()? {
        tracing::info!(%endpoint, "exporting spans over OTLP");
    }
    let compile_cache = ferry_host::compile_cache::settle(
        &data_dir,
        args.compile_cache_dir.as_deref(),
        args.compile_cache_size,
    )?;
    let served = runtime.block_on(server::serve(ServeOptions {
        listen: args.listen,
        admin_listen: args.admin_listen,
        data_dir,
        admin_token: token,
        no_admin_auth: args.insecure_no_admin_auth,
        max_upload: args.max_upload,
        engine: EngineOptions {
            max_instances: args.max_instances,
            max_memory: args.max_memory,
            max_total_memory: args.max_total_memory,
            max_wasm_stack: args.max_wasm_stack,
            log_buffer: usize::try_from(args.log_buffer).unwrap_or(usize::MAX),
            log_outcomes: args.log_outcomes,
            baseline: args.baseline_compile,
            compile_cache,
            outbound: OutboundOptions {
                allow_private: args.allow_private_outbound,
                connect_timeout: args.outbound_connect_timeout,
                timeout: args.outbound_timeout,
                max_response: args.outbound_max_response,
            },
            own_listeners: Vec::new(),
            compile: Some(ferry_host::compiler::CompileLimits {
                // This very binary, even if the file was replaced since it started (an upgrade
                // in place), so that its artifacts load.
                exe: if Path::new("/proc/self/exe").exists() {
                    PathBuf::from("/proc/self/exe")
                } else {
                    std::env::current_exe()
                        .context("cannot find the ferry binary to run the compiler")?
                },
                timeout: args.max_compile_time,
                memory: args.max_compile_memory,
                jobs: args.compile_jobs as usize,
            }),
        },
        ceilings: Ceilings {
            max_memory: args.max_memory,
            max_concurrency: args.max_instances,
            max_timeout: args.max_timeout,
            max_outbound_requests: args.max_outbound_requests,
            max_body: args.max_body,
            max_queue: args.max_queue,
            ..Ceilings::default()
        }
        .with_defaults(&args.limit_defaults)
        .map_err(anyhow::Error::msg)?,
        callback_secret: args.callback_secret,
        nats: args.nats,
        cluster: args
            .cluster
            .map(|servers| ferry_host::server::ClusterOptions {
                servers,
                prefix: args.cluster_prefix,
                replicas: args.cluster_replicas.map(usize::from),
            }),
        keep_versions: args.keep_versions as usize,
        optimized_compile: args.optimized_compile,
        http: ferry_triggers::http::HttpOptions {
            header_read_timeout: args.header_read_timeout,
            body_read_timeout: args.body_read_timeout,
            max_header_size: args.max_header_size as usize,
            max_connections: args.max_connections,
            shutdown_grace: args.shutdown_grace,
        },
        recovery: if args.repair {
            Some(Recovery::Repair)
        } else if args.quarantine {
            Some(Recovery::Quarantine)
        } else {
            None
        },
        delivery: DeliveryOptions {
            workers: args.workers.max(1),
            workers_per_function: args.workers_per_function.unwrap_or(0),
            queue_size: args.queue_size.max(1),
            retention: args.retention,
            flush_per_submit: args.flush_per_submit,
            shutdown_grace: args.shutdown_grace,
            allow_callback_hosts: args.allow_callback_hosts,
            callback_retry: RetryPolicy {
                max_attempts: args.callback_max_attempts.max(1),
                initial: args.callback_backoff_initial,
                max: args.callback_backoff_max.max(args.callback_backoff_initial),
                max_age: args.retention,
            },
            ..DeliveryOptions::default()
        },
    }));
    drop(runtime);
    ferry_host::otel::shutdown();
    served
}

fn print_counts(what: &str, counts: &[(&str, usize)], json: bool) {
    if json {
        let map: serde_json::Map<String, Value> = counts
            .iter()
            .map(|(k, n)| (k.to_string(), serde_json::json!(n)))
            .collect();
        say!("{}", serde_json::json!({ "done": what, "counts": map }));
    } else {
        say!("{what}");
        for (k, n) in counts {
            say!("  {n:>8} {k}");
        }
    }
}

/// `ferry backup DIR`: streams the backup into a temporary file, checks it whole, syncs it, and
/// only then gives it its name.
fn backup(client: &AdminClient, dir: &Path, json: bool) -> anyhow::Result<()> {
    use ferry_host::store::backup::{verify, BACKUP_FILE};
    std::fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))?;
    let file = dir.join(BACKUP_FILE);
    if file.exists() {
        bail!(
            "{} already holds a backup; choose a new directory",
            dir.display()
        );
    }
    let partial = dir.join(format!("{BACKUP_FILE}.partial"));
    let mut out = std::fs::File::create(&partial)
        .with_context(|| format!("failed to create {}", partial.display()))?;
    let written = client.backup(&mut out).and_then(|()| {
        out.sync_all()?;
        verify(&partial)
    });
    let counts = match written {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e.context("no backup was made"));
        }
    };
    std::fs::rename(&partial, &file)?;
    std::fs::File::open(dir)?.sync_all()?;
    print_counts(
        &format!("backup written to {}", file.display()),
        &counts,
        json,
    );
    Ok(())
}

fn store_check(data_dir: &Path, json: bool) -> anyhow::Result<()> {
    let report = ferry_host::store::check(data_dir)?;
    if json {
        say!(
            "{:#}",
            serde_json::json!({
                "data_dir": data_dir,
                "counts": report.counts.iter().map(|(k, n)| (k.to_string(), serde_json::json!(n))).collect::<serde_json::Map<_, _>>(),
                "problems": report.problems,
                "notes": report.notes,
            })
        );
    } else {
        say!("store in {}", data_dir.display());
        for (what, n) in &report.counts {
            say!("  {n:>8} {what}");
        }
        for note in &report.notes {
            say!("note: {note}");
        }
        for problem in &report.problems {
            say!("problem: {problem}");
        }
        if report.problems.is_empty() {
            say!("the store is sound");
        }
    }
    if report.problems.is_empty() {
        Ok(())
    } else {
        std::process::exit(EXIT_DAMAGED.into());
    }
}

fn dlq(client: &AdminClient, cmd: DlqCommand, json: bool) -> anyhow::Result<()> {
    match cmd {
        DlqCommand::List => {
            let list = client.dead_letters()?;
            if json {
                say!("{list:#}");
                return Ok(());
            }
            let items: Vec<InvocationView> = serde_json::from_value(list)
                .context("the admin API answered with an unexpected dead-letter list")?;
            if items.is_empty() {
                say!("no dead letters");
            }
            for d in items {
                say!(
                    "{}  {:<20} {:>3} attempts  {}",
                    d.id,
                    d.function,
                    d.attempts,
                    d.dead_letter_reason()
                );
            }
        }
        DlqCommand::Show { id } => say!("{:#}", client.dead_letter(&id)?),
        DlqCommand::Replay { id } => {
            let out = client.replay(&id)?;
            if json {
                say!("{out:#}");
            } else {
                let s = |k: &str| out.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                if s("id") == id {
                    say!(
                        "the callback of {id} is scheduled again ({})",
                        s("status_url")
                    );
                } else {
                    say!(
                        "replayed {id} as a new invocation {} ({})",
                        s("id"),
                        s("status_url")
                    );
                }
            }
        }
        DlqCommand::Purge { id, all } => {
            if id.is_none() && !all {
                bail!("name a dead letter to purge, or pass --all");
            }
            let out = client.purge(id.as_deref())?;
            let n = out.get("purged").and_then(Value::as_u64).unwrap_or(0);
            if json {
                say!("{out}");
            } else {
                say!("purged {n} dead letter(s)");
            }
        }
    }
    Ok(())
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    let bytes =
        std::fs::read(path).with_context(|| format!("failed to read {}", path.display()))?;
    // Progress for the long part: a big component (an interpreter inside, say) takes seconds to
    // upload and compile. On stderr, so that stdout stays the answer.
    if bytes.len() >= PROGRESS_FROM {
        eprintln!(
            "uploading {} ({}); the host compiles it before answering…",
            path.display(),
            bytesize::ByteSize(bytes.len() as u64)
        );
    }
    Ok(bytes)
}

/// Uploads from this size on say that they are under way.
const PROGRESS_FROM: usize = 1 << 20;

fn deploy(client: &AdminClient, args: DeployArgs) -> anyhow::Result<Value> {
    let manifest_path = match (&args.manifest, &args.file) {
        (Some(m), _) => m.clone(),
        (None, None) => {
            let p = PathBuf::from("ferry.toml");
            if !p.exists() {
                bail!("no component given and no ferry.toml in this folder: run `ferry deploy FILE.wasm` or write a ferry.toml");
            }
            p
        }
        (None, Some(file)) => {
            let name = match args.name {
                Some(n) => n,
                None => default_name(file)?,
            };
            let wasm = read(file)?;
            return if args.routes.is_empty() {
                client.deploy_raw(&name, wasm)
            } else {
                let manifest = manifest_for(&name, &args.routes)?;
                client.deploy_with_manifest(&name, wasm, manifest)
            };
        }
    };
    if args.name.is_some() || !args.routes.is_empty() {
        bail!("--name and --route apply to a bare .wasm; with a manifest, set `name` and [[trigger.http]] in {}", manifest_path.display());
    }
    let text = std::fs::read_to_string(&manifest_path)
        .with_context(|| format!("failed to read {}", manifest_path.display()))?;
    let manifest =
        Manifest::parse(&text).with_context(|| format!("in {}", manifest_path.display()))?;
    let file = match (args.file, &manifest.component) {
        (Some(f), _) => f,
        (None, Some(c)) => manifest_path.parent().unwrap_or(Path::new(".")).join(c),
        (None, None) => bail!(
            "{} has no `component = \"path/to/function.wasm\"`; add it or pass the file: ferry deploy FILE.wasm --manifest {}",
            manifest_path.display(),
            manifest_path.display()
        ),
    };
    client.deploy_with_manifest(&manifest.name, read(&file)?, text)
}

/// `hello_http.wasm` deploys as `hello-http`.
fn default_name(file: &Path) -> anyhow::Result<String> {
    let stem = file.file_stem().and_then(|s| s.to_str()).with_context(|| {
        format!(
            "cannot derive a function name from {}; pass --name",
            file.display()
        )
    })?;
    Ok(stem.to_ascii_lowercase().replace('_', "-"))
}

fn manifest_for(name: &str, routes: &[String]) -> anyhow::Result<String> {
    let mut table = toml::Table::new();
    table.insert("name".into(), name.into());
    let http: Vec<toml::Value> = routes
        .iter()
        .map(|r| {
            let mut t = toml::Table::new();
            t.insert("route".into(), r.as_str().into());
            toml::Value::Table(t)
        })
        .collect();
    let mut trigger = toml::Table::new();
    trigger.insert("http".into(), toml::Value::Array(http));
    table.insert("trigger".into(), toml::Value::Table(trigger));
    Ok(toml::to_string(&table)?)
}

fn print_function(f: &Value, json: bool, verb: &str) {
    if json {
        say!("{f:#}");
        return;
    }
    let s = |k: &str| f.get(k).and_then(Value::as_str).unwrap_or("?").to_string();
    let version = f.get("version").and_then(Value::as_u64).unwrap_or(0);
    say!(
        "{verb} {} v{version} ({} function) at {}",
        s("name"),
        s("world"),
        s("url")
    );
    let code = &f["code"];
    if code["tier"] == "baseline" {
        match code["error"].as_str() {
            Some(e) => say!("  served by baseline code: the optimized code could not be made: {e}"),
            None if code["optimizing"] == false => say!(
                "  served by baseline code (this host makes no optimized code: ferry serve \
                 --optimized-compile false)"
            ),
            None => say!(
                "  served by baseline code (compiled in seconds); the optimized code is compiling \
                 in the background and takes over by itself"
            ),
        }
    }
    if let Some(routes) = f.get("routes").and_then(Value::as_array) {
        for r in routes.iter().filter_map(Value::as_str) {
            say!("  route {r}");
        }
    }
    for hook in f
        .get("webhooks")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let at = |k: &str| hook[k]["at"].as_str().unwrap_or("never").to_string();
        say!(
            "  webhook {}  last delivery {}  last refusal {}{}",
            hook["url"].as_str().unwrap_or("?"),
            at("last_delivery"),
            at("last_refusal"),
            hook["last_refusal"]["reason"]
                .as_str()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        );
    }
    let sections = f["triggers"]["poll"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for (section, state) in sections.iter().zip(
        f.get("polls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten(),
    ) {
        let when = section["every"]
            .as_str()
            .map(|e| format!("every {e}"))
            .or_else(|| section["cron"].as_str().map(|c| format!("cron {c:?}")))
            .unwrap_or_default();
        let time = |k: &str| {
            state[k]
                .as_u64()
                .and_then(|ms| {
                    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms as i64)
                        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                })
                .unwrap_or_else(|| "-".into())
        };
        say!(
            "  poll {when}{}  last {}  next {}  {}",
            section["url"]
                .as_str()
                .map(|u| format!(" {u}"))
                .unwrap_or_default(),
            time("last_ms"),
            time("next_ms"),
            state["last_error"]
                .as_str()
                .map(|e| format!("error: {e}"))
                .or_else(|| state["last_result"].as_str().map(str::to_string))
                .unwrap_or_default()
        );
    }
}

fn print_list(list: &Value) {
    let items = list.as_array().cloned().unwrap_or_default();
    if items.is_empty() {
        say!("no functions deployed");
        return;
    }
    say!("{:<24} {:>7} {:<6} URL", "NAME", "VERSION", "WORLD");
    for f in items {
        let s = |k: &str| f.get(k).and_then(Value::as_str).unwrap_or("?").to_string();
        let version = f.get("version").and_then(Value::as_u64).unwrap_or(0);
        say!(
            "{:<24} {:>7} {:<6} {}",
            s("name"),
            version,
            s("world"),
            s("url")
        );
    }
}
