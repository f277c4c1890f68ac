//! The delivery tree's changes since the last durable flush, held in memory.
//!
//! Every asynchronous invocation changes the delivery tree several times (stored, leased,
//! finished, expired), and each sled write costs a log entry and, under load, page rewrites and
//! a global lock for a transaction. None of it needs sled before the next durable flush: until
//! then a crash loses what sled holds in memory anyway, and the submit journal is what makes an
//! acknowledged submit durable. So the delivery store writes its changes here — an ordered map
//! from key to new value (or removal) — and reads through it; the durable flush applies them to
//! sled as one batch before it flushes sled, and a key written many times in between (a due
//! time, a lease, a record that ran at once) reaches sled once or not at all.
//!
//! One lock guards the changes: a read-modify-write (an idempotency check, a state change, a
//! lease) holds it while it reads and writes, which makes it atomic against every other. While
//! a flush applies a batch to sled, that batch stays readable here (`flushing`), so no reader
//! sees sled from before it; a flush that fails gives its batch back, under any newer changes.
//!
//! Besides keyed changes the layer holds a log: entries appended one by one (an invocation that
//! may now expire) that the next flush writes as the values of new keys, one per 64 KiB, so that
//! a thousand entries cost sled one key, not a thousand. The log is not readable before that
//! flush.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};

/// Key → its change.
type Changes = BTreeMap<Vec<u8>, Change>;

#[derive(Clone)]
struct Change {
    /// The new value, or None for a removed key.
    value: Option<Vec<u8>>,
    /// Sled has never held the key (a new invocation's): removing it leaves no trace to write.
    fresh: bool,
}

#[derive(Default)]
struct Layers {
    /// Changes since the current flush took its batch.
    active: Changes,
    /// The batch a flush is applying to sled (empty between flushes).
    flushing: Arc<Changes>,
    /// Log entries appended since the current flush took its batch, in segments of about
    /// [`LOG_SEGMENT`] bytes.
    log: Vec<Segment>,
    /// The number of the last segment written: each gets the next. It starts at the time the
    /// changes were created, in nanoseconds, so that numbers stay unique across restarts as well
    /// (sled may write a batch in the background before the flush that applied it fails).
    logs: u64,
}

/// A log segment ends once it holds this many bytes.
const LOG_SEGMENT: usize = 64 * 1024;

/// Log entries, and the smallest of the order values they were appended with.
struct Segment {
    entries: Vec<u8>,
    earliest: u64,
}

/// The unflushed changes of one sled tree.
pub(super) struct WriteBack {
    layers: Mutex<Layers>,
    /// Held while the changes are written into sled.
    applying: Mutex<()>,
}

/// The tree as the changes make it, with the lock held: reads and writes through it are one
/// atomic step against every other user of the tree.
pub(super) struct View<'a> {
    layers: MutexGuard<'a, Layers>,
    tree: &'a sled::Tree,
}

impl WriteBack {
    pub(super) fn new() -> Self {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Self {
            layers: Mutex::new(Layers {
                logs: now,
                ..Layers::default()
            }),
            applying: Mutex::new(()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Layers> {
        // Nothing panics halfway through a change of the maps: they stay valid when poisoned.
        self.layers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The tree with the changes over it, locked for one atomic read-modify-write.
    pub(super) fn view<'a>(&'a self, tree: &'a sled::Tree) -> View<'a> {
        View {
            layers: self.lock(),
            tree,
        }
    }

    /// The value of `key`, without holding the lock while sled is read.
    pub(super) fn get(&self, tree: &sled::Tree, key: &[u8]) -> anyhow::Result<Option<Vec<u8>>> {
        if let Some(v) = self.lock().lookup(key) {
            return Ok(v);
        }
        Ok(tree.get(key)?.map(|v| v.to_vec()))
    }

    /// The keys and values from `from` up to `to` (excluded; unbounded when None), in order,
    /// until `visit` returns false. The changes are copied first, so the lock is not held while
    /// sled is read (a scan may be long): the result is the tree as of that copy, or newer.
    pub(super) fn scan(
        &self,
        tree: &sled::Tree,
        from: &[u8],
        to: Option<&[u8]>,
        visit: impl FnMut(&[u8], &[u8]) -> anyhow::Result<bool>,
    ) -> anyhow::Result<()> {
        let snapshot: Changes = {
            let layers = self.lock();
            let mut merged: Changes = layers
                .flushing
                .range::<[u8], _>(bounds(from, to))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            merged.extend(
                layers
                    .active
                    .range::<[u8], _>(bounds(from, to))
                    .map(|(k, v)| (k.clone(), v.clone())),
            );
            merged
        };
        merge(&snapshot, None, tree, from, to, visit)
    }

    /// Writes the changes into sled as one atomic batch, for a durable flush: they stay here
    /// (readable, and given back under any newer changes) until [`Applied::settle`] says the
    /// flush made them durable, so a flush that fails after sled took them — sled is then
    /// reopened and loses them — loses nothing. One flush at a time.
    ///
    /// Each segment of the log becomes the value of the key `log_key(earliest, n)` in the
    /// batch, where `earliest` is the smallest order value of its entries and `n` the segment's
    /// number (unique to these changes, across restarts too): the key must be one that no other
    /// segment has (a failed flush's log comes back as keyed changes).
    pub(super) fn apply<'a>(
        &'a self,
        tree: &sled::Tree,
        mut log_key: impl FnMut(u64, u64) -> Vec<u8>,
    ) -> sled::Result<Applied<'a>> {
        let one = self.applying.lock().unwrap_or_else(|e| e.into_inner());
        let changes = {
            let mut layers = self.lock();
            let mut active = std::mem::take(&mut layers.active);
            for segment in std::mem::take(&mut layers.log) {
                layers.logs += 1;
                let key = log_key(segment.earliest, layers.logs);
                let change = Change {
                    value: Some(segment.entries),
                    fresh: false,
                };
                active.insert(key, change);
            }
            layers.flushing = Arc::new(active);
            layers.flushing.clone()
        };
        let applied = Applied {
            changes: self,
            _one: one,
            settled: false,
        };
        if !changes.is_empty() {
            tree.apply_batch(batch(&changes))?;
        }
        Ok(applied)
    }

    /// Whether changes wait for the next flush.
    pub(super) fn is_empty(&self) -> bool {
        let layers = self.lock();
        layers.active.is_empty() && layers.flushing.is_empty() && layers.log.is_empty()
    }

    /// How many changed keys wait for the next flush.
    #[cfg(test)]
    pub(super) fn pending(&self) -> usize {
        let layers = self.lock();
        layers.active.len() + layers.flushing.len()
    }
}

/// Changes written into sled by [`WriteBack::apply`], not yet known to be durable.
pub(super) struct Applied<'a> {
    changes: &'a WriteBack,
    _one: MutexGuard<'a, ()>,
    settled: bool,
}

impl Applied<'_> {
    /// Ends the flush: `durable`, its changes are on disk and leave memory; else they are
    /// kept for the next flush, under any newer changes.
    pub(super) fn settle(mut self, durable: bool) {
        self.end(durable);
    }

    fn end(&mut self, durable: bool) {
        if std::mem::replace(&mut self.settled, true) {
            return;
        }
        let mut layers = self.changes.lock();
        let flushed = std::mem::take(&mut layers.flushing);
        if !durable {
            let newer = std::mem::take(&mut layers.active);
            let mut back = Arc::try_unwrap(flushed).unwrap_or_else(|shared| (*shared).clone());
            // Nothing in the batch is fresh any more: sled may hold it now.
            for c in back.values_mut() {
                c.fresh = false;
            }
            back.extend(newer);
            layers.active = back;
        }
    }
}

impl Drop for Applied<'_> {
    fn drop(&mut self) {
        self.end(false);
    }
}

/// A batch of changes as one atomic sled batch.
fn batch(changes: &Changes) -> sled::Batch {
    let mut batch = sled::Batch::default();
    for (k, c) in changes {
        match &c.value {
            Some(v) => batch.insert(k.as_slice(), v.as_slice()),
            None => batch.remove(k.as_slice()),
        }
    }
    batch
}

impl Layers {
    /// The new value of `key` (None: removed), if it has a change: the newest layer first.
    fn lookup(&self, key: &[u8]) -> Option<Option<Vec<u8>>> {
        self.active
            .get(key)
            .or_else(|| self.flushing.get(key))
            .map(|c| c.value.clone())
    }
}

fn bounds<'a>(from: &'a [u8], to: Option<&'a [u8]>) -> (Bound<&'a [u8]>, Bound<&'a [u8]>) {
    (
        Bound::Included(from),
        to.map_or(Bound::Unbounded, Bound::Excluded),
    )
}

/// Visits sled's keys in `from..to` with `changes` over them (and `newer` over those), in order.
fn merge(
    changes: &Changes,
    newer: Option<&Changes>,
    tree: &sled::Tree,
    from: &[u8],
    to: Option<&[u8]>,
    mut visit: impl FnMut(&[u8], &[u8]) -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let mut base = tree.range::<&[u8], _>(bounds(from, to)).peekable();
    let mut over = changes.range::<[u8], _>(bounds(from, to)).peekable();
    let mut newest = newer
        .map(|n| n.range::<[u8], _>(bounds(from, to)))
        .into_iter()
        .flatten()
        .peekable();
    loop {
        // The smallest key at the head of any source.
        let mut key: Option<Vec<u8>> = None;
        let mut consider = |k: &[u8]| {
            if key.as_deref().is_none_or(|min| k < min) {
                key = Some(k.to_vec());
            }
        };
        if let Some(kv) = base.peek() {
            match kv {
                Ok((k, _)) => consider(k),
                Err(_) => {
                    if let Some(Err(e)) = base.next() {
                        return Err(e.into());
                    }
                }
            }
        }
        if let Some((k, _)) = over.peek() {
            consider(k);
        }
        if let Some((k, _)) = newest.peek() {
            consider(k);
        }
        let Some(key) = key else {
            return Ok(());
        };
        // Its value from the newest source that has it; every source moves past it.
        let mut value: Option<Option<Vec<u8>>> = None;
        if newest.peek().is_some_and(|(k, _)| k.as_slice() == key) {
            value = newest.next().map(|(_, c)| c.value.clone());
        }
        if over.peek().is_some_and(|(k, _)| k.as_slice() == key) {
            let v = over.next().map(|(_, c)| c.value.clone());
            value = value.or(v);
        }
        if matches!(base.peek(), Some(Ok((k, _))) if k.as_ref() == key.as_slice()) {
            if let Some(Ok((_, v))) = base.next() {
                value = value.or(Some(Some(v.to_vec())));
            }
        }
        if let Some(Some(v)) = value {
            if !visit(&key, &v)? {
                return Ok(());
            }
        }
    }
}

impl View<'_> {
    /// The value of `key` as the changes make it.
    pub(super) fn get(&self, key: &[u8]) -> anyhow::Result<Option<Vec<u8>>> {
        if let Some(v) = self.layers.lookup(key) {
            return Ok(v);
        }
        Ok(self.tree.get(key)?.map(|v| v.to_vec()))
    }

    pub(super) fn insert(&mut self, key: Vec<u8>, value: Vec<u8>) {
        match self.layers.active.get_mut(&key) {
            Some(c) => c.value = Some(value),
            None => {
                let value = Some(value);
                self.layers.active.insert(
                    key,
                    Change {
                        value,
                        fresh: false,
                    },
                );
            }
        }
    }

    /// Inserts a key that sled has never held and no change names (one made of a new
    /// invocation's id): if it is removed before the next flush, sled never sees it.
    pub(super) fn insert_new(&mut self, key: Vec<u8>, value: Vec<u8>) {
        let value = Some(value);
        self.layers
            .active
            .insert(key, Change { value, fresh: true });
    }

    pub(super) fn remove(&mut self, key: Vec<u8>) {
        match self.layers.active.get_mut(&key) {
            Some(c) if c.fresh => {
                self.layers.active.remove(&key);
            }
            Some(c) => c.value = None,
            None => {
                self.layers.active.insert(
                    key,
                    Change {
                        value: None,
                        fresh: false,
                    },
                );
            }
        }
    }

    /// Appends an entry to the log that the next flush writes; `order` (a time) names the
    /// segment it lands in when it is the segment's smallest.
    pub(super) fn append_log(&mut self, entry: &[u8], order: u64) {
        let log = &mut self.layers.log;
        match log.last_mut() {
            Some(segment) if segment.entries.len() < LOG_SEGMENT => {
                segment.entries.extend_from_slice(entry);
                segment.earliest = segment.earliest.min(order);
            }
            _ => log.push(Segment {
                entries: entry.to_vec(),
                earliest: order,
            }),
        }
    }

    /// Like [`WriteBack::scan`], with the lock held throughout (for a read-modify-write).
    pub(super) fn scan(
        &self,
        from: &[u8],
        to: Option<&[u8]>,
        visit: impl FnMut(&[u8], &[u8]) -> anyhow::Result<bool>,
    ) -> anyhow::Result<()> {
        let layers = &*self.layers;
        merge(
            &layers.flushing,
            Some(&layers.active),
            self.tree,
            from,
            to,
            visit,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(w: &WriteBack, tree: &sled::Tree, from: &[u8], to: Option<&[u8]>) -> Vec<String> {
        let mut out = Vec::new();
        w.scan(tree, from, to, |k, v| {
            out.push(format!(
                "{}={}",
                String::from_utf8_lossy(k),
                String::from_utf8_lossy(v)
            ));
            Ok(true)
        })
        .unwrap();
        out
    }

    #[test]
    fn reads_see_the_newest_change_over_sled_and_a_flush_keeps_them_visible() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree("t").unwrap();
        for k in ["a", "b", "c", "d"] {
            tree.insert(k, "sled").unwrap();
        }
        let w = WriteBack::new();
        {
            let mut v = w.view(&tree);
            v.remove(b"b".to_vec());
            v.insert(b"c".to_vec(), b"new".to_vec());
            v.insert(b"bb".to_vec(), b"new".to_vec());
            assert!(v.get(b"b").unwrap().is_none());
            assert_eq!(v.get(b"a").unwrap().as_deref(), Some(&b"sled"[..]));
        }
        assert_eq!(
            keys(&w, &tree, b"a", None),
            ["a=sled", "bb=new", "c=new", "d=sled"]
        );
        assert_eq!(keys(&w, &tree, b"b", Some(b"d")), ["bb=new", "c=new"]);

        // A flush that fails after sled took the batch keeps it, under newer changes.
        let applied = w
            .apply(&tree, |_, _| unreachable!("no log entries"))
            .unwrap();
        w.view(&tree).insert(b"c".to_vec(), b"newer".to_vec());
        assert_eq!(w.get(&tree, b"c").unwrap().as_deref(), Some(&b"newer"[..]));
        applied.settle(false);
        assert_eq!(w.pending(), 3);
        assert_eq!(w.get(&tree, b"c").unwrap().as_deref(), Some(&b"newer"[..]));

        // A fresh key removed before any flush leaves nothing to write; one given back does.
        let mut v = w.view(&tree);
        v.insert_new(b"f".to_vec(), b"x".to_vec());
        v.remove(b"f".to_vec());
        v.remove(b"bb".to_vec());
        drop(v);
        assert_eq!(w.pending(), 3);
        w.view(&tree).insert(b"bb".to_vec(), b"new".to_vec());

        // A durable flush: nothing pending, and sled as the view was.
        w.apply(&tree, |_, _| unreachable!("no log entries"))
            .unwrap()
            .settle(true);
        assert_eq!(w.pending(), 0);
        assert_eq!(tree.get("c").unwrap().as_deref(), Some(&b"newer"[..]));
        assert!(tree.get("b").unwrap().is_none());
        assert_eq!(
            keys(&w, &tree, b"a", None),
            ["a=sled", "bb=new", "c=newer", "d=sled"]
        );
        let mut v = w.view(&tree);
        v.remove(b"d".to_vec());
        let mut seen = Vec::new();
        v.scan(b"a", None, |k, _| {
            seen.push(k.to_vec());
            Ok(k != b"bb")
        })
        .unwrap();
        assert_eq!(seen, [b"a".to_vec(), b"bb".to_vec()]);
    }

    #[test]
    fn log_entries_reach_sled_in_segments_with_new_numbers_and_a_failed_flush_keeps_them() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let tree = db.open_tree("t").unwrap();
        let w = WriteBack::new();
        let numbers = Mutex::new(Vec::new());
        // A key named by the segment's earliest order value (the number is checked apart).
        let key = |earliest: u64, n: u64| {
            numbers.lock().unwrap().push(n);
            format!("log-{earliest}").into_bytes()
        };
        w.view(&tree).append_log(b"one,", 5);
        w.view(&tree).append_log(b"two,", 3);
        assert!(!w.is_empty(), "log entries wait for a flush");
        assert!(
            w.get(&tree, b"log-3").unwrap().is_none(),
            "not readable yet"
        );
        // A failed flush gives its log back as a keyed change; the next log gets a new key.
        let applied = w.apply(&tree, key).unwrap();
        assert_eq!(
            w.get(&tree, b"log-3").unwrap().as_deref(),
            Some(&b"one,two,"[..])
        );
        w.view(&tree).append_log(b"thr,", 9);
        applied.settle(false);
        w.apply(&tree, key).unwrap().settle(true);
        assert!(w.is_empty());
        assert_eq!(
            tree.get("log-3").unwrap().as_deref(),
            Some(&b"one,two,"[..])
        );
        assert_eq!(tree.get("log-9").unwrap().as_deref(), Some(&b"thr,"[..]));
        // A flush without entries writes no log key.
        w.view(&tree).insert(b"k".to_vec(), b"v".to_vec());
        w.apply(&tree, |_, _| unreachable!("no log entries"))
            .unwrap()
            .settle(true);
        assert_eq!(tree.len(), 3);
        // A long log is cut into segments of about 64 KiB, each with its own key.
        for i in 0..100u64 {
            w.view(&tree).append_log(&[b'x'; 1000], 100 + i);
        }
        w.apply(&tree, key).unwrap().settle(true);
        assert_eq!(tree.len(), 5);
        assert_eq!(tree.get("log-100").unwrap().unwrap().len(), 66_000);
        assert_eq!(tree.get("log-166").unwrap().unwrap().len(), 34_000);
        // Numbers follow each other, from the time the changes were made (unique across
        // restarts).
        let numbers = numbers.into_inner().unwrap();
        assert!(numbers.windows(2).all(|n| n[1] == n[0] + 1), "{numbers:?}");
        assert!(numbers[0] > 1_700_000_000_000_000_000, "{numbers:?}");
    }
}
