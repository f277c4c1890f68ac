//! The `ferry` CLI as a user drives it, against a real host.

use std::path::Path;

use ferry_tests::{ferry_command, guests, Ferry};

fn ok(out: &std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "command failed: {}\nstdout: {stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn failed(out: &std::process::Output) -> String {
    assert!(
        !out.status.success(),
        "command should fail: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[test]
fn deploy_file_list_show_rm() {
    let ferry = Ferry::start();
    let out = ok(&ferry.cli(
        &[
            "deploy",
            guests::HELLO_HTTP,
            "--name",
            "hello-http",
            "--route",
            "/hi/...",
        ],
        None,
    ));
    assert!(
        out.contains("deployed hello-http v1 (http function)"),
        "{out}"
    );
    assert!(out.contains("route /hi/..."), "{out}");
    assert_eq!(
        ferry.get("/hi/there").1,
        "Hello from Ferry! path=/hi/there\n"
    );

    // The name defaults to the file name.
    let out = ok(&ferry.cli(&["deploy", guests::MISBEHAVE], None));
    assert!(out.contains("deployed misbehave v1"), "{out}");

    let out = ok(&ferry.cli(&["list"], None));
    assert!(
        out.contains("hello-http") && out.contains("misbehave"),
        "{out}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&ok(&ferry.cli(&["list", "--json"], None))).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 2);
    let json: serde_json::Value =
        serde_json::from_str(&ok(&ferry.cli(&["show", "hello-http", "--json"], None))).unwrap();
    assert_eq!(json["routes"][0], "/hi/...");

    let out = ok(&ferry.cli(&["rm", "misbehave"], None));
    assert!(out.contains("removed misbehave"), "{out}");
    let err = failed(&ferry.cli(&["rm", "misbehave"], None));
    assert!(
        err.contains("no function named \"misbehave\"") && err.contains("404"),
        "{err}"
    );
}

#[test]
fn deploy_from_a_folder_with_ferry_toml() {
    let ferry = Ferry::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(guests::HELLO_HTTP, dir.path().join("hello.wasm")).unwrap();
    std::fs::write(
        dir.path().join("ferry.toml"),
        "name = \"greeter\"\ncomponent = \"hello.wasm\"\n[[trigger.http]]\nroute = \"/greeter-api/...\"\n[config]\nGREETING = \"Moin\"\n",
    )
    .unwrap();
    let out = ok(&ferry.cli(&["deploy"], Some(dir.path())));
    assert!(out.contains("deployed greeter v1"), "{out}");
    assert_eq!(
        ferry.get("/greeter-api/x").1,
        "Moin from Ferry! path=/greeter-api/x\n"
    );
    let out = ok(&ferry.cli(&["deploy", "--json"], Some(dir.path())));
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["version"], 2);

    // A manifest error is reported with the key, and nothing changes.
    std::fs::write(
        dir.path().join("ferry.toml"),
        "name = \"greeter\"\ncomponent = \"hello.wasm\"\n[limits]\ntimeout = \"forever\"\n",
    )
    .unwrap();
    let err = failed(&ferry.cli(&["deploy"], Some(dir.path())));
    assert!(
        err.contains("limits.timeout") && err.contains("400"),
        "{err}"
    );
    assert_eq!(ferry.admin_get("/v1/functions/greeter").1["version"], 2);

    // No manifest and no file: say what to do.
    let empty = tempfile::tempdir().unwrap();
    let err = failed(&ferry.cli(&["deploy"], Some(empty.path())));
    assert!(err.contains("no ferry.toml"), "{err}");
}

#[test]
fn errors_reaching_the_host_and_help() {
    let out = ferry_command()
        .args(["--admin", "http://127.0.0.1:9", "list"])
        .output()
        .unwrap();
    let err = failed(&out);
    assert!(err.contains("Is `ferry serve` running?"), "{err}");

    // A deploy (a request with a body) to an address where nothing listens says so plainly.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let out = ferry_command()
        .args([
            "--admin",
            &format!("http://{free}"),
            "deploy",
            guests::HELLO_HTTP,
        ])
        .output()
        .unwrap();
    let err = failed(&out);
    assert!(err.contains("nothing is listening"), "{err}");
    assert!(!err.contains("receiver is gone"), "{err}");
    assert!(err.lines().count() == 1, "one line, no error chain: {err}");

    // The program presents itself as `ferry`.
    let version = ok(&ferry_command().arg("--version").output().unwrap());
    assert!(version.starts_with("ferry 0."), "{version}");
    let help = ok(&ferry_command().arg("--help").output().unwrap());
    assert!(
        help.starts_with("Ferry runs WebAssembly components"),
        "{help}"
    );

    let out = ferry_command().args(["serve", "--help"]).output().unwrap();
    let help = ok(&out);
    for want in [
        "[default: 127.0.0.1:8080]",
        "[env: FERRY_LISTEN=]",
        "./.ferry",
        "[env: FERRY_DATA_DIR=]",
        "--insecure-no-admin-auth",
        "[default: 64MiB]",
    ] {
        assert!(help.contains(want), "--help should show {want}: {help}");
    }
    let out = ferry_command()
        .args(["deploy", "/definitely/missing.wasm"])
        .output()
        .unwrap();
    assert!(failed(&out).contains("/definitely/missing.wasm"));
}

#[test]
fn a_token_given_with_the_flag_is_required_and_sent() {
    let ferry = Ferry::start_with(&["--token", "s3cret"]);
    let resp = ferry
        .http
        .get(ferry.admin_url("/v1/functions"))
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let resp = ferry
        .http
        .get(ferry.admin_url("/v1/functions"))
        .bearer_auth("s3cret")
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);

    // The harness's CLI finds it in the data directory; a flag works from anywhere.
    ok(&ferry.cli(&["list"], None));
    let out = ok(&ferry.cli(
        &["--token", "s3cret", "deploy", guests::HELLO_HTTP],
        Some(Path::new("/")),
    ));
    assert!(out.contains("deployed hello-http"), "{out}");
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    use std::io::Read as _;
    use std::process::Stdio;
    let ferry = Ferry::start();
    for i in 0..20 {
        let (status, _) = ferry.deploy_raw(&format!("f{i}"), guests::bytes(guests::HELLO_HTTP));
        assert_eq!(status, 201);
    }
    // Like `ferry --json list | head -c 300`: the reader goes away after 300 bytes.
    let mut child = ferry_command()
        .args(["--admin", &ferry.admin, "--json", "list"])
        .env("FERRY_DATA_DIR", &ferry.data_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 300];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}

#[test]
fn serve_on_a_busy_port_fails_before_touching_the_data_directory() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = ferry_command()
        .args(["serve", "--listen", &busy.local_addr().unwrap().to_string()])
        .args(["--admin-listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    let err = failed(&out);
    assert!(err.contains("failed to listen on"), "{err}");
    assert!(err.contains("--listen"), "names the flag to change: {err}");
    assert!(!data.exists(), "the data directory was created: {err}");
}

#[test]
fn serve_prints_its_data_directory() {
    let ferry = Ferry::start();
    let dir = std::fs::canonicalize(&ferry.data_dir).unwrap();
    assert!(
        ferry
            .stdout()
            .contains(&format!("ferry: data directory {}", dir.display())),
        "{}",
        ferry.stdout()
    );
}

#[test]
fn ferry_invoke_calls_http_and_event_functions_sync_and_async() {
    let receiver = ferry_tests::receiver::Receiver::start();
    let ferry = Ferry::start_with(&["--allow-callback-host", "127.0.0.1"]);
    for (name, wasm) in [
        ("hello-http", guests::HELLO_HTTP),
        ("echo-event", guests::ECHO_EVENT),
    ] {
        let (status, body) = ferry.deploy_raw(name, guests::bytes(wasm));
        assert_eq!(status, 201, "{body}");
    }
    let run = |args: &[&str]| {
        let out = ferry.cli(args, None);
        (
            out.status.success(),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };

    // An HTTP function: GET by default, POST with --data; --json gives status, headers, body.
    let (ok, out, err) = run(&["invoke", "hello-http", "/world"]);
    assert!(ok, "{err}");
    assert_eq!(out, "Hello from Ferry! path=/hello-http/world\n");
    let (ok, out, _) = run(&[
        "invoke",
        "hello-http",
        "x?y=1",
        "--data",
        "hi",
        "-H",
        "x-a: 1",
        "--json",
    ]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["status"], 200);
    assert_eq!(v["body"], "Hello from Ferry! path=/hello-http/x?y=1\n");
    assert!(v["headers"]["ferry-invocation-id"].is_string(), "{v}");

    // An event function: a CloudEvent in, the result event out as JSON.
    let (ok, out, err) = run(&[
        "invoke",
        "echo-event",
        "--data",
        r#"{"n":1}"#,
        "--event-type",
        "order.created",
        "--event-source",
        "/shop",
    ]);
    assert!(ok, "{err}");
    let event: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(event["type"], "order.created.echo", "{event}");
    assert_eq!(event["echoedfrom"], "/shop", "{event}");
    assert_eq!(event["data"], r#"{"n":1}"#, "{event}");
    // The function's typed error: a failure, with the answer shown.
    let (ok, out, err) = run(&["invoke", "echo-event", "--event-type", "ferry.test.reject"]);
    assert!(!ok);
    assert!(
        out.contains("422") && out.contains("invalid-event"),
        "{out}"
    );
    assert!(err.contains("failed"), "{err}");

    // Asynchronous: --wait prints the outcome; --callback gets the signed result.
    let (ok, out, err) = run(&["invoke", "hello-http", "/later", "--async", "--wait"]);
    assert!(ok, "{err}");
    assert!(out.contains("succeeded after 1 attempt(s)"), "{out}");
    assert!(
        out.contains("Hello from Ferry! path=/hello-http/later"),
        "{out}"
    );
    assert!(err.contains("waiting for"), "{err}");
    let callback = receiver.url("/cb");
    let (ok, out, _) = run(&["invoke", "hello-http", "--async", "--callback", &callback]);
    assert!(ok);
    assert!(out.starts_with("accepted "), "{out}");
    ferry_tests::eventually("the callback", std::time::Duration::from_secs(30), || {
        receiver.requests().into_iter().find(|r| r.path == "/cb")
    });

    // Bad input: a clear error, nothing sent.
    let (ok, _, err) = run(&["invoke", "nope"]);
    assert!(!ok && err.contains("no function named"), "{err}");
    let (ok, _, err) = run(&["invoke", "hello-http", "-H", "no-colon"]);
    assert!(!ok && err.contains("NAME:VALUE"), "{err}");
    let (ok, _, err) = run(&["invoke", "hello-http", "--wait"]);
    assert!(!ok && err.contains("--async"), "{err}");
}

#[test]
fn a_large_upload_says_it_is_under_way_on_stderr() {
    let ferry = Ferry::start();
    let dir = tempfile::tempdir().unwrap();
    let big =
        ferry_tests::with_custom_section(&guests::bytes(guests::HELLO_HTTP), &"x".repeat(2 << 20));
    let file = dir.path().join("big_one.wasm");
    std::fs::write(&file, big).unwrap();
    let out = ferry.cli(&["deploy", file.to_str().unwrap()], None);
    let stdout = ok(&out);
    assert!(stdout.contains("big-one"), "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("uploading") && stderr.contains("MiB"),
        "{stderr}"
    );
    // Without the token, a big upload is refused for what it is (not as a broken pipe: the
    // host answers 401 before reading the body).
    let out = ferry
        .cli_command(&["deploy", file.to_str().unwrap()])
        .env("FERRY_DATA_DIR", dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("requires a token (401 unauthorized)"),
        "{stderr}"
    );
    // A small one stays quiet.
    let out = ferry.cli(&["deploy", guests::HELLO_HTTP], None);
    ok(&out);
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn rollback_serves_an_earlier_version_again_as_a_new_version() {
    let ferry = Ferry::start();
    ok(&ferry.cli(&["deploy", "--name", "svc", guests::HELLO_HTTP], None));
    ok(&ferry.cli(&["deploy", "--name", "svc", guests::ECHO_EVENT], None));
    let shown = |ferry: &Ferry| -> serde_json::Value {
        serde_json::from_str(&ok(&ferry.cli(&["--json", "show", "svc"], None))).unwrap()
    };
    let v2 = shown(&ferry);
    assert_eq!(v2["world"], "event");
    assert_ne!(
        ferry.get("/svc/x").0,
        200,
        "an event function takes events, not GETs"
    );

    // Back to the version before: version 3 serves version 1's component and settings.
    let out = ok(&ferry.cli(&["rollback", "svc"], None));
    assert!(out.contains("rolled back svc: version 3"), "{out}");
    let v3 = shown(&ferry);
    assert_eq!(
        (v3["version"].as_u64(), v3["world"].as_str()),
        (Some(3), Some("http"))
    );
    let (status, body) = ferry.get("/svc/x");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("Hello"), "{body}");

    // To a given version, through the API.
    let (status, v4) = ferry_tests::json_of(
        ferry
            .admin_req(reqwest::Method::POST, "/v1/functions/svc/rollback?to=2")
            .send()
            .unwrap(),
    );
    assert_eq!(status, 200, "{v4}");
    assert_eq!(
        (v4["version"].as_u64(), v4["digest"].clone()),
        (Some(4), v2["digest"].clone())
    );

    // A version not kept, a function that does not exist: 404, nothing changes.
    let err = failed(&ferry.cli(&["rollback", "svc", "--to", "99"], None));
    assert!(
        err.contains("version 99 of svc is not kept") && err.contains("--keep-versions"),
        "{err}"
    );
    let err = failed(&ferry.cli(&["rollback", "nothing"], None));
    assert!(err.contains("no function named"), "{err}");
    assert_eq!(shown(&ferry)["version"], 4);
    let (status, v) = ferry.admin_get("/v1/functions/svc/rollback?to=x");
    assert_eq!(status, 405, "{v}");
}
