//! What a guest writes to its standard output and error. It never reaches the host's own stdout
//! or stderr (where a guest could forge the host's lines, such as the "serving" line scripts
//! wait for): each complete line becomes a log record of the host, labelled with the function
//! and the stream, and an invocation may write at most [`PER_INVOCATION`] bytes; the rest is
//! dropped and counted.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

/// The most bytes of output one invocation keeps (both streams together).
pub const PER_INVOCATION: usize = 64 << 10;

/// The longest line kept whole; longer ones are split.
const MAX_LINE: usize = 8 << 10;

/// What each line costs against [`PER_INVOCATION`] besides its bytes: a log record is not free,
/// so 64 KiB of empty lines do not become 65,536 records.
const LINE_COST: usize = 128;

/// The output of one invocation, shared by its stdout and stderr.
pub struct GuestOutput {
    function: Arc<str>,
    state: Mutex<State>,
}

struct State {
    left: usize,
    dropped: u64,
    pending: [Vec<u8>; 2],
}

impl GuestOutput {
    /// A sink for one invocation of `function`.
    pub fn new(function: Arc<str>) -> Arc<Self> {
        Arc::new(Self {
            function,
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
        for line in lines {
            if s.left < LINE_COST {
                s.dropped += line.len() as u64 + 1;
                s.left = 0;
                continue;
            }
            s.left -= LINE_COST;
            self.emit(stream, &line);
        }
    }

    fn emit(&self, stream: usize, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        let name = if stream == 0 { "stdout" } else { "stderr" };
        tracing::info!(target: "ferry::guest", function = %self.function, stream = name, "{}", text.trim_end_matches('\r'));
    }
}

impl Drop for GuestOutput {
    fn drop(&mut self) {
        let s = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        let rest = std::mem::take(&mut s.pending);
        let dropped = s.dropped;
        for (stream, line) in rest.iter().enumerate() {
            if !line.is_empty() {
                self.emit(stream, line);
            }
        }
        if dropped > 0 {
            tracing::warn!(target: "ferry::guest", function = %self.function, dropped_bytes = dropped, "the function wrote more than {PER_INVOCATION} bytes of output in one invocation; the rest was dropped");
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
