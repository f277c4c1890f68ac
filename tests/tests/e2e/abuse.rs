//! Callers who abuse the public listener: thousands of connections, slow clients, huge headers,
//! odd methods and path tricks. The host stays up, keeps answering others, and gives each abuse
//! a bounded, documented answer.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use ferry_tests::{eventually, guests, Ferry};

/// Raises this process's open-file limit to its hard limit (2,000 sockets need more than the
/// common 1,024).
fn more_files() {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
}

fn addr(ferry: &Ferry) -> String {
    ferry.public.trim_start_matches("http://").to_string()
}

/// Sends raw bytes and reads the answer until the server closes or `within` passes.
fn raw(ferry: &Ferry, request: &[u8], within: Duration) -> String {
    let mut s = TcpStream::connect(addr(ferry)).unwrap();
    s.set_read_timeout(Some(within)).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).to_string()
}

fn status_of(response: &str) -> u16 {
    response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[test]
fn thousands_of_connections_and_slow_clients_do_not_stop_other_callers() {
    more_files();
    let ferry = Ferry::start_with(&["--header-read-timeout", "2s", "--body-read-timeout", "2s"]);
    let (status, body) = ferry.deploy_raw("hello-http", guests::bytes(guests::HELLO_HTTP));
    assert_eq!(status, 201, "{body}");

    // 2,000 connections: half send nothing, half start a request head and stop (slowloris).
    let started = Instant::now();
    let mut held = Vec::new();
    for i in 0..2000 {
        let mut s = TcpStream::connect(addr(&ferry)).unwrap();
        if i % 2 == 0 {
            s.write_all(b"GET /hello-http/ HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .unwrap();
        }
        held.push(s);
    }
    eprintln!("2000 connections open after {:?}", started.elapsed());
    // Others are answered meanwhile.
    for _ in 0..20 {
        assert_eq!(ferry.get("/hello-http/ok").0, 200);
    }
    // Each held connection is closed by the host once the head timeout passes: a read ends
    // (a read that times out instead would fail the test).
    for s in &mut held {
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        let mut buf = [0u8; 512];
        match s.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => panic!("unexpected answer: {}", String::from_utf8_lossy(&buf[..n])),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("the host did not close a stalled connection: {e}"),
        }
    }
    eprintln!("all 2000 closed by the host after {:?}", started.elapsed());

    // A body that stops arriving: 408 once the body timeout passes, for a submit.
    let mut s = TcpStream::connect(addr(&ferry)).unwrap();
    s.write_all(
        b"POST /hello-http/slow HTTP/1.1\r\nHost: x\r\nPrefer: respond-async\r\nContent-Length: 1000\r\n\r\nonly-a-little",
    )
    .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    assert_eq!(status_of(&text), 408, "{text}");
    assert!(text.contains("--body-read-timeout"), "{text}");
    assert_eq!(ferry.admin_get("/healthz").1["status"], "ok");
}

#[test]
fn connections_over_the_cap_get_503_at_once() {
    // Held connections must stay open for the test: a long head timeout.
    let ferry = Ferry::start_with(&["--max-connections", "20", "--header-read-timeout", "120s"]);
    let (status, body) = ferry.deploy_raw("hello-http", guests::bytes(guests::HELLO_HTTP));
    assert_eq!(status, 201, "{body}");
    let held: Vec<TcpStream> = (0..20)
        .map(|_| TcpStream::connect(addr(&ferry)).unwrap())
        .collect();
    // The host counts a connection once it has accepted it: wait until the next is refused.
    let text = eventually("a refusal over the cap", Duration::from_secs(30), || {
        let text = raw(
            &ferry,
            b"GET /hello-http/ HTTP/1.1\r\nHost: x\r\n\r\n",
            Duration::from_secs(30),
        );
        (status_of(&text) == 503).then_some(text)
    });
    assert!(
        text.to_ascii_lowercase().contains("retry-after: 1"),
        "{text}"
    );
    assert!(text.contains("--max-connections"), "{text}");
    drop(held);
    eventually("room again", Duration::from_secs(30), || {
        (ferry.get("/hello-http/").0 == 200).then_some(())
    });
}

#[test]
fn huge_headers_odd_methods_and_path_tricks_get_bounded_answers() {
    let ferry = Ferry::start();
    let (status, body) = ferry.deploy_raw("hello-http", guests::bytes(guests::HELLO_HTTP));
    assert_eq!(status, 201, "{body}");
    let t = Duration::from_secs(30);

    // 100 KB of headers, and too many headers: 431.
    let big = format!(
        "GET /hello-http/ HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    assert_eq!(status_of(&raw(&ferry, big.as_bytes(), t)), 431);
    let mut many = String::from("GET /hello-http/ HTTP/1.1\r\nHost: x\r\n");
    for i in 0..200 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    assert_eq!(status_of(&raw(&ferry, many.as_bytes(), t)), 431);

    // An unknown method reaches the function (its business); status URLs take GET only.
    let text = raw(
        &ferry,
        b"FROB /hello-http/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        t,
    );
    assert_eq!(status_of(&text), 200, "{text}");
    let text = raw(
        &ferry,
        b"FROB /_ferry/invocations/abc HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        t,
    );
    assert_eq!(status_of(&text), 405, "{text}");

    // Dot segments are refused; encoded slashes are not separators; /_ferry is Ferry's.
    for (path, want, says) in [
        ("/hello-http/../_ferry/invocations/x", 400, "dot segment"),
        ("/hello-http/./x", 400, "dot segment"),
        ("/hello-http/..", 400, "dot segment"),
        ("/_ferry/../hello-http/", 400, "dot segment"),
        ("/_ferry/admin", 404, "Ferry"),
        (
            "/_ferry/invocations/..%2f..%2fadmin.token",
            404,
            "no invocation",
        ),
        ("/hello-http%2fx", 404, "no function serves"),
        ("/hello-http/a%2Fb", 200, "path=/hello-http/a%2Fb"),
    ] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let text = raw(&ferry, req.as_bytes(), t);
        assert_eq!(status_of(&text), want, "{path}: {text}");
        assert!(text.contains(says), "{path}: {text}");
    }
    assert_eq!(ferry.admin_get("/healthz").1["status"], "ok");
}

#[test]
fn the_admin_listener_bounds_callers_without_a_token_too() {
    let ferry = Ferry::start_with(&["--header-read-timeout", "2s"]);
    let admin = ferry.admin.trim_start_matches("http://").to_string();
    // A stalled head is closed by the host, without an answer.
    let mut s = TcpStream::connect(&admin).unwrap();
    s.write_all(b"GET /v1/functions HTTP/1.1\r\nHost: x\r\nAuthorization: Bea")
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut buf = [0u8; 256];
    match s.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!("unexpected answer: {}", String::from_utf8_lossy(&buf[..n])),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("the host did not close a stalled admin connection: {e}"),
    }
    // A huge head gets 431 before any token check.
    let mut s = TcpStream::connect(&admin).unwrap();
    let big = format!(
        "GET /v1/functions HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(big.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    assert_eq!(status_of(&String::from_utf8_lossy(&out)), 431);
    // And the API still answers.
    assert_eq!(ferry.admin_get("/v1/functions").0, 200);
}
