//! Security defaults with the real binary: admin authentication on by default, and how the CLI
//! and the operator give, find and refuse tokens.

use std::os::unix::fs::PermissionsExt as _;
use std::time::Duration;

use ferry_tests::{ferry_command, guests, Ferry};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// The CLI run with nothing but the given environment about tokens and data directories.
fn bare_cli(ferry: &Ferry, args: &[&str], dir: &std::path::Path) -> std::process::Output {
    ferry_command()
        .arg("--admin")
        .arg(&ferry.admin)
        .args(args)
        .current_dir(dir)
        .env_remove("FERRY_TOKEN")
        .env_remove("FERRY_TOKEN_FILE")
        .env_remove("FERRY_DATA_DIR")
        .output()
        .unwrap()
}

#[test]
fn the_admin_api_requires_the_token_made_on_first_start() {
    let ferry = Ferry::start();
    let file = ferry.data_dir.join("admin.token");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "admin.token is private");
    let token = ferry.token.clone().expect("a token was made");
    assert!(token.len() >= 40, "{token}");
    assert!(
        ferry.stdout().contains("admin.token"),
        "the start says where the token is: {}",
        ferry.stdout()
    );

    // Missing, wrong, malformed: 401 with no detail, on every admin route.
    for (path, method) in [
        ("/v1/functions", reqwest::Method::GET),
        ("/v1/functions/x", reqwest::Method::PUT),
        ("/v1/deadletters", reqwest::Method::DELETE),
        ("/v1/callback-secret", reqwest::Method::GET),
        ("/v1/store/backup", reqwest::Method::GET),
    ] {
        for auth in [
            None,
            Some("Bearer wrong".to_string()),
            Some(format!("Bearer {token}x")),
            Some(format!("Basic {token}")),
            Some(token.clone()),
        ] {
            let mut req = ferry.http.request(method.clone(), ferry.admin_url(path));
            if let Some(a) = &auth {
                req = req.header("authorization", a);
            }
            let resp = req.send().unwrap();
            assert_eq!(resp.status().as_u16(), 401, "{method} {path} with {auth:?}");
            assert_eq!(resp.headers()["www-authenticate"], "Bearer");
            assert_eq!(resp.text().unwrap(), r#"{"error":"unauthorized"}"#);
        }
    }
    // Nothing was changed by the refused PUT.
    assert_eq!(ferry.admin_get("/v1/functions/x").0, 404);

    // Liveness and readiness need no token; liveness shows details only with it.
    let open = ferry.http.get(ferry.admin_url("/healthz")).send().unwrap();
    assert_eq!(open.status().as_u16(), 200);
    let open: serde_json::Value = open.json().unwrap();
    assert_eq!(open, serde_json::json!({ "status": "ok" }));
    let (status, full) = ferry.admin_get("/healthz");
    assert_eq!(status, 200);
    assert!(full.get("functions").is_some(), "{full}");
    let ready = ferry.http.get(ferry.admin_url("/readyz")).send().unwrap();
    assert_eq!(ready.status().as_u16(), 200);

    // With the token: works.
    let (status, body) = ferry.deploy_raw("hello-http", guests::bytes(guests::HELLO_HTTP));
    assert_eq!(status, 201, "{body}");
}

#[test]
fn the_cli_finds_the_token_of_a_host_on_this_machine() {
    let mut ferry = Ferry::stopped(&[]);
    let project = ferry.data_dir.parent().unwrap().join("project");
    let deep = project.join("src/deeper");
    std::fs::create_dir_all(&deep).unwrap();
    ferry.data_dir = project.join(".ferry");
    ferry.start_again();

    // From a folder under the one holding .ferry: found by looking upwards.
    let out = bare_cli(&ferry, &["deploy", guests::HELLO_HTTP], &deep);
    assert!(out.status.success(), "{}", stderr(&out));
    // With --data-dir (or FERRY_DATA_DIR) from anywhere.
    let out = bare_cli(
        &ferry,
        &["--data-dir", ferry.data_dir.to_str().unwrap(), "list"],
        std::path::Path::new("/"),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("hello-http"));

    // Nowhere to find it: a message that says where it looked and what to pass.
    let out = bare_cli(&ferry, &["list"], std::path::Path::new("/"));
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("401") && err.contains("--data-dir"), "{err}");
    assert!(err.contains(".ferry/admin.token"), "{err}");

    // A wrong token: refused, and the message names where the token came from, never the token.
    let out = bare_cli(
        &ferry,
        &["--token", "not-the-token", "list"],
        std::path::Path::new("/"),
    );
    let err = stderr(&out);
    assert!(
        !out.status.success() && err.contains("refused the token from --token"),
        "{err}"
    );
    assert!(!err.contains("not-the-token"), "{err}");

    // From a file (it need not appear in `ps`), and from the environment.
    let file = ferry.data_dir.parent().unwrap().join("token.txt");
    std::fs::write(&file, format!("{}\n", ferry.token.as_ref().unwrap())).unwrap();
    let out = bare_cli(
        &ferry,
        &["--token-file", file.to_str().unwrap(), "list"],
        std::path::Path::new("/"),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = ferry_command()
        .args(["--admin", &ferry.admin, "list"])
        .current_dir("/")
        .env("FERRY_TOKEN", ferry.token.as_ref().unwrap())
        .env_remove("FERRY_DATA_DIR")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));

    // An empty FERRY_TOKEN is an error, not "no token".
    let out = ferry_command()
        .args(["--admin", &ferry.admin, "list"])
        .current_dir(&deep)
        .env("FERRY_TOKEN", "")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("empty"), "{}", stderr(&out));
}

#[test]
fn the_operator_sets_the_token_or_turns_auth_off_only_on_loopback() {
    // A token given by the operator replaces the generated one and is kept for the local CLI.
    let mut ferry = Ferry::start();
    let first = ferry.token.clone().unwrap();
    ferry.kill();
    let file = ferry.data_dir.parent().unwrap().join("operator.token");
    std::fs::write(&file, "operator-chosen-token-0123456789\n").unwrap();
    ferry.start_again_with(&["--token-file", file.to_str().unwrap()]);
    assert_eq!(
        ferry.token.as_deref(),
        Some("operator-chosen-token-0123456789")
    );
    let refused = ferry
        .http
        .get(ferry.admin_url("/v1/functions"))
        .bearer_auth(&first)
        .send()
        .unwrap();
    assert_eq!(
        refused.status().as_u16(),
        401,
        "the old token no longer works"
    );
    assert_eq!(ferry.admin_get("/v1/functions").0, 200);
    ferry.kill();

    // An empty token refuses to start instead of turning authentication off.
    ferry.env = vec![("FERRY_TOKEN".into(), String::new())];
    let status = ferry.run_to_exit(&[], Duration::from_secs(60));
    assert!(!status.success());
    assert!(ferry.log().contains("is empty"), "{}", ferry.log());
    ferry.env.clear();

    // No authentication: refused off loopback, with the reason ...
    let status = ferry.run_to_exit(
        &["--insecure-no-admin-auth", "--admin-listen", "0.0.0.0:0"],
        Duration::from_secs(60),
    );
    assert!(!status.success());
    assert!(
        ferry.log().contains("not a loopback address"),
        "{}",
        ferry.log()
    );
    // ... and on loopback the API is open, with a warning on start.
    ferry.start_again_with(&["--insecure-no-admin-auth"]);
    assert!(ferry.stdout().contains("admin authentication is off"));
    let open = ferry
        .http
        .get(ferry.admin_url("/v1/functions"))
        .send()
        .unwrap();
    assert_eq!(open.status().as_u16(), 200);
}

/// Deploys the hostile guest as `hostile` with this manifest text after its name.
fn deploy_hostile(ferry: &Ferry, rest: &str) {
    let manifest = format!("name = \"hostile\"\n{rest}");
    let (status, body) =
        ferry.deploy_manifest("hostile", guests::bytes(guests::HOSTILE), &manifest);
    assert_eq!(status, 201, "{body}");
}

/// Each invocation's instance starts from the component's own memory: what a guest wrote (here
/// a token on 128 separate pages, more than wasmtime resets in one scan of the dirty pages) is
/// never there for the next invocation, one after another (the same memory slot, reset in place)
/// or several at once.
#[test]
fn an_instance_never_finds_what_an_earlier_one_wrote() {
    let ferry = Ferry::start();
    deploy_hostile(&ferry, "");
    for i in 0..40 {
        assert_eq!(
            ferry.get(&format!("/hostile/snoop?token=secret-{i}")),
            (200, "dirty 0".to_string()),
            "request {i}"
        );
    }
    std::thread::scope(|s| {
        for t in 0..4 {
            let ferry = &ferry;
            s.spawn(move || {
                for i in 0..25 {
                    assert_eq!(
                        ferry.get(&format!("/hostile/snoop?token=thread-{t}-{i}")),
                        (200, "dirty 0".to_string()),
                        "thread {t}, request {i}"
                    );
                }
            });
        }
    });
}

#[test]
fn guest_outbound_http_reaches_only_allowed_public_hosts() {
    use ferry_tests::receiver::{Receiver, BODY};
    let gate = ferry_tests::Gate::default();
    let held = gate.clone();
    let receiver = Receiver::with(move |req, _| match req.path.as_str() {
        "/big" => (200, vec![(BODY.to_string(), "b".repeat(3 << 20))]),
        "/hold" => {
            held.wait();
            (200, vec![])
        }
        "/moved" => (
            302,
            vec![("location".to_string(), "http://example.com/".to_string())],
        ),
        _ => (200, vec![(BODY.to_string(), "hello".to_string())]),
    });
    let port = receiver.addr.port();
    let ferry = Ferry::start_with(&["--outbound-max-response", "1MiB"]);
    deploy_hostile(
        &ferry,
        "[limits]\noutbound_requests = 3\n[outbound]\nallow = [\"localhost\", \"*.example.com\"]\n",
    );
    let fetch = |url: &str| ferry.get(&format!("/hostile/fetch?url={url}"));

    // Not on the allow-list: denied, and the guest gets the error code, not a trap.
    for url in [
        format!("http://127.0.0.1:{port}/"),
        "http://example.com/".to_string(),
        "http://evil.test/".to_string(),
    ] {
        let (status, body) = fetch(&url);
        assert_eq!(
            (status, body.as_str()),
            (502, "error ErrorCode::HttpRequestDenied"),
            "{url}"
        );
    }
    // On the list, but the name resolves to a loopback address: denied at connect time.
    let (status, body) = fetch(&format!("http://localhost:{port}/x"));
    assert_eq!(
        (status, body.as_str()),
        (502, "error ErrorCode::HttpRequestDenied")
    );
    assert!(
        receiver.requests().is_empty(),
        "nothing reached the receiver"
    );
    let log = ferry.log();
    assert!(
        log.contains("loopback") && log.contains("--allow-private-outbound"),
        "the host's log says why: {log}"
    );
    // Requests per invocation are counted: the first 3 are denied by the guard, the other 2 by
    // limits.outbound_requests before anything is looked up.
    let (_, body) = ferry.get(&format!(
        "/hostile/fetch-many?n=5&url=http://localhost:{port}/"
    ));
    assert_eq!(body, "sent=0 denied=5");
    // No way around it: raw sockets and name lookups are closed to guests.
    let (_, body) = ferry.get(&format!("/hostile/socket?port={port}"));
    assert!(body.contains("access-denied"), "{body}");
    let (_, body) = ferry.get("/hostile/lookup?name=localhost");
    assert!(body.contains("permanent-resolver-failure"), "{body}");
    assert!(
        receiver.requests().is_empty(),
        "nothing reached the receiver"
    );
    drop(ferry);

    // The operator allows the host: reached, within the response cap, redirects not followed,
    // and the host's own listeners stay out of reach.
    let ferry = Ferry::start_with(&[
        "--outbound-max-response",
        "1MiB",
        "--outbound-timeout",
        "1s",
        "--allow-private-outbound",
        "localhost",
    ]);
    deploy_hostile(
        &ferry,
        "[limits]\noutbound_requests = 3\n[outbound]\nallow = [\"localhost\"]\n",
    );
    let fetch = |url: &str| ferry.get(&format!("/hostile/fetch?url={url}"));
    assert_eq!(
        fetch(&format!("http://localhost:{port}/ok")),
        (200, "status 200 bytes 5".into())
    );
    assert_eq!(
        fetch(&format!("http://localhost:{port}/moved")),
        (200, "status 302 bytes 0".into()),
        "the redirect is the guest's to follow"
    );
    let (status, body) = fetch(&format!("http://localhost:{port}/big"));
    assert_eq!(status, 502, "{body}");
    // The body stream fails with the limit in its message (wasi:http 0.2 carries a body
    // error as a stream error).
    assert!(body.contains("body size exceeds limit: 1048576"), "{body}");
    let admin_port = ferry.admin.rsplit(':').next().unwrap().to_string();
    let public_port = ferry.public.rsplit(':').next().unwrap().to_string();
    for own in [admin_port, public_port] {
        let (status, body) = fetch(&format!("http://localhost:{own}/v1/functions"));
        assert_eq!(
            (status, body.as_str()),
            (502, "error ErrorCode::HttpRequestDenied"),
            "port {own}"
        );
    }
    let (_, body) = ferry.get(&format!(
        "/hostile/fetch-many?n=5&url=http://localhost:{port}/ok"
    ));
    assert_eq!(body, "sent=3 denied=2", "limits.outbound_requests = 3");
    // A value above the operator's ceiling is refused at deploy, naming the key.
    let (status, body) = ferry.deploy_manifest(
        "hostile",
        guests::bytes(guests::HOSTILE),
        "name = \"hostile\"\n[limits]\noutbound_requests = 100000\n",
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body.to_string().contains("limits.outbound_requests"),
        "{body}"
    );
}

#[test]
fn secrets_reach_the_guest_and_nowhere_else() {
    let mut ferry = Ferry::stopped(&[]);
    ferry.env = vec![
        (
            "FERRY_SECRET_ORDERS_DB".into(),
            "pw-from-the-host-env-7731".into(),
        ),
        (
            "HOST_CLOUD_KEY".into(),
            "operator-only-credential-99".into(),
        ),
    ];
    ferry.start_again();
    deploy_hostile(
        &ferry,
        "[config]\nGREETING = \"hello\"\nAPI_KEY = { value = \"literal-secret-5521\", secret = true }\n\
         [secrets]\nDB_PASSWORD = \"env:FERRY_SECRET_ORDERS_DB\"\n",
    );
    // The guest gets every value.
    assert_eq!(
        ferry.get("/hostile/env?name=API_KEY").1,
        "literal-secret-5521"
    );
    assert_eq!(
        ferry.get("/hostile/env?name=DB_PASSWORD").1,
        "pw-from-the-host-env-7731"
    );
    assert_eq!(ferry.get("/hostile/env?name=GREETING").1, "hello");

    // Nothing else shows them: the API, the CLI, the log.
    let secrets = ["literal-secret-5521", "pw-from-the-host-env-7731"];
    let (_, shown) = ferry.admin_get("/v1/functions/hostile");
    let (_, list) = ferry.admin_get("/v1/functions");
    let show = ferry.cli(&["show", "hostile"], None);
    let show_json = ferry.cli(&["--json", "show", "hostile"], None);
    let cli_list = ferry.cli(&["--json", "list"], None);
    let everything = format!(
        "{shown}{list}{}{}{}{}",
        String::from_utf8_lossy(&show.stdout),
        String::from_utf8_lossy(&show_json.stdout),
        String::from_utf8_lossy(&cli_list.stdout),
        ferry.log()
    );
    for s in secrets {
        assert!(!everything.contains(s), "{s} leaked: {everything}");
    }
    assert!(shown.to_string().contains("(secret)"), "{shown}");
    assert!(
        shown.to_string().contains("hello"),
        "plain config is shown: {shown}"
    );

    // A manifest error on a line with a secret does not quote it; a missing variable is named,
    // and a literal under [secrets] is refused.
    for (manifest, says) in [
        (
            "[config]\nAPI_KEY = { value = \"literal-secret-5521\", secret = tru }\n",
            "line 3",
        ),
        (
            "[secrets]\nX = \"env:FERRY_SECRET_NOT_SET_ANYWHERE\"\n",
            "FERRY_SECRET_NOT_SET_ANYWHERE is not set",
        ),
        (
            "[secrets]\nX = \"env:HOST_CLOUD_KEY\"\n",
            "is not a function secret",
        ),
        (
            "[secrets]\nX = \"literal-secret-5521\"\n",
            "write env:FERRY_SECRET_",
        ),
    ] {
        let (status, body) = ferry.deploy_manifest(
            "hostile",
            guests::bytes(guests::HOSTILE),
            &format!("name = \"hostile\"\n{manifest}"),
        );
        assert_eq!(status, 400, "{body}");
        let text = body.to_string();
        assert!(text.contains(says), "{text}");
        assert!(!text.contains("literal-secret-5521"), "{text}");
        assert!(!text.contains("operator-only-credential-99"), "{text}");
    }
}
