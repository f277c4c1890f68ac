//! Hostile guests against the sandbox's limits, with the real binary: each attack fails its own
//! invocation within its limit, with the right status and a message naming the limit, while a
//! healthy function deployed beside it keeps answering.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_tests::{eventually, guests, Ferry};

fn deploy(ferry: &Ferry, name: &str, wasm: &str, rest: &str) {
    let manifest = format!("name = \"{name}\"\n{rest}");
    let (status, body) = ferry.deploy_manifest(name, guests::bytes(wasm), &manifest);
    assert_eq!(status, 201, "{body}");
}

/// Calls the healthy function every 20 ms until stopped; keeps each latency (or failure).
struct Watch {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Result<Duration, String>>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watch {
    fn start(url: String) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (s, v) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            let http = reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap();
            while !s.load(Ordering::Relaxed) {
                let t = Instant::now();
                let r = match http.get(&url).send() {
                    Ok(r) if r.status() == 200 => Ok(t.elapsed()),
                    Ok(r) => Err(format!("status {}", r.status())),
                    Err(e) => Err(e.to_string()),
                };
                v.lock().unwrap().push(r);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Watch {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    /// Stops, and returns the latencies (sorted) after checking that every call succeeded.
    fn finish(mut self) -> Vec<Duration> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        let seen = self.seen.lock().unwrap();
        let failed: Vec<&String> = seen.iter().filter_map(|r| r.as_ref().err()).collect();
        assert!(failed.is_empty(), "the healthy function failed: {failed:?}");
        let mut ok: Vec<Duration> = seen
            .iter()
            .filter_map(|r| r.as_ref().ok().copied())
            .collect();
        ok.sort();
        ok
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[test]
fn each_attack_fails_alone_within_its_limit_while_a_healthy_function_answers() {
    let ferry = Ferry::start();
    deploy(&ferry, "healthy", guests::HELLO_HTTP, "");
    deploy(
        &ferry,
        "hostile",
        guests::HOSTILE,
        "[limits]\nmemory = \"32MiB\"\ntimeout = \"3s\"\nmax_response = \"2MiB\"\n",
    );
    deploy(
        &ferry,
        "burner",
        guests::HOSTILE,
        "[limits]\ntimeout = \"60s\"\ncpu = \"1s\"\n",
    );
    let watch = Watch::start(ferry.url("/healthy/"));
    let base = ferry.public.clone();

    // (path, expected status, what the body must say) — all at once.
    let attacks: Vec<(&str, u16, &str)> = vec![
        (
            "/hostile/loop",
            504,
            "exceeded its timeout of 3s (limits.timeout)",
        ),
        (
            "/burner/loop",
            504,
            "exceeded its CPU time of 1s (limits.cpu)",
        ),
        (
            "/hostile/memory",
            500,
            "ran out of memory: it needed more than its limit of 32 MiB (limits.memory)",
        ),
        (
            "/hostile/recurse",
            500,
            "exhausted its WebAssembly call stack of 512 KiB",
        ),
        (
            "/hostile/panic",
            500,
            "function hostile trapped: wasm trap: wasm `unreachable` instruction executed",
        ),
        ("/hostile/print?mb=5", 200, "printed"),
    ];
    let started = Instant::now();
    let handles: Vec<_> = attacks
        .into_iter()
        .map(|(path, want, says)| {
            let url = format!("{base}{path}");
            std::thread::spawn(move || {
                let http = reqwest::blocking::Client::builder()
                    .timeout(Duration::from_secs(120))
                    .build()
                    .unwrap();
                let resp = http.get(&url).send().unwrap();
                let status = resp.status().as_u16();
                let body = resp.text().unwrap();
                assert_eq!(status, want, "{path}: {body}");
                assert!(body.contains(says), "{path}: {body}");
                assert!(
                    !body.contains("backtrace") && !body.contains("0x"),
                    "{path}: no WebAssembly backtrace in an answer: {body}"
                );
            })
        })
        .collect();
    // A response larger than limits.max_response is cut: the caller sees a failed body, never a
    // short one that looks whole; a response that never ends ends at the limit too.
    for path in ["/hostile/huge?mb=8", "/hostile/endless"] {
        let resp = ferry.http.get(ferry.url(path)).send().unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        assert!(resp.bytes().is_err(), "{path}: the body must fail, not end");
    }
    for h in handles {
        h.join().unwrap();
    }
    let attack_time = started.elapsed();
    let latencies = watch.finish();
    assert!(latencies.len() > 10, "the healthy function was called");
    let (p50, p99, max) = (
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        *latencies.last().unwrap(),
    );
    eprintln!(
        "healthy function during the attacks ({attack_time:?}): {} calls, p50 {p50:?}, p99 {p99:?}, max {max:?}",
        latencies.len()
    );
    assert!(
        max < Duration::from_secs(10),
        "answered within a generous bound: {max:?}"
    );

    // The host is intact; its standard output and its log hold none of the guest's (forged)
    // lines: the 10 MiB the guest printed went to the function's own log, cut at the bound,
    // with what was dropped counted.
    assert_eq!(ferry.admin_get("/healthz").1["status"], "ok");
    let stdout = ferry.stdout_so_far();
    assert!(
        !stdout.contains("evil"),
        "a guest wrote to the host's stdout: {stdout}"
    );
    let log = ferry.log();
    assert!(
        !log.contains("zzzzzzzz"),
        "guest output reached the host log"
    );
    assert!(!log.contains("http://evil"), "a guest forged a host line");
    assert!(
        log.contains("dropped_bytes"),
        "the host log says output was dropped"
    );
    let (status, page) = ferry.admin_get("/v1/functions/hostile/logs?limit=10000");
    assert_eq!(status, 200, "{page}");
    let lines = page["lines"].as_array().unwrap();
    let guest_lines = lines
        .iter()
        .filter(|l| l["text"].as_str().unwrap().starts_with("zzzzzzzz"))
        .count();
    assert!(
        (32..=2 * 64 + 2).contains(&guest_lines),
        "at most 64 KiB of 1 KiB lines kept: {guest_lines}"
    );
    let streams: std::collections::BTreeSet<&str> = lines
        .iter()
        .map(|l| l["stream"].as_str().unwrap())
        .collect();
    assert_eq!(streams, ["stderr", "stdout"].into());
    let dropped = page["dropped"]["over_invocation_bound_bytes"]
        .as_u64()
        .unwrap();
    assert!(
        dropped > 9 << 20,
        "the rest was dropped and counted: {dropped}"
    );
    let metrics = ferry.admin_text("/metrics");
    assert!(
        metrics.contains("ferry_guest_output_dropped_bytes_total{function=\"hostile\"}"),
        "{metrics}"
    );
}

/// A guest that fails after its response head: the caller sees a 200 whose body fails (never a
/// short body that looks whole), and the host's log says so, once.
#[test]
fn a_guest_failing_after_its_response_head_fails_the_body_and_is_logged_once() {
    let ferry = Ferry::start();
    deploy(&ferry, "late", guests::HOSTILE, "");
    for _ in 0..3 {
        let resp = ferry.http.get(ferry.url("/late/half")).send().unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        assert!(resp.bytes().is_err(), "the body must fail");
    }
    let logged = || {
        ferry
            .log()
            .lines()
            .filter(|l| {
                l.contains("function failed after sending its response head") && l.contains("late")
            })
            .count()
    };
    ferry_tests::eventually(
        "the three late failures in the host's log",
        Duration::from_secs(30),
        || (logged() >= 3).then_some(()),
    );
    // Nothing runs any more: each failure was logged once.
    assert_eq!(ferry.admin_get("/healthz").1["status"], "ok");
    assert_eq!(logged(), 3, "{}", ferry.log());
}

#[test]
fn busy_functions_answer_503_with_retry_after_within_a_bounded_wait() {
    let ferry = Ferry::start();
    deploy(
        &ferry,
        "sleeper",
        guests::HOSTILE,
        "[limits]\nconcurrency = 1\nqueue = 1\nqueue_timeout = \"1s\"\n",
    );
    let get = |url: String| {
        std::thread::spawn(move || {
            let r = reqwest::blocking::get(url).unwrap();
            let status = r.status().as_u16();
            let retry = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
            (status, retry, r.text().unwrap())
        })
    };
    let holder = get(ferry.url("/sleeper/sleep?ms=10000"));
    // The holder has the only instance once a caller has to wait for it.
    eventually("the holder to run", Duration::from_secs(30), || {
        let r = ferry.http.get(ferry.url("/sleeper/")).send().unwrap();
        (r.status().as_u16() == 503).then_some(())
    });
    // Five at once: one may wait (and gives up after queue_timeout), the rest find the queue full.
    let callers: Vec<_> = (0..5).map(|_| get(ferry.url("/sleeper/"))).collect();
    let answers: Vec<(u16, Option<String>, String)> =
        callers.into_iter().map(|c| c.join().unwrap()).collect();
    for (status, retry, text) in &answers {
        assert_eq!(*status, 503, "{text}");
        assert_eq!(retry.as_deref(), Some("1"), "{text}");
        assert!(
            text.contains("all 1 instances are running (limits.concurrency)"),
            "{text}"
        );
    }
    let waited = answers
        .iter()
        .filter(|a| {
            a.2.contains("none came free within 1s (limits.queue_timeout)")
        })
        .count();
    let refused = answers
        .iter()
        .filter(|a| a.2.contains("1 callers are already waiting (limits.queue)"))
        .count();
    assert!(waited >= 1 && refused >= 1, "{answers:?}");
    let (status, _, text) = holder.join().unwrap();
    assert_eq!(status, 200, "{text}");
}

#[test]
fn a_chunked_body_over_the_limit_is_413_and_limits_have_host_defaults_and_ceilings() {
    let ferry = Ferry::start_with(&["--limit-default", "max_body=1MiB", "--max-body", "8MiB"]);
    deploy(&ferry, "hostile", guests::HOSTILE, "");
    let (_, f) = ferry.admin_get("/v1/functions/hostile");
    assert_eq!(f["limits"]["max_body"], 1 << 20, "the host's default: {f}");

    // Without a content-length the size shows only while reading: the function read part of it,
    // the caller still gets 413.
    let chunks = (0..32).map(|_| Ok::<_, std::io::Error>(vec![b'x'; 64 << 10]));
    let body = reqwest::blocking::Body::new(ChunkedReader::new(chunks.collect()));
    let resp = ferry
        .http
        .post(ferry.url("/hostile/echo"))
        .body(body)
        .send()
        .unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().unwrap_or_default();
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("limits.max_body"), "{text}");
    // Within the limit: read whole.
    let resp = ferry
        .http
        .post(ferry.url("/hostile/echo"))
        .body(vec![b'y'; 1000])
        .send()
        .unwrap();
    assert_eq!(resp.text().unwrap(), "read 1000 bytes");

    // A manifest above the ceiling is refused, naming the key and the flag.
    let (status, body) = ferry.deploy_manifest(
        "hostile",
        guests::bytes(guests::HOSTILE),
        "name = \"hostile\"\n[limits]\nmax_body = \"16MiB\"\n",
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("--max-body"), "{body}");
    drop(ferry);

    // A default above its ceiling, or an unknown key, stops the host at start.
    for args in [
        &["--limit-default", "memory=1GiB"][..],
        &["--limit-default", "colour=blue"][..],
    ] {
        let mut f = Ferry::stopped(args);
        let status = f.run_to_exit(&[], Duration::from_secs(60));
        assert!(!status.success());
        assert!(f.log().contains("--limit-default"), "{}", f.log());
    }
}

#[test]
fn instances_together_stay_within_the_hosts_memory_cap() {
    use ferry_tests::receiver::Receiver;
    let gate = ferry_tests::Gate::default();
    let held = gate.clone();
    let receiver = Receiver::with(move |_, _| {
        held.wait();
        (200, vec![])
    });
    let ferry = Ferry::start_with(&["--max-total-memory", "80MiB"]);
    deploy(
        &ferry,
        "hostile",
        guests::HOSTILE,
        "[limits]\nmemory = \"64MiB\"\ntimeout = \"60s\"\n[outbound]\nallow = [\"127.0.0.1\"]\n",
    );
    // The holder keeps 48 MiB until the test opens the gate.
    let holder = {
        let url = ferry.url(&format!(
            "/hostile/alloc?mb=48&hold=http://{}/hold",
            receiver.addr
        ));
        std::thread::spawn(move || reqwest::blocking::get(url).unwrap().text().unwrap())
    };
    eventually(
        "the first instance to hold its memory",
        Duration::from_secs(30),
        || (receiver.requests().len() == 1).then_some(()),
    );
    let used = ferry.admin_get("/healthz").1["memory"]["instances_bytes"]
        .as_u64()
        .unwrap();
    assert!(used >= 48 << 20, "{used}");
    let resp = ferry
        .http
        .get(ferry.url("/hostile/alloc?mb=48"))
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    assert_eq!(resp.headers()["retry-after"], "1");
    let text = resp.text().unwrap();
    assert!(text.contains("--max-total-memory"), "{text}");
    gate.open();
    assert_eq!(holder.join().unwrap(), "held 48 MiB");
    // Given back when the instances end.
    eventually(
        "the memory to be given back",
        Duration::from_secs(30),
        || (ferry.admin_get("/healthz").1["memory"]["instances_bytes"] == 0).then_some(()),
    );
    let resp = ferry
        .http
        .get(ferry.url("/hostile/alloc?mb=48"))
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
}

#[test]
fn a_slow_function_cannot_hold_every_async_worker() {
    let ferry = Ferry::start_with(&["--workers", "4"]);
    deploy(
        &ferry,
        "slow",
        guests::HOSTILE,
        "[limits]\ntimeout = \"60s\"\n",
    );
    deploy(&ferry, "quick", guests::HOSTILE, "");
    let slow: Vec<String> = (0..20)
        .map(|_| ferry.submit_ok("/slow/sleep?ms=2000", &[]))
        .collect();
    let quick = ferry.submit_ok("/quick/", &[]);
    assert_eq!(ferry.finished(&quick)["status"], "succeeded");
    // The quick one did not wait for the slow backlog (20 x 2 s over at most 3 workers).
    let done = slow
        .iter()
        .filter(|id| ferry.invocation(id, 0)["status"] == "succeeded")
        .count();
    assert!(
        done < 15,
        "the quick invocation ran before the slow backlog drained ({done} of 20 done)"
    );
}

/// A request body sent with chunked transfer encoding (no content-length).
struct ChunkedReader {
    chunks: std::collections::VecDeque<Vec<u8>>,
    current: std::io::Cursor<Vec<u8>>,
}

impl ChunkedReader {
    fn new(chunks: Vec<std::io::Result<Vec<u8>>>) -> Self {
        Self {
            chunks: chunks.into_iter().map(Result::unwrap).collect(),
            current: std::io::Cursor::new(Vec::new()),
        }
    }
}

impl std::io::Read for ChunkedReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let n = self.current.read(buf)?;
            if n > 0 {
                return Ok(n);
            }
            match self.chunks.pop_front() {
                Some(c) => self.current = std::io::Cursor::new(c),
                None => return Ok(0),
            }
        }
    }
}

/// A valid component whose one function keeps `n` values alive at once: slow and hungry to
/// compile (register allocation), tiny to upload. Each value depends on the parameter, so the
/// optimiser cannot fold them into a constant.
fn slow_to_compile(n: usize) -> Vec<u8> {
    ferry_tests::with_core_module(
        &wat::parse_str("(component)").unwrap(),
        &ferry_tests::slow_core_module(n),
    )
}

#[test]
fn a_component_made_to_stall_the_compiler_is_refused_and_the_admin_api_stays_up() {
    // 300,000 values alive at once: far more than a second of register allocation anywhere
    // (the optimised compiler still took more than a second for half as many).
    let slow = slow_to_compile(300_000);
    // Cranelift's bounds: the deploy waits for the optimized code. (The baseline compiler,
    // Winch, is a single pass; the same bounds hold for it, see below.)
    let ferry = Ferry::start_with(&["--max-compile-time", "1s", "--baseline-compile", "false"]);
    let deploy = {
        let (url, token, slow) = (
            ferry.admin_url("/v1/functions/slow"),
            ferry.token.clone().unwrap(),
            slow.clone(),
        );
        std::thread::spawn(move || {
            let resp = reqwest::blocking::Client::new()
                .put(url)
                .bearer_auth(token)
                .header("content-type", "application/wasm")
                .body(slow)
                .send()
                .unwrap();
            (resp.status().as_u16(), resp.text().unwrap())
        })
    };
    // The admin API answers while the compiler works: a /healthz answered before the deploy
    // finished.
    let mut answered_meanwhile = false;
    while !deploy.is_finished() {
        let (status, _) = ferry.admin_get("/healthz");
        assert_eq!(status, 200);
        answered_meanwhile |= !deploy.is_finished();
    }
    assert!(
        answered_meanwhile,
        "no /healthz answered while the deploy ran"
    );
    let (status, text) = deploy.join().unwrap();
    assert_eq!(status, 422, "{text}");
    assert!(
        text.contains("took longer than 1s (ferry serve --max-compile-time)"),
        "{text}"
    );
    assert_eq!(
        ferry.admin_get("/v1/functions/slow").0,
        404,
        "nothing was deployed"
    );
    // (Normal components compile within the default bounds in every other test; a debug build
    // of the compiler on a loaded machine can take more than this test's 1 s for any component.)
    drop(ferry);

    // Memory is bounded the same way (a generous time, a small memory bound).
    let ferry = Ferry::start_with(&[
        "--max-compile-memory",
        "64MiB",
        "--baseline-compile",
        "false",
    ]);
    let (status, body) = ferry.deploy_raw("slow", slow.clone());
    assert_eq!(status, 422, "{body}");
    let text = body.to_string();
    assert!(
        text.contains("needed more than 64 MiB of memory (ferry serve --max-compile-memory)")
            || text.contains("passed the compiler's limits"),
        "{text}"
    );
    drop(ferry);

    // With baseline code first (the default) the upload is refused too, by a bound or, once
    // Winch has compiled it within them, because it exports no function; nothing is deployed.
    let ferry = Ferry::start_with(&["--max-compile-time", "1s", "--max-compile-memory", "64MiB"]);
    let (status, body) = ferry.deploy_raw("slow", slow);
    assert_eq!(status, 422, "{body}");
    assert_eq!(ferry.admin_get("/v1/functions/slow").0, 404);
}
