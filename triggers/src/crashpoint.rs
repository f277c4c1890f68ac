//! Crash points: named places where the process can be made to die at once, as `kill -9` would,
//! so that tests can crash it inside windows too narrow to hit with a signal (between reading
//! the journal and restoring it, between a store flush and the journal's truncation).
//!
//! `FERRY_CRASH_AT=name` aborts the process the first time it passes `name`; `name:N` the Nth
//! time. Unset (always, outside tests), a crash point costs one relaxed load.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

struct Armed {
    name: String,
    at: u64,
    passed: AtomicU64,
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let spec = std::env::var("FERRY_CRASH_AT").ok()?;
            let (name, at) = match spec.split_once(':') {
                Some((name, n)) => (name.to_string(), n.parse().unwrap_or(1)),
                None => (spec, 1),
            };
            Some(Armed {
                name,
                at: at.max(1),
                passed: AtomicU64::new(0),
            })
        })
        .as_ref()
}

/// Aborts the process here if `FERRY_CRASH_AT` names this point (and this is the time).
pub fn crashpoint(name: &str) {
    let Some(armed) = armed() else { return };
    if armed.name != name {
        return;
    }
    if armed.passed.fetch_add(1, Ordering::Relaxed) + 1 == armed.at {
        eprintln!("ferry: crash point {name} reached; aborting (FERRY_CRASH_AT)");
        std::process::abort();
    }
}
