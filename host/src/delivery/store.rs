//! The delivery engine's storage port, in the engine's words. A backend stores invocation
//! records and owns every index over them; the engine never sees a key layout. Work is taken
//! under leases (an owner and an expiry), so several processes can share one backend: a lease
//! keeps others off an invocation while its owner runs it, and lapses if the owner dies.

use super::record::{Invocation, Payload};

/// The two work queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Queue {
    /// Invocations whose next attempt is due.
    Attempts,
    /// Finished invocations whose callback is due.
    Callbacks,
}

/// A claim on due work: taken by `owner`, handed to no one else until `until_ms` (ms since the
/// Unix epoch) or until the owner stores the invocation's next state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Who holds it: `<host id>/<start id>` of one process.
    pub owner: String,
    /// When it lapses (ms since the Unix epoch).
    pub until_ms: u64,
}

/// Where asynchronous invocations live.
///
/// Every index follows from the stored record, so the engine's operations are all a
/// [`DeliveryStore::put`] of the invocation's new state:
///
/// - *put with a due time*: an unfinished store-and-forward invocation is due on
///   [`Queue::Attempts`] at its `due_ms` (a new one via [`DeliveryStore::insert`]);
/// - *reschedule*: the same, with a later `due_ms`;
/// - *complete*: a finished invocation leaves the attempt queue; with a pending callback it is
///   due on [`Queue::Callbacks`] at the callback's `due_ms`;
/// - *dead-letter*: status `dead_lettered` (or a dead-lettered callback) lists it among the dead
///   letters, until a replay sets `replayed_as` or it is removed;
/// - *expire*: a finished invocation with nothing pending and not a dead letter is removed by
///   [`DeliveryStore::expire`] once its `updated_ms` is old enough.
///
/// Writes are atomic per call and durable after [`DeliveryStore::flush_delivery`].
pub trait DeliveryStore: Send + Sync + 'static {
    /// Stores a new invocation and claims its idempotency key for it (a key that led to another
    /// invocation leads to this one now). With `check_key`, if the key already leads to a stored
    /// invocation, nothing is stored and that invocation is returned. With `lease`, the new
    /// invocation is taken at once, as [`DeliveryStore::take_due`] would.
    fn insert(
        &self,
        inv: &Invocation,
        check_key: bool,
        lease: Option<&Lease>,
    ) -> anyhow::Result<Option<Invocation>>;

    /// Stores an invocation's new state, derives its indexes from it, and ends its leases. An
    /// invocation removed meanwhile (purged, expired) stays removed.
    fn put(&self, inv: &Invocation) -> anyhow::Result<()>;

    /// The invocation with this id, if one is stored, without its payload (records are read
    /// often, payloads only to run or show them).
    fn get(&self, id: &str) -> anyhow::Result<Option<Invocation>>;

    /// The payload of the invocation with this id, if one is stored.
    fn payload(&self, id: &str) -> anyhow::Result<Option<Payload>>;

    /// Takes up to `limit` invocations due on `queue` at or before `now_ms` that no live lease
    /// holds, earliest first, and leases them to `lease.owner`. Invocations for which `skip` is
    /// true are left alone, unleased (this process still has them queued or running: leasing
    /// them now would hide them until the lease ran out, once their outcome is stored).
    fn take_due(
        &self,
        queue: Queue,
        now_ms: u64,
        lease: &Lease,
        limit: usize,
        skip: &dyn Fn(&str) -> bool,
    ) -> anyhow::Result<Vec<Invocation>>;

    /// How many invocations on `queue` are due at or before `now_ms` (leased ones included),
    /// counting up to `cap`.
    fn count_due(&self, queue: Queue, now_ms: u64, cap: usize) -> anyhow::Result<usize>;

    /// When the earliest invocation on `queue` is due (leased ones included).
    fn next_due(&self, queue: Queue) -> anyhow::Result<Option<u64>>;

    /// The dead letters: dead-lettered invocations and invocations whose callback was.
    fn dead_letters(&self) -> anyhow::Result<Vec<Invocation>>;

    /// Forgets an invocation, and its idempotency key if the key still leads to it. False when
    /// there was none.
    fn remove(&self, id: &str) -> anyhow::Result<bool>;

    /// Removes up to `limit` expirable invocations last updated before `before_ms`; returns how
    /// many.
    fn expire(&self, before_ms: u64, limit: usize) -> anyhow::Result<usize>;

    /// Every unfinished invocation (for recovery at start).
    fn unfinished(&self) -> anyhow::Result<Vec<Invocation>>;

    /// Ends every lease whose owner starts with `owner_prefix` (a host's earlier lives, at its
    /// start); returns how many.
    fn release_leases(&self, owner_prefix: &str) -> anyhow::Result<usize>;

    /// Makes everything stored so far durable.
    fn flush_delivery(&self) -> anyhow::Result<()>;

    /// Writes back a journaled submit: the whole invocation when the store lacks it, or its
    /// payload when that is missing or unreadable (a payload file lost to a power cut). A
    /// submit journaled without its payload (see [`DeliveryStore::payload_file_of`]) gets the
    /// payload its synced file holds. True when anything was written.
    fn restore(&self, inv: &Invocation) -> anyhow::Result<bool>;

    /// The file that holds the payload of the invocation `id`, when the backend keeps large
    /// payloads in files of their own, made durable by [`DeliveryStore::insert`] before it
    /// stored the record: a journal then holds the invocation without its payload (so a body
    /// is never written twice). None: the payload is kept with the record.
    fn payload_file_of(&self, _id: &str) -> Option<std::path::PathBuf> {
        None
    }

    /// Whether [`DeliveryStore::insert`] keeps this payload in a file of its own (see
    /// [`DeliveryStore::payload_file_of`]): decided from the payload, without asking the disk.
    fn keeps_apart(&self, _payload: &Payload) -> bool {
        false
    }

    /// Whether changes wait in memory for [`DeliveryStore::flush_delivery`] (a backend that
    /// keeps them there until a durable flush): the journal then checkpoints even when it holds
    /// no submit, so that attempt outcomes are made durable as submits are.
    fn unflushed(&self) -> bool {
        false
    }

    /// Removes what nothing refers to any more (payload files whose invocation is gone), once
    /// the journal has been replayed; returns how many.
    fn tidy(&self) -> anyhow::Result<usize> {
        Ok(0)
    }

    /// How many times the backend reopened itself after an I/O error; what it held only in
    /// memory before each reopen is gone, so the journal writes its records back.
    fn reopens(&self) -> u64 {
        0
    }

    /// This process is done with work it took from `queue`, whatever became of it (its outcome
    /// stored, or storing it failed): a backend that holds taken work for its taker lets it go
    /// now, and the stored record decides what happens to it next.
    fn release(&self, _queue: Queue, _id: &str) {}

    /// Whether several hosts share this backend: then every write is durable when it returns
    /// (the host's submit journal is not used), and work is handed out only by
    /// [`DeliveryStore::take_due`] (a submit is not run at once by the host that took it).
    fn shared(&self) -> bool {
        false
    }

    /// Notified when work due on `queue` reaches this host (a backend that hands work out as it
    /// arrives); None: the engine looks again when [`DeliveryStore::next_due`] says.
    fn arrivals(&self, _queue: Queue) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        None
    }

    /// The engine takes no more work from `queue` (the host is stopping): a backend that hands
    /// work out as it arrives asks for no more and gives back what it holds untaken.
    fn stop_taking(&self, _queue: Queue) {}

    /// Ids of invocations finished by any host sharing the backend, for long polls (None: only
    /// this process finishes what it stores).
    fn finished(&self) -> Option<tokio::sync::broadcast::Receiver<String>> {
        None
    }
}
