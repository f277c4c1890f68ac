//! Big payloads: store-and-forward submits of 1 KB, 1 MB and 16 MB bodies to one host (the
//! embedded store, a fresh data directory each). For each size: accepts/s, the data directory's
//! growth per byte of payload (the most seen while the submits arrive, and once every invocation
//! has run and the journal was folded into the store), the host's peak RSS, and the p99 of
//! status reads while the store holds every invocation.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use super::{deploy_to, status_bytes, until, Args, Server};

/// Bytes under `dir`, counted by allocated blocks (what the disk holds, sparse files included).
fn disk_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => disk_bytes(&e.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

struct Row {
    size: usize,
    count: usize,
    accepts: f64,
    disk_peak: f64,
    disk_settled: f64,
    peak_rss: u64,
    idle_rss: u64,
    status_p50: Duration,
    status_p99: Duration,
}

fn one(size: usize, count: usize, clients: usize) -> anyhow::Result<Row> {
    eprintln!("submitting {count} bodies of {size} bytes ...");
    let dir = tempfile::tempdir()?;
    let server = Server::ferry_on(dir.path(), &[])?;
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()?;
    let wasm = std::fs::read(ferry_tests::guests::HELLO_HTTP)?;
    deploy_to(&http, server.admin, "hello-http", wasm)?;
    let url = format!("http://{}/hello-http/upload", server.addr);
    let pid = server.child.id();
    let before = disk_bytes(dir.path());
    let idle_rss = status_bytes(pid, "VmRSS:");

    // The data directory's size, sampled while the submits arrive.
    let (done, peak) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let sampler = {
        let (done, peak, path) = (done.clone(), peak.clone(), dir.path().to_path_buf());
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                peak.fetch_max(disk_bytes(&path), Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };

    let body = bytes::Bytes::from(vec![b'x'; size]);
    let ids = Arc::new(Mutex::new(Vec::new()));
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..clients)
        .map(|_| {
            let (http, url, body, ids, next) = (
                http.clone(),
                url.clone(),
                body.clone(),
                ids.clone(),
                next.clone(),
            );
            std::thread::spawn(move || -> anyhow::Result<()> {
                while next.fetch_add(1, Ordering::SeqCst) < count as u64 {
                    let resp = http
                        .post(&url)
                        .header("prefer", "respond-async")
                        .header("content-type", "application/octet-stream")
                        .body(body.clone())
                        .send()?;
                    if resp.status() != 202 {
                        bail!("a submit was answered {}: {}", resp.status(), resp.text()?);
                    }
                    let v: serde_json::Value = resp.json()?;
                    let id = v["id"].as_str().context("no id")?.to_string();
                    ids.lock().unwrap().push(id);
                }
                Ok(())
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap()?;
    }
    let accepts = count as f64 / started.elapsed().as_secs_f64();
    let ids = ids.lock().unwrap().clone();

    // Every invocation run, then the journal folded into the store (once a second).
    let status = |id: &str| -> anyhow::Result<serde_json::Value> {
        Ok(http
            .get(format!(
                "http://{}{}{id}",
                server.addr,
                ferry_triggers::http::STATUS_PREFIX
            ))
            .send()?
            .json()?)
    };
    for id in &ids {
        until("every invocation finished", || {
            status(id).is_ok_and(|v| v["status"] == "succeeded")
        })?;
    }
    // Folded: the journal's submits and every outcome are in the store (the checkpoint after
    // the last outcome may well have run while the statuses were read).
    ferry_tests::wait_until_checkpointed(dir.path());
    done.store(true, Ordering::SeqCst);
    sampler.join().unwrap();
    let payload = (size * count) as f64;
    let settled = disk_bytes(dir.path()).saturating_sub(before) as f64 / payload;
    let disk_peak = peak.load(Ordering::SeqCst).saturating_sub(before) as f64 / payload;
    let peak_rss = status_bytes(pid, "VmHWM:");

    // Status reads with every invocation stored.
    let mut times = Vec::new();
    for i in 0..1000 {
        let id = &ids[i % ids.len()];
        let t = Instant::now();
        status(id)?;
        times.push(t.elapsed());
    }
    times.sort();
    Ok(Row {
        size,
        count,
        accepts,
        disk_peak,
        disk_settled: settled,
        peak_rss,
        idle_rss,
        status_p50: times[times.len() / 2],
        status_p99: times[times.len() * 99 / 100],
    })
}

fn size_name(size: usize) -> String {
    match size {
        s if s >= 1 << 20 => format!("{} MB", s >> 20),
        s => format!("{} KB", s >> 10),
    }
}

pub(crate) fn payloads_suite(args: &Args) -> anyhow::Result<()> {
    let rows = [(1 << 10, 4000, 8), (1 << 20, 400, 8), (16 << 20, 40, 4)]
        .into_iter()
        .map(|(size, count, clients)| one(size, count, clients))
        .collect::<anyhow::Result<Vec<Row>>>()?;
    let mut s = String::from(
        "### Big payloads: store-and-forward submits by body size\n\nOne host on the embedded store (a fresh data directory for each size); 8 clients (4 for 16 MB) POST the body to the hello-http function with `Prefer: respond-async` until the count is accepted. Disk: the data directory's growth divided by the bytes of payload accepted, the most seen while the submits arrive (sampled every 50 ms) and once every invocation has run and the journal was folded into the store (the journal's file keeps its blocks, to be overwritten by later submits). Peak RSS: the host's high-water mark (its RSS before the first submit in brackets). Status reads: 1,000 `GET /_ferry/invocations/ID` one after another with every invocation stored.\n\n",
    );
    s.push_str("| body | submits | accepted/s | MB/s | disk per payload byte: peak | settled | host peak RSS | status read p50 | p99 |\n");
    s.push_str("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for r in &rows {
        s.push_str(&format!(
            "| {} | {} | {:.0} | {:.0} | {:.2}x | {:.2}x | {:.0} MB ({:.0} MB) | {:.2} ms | {:.2} ms |\n",
            size_name(r.size),
            r.count,
            r.accepts,
            r.accepts * r.size as f64 / 1e6,
            r.disk_peak,
            r.disk_settled,
            r.peak_rss as f64 / 1e6,
            r.idle_rss as f64 / 1e6,
            r.status_p50.as_secs_f64() * 1e3,
            r.status_p99.as_secs_f64() * 1e3,
        ));
    }
    println!("{s}");
    super::write_section(&args.out, "payloads", &s)
}
