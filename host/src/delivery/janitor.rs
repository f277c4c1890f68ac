//! The janitor: removes finished invocations, and their idempotency keys, once the retention
//! window has passed. Dead letters stay until they are replayed or purged.

use std::sync::Arc;
use std::time::Duration;

use super::record::{now_ms, Op};
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
            let Ok(all) = self.store.invocations() else {
                continue;
            };
            let dead: std::collections::HashSet<String> =
                self.store.dead().unwrap_or_default().into_iter().collect();
            let mut removed = 0;
            for inv in all {
                if inv.status.is_final()
                    && inv.updated_ms < cutoff
                    && !inv.callback_pending()
                    && !dead.contains(&inv.id)
                {
                    let mut ops = vec![Op::Delete(inv.id.clone())];
                    if let Some(k) = inv.idempotency_key {
                        ops.push(Op::DeleteKey(k));
                    }
                    if self.store.apply(ops).is_ok() {
                        removed += 1;
                    }
                }
            }
            if removed > 0 {
                tracing::info!(removed, "removed invocations past retention");
            }
        }
    }
}
