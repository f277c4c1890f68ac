//! Guests built with `cargo component build` (wasm32-wasip1 + the preview1 adapter) run on
//! Ferry just like the ones built for wasm32-wasip2.

use std::path::PathBuf;
use std::process::Command;

use ferry_tests::{guests, wait_for_cargo_component, Ferry};

#[test]
fn components_built_by_cargo_component_run() {
    let examples = PathBuf::from(guests::EXAMPLES_DIR);
    // The examples' own target directory, where the tests' build script (and `scripts/run.sh`)
    // built them for wasm32-wasip2: wit-bindgen's proc macro, built for the host, is reused.
    let target = examples.join("target");
    wait_for_cargo_component();
    let out = Command::new("cargo")
        .current_dir(&examples)
        .args([
            "component",
            "build",
            "--release",
            "-p",
            "hello-http",
            "-p",
            "echo-event",
        ])
        .arg("--target-dir")
        .arg(&target)
        .output()
        .expect("running cargo component");
    assert!(
        out.status.success(),
        "`cargo component build` failed (install it: cargo install cargo-component --locked):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let release = target.join("wasm32-wasip1/release");

    let ferry = Ferry::start();
    let hello = std::fs::read(release.join("hello_http.wasm")).unwrap();
    let (status, body) = ferry.deploy_raw("hello-http", hello);
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["world"], "http");
    assert_eq!(
        ferry.get("/hello-http/cc").1,
        "Hello from Ferry! path=/hello-http/cc\n"
    );

    let echo = std::fs::read(release.join("echo_event.wasm")).unwrap();
    let (status, body) = ferry.deploy_raw("echo-event", echo);
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["world"], "event");
}
