//! `ferry dev`: the inner loop. Builds the project in a folder, uses the host at `--admin` or
//! starts one of its own (store in the project's `.ferry`), deploys, prints where the function
//! is served, streams its logs, and rebuilds and redeploys whenever a source file changes. A
//! build that fails is shown and the last good version keeps serving. Ctrl-C stops the host it
//! started.

use std::collections::BTreeMap;
use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context as _};
use serde_json::Value;

use crate::auth::{self, Given};
use crate::build_cli::{self, BuildArgs};
use crate::client::AdminClient;

/// What `ferry dev` takes.
#[derive(Debug, Clone, clap::Args)]
pub struct DevArgs {
    /// The project folder.
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// Build with `cargo component build`.
    #[arg(long)]
    pub component: bool,
    /// How long the sources must stay unchanged before a rebuild.
    #[arg(long, default_value = "300ms", value_parser = humantime::parse_duration)]
    pub debounce: Duration,
}

/// A host `ferry dev` started: stopped (SIGTERM, then SIGKILL) when dropped.
struct OwnHost(Child);

impl Drop for OwnHost {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn reachable(admin: &str) -> bool {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .ok()
        .and_then(|c| c.get(format!("{admin}/readyz")).send().ok())
        .is_some_and(|r| r.status().is_success())
}

/// Starts `ferry serve` with its store in `data_dir` on the usual loopback ports (the URLs a
/// guide shows) when they are free, else on any; returns it and its admin URL once it serves.
fn start_host(data_dir: &Path) -> anyhow::Result<(OwnHost, String)> {
    let free = |port: u16| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
    if free(8080) && free(8081) {
        // (Another program may take them in between: then any ports.)
        if let Ok(started) = start_host_on(data_dir, "127.0.0.1:8080", "127.0.0.1:8081") {
            return Ok(started);
        }
    }
    start_host_on(data_dir, "127.0.0.1:0", "127.0.0.1:0")
}

fn start_host_on(
    data_dir: &Path,
    listen: &str,
    admin_listen: &str,
) -> anyhow::Result<(OwnHost, String)> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let log_path = data_dir.join("host.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot create {}", log_path.display()))?;
    let exe = std::env::current_exe().context("cannot find the ferry binary")?;
    // Baseline code only (below), unless the caller turned the baseline compiler off: then the
    // optimized code is all there is.
    let baseline_off = std::env::var("FERRY_BASELINE_COMPILE").is_ok_and(|v| v == "false");
    let mut child = Command::new(exe)
        .args([
            "serve",
            "--listen",
            listen,
            "--admin-listen",
            admin_listen,
            "--log-outcomes",
            // Baseline code only: every save deploys a new version, and an optimized compile
            // behind each (14 s of CPU for a Python component) would mostly be thrown away.
            "--optimized-compile",
            if baseline_off { "true" } else { "false" },
        ])
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove("FERRY_TOKEN")
        .env_remove("FERRY_TOKEN_FILE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .context("cannot start ferry serve")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let host = OwnHost(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(rest) = line.strip_prefix("ferry: serving functions on ") {
                let admin = rest.rsplit(' ').next().unwrap_or("").to_string();
                let _ = tx.send(admin);
            }
        }
    });
    let admin = rx
        .recv_timeout(Duration::from_secs(60))
        .map_err(|e| match e {
            std::sync::mpsc::RecvTimeoutError::Timeout => anyhow::anyhow!(
                "the host did not start within a minute; its log: {}",
                log_path.display()
            ),
            std::sync::mpsc::RecvTimeoutError::Disconnected => anyhow::anyhow!(
                "the host stopped before serving; its log: {}",
                log_path.display()
            ),
        })?;
    Ok((host, admin))
}

/// Whether a file's changes call for a rebuild: not what builds write (cargo component's
/// `src/bindings.rs`, a Python or JavaScript component in the folder), nor logs (`ferry dev >
/// dev.log` in the folder would otherwise never let the sources settle), nor editors' swap,
/// lock and backup files.
fn is_source(name: &str) -> bool {
    !(name == "bindings.rs"
        || name.ends_with(".wasm")
        || name.ends_with(".log")
        || name.ends_with(".swp")
        || name.ends_with(".swx")
        || name.ends_with('~')
        || name.starts_with(".#")
        || name.starts_with('#'))
}

/// Each source file's modification time and size, below `dir` (build output, the store and
/// version control left out).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (SystemTime, u64)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            let Ok(meta) = e.metadata() else { continue };
            if meta.is_dir() {
                if !matches!(
                    name.as_ref(),
                    "target" | ".ferry" | ".git" | "node_modules" | "__pycache__"
                ) {
                    stack.push(e.path());
                }
            } else if is_source(&name) {
                out.insert(
                    e.path(),
                    (
                        meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                        meta.len(),
                    ),
                );
            }
        }
    }
    out
}

fn deploy(client: &AdminClient, dir: &Path, built: &build_cli::Built) -> anyhow::Result<Value> {
    let bytes = std::fs::read(&built.component)
        .with_context(|| format!("cannot read {}", built.component.display()))?;
    let manifest = dir.join("ferry.toml");
    if manifest.exists() {
        client.deploy_manifest_file(&manifest, bytes)
    } else {
        let name = built
            .component
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("function")
            .replace('_', "-");
        client.deploy_raw(&name, bytes)
    }
}

/// Where `ferry dev` reports: lines for a person, or with `--json` one JSON object per line,
/// its kind in `event` (`host`, `serving`, `log`, `building`, `redeployed`, `build-failed`,
/// `stopping`).
#[derive(Debug, Clone, Copy)]
struct Report {
    json: bool,
}

impl Report {
    fn say(self, event: &str, text: impl std::fmt::Display, mut data: Value) {
        if self.json {
            if !data.is_object() {
                data = serde_json::json!({});
            }
            data["event"] = event.into();
            println!("{data}");
        } else {
            println!("{text}");
        }
    }
}

/// Prints every new line of `name`'s log (and, from a host started by `ferry dev`, every
/// invocation's outcome) after line number `after`, until `stop`.
fn follow_logs(
    client: AdminClient,
    name: String,
    mut after: u64,
    stop: Arc<AtomicBool>,
    report: Report,
) {
    while !stop.load(Ordering::Relaxed) {
        let query = [
            ("after", after.to_string()),
            ("wait", "2s".to_string()),
            ("limit", "1000".to_string()),
        ];
        match client.logs(&name, &query) {
            Ok(page) => {
                for line in page["lines"].as_array().into_iter().flatten() {
                    let s = |k: &str| line[k].as_str().unwrap_or("").to_string();
                    let text = format!(
                        "{} {} {}  {}",
                        s("time"),
                        s("stream"),
                        s("invocation"),
                        s("text")
                    );
                    report.say("log", text, line.clone());
                }
                after = page["next"].as_u64().unwrap_or(after);
            }
            Err(_) => std::thread::sleep(Duration::from_secs(1)),
        }
    }
}

fn describe(f: &Value) -> String {
    let mut out = format!(
        "{} v{} ({} function) at {}",
        f["name"].as_str().unwrap_or("?"),
        f["version"],
        f["world"].as_str().unwrap_or("?"),
        f["url"].as_str().unwrap_or("?")
    );
    for route in f["routes"].as_array().into_iter().flatten() {
        if let Some(r) = route.as_str() {
            out.push_str(&format!("\n  route {r}"));
        }
    }
    for hook in f["webhooks"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "\n  webhook {}",
            hook["url"].as_str().unwrap_or("?")
        ));
    }
    // The other triggers, by the keys that say what fires them (never headers: they may hold
    // credentials).
    let shown = |kind: &str| -> &'static [&'static str] {
        match kind {
            "nats" => &["subject", "stream", "queue"],
            "poll" => &["every", "cron", "timezone", "url"],
            _ => &[],
        }
    };
    for (kind, sections) in f["triggers"].as_object().into_iter().flatten() {
        for section in sections.as_array().into_iter().flatten() {
            let keys: Vec<String> = shown(kind)
                .iter()
                .filter_map(|k| section.get(*k).map(|v| format!("{k} = {v}")))
                .collect();
            if !keys.is_empty() {
                let kind = match kind.as_str() {
                    "poll" if section.get("url").is_none() => "schedule",
                    other => other,
                };
                out.push_str(&format!("\n  {kind}: {}", keys.join(", ")));
            }
        }
    }
    out
}

/// Runs `ferry dev` until Ctrl-C; `data_dir` is where the token of a running host is kept
/// (`--data-dir`), when not found from the project's folder.
pub fn run(
    admin: &str,
    given: &Given,
    data_dir: Option<&Path>,
    json: bool,
    args: &DevArgs,
) -> anyhow::Result<()> {
    let report = Report { json };
    let dir = args.dir.canonicalize().unwrap_or_else(|_| args.dir.clone());
    let build = BuildArgs {
        dir: dir.clone(),
        component: args.component,
    };
    let built = build_cli::run(&build)?;
    // What the first build saw: a change from here on is built (an edit made while the host
    // starts or the first deploy runs is not missed).
    let mut seen = snapshot(&dir);
    let attach = if reachable(admin) {
        let (token, looked) = auth::for_cli(given, admin, data_dir)?;
        let client = AdminClient::new(admin, token, looked)?;
        // A host whose token this folder does not have (another project's `ferry dev` on the
        // usual ports, say) is not ours to use: start one of our own.
        match client.list() {
            Ok(_) => Some(client),
            Err(e) if given.token.is_none() && given.token_file.is_none() => {
                report.say(
                    "host",
                    format!("dev: not using the host at {admin} ({e:#})"),
                    serde_json::json!({ "admin": admin, "refused": format!("{e:#}") }),
                );
                None
            }
            Err(e) => return Err(e),
        }
    } else {
        None
    };
    let (host, client) = if let Some(client) = attach {
        report.say(
            "host",
            format!("dev: using the host at {admin}"),
            serde_json::json!({ "admin": admin, "started": false }),
        );
        (None, client)
    } else {
        let data_dir = dir.join(".ferry");
        let (host, own_admin) = start_host(&data_dir)?;
        report.say(
            "host",
            format!(
                "dev: started a host at {own_admin} (store and log in {})",
                data_dir.display()
            ),
            serde_json::json!({ "admin": own_admin, "started": true, "data_dir": data_dir }),
        );
        let (token, looked) = auth::for_cli(&Given::default(), &own_admin, Some(&data_dir))?;
        (Some(host), AdminClient::new(&own_admin, token, looked)?)
    };
    let deployed = deploy(&client, &dir, &built)?;
    let name = deployed["name"].as_str().unwrap_or("").to_string();
    if name.is_empty() {
        bail!("the host did not say what it deployed: {deployed}");
    }
    // Follow from the newest line now, before the URL is out: nothing after it is missed (the
    // lines before this session were shown by earlier ones).
    let newest = client
        .logs(&name, &[("limit", "1".to_string())])
        .ok()
        .and_then(|p| p["next"].as_u64())
        .unwrap_or(0);
    report.say(
        "serving",
        format!(
            "dev: serving {}\ndev: watching {} for changes; Ctrl-C stops",
            describe(&deployed),
            dir.display()
        ),
        deployed.clone(),
    );

    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                if rt.block_on(tokio::signal::ctrl_c()).is_ok() {
                    stop.store(true, Ordering::Relaxed);
                }
            }
        });
    }
    {
        let follower = client.clone();
        let (stop, name) = (stop.clone(), name.clone());
        std::thread::spawn(move || follow_logs(follower, name, newest, stop, report));
    }

    let mut version = deployed["version"].clone();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(200));
        let now = snapshot(&dir);
        if now == seen {
            continue;
        }
        // Debounce: wait until the sources stop changing, for at most 20 debounce periods (a
        // file rewritten without pause must not hold the rebuild back for ever).
        let mut settled = now;
        for _ in 0..20 {
            std::thread::sleep(args.debounce);
            let again = snapshot(&dir);
            if again == settled || stop.load(Ordering::Relaxed) {
                break;
            }
            settled = again;
        }
        seen = settled;
        report.say("building", "dev: change seen; building", Value::Null);
        match build_cli::run(&build).and_then(|b| deploy(&client, &dir, &b).map(|d| (b, d))) {
            Ok((b, d)) => {
                version = d["version"].clone();
                report.say(
                    "redeployed",
                    format!(
                        "dev: redeployed {} v{version} ({})",
                        name,
                        bytesize::ByteSize(b.size)
                    ),
                    serde_json::json!({ "function": d, "size": b.size }),
                );
            }
            Err(e) => report.say(
                "build-failed",
                format!("dev: {e:#}; still serving v{version}"),
                serde_json::json!({ "error": format!("{e:#}"), "serving": version }),
            ),
        }
    }
    report.say("stopping", "dev: stopping", Value::Null);
    drop(host);
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn logs_swap_files_and_build_output_are_not_sources() {
        for name in [
            "app.py",
            "lib.rs",
            "app.js",
            "ferry.toml",
            "Cargo.toml",
            "world.wit",
        ] {
            assert!(super::is_source(name), "{name}");
        }
        for name in [
            "dev.log",
            "hello.wasm",
            "bindings.rs",
            ".app.py.swp",
            "lib.rs~",
            ".#app.js",
        ] {
            assert!(!super::is_source(name), "{name}");
        }
    }

    #[test]
    fn the_description_names_every_trigger_but_never_its_headers() {
        let f = serde_json::json!({
            "name": "f", "version": 3, "world": "event", "url": "http://127.0.0.1:8080/f",
            "routes": ["/api/..."],
            "webhooks": [{ "url": "http://127.0.0.1:8080/_ferry/webhooks/f/gh" }],
            "triggers": {
                "nats": [{ "subject": "orders.created", "queue": "q" }],
                "poll": [
                    { "every": "1m" },
                    { "cron": "0 * * * *", "url": "https://x.test/feed",
                      "headers": { "authorization": "Bearer secret" } }
                ]
            }
        });
        let text = super::describe(&f);
        assert!(
            text.starts_with("f v3 (event function) at http://127.0.0.1:8080/f"),
            "{text}"
        );
        for line in [
            "route /api/...",
            "webhook http://127.0.0.1:8080/_ferry/webhooks/f/gh",
            "nats: subject = \"orders.created\", queue = \"q\"",
            "schedule: every = \"1m\"",
            "poll: cron = \"0 * * * *\", url = \"https://x.test/feed\"",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        assert!(!text.contains("secret"), "{text}");
    }
}
