//! The functions' own logs: what guests write to stdout and stderr, line by line, with the time,
//! the invocation and the stream. Each function keeps its newest lines up to a byte bound
//! (`ferry serve --log-buffer`), oldest dropped first; lines are numbered across the host so a
//! reader can follow from where it stopped (`ferry logs -f`). Kept in memory: a restart starts
//! empty (operators who need history ship the admin route's output, or the host log with
//! `FERRY_LOG=ferry::guest=debug`, to their log system).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde::Serialize;

/// What a line costs against the bound besides its text: its record, and its slot in the queue.
const LINE_OVERHEAD: usize = std::mem::size_of::<LogLine>() + 16;

/// One line a guest wrote.
#[derive(Debug, Clone, Serialize)]
pub struct LogLine {
    /// Host-wide line number; a reader asks for the lines after the last one it saw.
    pub seq: u64,
    /// When it was written: milliseconds since the epoch, shown as `time` (RFC 3339, UTC).
    #[serde(rename = "time", serialize_with = "as_rfc3339")]
    pub at_ms: u64,
    /// The invocation that wrote it.
    #[serde(serialize_with = "as_str")]
    pub invocation: Arc<str>,
    /// `stdout` or `stderr`.
    pub stream: &'static str,
    /// The line, without its newline (invalid UTF-8 replaced).
    pub text: String,
}

fn as_rfc3339<S: serde::Serializer>(ms: &u64, to: S) -> Result<S::Ok, S::Error> {
    to.serialize_str(&crate::delivery::record::rfc3339(*ms))
}

fn as_str<S: serde::Serializer>(s: &Arc<str>, to: S) -> Result<S::Ok, S::Error> {
    to.serialize_str(s)
}

#[derive(Default)]
struct FunctionLog {
    lines: VecDeque<LogLine>,
    bytes: usize,
    /// Lines dropped to make room (oldest first), and lines an invocation wrote over its bound.
    evicted_lines: u64,
    over_bound_bytes: u64,
}

/// How many lines and bytes a function's log has lost.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Dropped {
    /// The oldest lines dropped to make room for newer ones.
    pub evicted_lines: u64,
    /// Bytes that invocations wrote beyond their own bound (never stored).
    pub over_invocation_bound_bytes: u64,
}

/// What a reader asks for.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// Only lines numbered above this.
    pub after: Option<u64>,
    /// Only lines written at or after this time (ms since the epoch).
    pub since_ms: Option<u64>,
    /// Only this invocation's lines.
    pub invocation: Option<String>,
    /// At most this many (the newest of them when `after` is not given, else the oldest).
    pub limit: usize,
}

/// The answer: lines oldest first, and the number to ask after next time.
#[derive(Debug, Clone, Serialize)]
pub struct Page {
    /// The lines, oldest first.
    pub lines: Vec<LogLine>,
    /// Ask with `after=next` to get only newer lines.
    pub next: u64,
    /// What this function's log has lost so far.
    pub dropped: Dropped,
}

/// Every function's log.
pub struct Logs {
    per_function: usize,
    inner: Mutex<Inner>,
    newest: tokio::sync::watch::Sender<u64>,
}

#[derive(Default)]
struct Inner {
    seq: u64,
    functions: HashMap<Arc<str>, FunctionLog>,
}

impl Logs {
    /// Logs that keep at most `per_function` bytes for each function.
    pub fn new(per_function: usize) -> Self {
        Self {
            per_function,
            inner: Mutex::new(Inner::default()),
            newest: tokio::sync::watch::channel(0).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds lines of one invocation of `function`; returns how many older lines were dropped to
    /// make room.
    pub fn push(
        &self,
        function: &Arc<str>,
        invocation: &Arc<str>,
        lines: Vec<(&'static str, String)>,
    ) -> u64 {
        if lines.is_empty() {
            return 0;
        }
        let at_ms = crate::delivery::record::now_ms();
        let mut inner = self.lock();
        let mut seq = inner.seq;
        let log = inner.functions.entry(function.clone()).or_default();
        let before = log.evicted_lines;
        for (stream, text) in lines {
            seq += 1;
            log.bytes += text.len() + LINE_OVERHEAD;
            log.lines.push_back(LogLine {
                seq,
                at_ms,
                invocation: invocation.clone(),
                stream,
                text,
            });
            while log.bytes > self.per_function {
                let Some(old) = log.lines.pop_front() else {
                    break;
                };
                log.bytes -= old.text.len() + LINE_OVERHEAD;
                log.evicted_lines += 1;
            }
        }
        let evicted = log.evicted_lines - before;
        inner.seq = seq;
        drop(inner);
        self.newest.send_replace(seq);
        evicted
    }

    /// Counts bytes an invocation of `function` wrote beyond its bound.
    pub fn over_bound(&self, function: &Arc<str>, bytes: u64) {
        self.lock()
            .functions
            .entry(function.clone())
            .or_default()
            .over_bound_bytes += bytes;
    }

    /// The lines of `function` that match `query`. An `after` beyond the newest line number (the
    /// host restarted since the reader's last page) reads from the start.
    pub fn read(&self, function: &str, query: &Query) -> Page {
        let inner = self.lock();
        let after = query.after.map(|a| if a > inner.seq { 0 } else { a });
        let Some(log) = inner.functions.get(function) else {
            // The newest number: a follower then waits for newer lines, rather than being
            // woken again and again by the lines of other functions.
            return Page {
                lines: Vec::new(),
                next: inner.seq,
                dropped: Dropped::default(),
            };
        };
        let matches = |l: &&LogLine| {
            query.since_ms.is_none_or(|s| l.at_ms >= s)
                && query
                    .invocation
                    .as_deref()
                    .is_none_or(|i| &*l.invocation == i)
        };
        let limit = query.limit.max(1);
        let lines: Vec<LogLine> = if let Some(after) = after {
            // Lines are in number order: start right after `after`.
            let from = log.lines.partition_point(|l| l.seq <= after);
            log.lines
                .range(from..)
                .filter(matches)
                .take(limit)
                .cloned()
                .collect()
        } else {
            let mut newest: Vec<LogLine> = log
                .lines
                .iter()
                .rev()
                .filter(matches)
                .take(limit)
                .cloned()
                .collect();
            newest.reverse();
            newest
        };
        // A page cut short by the limit continues after its last line; otherwise after
        // everything seen so far, so a follower does not scan again what cannot match.
        let next = if lines.len() == limit && after.is_some() {
            lines.last().map_or(inner.seq, |l| l.seq)
        } else {
            inner.seq
        };
        Page {
            lines,
            next,
            dropped: Dropped {
                evicted_lines: log.evicted_lines,
                over_invocation_bound_bytes: log.over_bound_bytes,
            },
        }
    }

    /// Waits until a line numbered above `after` exists anywhere (or `wait` passes).
    pub async fn wait_after(&self, after: u64, wait: std::time::Duration) {
        let mut rx = self.newest.subscribe();
        let _ = tokio::time::timeout(wait, rx.wait_for(|n| *n > after)).await;
    }

    /// Forgets a removed function's lines.
    pub fn remove(&self, function: &str) {
        self.lock().functions.remove(function);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(logs: &Logs, f: &str, inv: &str, texts: &[&str]) -> u64 {
        logs.push(
            &Arc::from(f),
            &Arc::from(inv),
            texts.iter().map(|t| ("stdout", t.to_string())).collect(),
        )
    }

    #[test]
    fn each_function_keeps_its_newest_lines_within_its_bound() {
        let logs = Logs::new(10 * (LINE_OVERHEAD + 4));
        for i in 0..25 {
            push(&logs, "a", &format!("i{i}"), &[&format!("{i:04}")]);
        }
        push(&logs, "b", "x", &["only"]);
        let page = logs.read(
            "a",
            &Query {
                limit: 100,
                ..Query::default()
            },
        );
        let texts: Vec<&str> = page.lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts.first(), Some(&"0015"));
        assert_eq!(texts.len(), 10);
        assert_eq!(page.dropped.evicted_lines, 15);
        assert_eq!(
            logs.read(
                "b",
                &Query {
                    limit: 9,
                    ..Query::default()
                }
            )
            .lines
            .len(),
            1
        );
    }

    #[test]
    fn readers_follow_by_number_and_filter_by_invocation() {
        let logs = Logs::new(1 << 20);
        push(&logs, "f", "one", &["a", "b"]);
        push(&logs, "f", "two", &["c"]);
        let all = logs.read(
            "f",
            &Query {
                limit: 2,
                ..Query::default()
            },
        );
        assert_eq!(
            all.lines.iter().map(|l| &*l.text).collect::<Vec<_>>(),
            ["b", "c"]
        );
        assert_eq!(all.next, 3);
        let two = logs.read(
            "f",
            &Query {
                invocation: Some("two".into()),
                limit: 10,
                ..Query::default()
            },
        );
        assert_eq!(two.lines.len(), 1);
        push(&logs, "f", "three", &["d", "e", "f"]);
        let after = logs.read(
            "f",
            &Query {
                after: Some(3),
                limit: 2,
                ..Query::default()
            },
        );
        assert_eq!(
            after.lines.iter().map(|l| &*l.text).collect::<Vec<_>>(),
            ["d", "e"]
        );
        assert_eq!(after.next, 5);
        // A number from before a restart reads from the start.
        let reset = logs.read(
            "f",
            &Query {
                after: Some(99),
                limit: 10,
                ..Query::default()
            },
        );
        assert_eq!(reset.lines.len(), 6);
        // A function without lines answers with the newest number, so a follower waits for
        // newer lines instead of being woken by every line of another function.
        let quiet = Query {
            after: Some(1),
            limit: 9,
            ..Query::default()
        };
        assert_eq!(logs.read("quiet", &quiet).next, 6);
        logs.remove("f");
        assert!(logs
            .read(
                "f",
                &Query {
                    limit: 9,
                    ..Query::default()
                }
            )
            .lines
            .is_empty());
    }
}
