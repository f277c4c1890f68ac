//! A restarted host serves every function from the store without recompiling anything.

use ferry_tests::{guests, Ferry};

#[test]
fn restart_serves_everything_without_recompiling() {
    let mut ferry = Ferry::start();
    assert_eq!(
        ferry
            .deploy_raw("hello-http", guests::bytes(guests::HELLO_HTTP))
            .0,
        201
    );
    let manifest = "name = \"misbehave\"\n[[trigger.http]]\nroute = \"/mb/...\"\n[config]\nGREETING = \"Hi\"\n";
    assert_eq!(
        ferry
            .deploy_manifest("misbehave", guests::bytes(guests::MISBEHAVE), manifest)
            .0,
        201
    );
    assert_eq!(
        ferry
            .deploy_raw("misbehave-2", guests::bytes(guests::MISBEHAVE))
            .0,
        201
    );
    assert_eq!(
        ferry
            .deploy_raw("echo-event", guests::bytes(guests::ECHO_EVENT))
            .0,
        201
    );
    // Optimised code follows the baseline code; same bytes as misbehave: compiled once.
    for name in ["hello-http", "misbehave", "misbehave-2", "echo-event"] {
        ferry.optimized(name);
    }
    assert_eq!(ferry.admin_get("/healthz").1["compilations"], 3);

    // No graceful shutdown: SIGKILL, then start on the same data directory.
    ferry.restart();
    let (_, health) = ferry.admin_get("/healthz");
    assert_eq!(health["functions"], 4, "{health}");
    assert_eq!(
        ferry.get("/hello-http/again").1,
        "Hello from Ferry! path=/hello-http/again\n"
    );
    assert_eq!(ferry.get("/mb/x").1, "Hi from misbehave\n");
    assert_eq!(ferry.get("/misbehave-2").1, "Hello from misbehave\n");
    let (_, health) = ferry.admin_get("/healthz");
    assert_eq!(
        health["compilations"], 0,
        "nothing recompiled after restart: {health}"
    );
    assert!(ferry.log().contains("from_cache=4"), "{}", ferry.log());

    // Versions continue where they were.
    let (status, body) = ferry.deploy_raw("hello-http", guests::bytes(guests::HELLO_HTTP));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"], 2);
    assert_eq!(
        ferry.admin_get("/healthz").1["compilations"],
        0,
        "same bytes reuse the cached artifact"
    );

    // The code is mapped from the artifact files, not copied into the host's memory.
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", ferry.pid())).unwrap();
    let mapped = maps
        .lines()
        .filter(|l| l.contains("/artifacts/") && l.ends_with(".cwasm"))
        .count();
    assert!(mapped >= 3, "the three artifacts are mapped:\n{maps}");

    // A damaged artifact file is never loaded: its component is compiled again.
    let files: Vec<_> = std::fs::read_dir(ferry.data_dir.join("artifacts"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 3, "{files:?}");
    for f in &files {
        let mut bytes = std::fs::read(f).unwrap();
        let at = bytes.len() / 2;
        bytes[at] ^= 0x40;
        // A new file renamed over it: the running host keeps the one it mapped.
        let tmp = f.with_extension("damaged");
        std::fs::write(&tmp, bytes).unwrap();
        std::fs::rename(&tmp, f).unwrap();
    }
    ferry.restart();
    assert!(
        ferry.log().contains("does not match its checksum"),
        "{}",
        ferry.log()
    );
    assert_eq!(ferry.get("/mb/x").1, "Hi from misbehave\n");
    assert_eq!(ferry.get("/misbehave-2").1, "Hello from misbehave\n");
    for name in ["hello-http", "misbehave", "misbehave-2", "echo-event"] {
        ferry.optimized(name);
    }
    assert_eq!(
        ferry.get("/hello-http/again").1,
        "Hello from Ferry! path=/hello-http/again\n"
    );
}

#[test]
fn a_deleted_function_stays_deleted_after_restart() {
    let mut ferry = Ferry::start();
    assert_eq!(
        ferry
            .deploy_raw("hello-http", guests::bytes(guests::HELLO_HTTP))
            .0,
        201
    );
    assert_eq!(
        ferry
            .deploy_raw("other", guests::bytes(guests::HELLO_HTTP))
            .0,
        201
    );
    let resp = ferry
        .admin_req(reqwest::Method::DELETE, "/v1/functions/other")
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    ferry.restart();
    assert_eq!(ferry.get("/other").0, 404);
    assert_eq!(ferry.get("/hello-http").0, 200);
}
