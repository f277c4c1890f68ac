//! What an operator can do with a damaged store: check it (`ferry store check`), move it aside
//! and start empty (`ferry serve --quarantine`), or move it aside and keep what can still be read
//! (`ferry serve --repair`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sha2::Digest as _;

use super::durable::{self, Damaged};
use super::{SledStore, Store as _, GENERATION_KEY};
use crate::delivery::record::Invocation;
use crate::model::FunctionRecord;

/// What `ferry serve` does when the store turns out to be damaged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// Move the damaged store aside and start with an empty one.
    Quarantine,
    /// Move the damaged store aside and start with every record that can still be read from it.
    Repair,
}

/// What a recovery did, for the operator.
#[derive(Debug)]
pub struct Recovered {
    /// Why the store was refused.
    pub damage: String,
    /// Where the damaged store now is.
    pub moved_to: PathBuf,
    /// With `--repair`: what was kept, per kind of record.
    pub kept: Vec<(&'static str, usize)>,
    /// With `--repair`: records that could not be read and were left behind.
    pub lost: usize,
}

impl SledStore {
    /// Opens the store; when it is damaged, applies `recovery` if given (else fails with
    /// [`Damaged`]).
    pub fn open_or_recover(
        dir: &Path,
        recovery: Option<Recovery>,
    ) -> anyhow::Result<(Self, Option<Recovered>)> {
        let damage = match Self::open(dir) {
            Ok(store) => return Ok((store, None)),
            Err(e) => match (e.downcast::<Damaged>(), recovery) {
                (Ok(damage), Some(recovery)) => (damage, recovery),
                (Ok(damage), None) => return Err(damage.into()),
                (Err(other), _) => return Err(other),
            },
        };
        let (damage, recovery) = damage;
        let moved_to = quarantine(dir)?;
        let mut recovered = Recovered {
            damage: damage.to_string(),
            moved_to: moved_to.clone(),
            kept: Vec::new(),
            lost: 0,
        };
        let store = Self::open(dir).context("starting with an empty store")?;
        if recovery == Recovery::Repair {
            let old = open_retrying(&moved_to)?;
            let (kept, lost) = salvage(&old, &store)?;
            recovered.kept = kept;
            recovered.lost = lost;
            drop(old);
            let journal = moved_to.join(durable::JOURNAL_FILE);
            if journal.exists() {
                std::fs::copy(&journal, dir.join(durable::JOURNAL_FILE))
                    .context("copying the submit journal back")?;
            }
            store.upgrade_delivery_from_scratch()?;
            store.flush()?;
        }
        Ok((store, Some(recovered)))
    }
}

/// Moves the store, its seal and its journal into `quarantine/<time>/` of the data directory.
fn quarantine(dir: &Path) -> anyhow::Result<PathBuf> {
    let stamp = humantime::format_rfc3339_millis(std::time::SystemTime::now())
        .to_string()
        .replace(':', "-");
    let to = dir.join(durable::QUARANTINE_DIR).join(stamp);
    std::fs::create_dir_all(&to).with_context(|| format!("failed to create {}", to.display()))?;
    for name in [
        durable::DB_DIR,
        durable::SEAL_FILE,
        durable::JOURNAL_FILE,
        durable::PAYLOAD_DIR,
    ] {
        let from = dir.join(name);
        if from.exists() {
            std::fs::rename(&from, to.join(name))
                .with_context(|| format!("failed to move {} aside", from.display()))?;
        }
    }
    durable::sync_dir(dir)?;
    durable::sync_dir(&to)?;
    Ok(to)
}

/// sled's flusher thread may hold the store's lock for a moment after the store is dropped.
fn open_retrying(dir: &Path) -> anyhow::Result<SledStore> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match SledStore::open_unchecked(dir) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Reads a tree to its end or to its first unreadable page.
fn entries(tree: &sled::Tree, lost: &mut usize) -> Vec<(sled::IVec, sled::IVec)> {
    let mut out = Vec::new();
    for kv in tree.iter() {
        match kv {
            Ok(kv) => out.push(kv),
            Err(e) => {
                tracing::warn!(error = %e, "a page of the damaged store cannot be read");
                *lost += 1;
                break;
            }
        }
    }
    out
}

/// Copies every readable record of `old` into `new`: components whose bytes match their digest,
/// functions whose record parses and whose component was kept, settings, trigger state, and
/// invocation records (their indexes are derived again). Compiled artifacts are left behind:
/// they are made again from the components.
fn salvage(
    old: &SledStore,
    new: &SledStore,
) -> anyhow::Result<(Vec<(&'static str, usize)>, usize)> {
    let mut lost = 0;
    let mut components = 0;
    for (k, v) in entries(&old.t()?.components, &mut lost) {
        if hex::encode(sha2::Sha256::digest(&v)).as_bytes() == k.as_ref() {
            new.t()?.components.insert(k, v)?;
            components += 1;
        } else {
            lost += 1;
        }
    }
    let mut functions = 0;
    for (k, v) in entries(&old.t()?.functions, &mut lost) {
        match serde_json::from_slice::<FunctionRecord>(&v) {
            Ok(r) if new.t()?.components.contains_key(&r.digest)? => {
                new.t()?.functions.insert(k, v)?;
                functions += 1;
            }
            _ => lost += 1,
        }
    }
    let mut settings = 0;
    for (k, v) in entries(&old.t()?.settings, &mut lost) {
        if k.as_ref() != GENERATION_KEY.as_bytes() {
            new.t()?.settings.insert(k, v)?;
            settings += 1;
        }
    }
    let mut state = 0;
    for (k, v) in entries(&old.t()?.trigger_state, &mut lost) {
        new.t()?.trigger_state.insert(k, v)?;
        state += 1;
    }
    let mut invocations = 0;
    for (k, v) in entries(&old.t()?.delivery, &mut lost) {
        let readable = match k.first() {
            Some(b'i') => serde_json::from_slice::<Invocation>(&v).is_ok(),
            Some(b'p') => {
                // A large payload is in a file of the quarantined store: bring it along.
                let id = String::from_utf8_lossy(&k[1..]).into_owned();
                old.payload_value_ok(&id, &v)
                    && (v.len() > 1
                        || std::fs::copy(old.payload_file(&id), new.payload_file(&id)).is_ok())
            }
            _ => continue, // indexes are derived again
        };
        if !readable {
            lost += 1;
            continue;
        }
        if k.first() == Some(&b'i') {
            invocations += 1;
        }
        new.t()?.delivery.insert(k, v)?;
    }
    Ok((
        vec![
            ("functions", functions),
            ("components", components),
            ("invocations", invocations),
            ("settings", settings),
            ("trigger states", state),
        ],
        lost,
    ))
}

/// What `ferry store check` found.
#[derive(Debug, Default)]
pub struct CheckReport {
    /// Records read, per kind.
    pub counts: Vec<(&'static str, usize)>,
    /// Everything found wrong, in words; empty when the store is sound.
    pub problems: Vec<String>,
    /// Worth knowing, not wrong.
    pub notes: Vec<String>,
}

/// Reads every record of the store in `dir` (which no running host may have open) and reports
/// what is unreadable.
pub fn check(dir: &Path) -> anyhow::Result<CheckReport> {
    if !dir.join(durable::DB_DIR).exists() && !dir.join(durable::SEAL_FILE).exists() {
        anyhow::bail!("there is no store in {}", dir.display());
    }
    let mut report = CheckReport::default();
    let store = match SledStore::open(dir) {
        Ok(s) => s,
        Err(e) => match e.downcast::<Damaged>() {
            Ok(damage) => {
                report.problems.push(damage.to_string());
                open_retrying(dir)?
            }
            Err(other) => return Err(other),
        },
    };
    let mut unreadable = 0;
    let mut count = |tree: &sled::Tree, problems: &mut Vec<String>, what: &str| {
        let list = entries(tree, &mut unreadable);
        if unreadable > 0 {
            problems.push(format!("a page of the {what} cannot be read"));
            unreadable = 0;
        }
        list
    };
    let components = count(&store.t()?.components, &mut report.problems, "components");
    for (k, v) in &components {
        if hex::encode(sha2::Sha256::digest(v)).as_bytes() != k.as_ref() {
            report.problems.push(format!(
                "component {} does not match its digest",
                String::from_utf8_lossy(k)
            ));
        }
    }
    let functions = count(
        &store.t()?.functions,
        &mut report.problems,
        "function records",
    );
    for (k, v) in &functions {
        let name = String::from_utf8_lossy(k);
        match serde_json::from_slice::<FunctionRecord>(v) {
            Ok(r) if !store.t()?.components.contains_key(&r.digest)? => report
                .problems
                .push(format!("the component of function {name} is missing")),
            Ok(_) => {}
            Err(e) => report
                .problems
                .push(format!("the record of function {name} is unreadable: {e}")),
        }
    }
    let delivery = count(&store.t()?.delivery, &mut report.problems, "invocations");
    let mut invocations = 0;
    for (k, v) in delivery.iter().filter(|(k, _)| k.first() == Some(&b'p')) {
        if !store.payload_value_ok(&String::from_utf8_lossy(&k[1..]), v) {
            report.problems.push(format!(
                "the payload of invocation {} is unreadable",
                String::from_utf8_lossy(&k[1..])
            ));
        }
    }
    for (k, v) in delivery.iter().filter(|(k, _)| k.first() == Some(&b'i')) {
        invocations += 1;
        if let Err(e) = serde_json::from_slice::<Invocation>(v) {
            report.problems.push(format!(
                "invocation {} is unreadable: {e}",
                String::from_utf8_lossy(&k[1..])
            ));
        }
    }
    let artifacts = count(
        &store.t()?.artifacts,
        &mut report.problems,
        "compiled artifacts",
    );
    let settings = count(&store.t()?.settings, &mut report.problems, "settings");
    let state = count(
        &store.t()?.trigger_state,
        &mut report.problems,
        "trigger states",
    );
    let journal = crate::delivery::journal::inspect(&dir.join(durable::JOURNAL_FILE))?;
    if journal.skipped_bytes > 0 {
        report.problems.push(format!(
            "the submit journal holds {} corrupt bytes with whole records after them (the host keeps every whole record)",
            journal.skipped_bytes
        ));
    }
    if journal.earlier_format {
        report.notes.push(
            "the submit journal is in an earlier version's format (the next start replays it and rewrites it)".into(),
        );
    }
    report.counts = vec![
        ("functions", functions.len()),
        ("components", components.len()),
        ("compiled artifacts", artifacts.len()),
        ("invocations", invocations),
        ("settings", settings.len()),
        ("trigger states", state.len()),
        ("journaled submits", journal.records),
    ];
    Ok(report)
}
