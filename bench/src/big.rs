//! Big components: an 18 MB Python component (componentize-py, as `ferry new http NAME --lang
//! python` makes it). How long from the start of its upload to its first response, with baseline
//! code first (the default) and with the deploy waiting for optimised code; how long until the
//! optimised code serves; three different ones deployed at once; the host's peak memory; and
//! requests/s on the optimised code next to `wasmtime serve` on the same component, and the same
//! for a JavaScript component (componentize-js, `--lang js`) when Node.js and npm are installed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use super::{measure, until, Args, Load, Measured, Server};

/// An HTTP function in `lang` (python or js) built with `ferry new` and `ferry build`.
fn built_component(ferry: &Path, dir: &Path, name: &str, lang: &str) -> anyhow::Result<Vec<u8>> {
    let run = |args: &[&str], cwd: &Path| -> anyhow::Result<()> {
        let out = Command::new(ferry)
            .args(args)
            .current_dir(cwd)
            .output()
            .with_context(|| format!("running ferry {args:?}"))?;
        if !out.status.success() {
            bail!(
                "ferry {args:?} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    };
    run(&["new", "http", name, "--lang", lang], dir)?;
    let project = dir.join(name);
    run(&["build"], &project)?;
    Ok(std::fs::read(project.join(format!("{name}.wasm")))?)
}

/// Uploads `wasm` as function `name` (without waiting for the answer).
fn deploy(
    server: &Server,
    name: &str,
    wasm: Vec<u8>,
) -> std::thread::JoinHandle<anyhow::Result<()>> {
    let (admin, name) = (server.admin, name.to_string());
    std::thread::spawn(move || {
        super::deploy_to(&reqwest::blocking::Client::new(), admin, &name, wasm)
    })
}

fn answers(server: &Server, name: &str) -> bool {
    // The body read too: a client gone before it is written makes the guest trap.
    reqwest::blocking::get(format!("http://{}/{name}/first", server.addr))
        .is_ok_and(|r| r.status() == 200 && r.text().is_ok())
}

fn optimized(server: &Server, name: &str) -> bool {
    reqwest::blocking::get(format!("http://{}/v1/functions/{name}", server.admin))
        .and_then(|r| r.json::<serde_json::Value>())
        .is_ok_and(|f| f["code"]["tier"] == "optimized")
}

/// One deploy configuration's results.
struct Cold {
    label: &'static str,
    functions: usize,
    first_response: Duration,
    optimized: Duration,
    peak_rss: u64,
}

/// Deploys `components` at once on a fresh host started with `extra` and times them.
fn cold(label: &'static str, extra: &[&str], components: &[Vec<u8>]) -> anyhow::Result<Cold> {
    let server = Server::ferry_empty(extra)?;
    let names: Vec<String> = (0..components.len()).map(|i| format!("py{i}")).collect();
    eprintln!("measuring {label} ...");
    let started = Instant::now();
    let uploads: Vec<_> = names
        .iter()
        .zip(components)
        .map(|(name, wasm)| deploy(&server, name, wasm.clone()))
        .collect();
    let served = until("every function answering", || {
        names.iter().all(|n| answers(&server, n))
    })?;
    for upload in uploads {
        upload
            .join()
            .map_err(|_| anyhow::anyhow!("deploy thread panicked"))??;
    }
    let done = until("every function on optimized code", || {
        names.iter().all(|n| optimized(&server, n))
    })?;
    Ok(Cold {
        label,
        functions: components.len(),
        first_response: served - started,
        optimized: done - started,
        peak_rss: super::status_bytes(server.child.id(), "VmHWM:"),
    })
}

/// The CPU time of a process's ended children (its compiler processes), in seconds.
fn children_cpu(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<u64> = stat
        .rsplit_once(')')
        .map(|(_, rest)| {
            rest.split_whitespace()
                .map(|f| f.parse().unwrap_or(0))
                .collect()
        })
        .unwrap_or_default();
    // Fields 16 and 17 (cutime, cstime); `rest` starts at field 3. Ticks of 1/100 s.
    (fields.get(13).copied().unwrap_or(0) + fields.get(14).copied().unwrap_or(0)) as f64 / 100.0
}

/// On a fresh host started with `extra`, deploys `first` and waits for its optimised code, then
/// deploys `second` (another function in the same language): how long until the second one's
/// optimised code serves, and the compilers' CPU time for it (both tiers).
fn after_another(extra: &[&str], first: &[u8], second: &[u8]) -> anyhow::Result<(Duration, f64)> {
    let server = Server::ferry_empty(extra)?;
    deploy(&server, "pya", first.to_vec())
        .join()
        .map_err(|_| anyhow::anyhow!("deploy thread panicked"))??;
    until("the first function on optimized code", || {
        optimized(&server, "pya")
    })?;
    let cpu = children_cpu(server.child.id());
    let started = Instant::now();
    deploy(&server, "pyb", second.to_vec())
        .join()
        .map_err(|_| anyhow::anyhow!("deploy thread panicked"))??;
    let done = until("the second function on optimized code", || {
        optimized(&server, "pyb")
    })?;
    Ok((done - started, children_cpu(server.child.id()) - cpu))
}

pub(crate) fn big_suite(rt: &tokio::runtime::Runtime, args: &Args) -> anyhow::Result<()> {
    let ferry = super::ferry_bin();
    if Command::new("componentize-py")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipping the big-component suite: componentize-py is not installed (pip install componentize-py)");
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let wasm: Vec<Vec<u8>> = ["pyone", "pytwo", "pythree"]
        .iter()
        .map(|n| built_component(&ferry, dir.path(), n, "python"))
        .collect::<anyhow::Result<_>>()?;
    let size = wasm[0].len();

    let colds = vec![
        cold("baseline code first (default)", &[], &wasm[..1])?,
        cold(
            "optimized code only (`--baseline-compile false`)",
            &["--baseline-compile", "false"],
            &wasm[..1],
        )?,
        cold("baseline code first, three at once", &[], &wasm)?,
        cold(
            "optimized code only, three at once",
            &["--baseline-compile", "false"],
            &wasm,
        )?,
    ];

    eprintln!("measuring a second function with and without the compile cache ...");
    let mut seconds = Vec::new();
    for (label, extra) in [
        ("compile cache on (default)", &[][..]),
        (
            "compile cache off (`--compile-cache-size 0`)",
            &["--compile-cache-size", "0"][..],
        ),
    ] {
        let (took, cpu) = after_another(extra, &wasm[0], &wasm[1])?;
        seconds.push((label, took, cpu));
    }

    let python_rates = rates(rt, args, &dir.path().join("pyone").join("pyone.wasm"))?;
    // The same for a JavaScript component, when this machine can build one (a failure here
    // skips the rows, not the Python tables above).
    let npm = Command::new("npm")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let js = if npm {
        let file = dir.path().join("jsone").join("jsone.wasm");
        match built_component(&ferry, dir.path(), "jsone", "js")
            .and_then(|wasm| Ok((wasm.len(), rates(rt, args, &file)?)))
        {
            Ok(js) => Some(js),
            Err(e) => {
                eprintln!("skipping the JavaScript rows: {e:#}");
                None
            }
        }
    } else {
        eprintln!("skipping the JavaScript rows: npm is not installed");
        None
    };

    let mut s = format!(
        "### Big components: an {:.1} MB Python component\n\n`ferry new http NAME --lang python` and `ferry build` (componentize-py); each row a fresh host with an empty compiled-code cache. First response: from the start of the upload to the first 200 from the function. Optimized: until `code.tier` is `optimized` for every function. Peak RSS: the host process (compiling runs in child processes).\n\n",
        size as f64 / 1e6
    );
    s.push_str(
        "| deploy | functions | first response | optimized code serving | host peak RSS |\n",
    );
    s.push_str("| --- | ---: | ---: | ---: | ---: |\n");
    for c in &colds {
        s.push_str(&format!(
            "| {} | {} | {:.2} s | {:.1} s | {:.0} MB |\n",
            c.label,
            c.functions,
            c.first_response.as_secs_f64(),
            c.optimized.as_secs_f64(),
            c.peak_rss as f64 / 1e6
        ));
    }
    s.push_str("\nA second Python function (another project of the same template) deployed on a host that has compiled one: how long until its optimized code serves, and the compiler processes' CPU time for it (both tiers). Cranelift's per-function compile cache finds most of its functions (the same CPython):\n\n| host | optimized code serving | compiler CPU |\n| --- | ---: | ---: |\n");
    for (label, took, cpu) in &seconds {
        s.push_str(&format!(
            "| {label} | {:.1} s | {cpu:.1} s |\n",
            took.as_secs_f64()
        ));
    }
    s.push_str(&format!(
        "\nRequests/s on the same component ({} keep-alive connections, {}s after {}s warm-up):\n\n",
        args.connections,
        args.duration.as_secs(),
        args.warmup.as_secs()
    ));
    rates_table(&mut s, &python_rates);
    if let Some((size, rates)) = &js {
        s.push_str(&format!(
            "\nThe same for a {:.1} MB JavaScript component (`ferry new http NAME --lang js`, componentize-js):\n\n",
            *size as f64 / 1e6
        ));
        rates_table(&mut s, rates);
    }
    println!("{s}");
    super::write_section(&args.out, "big", &s)
}

/// Requests/s on `file` deployed to a fresh host (as hello-http, the path the load generator asks
/// for, once its optimized code serves), then under `wasmtime serve` as it is (`WASMTIME_BIN`).
fn rates(rt: &tokio::runtime::Runtime, args: &Args, file: &Path) -> anyhow::Result<Vec<Measured>> {
    let mut rates = Vec::new();
    let server = Server::ferry_with(&[], "hello-http", std::fs::read(file)?)?;
    until("hello-http on optimized code", || {
        optimized(&server, "hello-http")
    })?;
    rates.push(rt.block_on(measure(
        "Ferry (optimized code)",
        server.addr,
        Load::Get,
        args,
    ))?);
    drop(server);
    if let Some(wasmtime) = std::env::var_os("WASMTIME_BIN") {
        let server = Server::wasmtime_serving(PathBuf::from(wasmtime), file)?;
        rates.push(rt.block_on(measure(
            "wasmtime serve -S cli (same component)",
            server.addr,
            Load::Get,
            args,
        ))?);
    }
    Ok(rates)
}

/// A table of `rates`, each compared with the first (Ferry's).
fn rates_table(s: &mut String, rates: &[Measured]) {
    s.push_str("| server | requests/s | p50 latency | p99 latency | errors | Ferry vs this |\n");
    s.push_str("| --- | ---: | ---: | ---: | ---: | ---: |\n");
    let ferry_rps = rates[0].rps();
    for r in rates {
        s.push_str(&format!(
            "{} {} |\n",
            r.cells(),
            if r.name.starts_with("Ferry") {
                "—".to_string()
            } else {
                format!("{:.2}x", ferry_rps / r.rps())
            }
        ));
    }
}
