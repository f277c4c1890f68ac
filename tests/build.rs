//! Compiles the guest examples once (plain `cargo build --target wasm32-wasip2 --release`, into
//! their own target directory so this nested cargo never waits on the outer one) and exposes their
//! paths to the tests as `GUEST_<NAME>` compile-time variables.

use std::path::PathBuf;
use std::process::Command;

const GUESTS: &[&str] = &[
    "hello-http",
    "echo-event",
    "misbehave",
    "enrich-order",
    "flaky",
];

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.parent().unwrap().to_path_buf();
    let examples = root.join("guest-examples");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("guests");
    println!("cargo:rerun-if-changed={}", root.join("wit").display());
    println!(
        "cargo:rerun-if-changed={}",
        examples.join("Cargo.toml").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        examples.join("Cargo.lock").display()
    );
    for guest in GUESTS {
        println!("cargo:rerun-if-changed={}", examples.join(guest).display());
    }

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&examples)
        .args(["build", "--release", "--target", "wasm32-wasip2"])
        .arg("--target-dir")
        .arg(&target)
        // Flags meant for the host build must not leak into the wasm build.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_TARGET_DIR")
        .status()
        .expect("failed to run cargo for the guest examples");
    assert!(
        status.success(),
        "building guest-examples failed; is the target installed? `rustup target add wasm32-wasip2`"
    );
    for guest in GUESTS {
        let file = target
            .join("wasm32-wasip2/release")
            .join(format!("{}.wasm", guest.replace('-', "_")));
        let var = format!("GUEST_{}", guest.replace('-', "_").to_uppercase());
        println!("cargo:rustc-env={var}={}", file.display());
    }
    println!("cargo:rustc-env=GUEST_EXAMPLES_DIR={}", examples.display());
}
