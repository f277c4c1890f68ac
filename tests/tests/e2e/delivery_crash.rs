//! Nothing acknowledged is lost: at least 5,000 store-and-forward submits while the real `ferry`
//! process is killed with SIGKILL mid-burst, restarted, and drained. Every id that got a 202 must
//! be invoked at least once; duplicates (at-least-once) are counted and reported.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

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

    let urls = Arc::new(RwLock::new(vec![ferry.public.clone()]));
    let mut acked_before_kill = None;
    let (acked, refused) = ferry_tests::burst(&urls, TOTAL, CLIENTS, |n| {
        if n >= KILL_AT && acked_before_kill.is_none() {
            ferry.kill();
            acked_before_kill = Some(n);
            ferry.restart();
            *urls.write().unwrap() = vec![ferry.public.clone()];
        }
    });
    let acked_before_kill = acked_before_kill.expect("the host was killed mid-burst");

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
        refused,
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
