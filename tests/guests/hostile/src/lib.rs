//! hostile: an HTTP function that attacks its sandbox on request, for the security tests. Each
//! route must fail only its own invocation, within its limit, while the host stays healthy.
//!
//! - `/loop`             spins forever (the timeout, or the CPU budget, stops it)
//! - `/memory`           allocates 1 MiB at a time until allocation fails
//! - `/recurse`          recurses without end (the wasm stack limit stops it)
//! - `/huge?mb=N`        answers with an N MiB body
//! - `/endless`          answers 200 and then writes body chunks forever
//! - `/panic`            panics
//! - `/half`             answers 200, writes part of a body, then panics
//! - `/sleep?ms=N`       sleeps N ms, then answers
//! - `/fetch?url=URL`    sends `GET URL`, reads the body and answers `status S bytes N`, or
//!                       502 `error <code>`
//! - `/fetch-many?n=N&url=URL` sends N requests and answers `sent=S denied=D`
//! - `/print?mb=N`       prints N MiB to standard output and N MiB to standard error
//! - `/socket?port=P`    opens a raw TCP connection to 127.0.0.1:P (wasi:sockets)
//! - `/lookup?name=N`    resolves N (wasi:sockets ip-name-lookup)
//! - `/alloc?mb=N&ms=T&hold=URL` allocates N MiB, holds it T ms (and until `GET URL` is
//!                       answered, when given), then answers
//! - `/echo`             reads the request body and answers `read N bytes` (also when the body
//!                       fails midway, like a careless guest)
//! - `/env?name=NAME`    answers with the value of the environment variable NAME
//! - `/header?name=NAME` answers with the value of the request header NAME (empty when absent)
//!                       and prints `header NAME=VALUE` to standard output
//! - `/snoop?token=T`    counts the non-zero bytes of a 1 MiB static buffer, then writes T at
//!                       the start of every 8 KiB of it (128 separate pages), and answers
//!                       `dirty N`: an instance that starts clean finds 0
//! - anything else       answers `ok`

use wasip2::exports::http::incoming_handler::Guest;
use wasip2::http::types::{
    ErrorCode, Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

struct Hostile;

/// What `/snoop` reads and scribbles on: zero in the module, so anything else an instance finds
/// there was left by another.
static SCRATCH: std::sync::Mutex<[u8; 1 << 20]> = std::sync::Mutex::new([0; 1 << 20]);

fn query<'a>(path: &'a str, key: &str) -> Option<&'a str> {
    path.split_once('?')?
        .1
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

fn number(path: &str, key: &str) -> u64 {
    query(path, key).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// Starts a response with `status` and returns its body, for the caller to write.
fn start(out: ResponseOutparam, status: u16) -> OutgoingBody {
    let response = OutgoingResponse::new(Fields::new());
    response.set_status_code(status).expect("a valid status");
    let body = response.body().expect("a new response has a body");
    ResponseOutparam::set(out, Ok(response));
    body
}

fn respond(out: ResponseOutparam, status: u16, text: &str) {
    let body = start(out, status);
    {
        let stream = body.write().expect("the body stream is taken once");
        stream
            .blocking_write_and_flush(text.as_bytes())
            .expect("writing the body");
    }
    OutgoingBody::finish(body, None).expect("finishing the body");
}

/// Writes `chunk` `times` times (forever when None).
fn stream(out: ResponseOutparam, chunk: &[u8], times: Option<u64>) {
    let body = start(out, 200);
    {
        let stream = body.write().expect("the body stream is taken once");
        let mut n = 0;
        while times.is_none_or(|t| n < t) {
            // blocking-write-and-flush takes at most 4096 bytes at a time.
            for piece in chunk.chunks(4096) {
                if stream.blocking_write_and_flush(piece).is_err() {
                    return;
                }
            }
            n += 1;
        }
    }
    OutgoingBody::finish(body, None).expect("finishing the body");
}

/// `GET url`, reading the whole response body: the status and the body's size, or the error
/// code the host gave (for the request, or while reading the body).
fn fetch(url: &str) -> Result<(u16, u64), ErrorCode> {
    use wasip2::http::outgoing_handler;
    use wasip2::http::types::{IncomingBody, Method, OutgoingRequest, Scheme};
    use wasip2::io::streams::StreamError;
    let (scheme, rest) = url.split_once("://").unwrap_or(("http", url));
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let req = OutgoingRequest::new(Fields::new());
    req.set_method(&Method::Get).expect("GET");
    req.set_scheme(Some(&if scheme == "https" {
        Scheme::Https
    } else {
        Scheme::Http
    }))
    .expect("a scheme");
    req.set_authority(Some(authority)).expect("an authority");
    req.set_path_with_query(Some(path)).expect("a path");
    let future = outgoing_handler::handle(req, None)?;
    future.subscribe().block();
    let response = future
        .get()
        .expect("ready after block")
        .expect("taken once")?;
    let status = response.status();
    let body = response.consume().expect("the body is taken once");
    let mut size = 0u64;
    {
        let stream = body.stream().expect("the stream is taken once");
        loop {
            match stream.blocking_read(64 * 1024) {
                Ok(chunk) => size += chunk.len() as u64,
                Err(StreamError::Closed) => break,
                Err(StreamError::LastOperationFailed(e)) => {
                    return Err(wasip2::http::types::http_error_code(&e)
                        .unwrap_or(ErrorCode::InternalError(Some(e.to_debug_string()))));
                }
            }
        }
    }
    let _ = IncomingBody::finish(body);
    Ok((status, size))
}

/// A raw TCP connection to 127.0.0.1:`port` through wasi:sockets.
fn tcp_connect(port: u16) -> Result<(), wasip2::sockets::network::ErrorCode> {
    use wasip2::sockets::network::{IpAddressFamily, IpSocketAddress, Ipv4SocketAddress};
    let net = wasip2::sockets::instance_network::instance_network();
    let sock = wasip2::sockets::tcp_create_socket::create_tcp_socket(IpAddressFamily::Ipv4)?;
    sock.start_connect(
        &net,
        IpSocketAddress::Ipv4(Ipv4SocketAddress {
            port,
            address: (127, 0, 0, 1),
        }),
    )?;
    sock.subscribe().block();
    sock.finish_connect().map(drop)
}

/// A name lookup through wasi:sockets.
fn lookup(name: &str) -> Result<usize, wasip2::sockets::network::ErrorCode> {
    let net = wasip2::sockets::instance_network::instance_network();
    let stream = wasip2::sockets::ip_name_lookup::resolve_addresses(&net, name)?;
    let mut n = 0;
    loop {
        match stream.resolve_next_address() {
            Ok(Some(_)) => n += 1,
            Ok(None) => return Ok(n),
            Err(wasip2::sockets::network::ErrorCode::WouldBlock) => stream.subscribe().block(),
            Err(e) => return Err(e),
        }
    }
}

/// Recursion without end on the WebAssembly call stack (no frames in linear memory).
fn recurse(depth: u64) -> u64 {
    if std::hint::black_box(depth) == u64::MAX {
        return 0;
    }
    recurse(depth + 1).wrapping_add(depth)
}

impl Guest for Hostile {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        let route = path.split('?').next().unwrap_or("").to_string();
        let route = route.rsplit('/').next().unwrap_or("");
        match route {
            "loop" => {
                let mut x: u64 = 0;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            "memory" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "recurse" => {
                let depth = recurse(0);
                respond(out, 200, &format!("{depth}"));
            }
            "huge" => {
                let chunk = vec![b'x'; 1 << 20];
                stream(out, &chunk, Some(number(&path, "mb")));
            }
            "endless" => stream(out, &[b'y'; 64 * 1024], None),
            "panic" => panic!("hostile was asked to panic"),
            "half" => {
                let body = start(out, 200);
                let stream = body.write().expect("the body stream is taken once");
                let _ = stream.blocking_write_and_flush(b"the first half");
                panic!("hostile was asked to fail after its response head");
            }
            "sleep" => {
                std::thread::sleep(std::time::Duration::from_millis(number(&path, "ms")));
                respond(out, 200, "slept");
            }
            "fetch" => {
                let url = query(&path, "url").unwrap_or_default();
                match fetch(url) {
                    Ok((status, size)) => {
                        respond(out, 200, &format!("status {status} bytes {size}"))
                    }
                    Err(e) => respond(out, 502, &format!("error {e:?}")),
                }
            }
            "fetch-many" => {
                let url = query(&path, "url").unwrap_or_default();
                let (mut sent, mut denied) = (0, 0);
                for _ in 0..number(&path, "n") {
                    match fetch(url) {
                        Err(ErrorCode::HttpRequestDenied) => denied += 1,
                        _ => sent += 1,
                    }
                }
                respond(out, 200, &format!("sent={sent} denied={denied}"));
            }
            "header" => {
                let name = query(&path, "name").unwrap_or("").to_string();
                let values = request.headers().get(&name);
                let value = values
                    .first()
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default();
                println!("header {name}={value}");
                respond(out, 200, &value);
            }
            "print" => {
                use std::io::Write as _;
                let line = [b'z'; 1023];
                let mut stdout = std::io::stdout();
                let mut stderr = std::io::stderr();
                for _ in 0..number(&path, "mb") * 1024 {
                    let _ = stdout
                        .write_all(&line)
                        .and_then(|()| stdout.write_all(b"\n"));
                    let _ = stderr
                        .write_all(&line)
                        .and_then(|()| stderr.write_all(b"\n"));
                }
                // A line that looks like the host's own, to show it cannot be forged.
                println!(
                    "ferry: serving functions on http://evil and the admin API on http://evil"
                );
                respond(out, 200, "printed");
            }
            "socket" => {
                let port = number(&path, "port") as u16;
                respond(out, 200, &format!("{:?}", tcp_connect(port)));
            }
            "lookup" => {
                let name = query(&path, "name").unwrap_or("localhost");
                respond(out, 200, &format!("{:?}", lookup(name)));
            }
            "alloc" => {
                let mut v = vec![0u8; (number(&path, "mb") as usize) << 20];
                for i in (0..v.len()).step_by(4096) {
                    v[i] = 1;
                }
                std::thread::sleep(std::time::Duration::from_millis(number(&path, "ms")));
                // Holds the memory until a test's receiver answers, when it names one.
                if let Some(url) = query(&path, "hold") {
                    let _ = fetch(url);
                }
                respond(out, 200, &format!("held {} MiB", std::hint::black_box(&v).len() >> 20));
            }
            "echo" => {
                let body = request.consume().expect("the body is taken once");
                let mut size = 0usize;
                {
                    let stream = body.stream().expect("the stream is taken once");
                    // Like a careless guest, a failed read counts as the end of the body.
                    while let Ok(chunk) = stream.blocking_read(64 * 1024) {
                        size += chunk.len();
                    }
                }
                respond(out, 200, &format!("read {size} bytes"));
            }
            "snoop" => {
                let token = query(&path, "token").unwrap_or("snoop").as_bytes();
                let token = &token[..token.len().min(64)];
                let mut scratch = SCRATCH.lock().unwrap_or_else(|e| e.into_inner());
                let dirty = scratch.iter().filter(|&&b| b != 0).count();
                for page in scratch.chunks_mut(8192) {
                    page[..token.len()].copy_from_slice(token);
                }
                respond(out, 200, &format!("dirty {dirty}"));
            }
            "env" => {
                let name = query(&path, "name").unwrap_or_default();
                respond(out, 200, &std::env::var(name).unwrap_or_default());
            }
            _ => respond(out, 200, "ok"),
        }
    }
}

wasip2::http::proxy::export!(Hostile with_types_in wasip2);
