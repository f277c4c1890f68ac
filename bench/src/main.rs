//! The benchmark harness: HTTP hello requests/s and latency through Ferry, a native hyper server
//! and (when `WASMTIME_BIN` is set) `wasmtime serve` on the same guest, measured side by side in
//! one run on loopback, with the same load generator. Writes a table to `docs/benchmarks.md`.
//!
//! Run it with `scripts/bench.sh` (release builds only).

// Benchmark harness: a failed unwrap is a failed benchmark run, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;

#[derive(Parser, Clone)]
struct Args {
    /// Measured time per target.
    #[arg(long, default_value = "10s", value_parser = humantime_parse)]
    duration: Duration,
    /// Warm-up time per target (not measured).
    #[arg(long, default_value = "2s", value_parser = humantime_parse)]
    warmup: Duration,
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Where to write the results.
    #[arg(long, default_value = "docs/benchmarks.md")]
    out: PathBuf,
    /// Which benchmarks to run: all, http, durable, events, cluster, big, density or payloads.
    #[arg(long, default_value = "all")]
    suite: String,
    /// Concurrent connections for the durable-accept benchmark (many clients submitting).
    #[arg(long, default_value_t = 64)]
    durable_connections: usize,
    /// Internal: run the native hyper hello server and print its address.
    #[arg(long, hide = true)]
    native_server: bool,
}

fn humantime_parse(s: &str) -> Result<Duration, String> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n.parse().map_err(|_| format!("bad duration {s}"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        _ => Err(format!("bad duration {s}: use 500ms or 10s")),
    }
}

mod big;
mod cluster;
mod density;
mod events;
mod payloads;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.native_server {
        return native_server();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;

    if args.suite == "all" || args.suite == "http" {
        http_suite(&rt, &args)?;
    }
    if args.suite == "all" || args.suite == "durable" {
        durable_suite(&rt, &args)?;
    }
    if args.suite == "all" || args.suite == "events" {
        events::events_suite(&rt, &args)?;
    }
    if args.suite == "all" || args.suite == "cluster" {
        cluster::cluster_suite(&rt, &args)?;
    }
    if args.suite == "all" || args.suite == "big" {
        big::big_suite(&rt, &args)?;
    }
    if args.suite == "all" || args.suite == "density" {
        density::density_suite(&args)?;
    }
    if args.suite == "all" || args.suite == "payloads" {
        payloads::payloads_suite(&args)?;
    }
    println!("\nwrote {}", args.out.display());
    Ok(())
}

fn http_suite(rt: &tokio::runtime::Runtime, args: &Args) -> anyhow::Result<()> {
    let args = args.clone();
    let mut results = Vec::new();

    let native = Server::native()?;
    results.push(rt.block_on(measure(
        "native hyper (Rust, no wasm)",
        native.addr,
        Load::Get,
        &args,
    ))?);
    drop(native);

    let ferry = Server::ferry(&[])?;
    results.push(rt.block_on(measure(
        "Ferry (hello-http guest)",
        ferry.addr,
        Load::Get,
        &args,
    ))?);
    drop(ferry);

    if let Some(wasmtime) = std::env::var_os("WASMTIME_BIN") {
        let server = Server::wasmtime(PathBuf::from(wasmtime))?;
        results.push(rt.block_on(measure(
            "wasmtime serve -S cli (same guest)",
            server.addr,
            Load::Get,
            &args,
        ))?);
        drop(server);
    }
    let table = render(&results, &args);
    print!("{table}");
    write_section(&args.out, "http", &table)
}

/// Durable accepts: store-and-forward submits answered 202 only after a flush.
fn durable_suite(rt: &tokio::runtime::Runtime, args: &Args) -> anyhow::Result<()> {
    let args = Args {
        connections: args.durable_connections,
        ..args.clone()
    };
    let mut durable = Vec::new();
    let extra: Vec<String> = std::env::var("FERRY_BENCH_SERVE_ARGS")
        .map(|a| a.split_whitespace().map(String::from).collect())
        .unwrap_or_default();
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let ferry = Server::ferry(&extra)?;
    durable.push(rt.block_on(measure(
        "Ferry, group commit",
        ferry.addr,
        Load::DurableSubmit,
        &args,
    ))?);
    drop(ferry);
    let ferry = Server::ferry(&["--flush-per-submit"])?;
    durable.push(rt.block_on(measure(
        "Ferry, one flush per submit",
        ferry.addr,
        Load::DurableSubmit,
        &args,
    ))?);
    drop(ferry);
    let table = render_durable(&durable, &args);
    print!("{table}");
    write_section(&args.out, "durable", &table)
}

/// What the load generator sends.
#[derive(Clone, Copy)]
enum Load {
    /// `GET /hello-http/bench`, expecting 200.
    Get,
    /// `POST /hello-http/bench` with `Prefer: respond-async`, expecting 202 (store-and-forward).
    DurableSubmit,
}

struct Measured {
    name: &'static str,
    requests: u64,
    errors: u64,
    elapsed: Duration,
    p50: Duration,
    p99: Duration,
}

impl Measured {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    /// The table cells every load table starts with: name, rate, p50, p99, errors.
    fn cells(&self) -> String {
        format!(
            "| {} | {:.0} | {:.0} µs | {:.0} µs | {} |",
            self.name,
            self.rps(),
            self.p50.as_secs_f64() * 1e6,
            self.p99.as_secs_f64() * 1e6,
            self.errors
        )
    }
}

/// Drives `connections` keep-alive connections as fast as they answer for warmup + duration.
async fn measure(
    name: &'static str,
    addr: SocketAddr,
    load: Load,
    args: &Args,
) -> anyhow::Result<Measured> {
    measure_spread(name, &[addr], load, args).await
}

/// As [`measure`], with the connections spread over `addrs` in turn.
async fn measure_spread(
    name: &'static str,
    addrs: &[SocketAddr],
    load: Load,
    args: &Args,
) -> anyhow::Result<Measured> {
    eprintln!("measuring {name} at {addrs:?} ...");
    let start = Instant::now();
    let measure_from = start + args.warmup;
    let end = measure_from + args.duration;
    let mut tasks = Vec::new();
    for i in 0..args.connections {
        let addr = addrs[i % addrs.len()];
        tasks.push(tokio::spawn(async move {
            connection(addr, load, measure_from, end).await
        }));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (lat, err) = t.await??;
        latencies.extend(lat);
        errors += err;
    }
    if latencies.is_empty() {
        bail!("{name}: no request succeeded");
    }
    latencies.sort_unstable();
    let pct = |p: f64| {
        Duration::from_nanos(
            latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)],
        )
    };
    Ok(Measured {
        name,
        requests: latencies.len() as u64,
        errors,
        elapsed: args.duration,
        p50: pct(0.50),
        p99: pct(0.99),
    })
}

async fn connection(
    addr: SocketAddr,
    load: Load,
    measure_from: Instant,
    end: Instant,
) -> anyhow::Result<(Vec<u64>, u64)> {
    let mut latencies = Vec::new();
    let mut errors = 0;
    'reconnect: while Instant::now() < end {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .context("connect")?;
        stream.set_nodelay(true)?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        while Instant::now() < end {
            let (req, expect) = match load {
                Load::Get => (hyper::Request::get("/hello-http/bench"), 200),
                Load::DurableSubmit => (
                    hyper::Request::post("/hello-http/bench").header("prefer", "respond-async"),
                    202,
                ),
            };
            let req = req
                .header("host", "127.0.0.1")
                .body(Empty::<Bytes>::new())?;
            let t0 = Instant::now();
            let ok = match sender.send_request(req).await {
                Ok(resp) => {
                    let ok = resp.status() == expect;
                    ok && resp.into_body().collect().await.is_ok()
                }
                Err(_) => false,
            };
            let t1 = Instant::now();
            if t0 >= measure_from && t1 <= end {
                if ok {
                    latencies.push((t1 - t0).as_nanos() as u64);
                } else {
                    errors += 1;
                }
            }
            if !ok {
                continue 'reconnect;
            }
        }
    }
    Ok((latencies, errors))
}

/// A server process under test, killed on drop.
struct Server {
    child: Child,
    addr: SocketAddr,
    /// The admin listener (Ferry only).
    admin: SocketAddr,
    _tmp: Option<tempfile::TempDir>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn wait_for_port(addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(addr).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("nothing listened on {addr} within 30s")
}

impl Server {
    fn native() -> anyhow::Result<Server> {
        let mut child = Command::new(std::env::current_exe()?)
            .arg("--native-server")
            .stdout(Stdio::piped())
            .spawn()?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line)?;
        let addr = line.trim().parse().context("native server address")?;
        Ok(Server {
            child,
            addr,
            admin: addr,
            _tmp: None,
        })
    }

    /// A Ferry host serving the hello-http guest.
    fn ferry(extra: &[&str]) -> anyhow::Result<Server> {
        let wasm = std::fs::read(ferry_tests::guests::HELLO_HTTP)?;
        Self::ferry_with(extra, "hello-http", wasm)
    }

    /// A Ferry host serving `wasm` as function `name` (its deploy answered).
    fn ferry_with(extra: &[&str], name: &str, wasm: Vec<u8>) -> anyhow::Result<Server> {
        let server = Self::ferry_empty(extra)?;
        deploy_to(&reqwest::blocking::Client::new(), server.admin, name, wasm)?;
        Ok(server)
    }

    /// A Ferry host with nothing deployed, its admin API answering.
    fn ferry_empty(extra: &[&str]) -> anyhow::Result<Server> {
        let tmp = tempfile::tempdir()?;
        let mut server = Self::ferry_on(tmp.path(), extra)?;
        server._tmp = Some(tmp);
        Ok(server)
    }

    /// A Ferry host on the data directory `dir` (kept when the server is dropped), its admin
    /// API answering.
    fn ferry_on(dir: &std::path::Path, extra: &[&str]) -> anyhow::Result<Server> {
        let bin = ferry_bin();
        let port = free_port()?;
        let admin_port = free_port()?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let child = Command::new(&bin)
            .args([
                "serve",
                "--listen",
                &addr.to_string(),
                "--admin-listen",
                &format!("127.0.0.1:{admin_port}"),
            ])
            .arg("--data-dir")
            .arg(dir)
            .args(extra)
            .env("FERRY_LOG", "warn")
            // The bench's host is on loopback; an older binary ignores the variable.
            .env("FERRY_INSECURE_NO_ADMIN_AUTH", "true")
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let server = Server {
            child,
            addr,
            admin: format!("127.0.0.1:{admin_port}").parse()?,
            _tmp: None,
        };
        wait_for_port(format!("127.0.0.1:{admin_port}").parse()?)?;
        Ok(server)
    }

    fn wasmtime(bin: PathBuf) -> anyhow::Result<Server> {
        Self::wasmtime_serving(bin, std::path::Path::new(ferry_tests::guests::HELLO_HTTP))
    }

    /// `wasmtime serve` of the component in `file`.
    fn wasmtime_serving(bin: PathBuf, file: &std::path::Path) -> anyhow::Result<Server> {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let child = Command::new(&bin)
            .args(["serve", "-S", "cli", "--addr", &addr.to_string()])
            .arg(file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let server = Server {
            child,
            addr,
            admin: addr,
            _tmp: None,
        };
        wait_for_port(addr)?;
        Ok(server)
    }
}

/// Deploys `wasm` as function `name` through the admin API at `admin`, waiting for the answer.
fn deploy_to(
    client: &reqwest::blocking::Client,
    admin: SocketAddr,
    name: &str,
    wasm: Vec<u8>,
) -> anyhow::Result<()> {
    let resp = client
        .put(format!("http://{admin}/v1/functions/{name}"))
        .timeout(Duration::from_secs(600))
        .header("content-type", "application/wasm")
        .body(wasm)
        .send()?;
    if !resp.status().is_success() {
        bail!("deploy of {name} failed: {}", resp.text()?);
    }
    Ok(())
}

/// Polls `check` every 5 ms until it holds, for at most 20 minutes; returns when it did.
fn until(what: &str, mut check: impl FnMut() -> bool) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + Duration::from_secs(1200);
    while Instant::now() < deadline {
        if check() {
            return Ok(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    bail!("{what}: not within 20 minutes")
}

/// A size field of `/proc/PID/status` (`VmRSS:`, `VmHWM:`), in bytes (0 when unreadable).
fn status_bytes(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// The ferry binary under test: `FERRY_BIN`, or the one beside this benchmark.
fn ferry_bin() -> PathBuf {
    std::env::var_os("FERRY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::current_exe().unwrap().with_file_name("ferry"))
}

/// The baseline: a hyper hello server on the same tokio setup as Ferry (multi-thread runtime).
fn native_server() -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!("{}", listener.local_addr()?);
        loop {
            let (stream, _) = listener.accept().await?;
            stream.set_nodelay(true)?;
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        let body = format!("Hello from Ferry! path={}\n", req.uri().path());
                        Ok::<_, Infallible>(
                            hyper::Response::builder()
                                .header("content-type", "text/plain; charset=utf-8")
                                .header("content-length", body.len())
                                .body(Full::new(Bytes::from(body)))
                                .unwrap(),
                        )
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

fn render(results: &[Measured], args: &Args) -> String {
    let native = results[0].rps();
    let ferry = results
        .iter()
        .find(|r| r.name.starts_with("Ferry"))
        .map(Measured::rps);
    let mut s = String::new();
    s.push_str(&format!(
        "### HTTP hello: requests/s and latency\n\n{} keep-alive connections, {}s measured after {}s warm-up, one load-generator thread, loopback, release builds.\n\n",
        args.connections,
        args.duration.as_secs(),
        args.warmup.as_secs()
    ));
    s.push_str("| server | requests/s | p50 latency | p99 latency | errors | vs native | Ferry vs this |\n");
    s.push_str("| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for r in results {
        let vs_ferry = match ferry {
            Some(f) if !r.name.starts_with("Ferry") => format!("{:.2}x", f / r.rps()),
            _ => "—".into(),
        };
        s.push_str(&format!(
            "{} {:.0}% | {} |\n",
            r.cells(),
            100.0 * r.rps() / native,
            vs_ferry
        ));
    }
    s
}

fn render_durable(results: &[Measured], args: &Args) -> String {
    let group = results[0].rps();
    let mut s = format!(
        "### Durable accepts: store-and-forward submits\n\n`POST` with `Prefer: respond-async` to hello-http; each 202 is sent only after the submit is flushed to disk. {} connections, {}s measured after {}s warm-up. The accepted invocations run meanwhile on the same cores.\n\n",
        args.connections,
        args.duration.as_secs(),
        args.warmup.as_secs()
    );
    s.push_str("| durability | accepts/s | p50 submit latency | p99 submit latency | errors | group commit vs this |\n");
    s.push_str("| --- | ---: | ---: | ---: | ---: | ---: |\n");
    for r in results {
        s.push_str(&format!("{} {:.1}x |\n", r.cells(), group / r.rps()));
    }
    s
}

/// Replaces a generated section of the benchmarks page, keeping the prose around it.
fn write_section(path: &PathBuf, key: &str, table: &str) -> anyhow::Result<()> {
    let begin = format!("<!-- bench:{key}:begin -->");
    let end = format!("<!-- bench:{key}:end -->");
    let existing = std::fs::read_to_string(path).unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let section = format!(
        "{begin}\n{table}\nMachine: {cores} cores, {cpu}. Generated by `scripts/bench.sh` at {}.\n{end}",
        humantime_now()
    );
    let new = match (existing.find(begin.as_str()), existing.find(end.as_str())) {
        (Some(b), Some(e)) if b < e => format!(
            "{}{}{}",
            &existing[..b],
            section,
            &existing[e + end.len()..]
        ),
        _ => format!("{existing}\n{section}\n"),
    };
    std::fs::write(path, new).with_context(|| format!("writing {}", path.display()))
}

fn humantime_now() -> String {
    let out = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
