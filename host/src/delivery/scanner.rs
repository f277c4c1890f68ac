//! The scanner: finds due attempts (and due callbacks) in the store and hands them to the
//! worker pools, which it starts. Every loop here ends when the process's shutdown signal fires;
//! an attempt in flight then has the grace period to finish before it is recorded as interrupted.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Mutex};

use super::record::now_ms;
use super::store::Queue;
use super::Delivery;

/// Starts the worker pools (store-and-forward, fire-and-forget, callbacks), the two scanners and
/// the janitor, all tracked by the engine's task tracker.
pub(super) fn spawn(
    this: &Arc<Delivery>,
    ready: mpsc::Receiver<String>,
    ff: mpsc::Receiver<String>,
    callbacks: mpsc::Receiver<String>,
) {
    let pool = |rx: mpsc::Receiver<String>, size: usize, callbacks: bool| {
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..size {
            let (this, rx) = (this.clone(), rx.clone());
            this.tasks.clone().spawn(async move {
                let mut shutdown = this.shutdown.clone();
                loop {
                    let next = tokio::select! {
                        id = next(&rx) => id,
                        () = shutdown.requested() => None,
                    };
                    let Some(id) = next else { break };
                    if callbacks {
                        this.deliver_callback(&id).await;
                    } else {
                        this.attempt(&id).await;
                    }
                }
            });
        }
    };
    pool(ready, this.options.workers, false);
    pool(ff, this.options.workers, false);
    pool(callbacks, 8, true);
    this.tasks.spawn(this.clone().scan(Queue::Attempts));
    this.tasks.spawn(this.clone().scan(Queue::Callbacks));
    this.tasks.spawn(this.clone().janitor());
}

async fn next(rx: &Mutex<mpsc::Receiver<String>>) -> Option<String> {
    rx.lock().await.recv().await
}

impl Delivery {
    /// Finds due attempts (or callbacks) and hands them to workers; sleeps until the next one
    /// is due or new work arrives.
    async fn scan(self: Arc<Self>, queue: Queue) {
        let mut shutdown = self.shutdown.clone();
        let (wake, tx) = match queue {
            Queue::Callbacks => (&self.wake_callbacks, &self.callbacks),
            Queue::Attempts => (&self.wake_scanner, &self.ready),
        };
        loop {
            // Take no more than the workers can start soon: what is taken is leased.
            let room = tx.capacity().max(1);
            let mut failed = false;
            let due = match self
                .store
                .take_due(queue, now_ms(), &self.lease(queue), room)
            {
                Ok(d) => d,
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "taking due work failed");
                    failed = true;
                    Vec::new()
                }
            };
            let full = due.len() == room;
            for inv in due {
                if !self.enqueue(queue, &inv.id) {
                    continue; // already queued or running here
                }
                let sent = tokio::select! {
                    sent = tx.send(inv.id) => sent.is_ok(),
                    () = shutdown.requested() => false,
                };
                if !sent {
                    // Not started: its lease ends with this process (released at the next start).
                    return;
                }
            }
            if full {
                continue;
            }
            let until_next = match self.store.next_due(queue) {
                // A failing store is tried again in a second, not in a tight loop.
                _ if failed => Duration::from_secs(1),
                Ok(Some(at)) => Duration::from_millis(at.saturating_sub(now_ms())),
                _ => Duration::from_secs(1),
            };
            // Leased work stays in the index until it finishes: poll at a modest pace.
            let nap = until_next.clamp(Duration::from_millis(20), Duration::from_secs(1));
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(nap) => {}
                () = shutdown.requested() => return,
            }
        }
    }
}
