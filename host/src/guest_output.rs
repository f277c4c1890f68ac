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

    fn write(&self, stream: usize, buf: &[u8]) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let keep = buf.len().min(s.left);
        s.left -= keep;
        s.dropped += (buf.len() - keep) as u64;
        let pending = &mut s.pending[stream];
        pending.extend_from_slice(&buf[..keep]);
        let mut lines = Vec::new();
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            lines.push(line[..line.len() - 1].to_vec());
        }
        while pending.len() >= MAX_LINE {
            lines.push(pending.drain(..MAX_LINE).collect());
        }
        let mut kept = Vec::with_capacity(lines.len());
        for line in lines {
            if s.left < LINE_COST {
                s.dropped += line.len() as u64 + 1;
                s.left = 0;
                continue;
            }
            s.left -= LINE_COST;
            kept.push((STREAMS[stream], text(&line)));
        }
        drop(s);
        self.keep(kept);
    }

    fn keep(&self, lines: Vec<(&'static str, String)>) {
        if lines.is_empty() {
            return;
        }
        for (stream, line) in &lines {
            tracing::debug!(target: "ferry::guest", function = %self.call.function, invocation = %self.call.id, trace_id = %self.call.trace.trace_id_hex(), stream, "{line}");
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
        let dropped = s.dropped;
        let lines = rest
            .iter()
            .enumerate()
            .filter(|(_, line)| !line.is_empty())
            .map(|(stream, line)| (STREAMS[stream], text(line)))
            .collect();
        self.keep(lines);
        if dropped > 0 {
            self.logs.over_bound(&self.call.function, dropped);
            self.metrics
                .guest_output_dropped(&self.call.function, dropped);
            tracing::warn!(target: "ferry::guest", function = %self.call.function, invocation = %self.call.id, trace_id = %self.call.trace.trace_id_hex(), dropped_bytes = dropped, "the function wrote more than {PER_INVOCATION} bytes of output in one invocation; the rest was dropped");
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
