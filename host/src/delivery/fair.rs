//! A fair work queue for a worker pool: one queue per function, served round-robin, and no
//! function may hold more than its share of the workers at once. Without it, forty slow
//! invocations of one function occupy every worker and another function's quick one waits for
//! them to finish; with it, the other function's work starts as soon as a worker is free.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// Work waiting and running, by function.
#[derive(Default)]
struct State {
    /// Queued ids by function.
    queued: HashMap<Arc<str>, VecDeque<String>>,
    /// Functions with queued work, in the order they are served.
    turn: VecDeque<Arc<str>>,
    /// Running work by function, and the most each may run at once.
    running: HashMap<Arc<str>, (usize, usize)>,
    /// Queued work in all.
    len: usize,
}

/// The queue of one worker pool.
pub(super) struct FairQueue {
    state: Mutex<State>,
    ready: Notify,
    /// Signalled when work is taken, so that a producer waiting for room can go on.
    space: Notify,
    capacity: usize,
}

/// One piece of work taken by a worker; [`FairQueue::finish`] it when done.
pub(super) struct Taken {
    /// The invocation's id.
    pub(super) id: String,
    /// Its function.
    pub(super) function: Arc<str>,
}

impl FairQueue {
    /// A queue that holds at most `capacity` waiting ids (see [`FairQueue::try_push`]).
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            ready: Notify::new(),
            space: Notify::new(),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many ids wait.
    pub(super) fn len(&self) -> usize {
        self.lock().len
    }

    /// Work running now, and queued work that could start now (its function is below its
    /// share): what the pool's workers are busy with, or are about to be.
    pub(super) fn busy(&self) -> usize {
        let s = self.lock();
        let running: usize = s.running.values().map(|(n, _)| n).sum();
        let startable: usize = s
            .queued
            .iter()
            .map(|(f, q)| {
                let free = s
                    .running
                    .get(f)
                    .map_or(q.len(), |(n, share)| share.saturating_sub(*n));
                q.len().min(free)
            })
            .sum();
        running + startable
    }

    /// How many more ids fit before the queue is full.
    pub(super) fn room(&self) -> usize {
        self.capacity.saturating_sub(self.lock().len)
    }

    /// Queues `id` of `function`, which may run at most `share` at once, unless the queue is
    /// full; false when it was not queued.
    pub(super) fn try_push(&self, function: &str, id: String, share: usize) -> bool {
        {
            let mut s = self.lock();
            if s.len >= self.capacity {
                return false;
            }
            push(&mut s, function, id, share);
        }
        self.ready.notify_one();
        true
    }

    /// Queues `id` whatever the queue holds (work already taken from the store, which the
    /// taker sized to the room it saw).
    pub(super) fn push(&self, function: &str, id: String, share: usize) {
        push(&mut self.lock(), function, id, share);
        self.ready.notify_one();
    }

    /// The next piece of work a worker may start: the next function in turn that is below its
    /// share. Waits until there is one.
    pub(super) async fn next(&self) -> Taken {
        loop {
            let notified = self.ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(t) = self.try_take() {
                return t;
            }
            notified.await;
        }
    }

    /// The next piece of work, if one may start now.
    pub(super) fn try_take(&self) -> Option<Taken> {
        let taken = {
            let mut s = self.lock();
            take(&mut s)
        };
        if taken.is_some() {
            self.space.notify_one();
            // Another worker may take the next function's work.
            if self.room() < self.capacity {
                self.ready.notify_one();
            }
        }
        taken
    }

    /// Resolves once work has been taken since the last call (room may have come free).
    pub(super) async fn taken(&self) {
        self.space.notified().await;
    }

    /// Marks work of `function` as finished, so that its next may start.
    pub(super) fn finish(&self, function: &Arc<str>) {
        let waiting = {
            let mut s = self.lock();
            if let Some((running, _)) = s.running.get_mut(function) {
                *running = running.saturating_sub(1);
                if *running == 0 && !s.queued.contains_key(function) {
                    s.running.remove(function);
                }
            }
            // Only work of this function can have been held back by its share.
            s.queued.contains_key(function)
        };
        // Wake a worker only when there is work it may now take: a wake-up for nothing costs a
        // thread switch per finished attempt.
        if waiting {
            self.ready.notify_one();
        }
    }
}

fn push(s: &mut State, function: &str, id: String, share: usize) {
    let key: Arc<str> = match s.running.get_key_value(function) {
        Some((k, _)) => k.clone(),
        None => function.into(),
    };
    let entry = s.running.entry(key.clone()).or_insert((0, share.max(1)));
    entry.1 = share.max(1);
    let queue = s.queued.entry(key.clone()).or_default();
    if queue.is_empty() {
        s.turn.push_back(key);
    }
    queue.push_back(id);
    s.len += 1;
}

fn take(s: &mut State) -> Option<Taken> {
    for _ in 0..s.turn.len() {
        let function = s.turn.pop_front()?;
        let (running, share) = s.running.get(&function).copied().unwrap_or((0, 1));
        if running >= share {
            s.turn.push_back(function);
            continue;
        }
        let Some(queue) = s.queued.get_mut(&function) else {
            continue;
        };
        let Some(id) = queue.pop_front() else {
            s.queued.remove(&function);
            continue;
        };
        if queue.is_empty() {
            s.queued.remove(&function);
        } else {
            s.turn.push_back(function.clone());
        }
        s.len -= 1;
        if let Some(r) = s.running.get_mut(&function) {
            r.0 += 1;
        }
        return Some(Taken { id, function });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn functions_take_turns_and_stay_within_their_share() {
        let q = FairQueue::new(100);
        for i in 0..10 {
            assert!(q.try_push("slow", format!("s{i}"), 3));
        }
        q.push("quick", "q0".into(), 3);
        let mut taken = Vec::new();
        while let Some(t) = q.try_take() {
            taken.push(t);
        }
        let ids: Vec<&str> = taken.iter().map(|t| t.id.as_str()).collect();
        // Round-robin: the quick one goes second, not eleventh; the slow one stops at its share.
        assert_eq!(ids, ["s0", "q0", "s1", "s2"]);
        assert_eq!(q.room(), 100 - 7);
        q.finish(&taken[0].function);
        assert_eq!(q.try_take().map(|t| t.id), Some("s3".to_string()));
        assert!(q.try_take().is_none());
    }

    #[test]
    fn a_full_queue_refuses() {
        let q = FairQueue::new(2);
        assert!(q.try_push("f", "1".into(), 1));
        assert!(q.try_push("g", "2".into(), 1));
        assert!(!q.try_push("f", "3".into(), 1));
        assert_eq!(q.room(), 0);
    }
}
