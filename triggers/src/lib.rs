//! Protocol adapters that turn outside occurrences into Ferry invocations.
//!
//! This crate knows nothing of wasmtime: each trigger defines the port it needs from the runtime
//! (for HTTP, [`http::HttpPort`]: "which function serves this path" and "serve this request with
//! it") and the host implements that port. The `ferry` binary runs every trigger of a process on
//! one `JoinSet` with one [`Shutdown`] signal.

use std::future::Future;

pub mod cloudevents;
pub mod http;
pub mod nats;

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
    pub fn new() -> (ShutdownHandle, Shutdown) {
        let (tx, rx) = tokio::sync::watch::channel(false);
        (ShutdownHandle(tx), Shutdown(rx))
    }

    /// Resolves once shutdown has been requested.
    pub async fn requested(&mut self) {
        // An error means the handle was dropped, which also means "stop".
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}

impl ShutdownHandle {
    pub fn trigger(&self) {
        let _ = self.0.send(true);
    }
}
