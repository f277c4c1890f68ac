//! What a guest writes to its standard output and error. It never reaches the host's own stdout,
//! stderr or log (where a guest could forge the host's lines, such as the "serving" line scripts
//! wait for): each complete line goes to the function's log ([`crate::logs`]) with the time, the
//! invocation and the stream, as it is written (`ferry logs -f` sees it at once). An invocation
//! may write at most [`PER_INVOCATION`] bytes; the rest is dropped and counted. With
//! `FERRY_LOG=ferry::guest=debug` the lines are also debug records of the host log.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use crate::call::Call;
use crate::logs::Logs;
use crate::metrics::Metrics;

/// The most bytes of output one invocation keeps (both streams together).
pub const PER_INVOCATION: usize = 64 << 10;

/// The longest line kept whole; longer ones are split.
const MAX_LINE: usize = 8 << 10;

/// What each line costs against [`PER_INVOCATION`] besides its bytes: a log record is not free,
/// so 64 KiB of empty lines do not become 65,536 records.
const LINE_COST: usize = 128;

/// The output of one invocation, shared by its stdout and stderr.
pub struct GuestOutput {
    call: Arc<Call>,
    logs: Arc<Logs>,
    metrics: Arc<Metrics>,
    state: Mutex<State>,
}

struct State {
    left: usize,
    dropped: u64,
    pending: [Vec<u8>; 2],
}

impl State {
    /// Keeps a line if the budget has room for it (its bytes and [`LINE_COST`]); otherwise
    /// counts it (and its newline) as dropped and ends the budget.
    fn charge(&mut self, line: Vec<u8>, newline: bool) -> Option<String> {
        let cost = line.len() + LINE_COST;
        if cost <= self.left {
            self.left -= cost;
            Some(text(&line))
        } else {
            self.dropped += line.len() as u64 + u64::from(newline);
            self.left = 0;
            None
        }
    }
}

const STREAMS: [&str; 2] = ["stdout", "stderr"];

impl GuestOutput {
    /// A sink for the output of the invocation `call`, kept in `logs`.
    pub fn new(call: Arc<Call>, logs: Arc<Logs>, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            call,
            logs,
            metrics,
            state: Mutex::new(State {
                left: PER_INVOCATION,
                dropped: 0,
                pending: [Vec::new(), Vec::new()],
            }),
        })
    }

    /// The guest's stdout (`stream` 0) or stderr (1).
    pub fn stream(self: &Arc<Self>, stream: usize) -> Stream {
        Stream {
            sink: self.clone(),
            stream,
        }
    }

    /// Takes what the guest wrote: complete lines (and pieces of [`MAX_LINE`] bytes of longer
    /// ones) are kept while the invocation's budget lasts, each costing its bytes and
    /// [`LINE_COST`]; the rest is dropped and counted. One pass over `buf`, no shifting.
    fn write(&self, stream: usize, buf: &[u8]) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut kept = Vec::new();
        let mut rest = buf;
        while !rest.is_empty() {
            if s.left < LINE_COST {
                // Out of budget: this and everything after it is dropped.
                s.dropped += rest.len() as u64;
                break;
            }
            let room = MAX_LINE - s.pending[stream].len();
            let window = &rest[..rest.len().min(room)];
            let (piece, newline) = match window.iter().position(|b| *b == b'\n') {
                Some(i) => (&window[..i], true),
                None => (window, false),
            };
            rest = &rest[piece.len() + usize::from(newline)..];
            s.pending[stream].extend_from_slice(piece);
            if newline || s.pending[stream].len() >= MAX_LINE {
                let line = std::mem::take(&mut s.pending[stream]);
                if let Some(line) = s.charge(line, newline) {
                    kept.push((STREAMS[stream], line));
                }
            }
        }
        drop(s);
        self.keep(kept);
    }

    fn keep(&self, lines: Vec<(&'static str, String)>) {
        if lines.is_empty() {
            return;
        }
        for (stream, line) in &lines {
            tracing::debug!(target: "ferry::guest", function = %self.call.function, invocation_id = %self.call.id, trace_id = %self.call.trace.trace_id_hex(), stream, "{line}");
        }
        let evicted = self.logs.push(&self.call.function, &self.call.id, lines);
        if evicted > 0 {
            self.metrics.guest_log_evicted(&self.call.function, evicted);
        }
    }
}

fn text(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(line);
    text.trim_end_matches('\r').to_string()
}

impl Drop for GuestOutput {
    fn drop(&mut self) {
        let s = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        let rest = std::mem::take(&mut s.pending);
        let mut lines = Vec::new();
        for (stream, line) in rest.into_iter().enumerate() {
            if !line.is_empty() {
                if let Some(line) = s.charge(line, false) {
                    lines.push((STREAMS[stream], line));
                }
            }
        }
        let dropped = s.dropped;
        self.keep(lines);
        if dropped > 0 {
            self.logs.over_bound(&self.call.function, dropped);
            self.metrics
                .guest_output_dropped(&self.call.function, dropped);
            tracing::warn!(target: "ferry::guest", function = %self.call.function, invocation_id = %self.call.id, trace_id = %self.call.trace.trace_id_hex(), dropped_bytes = dropped, "the function wrote more than {PER_INVOCATION} bytes of output in one invocation; the rest was dropped");
        }
    }
}

/// One of an invocation's output streams, as WASI sees it.
pub struct Stream {
    sink: Arc<GuestOutput>,
    stream: usize,
}

impl wasmtime_wasi::cli::IsTerminal for Stream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl wasmtime_wasi::cli::StdoutStream for Stream {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(Writer {
            sink: self.sink.clone(),
            stream: self.stream,
        })
    }
}

/// Never blocks the guest: what does not fit is counted and dropped.
struct Writer {
    sink: Arc<GuestOutput>,
    stream: usize,
}

impl tokio::io::AsyncWrite for Writer {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.sink.write(self.stream, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::Query;

    fn sink() -> (Arc<GuestOutput>, Arc<Logs>) {
        let logs = Arc::new(Logs::new(16 << 20));
        let call = Arc::new(Call::new(
            "f".into(),
            crate::trace::TraceContext::start(),
            "http",
        ));
        let out = GuestOutput::new(call, logs.clone(), Arc::new(Metrics::default()));
        (out, logs)
    }

    fn texts(logs: &Logs) -> Vec<String> {
        logs.read(
            "f",
            &Query {
                limit: 10_000,
                ..Query::default()
            },
        )
        .lines
        .into_iter()
        .map(|l| l.text)
        .collect()
    }

    #[test]
    fn lines_are_kept_while_the_budget_lasts_and_the_rest_is_counted() {
        let (out, logs) = sink();
        // One write of many lines, more than the budget: the lines that fit are kept.
        let line = [b'x'; 1000];
        let mut buf = Vec::new();
        for _ in 0..100 {
            buf.extend_from_slice(&line);
            buf.push(b'\n');
        }
        out.write(0, &buf);
        let kept = texts(&logs).len();
        assert_eq!(kept, PER_INVOCATION / (1000 + LINE_COST));
        drop(out);
        let dropped = logs
            .read(
                "f",
                &Query {
                    limit: 1,
                    ..Query::default()
                },
            )
            .dropped
            .over_invocation_bound_bytes;
        assert_eq!(dropped as usize, buf.len() - kept * 1001);
    }

    #[test]
    fn long_lines_are_split_and_partial_lines_kept_at_the_end() {
        let (out, logs) = sink();
        let mut buf = vec![b'a'; MAX_LINE + 10];
        buf.extend_from_slice(b"\r\nsecond\nthird");
        out.write(1, &buf[..5000]);
        out.write(1, &buf[5000..]);
        out.write(0, b"to stdout\n");
        drop(out);
        let t = texts(&logs);
        assert_eq!(t.len(), 5, "{t:?}");
        assert_eq!(t[0].len(), MAX_LINE);
        assert_eq!(t[1], "a".repeat(10));
        assert_eq!(&t[2..], ["second", "to stdout", "third"]);
    }
}
