//! Nothing acknowledged is lost: at least 5,000 store-and-forward submits while the real `ferry`
//! process is killed with SIGKILL mid-burst, restarted, and drained. Every id that got a 202 must
//! be invoked at least once; duplicates (at-least-once) are counted and reported.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use ferry_tests::receiver::Receiver;
use ferry_tests::{eventually, Ferry};

const TOTAL: usize = 5_000;
const KILL_AT: usize = 2_000;
const CLIENTS: usize = 8;

#[test]
fn acknowledged_submits_survive_sigkill() {
    let recv = Receiver::start();
    let mut ferry = Ferry::start();
    ferry.deploy_recorder(&recv);

    let base = Arc::new(RwLock::new(ferry.public.clone()));
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(300);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (base, acked, count, refused) =
                (base.clone(), acked.clone(), count.clone(), refused.clone());
            std::thread::spawn(move || {
                let http = reqwest::blocking::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .unwrap();
                while count.load(Ordering::SeqCst) < TOTAL && Instant::now() < deadline {
                    let url = format!("{}/misbehave/record", base.read().unwrap());
                    match http.post(url).header("prefer", "respond-async").send() {
                        Ok(resp) if resp.status().as_u16() == 202 => {
                            if let Ok(v) = resp.json::<serde_json::Value>() {
                                acked
                                    .lock()
                                    .unwrap()
                                    .push(v["id"].as_str().unwrap().to_string());
                                count.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                        // Refused, cut off by the kill, or the host is restarting: not acknowledged.
                        _ => {
                            refused.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(Duration::from_millis(5));
                        }
                    }
                }
            })
        })
        .collect();

    eventually("the first submits", Duration::from_secs(120), || {
        (count.load(Ordering::SeqCst) >= KILL_AT).then_some(())
    });
    ferry.kill();
    let acked_before_kill = count.load(Ordering::SeqCst);
    ferry.restart();
    *base.write().unwrap() = ferry.public.clone();
    for c in clients {
        c.join().unwrap();
    }
    let acked: Vec<String> = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= TOTAL,
        "only {} submits were acknowledged",
        acked.len()
    );
    assert!(
        acked.len() > acked_before_kill,
        "submits continued after the restart"
    );

    // Drain: every acknowledged id must reach the receiver.
    let missing = eventually(
        "every acknowledged invocation to run",
        Duration::from_secs(240),
        || {
            let mut hits: HashMap<String, usize> = HashMap::new();
            for r in recv.requests() {
                if let Some(id) = r.path.strip_prefix("/hit/") {
                    *hits.entry(id.to_string()).or_default() += 1;
                }
            }
            let missing: Vec<&String> = acked.iter().filter(|id| !hits.contains_key(*id)).collect();
            missing.is_empty().then_some(hits)
        },
    );
    let duplicates = missing.values().filter(|n| **n > 1).count();
    let extra: usize = missing.values().map(|n| n - 1).sum();
    println!(
        "crash test: {} acknowledged ({} before SIGKILL), {} not acknowledged, all {} invoked; \
         {duplicates} invoked more than once ({extra} extra runs)",
        acked.len(),
        acked_before_kill,
        refused.load(Ordering::SeqCst),
        acked.len(),
    );
    for line in ferry
        .log()
        .lines()
        .filter(|l| l.contains("submit journal") || l.contains("recovered unfinished"))
    {
        println!("host: {line}");
    }
    assert!(ferry.is_running(), "the restarted host is still up");
}
