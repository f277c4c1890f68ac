//! Bad input gets a 4xx with a message a person can act on, stores nothing, and leaves the
//! deployed version untouched.

use ferry_tests::{error_of, guests, Ferry};

/// Deploys hello-http v1 and returns a check that it is still v1 and serving.
fn with_deployed() -> (Ferry, impl Fn(&Ferry)) {
    let ferry = Ferry::start();
    assert_eq!(
        ferry
            .deploy_raw("hello-http", guests::bytes(guests::HELLO_HTTP))
            .0,
        201
    );
    let unchanged = |f: &Ferry| {
        let (_, list) = f.admin_get("/v1/functions");
        let list = list.as_array().unwrap().clone();
        assert_eq!(list.len(), 1, "nothing else was stored: {list:?}");
        assert_eq!(list[0]["name"], "hello-http");
        assert_eq!(list[0]["version"], 1);
        assert_eq!(f.get("/hello-http/still").0, 200);
    };
    (ferry, unchanged)
}

fn expect(status: u16, body: &serde_json::Value, want_status: u16, want: &[&str]) {
    assert_eq!(status, want_status, "{body}");
    let msg = error_of(body);
    for w in want {
        assert!(msg.contains(w), "{msg:?} should mention {w:?}");
    }
}

#[test]
fn uploads_that_are_not_usable_components() {
    let (ferry, unchanged) = with_deployed();
    let hello = guests::bytes(guests::HELLO_HTTP);
    let cases: Vec<(&str, Vec<u8>, u16, Vec<&str>)> = vec![
        (
            "garbage",
            b"this is not wasm at all".to_vec(),
            400,
            vec!["not WebAssembly"],
        ),
        ("empty", Vec::new(), 400, vec!["not WebAssembly"]),
        (
            "core module",
            wat::parse_str("(module (func (export \"f\")))").unwrap(),
            422,
            vec!["core WebAssembly module", "wasm32-wasip2"],
        ),
        (
            "truncated",
            hello[..hello.len() / 2].to_vec(),
            400,
            vec!["not a valid component"],
        ),
        (
            "no known export",
            wat::parse_str("(component)").unwrap(),
            422,
            vec![
                "exports neither",
                "wasi:http/incoming-handler",
                "ferry:function/handler",
            ],
        ),
        (
            "unknown import",
            wat::parse_str(
                r#"(component (import "acme:missing/api@1.0.0" (instance (export "f" (func)))))"#,
            )
            .unwrap(),
            422,
            vec!["does not provide", "acme:missing/api@1.0.0"],
        ),
        (
            "several unknown imports, listed together",
            wat::parse_str(
                r#"(component
                    (import "wasi:cli/environment@0.2.0" (instance))
                    (import "acme:missing/api@1.0.0" (instance (export "f" (func))))
                    (import "wasi:keyvalue/store@0.2.0-draft" (instance (export "g" (func))))
                    (import "wasi:cli/nonexistent@0.2.0" (instance (export "h" (func)))))"#,
            )
            .unwrap(),
            422,
            vec![
                "does not provide",
                "acme:missing/api@1.0.0, wasi:keyvalue/store@0.2.0-draft, wasi:cli/nonexistent@0.2.0",
            ],
        ),
    ];
    for (what, bytes, status, want) in cases {
        // Both as a new function and as an update of the deployed one.
        for name in ["fresh", "hello-http"] {
            let (s, body) = ferry.deploy_raw(name, bytes.clone());
            println!("{what} as {name}: {s} {body}");
            expect(s, &body, status, &want);
            unchanged(&ferry);
        }
    }
}

#[test]
fn bad_manifests_name_the_key() {
    let (ferry, unchanged) = with_deployed();
    let hello = guests::bytes(guests::HELLO_HTTP);
    let cases = [
        (
            "name = \"hello-http\"\n[limits]\nmemmory = \"1MiB\"\n",
            vec!["memmory"],
        ),
        (
            "name = \"hello-http\"\n[limits]\nmemory = \"plenty\"\n",
            vec!["limits.memory", "plenty"],
        ),
        (
            "name = \"hello-http\"\n[limits]\ntimeout = \"-1\"\n",
            vec!["limits.timeout"],
        ),
        (
            "name = \"hello-http\"\n[[trigger.http]]\nroute = \"relative\"\n",
            vec!["trigger.http[0].route", "must start with /"],
        ),
        ("name = \"hello-http\"\n[triggers]\n", vec!["triggers"]),
        ("name = \"other\"\n", vec!["\"other\"", "\"hello-http\""]),
        ("name = \n", vec!["invalid manifest"]),
    ];
    for (manifest, want) in cases {
        let (s, body) = ferry.deploy_manifest("hello-http", hello.clone(), manifest);
        expect(s, &body, 400, &want);
        unchanged(&ferry);
    }
}

#[test]
fn bad_names_content_types_and_multipart() {
    let (ferry, unchanged) = with_deployed();
    let hello = guests::bytes(guests::HELLO_HTTP);
    for name in ["Hello", "a_b", "-a", &"x".repeat(64)] {
        let (s, body) = ferry.deploy_raw(name, hello.clone());
        expect(s, &body, 400, &["not a valid function name"]);
    }
    for content_type in ["text/plain", "application/wasmfoo", "multipart/form-datax"] {
        let resp = ferry
            .admin_req(reqwest::Method::PUT, "/v1/functions/hello-http")
            .header("content-type", content_type)
            .body(hello.clone())
            .send()
            .unwrap();
        let (s, body) = ferry_tests::json_of(resp);
        expect(s, &body, 415, &["application/wasm", "multipart/form-data"]);
    }
    // Parameters and case do not matter.
    let resp = ferry
        .admin_req(reqwest::Method::PUT, "/v1/functions/other")
        .header("content-type", "Application/WASM; charset=binary")
        .body(hello.clone())
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    let resp = ferry
        .admin_req(reqwest::Method::DELETE, "/v1/functions/other")
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);

    use reqwest::blocking::multipart::{Form, Part};
    let form = Form::new().part("manifest", Part::text("name = \"hello-http\"\n"));
    let resp = ferry
        .admin_req(reqwest::Method::PUT, "/v1/functions/hello-http")
        .multipart(form)
        .send()
        .unwrap();
    let (s, body) = ferry_tests::json_of(resp);
    expect(s, &body, 400, &["no `component` part"]);
    unchanged(&ferry);
}

#[test]
fn uploads_over_the_size_limit() {
    let ferry = Ferry::start_with(&["--max-upload", "16KiB"]);
    let hello = guests::bytes(guests::HELLO_HTTP);
    assert!(hello.len() > 16 << 10);
    let (s, body) = ferry.deploy_raw("hello-http", hello.clone());
    expect(s, &body, 413, &["16.0 KiB", "--max-upload"]);
    let (s, body) = ferry.deploy_manifest("hello-http", hello, "name = \"hello-http\"\n");
    expect(s, &body, 413, &["--max-upload"]);
    assert_eq!(
        ferry.admin_get("/v1/functions").1.as_array().unwrap().len(),
        0
    );
}
