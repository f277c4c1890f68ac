//! A clean shutdown (SIGTERM) with asynchronous attempts in flight: an attempt that finishes
//! within the grace period is recorded as it ended; one that does not is recorded as interrupted
//! (store-and-forward: run again on the next start; fire-and-forget: failed, "lost"). Nothing is
//! left "running", and the process exits 0 within the grace period.

use std::time::Duration;

use ferry_tests::receiver::Receiver;
use ferry_tests::{eventually, guests, Ferry, Gate};
use serde_json::Value;

/// A receiver that holds `GET /hit/hold` until its gate opens.
fn holder() -> (Receiver, Gate) {
    let gate = Gate::default();
    let held = gate.clone();
    let receiver = Receiver::with(move |req, _| {
        if req.path == "/hit/hold" {
            held.wait();
        }
        (200, vec![])
    });
    (receiver, gate)
}

fn holds(receiver: &Receiver) -> usize {
    receiver
        .requests()
        .iter()
        .filter(|r| r.path == "/hit/hold")
        .count()
}

#[test]
fn sigterm_records_attempts_in_flight_and_exits_within_the_grace_period() {
    let (quick_rx, quick_gate) = holder();
    let (stuck_rx, stuck_gate) = holder();
    let mut ferry = Ferry::start_with(&["--shutdown-grace", "5s"]);
    for (name, receiver) in [("quick", &quick_rx), ("stuck", &stuck_rx)] {
        let manifest = format!(
            "name = \"{name}\"\n[outbound]\nallow = [\"127.0.0.1\"]\n[config]\nRECORD_TO = \"{}\"\n",
            receiver.addr
        );
        let (status, body) =
            ferry.deploy_manifest(name, guests::bytes(guests::MISBEHAVE), &manifest);
        assert_eq!(status, 201, "{body}");
    }
    let quick = ferry.submit_ok("/quick/hold", &[]);
    let stuck = ferry.submit_ok("/stuck/hold", &[]);
    let lost = ferry.submit_ok("/stuck/hold", &[("ferry-delivery", "fire-and-forget")]);
    eventually(
        "three attempts to be running",
        Duration::from_secs(60),
        || (holds(&quick_rx) == 1 && holds(&stuck_rx) == 2).then_some(()),
    );
    for id in [&quick, &stuck, &lost] {
        assert_eq!(ferry.invocation(id, 0)["status"], "running");
    }

    // SIGTERM; once the host has begun to shut down, the quick attempt is let go; the stuck
    // ones outlast the 5 s grace period (long enough for the quick one on a loaded machine).
    let log_len = ferry.log().len();
    let log = ferry.log_path();
    let waiter = std::thread::spawn(move || {
        eventually(
            "the host to begin shutting down",
            Duration::from_secs(30),
            || {
                let text = std::fs::read_to_string(&log).ok()?;
                text.get(log_len..)?.contains("shutting down").then_some(())
            },
        );
        quick_gate.open();
    });
    let status = ferry.terminate(Duration::from_secs(60));
    waiter.join().unwrap();
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        ferry.log()
    );
    stuck_gate.open();

    ferry.start_again();
    let done = ferry.invocation(&quick, 0);
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["attempts"], 1);
    assert_eq!(holds(&quick_rx), 1, "the finished attempt is not run again");

    let v: Value = ferry.finished(&stuck);
    assert_eq!(v["status"], "succeeded", "{v}");
    assert_eq!(
        v["attempts"], 1,
        "the interrupted attempt does not count: {v}"
    );
    let history = v["history"].as_array().unwrap();
    assert_eq!(history.len(), 2, "{v}");
    assert!(
        history[0]["error"]
            .as_str()
            .unwrap()
            .contains("interrupted"),
        "{v}"
    );

    let v = ferry.invocation(&lost, 0);
    assert_eq!(v["status"], "failed", "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("the host stopped"),
        "{v}"
    );
}

#[test]
fn sigterm_keeps_queued_fire_and_forget_work_for_the_next_start() {
    let (receiver, gate) = holder();
    let mut ferry = Ferry::start_with(&["--workers", "1", "--shutdown-grace", "1s"]);
    let manifest = format!(
        "name = \"ff\"\n[delivery]\nmode = \"fire-and-forget\"\n[outbound]\nallow = [\"127.0.0.1\"]\n[config]\nRECORD_TO = \"{}\"\n",
        receiver.addr
    );
    let (status, body) = ferry.deploy_manifest("ff", guests::bytes(guests::MISBEHAVE), &manifest);
    assert_eq!(status, 201, "{body}");
    // The one fire-and-forget worker is held; fifty more wait in the queue behind it.
    let held = ferry.submit_ok("/ff/hold", &[]);
    eventually("the worker to be held", Duration::from_secs(60), || {
        (holds(&receiver) == 1).then_some(())
    });
    let queued: Vec<String> = (0..50)
        .map(|_| ferry.submit_ok("/ff/record", &[]))
        .collect();

    // SIGTERM: the held attempt outlasts the grace period; the queue is not run in time, so it
    // is kept, not dropped.
    let status = ferry.terminate(Duration::from_secs(60));
    assert!(status.success(), "{status}");
    assert!(
        ferry.log().contains("handed_back=50"),
        "the queued invocations were kept: {}",
        ferry.log()
    );
    gate.open();
    ferry.start_again();
    assert!(ferry.log().contains("requeued=50"), "{}", ferry.log());
    for id in &queued {
        assert_eq!(ferry.finished(id)["status"], "succeeded", "{id}");
    }
    let hits = receiver.requests();
    for id in &queued {
        let runs = hits
            .iter()
            .filter(|r| r.path == format!("/hit/{id}"))
            .count();
        assert_eq!(runs, 1, "{id} ran once");
    }
    // The one that was running when the grace period ended is lost, and says so.
    let v = ferry.invocation(&held, 0);
    assert_eq!(v["status"], "failed", "{v}");
    assert!(v["error"].as_str().unwrap().contains("lost"), "{v}");
}
