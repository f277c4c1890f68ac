//! Protocol adapters that turn outside occurrences into Ferry invocations.
//!
//! This crate knows nothing of wasmtime. Every trigger talks to the runtime through one port,
//! [`Runtime`] (find a function, invoke it, submit an invocation for delivery, keep a small state
//! record, report its state), which the host implements; every trigger parses and checks its
//! own `[[trigger.<kind>]]` sections, which the host stores as it got them. A trigger is one
//! module here plus its line in [`TRIGGERS`]. The `ferry` binary runs every trigger of a process
//! on one `JoinSet` with one [`Shutdown`] signal.

use std::future::Future;

pub mod cloudevents;
pub mod crashpoint;
pub mod http;
pub mod nats;
pub mod poll;
mod port;
pub mod webhook;

pub use port::{
    backoff, parse_section, Accepted, ConfigError, DeliveryMode, EventFailure, Fetch, Fetched,
    FunctionInfo, FunctionKind, Payload, Runtime, Sections, StateKey, Submission, SubmitFailure,
    TriggerKind,
};

/// Every trigger kind, as the host registers them: a new trigger adds its line here.
pub const TRIGGERS: &[TriggerKind] = &[http::KIND, nats::KIND, webhook::KIND, poll::KIND];

/// The registered trigger kind called `name`.
pub fn trigger_kind(name: &str) -> Option<&'static TriggerKind> {
    TRIGGERS.iter().find(|k| k.name == name)
}

/// A source of invocations that runs until shutdown.
pub trait Trigger: Send + 'static {
    /// Short name used in logs and spans, e.g. `http`.
    const KIND: &'static str;

    /// Runs until `shutdown` fires, then stops taking new work and returns once the work in
    /// flight has finished. Per-event errors are logged, never returned.
    fn run(self, shutdown: Shutdown) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// One shutdown signal shared by every trigger of a process.
#[derive(Clone)]
pub struct Shutdown(tokio::sync::watch::Receiver<bool>);

/// The sending side of [`Shutdown`].
pub struct ShutdownHandle(tokio::sync::watch::Sender<bool>);

impl Shutdown {
    /// A new signal, not yet requested, and the handle that requests it.
    pub fn new() -> (ShutdownHandle, Shutdown) {
        let (tx, rx) = tokio::sync::watch::channel(false);
        (ShutdownHandle(tx), Shutdown(rx))
    }

    /// Resolves once shutdown has been requested.
    pub async fn requested(&mut self) {
        // An error means the handle was dropped, which also means "stop".
        let _ = self.0.wait_for(|stop| *stop).await;
    }

    /// Whether shutdown has been requested.
    pub fn is_requested(&self) -> bool {
        *self.0.borrow() || self.0.has_changed().is_err()
    }
}

impl ShutdownHandle {
    /// Requests shutdown: every clone of the [`Shutdown`] resolves `requested`. Idempotent.
    pub fn trigger(&self) {
        let _ = self.0.send(true);
    }
}
