//! The delivery store on sled: one tree, keys by prefix. The record (`i`) is the truth; every
//! other key is an index derived from it and rewritten with it in one atomic step. Changes go
//! to the tree's write-back layer ([`super::overlay`]) and reach sled at the next durable flush:
//!
//! | prefix | key | value | present when |
//! | --- | --- | --- | --- |
//! | `i` | id | the invocation (JSON), without its payload | stored |
//! | `p` | id | the payload ([`crate::delivery::record::Payload::to_stored`]: a request body as raw bytes) | stored |
//! | `d` / `c` | due time (8 bytes, big-endian) + id | — | due on the attempt / callback queue |
//! | `l` | `a`/`c` + id | owner, NUL, until (8 bytes) | leased |
//! | `k` | idempotency key | id | the key leads to the id |
//! | `x` | id | — | a dead letter |
//! | `E` | its earliest entry's time (8 bytes) + a number unique to the log (8 bytes) | expiry log: per entry the updated time (8 bytes), the id's length (4 bytes) and the id | a durable flush (or an upgrade) wrote entries |
//! | `o` | id | — | unfinished |
//! | `v` | — | layout version | always (set when a store is opened) |
//!
//! An invocation that finishes with nothing pending (not a dead letter, no callback to send)
//! may expire once its updated time is past the retention. Instead of a key per invocation,
//! which sled would write once for every invocation, it gets an entry in the write-back layer's
//! log, and each durable flush writes the entries it gathered as one `E` key per 64 KiB. The
//! key starts with the log's earliest time, so expiry reads the logs in the order they come
//! due and stops at the first that is not. An entry may be stale by the time it is due (the
//! invocation was removed, or changed and has a newer entry): expiry checks the record before
//! it removes anything.

use std::collections::BTreeSet;

use anyhow::Context as _;

use super::overlay::View;
use super::SledStore;
use crate::delivery::record::{CallbackStatus, Invocation, Payload};
use crate::delivery::store::{DeliveryStore, Lease, Queue};
use crate::model::DeliveryMode;

/// The layout this code writes; older stores are re-indexed when opened (layout 3 moved payloads
/// out of the records; layout 4 replaced a key per expirable invocation with expiry logs).
const LAYOUT: u8 = 4;

/// How many entries an expiry log written by an upgrade holds (about as many as the 64 KiB of a
/// log a flush writes).
const UPGRADE_LOG_ENTRIES: usize = 1024;

fn record_key(id: &str) -> Vec<u8> {
    [b"i".as_slice(), id.as_bytes()].concat()
}

fn queue_prefix(queue: Queue) -> &'static [u8] {
    match queue {
        Queue::Attempts => b"d",
        Queue::Callbacks => b"c",
    }
}

fn due_key(queue: Queue, due_ms: u64, id: &str) -> Vec<u8> {
    [queue_prefix(queue), &due_ms.to_be_bytes(), id.as_bytes()].concat()
}

fn lease_key(queue: Queue, id: &str) -> Vec<u8> {
    let q: &[u8] = match queue {
        Queue::Attempts => b"la",
        Queue::Callbacks => b"lc",
    };
    [q, id.as_bytes()].concat()
}

fn payload_key(id: &str) -> Vec<u8> {
    [b"p".as_slice(), id.as_bytes()].concat()
}

/// Payloads this large are kept in a file of their own (`payloads/<id>`), written once, instead
/// of in the database, whose pages would copy them again on every rewrite.
const LARGE_PAYLOAD: usize = 64 * 1024;
/// Whether a payload is [`LARGE_PAYLOAD`] or more as stored. A request whose body and headers
/// are clearly smaller is answered without serialising its metadata.
fn large(p: &Payload) -> bool {
    if let Payload::Http {
        method,
        path,
        headers,
        body,
    } = p
    {
        // The metadata's JSON is at most this long: a character escaped takes at most six
        // bytes, a header value (base64) four for every three.
        let meta_at_most = 128
            + 6 * (method.len() + path.len())
            + headers
                .iter()
                .map(|h| 16 + 6 * h.0.len() + 2 * h.1.len())
                .sum::<usize>();
        if stored_len(meta_at_most, body.len()) < LARGE_PAYLOAD {
            return false;
        }
    }
    let (meta, body) = p.stored_parts();
    stored_len(meta.len(), body.len()) >= LARGE_PAYLOAD
}

/// The length of a payload as stored ([`Payload::to_stored`]) from its parts' lengths.
fn stored_len(meta: usize, body: usize) -> usize {
    4 + meta + body
}

/// The first byte of a `p` value: the payload follows, or it is in its file.
const INLINE: u8 = 0;
const IN_FILE: u8 = 1;

/// What goes into the tree for one invocation: the record without its payload, and the `p`
/// value when it has a payload.
type Prepared = (Vec<u8>, Option<Vec<u8>>);

fn idem_key(key: &str) -> Vec<u8> {
    [b"k".as_slice(), key.as_bytes()].concat()
}

fn dead_key(id: &str) -> Vec<u8> {
    [b"x".as_slice(), id.as_bytes()].concat()
}

/// The key of an expiry log whose earliest entry is at `earliest`, and whose number `n` no
/// other log has.
pub(super) fn expiry_log_key(earliest: u64, n: u64) -> Vec<u8> {
    [b"E".as_slice(), &earliest.to_be_bytes(), &n.to_be_bytes()].concat()
}

/// Whether the invocation expires once its updated time is past the retention: finished,
/// nothing pending, and not a dead letter.
fn expirable(inv: &Invocation) -> bool {
    inv.status.is_final() && !inv.is_dead_letter() && !inv.callback_pending()
}

/// The earliest time and the number of an expiry log's key.
fn log_key_parts(key: &[u8]) -> Option<(u64, u64)> {
    let at: [u8; 8] = key.get(1..9)?.try_into().ok()?;
    let n: [u8; 8] = key.get(9..)?.try_into().ok()?;
    Some((u64::from_be_bytes(at), u64::from_be_bytes(n)))
}

/// Appends an expiry log entry.
fn push_expiry(log: &mut Vec<u8>, updated_ms: u64, id: &str) {
    log.extend_from_slice(&updated_ms.to_be_bytes());
    log.extend_from_slice(&(id.len() as u32).to_be_bytes());
    log.extend_from_slice(id.as_bytes());
}

/// The entries of an expiry log (a torn tail, which no writer leaves, ends it).
fn expiry_entries(mut log: &[u8]) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    while let (Some(at), Some(len)) = (
        log.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()),
        log.get(8..12).and_then(|b| <[u8; 4]>::try_from(b).ok()),
    ) {
        let (at, len) = (u64::from_be_bytes(at), u32::from_be_bytes(len) as usize);
        let Some(id) = log.get(12..12 + len) else {
            break;
        };
        out.push((at, String::from_utf8_lossy(id).into_owned()));
        log = &log[12 + len..];
    }
    out
}

fn open_key(id: &str) -> Vec<u8> {
    [b"o".as_slice(), id.as_bytes()].concat()
}

/// The time and id of a `d` or `c` key.
fn timed(key: &[u8]) -> (u64, String) {
    let mut at = [0u8; 8];
    at.copy_from_slice(&key[1..9]);
    (
        u64::from_be_bytes(at),
        String::from_utf8_lossy(&key[9..]).into_owned(),
    )
}

/// The index keys an invocation's state implies (besides its record and idempotency key).
fn index_keys(inv: &Invocation) -> BTreeSet<Vec<u8>> {
    let mut keys = BTreeSet::new();
    let finished = inv.status.is_final();
    if !finished {
        keys.insert(open_key(&inv.id));
        if let (DeliveryMode::StoreAndForward, Some(due)) = (inv.mode, inv.due_ms) {
            keys.insert(due_key(Queue::Attempts, due, &inv.id));
        }
    }
    if let Some(cb) = inv
        .callback
        .as_ref()
        .filter(|c| c.status == CallbackStatus::Pending)
    {
        if finished {
            keys.insert(due_key(Queue::Callbacks, cb.due_ms.unwrap_or(0), &inv.id));
        }
    }
    if inv.is_dead_letter() {
        keys.insert(dead_key(&inv.id));
    }
    keys
}

fn lease_value(lease: &Lease) -> Vec<u8> {
    [lease.owner.as_bytes(), &[0], &lease.until_ms.to_be_bytes()].concat()
}

/// The owner and expiry of a lease value.
fn parse_lease(v: &[u8]) -> (String, u64) {
    let split = v.len().saturating_sub(9);
    let owner = String::from_utf8_lossy(&v[..split]).into_owned();
    let mut until = [0u8; 8];
    if v.len() >= 9 {
        until.copy_from_slice(&v[split + 1..]);
    }
    (owner, u64::from_be_bytes(until))
}

/// The record of `id`, as the view holds it.
fn read_record(v: &View<'_>, id: &str) -> anyhow::Result<Option<Invocation>> {
    match v.get(&record_key(id))? {
        Some(bytes) => Ok(Some(
            serde_json::from_slice(&bytes).with_context(|| format!("corrupt invocation {id}"))?,
        )),
        None => Ok(None),
    }
}

/// How [`write_record`] finds the invocation.
#[derive(Clone, Copy)]
enum Was<'a> {
    /// Stored in this state.
    Stored(&'a Invocation),
    /// Not stored, and its id is new: nothing was ever stored under it.
    New,
    /// Not stored (any more): keys of it may be left.
    Missing,
}

/// Writes `inv` (as [`SledStore::prepare`] made it) and its indexes, removing the indexes it
/// had, ends its leases, and logs it for expiry when it became expirable or changed its time.
/// An invocation that became expirable loses its payload: nothing reads it again (attempts are
/// over, and only dead letters are shown with theirs or replayed). True when that payload is in
/// a file, which goes once the removal is durable.
fn write_record(
    v: &mut View<'_>,
    was: Was<'_>,
    inv: &Invocation,
    prepared: Prepared,
) -> anyhow::Result<bool> {
    let before = match was {
        Was::Stored(old) => index_keys(old),
        Was::New | Was::Missing => BTreeSet::new(),
    };
    let new = matches!(was, Was::New);
    let put = |v: &mut View<'_>, k: Vec<u8>, value: Vec<u8>| {
        if new {
            v.insert_new(k, value)
        } else {
            v.insert(k, value)
        }
    };
    // Read before anything changes: a failed read leaves the view as it was.
    let drops_payload = expirable(inv) && !matches!(was, Was::Stored(old) if expirable(old));
    let in_file = drops_payload
        && v.get(&payload_key(&inv.id))?
            .is_some_and(|p| p.first() == Some(&IN_FILE));
    let after = index_keys(inv);
    for k in before.difference(&after) {
        v.remove(k.clone());
    }
    for k in after.difference(&before) {
        put(v, k.clone(), Vec::new());
    }
    if !new {
        v.remove(lease_key(Queue::Attempts, &inv.id));
        v.remove(lease_key(Queue::Callbacks, &inv.id));
    }
    let (record, payload) = prepared;
    match payload {
        // Removed before the next flush, a new invocation's payload never reaches sled.
        _ if drops_payload => v.remove(payload_key(&inv.id)),
        Some(payload) if !expirable(inv) => put(v, payload_key(&inv.id), payload),
        _ => {}
    }
    put(v, record_key(&inv.id), record);
    let logged = match was {
        Was::Stored(old) => expirable(old) && old.updated_ms == inv.updated_ms,
        Was::New | Was::Missing => false,
    };
    if expirable(inv) && !logged {
        let mut entry = Vec::with_capacity(12 + inv.id.len());
        push_expiry(&mut entry, inv.updated_ms, &inv.id);
        v.append_log(&entry, inv.updated_ms);
    }
    Ok(in_file)
}

/// The key just after every key that starts with the one-byte `prefix`.
fn after_prefix(prefix: &[u8]) -> [u8; 1] {
    [prefix[0] + 1]
}

/// Runs `f`, which blocks on the disk, telling a multi-threaded runtime first so that its other
/// tasks move to another thread meanwhile.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    let on_worker = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if on_worker {
        tokio::task::block_in_place(f)
    } else {
        f()
    }
}

impl SledStore {
    pub(super) fn payload_file(&self, id: &str) -> std::path::PathBuf {
        self.dir.join(super::durable::PAYLOAD_DIR).join(id)
    }

    /// The record as stored (without its payload) and its `p` value; a large payload is written
    /// to its file now (made durable by the next durable flush; the journal holds it until then).
    fn prepare(&self, inv: &Invocation) -> anyhow::Result<Prepared> {
        let Some(p) = &inv.payload else {
            return Ok((serde_json::to_vec(inv)?, None));
        };
        let record = serde_json::to_vec(&inv.without_payload())?;
        let (meta, body) = p.stored_parts();
        let len = stored_len(meta.len(), body.len());
        if len < LARGE_PAYLOAD {
            let mut v = Vec::with_capacity(1 + len);
            v.push(INLINE);
            Payload::write_parts(&mut v, &meta, body)?;
            return Ok((record, Some(v)));
        }
        // Written from where the body is, not from a copy of it, and made durable before the
        // record that names it is stored: from then on any submit may be answered for this
        // invocation (a duplicate's), and a journal replay takes the payload from this file.
        let path = self.payload_file(&inv.id);
        blocking(|| {
            std::fs::File::create(&path)
                .and_then(|mut f| {
                    Payload::write_parts(&mut f, &meta, body)?;
                    f.sync_data()
                })
                .and_then(|()| {
                    super::durable::sync_dir(&self.dir.join(super::durable::PAYLOAD_DIR))
                })
        })
        .with_context(|| format!("failed to write {}", path.display()))?;
        Ok((record, Some(vec![IN_FILE])))
    }

    /// Whether a `p` value (and its file, when it is in one) can be read.
    pub(super) fn payload_value_ok(&self, id: &str, v: &[u8]) -> bool {
        match v.split_first() {
            Some((&INLINE, rest)) => Payload::from_stored(rest).is_ok(),
            Some((&IN_FILE, _)) => {
                std::fs::read(self.payload_file(id)).is_ok_and(|b| Payload::from_stored(&b).is_ok())
            }
            _ => false,
        }
    }

    /// A `p` value with the payload in it (read from its file if need be), for a backup.
    pub(super) fn inline_payload_value(&self, id: &str, v: &[u8]) -> anyhow::Result<Vec<u8>> {
        match v.split_first() {
            Some((&IN_FILE, _)) => {
                let path = self.payload_file(id);
                let mut out = vec![INLINE];
                out.extend(
                    std::fs::read(&path)
                        .with_context(|| format!("failed to read {}", path.display()))?,
                );
                Ok(out)
            }
            _ => Ok(v.to_vec()),
        }
    }

    /// Every invocation for a backup, changes not yet flushed included: `each(key, value)` gets
    /// its record and, when it has one, its payload (inlined), both as one view saw them, so an
    /// invocation that finishes meanwhile is saved finished, or pending with its payload.
    pub(super) fn each_invocation(
        &self,
        mut each: impl FnMut(&[u8], &[u8]) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let t = self.t()?;
        self.changes.scan(&t.delivery, b"i", Some(b"j"), |k, _| {
            let id = String::from_utf8_lossy(&k[1..]).into_owned();
            // Payload files are held only while this record's are read, not while `each`
            // writes them at a reader's pace.
            let (record, payload) = {
                let _held = self.hold_payload_files();
                let (record, payload) = {
                    let v = self.changes.view(&t.delivery);
                    (v.get(k)?, v.get(&payload_key(&id))?)
                };
                let payload = match (&record, payload) {
                    (Some(_), Some(p)) => Some(self.inline_payload_value(&id, &p)?),
                    _ => None,
                };
                (record, payload)
            };
            if let Some(record) = record {
                each(k, &record)?;
                if let Some(p) = payload {
                    each(&payload_key(&id), &p)?;
                }
            }
            Ok(true)
        })
    }

    /// Points the invocation `id` at its payload file, when the file holds a readable payload
    /// (a submit journaled without its payload, whose record the store lost); true if it did.
    fn adopt_payload_file(&self, id: &str) -> anyhow::Result<bool> {
        let readable = std::fs::read(self.payload_file(id))
            .is_ok_and(|bytes| Payload::from_stored(&bytes).is_ok());
        if readable {
            let t = self.t()?;
            self.changes
                .view(&t.delivery)
                .insert(payload_key(id), vec![IN_FILE]);
        }
        Ok(readable)
    }

    /// Payload files no payload key names: their invocation is gone or finished (a crash
    /// between writing the file and the record, or between the durable removal of the key and
    /// the file's); returns how many were removed.
    pub(super) fn remove_orphan_payloads(&self) -> anyhow::Result<usize> {
        let dir = self.dir.join(super::durable::PAYLOAD_DIR);
        let t = self.t()?;
        let mut n = 0;
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let id = entry.file_name().to_string_lossy().into_owned();
            if self.changes.get(&t.delivery, &payload_key(&id))?.is_none() {
                let _ = std::fs::remove_file(entry.path());
                n += 1;
            }
        }
        Ok(n)
    }

    /// Brings a delivery tree written by an earlier layout up to date: derives the indexes it
    /// lacks from the records. Runs once; the version key marks it done.
    pub(super) fn upgrade_delivery(&self) -> anyhow::Result<usize> {
        let t = self.t()?;
        if t.delivery.get(b"v")?.as_deref() == Some(&[LAYOUT][..]) {
            return Ok(0);
        }
        let mut n = 0;
        let mut expiring = Vec::new();
        for kv in t.delivery.scan_prefix(b"i") {
            let (_, v) = kv?;
            let inv: Invocation = serde_json::from_slice(&v).context("corrupt invocation")?;
            for k in index_keys(&inv) {
                t.delivery.insert(k, &[][..])?;
            }
            if expirable(&inv) {
                expiring.push((inv.updated_ms, inv.id.clone()));
            }
            if inv.payload.is_some() {
                // Written before payloads had keys of their own.
                let (record, payload) = self.prepare(&inv)?;
                let mut batch = sled::Batch::default();
                if let Some(payload) = payload {
                    batch.insert(payload_key(&inv.id), payload);
                }
                batch.insert(record_key(&inv.id), record);
                t.delivery.apply_batch(batch)?;
            }
            n += 1;
        }
        // Expiry logs in place of the expiry keys of layout 3 (and of any earlier logs), oldest
        // first, numbered below the logs of this generation's flush.
        let mut batch = sled::Batch::default();
        for prefix in [b"e", b"E"] {
            for kv in t.delivery.scan_prefix(prefix) {
                batch.remove(kv?.0);
            }
        }
        expiring.sort_unstable();
        // Numbered from 0 (the logs of flushes are numbered from the time, in nanoseconds).
        for (i, chunk) in expiring.chunks(UPGRADE_LOG_ENTRIES).enumerate() {
            let mut log = Vec::new();
            for (at, id) in chunk {
                push_expiry(&mut log, *at, id);
            }
            // Sorted: the first entry is the earliest.
            let key = expiry_log_key(chunk[0].0, i as u64);
            batch.insert(key, log);
        }
        t.delivery.apply_batch(batch)?;
        t.delivery.insert(b"v", &[LAYOUT][..])?;
        t.delivery.flush()?;
        if n > 0 {
            tracing::info!(invocations = n, "re-indexed the delivery store");
        }
        Ok(n)
    }

    /// Derives every index again from the records (after a repair copied only the records).
    pub(super) fn upgrade_delivery_from_scratch(&self) -> anyhow::Result<()> {
        self.t()?.delivery.remove(b"v")?;
        self.upgrade_delivery().map(drop)
    }

    /// Stores a new invocation (see [`DeliveryStore::insert`]); `fresh`: its id was never
    /// stored before (not a journaled submit written back).
    fn insert_with(
        &self,
        inv: &Invocation,
        check_key: bool,
        lease: Option<&Lease>,
        fresh: bool,
    ) -> anyhow::Result<Option<Invocation>> {
        self.noted((|| {
            let prepared = self.prepare(inv)?;
            let t = self.t()?;
            let mut v = self.changes.view(&t.delivery);
            if let Some(key) = &inv.idempotency_key {
                if check_key {
                    if let Some(id) = v.get(&idem_key(key))? {
                        let id = String::from_utf8_lossy(&id).into_owned();
                        if let Some(existing) = read_record(&v, &id)? {
                            return Ok(Some(existing));
                        }
                    }
                }
                v.insert(idem_key(key), inv.id.as_bytes().to_vec());
            }
            let was = if fresh { Was::New } else { Was::Missing };
            if write_record(&mut v, was, inv, prepared)? {
                self.doom_payload_file(&inv.id);
            }
            if let Some(lease) = lease {
                let (k, value) = (lease_key(Queue::Attempts, &inv.id), lease_value(lease));
                if fresh {
                    v.insert_new(k, value)
                } else {
                    v.insert(k, value)
                }
            }
            Ok(None)
        })())
    }

    fn ids_with_prefix(&self, prefix: &[u8]) -> anyhow::Result<Vec<String>> {
        let t = self.t()?;
        let mut ids = Vec::new();
        self.changes
            .scan(&t.delivery, prefix, Some(&after_prefix(prefix)), |k, _| {
                ids.push(String::from_utf8_lossy(&k[prefix.len()..]).into_owned());
                Ok(true)
            })?;
        Ok(ids)
    }

    /// The first key from `from` up to `to` (excluded), and its value.
    fn first_between(&self, from: &[u8], to: &[u8]) -> anyhow::Result<Option<(Vec<u8>, Vec<u8>)>> {
        let t = self.t()?;
        let mut first = None;
        self.changes
            .view(&t.delivery)
            .scan(from, Some(to), |k, v| {
                first = Some((k.to_vec(), v.to_vec()));
                Ok(false)
            })?;
        Ok(first)
    }

    /// Replaces the expiry log `key`, if it still holds `was`, with what is left of it (under
    /// the key its earliest entry gives it), or removes it.
    fn replace_log(
        &self,
        key: &[u8],
        was: &[u8],
        rest: Option<(Vec<u8>, Vec<u8>)>,
    ) -> anyhow::Result<()> {
        let t = self.t()?;
        let mut v = self.changes.view(&t.delivery);
        if v.get(key)?.as_deref() == Some(was) {
            v.remove(key.to_vec());
            if let Some((key, log)) = rest {
                v.insert(key, log);
            }
        }
        Ok(())
    }

    /// Removes the invocation `id` (see [`DeliveryStore::remove`]) if it is stored and `remove`
    /// says so, in one atomic step.
    fn remove_if(
        &self,
        id: &str,
        remove: impl FnOnce(&Invocation) -> bool,
    ) -> anyhow::Result<bool> {
        let removed = {
            let t = self.t()?;
            let mut v = self.changes.view(&t.delivery);
            match read_record(&v, id)? {
                Some(inv) if remove(&inv) => {
                    for k in index_keys(&inv) {
                        v.remove(k);
                    }
                    v.remove(lease_key(Queue::Attempts, id));
                    v.remove(lease_key(Queue::Callbacks, id));
                    if let Some(key) = &inv.idempotency_key {
                        if v.get(&idem_key(key))?.as_deref() == Some(id.as_bytes()) {
                            v.remove(idem_key(key));
                        }
                    }
                    v.remove(record_key(id));
                    v.remove(payload_key(id));
                    true
                }
                _ => false,
            }
        };
        if removed && self.payload_file_of(id).is_some() {
            // Removed with the record's removal, once that is durable: until then a crash
            // brings the record back, and it needs its payload.
            self.doom_payload_file(id);
        }
        Ok(removed)
    }

    /// Deletes the payload file of `id` after the next durable flush, which removes its key.
    fn doom_payload_file(&self, id: &str) {
        self.doomed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(id.to_string());
    }

    /// The keys from `from` up to `to` (excluded), at most `limit`.
    fn keys_between(&self, from: &[u8], to: &[u8], limit: usize) -> anyhow::Result<Vec<Vec<u8>>> {
        let t = self.t()?;
        let mut keys = Vec::new();
        let visit = |k: &[u8], _: &[u8]| {
            keys.push(k.to_vec());
            Ok(keys.len() < limit)
        };
        match limit {
            0 => {}
            // A few keys: merged under the lock as they come, without copying the changes.
            1..=256 => self.changes.view(&t.delivery).scan(from, Some(to), visit)?,
            _ => self.changes.scan(&t.delivery, from, Some(to), visit)?,
        }
        Ok(keys)
    }
}

impl DeliveryStore for SledStore {
    fn insert(
        &self,
        inv: &Invocation,
        check_key: bool,
        lease: Option<&Lease>,
    ) -> anyhow::Result<Option<Invocation>> {
        // A submit's id is new (a fresh UUIDv7): nothing was ever stored under it.
        self.insert_with(inv, check_key, lease, true)
    }

    fn put(&self, inv: &Invocation) -> anyhow::Result<()> {
        self.noted((|| {
            let prepared = self.prepare(inv)?;
            let t = self.t()?;
            let mut v = self.changes.view(&t.delivery);
            // Removed meanwhile (purged, expired): a late outcome does not bring it back.
            if let Some(old) = read_record(&v, &inv.id)? {
                if write_record(&mut v, Was::Stored(&old), inv, prepared)? {
                    self.doom_payload_file(&inv.id);
                }
            }
            Ok(())
        })())
    }

    fn payload(&self, id: &str) -> anyhow::Result<Option<Payload>> {
        let t = self.t()?;
        if let Some(v) = self.changes.get(&t.delivery, &payload_key(id))? {
            let bytes = match v.split_first() {
                Some((&INLINE, rest)) => rest.to_vec(),
                Some((&IN_FILE, _)) => {
                    let path = self.payload_file(id);
                    std::fs::read(&path).map_err(|e| {
                        self.damaged(format!(
                            "the payload file {} of invocation {id} cannot be read: {e}",
                            path.display()
                        ))
                    })?
                }
                _ => anyhow::bail!("corrupt payload of invocation {id}"),
            };
            return Payload::from_stored(&bytes)
                .map(Some)
                .with_context(|| format!("corrupt payload of invocation {id}"));
        }
        // A record from before payloads had keys of their own holds its payload.
        Ok(self.get(id)?.and_then(|inv| inv.payload))
    }

    fn get(&self, id: &str) -> anyhow::Result<Option<Invocation>> {
        let t = self.t()?;
        match self.changes.get(&t.delivery, &record_key(id))? {
            Some(v) => Ok(Some(
                serde_json::from_slice(&v).with_context(|| format!("corrupt invocation {id}"))?,
            )),
            None => Ok(None),
        }
    }

    fn take_due(
        &self,
        queue: Queue,
        now_ms: u64,
        lease: &Lease,
        limit: usize,
        skip: &dyn Fn(&str) -> bool,
    ) -> anyhow::Result<Vec<Invocation>> {
        self.noted((|| {
            let t = self.t()?;
            let mut v = self.changes.view(&t.delivery);
            let start = due_key(queue, 0, "");
            let end = due_key(queue, now_ms.saturating_add(1), "");
            let mut ids = Vec::new();
            if limit > 0 {
                v.scan(&start, Some(&end), |k, _| {
                    let (_, id) = timed(k);
                    if skip(&id) {
                        return Ok(true);
                    }
                    match v.get(&lease_key(queue, &id))? {
                        Some(l) if parse_lease(&l).1 > now_ms => {}
                        _ => ids.push(id),
                    }
                    Ok(ids.len() < limit)
                })?;
            }
            let value = lease_value(lease);
            let mut taken = Vec::with_capacity(ids.len());
            for id in ids {
                if let Some(inv) = read_record(&v, &id)? {
                    v.insert(lease_key(queue, &id), value.clone());
                    taken.push(inv);
                }
            }
            Ok(taken)
        })())
    }

    fn count_due(&self, queue: Queue, now_ms: u64, cap: usize) -> anyhow::Result<usize> {
        let start = due_key(queue, 0, "");
        let end = due_key(queue, now_ms.saturating_add(1), "");
        Ok(self.keys_between(&start, &end, cap)?.len())
    }

    fn next_due(&self, queue: Queue) -> anyhow::Result<Option<u64>> {
        let prefix = queue_prefix(queue);
        Ok(self
            .keys_between(prefix, &after_prefix(prefix), 1)?
            .first()
            .map(|k| timed(k).0))
    }

    fn dead_letters(&self) -> anyhow::Result<Vec<Invocation>> {
        let mut out = Vec::new();
        for id in self.ids_with_prefix(b"x")? {
            if let Some(inv) = self.get(&id)? {
                out.push(inv);
            }
        }
        Ok(out)
    }

    fn remove(&self, id: &str) -> anyhow::Result<bool> {
        self.remove_if(id, |_| true)
    }

    fn expire(&self, before_ms: u64, limit: usize) -> anyhow::Result<usize> {
        let end = after_prefix(b"E");
        let mut from = b"E".to_vec();
        // Removed, and entries looked at: stale ones cost a read each, so they count too.
        let (mut n, mut seen, budget) = (0, 0, 4 * limit);
        while n < limit && seen < budget {
            let Some((key, log)) = self.first_between(&from, &end)? else {
                break;
            };
            from = [key.as_slice(), &[0]].concat();
            let entries = expiry_entries(&log);
            let Some((earliest, number)) = log_key_parts(&key) else {
                // Not a key this code writes: dropped.
                self.replace_log(&key, &log, None)?;
                continue;
            };
            if earliest >= before_ms && !entries.is_empty() {
                // Logs come in the order their earliest entries are due: none is due yet.
                break;
            }
            // An entry whose record is gone, or changed since (it has a newer entry, or will
            // have one when it is expirable again), is dropped.
            let (mut kept, mut kept_earliest) = (Vec::new(), u64::MAX);
            for (at, id) in entries {
                if at >= before_ms || n >= limit || seen >= budget {
                    push_expiry(&mut kept, at, &id);
                    kept_earliest = kept_earliest.min(at);
                    continue;
                }
                seen += 1;
                if self.remove_if(&id, |inv| expirable(inv) && inv.updated_ms < before_ms)? {
                    n += 1;
                }
            }
            let rest = (!kept.is_empty()).then(|| (expiry_log_key(kept_earliest, number), kept));
            self.replace_log(&key, &log, rest)?;
        }
        Ok(n)
    }

    fn unfinished(&self) -> anyhow::Result<Vec<Invocation>> {
        let mut out = Vec::new();
        for id in self.ids_with_prefix(b"o")? {
            if let Some(inv) = self.get(&id)? {
                out.push(inv);
            }
        }
        Ok(out)
    }

    fn release_leases(&self, owner_prefix: &str) -> anyhow::Result<usize> {
        let t = self.t()?;
        let mut v = self.changes.view(&t.delivery);
        let mut ended = Vec::new();
        v.scan(b"l", Some(&after_prefix(b"l")), |k, l| {
            if parse_lease(l).0.starts_with(owner_prefix) {
                ended.push(k.to_vec());
            }
            Ok(true)
        })?;
        let n = ended.len();
        for k in ended {
            v.remove(k);
        }
        Ok(n)
    }

    fn restore(&self, inv: &Invocation) -> anyhow::Result<bool> {
        let Some(stored) = self.get(&inv.id)? else {
            self.insert_with(inv, false, None, false)?;
            if inv.payload.is_none() {
                self.adopt_payload_file(&inv.id)?;
            }
            return Ok(true);
        };
        if expirable(&stored) {
            // It finished, and its payload went with its last attempt: it is not needed again.
            return Ok(false);
        }
        let t = self.t()?;
        let intact = self
            .changes
            .get(&t.delivery, &payload_key(&inv.id))?
            .is_some_and(|v| self.payload_value_ok(&inv.id, &v));
        if intact {
            return Ok(false);
        }
        if inv.payload.is_none() {
            return self.adopt_payload_file(&inv.id);
        }
        let (_, payload) = self.prepare(inv)?;
        if let Some(payload) = payload {
            self.changes
                .view(&t.delivery)
                .insert(payload_key(&inv.id), payload);
        }
        Ok(true)
    }

    fn payload_file_of(&self, id: &str) -> Option<std::path::PathBuf> {
        let path = self.payload_file(id);
        path.exists().then_some(path)
    }

    fn keeps_apart(&self, payload: &Payload) -> bool {
        large(payload)
    }

    fn unflushed(&self) -> bool {
        // Payload files kept past a flush (a backup read them) also wait for one.
        !self.changes.is_empty()
            || !self
                .doomed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty()
    }

    fn tidy(&self) -> anyhow::Result<usize> {
        self.remove_orphan_payloads()
    }

    fn reopens(&self) -> u64 {
        SledStore::reopens(self)
    }

    fn flush_delivery(&self) -> anyhow::Result<()> {
        super::Store::flush(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::record::{Callback, Payload, Status};
    use crate::model::RetryPolicy;

    fn inv(id: &str, key: Option<&str>) -> Invocation {
        Invocation {
            id: id.into(),
            function: "f".into(),
            mode: DeliveryMode::StoreAndForward,
            status: Status::Pending,
            attempts: 0,
            created_ms: 10,
            updated_ms: 10,
            due_ms: Some(100),
            policy: RetryPolicy::default(),
            payload: Some(Payload::Http {
                method: "GET".into(),
                path: "/".into(),
                headers: vec![],
                body: vec![],
            }),
            result: None,
            error: None,
            history: vec![],
            callback: None,
            idempotency_key: key.map(String::from),
            replayed_as: None,
            origin: Default::default(),
        }
    }

    /// What a crash before the next durable flush does: the record and payload key are gone.
    fn lose(s: &SledStore, id: &str) {
        crate::store::Store::flush(s).unwrap();
        let t = s.t().unwrap();
        t.delivery.remove(record_key(id)).unwrap();
        t.delivery.remove(payload_key(id)).unwrap();
    }

    #[test]
    fn a_submit_journaled_without_its_payload_gets_it_back_from_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        let mut big = inv("big", None);
        big.payload = Some(Payload::Http {
            method: "POST".into(),
            path: "/".into(),
            headers: vec![],
            body: vec![7; LARGE_PAYLOAD],
        });
        s.insert(&big, false, None).unwrap();
        let file = s
            .payload_file_of("big")
            .expect("a large payload has a file");
        assert!(s.payload_file_of("other").is_none());
        // The store lost the record and its payload key (not yet durable at a crash); the
        // journal held the record without the payload, and the payload's file was synced.
        lose(&s, "big");
        assert!(s.restore(&big.without_payload()).unwrap());
        assert_eq!(s.payload("big").unwrap(), big.payload);
        // Restored again (a second replay): nothing to do.
        assert!(!s.restore(&big.without_payload()).unwrap());
        // Without its file the record comes back, and the payload is missing, not invented.
        lose(&s, "big");
        std::fs::remove_file(&file).unwrap();
        assert!(s.restore(&big.without_payload()).unwrap());
        assert!(s.get("big").unwrap().is_some());
        assert_eq!(s.payload("big").unwrap(), None);
    }

    fn lease(owner: &str, until_ms: u64) -> Lease {
        Lease {
            owner: owner.into(),
            until_ms,
        }
    }

    fn ids(v: Vec<Invocation>) -> Vec<String> {
        v.into_iter().map(|i| i.id).collect()
    }

    #[test]
    fn due_work_is_leased_then_completed_or_retaken_when_the_lease_lapses() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        s.insert(&inv("a", None), true, None).unwrap();
        s.insert(&inv("b", None), true, None).unwrap();
        assert!(s
            .take_due(Queue::Attempts, 99, &lease("h1/1", 1000), 10, &|_| false)
            .unwrap()
            .is_empty());
        assert_eq!(
            ids(s
                .take_due(Queue::Attempts, 100, &lease("h1/1", 1000), 1, &|_| false)
                .unwrap()),
            ["a"]
        );
        // "a" is leased: another owner takes only "b".
        assert_eq!(
            ids(s
                .take_due(Queue::Attempts, 200, &lease("h2/1", 1000), 10, &|_| false)
                .unwrap()),
            ["b"]
        );
        assert!(s
            .take_due(Queue::Attempts, 999, &lease("h2/1", 2000), 10, &|_| false)
            .unwrap()
            .is_empty());
        // After the leases lapse both are due; what the caller still holds is skipped and stays
        // unleased, so it is taken at the next scan once the caller lets it go.
        assert_eq!(
            ids(s
                .take_due(Queue::Attempts, 1000, &lease("h3/1", 3000), 10, &|id| id
                    == "a")
                .unwrap()),
            ["b"]
        );
        assert_eq!(
            ids(s
                .take_due(Queue::Attempts, 1001, &lease("h3/1", 3000), 10, &|_| false)
                .unwrap()),
            ["a"]
        );
        // Completing "a" with a pending callback moves it to the callback queue.
        let mut a = s.get("a").unwrap().unwrap();
        a.status = Status::Succeeded;
        a.due_ms = None;
        a.updated_ms = 50;
        a.callback = Some(Callback {
            due_ms: Some(300),
            ..Callback::new("http://x".into())
        });
        s.put(&a).unwrap();
        assert_eq!(s.next_due(Queue::Callbacks).unwrap(), Some(300));
        assert_eq!(
            ids(s
                .take_due(Queue::Callbacks, 300, &lease("h1/1", 9000), 10, &|_| false)
                .unwrap()),
            ["a"]
        );
        // Rescheduling "b" releases its lease and moves it to its new time.
        let mut b = s.get("b").unwrap().unwrap();
        b.due_ms = Some(5000);
        s.put(&b).unwrap();
        assert_eq!(s.next_due(Queue::Attempts).unwrap(), Some(5000));
        assert_eq!(
            ids(s
                .take_due(Queue::Attempts, 5000, &lease("h1/1", 6000), 10, &|_| false)
                .unwrap()),
            ["b"]
        );
        assert_eq!(ids(s.unfinished().unwrap()), ["b"]);
        // A host's earlier leases end at its start.
        assert_eq!(s.release_leases("h1/").unwrap(), 2);
        assert_eq!(
            ids(s
                .take_due(Queue::Attempts, 5000, &lease("h1/2", 6000), 10, &|_| false)
                .unwrap()),
            ["b"]
        );
    }

    #[test]
    fn keys_dead_letters_and_expiry_follow_the_record() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        assert!(s
            .insert(&inv("a", Some("k")), true, None)
            .unwrap()
            .is_none());
        // The same key returns the first invocation and stores nothing.
        let existing = s.insert(&inv("b", Some("k")), true, None).unwrap().unwrap();
        assert_eq!(existing.id, "a");
        assert!(s.get("b").unwrap().is_none());
        // Dead-lettered: listed, not expirable.
        let mut a = s.get("a").unwrap().unwrap();
        a.status = Status::DeadLettered;
        a.updated_ms = 20;
        s.put(&a).unwrap();
        assert_eq!(ids(s.dead_letters().unwrap()), ["a"]);
        crate::store::Store::flush(&s).unwrap();
        assert_eq!(s.expire(1_000, 10).unwrap(), 0);
        // A replay takes the key over; the old record is no dead letter and expires.
        s.insert(&inv("c", Some("k")), false, None).unwrap();
        a.replayed_as = Some("c".into());
        a.idempotency_key = None;
        s.put(&a).unwrap();
        assert!(s.dead_letters().unwrap().is_empty());
        // Logged for expiry: due at the flush after, once past its time.
        assert_eq!(s.expire(21, 10).unwrap(), 0);
        crate::store::Store::flush(&s).unwrap();
        assert_eq!(s.expire(20, 10).unwrap(), 0);
        assert_eq!(s.expire(21, 10).unwrap(), 1);
        assert!(s.get("a").unwrap().is_none());
        // The key still leads to the replacement.
        assert_eq!(
            s.insert(&inv("d", Some("k")), true, None)
                .unwrap()
                .unwrap()
                .id,
            "c"
        );
        // Removing an invocation removes the key that leads to it, and a late put of its old
        // state does not bring it back.
        let late = s.get("c").unwrap().unwrap();
        assert!(s.remove("c").unwrap());
        s.put(&late).unwrap();
        assert!(s.get("c").unwrap().is_none());
        assert!(s
            .insert(&inv("e", Some("k")), true, None)
            .unwrap()
            .is_none());
    }

    fn finished(id: &str, updated_ms: u64) -> Invocation {
        let mut i = inv(id, None);
        i.status = Status::Succeeded;
        i.due_ms = None;
        i.updated_ms = updated_ms;
        i
    }

    /// The `E` keys in sled, and how many entries each holds.
    fn logs(s: &SledStore) -> Vec<usize> {
        let t = s.t().unwrap();
        t.delivery
            .scan_prefix(b"E")
            .map(|kv| expiry_entries(&kv.unwrap().1).len())
            .collect()
    }

    #[test]
    fn expiry_logs_one_key_per_flush_skip_stale_entries_and_keep_what_is_not_due() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        for (id, at) in [("a", 10), ("b", 20), ("c", 30), ("gone", 10), ("moved", 10)] {
            s.insert(&finished(id, at), false, None).unwrap();
        }
        crate::store::Store::flush(&s).unwrap();
        assert_eq!(logs(&s), [5], "five entries, one key");
        // Stale entries: one removed, one finished again later (a newer entry in a new log).
        assert!(s.remove("gone").unwrap());
        s.put(&finished("moved", 40)).unwrap();
        // A state change that keeps the time logs nothing new.
        let mut c = s.get("c").unwrap().unwrap();
        c.attempts = 2;
        s.put(&c).unwrap();
        crate::store::Store::flush(&s).unwrap();
        assert_eq!(logs(&s), [5, 1]);
        // Before 25: "a" and "b" go, "gone" and "moved" are dropped as stale, "c" is kept.
        assert_eq!(s.expire(25, 100).unwrap(), 2);
        assert!(s.get("a").unwrap().is_none() && s.get("b").unwrap().is_none());
        assert!(s.get("moved").unwrap().is_some());
        crate::store::Store::flush(&s).unwrap();
        assert_eq!(logs(&s), [1, 1]);
        // A limit stops within a log and keeps the rest of it.
        assert_eq!(s.expire(1_000, 1).unwrap(), 1);
        assert_eq!(s.expire(1_000, 1).unwrap(), 1);
        assert!(s.get("c").unwrap().is_none() && s.get("moved").unwrap().is_none());
        assert_eq!(s.expire(1_000, 1).unwrap(), 0);
        crate::store::Store::flush(&s).unwrap();
        assert!(logs(&s).is_empty());
    }

    #[test]
    fn a_log_written_later_with_an_earlier_entry_comes_due_first() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        // The clock stepped back between two flushes, or a restored invocation kept its time.
        s.insert(&finished("late", 100), false, None).unwrap();
        crate::store::Store::flush(&s).unwrap();
        s.insert(&finished("early", 5), false, None).unwrap();
        crate::store::Store::flush(&s).unwrap();
        assert_eq!(s.expire(50, 10).unwrap(), 1);
        assert!(s.get("early").unwrap().is_none());
        assert!(s.get("late").unwrap().is_some());
        // A log key this code does not write is dropped, and what follows it still expires.
        let t = s.t().unwrap();
        t.delivery.insert(b"E-damaged", &b"junk"[..]).unwrap();
        assert_eq!(s.expire(200, 10).unwrap(), 1);
        assert!(s.get("late").unwrap().is_none());
        crate::store::Store::flush(&s).unwrap();
        assert!(logs(&s).is_empty());
    }

    #[test]
    fn a_layout_3_store_gets_expiry_logs_for_its_expiry_keys() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        let t = s.t().unwrap();
        // As layout 3 wrote them: records, and a key per expirable one.
        for (id, at) in [("old", 10), ("new", 50)] {
            let (record, _) = s.prepare(&finished(id, at)).unwrap();
            t.delivery.insert(record_key(id), record).unwrap();
            t.delivery
                .insert(
                    [&b"e"[..], &at.to_be_bytes(), id.as_bytes()].concat(),
                    &[][..],
                )
                .unwrap();
        }
        let (record, _) = s.prepare(&inv("open", None)).unwrap();
        t.delivery.insert(record_key("open"), record).unwrap();
        t.delivery.insert(b"v", &[3u8][..]).unwrap();
        drop(t);
        assert_eq!(s.upgrade_delivery().unwrap(), 3);
        let t = s.t().unwrap();
        assert_eq!(t.delivery.scan_prefix(b"e").count(), 0);
        assert_eq!(logs(&s), [2]);
        assert_eq!(s.expire(20, 10).unwrap(), 1);
        assert!(s.get("old").unwrap().is_none());
        assert_eq!(s.expire(60, 10).unwrap(), 1);
        assert!(s.get("open").unwrap().is_some());
    }

    #[test]
    fn payloads_are_kept_apart_from_records_and_go_with_them() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        let mut a = inv("a", None);
        let body: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
        if let Some(Payload::Http { body: b, .. }) = a.payload.as_mut() {
            *b = body.clone();
        }
        s.insert(&a, false, None).unwrap();
        let stored = s.get("a").unwrap().unwrap();
        assert!(
            stored.payload.is_none(),
            "records are read without their payload"
        );
        let t = s.t().unwrap();
        let raw = s
            .changes
            .get(&t.delivery, &record_key("a"))
            .unwrap()
            .unwrap();
        assert!(raw.len() < 1000, "the record is small: {} bytes", raw.len());
        // A state change leaves the payload alone.
        let mut retry = stored.clone();
        retry.attempts = 1;
        retry.due_ms = Some(99);
        s.put(&retry).unwrap();
        match s.payload("a").unwrap() {
            Some(Payload::Http { body: b, .. }) => assert_eq!(b, body),
            other => panic!("{other:?}"),
        }
        crate::store::Store::flush(&s).unwrap();
        assert!(!s.unflushed(), "a durable flush leaves nothing in memory");
        assert!(s.remove("a").unwrap());
        assert!(s.unflushed(), "the removal waits for the next flush");
        assert!(s.payload("a").unwrap().is_none());
        // Its payload file stays until the removal is durable: a crash before that brings the
        // record back, and it needs its payload.
        assert!(s.payload_file_of("a").is_some());
        assert!(s
            .changes
            .get(&t.delivery, &payload_key("a"))
            .unwrap()
            .is_none());
        crate::store::Store::flush(&s).unwrap();
        assert!(t.delivery.get(payload_key("a")).unwrap().is_none());
        assert!(
            s.payload_file_of("a").is_none(),
            "gone with the durable removal"
        );

        // A record from before payloads had keys of their own is moved apart on open.
        // (Its payload stays: it is pending.)
        let legacy = inv("b", None);
        let t = s.t().unwrap();
        t.delivery
            .insert(record_key("b"), serde_json::to_vec(&legacy).unwrap())
            .unwrap();
        t.delivery.insert(b"v", &[2u8][..]).unwrap();
        drop(t);
        s.upgrade_delivery().unwrap();
        assert!(s.get("b").unwrap().unwrap().payload.is_none());
        assert_eq!(s.payload("b").unwrap(), legacy.payload);
    }
    #[test]
    fn a_backup_reads_each_record_with_its_payload_and_payload_files_wait_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        for id in ["a", "b"] {
            let mut i = inv(id, None);
            if let Some(Payload::Http { body, .. }) = i.payload.as_mut() {
                *body = vec![3; 100_000];
            }
            s.insert(&i, false, None).unwrap();
        }
        crate::store::Store::flush(&s).unwrap();
        let held = s.hold_payload_files();
        let mut done = s.get("a").unwrap().unwrap();
        done.status = Status::Succeeded;
        done.due_ms = None;
        s.put(&done).unwrap();
        crate::store::Store::flush(&s).unwrap();
        assert!(s.payload("a").unwrap().is_none());
        assert!(
            s.payload_file_of("a").is_some(),
            "kept while a reader holds the files"
        );
        let mut keys = Vec::new();
        s.each_invocation(|k, v| {
            keys.push((String::from_utf8_lossy(k).into_owned(), v.len()));
            Ok(())
        })
        .unwrap();
        let names: Vec<&str> = keys.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            ["ia", "ib", "pb"],
            "a finished, b pending with its payload"
        );
        assert!(keys[2].1 > 100_000, "the payload inlined from its file");
        drop(held);
        crate::store::Store::flush(&s).unwrap();
        assert!(s.payload_file_of("a").is_none(), "gone at the next flush");
        assert!(s.payload_file_of("b").is_some());
    }

    #[test]
    fn whether_a_payload_is_large_is_told_from_the_payload_as_the_store_decides() {
        use crate::delivery::record::Header;
        for headers in [0usize, 3, 40] {
            for body in (LARGE_PAYLOAD - 3000..LARGE_PAYLOAD + 10).step_by(7) {
                let p = Payload::Http {
                    method: "POST".into(),
                    path: "/f/\u{1}quoted\"path".into(),
                    headers: (0..headers)
                        .map(|i| Header(format!("x-h{i}"), vec![b'v'; i * 5]))
                        .collect(),
                    body: vec![7; body],
                };
                assert_eq!(
                    large(&p),
                    p.to_stored().len() >= LARGE_PAYLOAD,
                    "{headers} headers, a body of {body} bytes"
                );
            }
        }
    }

    /// An invocation that finished with nothing pending keeps its record and loses its payload
    /// (its file too, once that is durable); a journal replay of its submit does not bring the
    /// payload back. A dead letter and a pending callback keep theirs.
    #[test]
    fn a_finished_invocation_drops_its_payload_and_a_replay_leaves_it_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        let big_body: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
        let submits: Vec<Invocation> = ["small", "big", "dead"]
            .into_iter()
            .map(|id| {
                let mut i = inv(id, None);
                if id == "big" {
                    if let Some(Payload::Http { body, .. }) = i.payload.as_mut() {
                        *body = big_body.clone();
                    }
                }
                i
            })
            .collect();
        for i in &submits {
            s.insert(i, false, None).unwrap();
        }
        crate::store::Store::flush(&s).unwrap();
        assert!(s.payload_file_of("big").is_some());
        let t = s.t().unwrap();
        for i in &submits {
            let mut done = s.get(&i.id).unwrap().unwrap();
            done.status = if i.id == "dead" {
                Status::DeadLettered
            } else {
                Status::Succeeded
            };
            done.due_ms = None;
            done.updated_ms = 5;
            s.put(&done).unwrap();
        }
        assert!(s.payload("small").unwrap().is_none());
        assert!(s.payload("big").unwrap().is_none());
        assert!(
            s.payload("dead").unwrap().is_some(),
            "a dead letter keeps it"
        );
        assert!(
            s.payload_file_of("big").is_some(),
            "the file stays until the removal is durable"
        );
        crate::store::Store::flush(&s).unwrap();
        assert!(s.payload_file_of("big").is_none());
        for id in ["small", "big"] {
            assert!(t.delivery.get(payload_key(id)).unwrap().is_none());
            assert_eq!(s.get(id).unwrap().unwrap().status, Status::Succeeded);
        }
        // A crash before the journal's next generation replays the submits.
        for i in &submits {
            let journaled = if i.id == "big" {
                i.without_payload()
            } else {
                i.clone()
            };
            assert!(!s.restore(&journaled).unwrap(), "{}", i.id);
        }
        assert!(s.payload("small").unwrap().is_none());
        assert!(s.payload("big").unwrap().is_none());
        assert!(s.payload("dead").unwrap().is_some());

        // A new invocation that finishes before the next flush: its payload never reaches sled.
        let quick = inv("quick", None);
        s.insert(&quick, false, None).unwrap();
        let mut done = s.get("quick").unwrap().unwrap();
        done.status = Status::Succeeded;
        done.due_ms = None;
        s.put(&done).unwrap();
        crate::store::Store::flush(&s).unwrap();
        assert!(t.delivery.get(payload_key("quick")).unwrap().is_none());
        assert!(t.delivery.get(record_key("quick")).unwrap().is_some());

        // A crash after the flush that removed a finished invocation's payload key, before its
        // file went: the next start removes the file; a pending invocation's file stays.
        let mut pending = inv("pending", None);
        if let Some(Payload::Http { body, .. }) = pending.payload.as_mut() {
            *body = big_body.clone();
        }
        s.insert(&pending, false, None).unwrap();
        std::fs::write(s.payload_file("big"), b"left by a crash").unwrap();
        assert_eq!(s.remove_orphan_payloads().unwrap(), 1);
        assert!(s.payload_file_of("big").is_none());
        assert!(s.payload_file_of("pending").is_some());
        assert!(s.payload("pending").unwrap().is_some());
    }
}
