//! The polling trigger: schedules (`every` or `cron`) and URL polls.
//!
//! ```toml
//! [[trigger.poll]]
//! every = "30s"                 # or cron = "0 */5 * * * *" (with seconds) / "*/5 * * * *"
//! # timezone = "Europe/Paris"   # cron only; UTC by default
//! # url = "https://example.com/feed.json"   # a URL poll instead of a tick
//! # split = "$.items"           # one event per item of this array …
//! # item_id = "id"              # … not seen before, by this field
//! # catch_up = "one"            # slots missed while the host was down: one | none | all
//! ```
//!
//! Every scheduled time (a *slot*) is fired once: its invocation is submitted store-and-forward
//! with an idempotency key made of the function, the section and the slot, and only then is the
//! slot recorded as fired in the trigger's state record; a crash in between fires the slot again
//! at the next start, and the key makes that a repeat that runs nothing. Slots missed while the
//! host was down follow `catch_up`; slots a running host is late for are all fired, in order.
//!
//! A tick is a `dev.ferry.schedule.tick` CloudEvent (id `<function>/<slot, RFC 3339>`); an HTTP
//! function gets it as a `POST /<function>` with the same JSON. A URL poll GETs the URL with
//! `If-None-Match` / `If-Modified-Since`; a 304 or unchanged content emits nothing; new content
//! becomes one `dev.ferry.poll.content` event, or with `split`, one `dev.ferry.poll.item` event
//! per item not seen before (the seen ids are kept, the newest 10,000). Source errors back off
//! with jitter and show in the state; the loop never ends but with the function or the host.

use std::collections::HashMap;
use std::str::FromStr as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use crate::cloudevents::CloudEvent;
use crate::port::{
    ConfigError, Fetch, FunctionKind, Payload, Runtime, Sections, StateKey, Submission,
};
use crate::{parse_section, DeliveryMode, Shutdown, Trigger, TriggerKind};

/// The polling trigger kind.
pub const KIND: TriggerKind = TriggerKind {
    name: "poll",
    accepts: &[FunctionKind::Http, FunctionKind::Event],
    validate,
    validate_all: |_| Ok(()),
    disabled_hint: "",
};

/// Seen item ids kept per URL poll.
const SEEN_CAP: usize = 10_000;
/// Missed slots fired at most with `catch_up = "all"`.
const CATCH_UP_CAP: usize = 1_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PollSection {
    every: Option<String>,
    cron: Option<String>,
    timezone: Option<String>,
    url: Option<String>,
    split: Option<String>,
    item_id: Option<String>,
    catch_up: Option<String>,
    timeout: Option<String>,
    max_bytes: Option<u64>,
}

/// When a poll fires.
#[derive(Debug, Clone)]
enum When {
    /// Every multiple of this many milliseconds since the Unix epoch.
    Every(u64),
    /// A cron schedule, in a time zone.
    Cron(Box<cron::Schedule>, chrono_tz::Tz),
}

impl When {
    /// The first slot strictly after `t` (ms since the epoch).
    fn after(&self, t: u64) -> Option<u64> {
        match self {
            When::Every(ms) => Some((t / ms + 1) * ms),
            When::Cron(schedule, tz) => {
                let t = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(t as i64)?
                    .with_timezone(tz);
                schedule
                    .after(&t)
                    .next()
                    .map(|next| next.timestamp_millis() as u64)
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CatchUp {
    One,
    None,
    All,
}

/// One `[[trigger.poll]]` section, checked.
#[derive(Debug, Clone)]
struct Poll {
    function: String,
    index: usize,
    when: When,
    url: Option<String>,
    split: Option<Vec<String>>,
    item_id: Option<String>,
    catch_up: CatchUp,
    timeout: Duration,
    max_bytes: u64,
}

fn duration(v: &str) -> Result<Duration, String> {
    humantime::parse_duration(v).map_err(|e| format!("{v:?} is not a duration like \"30s\": {e}"))
}

fn poll(function: &str, index: usize, section: &toml::Table) -> Result<Poll, ConfigError> {
    let s: PollSection = parse_section("poll", index, section)?;
    let at = |key: &str, m: String| ConfigError::at("poll", index, key, m);
    let when = match (&s.every, &s.cron) {
        (Some(every), None) => {
            if s.timezone.is_some() {
                return Err(at("timezone", "`timezone` applies to `cron`".into()));
            }
            let d = duration(every).map_err(|m| at("every", m))?;
            if d < Duration::from_secs(1) {
                return Err(at("every", format!("{every:?} is shorter than 1s")));
            }
            When::Every(d.as_millis() as u64)
        }
        (None, Some(expr)) => {
            // Standard five fields (minute first), or six with seconds first.
            let full = if expr.split_whitespace().count() == 5 {
                format!("0 {expr}")
            } else {
                expr.clone()
            };
            let schedule = cron::Schedule::from_str(&full)
                .map_err(|e| at("cron", format!("{expr:?} is not a cron expression: {e}")))?;
            let tz = match &s.timezone {
                Some(tz) => tz.parse::<chrono_tz::Tz>().map_err(|_| {
                    at(
                        "timezone",
                        format!("{tz:?} is not a time zone like \"Europe/Paris\""),
                    )
                })?,
                None => chrono_tz::UTC,
            };
            When::Cron(Box::new(schedule), tz)
        }
        (Some(_), Some(_)) => return Err(at("every", "give `every` or `cron`, not both".into())),
        (None, None) => {
            return Err(at(
                "every",
                "a poll needs `every = \"30s\"` or `cron = \"*/5 * * * *\"`".into(),
            ))
        }
    };
    if let Some(url) = &s.url {
        let parsed =
            url::Url::parse(url).map_err(|e| at("url", format!("{url:?} is not a URL: {e}")))?;
        if parsed.scheme() != "http" && parsed.scheme() != "https" {
            return Err(at("url", format!("{url:?} must be http or https")));
        }
    }
    let split = match &s.split {
        Some(path) => {
            if s.url.is_none() {
                return Err(at("split", "`split` needs `url`".into()));
            }
            let rest = path
                .strip_prefix("$")
                .ok_or_else(|| at("split", format!("{path:?} is not a path like \"$.items\"")))?;
            Some(
                rest.split('.')
                    .filter(|p| !p.is_empty())
                    .map(str::to_string)
                    .collect(),
            )
        }
        None => None,
    };
    if s.item_id.is_some() && split.is_none() {
        return Err(at("item_id", "`item_id` needs `split`".into()));
    }
    let catch_up = match s.catch_up.as_deref() {
        None | Some("one") => CatchUp::One,
        Some("none") => CatchUp::None,
        Some("all") => CatchUp::All,
        Some(other) => return Err(at("catch_up", format!("{other:?} is not one, none or all"))),
    };
    let timeout = match &s.timeout {
        Some(t) => duration(t).map_err(|m| at("timeout", m))?,
        None => Duration::from_secs(10),
    };
    Ok(Poll {
        function: function.to_string(),
        index,
        when,
        url: s.url,
        split,
        item_id: s.item_id,
        catch_up,
        timeout,
        max_bytes: s.max_bytes.unwrap_or(1 << 20),
    })
}

fn validate(function: &str, sections: &[toml::Table]) -> Result<(), ConfigError> {
    for (i, section) in sections.iter().enumerate() {
        poll(function, i, section)?;
    }
    Ok(())
}

/// What a poll keeps in the store (a trigger state record, key = the section's index).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PollState {
    /// The first slot fired (ms since the epoch).
    #[serde(default)]
    pub first_ms: Option<u64>,
    /// The last slot fired.
    #[serde(default)]
    pub last_ms: Option<u64>,
    /// Slots fired so far.
    #[serde(default)]
    pub fired: u64,
    /// The next slot, when the state was written.
    #[serde(default)]
    pub next_ms: Option<u64>,
    /// What the last fire did.
    #[serde(default)]
    pub last_result: Option<String>,
    /// The last source error, until a poll succeeds.
    #[serde(default)]
    pub last_error: Option<String>,
    /// Source errors in a row.
    #[serde(default)]
    pub errors: u32,
    /// URL polls: the `ETag` of the last content.
    #[serde(default)]
    pub etag: Option<String>,
    /// URL polls: the `Last-Modified` of the last content.
    #[serde(default)]
    pub last_modified: Option<String>,
    /// URL polls without `split`: the sha256 of the last content emitted.
    #[serde(default)]
    pub content_sha256: Option<String>,
    /// URL polls with `split`: item ids already emitted, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seen: Vec<String>,
    /// How many ids `seen` holds (for status pages, which leave the ids out).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub seen_count: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// The polling trigger: one task per `[[trigger.poll]]` section of every deployed function.
pub struct PollTrigger<R> {
    runtime: Arc<R>,
}

impl<R: Runtime> PollTrigger<R> {
    /// The polling trigger for the functions of `runtime`.
    pub fn new(runtime: Arc<R>) -> Self {
        Self { runtime }
    }
}

impl<R: Runtime> Trigger for PollTrigger<R> {
    const KIND: &'static str = "poll";

    async fn run(self, mut shutdown: Shutdown) -> anyhow::Result<()> {
        let mut sections = self.runtime.sections(KIND.name);
        // Per function and section: the section it runs, and its task.
        let mut running: HashMap<(String, usize), (toml::Table, u64, tokio::task::JoinHandle<()>)> =
            HashMap::new();
        loop {
            let all: Arc<[Sections]> = sections.borrow_and_update().clone();
            let mut wanted = HashMap::new();
            for f in all.iter() {
                for (i, section) in f.sections.iter().enumerate() {
                    wanted.insert(
                        (f.function.name.clone(), i),
                        (section.clone(), f.function.version),
                    );
                }
            }
            running.retain(|key, (section, version, task)| {
                let keep = wanted
                    .get(key)
                    .is_some_and(|(s, v)| s == section && v == version);
                if !keep {
                    task.abort();
                }
                keep
            });
            for (key, (section, version)) in wanted {
                if running.contains_key(&key) {
                    continue;
                }
                match poll(&key.0, key.1, &section) {
                    Ok(p) => {
                        let task =
                            tokio::spawn(run_poll(self.runtime.clone(), p, shutdown.clone()));
                        running.insert(key, (section, version, task));
                    }
                    Err(e) => {
                        tracing::error!(function = %key.0, error = %e, "trigger.poll: section skipped")
                    }
                }
            }
            tokio::select! {
                changed = sections.changed() => if changed.is_err() { break },
                () = shutdown.requested() => break,
            }
        }
        for (_, (_, _, task)) in running {
            let _ = task.await;
        }
        Ok(())
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

fn rfc3339(ms: u64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms as i64)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

fn key(p: &Poll) -> StateKey {
    StateKey {
        kind: KIND.name,
        function: p.function.clone(),
        key: p.index.to_string(),
    }
}

fn load<R: Runtime>(runtime: &R, p: &Poll) -> PollState {
    runtime
        .state(&key(p))
        .ok()
        .flatten()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn save<R: Runtime>(runtime: &R, p: &Poll, state: &PollState) -> Result<(), String> {
    let bytes = serde_json::to_vec(state).map_err(|e| e.to_string())?;
    runtime
        .put_state(&key(p), &bytes)
        .map_err(|e| format!("the poll state could not be stored: {e:#}"))
}

/// Sleeps until `at` (ms since the epoch); false when shutdown came first.
async fn sleep_until(at: u64, shutdown: &mut Shutdown) -> bool {
    let wait = Duration::from_millis(at.saturating_sub(now_ms()));
    tokio::select! {
        _ = tokio::time::sleep(wait) => true,
        () = shutdown.requested() => false,
    }
}

/// A running host that falls behind by at most this many slots (a slow source, a short store
/// outage) fires each of them; further behind, `catch_up` decides, as after a restart.
const LATE_LIMIT: usize = 10;

/// The slots after `from` up to `now`, in order; at most a million (a per-second cron over a
/// year is 31 million).
fn slots(when: &When, from: u64, now: u64) -> impl Iterator<Item = u64> + '_ {
    let mut t = from;
    std::iter::from_fn(move || {
        let next = when.after(t).filter(|next| *next <= now)?;
        t = next;
        Some(next)
    })
    .take(1_000_000)
}

/// The latest slot after `from` and at or before `now`.
fn latest(when: &When, from: u64, now: u64) -> Option<u64> {
    match when {
        When::Every(ms) => Some(now / ms * ms).filter(|l| *l > from),
        When::Cron(..) => slots(when, from, now).last(),
    }
}

/// The slots after `from` up to `now`: all of them while there are at most `limit`, else None.
fn late(when: &When, from: u64, now: u64, limit: usize) -> Option<Vec<u64>> {
    let due: Vec<u64> = slots(when, from, now).take(limit + 1).collect();
    (due.len() <= limit).then_some(due)
}

/// What to fire of the slots after `from` up to `now`, as `catch_up` says.
fn catching_up(p: &Poll, from: u64, now: u64) -> Vec<u64> {
    match p.catch_up {
        CatchUp::None => Vec::new(),
        CatchUp::One => latest(&p.when, from, now).into_iter().collect(),
        CatchUp::All => {
            // The latest CATCH_UP_CAP of them.
            let mut all = std::collections::VecDeque::with_capacity(CATCH_UP_CAP);
            for slot in slots(&p.when, from, now) {
                if all.len() == CATCH_UP_CAP {
                    all.pop_front();
                }
                all.push_back(slot);
            }
            all.into()
        }
    }
}

/// One poll's loop: fire each slot as it comes; slots missed while the host was down, or by a
/// running host more than [`LATE_LIMIT`] slots behind, follow `catch_up`.
async fn run_poll<R: Runtime>(runtime: Arc<R>, p: Poll, mut shutdown: Shutdown) {
    let mut state = load(&*runtime, &p);
    // Without a record of a fired slot, nothing was missed: start from now.
    let mut cursor = state.last_ms.unwrap_or_else(now_ms);
    let mut starting = true;
    loop {
        let now = now_ms();
        let due = match late(&p.when, cursor, now, LATE_LIMIT) {
            Some(slots) if !slots.is_empty() && !starting => slots,
            Some(slots) if slots.is_empty() => Vec::new(),
            // Missed while the host was down, or far behind.
            _ => {
                let slots = catching_up(&p, cursor, now);
                tracing::info!(function = %p.function, section = p.index, firing = slots.len(), catch_up = ?p.catch_up, "trigger.poll: catching up on missed slots");
                cursor = cursor.max(now);
                slots
            }
        };
        starting = false;
        let due = if due.is_empty() {
            // Nothing late: wait for the next slot.
            let Some(next) = p.when.after(cursor) else {
                return; // a cron schedule with no future time
            };
            state.next_ms = Some(next);
            if !sleep_until(next, &mut shutdown).await {
                return;
            }
            vec![next]
        } else {
            due
        };
        for slot in due {
            let catch_up = slot < now;
            if !claimed(&*runtime, &p, slot) {
                // Another host of the cluster fires it: show what it recorded.
                cursor = cursor.max(slot);
                state = load(&*runtime, &p);
                state.next_ms = p.when.after(slot);
                continue;
            }
            if !fire_until_done(&*runtime, &p, slot, catch_up, &mut state, &mut shutdown).await {
                return;
            }
            cursor = cursor.max(slot);
        }
    }
}

/// Whether this host fires `slot`: hosts sharing a store claim each slot, and one wins. A claim
/// that cannot be made (the store fails) fires the slot anyway: the submit's idempotency key
/// still makes a second firing of it run nothing.
fn claimed<R: Runtime>(runtime: &R, p: &Poll, slot: u64) -> bool {
    let period = p
        .when
        .after(slot)
        .map_or(0, |next| next.saturating_sub(slot));
    // Longer than any host could still be firing the slot, and bounded (one key per slot).
    let ttl = Duration::from_millis(period.saturating_mul(2))
        .clamp(Duration::from_secs(10), Duration::from_secs(3600));
    let key = StateKey {
        kind: KIND.name,
        function: p.function.clone(),
        key: format!("{}/{slot}", p.index),
    };
    match runtime.claim(&key, ttl) {
        Ok(won) => won,
        Err(e) => {
            tracing::warn!(function = %p.function, section = p.index, error = %format!("{e:#}"), "trigger.poll: cannot claim a slot; firing it");
            true
        }
    }
}

/// Fires one slot, trying again after a source error (backoff with jitter); false when
/// shutdown came first.
async fn fire_until_done<R: Runtime>(
    runtime: &R,
    p: &Poll,
    slot: u64,
    catch_up: bool,
    state: &mut PollState,
    shutdown: &mut Shutdown,
) -> bool {
    loop {
        let kind = if p.url.is_some() { "poll" } else { "schedule" };
        match fire(runtime, p, slot, state).await {
            Ok(result) => {
                runtime.count(kind, &p.function, "ok");
                // Submitted, not yet recorded as fired: a crash here fires the slot again at the
                // next start, and its idempotency key makes that run nothing.
                crate::crashpoint::crashpoint("poll-fired");
                state.last_ms = Some(state.last_ms.unwrap_or(0).max(slot));
                state.first_ms.get_or_insert(slot);
                state.fired += 1;
                state.last_result = Some(result);
                state.last_error = None;
                state.errors = 0;
                state.next_ms = p.when.after(slot);
                tracing::debug!(function = %p.function, section = p.index, slot_ms = slot, catch_up, result = ?state.last_result, "trigger.poll: fired");
                if let Err(e) = save(runtime, p, state) {
                    tracing::error!(function = %p.function, error = %e, "trigger.poll");
                }
                return true;
            }
            Err(e) => {
                runtime.count(kind, &p.function, "failed");
                state.errors += 1;
                state.last_error = Some(e.clone());
                let _ = save(runtime, p, state);
                let delay = crate::backoff(
                    Duration::from_secs(1),
                    Duration::from_secs(300),
                    state.errors,
                );
                let delay = delay.mul_f64(0.5 + fastrand::f64() / 2.0);
                tracing::warn!(function = %p.function, error = %e, retry_in_ms = delay.as_millis() as u64, "trigger.poll: source error");
                if !sleep_until(now_ms() + delay.as_millis() as u64, shutdown).await {
                    return false;
                }
            }
        }
    }
}

/// Fires one slot: submits what it produces; returns what it did, in words.
async fn fire<R: Runtime>(
    runtime: &R,
    p: &Poll,
    slot: u64,
    state: &mut PollState,
) -> Result<String, String> {
    let Some(f) = runtime.function(&p.function) else {
        return Err(format!("function {} is not deployed", p.function));
    };
    let Some(url) = &p.url else {
        let data = serde_json::json!({ "function": p.function, "scheduled": rfc3339(slot) });
        let id = format!("{}/{}", p.function, rfc3339(slot));
        submit(
            runtime,
            f,
            p,
            &id,
            "dev.ferry.schedule.tick",
            &format!("/ferry/poll/{}", p.function),
            "application/json",
            serde_json::to_vec(&data).unwrap_or_default().into(),
            &format!("tick\u{0}{slot}"),
        )
        .await?;
        return Ok(format!("tick {}", rfc3339(slot)));
    };
    let mut headers = Vec::new();
    if let Some(etag) = &state.etag {
        headers.push(("if-none-match".to_string(), etag.clone()));
    }
    if let Some(m) = &state.last_modified {
        headers.push(("if-modified-since".to_string(), m.clone()));
    }
    let fetched = runtime
        .fetch(Fetch {
            url: url.clone(),
            headers,
            timeout: p.timeout,
            max_bytes: p.max_bytes,
        })
        .await?;
    if fetched.status == 304 {
        return Ok("not modified (304)".into());
    }
    if !(200..300).contains(&fetched.status) {
        return Err(format!("GET {url} answered {}", fetched.status));
    }
    let header = |name: &str| {
        fetched
            .headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let content_type = header("content-type").unwrap_or_else(|| "application/octet-stream".into());
    let emitted = match &p.split {
        None => {
            let sha = hex::encode(sha2::Sha256::digest(&fetched.body));
            if state.content_sha256.as_deref() == Some(sha.as_str()) {
                0
            } else {
                submit(
                    runtime,
                    f,
                    p,
                    &sha,
                    "dev.ferry.poll.content",
                    url,
                    &content_type,
                    fetched.body.clone(),
                    &format!("content\u{0}{sha}"),
                )
                .await?;
                state.content_sha256 = Some(sha);
                1
            }
        }
        Some(path) => {
            let doc: serde_json::Value = serde_json::from_slice(&fetched.body)
                .map_err(|e| format!("{url} did not answer JSON: {e}"))?;
            let mut at = &doc;
            for key in path {
                at = at.get(key).ok_or_else(|| {
                    format!(
                        "{url}: no ${} in the answer",
                        path.iter().map(|k| format!(".{k}")).collect::<String>()
                    )
                })?;
            }
            let items = at
                .as_array()
                .ok_or_else(|| format!("{url}: the split path is not an array"))?;
            let (mut n, mut skipped) = (0, 0);
            for item in items {
                let id = match &p.item_id {
                    Some(field) => match item.get(field) {
                        Some(serde_json::Value::String(s)) if !s.is_empty() => s.clone(),
                        Some(v @ serde_json::Value::Number(_)) => v.to_string(),
                        // One bad item must not hold up the others.
                        _ => {
                            skipped += 1;
                            continue;
                        }
                    },
                    None => hex::encode(sha2::Sha256::digest(item.to_string().as_bytes())),
                };
                if state.seen.contains(&id) {
                    continue;
                }
                let body = Bytes::from(serde_json::to_vec(item).unwrap_or_default());
                submit(
                    runtime,
                    f.clone(),
                    p,
                    &id,
                    "dev.ferry.poll.item",
                    url,
                    "application/json",
                    body,
                    &format!("item\u{0}{id}"),
                )
                .await?;
                state.seen.push(id);
                if state.seen.len() > SEEN_CAP {
                    let extra = state.seen.len() - SEEN_CAP;
                    state.seen.drain(..extra);
                }
                n += 1;
            }
            if skipped > 0 {
                tracing::warn!(function = %p.function, url = %url, skipped, "trigger.poll: items without an id were skipped");
            }
            n
        }
    };
    state.etag = header("etag");
    state.last_modified = header("last-modified");
    Ok(format!("{emitted} new event(s) from {url}"))
}

/// Submits one event (or, for an HTTP function, a `POST /<function>` with the same data)
/// store-and-forward, under an idempotency key of the poll and `what`.
#[allow(clippy::too_many_arguments)]
async fn submit<R: Runtime>(
    runtime: &R,
    f: R::Function,
    p: &Poll,
    id: &str,
    ty: &str,
    source: &str,
    content_type: &str,
    data: Bytes,
    what: &str,
) -> Result<(), String> {
    let payload = match R::info(&f).kind {
        FunctionKind::Http => Payload::Http {
            method: "POST".into(),
            path: format!("/{}", p.function),
            headers: vec![
                // The component model's HTTP world needs an authority.
                ("host".into(), b"localhost".to_vec()),
                ("content-type".into(), content_type.as_bytes().to_vec()),
                ("ferry-poll-event-id".into(), id.as_bytes().to_vec()),
            ],
            body: data,
        },
        FunctionKind::Event => {
            let mut event = CloudEvent::new(id, source, ty).map_err(|e| e.to_string())?;
            event.datacontenttype = Some(content_type.to_string());
            event.data = (!data.is_empty()).then_some(data);
            event.validate().map_err(|e| e.to_string())?;
            Payload::Event(event)
        }
    };
    runtime
        .submit(
            f,
            Submission {
                mode: Some(DeliveryMode::StoreAndForward),
                callback_url: None,
                idempotency_key: Some(format!("poll\u{0}{}\u{0}{what}", p.index)),
                payload,
                trigger: if p.url.is_some() { "poll" } else { "schedule" },
            },
        )
        .await
        .map(|accepted| {
            tracing::debug!(function = %p.function, invocation_id = %accepted.id, new = accepted.new, "trigger.poll: submitted");
        })
        .map_err(|e| format!("the invocation could not be submitted: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::port::section_of as section;

    #[test]
    fn sections_are_checked_naming_the_key() {
        assert!(validate("f", &[section(&[("every", "30s")])]).is_ok());
        assert!(validate(
            "f",
            &[section(&[
                ("cron", "*/5 * * * *"),
                ("timezone", "Europe/Paris")
            ])]
        )
        .is_ok());
        for (bad, key) in [
            (section(&[]), "every"),
            (section(&[("every", "soon")]), "every"),
            (section(&[("every", "100ms")]), "every"),
            (section(&[("cron", "61 * * * *")]), "cron"),
            (
                section(&[("cron", "* * * * *"), ("timezone", "Mars/Olympus")]),
                "timezone",
            ),
            (section(&[("every", "1s"), ("url", "ftp://x")]), "url"),
            (section(&[("every", "1s"), ("split", "$.items")]), "split"),
            (
                section(&[("every", "1s"), ("catch_up", "some")]),
                "catch_up",
            ),
            (section(&[("every", "1s"), ("evry", "1s")]), "evry"),
        ] {
            let e = validate("f", &[bad]).unwrap_err().to_string();
            assert!(e.contains(key), "{key}: {e}");
        }
    }

    #[test]
    fn slots_are_aligned_and_cron_follows_its_time_zone() {
        let every = When::Every(30_000);
        assert_eq!(every.after(0), Some(30_000));
        assert_eq!(every.after(29_999), Some(30_000));
        assert_eq!(every.after(30_000), Some(60_000));
        let p = poll(
            "f",
            0,
            &section(&[("cron", "0 9 * * *"), ("timezone", "Europe/Paris")]),
        )
        .unwrap();
        // 2026-01-15T00:00:00Z: the next 09:00 in Paris (UTC+1 in winter) is 08:00 UTC.
        let next = p.when.after(1_768_435_200_000).unwrap();
        assert_eq!(rfc3339(next), "2026-01-15T08:00:00.000Z");
    }
}
