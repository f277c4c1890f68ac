//! `ferry new` and `ferry wit` as a newcomer uses them: scaffold, `cargo test`, build with plain
//! cargo, `ferry deploy` in the folder, call — with no edit in between.

use std::path::Path;
use std::process::Command;

use ferry_tests::Ferry;

/// Runs cargo in `dir` as a user would: none of the outer build's settings leak in.
fn cargo(dir: &Path, args: &[&str]) {
    let out = ferry_tests::as_a_user(Command::new("cargo").current_dir(dir).args(args))
        .output()
        .expect("running cargo");
    assert!(
        out.status.success(),
        "cargo {args:?} in {} failed:\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn cli_ok(ferry: &Ferry, args: &[&str], dir: &Path) -> String {
    let out = ferry.cli(args, Some(dir));
    assert!(
        out.status.success(),
        "ferry {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn ferry_new_projects_test_build_deploy_and_answer_without_edits() {
    let ferry = Ferry::start();
    let tmp = tempfile::tempdir().unwrap();

    // HTTP.
    let said = cli_ok(&ferry, &["new", "http", "hi-http"], tmp.path());
    assert!(said.contains("ferry dev"), "{said}");
    let dir = tmp.path().join("hi-http");
    cargo(&dir, &["test", "--quiet"]);
    cargo(
        &dir,
        &["build", "--target", "wasm32-wasip2", "--release", "--quiet"],
    );
    let deployed = cli_ok(&ferry, &["deploy"], &dir);
    assert!(deployed.contains("hi-http"), "{deployed}");
    let (status, body) = ferry.get("/hi-http/hello?x=1");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        "Hello from hi-http! You asked for /hi-http/hello?x=1\n"
    );
    let logs = cli_ok(&ferry, &["logs", "hi-http"], &dir);
    assert!(logs.contains("request for /hi-http/hello?x=1"), "{logs}");

    // Event.
    cli_ok(&ferry, &["new", "event", "hi-event"], tmp.path());
    let dir = tmp.path().join("hi-event");
    assert!(dir.join("wit/world.wit").exists());
    cargo(&dir, &["test", "--quiet"]);
    // `ferry build` runs cargo and says what it made.
    let out = ferry_tests::as_a_user(ferry.cli_command(&["build", "--json"]).current_dir(&dir))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let built: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(built["world"], "event", "{built}");
    assert!(built["size"].as_u64().unwrap() > 10_000, "{built}");
    assert!(built["component"]
        .as_str()
        .unwrap()
        .ends_with("wasm32-wasip2/release/hi_event.wasm"));
    cli_ok(&ferry, &["deploy"], &dir);
    let post = |data: &'static str| {
        ferry
            .http
            .post(ferry.url("/hi-event"))
            .header("ce-id", "7")
            .header("ce-source", "/demo")
            .header("ce-type", "demo.hello")
            .header("ce-specversion", "1.0")
            .header("content-type", "text/plain")
            .body(data)
            .send()
            .unwrap()
    };
    let resp = post("hi");
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.headers()["ce-type"], "demo.hello.handled");
    assert_eq!(resp.headers()["ce-source"], "/hi-event");
    assert_eq!(resp.text().unwrap(), "hi");
    assert_eq!(post("").status().as_u16(), 422, "no data: invalid-event");

    // `cargo component build` builds both projects too, with no edit.
    ferry_tests::wait_for_cargo_component();
    for (name, lib) in [("hi-http", "hi_http"), ("hi-event", "hi_event")] {
        let dir = tmp.path().join(name);
        cargo(&dir, &["component", "build", "--release", "--quiet"]);
        let wasm = dir.join(format!("target/wasm32-wasip1/release/{lib}.wasm"));
        let (status, body) = ferry.deploy_raw(&format!("{name}-cc"), std::fs::read(&wasm).unwrap());
        assert_eq!(status, 201, "{name}: {body}");
    }
    assert_eq!(
        ferry.get("/hi-http-cc/x").1,
        "Hello from hi-http! You asked for /hi-http-cc/x\n"
    );

    // `ferry build` outside a project says what to do.
    let out = ferry.cli(&["build"], Some(tmp.path()));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ferry new http NAME"));

    // A name that is taken, or not a valid function name, changes nothing.
    let out = ferry.cli(&["new", "http", "hi-http"], Some(tmp.path()));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));
    let out = ferry.cli(&["new", "http", "Not_A_Name"], Some(tmp.path()));
    assert!(!out.status.success());
    assert!(!tmp.path().join("Not_A_Name").exists());
}

#[test]
fn ferry_wit_writes_the_worlds_a_guest_binds_to() {
    let tmp = tempfile::tempdir().unwrap();
    let out = ferry_tests::ferry_command()
        .current_dir(tmp.path())
        .args(["wit", "--out", "my-wit"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit");
    for file in ["world.wit", "deps/http.wit", "deps/io.wit", "deps/cli.wit"] {
        assert_eq!(
            std::fs::read_to_string(tmp.path().join("my-wit").join(file)).unwrap(),
            std::fs::read_to_string(root.join(file)).unwrap(),
            "{file}"
        );
    }

    // For a tool bound to WASI 0.2.10 (componentize-js): every package at that release.
    let out = ferry_tests::ferry_command()
        .current_dir(tmp.path())
        .args(["--json", "wit", "--out", "wit-10", "--wasi", "0.2.10"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let said: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(said["wasi"], "0.2.10");
    let http = std::fs::read_to_string(tmp.path().join("wit-10/deps/http.wit")).unwrap();
    assert!(http.starts_with("package wasi:http@0.2.10;"), "{http:.60}");
    let world = std::fs::read_to_string(tmp.path().join("wit-10/world.wit")).unwrap();
    assert!(world.contains("include wasi:http/proxy@0.2.10;"));
    assert!(!world.contains("0.2.12"));

    // With the Rust bindings of the event world, as `ferry new event` ships them.
    let out = ferry_tests::ferry_command()
        .current_dir(tmp.path())
        .args([
            "--json",
            "wit",
            "--out",
            "p/wit",
            "--rust",
            "p/src/world.rs",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let said: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(said["rust"], "p/src/world.rs", "{said}");
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("p/src/world.rs")).unwrap(),
        std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../host/templates/rust-event/src/world.rs")
        )
        .unwrap()
    );
    assert!(tmp.path().join("p/wit/world.wit").exists());
    // `ferry wit` with these arguments fails, its error saying `says`, and makes no `folder`.
    let refused = |args: &[&str], says: &str, folder: &str| {
        let out = ferry_tests::ferry_command()
            .current_dir(tmp.path())
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(!tmp.path().join(folder).exists(), "{args:?}");
    };
    // They are made for Ferry's own WASI release: with another one, refused, nothing written.
    refused(
        &[
            "wit",
            "--out",
            "q/wit",
            "--wasi",
            "0.2.10",
            "--rust",
            "q/world.rs",
        ],
        "--wasi",
        "q",
    );
    // --rust names a file: a folder is refused, and no WIT is written either.
    std::fs::create_dir(tmp.path().join("src")).unwrap();
    refused(
        &["wit", "--out", "r/wit", "--rust", "src"],
        "src/world.rs",
        "r",
    );
    // A release Ferry cannot write is refused, saying which it can, and nothing is written.
    refused(
        &["wit", "--out", "wit-bad", "--wasi", "0.3.0"],
        "0.2.0 to 0.2.12",
        "wit-bad",
    );
}

#[test]
fn ferry_dev_serves_redeploys_on_change_survives_a_broken_edit_and_stops_its_host() {
    use std::io::{BufRead, BufReader};
    use std::time::{Duration, Instant};

    let tmp = tempfile::tempdir().unwrap();
    let made = ferry_tests::ferry_command()
        .current_dir(tmp.path())
        .args(["new", "http", "dev-fn"])
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let dir = tmp.path().join("dev-fn");
    // The host at --admin is someone else's (this folder has no token for it): `ferry dev`
    // leaves it alone and starts its own (store in dev-fn/.ferry).
    let theirs = Ferry::start();
    let mut dev = ferry_tests::as_a_user(&mut ferry_tests::ferry_command())
        .current_dir(&dir)
        .args([
            "--admin",
            &theirs.admin,
            // One JSON object per line (the quickstart's test reads the text for people).
            "--json",
            "dev",
            "--debounce",
            "200ms",
        ])
        .env_remove("FERRY_DATA_DIR")
        .env_remove("FERRY_TOKEN")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let (tx, lines) = std::sync::mpsc::channel::<String>();
    let out = dev.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut dev = Kill(dev);
    let until = |marker: &str, within: Duration| -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) if line.contains(marker) => return line,
                Ok(_) => continue,
                Err(e) => panic!("`ferry dev` never printed {marker:?}: {e}"),
            }
        }
    };
    let event = |line: String| serde_json::from_str::<serde_json::Value>(&line).unwrap();
    let refused = event(until(r#""event":"host""#, Duration::from_secs(300)));
    assert!(
        refused["refused"].as_str().unwrap().contains("401"),
        "{refused}"
    );
    let host = event(until(r#""event":"host""#, Duration::from_secs(300)));
    assert_eq!(host["started"], true, "{host}");
    assert_ne!(host["admin"], theirs.admin.as_str(), "{host}");
    let serving = event(until(r#""event":"serving""#, Duration::from_secs(300)));
    // The host it started serves baseline code only (no optimized compile behind each save).
    assert_eq!(serving["code"]["tier"], "baseline", "{serving}");
    assert_eq!(serving["code"]["optimizing"], false, "{serving}");
    let url = serving["url"].as_str().unwrap().to_string();
    let http = reqwest::blocking::Client::new();
    let get = |path: &str| {
        http.get(format!("{url}{path}"))
            .send()
            .and_then(|r| r.text())
            .unwrap_or_default()
    };
    assert_eq!(get("/x"), "Hello from dev-fn! You asked for /dev-fn/x\n");
    // The function's output and the outcome stream in.
    until("request for /dev-fn/x", Duration::from_secs(30));
    until("http sync ok in", Duration::from_secs(30));

    // A change is built and served.
    let lib = dir.join("src/lib.rs");
    let text = std::fs::read_to_string(&lib).unwrap();
    std::fs::write(&lib, text.replace("Hello from", "Howdy from")).unwrap();
    let redeployed = event(until(r#""event":"redeployed""#, Duration::from_secs(300)));
    assert_eq!(redeployed["function"]["version"], 2, "{redeployed}");
    assert_eq!(
        redeployed["function"]["code"]["optimizing"], false,
        "{redeployed}"
    );
    assert_eq!(get("/y"), "Howdy from dev-fn! You asked for /dev-fn/y\n");

    // A broken edit is reported; the last good version keeps serving.
    let good = std::fs::read_to_string(&lib).unwrap();
    std::fs::write(&lib, format!("{good}\nbroken(")).unwrap();
    let failed = event(until(r#""event":"build-failed""#, Duration::from_secs(300)));
    assert_eq!(failed["serving"], 2, "{failed}");
    assert!(
        failed["error"].as_str().unwrap().contains("build failed"),
        "{failed}"
    );
    assert_eq!(get("/z"), "Howdy from dev-fn! You asked for /dev-fn/z\n");

    // Ctrl-C stops `ferry dev` and the host it started.
    let pid = dev.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    ferry_tests::eventually("ferry dev to exit", Duration::from_secs(60), || {
        dev.0.try_wait().unwrap()
    });
    ferry_tests::eventually("its host to stop", Duration::from_secs(30), || {
        http.get(format!("{url}/x")).send().is_err().then_some(())
    });
}

/// A Python or JavaScript project built on a machine without its toolchain: the error says what
/// to install, and nothing is built.
#[test]
fn ferry_build_names_the_toolchain_to_install() {
    let tmp = tempfile::tempdir().unwrap();
    for (lang, name, says) in [
        ("python", "py-fn", "pip install componentize-py"),
        ("js", "js-fn", "install Node.js 20"),
    ] {
        let made = ferry_tests::ferry_command()
            .current_dir(tmp.path())
            .args(["new", "http", name, "--lang", lang])
            .output()
            .unwrap();
        assert!(made.status.success(), "{made:?}");
        let dir = tmp.path().join(name);
        assert!(dir.join("wit/world.wit").exists());
        let out = ferry_tests::ferry_command()
            .current_dir(&dir)
            .arg("build")
            .env("PATH", tmp.path().join("no-such-dir"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{lang}: {stderr}");
        assert!(!dir.join(format!("{name}.wasm")).exists());
    }
}
