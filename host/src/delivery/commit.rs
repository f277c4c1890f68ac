//! Group commit: many submits share one flush of the store. A submit applies its writes, then
//! waits until a flush that started after its write has finished. One flusher task runs flushes
//! back to back while there is anything to flush, so durability costs one disk sync per batch,
//! not per event.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};

use super::record::DeliveryStore;

pub struct GroupCommit {
    store: Arc<dyn DeliveryStore>,
    /// Sequence number of the latest write that wants durability.
    written: AtomicU64,
    /// The highest sequence number known to be durable.
    flushed: watch::Sender<u64>,
    wake: Notify,
    /// Benchmark baseline: flush once per submit instead.
    per_submit: bool,
}

impl GroupCommit {
    pub fn start(store: Arc<dyn DeliveryStore>, per_submit: bool) -> Arc<Self> {
        let gc = Arc::new(Self {
            store,
            written: AtomicU64::new(0),
            flushed: watch::Sender::new(0),
            wake: Notify::new(),
            per_submit,
        });
        if !per_submit {
            tokio::spawn(flusher(gc.clone()));
        }
        gc
    }

    /// Returns once everything this task has applied to the store is durable.
    pub async fn durable(&self) -> anyhow::Result<()> {
        if self.per_submit {
            let store = self.store.clone();
            return tokio::task::spawn_blocking(move || store.flush_delivery()).await?;
        }
        let mine = self.written.fetch_add(1, Ordering::SeqCst) + 1;
        let mut flushed = self.flushed.subscribe();
        self.wake.notify_one();
        flushed.wait_for(|f| *f >= mine).await?;
        Ok(())
    }
}

async fn flusher(this: Arc<GroupCommit>) {
    loop {
        this.wake.notified().await;
        let target = this.written.load(Ordering::SeqCst);
        if target <= *this.flushed.borrow() {
            continue;
        }
        let store = this.store.clone();
        match tokio::task::spawn_blocking(move || store.flush_delivery()).await {
            Ok(Ok(())) => {
                this.flushed.send_replace(target);
            }
            Ok(Err(e)) => {
                tracing::error!(error = %format!("{e:#}"), "flushing the store failed; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
                this.wake.notify_one();
            }
            Err(e) => {
                tracing::error!(error = %e, "flush task failed; retrying");
                this.wake.notify_one();
            }
        }
    }
}
