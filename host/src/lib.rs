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
