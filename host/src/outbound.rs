//! Guest outbound HTTP (`wasi:http/outgoing-handler`), sent by Ferry's own client so that every
//! request passes the same checks: the function's `[outbound] allow` list (exact names and
//! `*.example.com` wildcards), a per-invocation request count, and the address guard callbacks
//! use — the name is resolved once, every address is vetted, and the connection goes to a vetted
//! address, so DNS rebinding cannot slip past. Connect, first-byte and total timeouts and a
//! response size cap bound what one request can hold; redirects are the guest's business (the
//! client never follows one). A refusal reaches the guest as `HTTP-request-denied`, never a trap.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::Scheme;
use http_body::Frame;
use http_body_util::BodyExt as _;
use tokio::net::TcpStream;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody};

use crate::delivery::guard::CallbackGuard;

/// Host-wide settings of guest outbound HTTP (from `ferry serve` flags).
#[derive(Debug, Clone)]
pub struct OutboundOptions {
    /// Hosts (`host` or `host:port`) a guest may reach even at non-public addresses
    /// (`--allow-private-outbound`).
    pub allow_private: Vec<String>,
    /// The longest a connection (with its TLS handshake) may take; a guest may ask for less.
    pub connect_timeout: Duration,
    /// The longest one request may take from send to the last byte of its response; a guest may
    /// ask for less for the first byte and between bytes.
    pub timeout: Duration,
    /// The largest response body a guest may receive, in bytes.
    pub max_response: u64,
}

impl Default for OutboundOptions {
    fn default() -> Self {
        Self {
            allow_private: Vec::new(),
            connect_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(30),
            max_response: 64 << 20,
        }
    }
}

/// What every invocation's outbound requests share: the settings, the address guard (with this
/// host's own listeners, never a target) and the TLS configuration.
pub struct Outbound {
    options: OutboundOptions,
    guard: CallbackGuard,
    tls: tokio_rustls::TlsConnector,
}

impl Outbound {
    /// The client for these settings; `own` are this host's listeners.
    pub fn new(options: OutboundOptions, own: Vec<SocketAddr>) -> anyhow::Result<Self> {
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.into(),
        };
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow::anyhow!("failed to configure TLS for outbound requests: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(Self {
            guard: CallbackGuard::new(options.allow_private.clone(), own)
                .for_policy("outbound requests", "--allow-private-outbound"),
            options,
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
        })
    }
}

/// Whether `host` is on an allow-list of exact names and `*.domain` wildcards (a wildcard
/// matches names below the domain, not the domain itself).
pub fn allowed(allow: &[String], host: &str) -> bool {
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase();
    allow.iter().any(|entry| match entry.strip_prefix("*.") {
        Some(domain) => host
            .strip_suffix(domain)
            .is_some_and(|rest| rest.len() > 1 && rest.ends_with('.')),
        None => entry.eq_ignore_ascii_case(&host),
    })
}

/// The outbound policy of one invocation.
pub struct OutboundPolicy {
    shared: Arc<Outbound>,
    allow: Arc<[String]>,
    /// Requests this invocation may still send (`limits.outbound_requests`).
    remaining: u32,
    call: Arc<crate::call::Call>,
}

impl OutboundPolicy {
    /// The policy of the invocation `call`, which may send `max_requests` requests to the hosts
    /// in `allow`. Its requests carry the invocation's trace context unless the guest set one.
    pub fn new(
        shared: Arc<Outbound>,
        call: Arc<crate::call::Call>,
        allow: Arc<[String]>,
        max_requests: u32,
    ) -> Self {
        Self {
            shared,
            allow,
            remaining: max_requests,
            call,
        }
    }
}

/// The future of a sent request, as `WasiHttpHooks::send_request` returns it.
type Sent = Box<
    dyn Future<
            Output = Result<
                (
                    http::Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), Error>> + Send>,
                ),
                Error,
            >,
        > + Send,
>;

impl wasmtime_wasi_http::WasiHttpHooks for OutboundPolicy {
    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Sent {
        drop(fut);
        let host = request.uri().host().unwrap_or_default().to_string();
        let call = self.call.clone();
        let function = call.function.clone();
        if !request.headers().contains_key("traceparent") {
            call.trace.inject(request.headers_mut());
        }
        // Every request counts, sent or refused, so that refusals cannot flood the log either.
        if self.remaining == 0 {
            return Box::new(async { Err(Error::HttpRequestDenied) });
        }
        self.remaining -= 1;
        if self.remaining == 0 {
            tracing::warn!(function = %function, invocation_id = %call.id, trace_id = %call.trace.trace_id_hex(), "limits.outbound_requests reached: further outbound requests of this invocation are denied");
        }
        if !allowed(&self.allow, &host) {
            tracing::warn!(function = %function, invocation_id = %call.id, trace_id = %call.trace.trace_id_hex(), %host, "outbound request denied: the host is not in [outbound] allow");
            return Box::new(async { Err(Error::HttpRequestDenied) });
        }
        let shared = self.shared.clone();
        Box::new(async move {
            let sent = send(&shared, request, options).await;
            if let Err(e) = &sent {
                tracing::debug!(function = %function, invocation_id = %call.id, trace_id = %call.trace.trace_id_hex(), %host, error = %e, "outbound request failed");
            }
            sent
        })
    }
}

/// Resolves, vets, connects (with TLS for https) and sends one request.
async fn send(
    shared: &Outbound,
    mut req: http::Request<WasiBody>,
    options: Option<RequestOptions>,
) -> Result<
    (
        http::Response<WasiBody>,
        Box<dyn Future<Output = Result<(), Error>> + Send>,
    ),
    Error,
> {
    let opts = &shared.options;
    let deadline = tokio::time::Instant::now() + opts.timeout;
    let capped = |asked: Option<Duration>, cap: Duration| asked.map_or(cap, |a| a.min(cap));
    let connect_timeout = capped(
        options.and_then(|o| o.connect_timeout),
        opts.connect_timeout,
    );
    let first_byte = capped(options.and_then(|o| o.first_byte_timeout), opts.timeout);
    let between_bytes = capped(options.and_then(|o| o.between_bytes_timeout), opts.timeout);

    let uri = req.uri().clone();
    let host = uri.host().ok_or(Error::HttpRequestUriInvalid)?.to_string();
    let tls = uri.scheme() == Some(&Scheme::HTTPS);
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let connected = async {
        let addrs = shared
            .guard
            .resolve(&host, port, connect_timeout)
            .await
            .map_err(|e| {
                tracing::debug!(%host, error = %e, "outbound name lookup failed");
                Error::DestinationNotFound
            })?;
        if let Err(why) = shared.guard.vet(&host, port, &addrs) {
            tracing::warn!(%host, reason = %why, "outbound request denied");
            return Err(Error::HttpRequestDenied);
        }
        let mut last = Error::ConnectionRefused;
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(s) => return Ok(s),
                Err(e) => last = Error::Connect(e),
            }
        }
        Err(last)
    };
    let stream = tokio::time::timeout(connect_timeout, connected)
        .await
        .map_err(|_| Error::ConnectionTimeout)??;
    let _ = stream.set_nodelay(true);
    let io: Box<dyn Stream> = if tls {
        let name = rustls::pki_types::ServerName::try_from(
            host.trim_start_matches('[').trim_end_matches(']'),
        )
        .map_err(|_| Error::HttpRequestUriInvalid)?
        .to_owned();
        let tls = tokio::time::timeout(connect_timeout, shared.tls.connect(name, stream))
            .await
            .map_err(|_| Error::ConnectionTimeout)?
            .map_err(Error::Tls)?;
        Box::new(tls)
    } else {
        Box::new(stream)
    };
    let (mut sender, conn) = tokio::time::timeout(
        connect_timeout,
        hyper::client::conn::http1::Builder::new()
            .handshake(wasmtime_wasi_http::io::TokioIo::new(io)),
    )
    .await
    .map_err(|_| Error::ConnectionTimeout)??;
    // The connection's I/O runs on its own task, bounded by the request's deadline even if the
    // guest abandons a response that never ends.
    let conn = tokio::spawn(tokio::time::timeout_at(deadline, conn));

    // The request line carries only the path; the authority travels in `Host`.
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    *req.uri_mut() = http::Uri::builder()
        .path_and_query(path)
        .build()
        .map_err(|_| Error::HttpRequestUriInvalid)?;
    let response = tokio::time::timeout(
        first_byte.min(remaining(deadline)),
        sender.send_request(req),
    )
    .await
    .map_err(|_| Error::ConnectionReadTimeout)??;
    let response = response.map(|inner| {
        Capped {
            inner,
            left: opts.max_response,
            cap: opts.max_response,
            between: between_bytes,
            idle: Box::pin(tokio::time::sleep(between_bytes)),
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
        }
        .boxed_unsync()
    });
    let io_done: Box<dyn Future<Output = Result<(), Error>> + Send> = Box::new(async move {
        match conn.await {
            Ok(Ok(Ok(()))) | Err(_) => Ok(()),
            Ok(Ok(Err(e))) => Err(Error::from(e)),
            Ok(Err(_)) => Err(Error::HttpResponseTimeout),
        }
    });
    Ok((response, io_done))
}

fn remaining(deadline: tokio::time::Instant) -> Duration {
    deadline.saturating_duration_since(tokio::time::Instant::now())
}

trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// A response body held to the size cap, the between-bytes timeout and the request's deadline.
struct Capped {
    inner: hyper::body::Incoming,
    left: u64,
    cap: u64,
    between: Duration,
    idle: Pin<Box<tokio::time::Sleep>>,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl http_body::Body for Capped {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    if n > this.left {
                        return Poll::Ready(Some(Err(Error::HttpResponseBodySize(Some(this.cap)))));
                    }
                    this.left -= n;
                }
                let next = tokio::time::Instant::now() + this.between;
                this.idle.as_mut().reset(next);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Error::from(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                if this.deadline.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Some(Err(Error::HttpResponseTimeout)));
                }
                if this.idle.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Some(Err(Error::ConnectionReadTimeout)));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_list_names_and_wildcards() {
        let allow: Vec<String> = vec!["api.example.com".into(), "*.hooks.example.org".into()];
        assert!(allowed(&allow, "api.example.com"));
        assert!(allowed(&allow, "API.Example.com."));
        assert!(allowed(&allow, "a.hooks.example.org"));
        assert!(allowed(&allow, "x.y.hooks.example.org"));
        assert!(
            !allowed(&allow, "hooks.example.org"),
            "a wildcard needs a label"
        );
        assert!(!allowed(&allow, "evilhooks.example.org"));
        assert!(!allowed(&allow, "example.com"));
        assert!(!allowed(&allow, "api.example.com.evil.net"));
        assert!(!allowed(&allow, ""));
        assert!(
            allowed(&["::1".to_string()], "[::1]"),
            "IPv6 literals come in brackets"
        );
    }
}
