//! The polling trigger with the real binary: a one-second schedule fires every slot once, a
//! restart fires the missed slots once (catch_up = "one"), and a URL poll emits each new item
//! once, sending the ETag back.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry_tests::receiver::{Receiver, BODY};
use ferry_tests::{eventually, guests, Ferry};

/// `misbehave` deployed as `record`: a POST to `/record` (what a poll sends an HTTP function)
/// records `GET /hit/<invocation id>` at `receiver`.
fn deploy_record(ferry: &Ferry, receiver: &Receiver, poll: &str) {
    let manifest = format!(
        "name = \"record\"\n[outbound]\nallow = [\"127.0.0.1\"]\n[config]\nRECORD_TO = \"{}\"\n[[trigger.poll]]\n{poll}\n",
        receiver.addr
    );
    let (status, body) =
        ferry.deploy_manifest("record", guests::bytes(guests::MISBEHAVE), &manifest);
    assert_eq!(status, 201, "{body}");
}

fn runs(receiver: &Receiver) -> Vec<String> {
    receiver
        .requests()
        .into_iter()
        .filter_map(|r| r.path.strip_prefix("/hit/").map(str::to_string))
        .collect()
}

fn poll_state(ferry: &Ferry) -> serde_json::Value {
    let (status, f) = ferry.admin_get("/v1/functions/record");
    assert_eq!(status, 200, "{f}");
    f["polls"][0].clone()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The slots (ms) the host logged as fired, with whether each was a catch-up, after `from`
/// bytes of its log.
fn fired(ferry: &Ferry, from: usize) -> Vec<(u64, bool)> {
    ferry.log()[from..]
        .lines()
        .filter(|l| l.contains("trigger.poll: fired"))
        .filter_map(|l| {
            let slot = l
                .split("slot_ms=")
                .nth(1)?
                .split(' ')
                .next()?
                .parse()
                .ok()?;
            Some((slot, l.contains("catch_up=true")))
        })
        .collect()
}

#[test]
fn a_one_second_schedule_fires_every_slot_once() {
    let receiver = Receiver::start();
    let mut ferry = Ferry::stopped(&[]);
    ferry.env = vec![("FERRY_LOG".into(), "info,ferry_triggers=debug".into())];
    ferry.start_again();
    deploy_record(&ferry, &receiver, "every = \"1s\"");
    eventually("four ticks to run", Duration::from_secs(60), || {
        (runs(&receiver).len() >= 4).then_some(())
    });
    let slots: Vec<u64> = fired(&ferry, 0).into_iter().map(|(s, _)| s).collect();
    assert!(slots.len() >= 4, "{slots:?}");
    for pair in slots.windows(2) {
        assert_eq!(
            pair[1] - pair[0],
            1000,
            "consecutive one-second slots, none skipped or doubled: {slots:?}"
        );
    }
    let state = poll_state(&ferry);
    assert!(state["fired"].as_u64().unwrap() >= 4, "{state}");
    assert!(state["next_ms"].as_u64().is_some(), "{state}");
    let shown = ferry.cli(&["show", "record"], None);
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.contains("poll every 1s") && shown.contains("tick "),
        "{shown}"
    );
    // Every fired slot ran exactly once.
    let fired_now = fired(&ferry, 0).len();
    eventually("every fired slot to run", Duration::from_secs(60), || {
        (runs(&receiver).len() >= fired_now).then_some(())
    });
    let mut ids = runs(&receiver);
    let n = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n, "no invocation ran twice");
    let ticks = ferry
        .metric(r#"ferry_trigger_events_total{trigger="schedule",function="record",outcome="ok"}"#);
    assert!(ticks >= 4.0, "{ticks}");
    let ran = r#"ferry_invocations_total{function="record",trigger="schedule",mode="async",outcome="ok"}"#;
    eventually("the runs counted", Duration::from_secs(30), || {
        (ferry.metric(ran) >= 4.0).then_some(())
    });
}

#[test]
fn a_restart_keeps_the_cursor_and_fires_the_missed_slots_once() {
    let receiver = Receiver::start();
    let mut ferry = Ferry::stopped(&[]);
    ferry.env = vec![("FERRY_LOG".into(), "info,ferry_triggers=debug".into())];
    ferry.start_again();
    deploy_record(&ferry, &receiver, "every = \"1s\"");
    eventually("two ticks", Duration::from_secs(60), || {
        (fired(&ferry, 0).len() >= 2).then_some(())
    });
    ferry.terminate(Duration::from_secs(30));
    let before = fired(&ferry, 0);
    let last_before = before.last().unwrap().0;
    // The host stays down over at least three slots.
    let down_until = now_ms() + 3_500;
    eventually("time to pass", Duration::from_secs(30), || {
        (now_ms() >= down_until).then_some(())
    });
    let log_len = ferry.log().len();
    ferry.start_again();
    eventually(
        "three slots after the restart",
        Duration::from_secs(60),
        || (fired(&ferry, log_len).len() >= 3).then_some(()),
    );
    let after = fired(&ferry, log_len);
    let slots: Vec<u64> = after.iter().map(|(s, _)| *s).collect();
    // Down for 3.5 s or more after `last_before`: at least three slots were missed. With
    // catch_up = "one" the first slot fired is the latest of them by the host's clock (the
    // earlier ones are skipped), marked as a catch-up.
    assert!(
        slots[0] >= last_before + 3000,
        "the latest missed slot, not an earlier one: {after:?} (last before: {last_before})"
    );
    assert!(after[0].1, "the first slot fired is a catch-up: {after:?}");
    // Then each slot once, in order: no other missed slot, nothing fired twice. (A slot that
    // came while the host was catching up is fired as a late one; its flag does not matter.)
    assert!(
        slots.windows(2).all(|w| w[1] == w[0] + 1000),
        "each slot after it once, in order: {after:?}"
    );
}

#[test]
fn a_url_poll_emits_each_new_item_once_and_sends_the_etag_back() {
    let version = Arc::new(AtomicUsize::new(1));
    let v = version.clone();
    let feed = Receiver::with(move |req, _| {
        let version = v.load(Ordering::SeqCst);
        let etag = format!("\"v{version}\"");
        if req.header("if-none-match") == Some(etag.as_str()) {
            return (304, vec![("etag".into(), etag)]);
        }
        let items: Vec<String> = (1..=version + 1)
            .map(|i| format!("{{\"id\": {i}, \"title\": \"item {i}\"}}"))
            .collect();
        (
            200,
            vec![
                ("etag".into(), etag),
                ("content-type".into(), "application/json".into()),
                (BODY.into(), format!("{{\"items\": [{}]}}", items.join(","))),
            ],
        )
    });
    let receiver = Receiver::start();
    let ferry = Ferry::start_with(&["--allow-callback-host", "127.0.0.1"]);
    deploy_record(
        &ferry,
        &receiver,
        &format!(
            "every = \"1s\"\nurl = \"{}\"\nsplit = \"$.items\"\nitem_id = \"id\"",
            feed.url("/feed.json")
        ),
    );
    // Version 1 has items 1 and 2.
    eventually("items 1 and 2", Duration::from_secs(60), || {
        (runs(&receiver).len() >= 2).then_some(())
    });
    eventually(
        "a conditional GET answered 304",
        Duration::from_secs(60),
        || {
            feed.requests()
                .iter()
                .any(|r| r.header("if-none-match") == Some("\"v1\""))
                .then_some(())
        },
    );
    assert_eq!(runs(&receiver).len(), 2, "304 emits nothing");
    // Version 2 adds item 3: one more run, not three.
    version.store(2, Ordering::SeqCst);
    eventually("item 3", Duration::from_secs(60), || {
        (runs(&receiver).len() >= 3).then_some(())
    });
    eventually("the new ETag sent back", Duration::from_secs(60), || {
        feed.requests()
            .iter()
            .any(|r| r.header("if-none-match") == Some("\"v2\""))
            .then_some(())
    });
    assert_eq!(
        runs(&receiver).len(),
        3,
        "items already seen are not emitted again"
    );
    let state = poll_state(&ferry);
    assert_eq!(state["seen_count"], 3, "{state}");
    assert_eq!(state["etag"], "\"v2\"", "{state}");
}

#[test]
fn the_feed_watcher_example_turns_each_new_item_into_an_event() {
    let feed = Receiver::with(|_, _| {
        (
            200,
            vec![
                ("content-type".into(), "application/json".into()),
                (
                    BODY.into(),
                    r#"{"items": [{"id": "a", "title": "First", "url": "https://x/a"}, {"id": "b", "title": "Second", "url": "https://x/b"}]}"#.into(),
                ),
            ],
        )
    });
    let mut ferry = Ferry::stopped(&["--allow-callback-host", "127.0.0.1"]);
    ferry.env = vec![("FERRY_LOG".into(), "info,ferry_triggers=debug".into())];
    ferry.start_again();
    let manifest = format!(
        "name = \"feed-watcher\"\n[[trigger.poll]]\nevery = \"1s\"\nurl = \"{}\"\nsplit = \"$.items\"\nitem_id = \"id\"\n",
        feed.url("/feed.json")
    );
    let (status, body) = ferry.deploy_manifest(
        "feed-watcher",
        guests::bytes(guests::FEED_WATCHER),
        &manifest,
    );
    assert_eq!(status, 201, "{body}");
    // The poll logs each invocation it submits.
    let ids = eventually("two items submitted", Duration::from_secs(60), || {
        let ids: Vec<String> = ferry
            .log()
            .lines()
            .filter(|l| l.contains("trigger.poll: submitted"))
            .filter_map(|l| {
                l.split("invocation_id=")
                    .nth(1)?
                    .split(' ')
                    .next()
                    .map(str::to_string)
            })
            .collect();
        (ids.len() >= 2).then_some(ids)
    });
    assert_eq!(ids.len(), 2, "each item once");
    let mut titles: Vec<String> = ids
        .iter()
        .map(|id| {
            let done = ferry.finished(id);
            assert_eq!(done["status"], "succeeded", "{done}");
            assert_eq!(done["result"]["type"], "com.example.feed.new-item");
            done["result"]["data"]["title"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    titles.sort();
    assert_eq!(titles, ["First", "Second"]);
}

#[test]
fn a_crash_at_the_moment_of_firing_runs_the_slot_once() {
    let receiver = Receiver::start();
    let mut ferry = Ferry::stopped(&[]);
    ferry.env = vec![
        ("FERRY_LOG".into(), "info,ferry_triggers=debug".into()),
        // The second slot is submitted, then the host dies before it records it as fired.
        ("FERRY_CRASH_AT".into(), "poll-fired:2".into()),
    ];
    ferry.start_again();
    deploy_record(&ferry, &receiver, "every = \"1s\"\ncatch_up = \"all\"");
    assert!(!ferry.wait_for_exit(Duration::from_secs(60)).success());
    // An invocation submitted before the host died may run again (store-and-forward is at least
    // once: it may have run, or be running, without being recorded as finished); no other may.
    let log_len = ferry.log().len();
    let before_crash: Vec<String> = ferry.log()[..log_len]
        .lines()
        .filter(|l| l.contains("trigger.poll: submitted"))
        .filter_map(|l| {
            Some(
                l.split("invocation_id=")
                    .nth(1)?
                    .split(' ')
                    .next()?
                    .to_string(),
            )
        })
        .collect();
    assert!(!before_crash.is_empty(), "{}", ferry.log());
    ferry.env = vec![("FERRY_LOG".into(), "info,ferry_triggers=debug".into())];
    ferry.start_again();
    eventually(
        "two slots after the restart",
        Duration::from_secs(60),
        || (fired(&ferry, log_len).len() >= 2).then_some(()),
    );
    assert!(
        ferry.log()[log_len..].contains("new=false"),
        "the slot that was submitted before the crash is fired again as a repeat"
    );
    let mut slots: Vec<u64> = fired(&ferry, 0).into_iter().map(|(s, _)| s).collect();
    slots.sort();
    slots.dedup();
    // The misbehave guest records its invocation id.
    let invocations = |receiver: &Receiver| {
        let mut ids = runs(receiver);
        ids.sort();
        ids.dedup();
        ids
    };
    eventually("every slot to run", Duration::from_secs(60), || {
        (invocations(&receiver).len() >= slots.len()).then_some(())
    });
    // Stopped, so that every slot submitted is also logged as fired.
    ferry.terminate(Duration::from_secs(30));
    let mut after: Vec<u64> = fired(&ferry, 0).into_iter().map(|(s, _)| s).collect();
    after.sort();
    after.dedup();
    // A slot fired as the host stopped may not have run yet.
    let ran = invocations(&receiver);
    assert!(
        ran.len() <= after.len(),
        "at most one invocation per slot: {ran:?} for slots {after:?}"
    );
    let all = runs(&receiver);
    for id in &ran {
        let times = all.iter().filter(|r| *r == id).count();
        assert!(
            times == 1 || before_crash.contains(id),
            "invocation {id} ran {times} times but was submitted after the restart"
        );
    }
}
