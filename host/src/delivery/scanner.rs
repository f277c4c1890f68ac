//! The scanner: finds due attempts (and due callbacks) in the store and hands them to the
//! worker pools, which it starts. Every loop here ends when the process's shutdown signal fires;
//! an attempt in flight then has the grace period to finish before it is recorded as interrupted.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Mutex};

use super::fair::FairQueue;
use super::record::now_ms;
use super::store::Queue;
use super::Delivery;

/// Starts the worker pools (store-and-forward, fire-and-forget, callbacks), the two scanners and
/// the janitor, all tracked by the engine's task tracker.
pub(super) fn spawn(this: &Arc<Delivery>, callbacks: mpsc::Receiver<String>) {
    for (queue, kind) in [
        (this.ready.clone(), Pool::Attempts),
        (this.ff.clone(), Pool::FireAndForget),
    ] {
        for _ in 0..this.options.workers {
            let (this, queue) = (this.clone(), queue.clone());
            this.tasks.clone().spawn(async move {
                let mut shutdown = this.shutdown.clone();
                loop {
                    let taken = tokio::select! {
                        biased;
                        () = shutdown.requested() => None,
                        taken = queue.next() => Some(taken),
                    };
                    let Some(taken) = taken else { break };
                    this.attempt(&taken.id).await;
                    queue.finish(&taken.function);
                }
                if kind == Pool::FireAndForget {
                    this.drain_fire_and_forget(&queue).await;
                }
            });
        }
    }
    let rx = Arc::new(Mutex::new(callbacks));
    for _ in 0..8 {
        let (this, rx) = (this.clone(), rx.clone());
        this.tasks.clone().spawn(async move {
            let mut shutdown = this.shutdown.clone();
            loop {
                let next = tokio::select! {
                    biased;
                    () = shutdown.requested() => None,
                    id = next(&rx) => id,
                };
                let Some(id) = next else { break };
                this.deliver_callback(&id).await;
            }
        });
    }
    this.tasks.spawn(this.clone().scan(Queue::Attempts));
    this.tasks.spawn(this.clone().scan(Queue::Callbacks));
    this.tasks.spawn(this.clone().janitor());
    let (this, mut shutdown) = (this.clone(), this.shutdown.clone());
    this.tasks.clone().spawn(async move {
        shutdown.requested().await;
        let _ = this.stop_requested.set(tokio::time::Instant::now());
    });
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Pool {
    Attempts,
    FireAndForget,
}

async fn next(rx: &Mutex<mpsc::Receiver<String>>) -> Option<String> {
    rx.lock().await.recv().await
}

impl Delivery {
    /// After the shutdown signal: runs the fire-and-forget invocations still queued while the
    /// grace period lasts, and hands the rest back to the store, to run after the next start
    /// (they never started, so at most once still holds).
    async fn drain_fire_and_forget(&self, queue: &FairQueue) {
        let deadline = self.stop_requested_at() + self.options.shutdown_grace;
        let mut handed_back = 0;
        while let Some(taken) = queue.try_take() {
            if tokio::time::Instant::now() < deadline {
                self.attempt(&taken.id).await;
            } else if self.hand_back(&taken.id) {
                handed_back += 1;
            }
            queue.finish(&taken.function);
        }
        if handed_back > 0 {
            tracing::info!(
                handed_back,
                "fire-and-forget invocations not run before the stop are kept for the next start"
            );
        }
    }

    /// Finds due attempts (or callbacks) and hands them to workers; sleeps until the next one
    /// is due or new work arrives.
    async fn scan(self: Arc<Self>, queue: Queue) {
        self.clone().scan_until_stopped(queue).await;
        self.store.stop_taking(queue);
    }

    async fn scan_until_stopped(self: Arc<Self>, queue: Queue) {
        let mut shutdown = self.shutdown.clone();
        let wake = match queue {
            Queue::Callbacks => &self.wake_callbacks,
            Queue::Attempts => &self.wake_scanner,
        };
        let arrivals = self.store.arrivals(queue);
        let arrived = || async {
            match &arrivals {
                Some(arrivals) => arrivals.notified().await,
                None => std::future::pending().await,
            }
        };
        loop {
            // Take no more than the workers can start soon: what is taken is leased.
            let room = match queue {
                Queue::Callbacks => self.callbacks.capacity().max(1),
                // Sharing the work with other hosts: take only what idle workers can start
                // now, and leave the rest to hosts that have idle workers.
                Queue::Attempts if self.store.shared() => {
                    let busy = self.ready.busy();
                    self.ready
                        .room()
                        .min(self.options.workers.saturating_sub(busy))
                }
                Queue::Attempts => self.ready.room(),
            };
            if room == 0 {
                // The queue is full (or every worker busy): wait until a worker takes
                // something or finishes (or a while).
                tokio::select! {
                    () = self.ready.taken() => {}
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    () = shutdown.requested() => return,
                }
                continue;
            }
            let mut failed = false;
            let due = match self
                .store
                .take_due(queue, now_ms(), &self.lease(queue), room, &|id| {
                    self.in_process(queue, id)
                }) {
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
                if queue == Queue::Attempts {
                    let share = self.share(&inv.function);
                    self.ready.push(&inv.function, inv.id, share);
                    continue;
                }
                let sent = tokio::select! {
                    sent = self.callbacks.send(inv.id) => sent.is_ok(),
                    () = shutdown.requested() => false,
                };
                if !sent {
                    // Not started: its lease ends with this process (released at the next start).
                    return;
                }
            }
            if full {
                // More may be due: take it once the workers have had a turn.
                tokio::task::yield_now().await;
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
                () = arrived() => {}
                _ = tokio::time::sleep(nap) => {}
                () = shutdown.requested() => return,
            }
        }
    }
}
