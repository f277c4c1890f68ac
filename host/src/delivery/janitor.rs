//! The janitor: removes finished invocations, and their idempotency keys, once the retention
//! window has passed. Dead letters stay until they are replayed or purged.

use std::sync::Arc;
use std::time::Duration;

use super::record::now_ms;
use super::Delivery;

impl Delivery {
    /// Removes finished invocations (and their idempotency keys) after the retention window.
    /// Dead letters stay until they are replayed or purged.
    pub(super) async fn janitor(self: Arc<Self>) {
        // Sweep often enough that nothing outlives the window by more than a tenth of it.
        let every = (self.options.retention / 10)
            .clamp(Duration::from_millis(100), Duration::from_secs(60));
        let mut tick = tokio::time::interval(every);
        let mut shutdown = self.shutdown.clone();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = shutdown.requested() => return,
            }
            let cutoff = now_ms().saturating_sub(self.options.retention.as_millis() as u64);
            let mut removed = 0;
            loop {
                match self.store.expire(cutoff, 1000) {
                    Ok(n) => {
                        removed += n;
                        // Less than the limit: nothing more is due, or the call looked at its
                        // share of entries left behind by removed invocations; go on while it
                        // removes anything.
                        if n == 0 {
                            break;
                        }
                        tokio::task::yield_now().await;
                    }
                    Err(e) => {
                        tracing::error!(error = %format!("{e:#}"), "removing expired invocations failed");
                        break;
                    }
                }
            }
            if removed > 0 {
                tracing::info!(removed, "removed invocations past retention");
            }
        }
    }
}
