//! Cluster mode: store-and-forward accepts/s and completed invocations/s with 1, 2 and 3 Ferry
//! hosts sharing one nats-server, next to a single host on its embedded store. Every process
//! (hosts, nats-server, load generator) shares this machine's cores.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::bail;

use super::events::NatsProcess;
use super::{measure_spread, Args, Load, Measured, Server};

/// One configuration's results.
struct Row {
    accepts: Measured,
    completed_per_s: f64,
    drain: Duration,
}

/// Async invocations a host has finished, from its metrics.
fn finished(admin: SocketAddr) -> anyhow::Result<f64> {
    let text = reqwest::blocking::get(format!("http://{admin}/metrics"))?.text()?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("ferry_invocations_total{") && l.contains("mode=\"async\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// Submits for the measured window spread over `hosts`, then waits until every host is done:
/// completed/s is what they finished from the first submit to the last completion.
fn run(
    rt: &tokio::runtime::Runtime,
    name: &'static str,
    hosts: &[Server],
    args: &Args,
) -> anyhow::Result<Row> {
    let addrs: Vec<SocketAddr> = hosts.iter().map(|h| h.addr).collect();
    let before: f64 = hosts
        .iter()
        .map(|h| finished(h.admin))
        .sum::<anyhow::Result<f64>>()?;
    let started = Instant::now();
    let accepts = rt.block_on(measure_spread(name, &addrs, Load::DurableSubmit, args))?;
    let target = before + accepts.requests as f64;
    let deadline = Instant::now() + Duration::from_secs(600);
    let done = loop {
        let done: f64 = hosts
            .iter()
            .map(|h| finished(h.admin))
            .sum::<anyhow::Result<f64>>()?;
        if done >= target {
            break done - before;
        }
        if Instant::now() > deadline {
            bail!(
                "{name}: {} of {} invocations finished within 10 minutes",
                done - before,
                accepts.requests
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let elapsed = started.elapsed();
    Ok(Row {
        completed_per_s: done / elapsed.as_secs_f64(),
        drain: elapsed.saturating_sub(args.warmup + args.duration),
        accepts,
    })
}

pub(super) fn cluster_suite(rt: &tokio::runtime::Runtime, args: &Args) -> anyhow::Result<()> {
    // No warm-up: every submit of the run is counted, so that completions can be matched.
    let args = Args {
        connections: args.durable_connections,
        warmup: Duration::ZERO,
        ..args.clone()
    };
    let mut rows = Vec::new();
    let host = Server::ferry(&[])?;
    rows.push(run(rt, "1 host, embedded store (sled)", &[host], &args)?);
    for (n, sync, name) in [
        (1, true, "1 host, cluster mode, NATS fsync on every write"),
        (1, false, "1 host, cluster mode"),
        (2, false, "2 hosts, cluster mode"),
        (3, false, "3 hosts, cluster mode"),
    ] {
        let nats = NatsProcess::start_syncing(sync)?;
        let url = nats.url();
        let hosts = (0..n)
            .map(|_| Server::ferry(&["--cluster", &url]))
            .collect::<anyhow::Result<Vec<_>>>()?;
        rows.push(run(rt, name, &hosts, &args)?);
        drop(hosts);
    }
    let table = render(&rows, &args);
    print!("{table}");
    super::write_section(&args.out, "cluster", &table)
}

fn render(rows: &[Row], args: &Args) -> String {
    let base = rows[0].accepts.rps();
    let mut s = format!(
        "### Cluster mode: store-and-forward across hosts\n\n`POST` with `Prefer: respond-async` to hello-http from {} connections spread over the hosts for {}s; in cluster mode each 202 follows the JetStream acknowledgements (one nats-server, R1; its default `sync_interval` calls `fsync` every 2 minutes, so an acknowledged submit can be lost to a power cut, where the embedded store's 202 follows an `fsync`: compare the row with `sync_interval: always`). *Completed/s*: invocations finished from the first submit until the last one ran, on all hosts. Every host, the nats-server and the load generator share this machine's two cores: more hosts here add processes, not cores.\n\n",
        args.connections,
        args.duration.as_secs(),
    );
    s.push_str("| configuration | accepts/s | p50 submit | p99 submit | errors | completed/s | drain after the load | accepts vs embedded store |\n");
    s.push_str("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for r in rows {
        s.push_str(&format!(
            "| {} | {:.0} | {:.1} ms | {:.1} ms | {} | {:.0} | {:.1} s | {:.2}x |\n",
            r.accepts.name,
            r.accepts.rps(),
            r.accepts.p50.as_secs_f64() * 1e3,
            r.accepts.p99.as_secs_f64() * 1e3,
            r.accepts.errors,
            r.completed_per_s,
            r.drain.as_secs_f64(),
            r.accepts.rps() / base
        ));
    }
    s
}
