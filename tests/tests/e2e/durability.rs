//! Crash safety beyond one `kill -9`: a crash during recovery, the order of the syscalls that make
//! a 202 durable, a full disk, and a damaged store. Every test runs the real `ferry` binary; the
//! crashes inside narrow windows use its crash points (`FERRY_CRASH_AT`), which abort the process
//! as `kill -9` would.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ferry_tests::{eventually, guests, Ferry};

fn deploy_hello(ferry: &Ferry) {
    let (status, body) = ferry.deploy_raw("hello-http", guests::bytes(guests::HELLO_HTTP));
    assert!(status == 201 || status == 200, "{body}");
}

/// The submits the journal holds (its current generation), and their bytes.
fn journaled(ferry: &Ferry) -> (usize, usize) {
    let info = ferry_host::delivery::journal::inspect(&ferry.data_dir.join("submits.journal"))
        .expect("reading the journal");
    (info.records, info.record_bytes)
}

/// Submits until the host stops answering (it aborted at a crash point); returns the ids that
/// were acknowledged with 202.
fn submit_until_down(ferry: &Ferry, max: usize) -> Vec<String> {
    submit_until_down_to(ferry, "/hello-http/durable", "", max)
}

/// Starts the stopped host to die at its first checkpoint, runs `submit` until it is down and
/// returns what was acknowledged. When the first checkpoint came between the first submit's
/// sync and its 202 (nothing acknowledged), the host is started and stopped cleanly and it is
/// tried again, up to five times.
fn acked_before_the_first_checkpoint(
    ferry: &mut Ferry,
    submit: impl Fn(&Ferry) -> Vec<String>,
) -> Vec<String> {
    for _ in 0..5 {
        ferry.env = vec![("FERRY_CRASH_AT".into(), "checkpoint-start".into())];
        ferry.start_again();
        let acked = submit(ferry);
        assert!(!ferry.wait_for_exit(Duration::from_secs(30)).success());
        ferry.env.clear();
        if !acked.is_empty() {
            return acked;
        }
        ferry.start_again();
        ferry.terminate(Duration::from_secs(30));
    }
    panic!("no submit was acknowledged before the crash, five times");
}

/// [`submit_until_down`] with this path and body.
fn submit_until_down_to(ferry: &Ferry, path: &str, body: &str, max: usize) -> Vec<String> {
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut acked = Vec::new();
    for _ in 0..max {
        let resp = http
            .post(ferry.url(path))
            .header("prefer", "respond-async")
            .body(body.to_string())
            .send();
        match resp {
            Ok(r) if r.status().as_u16() == 202 => {
                let v: serde_json::Value = r.json().unwrap();
                acked.push(v["id"].as_str().unwrap().to_string());
            }
            Ok(r) => panic!("submit answered {}", r.status()),
            Err(_) => break,
        }
    }
    acked
}

/// Every id reaches `succeeded` on the running host.
fn all_succeed(ferry: &Ferry, ids: &[String]) {
    for id in ids {
        let v = ferry.finished(id);
        assert_eq!(v["status"], "succeeded", "{id}: {v}");
    }
}

#[test]
fn a_crash_while_replaying_the_journal_loses_no_acknowledged_submit() {
    let mut ferry = Ferry::start();
    deploy_hello(&ferry);
    ferry.terminate(Duration::from_secs(30));

    // 1. The host dies at its first checkpoint, before the store is flushed: what it
    //    acknowledged is in the journal.
    let acked = acked_before_the_first_checkpoint(&mut ferry, |f| submit_until_down(f, 100_000));
    let before = journaled(&ferry);
    assert!(before.0 > 0, "the journal holds the acknowledged submits");

    // 2. The next start dies while writing them back into the store: the journal must still
    //    hold them (it is emptied only once they are durable in the store).
    ferry.env = vec![("FERRY_CRASH_AT".into(), "journal-replaying".into())];
    let status = ferry.run_to_exit(&[], Duration::from_secs(60));
    assert!(!status.success(), "the crash point ended the start");
    assert!(
        ferry
            .log()
            .contains("crash point journal-replaying reached"),
        "{}",
        ferry.log()
    );
    assert_eq!(
        journaled(&ferry),
        before,
        "a crash during recovery left the journal's records as they were"
    );

    // 3. A clean start runs every acknowledged submit.
    ferry.env.clear();
    ferry.start_again();
    all_succeed(&ferry, &acked);
    println!(
        "{} submits acknowledged before the crash, all run after a second crash during recovery",
        acked.len()
    );
}

/// One completed syscall of an `strace -f -y` trace.
#[derive(Debug)]
struct Call {
    name: String,
    /// The path strace resolved the first (fd) argument to, if any.
    path: String,
    /// The rest of the arguments as printed.
    args: String,
    ok: bool,
}

/// Parses an `strace -f -y -s N` trace into calls in the order strace printed their entries.
/// strace may print two threads' stops out of their real order, so each call is placed where it
/// was entered (an `<unfinished ...>` line); its result comes from its `<... resumed>` line. What
/// the trace shows after a call's entry started after that call began.
fn parse_trace(text: &str) -> Vec<Call> {
    let mut open: HashMap<String, usize> = HashMap::new();
    let mut calls: Vec<Call> = Vec::new();
    for line in text.lines() {
        let Some((pid, rest)) = line.split_once(' ') else {
            continue;
        };
        let rest = rest.trim_start();
        if let Some(start) = rest.strip_suffix(" <unfinished ...>") {
            if let Some((name, args)) = start.split_once('(') {
                open.insert(pid.to_string(), calls.len());
                calls.push(call(name, args, true));
            }
        } else if let Some(resumed) = rest.strip_prefix("<... ") {
            let (Some(i), Some((_, ret))) = (open.remove(pid), resumed.rsplit_once(") = ")) else {
                continue;
            };
            calls[i].ok = !ret.trim_start().starts_with('-');
        } else if let Some((name, args)) = rest.split_once('(') {
            if let Some((args, ret)) = args.rsplit_once(") = ") {
                calls.push(call(name, args, !ret.trim_start().starts_with('-')));
            }
        }
    }
    calls
}

fn call(name: &str, args: &str, ok: bool) -> Call {
    let path = args
        .split_once('<')
        .and_then(|(_, p)| p.split_once('>'))
        .map(|(p, _)| p.to_string())
        .unwrap_or_default();
    Call {
        name: name.to_string(),
        path,
        args: args.to_string(),
        ok,
    }
}

#[test]
fn every_202_follows_its_journal_sync_and_the_journal_is_emptied_only_after_the_store_is_fsynced() {
    let strace = Command::new("strace").arg("-V").output();
    assert!(
        strace.is_ok_and(|o| o.status.success()),
        "this test needs strace (scripts/test.sh installs it)"
    );
    let mut ferry = Ferry::start();
    deploy_hello(&ferry);
    ferry.terminate(Duration::from_secs(30));

    // The same host under strace: strace runs `ferry` itself.
    let trace = ferry.data_dir.parent().unwrap().join("strace.txt");
    let real = ferry_tests::ferry_bin();
    let wrapper = ferry.data_dir.parent().unwrap().join("ferry-under-strace");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec strace -f -y -qq -s 100000 -o {} -e trace=write,pwrite64,writev,fsync,fdatasync,ftruncate,sync_file_range,rename,renameat,renameat2 {} \"$@\"\n",
            trace.display(),
            real.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    ferry.bin = Some(wrapper);
    ferry.start_again();

    // Three bursts; after each, wait until a checkpoint has emptied the journal.
    let mut acked = Vec::new();
    for _ in 0..3 {
        for _ in 0..40 {
            acked.push(ferry.submit_ok("/hello-http/traced", &[]));
        }
        eventually(
            "a checkpoint to empty the journal",
            Duration::from_secs(30),
            || (journaled(&ferry).0 == 0).then_some(()),
        );
    }
    all_succeed(&ferry, &acked);
    // SIGTERM to `ferry` itself (strace's child), then strace ends with it.
    let strace_pid = ferry.pid();
    let pgrep = Command::new("pgrep")
        .args(["-P", &strace_pid.to_string()])
        .output()
        .unwrap();
    let ferry_pid = String::from_utf8_lossy(&pgrep.stdout).trim().to_string();
    assert!(!ferry_pid.is_empty(), "ferry runs under strace");
    Command::new("kill")
        .args(["-TERM", &ferry_pid])
        .status()
        .unwrap();
    assert!(ferry.wait_for_exit(Duration::from_secs(60)).success());

    let text = std::fs::read_to_string(&trace).unwrap();
    let calls = parse_trace(&text);
    let data_dir = std::fs::canonicalize(&ferry.data_dir).unwrap();
    let store = data_dir.join("db");
    let payloads = data_dir.join("payloads");
    let journal = data_dir.join("submits.journal").display().to_string();
    let in_store =
        |p: &str| Path::new(p).starts_with(&store) || Path::new(p).starts_with(&payloads);

    // (a) Before every new generation of the journal (its marker, written at offset 0, makes
    //     the records before it no longer count), every store file written since its last
    //     fsync has been fsynced again.
    let mut dirty: HashSet<String> = HashSet::new();
    let mut generations = 0;
    // ... and every journal write before it (the copies of the submits journaled during the
    //     flush) has been fdatasynced.
    let mut journal_unsynced = false;
    // (b) Every 202 follows the fdatasync of the journal write that holds its id.
    let mut written_at: HashMap<String, usize> = HashMap::new(); // id -> journal write index
    let mut last_journal_sync = None;
    let mut checked_202 = 0;
    for (i, c) in calls.iter().enumerate() {
        match c.name.as_str() {
            "write" | "pwrite64" | "writev" if in_store(&c.path) && c.ok => {
                dirty.insert(c.path.clone());
            }
            "pwrite64" if c.path == journal && c.ok && c.args.ends_with(", 16, 0") => {
                assert!(
                    dirty.is_empty(),
                    "a new journal generation began (call {i}) while these store files held writes not yet fsynced: {dirty:?}"
                );
                assert!(
                    !journal_unsynced,
                    "a new journal generation began (call {i}) before the journal's last write was fdatasynced"
                );
                generations += 1;
            }
            "write" | "pwrite64" if c.path == journal && c.ok => {
                journal_unsynced = true;
                for id in acked.iter().filter(|id| c.args.contains(id.as_str())) {
                    written_at.entry(id.clone()).or_insert(i);
                }
            }
            "fsync" | "fdatasync" if c.ok => {
                dirty.remove(&c.path);
                if c.path == journal {
                    last_journal_sync = Some(i);
                    journal_unsynced = false;
                }
            }
            "ftruncate" | "rename" | "renameat" | "renameat2"
                if c.ok && c.args.contains("/submits.journal") =>
            {
                panic!(
                    "the journal is reused, not cut back (but after a failed write or past 64 MiB, neither of which happens here) or replaced (call {i}: {} {})",
                    c.name, c.args
                );
            }
            "write" | "writev" if c.args.contains("HTTP/1.1 202 Accepted") => {
                let id = acked
                    .iter()
                    .find(|id| c.args.contains(id.as_str()))
                    .unwrap_or_else(|| panic!("a 202 for an id the test did not get: {}", c.args));
                let w = written_at.get(id).unwrap_or_else(|| {
                    panic!("the 202 for {id} (call {i}) came before any journal write of it")
                });
                assert!(
                    last_journal_sync.is_some_and(|s| s > *w),
                    "the 202 for {id} (call {i}) came before the journal write {w} was fdatasynced"
                );
                checked_202 += 1;
            }
            _ => {}
        }
    }
    assert_eq!(checked_202, acked.len(), "every 202 was found in the trace");
    assert!(
        generations >= 3,
        "a new journal generation began after each burst ({generations})"
    );
    println!(
        "strace: {} calls, {checked_202} 202s each after its journal fdatasync, {generations} journal generations each begun after the store's fsyncs",
        calls.len()
    );
}

/// A tmpfs of `size` mounted on a new directory for the test; unmounted when dropped.
struct Tmpfs(PathBuf, #[allow(dead_code)] tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let at = dir.path().join("fs");
        std::fs::create_dir(&at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&at)
            .output()
            .expect("running mount");
        assert!(
            out.status.success(),
            "this test mounts a small tmpfs to fill it, which needs root (or CAP_SYS_ADMIN): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(at, dir)
    }

    /// Fills the filesystem with a file until a write fails.
    fn fill(&self) -> PathBuf {
        use std::io::Write as _;
        let path = self.0.join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        for size in [1 << 16, 1 << 12, 1 << 9, 1] {
            let block = vec![0u8; size];
            while f.write_all(&block).is_ok() {}
        }
        let _ = f.sync_all();
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_refuses_with_507_changes_nothing_and_recovers_by_itself() {
    let fs = Tmpfs::mount("48m");
    // The attempt held across the fill must not time out however slow the machine is (a
    // failed attempt is rightly retried): five minutes for it and its outbound request.
    let mut ferry = Ferry::stopped(&["--outbound-timeout", "300s"]);
    ferry.data_dir = fs.0.join("data");
    ferry.start_again();
    deploy_hello(&ferry);
    let before: Vec<String> = (0..10)
        .map(|_| ferry.submit_ok("/hello-http/before", &[]))
        .collect();
    all_succeed(&ferry, &before);
    let pending: Vec<String> = (0..5)
        .map(|_| ferry.submit_ok("/hello-http/before", &[]))
        .collect();
    // One attempt runs across the fill: it finishes while the disk is full, so its outcome
    // cannot be written. It must not run again and again.
    let gate = ferry_tests::Gate::default();
    let held = gate.clone();
    let recv = ferry_tests::receiver::Receiver::with(move |req, _| {
        if req.path == "/hit/hold" {
            held.wait();
        }
        (200, vec![])
    });
    ferry.deploy_recorder_with(&recv, "[limits]\ntimeout = \"300s\"\n");
    let runs = || {
        recv.requests()
            .iter()
            .filter(|r| r.path == "/hit/hold")
            .count()
    };
    let across = ferry.submit_ok("/misbehave/hold", &[]);
    eventually("the attempt to be running", Duration::from_secs(60), || {
        (runs() == 1).then_some(())
    });

    let filler = fs.fill();
    // Submits: 507 with Retry-After and a message, once the journal's file is full. Until
    // then a submit is accepted (the journal overwrites blocks its file already has, so it is
    // durable): then it must not be lost either.
    let mut pending = pending;
    let mut refused = 0;
    for _ in 0..50_000 {
        let resp = ferry.submit("/hello-http/full", &[], "x");
        let status = resp.status().as_u16();
        let retry = resp.headers().get("retry-after").is_some();
        let text = resp.text().unwrap();
        if status == 202 {
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            pending.push(v["id"].as_str().unwrap().to_string());
            continue;
        }
        assert_eq!(status, 507, "{text}");
        assert!(retry, "507 carries Retry-After");
        assert!(text.contains("disk") && text.contains("full"), "{text}");
        refused += 1;
        if refused == 20 {
            break;
        }
    }
    assert_eq!(
        refused, 20,
        "a full disk refuses submits once the journal is full"
    );
    // Deploys: 507, and the function stays as it was.
    let (status, body) = ferry.deploy_raw("hello-http", guests::bytes(guests::MISBEHAVE));
    assert_eq!(status, 507, "{body}");
    let (_, f) = ferry.admin_get("/v1/functions/hello-http");
    assert_eq!(f["version"], 1, "{f}");
    // The attempt's outcome is kept in memory (with every change since the last durable
    // flush) until the store can flush again: it is not lost, and the attempt does not run
    // again.
    gate.open();
    assert_eq!(ferry.finished(&across)["status"], "succeeded");
    let (_, health) = ferry.admin_get("/healthz");
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["store"]["status"], "degraded", "{health}");
    assert!(ferry.is_running(), "the host stays up");

    // Space returns: the host recovers by itself.
    std::fs::remove_file(filler).unwrap();
    eventually("the store to heal", Duration::from_secs(30), || {
        let (_, h) = ferry.admin_get("/healthz");
        (h["status"] == "ok").then_some(())
    });
    let after: Vec<String> = (0..10)
        .map(|_| ferry.submit_ok("/hello-http/after", &[]))
        .collect();
    let missing: Vec<(&str, &String)> = [
        ("before", &before),
        ("pending", &pending),
        ("after", &after),
    ]
    .into_iter()
    .flat_map(|(what, ids)| ids.iter().map(move |id| (what, id)))
    .filter(|(_, id)| {
        ferry
            .http
            .get(ferry.url(&format!("/_ferry/invocations/{id}")))
            .send()
            .unwrap()
            .status()
            .as_u16()
            == 404
    })
    .collect();
    assert!(
        missing.is_empty(),
        "acknowledged and lost: {missing:?}; log:\n{}",
        ferry.log()
    );
    all_succeed(&ferry, &after);
    all_succeed(&ferry, &pending);
    assert_eq!(ferry.finished(&across)["status"], "succeeded");
    assert_eq!(
        runs(),
        1,
        "an attempt that finished while the disk was full ran again"
    );

    // Nothing written before was damaged, and nothing acknowledged was lost.
    ferry.terminate(Duration::from_secs(30));
    ferry.start_again();
    for id in before.iter().chain(&pending).chain(&after) {
        assert_eq!(ferry.finished(id)["status"], "succeeded", "{id}");
    }
    println!(
        "full disk: {} submits accepted into the journal's blocks, then {refused} submits and 1 deploy refused with 507; healed without a restart; the attempt across the fill ran {} time(s)",
        pending.len() - 5,
        runs()
    );
    drop(ferry);
}

/// A copy of a stopped host's data directory, to damage.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn flip_byte(path: &Path, at: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    let at = at.min(bytes.len() - 1);
    bytes[at] ^= 0x10;
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn a_damaged_store_is_refused_naming_the_file_and_can_be_checked_repaired_or_quarantined() {
    let mut ferry = Ferry::start();
    for (name, wasm) in [
        ("hello-http", guests::HELLO_HTTP),
        ("misbehave", guests::MISBEHAVE),
        ("flaky", guests::FLAKY),
        ("echo-event", guests::ECHO_EVENT),
        // 190 KB: sled keeps a value over 128 KiB as a blob file, the first case damages one.
        ("hostile", guests::HOSTILE),
    ] {
        let (status, body) = ferry.deploy_raw(name, guests::bytes(wasm));
        assert_eq!(status, 201, "{body}");
        // Its optimized code stored too (a file of its own, checked before it is loaded).
        ferry.optimized(name);
    }
    let ids: Vec<String> = (0..20)
        .map(|_| ferry.submit_ok("/hello-http/kept", &[]))
        .collect();
    all_succeed(&ferry, &ids);
    ferry.terminate(Duration::from_secs(30));
    // The data is the owner's alone.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&ferry.data_dir), 0o700);
    assert_eq!(mode(&ferry.data_dir.join("db")), 0o700);
    assert_eq!(mode(&ferry.data_dir.join("submits.journal")), 0o600);
    assert_eq!(mode(&ferry.data_dir.join("store.seal")), 0o600);
    let good = ferry.data_dir.parent().unwrap().join("good");
    copy_dir(&ferry.data_dir, &good);

    let blobs = |dir: &Path| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("db/blobs"))
            .map(|r| r.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default();
        v.sort();
        v
    };
    type Damage = fn(&Path, &[PathBuf]);
    let cases: Vec<(&str, Damage, &str)> = vec![
        (
            "a flipped bit in a blob",
            |_, blobs| flip_byte(&blobs[0], 4096),
            "db",
        ),
        (
            "a truncated store file",
            |d, _| {
                let f = d.join("db/db");
                let len = std::fs::metadata(&f).unwrap().len();
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&f)
                    .unwrap()
                    .set_len(len / 2)
                    .unwrap();
            },
            "db",
        ),
        (
            "a deleted store file",
            |d, _| std::fs::remove_file(d.join("db/db")).unwrap(),
            "db/db",
        ),
        (
            "a deleted journal",
            |d, _| std::fs::remove_file(d.join("submits.journal")).unwrap(),
            "submits.journal",
        ),
        (
            "a garbled seal",
            |d, _| std::fs::write(d.join("store.seal"), b"{\"gen").unwrap(),
            "store.seal",
        ),
    ];
    for (what, damage, file) in cases {
        let _ = std::fs::remove_dir_all(&ferry.data_dir);
        copy_dir(&good, &ferry.data_dir);
        let b = blobs(&ferry.data_dir);
        damage(&ferry.data_dir, &b);
        let log_before = ferry.log().len();
        let status = ferry.run_to_exit(&[], Duration::from_secs(60));
        let log = ferry.log()[log_before..].to_string();
        assert_eq!(status.code(), Some(3), "{what}: exit code 3; log:\n{log}");
        let named = ferry.data_dir.join(file).display().to_string();
        assert!(
            log.contains("is damaged") && log.contains(&named),
            "{what}: the message names {named}; log:\n{log}"
        );
        assert!(
            log.contains("--repair") && log.contains("--quarantine"),
            "{what}: {log}"
        );
        assert!(!log.contains("panicked"), "{what}: {log}");

        // `ferry store check` agrees.
        let check = ferry_tests::ferry_command()
            .args(["store", "check", "--data-dir"])
            .arg(&ferry.data_dir)
            .output()
            .unwrap();
        assert_eq!(
            check.status.code(),
            Some(3),
            "{what}: store check exit code"
        );

        // --repair starts with what can be read, loudly, and keeps the damaged store aside.
        ferry.start_again_with(&["--repair"]);
        assert!(
            ferry.stdout().contains("WARNING") && ferry.stdout().contains("quarantine"),
            "{what}: {}",
            ferry.stdout()
        );
        let (_, health) = ferry.admin_get("/healthz");
        println!(
            "{what}: refused (exit 3, names {file}); --repair kept {} of 5 functions",
            health["functions"]
        );
        ferry.terminate(Duration::from_secs(30));
        let check = ferry_tests::ferry_command()
            .args(["store", "check", "--data-dir"])
            .arg(&ferry.data_dir)
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "{what}: the repaired store checks out: {}",
            String::from_utf8_lossy(&check.stdout)
        );
        assert!(
            ferry
                .data_dir
                .join("quarantine")
                .read_dir()
                .unwrap()
                .count()
                == 1
        );
    }

    // A data directory that cannot be used at all (here a file in its place): a clear error,
    // exit 1, and nothing created.
    let mut unusable = Ferry::stopped(&[]);
    std::fs::create_dir_all(unusable.data_dir.parent().unwrap()).unwrap();
    std::fs::write(&unusable.data_dir, b"not a directory").unwrap();
    let status = unusable.run_to_exit(&[], Duration::from_secs(60));
    assert_eq!(status.code(), Some(1));
    let log = unusable.log();
    assert!(
        log.contains("cannot be used") && log.contains(&unusable.data_dir.display().to_string()),
        "{log}"
    );

    // --quarantine starts empty; the sound store is untouched by either flag.
    let _ = std::fs::remove_dir_all(&ferry.data_dir);
    copy_dir(&good, &ferry.data_dir);
    std::fs::remove_file(ferry.data_dir.join("db/db")).unwrap();
    ferry.start_again_with(&["--quarantine"]);
    let (_, health) = ferry.admin_get("/healthz");
    assert_eq!(health["functions"], 0);
    ferry.terminate(Duration::from_secs(30));
    let _ = std::fs::remove_dir_all(&ferry.data_dir);
    copy_dir(&good, &ferry.data_dir);
    ferry.start_again_with(&["--repair"]);
    let (_, health) = ferry.admin_get("/healthz");
    assert_eq!(health["functions"], 5, "a sound store is used as it is");
    assert!(!ferry.data_dir.join("quarantine").exists());
    for id in &ids {
        assert_eq!(ferry.finished(id)["status"], "succeeded");
    }
}

#[test]
fn a_backup_of_a_running_host_restores_into_a_new_store() {
    let ferry = Ferry::start();
    deploy_hello(&ferry);
    let (status, body) = ferry.deploy_raw("misbehave", guests::bytes(guests::MISBEHAVE));
    assert_eq!(status, 201, "{body}");
    let before: Vec<String> = (0..20)
        .map(|_| ferry.submit_ok("/hello-http/backed-up", &[]))
        .collect();
    all_succeed(&ferry, &before);

    // The backup runs while submits go on.
    let base = ferry.public.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let busy = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let http = reqwest::blocking::Client::new();
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let r = http
                    .post(format!("{base}/hello-http/during"))
                    .header("prefer", "respond-async")
                    .send()
                    .unwrap();
                assert_eq!(r.status().as_u16(), 202);
                n += 1;
            }
            n
        })
    };
    let dir = ferry.data_dir.parent().unwrap().join("backup");
    let out = ferry.cli(&["backup", dir.to_str().unwrap()], None);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let during = busy.join().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("backup written") && stdout.contains("2 functions"),
        "{stdout}"
    );
    let out = ferry.cli(&["backup", dir.to_str().unwrap()], None);
    assert!(
        !out.status.success(),
        "a second backup into the same directory is refused"
    );

    // Restore into a new data directory and start a host on it.
    let mut restored = Ferry::stopped(&[]);
    let restore = |data: &Path, from: &Path| {
        ferry_tests::ferry_command()
            .arg("restore")
            .arg(from)
            .arg("--data-dir")
            .arg(data)
            .output()
            .unwrap()
    };
    let out = restore(&restored.data_dir, &dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    restored.start_again();
    let (_, health) = restored.admin_get("/healthz");
    assert_eq!(health["functions"], 2, "{health}");
    for id in &before {
        assert_eq!(restored.finished(id)["status"], "succeeded", "{id}");
    }
    assert_eq!(restored.get("/hello-http/x").0, 200);
    restored.terminate(Duration::from_secs(30));

    // A data directory with a store is refused; so is a damaged backup, which writes nothing.
    let out = restore(&restored.data_dir, &dir);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already holds a store"));
    flip_byte(&dir.join("ferry-backup.bin"), 1000);
    let fresh = dir.parent().unwrap().join("fresh");
    let out = restore(&fresh, &dir);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("damaged"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !fresh.join("db").exists(),
        "a refused restore writes nothing"
    );
    println!("backup taken while {during} submits were answered; restored with 2 functions and every earlier invocation");
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| {
                    let e = e.unwrap();
                    let m = e.metadata().unwrap();
                    if m.is_dir() {
                        dir_size(&e.path())
                    } else {
                        m.len()
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

/// A host with `misbehave` deployed to be tried once: an invocation that fails stays, as a
/// dead letter.
fn with_misbehave_tried_once() -> Ferry {
    let ferry = Ferry::start();
    let manifest = "name = \"misbehave\"\n[delivery]\nmax_attempts = 1\n";
    let (status, body) =
        ferry.deploy_manifest("misbehave", guests::bytes(guests::MISBEHAVE), manifest);
    assert_eq!(status, 201, "{body}");
    ferry
}

#[test]
fn large_payloads_are_stored_once_and_leave_with_their_invocation() {
    let mut ferry = with_misbehave_tried_once();
    let db_before = dir_size(&ferry.data_dir.join("db"));
    // Ten 2 MB bodies whose invocations fail for good: they stay, as dead letters.
    let body: String = "0123456789abcdef".repeat(2 << 16);
    let ids: Vec<String> = (0..10)
        .map(|_| {
            let r = ferry.submit("/misbehave/status?code=500", &[], &body);
            assert_eq!(r.status().as_u16(), 202);
            r.json::<serde_json::Value>().unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    for id in &ids {
        assert_eq!(ferry.finished(id)["status"], "dead_lettered");
    }
    ferry.terminate(Duration::from_secs(30));
    let bodies = (body.len() * ids.len()) as u64;
    let payloads = dir_size(&ferry.data_dir.join("payloads"));
    let db_growth = dir_size(&ferry.data_dir.join("db")).saturating_sub(db_before);
    println!(
        "{bodies} bytes of bodies: {payloads} bytes of payload files, the database grew {db_growth} bytes"
    );
    assert!(
        payloads >= bodies && payloads < bodies + bodies / 20,
        "each body once"
    );
    assert!(
        db_growth < bodies / 4,
        "the database does not copy the bodies ({db_growth})"
    );

    // The payload is there after a restart, to show and to replay; purging takes it away.
    ferry.start_again();
    let (status, dead) = ferry.admin_get(&format!("/v1/deadletters/{}", ids[0]));
    assert_eq!(status, 200);
    use base64::Engine as _;
    let shown = base64::engine::general_purpose::STANDARD
        .decode(dead["payload"]["body"].as_str().unwrap())
        .unwrap();
    assert_eq!(shown, body.as_bytes(), "the stored body, every byte");
    let resp = ferry
        .admin_req(reqwest::Method::DELETE, "/v1/deadletters")
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        dir_size(&ferry.data_dir.join("payloads")),
        0,
        "purged payloads are gone"
    );
}

#[test]
fn a_large_body_is_journaled_once_in_its_synced_file_and_survives_a_crash() {
    let mut ferry = with_misbehave_tried_once();
    ferry.terminate(Duration::from_secs(30));
    // The host dies at its first checkpoint, before the store is made durable: what it
    // acknowledged is in the journal, and the bodies are in their files.
    let body: String = "fedcba9876543210".repeat(1 << 14); // 256 KiB
    let acked = acked_before_the_first_checkpoint(&mut ferry, |f| {
        submit_until_down_to(f, "/misbehave/status?code=500", &body, 10_000)
    });
    let (records, bytes) = journaled(&ferry);
    assert!(records > 0, "the journal holds the acknowledged submits");
    assert!(
        bytes < acked.len() * body.len() / 10,
        "{} bodies of {} bytes, {bytes} bytes of journal records: it holds records, not bodies",
        acked.len(),
        body.len()
    );

    // After the restart every acknowledged submit has its whole body.
    ferry.env.clear();
    ferry.start_again();
    use base64::Engine as _;
    for id in &acked {
        assert_eq!(ferry.finished(id)["status"], "dead_lettered", "{id}");
        let (status, dead) = ferry.admin_get(&format!("/v1/deadletters/{id}"));
        assert_eq!(status, 200, "{dead}");
        let shown = base64::engine::general_purpose::STANDARD
            .decode(dead["payload"]["body"].as_str().unwrap())
            .unwrap();
        assert!(
            shown == body.as_bytes(),
            "{id}: the stored body, every byte"
        );
    }
    println!(
        "{} bodies of {} bytes acknowledged before the crash ({bytes} bytes of journal records), each whole after it",
        acked.len(),
        body.len()
    );
}

/// The length and FNV-1a hash misbehave's `/size` answers for `body`.
fn size_answer(body: &[u8]) -> String {
    let hash = body.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("received {} bytes, fnv1a {hash:016x}\n", body.len())
}

#[test]
fn a_finished_invocation_gives_up_its_payload_but_not_before_that_is_durable() {
    let mut ferry = with_misbehave_tried_once();
    // The optimized code first: storing it is a durable flush of its own, which (made in the
    // background after a restart) would make some finished invocations' removal durable, and
    // delete their files, before the checkpoint the host dies at below. Stored, it is loaded
    // at each restart, and nothing else flushes durably once finished invocations' files wait
    // for deletion (the flushes at start come before any submit).
    ferry.optimized("misbehave");
    let body: String = "0123456789abcdef".repeat(1 << 14); // 256 KiB: a payload file
    let payloads = ferry.data_dir.join("payloads");
    let files = |dir: &Path| std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);

    // Run to success: the result stays, the payload (its file) goes with the next checkpoint.
    let r = ferry.submit("/misbehave/size", &[], &body);
    assert_eq!(r.status().as_u16(), 202);
    let id = r.json::<serde_json::Value>().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let done = ferry.finished(&id);
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["result"]["body"], size_answer(body.as_bytes()));
    eventually(
        "the finished invocation's payload file to go",
        Duration::from_secs(30),
        || (files(&payloads) == 0).then_some(()),
    );

    // The host dies at its first checkpoint: the submits may have run, and their payloads been
    // dropped in memory, but nothing of that was durable. After the restart each runs (again)
    // with its whole body, and then its file goes.
    ferry.terminate(Duration::from_secs(30));
    let acked = acked_before_the_first_checkpoint(&mut ferry, |f| {
        submit_until_down_to(f, "/misbehave/size", &body, 10_000)
    });
    assert!(
        files(&payloads) >= acked.len(),
        "each acknowledged body is in its file"
    );
    ferry.start_again();
    for id in acked.iter().chain([&id]) {
        let done = ferry.finished(id);
        assert_eq!(done["status"], "succeeded", "{id}: {done}");
        assert_eq!(done["result"]["body"], size_answer(body.as_bytes()), "{id}");
    }
    eventually(
        "the payload files to go once the invocations finished",
        Duration::from_secs(30),
        || (files(&payloads) == 0).then_some(()),
    );
    println!(
        "{} submits of {} bytes acknowledged before the crash, each run with its whole body after it",
        acked.len(),
        body.len()
    );
}

/// `ferry store check --json` counts on a stopped host's data directory.
fn store_counts(data_dir: &Path) -> serde_json::Value {
    let out = ferry_tests::ferry_command()
        .args(["--json", "store", "check", "--data-dir"])
        .arg(data_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["counts"].clone()
}

#[test]
fn components_of_old_and_removed_versions_are_collected() {
    let mut ferry = Ferry::start_with(&["--keep-versions", "2"]);
    for wasm in [guests::HELLO_HTTP, guests::MISBEHAVE, guests::ECHO_EVENT] {
        let (status, body) = ferry.deploy_raw("f", guests::bytes(wasm));
        assert!(status == 200 || status == 201, "{body}");
    }
    let (status, body) = ferry.deploy_raw("g", guests::bytes(guests::HELLO_HTTP));
    assert_eq!(status, 201, "{body}");
    ferry.optimized("f");
    ferry.optimized("g");
    ferry.terminate(Duration::from_secs(30));
    // f keeps its last two versions (echo-event, misbehave); g shares hello-http's bytes. The
    // versions serving have optimized code; misbehave has it too if its background compile
    // ended before echo-event replaced it (with the compile cache it often does).
    let counts = store_counts(&ferry.data_dir);
    assert_eq!(counts["components"], 3, "{counts}");
    let artifacts = counts["compiled artifacts"].as_u64().unwrap();
    assert!(artifacts == 2 || artifacts == 3, "{counts}");

    ferry.start_again();
    let resp = ferry
        .admin_req(reqwest::Method::DELETE, "/v1/functions/f")
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    assert_eq!(ferry.get("/g/x").0, 200, "g still runs");
    ferry.terminate(Duration::from_secs(30));
    let counts = store_counts(&ferry.data_dir);
    assert_eq!(
        counts["components"], 1,
        "only g's component is left: {counts}"
    );
    assert_eq!(counts["compiled artifacts"], 1, "{counts}");
}
