//! Ferry's runtime: the wasmtime engine and component cache ([`engine`]), the storage trait and its
//! sled backend ([`store`]), function manifests ([`manifest`]), the set of deployed functions and
//! their routes ([`registry`]), running one invocation ([`invoke`]), asynchronous delivery with
//! its guarantees ([`delivery`]), CloudEvents as guests see them ([`guest_event`]), deployment
//! ([`deploy`]), the admin HTTP API ([`api`]) and the `serve` wiring that joins triggers to the
//! runtime ([`server`]).
//!
//! The `ferry` binary (`main.rs`) is a thin CLI over these modules and over the admin API
//! ([`client`]).

pub mod api;
pub mod auth;
pub mod bindings;
pub mod build_cli;
pub mod call;
pub mod client;
pub mod compile_cache;
pub mod compiler;
pub mod crashpoint;
pub mod delivery;
pub mod deploy;
pub mod dev_cli;
pub mod engine;
#[doc(hidden)]
pub mod fuzz;
pub mod gateway;
pub mod guest_event;
pub mod guest_output;
pub mod invoke;
pub mod invoke_cli;
pub mod logs;
pub mod manifest;
pub mod metrics;
pub mod model;
pub mod otel;
pub mod outbound;
pub mod registry;
pub mod scaffold;
pub mod server;
pub mod store;
pub mod trace;

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// A `[dependencies]`-like table of a manifest, by crate name.
    fn table(manifest: &str, name: &str) -> toml::Table {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let text = std::fs::read_to_string(root.join(manifest)).unwrap();
        let parsed: toml::Table = toml::from_str(&text).unwrap();
        parsed
            .get(name)
            .and_then(|t| t.as_table())
            .cloned()
            .unwrap_or_default()
    }

    /// The unit tests of host/ and triggers/ are built from their sources by other packages,
    /// host-tests/ and triggers-tests/, so that they can be built unoptimised; what those
    /// compile with must stay what the libraries have.
    #[test]
    fn the_test_packages_have_their_librarys_dependencies() {
        for (lib, twin) in [("host", "host-tests"), ("triggers", "triggers-tests")] {
            for name in [
                "dependencies",
                "dev-dependencies",
                "build-dependencies",
                "features",
                "target",
            ] {
                let library = table(&format!("{lib}/Cargo.toml"), name);
                let tests = table(&format!("{twin}/Cargo.toml"), name);
                for (krate, spec) in &library {
                    assert_eq!(
                        tests.get(krate),
                        Some(spec),
                        "{twin}/Cargo.toml's [{name}] must have {krate} as {lib}/Cargo.toml has it"
                    );
                }
                for krate in tests.keys() {
                    assert!(
                        library.contains_key(krate),
                        "{twin}/Cargo.toml's [{name}] has {krate}, which {lib}/Cargo.toml does not"
                    );
                }
            }
        }
    }
}
