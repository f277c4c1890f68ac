//! The end-to-end tests, one module per area, linked as one test binary (one link instead of one
//! per file). Tests are named `<module>::<test>`: `cargo test -p ferry-tests --test e2e delivery::`
//! runs one area. The harness they share is `ferry_tests` (`tests/src/lib.rs`).

// Test code: a failed unwrap is a failed test. clippy.toml's allow-*-in-tests covers only
// `#[test]` functions and `#[cfg(test)]` modules, not the helpers of these tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod abuse;
mod bad_input;
mod cargo_component;
mod cli;
mod cloudevents_conformance;
mod cluster;
mod crash_loop;
mod delivery;
mod delivery_crash;
mod durability;
mod event_functions;
mod guides;
mod http_functions;
mod metrics;
mod nats;
mod nats_jetstream;
mod observability;
mod polling;
mod restart;
mod sandbox;
mod scaffold;
mod security;
mod shutdown;
mod tiers;
mod webhooks;
