//! Crash loops: the real `ferry` process killed again and again at random points, during a
//! burst of store-and-forward submits (SIGKILL), while replaying its journal right after a
//! restart, during a checkpoint, and during a deploy (crash points). After every round the store
//! must open, every id that got a 202 must run, and every deploy answered 2xx must be there.
//!
//! The suite runs a short loop (`FERRY_CRASH_ROUNDS`, default 4: one of each); `scripts/crash-loop.sh`
//! runs the long one (50 rounds or more). `FERRY_CRASH_SEED` repeats a run.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_tests::receiver::Receiver;
use ferry_tests::{eventually, guests, Ferry};

/// A small deterministic generator (xorshift), so that a seed repeats a run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }

    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
}

/// Submitting clients that run until stopped, collecting the ids acknowledged with 202.
struct Burst {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<String>>>,
    count: Arc<AtomicUsize>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Burst {
    fn start(base: &str, clients: usize, max: usize) -> Burst {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let count = Arc::new(AtomicUsize::new(0));
        let threads = (0..clients)
            .map(|_| {
                let (stop, acked, count) = (stop.clone(), acked.clone(), count.clone());
                let url = format!("{base}/misbehave/record");
                std::thread::spawn(move || {
                    let http = reqwest::blocking::Client::builder()
                        .timeout(Duration::from_secs(10))
                        .build()
                        .unwrap();
                    while !stop.load(Ordering::SeqCst) && count.load(Ordering::SeqCst) < max {
                        match http.post(&url).header("prefer", "respond-async").send() {
                            Ok(r) if r.status().as_u16() == 202 => {
                                if let Ok(v) = r.json::<serde_json::Value>() {
                                    acked
                                        .lock()
                                        .unwrap()
                                        .push(v["id"].as_str().unwrap().to_string());
                                    count.fetch_add(1, Ordering::SeqCst);
                                }
                            }
                            // Cut off by the crash: not acknowledged, and the host is gone.
                            _ => break,
                        }
                    }
                })
            })
            .collect();
        Burst {
            stop,
            acked,
            count,
            threads,
        }
    }

    fn acked(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    fn finish(self) -> Vec<String> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            t.join().unwrap();
        }
        self.acked.lock().unwrap().clone()
    }
}

/// Waits until every id in `acked` has run (the recorder was called for it); returns how many
/// times each id ran.
fn all_run(recv: &Receiver, acked: &[String]) -> HashMap<String, usize> {
    eventually(
        "every acknowledged submit to run",
        Duration::from_secs(180),
        || {
            let mut hits: HashMap<String, usize> = HashMap::new();
            for r in recv.requests() {
                if let Some(id) = r.path.strip_prefix("/hit/") {
                    *hits.entry(id.to_string()).or_default() += 1;
                }
            }
            acked.iter().all(|id| hits.contains_key(id)).then_some(hits)
        },
    )
}

/// A host under a burst of submits dies inside its first checkpoint: after the store's flush and
/// before the copies of the submits journaled meanwhile, or after the copies and before the new
/// generation's marker. The next start must find the old generation whole. (Whether a checkpoint
/// copies any submit depends on timing; the journal's unit tests place copies deterministically.)
#[test]
fn a_crash_before_a_new_journal_generations_marker_loses_nothing_acknowledged() {
    let recv = Receiver::start();
    let mut ferry = Ferry::start();
    ferry.deploy_recorder(&recv);
    ferry.terminate(Duration::from_secs(30));
    for point in ["checkpoint-before-marker", "checkpoint-before-copies"] {
        crash_at(&mut ferry, point.to_string());
        ferry.start_again();
        // Submits go on arriving while the first checkpoint flushes the store.
        let burst = Burst::start(&ferry.public, 4, 100_000);
        assert!(!ferry.wait_for_exit(Duration::from_secs(60)).success());
        let acked = burst.finish();
        let journaled =
            ferry_host::delivery::journal::inspect(&ferry.data_dir.join("submits.journal"))
                .unwrap()
                .records;
        assert!(!acked.is_empty(), "{point}: some submits were acknowledged");
        assert!(journaled > 0, "{point}: the journal holds them");
        ferry.env.clear();
        ferry.start_again();
        all_run(&recv, &acked);
        assert!(!ferry.log().contains("panicked"), "{}", ferry.log());
        println!(
            "{point}: {} acknowledged, {journaled} journaled, all run after the crash",
            acked.len()
        );
        ferry.terminate(Duration::from_secs(30));
    }
}

fn crash_at(ferry: &mut Ferry, point: String) {
    ferry.env = vec![("FERRY_CRASH_AT".into(), point)];
}

#[test]
fn crash_loop_loses_nothing_acknowledged() {
    let rounds: usize = std::env::var("FERRY_CRASH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(4);
    let seed: u64 = std::env::var("FERRY_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    println!("crash loop: {rounds} rounds, FERRY_CRASH_SEED={seed}");
    let mut rng = Rng(seed);
    let recv = Receiver::start();
    let mut ferry = Ferry::start();
    ferry.deploy_recorder(&recv);

    let mut all_acked: Vec<String> = Vec::new();
    let mut deployed: Vec<String> = Vec::new();
    let kinds = ["burst", "replay", "checkpoint", "deploy"];
    for round in 0..rounds {
        let kind = kinds[round % kinds.len()];
        let log_before = ferry.log().len();
        let mut acked = Vec::new();
        match kind {
            "burst" => {
                // SIGKILL after a random number of acknowledged submits.
                let at = rng.between(20, 400) as usize;
                let burst = Burst::start(&ferry.public, 4, usize::MAX);
                eventually("submits before the kill", Duration::from_secs(60), || {
                    (burst.acked() >= at).then_some(())
                });
                ferry.kill();
                acked = burst.finish();
            }
            "replay" => {
                // A burst, SIGKILL at once (the journal holds its tail), then a start that dies
                // while writing the journal back into the store.
                let n = rng.between(30, 200) as usize;
                let burst = Burst::start(&ferry.public, 4, n);
                eventually("the burst", Duration::from_secs(60), || {
                    (burst.acked() >= n).then_some(())
                });
                ferry.kill();
                acked = burst.finish();
                crash_at(
                    &mut ferry,
                    format!("journal-replaying:{}", rng.between(1, 20)),
                );
                if ferry.try_start_again() {
                    ferry.kill(); // the journal held fewer records than the crash point counts
                }
            }
            "checkpoint" => {
                // A start that dies inside its first checkpoint with data.
                let point = [
                    "checkpoint-start",
                    "store-before-seal",
                    "checkpoint-before-copies",
                    "checkpoint-before-marker",
                ][rng.below(4) as usize];
                ferry.kill();
                crash_at(&mut ferry, point.to_string());
                // The journal left by the last round is checkpointed right after the start, so
                // the host may die before it is even ready.
                if ferry.try_start_again() {
                    let burst = Burst::start(&ferry.public, 4, 100_000);
                    ferry.wait_for_exit(Duration::from_secs(60));
                    acked = burst.finish();
                }
            }
            _ => {
                // A start that dies in the middle of its k-th deploy; a SIGKILL right after a
                // deploy answered now and then.
                ferry.kill();
                let k = rng.between(1, 3);
                crash_at(&mut ferry, format!("deploy-before-flush:{k}"));
                ferry.start_again();
                for i in 0..k {
                    let name = format!("d{round}-{i}");
                    let resp = ferry
                        .admin_req(reqwest::Method::PUT, &format!("/v1/functions/{name}"))
                        .header("content-type", "application/wasm")
                        .body(guests::bytes(guests::HELLO_HTTP))
                        .send();
                    if let Ok(r) = resp {
                        if r.status().is_success() {
                            deployed.push(name);
                        }
                    }
                }
                ferry.wait_for_exit(Duration::from_secs(60));
            }
        }
        ferry.env.clear();
        // Every round ends with a host that opens its store and serves.
        ferry.start_again();
        all_acked.extend(acked.iter().cloned());
        let started = Instant::now();
        let hits = all_run(&recv, &all_acked);
        for name in &deployed {
            let (status, f) = ferry.admin_get(&format!("/v1/functions/{name}"));
            assert_eq!(
                status, 200,
                "round {round}: deploy {name} answered 2xx but is gone: {f}"
            );
        }
        let duplicates = acked
            .iter()
            .filter(|id| hits.get(*id).copied().unwrap_or(0) > 1)
            .count();
        let log = &ferry.log()[log_before..];
        println!(
            "round {round:>3} ({kind:<10}): {:>4} acknowledged, all run ({} ms to drain), {duplicates} run more than once, journal replayed: {}, {} deploys kept",
            acked.len(),
            started.elapsed().as_millis(),
            log.contains("replayed the submit journal"),
            deployed.len()
        );
        assert!(!log.contains("panicked"), "round {round}: {log}");
    }
    println!(
        "crash loop: {rounds} rounds, {} acknowledged submits all run, {} deploys all kept",
        all_acked.len(),
        deployed.len()
    );
}
