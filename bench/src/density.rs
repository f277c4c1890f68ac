//! Density and cold start: 10, 100 and 1,000 functions on one host, each a different component
//! (the hello-http guest with a custom section naming it, so each has its own digest, compiled
//! code and artifact). For each count: the deploy of one more function (upload to answer, and to
//! its first 200), the host's idle RSS, and a restart: from the process start to every function
//! answering.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use super::{deploy_to, status_bytes, until, Args, Server};

/// The hello-http guest with a custom section `ferry-bench` holding `i`: a different component.
fn distinct(base: &[u8], i: usize) -> Vec<u8> {
    let name = b"ferry-bench";
    let payload = i.to_string();
    let mut section = vec![name.len() as u8];
    section.extend_from_slice(name);
    section.extend_from_slice(payload.as_bytes());
    let mut wasm = base.to_vec();
    wasm.push(0); // custom section
    wasm.push(section.len() as u8); // < 128: one LEB128 byte
    wasm.extend_from_slice(&section);
    wasm
}

fn answers(client: &reqwest::blocking::Client, server: &Server, name: &str) -> bool {
    client
        .get(format!("http://{}/{name}/x", server.addr))
        .send()
        .is_ok_and(|r| r.status() == 200 && r.text().is_ok())
}

struct Row {
    functions: usize,
    deploy_answered: Duration,
    deploy_served: Duration,
    idle_rss: u64,
    /// Of the idle RSS, pages of mapped files (the compiled code): the kernel can drop them.
    idle_file: u64,
    restart_served: Duration,
    restart_rss: u64,
}

fn one(base: &[u8], n: usize) -> anyhow::Result<Row> {
    eprintln!("measuring {n} functions ...");
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()?;
    let dir = tempfile::tempdir()?;
    let server = Server::ferry_on(dir.path(), &[])?;
    for i in 0..n {
        deploy_to(&client, server.admin, &format!("f{i}"), distinct(base, i))?;
    }
    let optimized = |server: &Server| -> bool {
        client
            .get(format!("http://{}/v1/functions", server.admin))
            .send()
            .and_then(|r| r.json::<Vec<serde_json::Value>>())
            .is_ok_and(|fs| fs.iter().all(|f| f["code"]["tier"] == "optimized"))
    };
    until("every function on optimized code", || optimized(&server))?;

    // One more, with the others idle.
    let name = format!("f{n}");
    let started = Instant::now();
    deploy_to(&client, server.admin, &name, distinct(base, n))?;
    let deploy_answered = started.elapsed();
    until("the new function answering", || {
        answers(&client, &server, &name)
    })?;
    let deploy_served = started.elapsed();
    until("every function on optimized code", || optimized(&server))?;
    std::thread::sleep(Duration::from_secs(2)); // idle: nothing runs or compiles
    let idle_rss = status_bytes(server.child.id(), "VmRSS:");
    let idle_file = status_bytes(server.child.id(), "RssFile:");
    drop(server);

    // A restart: from the process start to the last function deployed answering, every
    // function restored by then (the host restores before it serves).
    let started = Instant::now();
    let server = Server::ferry_on(dir.path(), &[])?;
    let last = format!("f{n}");
    until("every function answering after the restart", || {
        answers(&client, &server, &last) && answers(&client, &server, "f0")
    })?;
    let restart_served = started.elapsed();
    let count = client
        .get(format!("http://{}/v1/functions", server.admin))
        .send()?
        .json::<Vec<serde_json::Value>>()
        .context("listing the functions")?
        .len();
    if count != n + 1 {
        bail!("{count} functions restored of {}", n + 1);
    }
    Ok(Row {
        functions: n + 1,
        deploy_answered,
        deploy_served,
        idle_rss,
        idle_file,
        restart_served,
        restart_rss: status_bytes(server.child.id(), "VmRSS:"),
    })
}

pub(crate) fn density_suite(args: &Args) -> anyhow::Result<()> {
    let base = std::fs::read(ferry_tests::guests::HELLO_HTTP)?;
    let rows = [9, 99, 999]
        .into_iter()
        .map(|n| one(&base, n))
        .collect::<anyhow::Result<Vec<Row>>>()?;
    let mut s = String::from(
        "### Density and cold start: many functions on one host\n\nEach function a different component (the hello-http guest with a custom section naming it: its own digest, compiled code and artifact), deployed one after another; then, with every function on optimized code, one more deployed (upload to answer; upload to its first 200), the host's idle RSS, and a restart on the same data directory (process start to the first and the last function answering; every function is restored before the host serves).\n\n",
    );
    s.push_str("| functions | deploy one more: answered | served | idle RSS | of which mapped files | restart to all served | RSS after restart |\n");
    s.push_str("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for r in &rows {
        s.push_str(&format!(
            "| {} | {:.0} ms | {:.0} ms | {:.0} MB | {:.0} MB | {:.2} s | {:.0} MB |\n",
            r.functions,
            r.deploy_answered.as_secs_f64() * 1e3,
            r.deploy_served.as_secs_f64() * 1e3,
            r.idle_rss as f64 / 1e6,
            r.idle_file as f64 / 1e6,
            r.restart_served.as_secs_f64(),
            r.restart_rss as f64 / 1e6
        ));
    }
    println!("{s}");
    super::write_section(&args.out, "density", &s)
}
