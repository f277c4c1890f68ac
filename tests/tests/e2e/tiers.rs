//! Baseline code first, optimised code behind it: a deploy answers once wasmtime's baseline
//! compiler (Winch) has made code for the new version, and the optimised code (Cranelift) takes
//! over by itself, without failing a request.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ferry_tests::{guests, Ferry};

#[test]
fn a_deploy_serves_baseline_code_at_once_and_the_optimized_code_takes_over() {
    let ferry = Ferry::start();
    let (status, body) = ferry.deploy_raw("hello-http", guests::bytes(guests::HELLO_HTTP));
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["code"]["tier"], "baseline", "{body}");
    assert_eq!(body["code"]["optimizing"], true, "{body}");
    let shown = ferry.cli(&["show", "hello-http"], None);
    assert!(
        String::from_utf8_lossy(&shown.stdout).contains("served by baseline code")
            || ferry.admin_get("/v1/functions/hello-http").1["code"]["tier"] == "optimized",
        "{shown:?}"
    );

    // Requests all the while the optimised code is made and swapped in.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        let url = format!("{}/hello-http/during", ferry.public);
        std::thread::spawn(move || {
            let client = reqwest::blocking::Client::new();
            // Bounded: at most 100,000 requests, and it stops when told.
            for _ in 0..100_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                match client.get(&url).send() {
                    Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        })
    };
    let f = ferry.optimized("hello-http");
    assert_eq!(f["code"]["optimizing"], false, "{f}");
    assert_eq!(f["version"], 1, "the same version, on other code: {f}");
    // A few requests on the optimised code before the load stops.
    let after = ok.load(Ordering::Relaxed) + 5;
    ferry_tests::eventually(
        "requests on the optimized code",
        std::time::Duration::from_secs(60),
        || (ok.load(Ordering::Relaxed) >= after).then_some(()),
    );
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    assert_eq!(failed.load(Ordering::Relaxed), 0, "no request failed");
    assert!(
        ferry.log().contains("serving optimized code"),
        "{}",
        ferry.log()
    );
    assert!(
        !String::from_utf8_lossy(&ferry.cli(&["show", "hello-http"], None).stdout)
            .contains("baseline"),
        "ferry show says nothing of baseline code once the optimized code serves"
    );

    // The same bytes again: their optimised code is cached, served at once.
    let (status, body) = ferry.deploy_raw("hello-http", guests::bytes(guests::HELLO_HTTP));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"], 2);
    assert_eq!(body["code"]["tier"], "optimized", "{body}");
    assert_eq!(
        ferry.get("/hello-http/again").1,
        "Hello from Ferry! path=/hello-http/again\n"
    );
}

#[test]
fn a_restart_before_the_optimized_code_is_made_serves_and_optimizes_again() {
    let mut ferry = Ferry::start();
    let (status, body) = ferry.deploy_raw("echo-event", guests::bytes(guests::ECHO_EVENT));
    assert_eq!(status, 201, "{body}");
    // SIGKILL at once: the optimised code may or may not have been stored.
    ferry.restart();
    let (status, f) = ferry.admin_get("/v1/functions/echo-event");
    assert_eq!(status, 200, "{f}");
    let f = ferry.optimized("echo-event");
    assert_eq!(f["version"], 1, "{f}");
    let resp = ferry
        .http
        .post(ferry.url("/echo-event"))
        .header("ce-specversion", "1.0")
        .header("ce-id", "tier-1")
        .header("ce-source", "/tests")
        .header("ce-type", "tiers.checked")
        .header("content-type", "application/json")
        .body(r#"{"n":1}"#)
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.text().unwrap(), r#"{"n":1}"#);
}

/// The process id and CPU seconds of the host's background compile (the optimised code of a
/// version served by baseline code, in a compiler process of its own), if one runs.
fn compiling_behind(ferry: &Ferry) -> Option<(String, f64)> {
    let pid = ferry.pid();
    let children = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .collect::<Vec<_>>()
        .join(" ");
    children.split_whitespace().find_map(|child| {
        let cmd = std::fs::read(format!("/proc/{child}/cmdline")).ok()?;
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if !(cmd.contains("internal-compile") && cmd.contains("--background")) {
            return None;
        }
        // utime and stime, fields 14 and 15, in ticks of 1/100 s.
        let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).ok()?;
        let fields: Vec<f64> = stat
            .rsplit_once(')')?
            .1
            .split_whitespace()
            .map(|f| f.parse().unwrap_or(0.0))
            .collect();
        Some((
            child.to_string(),
            (fields.get(11)? + fields.get(12)?) / 100.0,
        ))
    })
}

/// Optimised code is kept by component: its compile goes on while any function serves baseline
/// code of that component, and stops once none does, so that the next compile starts at once
/// instead of waiting for code nothing would serve.
#[test]
fn a_compile_of_optimized_code_nothing_would_serve_stops() {
    let ferry = Ferry::start();
    // hello-http with a module Cranelift takes about 20 s for on an idle core (Winch well under
    // one): its optimised code is still compiling through the steps below.
    let slow = ferry_tests::with_core_module(
        &guests::bytes(guests::HELLO_HTTP),
        &ferry_tests::slow_core_module(30_000),
    );
    for name in ["first", "twin"] {
        let (status, body) = ferry.deploy_raw(name, slow.clone());
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["code"]["tier"], "baseline", "{body}");
    }
    assert_eq!(ferry.get("/first/v1").0, 200);
    ferry_tests::eventually(
        "the optimized code of the slow component to be compiling",
        std::time::Duration::from_secs(60),
        || compiling_behind(&ferry).map(|_| ()),
    );

    // `first` moves to other bytes: `twin` still serves the component, so its compile goes on.
    let (status, body) = ferry.deploy_raw("first", guests::bytes(guests::HELLO_HTTP));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"], 2, "{body}");
    // Seen to make progress after the deploy (the host checks every few milliseconds).
    let (pid, cpu) = compiling_behind(&ferry).expect("the compile goes on");
    ferry_tests::eventually(
        "the compile to go on after the deploy",
        std::time::Duration::from_secs(120),
        || match compiling_behind(&ferry) {
            Some((now_pid, now)) if now_pid == pid => (now >= cpu + 0.3).then_some(()),
            _ => panic!("the compile stopped though twin serves its component"),
        },
    );
    // Without `twin`, nothing would serve it: it stops, and `first` gets its optimised code
    // without waiting for it.
    let removed = ferry
        .admin_req(reqwest::Method::DELETE, "/v1/functions/twin")
        .send()
        .unwrap();
    assert!(removed.status().is_success(), "{removed:?}");
    let f = ferry.optimized("first");
    assert_eq!(f["version"], 2, "{f}");
    let log = ferry.log();
    let stopped: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("stopped making the optimized code"))
        .collect();
    assert_eq!(stopped.len(), 1, "{log}");
    assert!(stopped[0].contains("function=first version=1"), "{log}");
    assert_eq!(
        ferry.metric(r#"ferry_compilations_total{outcome="stopped"}"#),
        1.0
    );
    assert!(
        compiling_behind(&ferry).is_none(),
        "its compiler process is gone"
    );
    assert_eq!(
        ferry.get("/first/v2").1,
        "Hello from Ferry! path=/first/v2\n"
    );
}

#[test]
fn without_baseline_compile_a_deploy_answers_with_the_optimized_code() {
    let ferry = Ferry::start_with(&["--baseline-compile", "false"]);
    let (status, body) = ferry.deploy_raw("hello-http", guests::bytes(guests::HELLO_HTTP));
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["code"]["tier"], "optimized", "{body}");
    assert_eq!(body["code"]["optimizing"], false, "{body}");
    assert_eq!(ferry.get("/hello-http/x").0, 200);
    let (_, health) = ferry.admin_get("/healthz");
    assert_eq!(health["compilations"], 1, "{health}");
}

/// Cranelift's per-function compile cache: a component whose functions were compiled before (here
/// the same code under other bytes) takes them from the cache, also after a restart; a cache
/// damaged on disk is checked, compiled again and rewritten, never trusted.
#[test]
fn functions_compiled_once_come_from_the_compile_cache_also_after_a_restart() {
    const HIT: &str = "ferry_compile_cache_functions_total{result=\"hit\"}";
    const MISS: &str = "ferry_compile_cache_functions_total{result=\"miss\"}";
    // A bound that fits any test machine's temporary directory twice over (the cache stops
    // writing while less than twice its bound is free).
    let mut ferry = Ferry::stopped(&["--compile-cache-size", "64MiB"]);
    ferry.shared_compile_cache = false;
    ferry.start_again();
    let wasm = guests::bytes(guests::HELLO_HTTP);
    let (status, body) = ferry.deploy_raw("first", wasm.clone());
    assert_eq!(status, 201, "{body}");
    ferry.optimized("first");
    let cold_misses = ferry.metric(MISS);
    let functions = cold_misses + ferry.metric(HIT);
    assert!(cold_misses > 10.0, "a cold cache compiles: {cold_misses}");
    let cache = ferry.data_dir.join("compile-cache");
    let files = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(&cache)
            .unwrap()
            .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
            .map(|f| f.unwrap().path())
            .collect()
    };
    // A file per compiled function (two identical functions compiled at once share one).
    let stored = files().len() as f64;
    assert!(stored > 10.0 && stored <= cold_misses, "{stored} files");

    ferry.restart();
    let (status, body) = ferry.deploy_raw("second", ferry_tests::with_custom_section(&wasm, "2"));
    assert_eq!(status, 201, "{body}");
    ferry.optimized("second");
    // Not every one: wasmtime gives a few functions (under a tenth) other compiler input each
    // time it compiles the same component, so their keys are new.
    let (hits, misses) = (ferry.metric(HIT), ferry.metric(MISS));
    assert_eq!(hits + misses, functions, "the same functions");
    assert!(
        hits >= 0.8 * functions && misses * 3.0 < cold_misses,
        "functions from the cache: {hits} of {functions}, {misses} compiled (cold: {cold_misses})"
    );
    assert_eq!(
        ferry.get("/second/x"),
        (200, "Hello from Ferry! path=/second/x\n".to_string())
    );

    // Every file damaged (one bit of its code flipped): each fails its check, is compiled
    // again and rewritten; none is used.
    let damaged: Vec<(std::path::PathBuf, Vec<u8>)> = files()
        .into_iter()
        .map(|path| {
            let mut bytes = std::fs::read(&path).unwrap();
            *bytes.last_mut().unwrap() ^= 1;
            std::fs::write(&path, &bytes).unwrap();
            (path, bytes)
        })
        .collect();
    let (status, body) = ferry.deploy_raw("third", ferry_tests::with_custom_section(&wasm, "3"));
    assert_eq!(status, 201, "{body}");
    ferry.optimized("third");
    let damaged_misses = ferry.metric(MISS) - misses;
    assert!(
        damaged_misses > 0.8 * cold_misses,
        "damaged files are compiled again: {damaged_misses} of {cold_misses}"
    );
    assert_eq!(ferry.metric(MISS) + ferry.metric(HIT), 2.0 * functions);
    // Each damaged file this compile looked up is gone or rewritten (the few it did not look
    // up, of functions with keys of their own, stay as they are until evicted).
    let untouched = damaged
        .iter()
        .filter(|(path, bytes)| std::fs::read(path).ok().as_ref() == Some(bytes))
        .count();
    assert!(
        untouched * 2 < damaged.len(),
        "{untouched} of {} damaged files left as they were",
        damaged.len()
    );
    assert_eq!(
        ferry.get("/third/x"),
        (200, "Hello from Ferry! path=/third/x\n".to_string())
    );
}

#[test]
fn a_compile_cache_size_of_zero_keeps_no_cache() {
    let ferry = Ferry::start_with(&["--compile-cache-size", "0"]);
    let (status, body) = ferry.deploy_raw("hello-http", guests::bytes(guests::HELLO_HTTP));
    assert_eq!(status, 201, "{body}");
    ferry.optimized("hello-http");
    assert!(!ferry.data_dir.join("compile-cache").exists());
    assert_eq!(
        ferry.metric("ferry_compile_cache_functions_total{result=\"miss\"}"),
        0.0
    );
    assert_eq!(ferry.get("/hello-http/x").0, 200);
}

/// `--optimized-compile false`: baseline code serves and keeps serving, also after a restart,
/// and nothing is compiled behind it. Both compilers off is refused at start.
#[test]
fn a_host_without_optimized_compile_serves_baseline_code_only() {
    const COMPILED: &str = r#"ferry_compilations_total{outcome="compiled"}"#;
    const BASELINE: &str = r#"ferry_compilations_total{outcome="baseline"}"#;
    let mut ferry = Ferry::start_with(&["--optimized-compile", "false"]);
    let (status, body) = ferry.deploy_raw("hello-http", guests::bytes(guests::HELLO_HTTP));
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["code"]["tier"], "baseline", "{body}");
    assert_eq!(body["code"]["optimizing"], false, "{body}");
    let shown = ferry.cli(&["show", "hello-http"], None);
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.contains("--optimized-compile false"), "{shown}");
    // Requests on it; a host that optimises would have swapped hello-http's optimized code in
    // by now (its compile takes a tenth of a second).
    for i in 0..50 {
        assert_eq!(ferry.get(&format!("/hello-http/{i}")).0, 200);
    }
    let (_, f) = ferry.admin_get("/v1/functions/hello-http");
    assert_eq!(f["code"]["tier"], "baseline", "{f}");
    assert_eq!(ferry.metric(COMPILED), 0.0);
    assert_eq!(ferry.metric(BASELINE), 1.0);
    // A restart compiles the baseline code again (only optimized code is stored).
    ferry.restart();
    assert_eq!(ferry.get("/hello-http/again").0, 200);
    let (_, f) = ferry.admin_get("/v1/functions/hello-http");
    assert_eq!(f["code"]["tier"], "baseline", "{f}");
    assert_eq!(f["code"]["optimizing"], false, "{f}");
    assert_eq!(ferry.metric(BASELINE), 1.0);
    assert_eq!(ferry.metric(COMPILED), 0.0);
    drop(ferry);

    let mut refused = Ferry::stopped(&[
        "--baseline-compile",
        "false",
        "--optimized-compile",
        "false",
    ]);
    let status = refused.run_to_exit(&[], Duration::from_secs(60));
    assert!(!status.success());
    let log = refused.log();
    assert!(log.contains("leave no compiler"), "{log}");
    assert!(!refused.data_dir.exists(), "nothing is made: {log}");
}

/// Hosts given one `--compile-cache-dir` share it: what one compiled, another finds; the data
/// directories keep no cache of their own, and turning the cache off leaves a shared one alone.
/// A directory that cannot be one is refused at start, naming the flag.
#[test]
fn hosts_sharing_a_compile_cache_directory_compile_a_function_once() {
    const HIT: &str = "ferry_compile_cache_functions_total{result=\"hit\"}";
    const MISS: &str = "ferry_compile_cache_functions_total{result=\"miss\"}";
    let shared = tempfile::tempdir().unwrap();
    let dir = shared.path().join("cache");
    let host = |extra: &[&str]| {
        // A bound that fits any test machine's temporary directory twice over (the cache stops
        // writing while less than twice its bound is free).
        let mut args = vec![
            "--compile-cache-dir",
            dir.to_str().unwrap(),
            "--compile-cache-size",
            "64MiB",
        ];
        args.extend_from_slice(extra);
        let mut ferry = Ferry::stopped(&args);
        ferry.shared_compile_cache = false;
        std::fs::create_dir_all(ferry.data_dir.join("compile-cache")).unwrap();
        ferry
    };
    let wasm = guests::bytes(guests::HELLO_HTTP);
    let mut first = host(&[]);
    first.start_again();
    assert_eq!(first.deploy_raw("hello-http", wasm.clone()).0, 201);
    first.optimized("hello-http");
    let cold = first.metric(MISS);
    let functions = cold + first.metric(HIT);
    assert!(cold > 10.0, "a cold cache compiles: {cold}");
    assert!(
        !first.data_dir.join("compile-cache").exists(),
        "the data directory's own cache is removed"
    );
    // The cache's files, one level down (in their 256 subdirectories).
    let files = || {
        std::fs::read_dir(&dir)
            .unwrap()
            .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
            .count()
    };
    assert!(files() > 0, "the shared directory holds the cache");

    let mut second = host(&[]);
    second.start_again();
    assert_eq!(second.deploy_raw("hello-http", wasm.clone()).0, 201);
    second.optimized("hello-http");
    let (hits, misses) = (second.metric(HIT), second.metric(MISS));
    assert_eq!(hits + misses, functions, "the same functions");
    assert!(
        hits >= 0.8 * functions && misses * 3.0 < cold,
        "the second host finds what the first compiled: {hits} of {functions}, {misses} \
         compiled (cold: {cold})"
    );
    assert_eq!(second.get("/hello-http/x").0, 200);
    second.terminate(Duration::from_secs(30));
    let before = files();
    second.start_again_with(&["--compile-cache-size", "0"]);
    assert_eq!(files(), before, "a cache given elsewhere is never removed");
    drop(second);

    // A directory of its own: not the data directory, nor inside it, nor holding it.
    for inside in ["", "cache", ".."] {
        let mut refused = Ferry::stopped(&[]);
        refused.shared_compile_cache = false;
        let path = refused.data_dir.join(inside);
        let status = refused.run_to_exit(
            &["--compile-cache-dir", path.to_str().unwrap()],
            Duration::from_secs(60),
        );
        assert!(!status.success(), "{inside:?}");
        let log = refused.log();
        assert!(log.contains("give a directory of its own"), "{log}");
    }

    let taken = shared.path().join("a-file");
    std::fs::write(&taken, "not a directory").unwrap();
    let mut refused = Ferry::stopped(&["--compile-cache-dir", taken.to_str().unwrap()]);
    refused.shared_compile_cache = false;
    let status = refused.run_to_exit(&[], Duration::from_secs(60));
    assert!(!status.success());
    let log = refused.log();
    assert!(
        log.contains("--compile-cache-dir") && log.contains("a-file"),
        "{log}"
    );
    let made: Vec<_> = std::fs::read_dir(&refused.data_dir)
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(
        made.is_empty(),
        "nothing is made in the data directory: {made:?}"
    );
}

/// A compile cache that cannot be used (here its path is taken by a file) costs only time: the
/// deploy and the optimized code proceed, and the host's log says what to do.
#[test]
fn an_unusable_compile_cache_fails_no_deploy_and_is_logged() {
    let mut ferry = Ferry::stopped(&[]);
    ferry.shared_compile_cache = false;
    std::fs::create_dir_all(&ferry.data_dir).unwrap();
    std::fs::write(ferry.data_dir.join("compile-cache"), "not a directory").unwrap();
    ferry.start_again();
    let (status, body) = ferry.deploy_raw("hello-http", guests::bytes(guests::HELLO_HTTP));
    assert_eq!(status, 201, "{body}");
    ferry.optimized("hello-http");
    assert_eq!(ferry.get("/hello-http/x").0, 200);
    let log = ferry.log();
    assert!(
        log.contains("cannot be used") && log.contains("--compile-cache-size 0"),
        "{log}"
    );
}
