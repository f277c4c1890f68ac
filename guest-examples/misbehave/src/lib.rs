//! misbehave: an HTTP function that misbehaves on request, to show (and test) that a bad guest
//! fails only its own invocation and never the host.
//!
//! - `.../panic`          traps (a Rust panic becomes a wasm `unreachable`)
//! - `.../spin`           loops forever (stopped by the function's timeout)
//! - `.../alloc?mb=N`     allocates N MiB (fails beyond the function's memory limit)
//! - `.../sleep?ms=N`     waits N ms, then answers like `.../hello`
//! - `.../status?code=N`  answers with status N
//! - `.../flaky?fail=N`   answers 503 while the `ferry-attempt` header is at most N, then 200
//! - `.../fail-unless-fixed`  answers 500 unless the config value FIXED is set
//! - `.../size`           reads the whole request body and answers its length and FNV-1a hash
//! - `.../record`         sends `GET /hit/<ferry-invocation-id>` to the host:port in the config
//!   value RECORD_TO (needs it in `[outbound] allow`), then answers 200
//! - `.../hold`           sends `GET /hit/hold` to RECORD_TO like `.../record` and answers
//!   `<GREETING> from misbehave after hold` once that request is answered:
//!   a test holds the function mid-request for as long as it likes
//! - anything else        answers `<GREETING> from misbehave` (GREETING from `[config]`)
//!
//! Build:  `cargo build --target wasm32-wasip2 --release`   (or `cargo component build --release`)
//! Deploy: `ferry deploy target/wasm32-wasip2/release/misbehave.wasm`

use wasip2::exports::http::incoming_handler::Guest;
use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

struct Misbehave;

fn query_number(path: &str, key: &str) -> u64 {
    path.split_once('?')
        .map(|(_, q)| q)
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// The request body's length and 64-bit FNV-1a hash (of nothing, when it cannot be read).
fn body_digest(request: IncomingRequest) -> (usize, u64) {
    let (mut len, mut hash) = (0, 0xcbf2_9ce4_8422_2325u64);
    let Ok(body) = request.consume() else {
        return (len, hash);
    };
    let Ok(stream) = body.stream() else {
        return (len, hash);
    };
    while let Ok(chunk) = stream.blocking_read(64 * 1024) {
        len += chunk.len();
        for b in chunk {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    (len, hash)
}

fn header(request: &IncomingRequest, name: &str) -> Option<String> {
    request
        .headers()
        .get(name)
        .into_iter()
        .next()
        .map(|v| String::from_utf8_lossy(&v).into_owned())
}

/// Sends `GET /hit/{id}` to `authority` and returns the status.
fn record(authority: &str, id: &str) -> Result<u16, String> {
    use wasip2::http::outgoing_handler;
    use wasip2::http::types::{Method, OutgoingRequest, Scheme};
    let req = OutgoingRequest::new(Fields::new());
    req.set_method(&Method::Get).map_err(|_| "method")?;
    req.set_scheme(Some(&Scheme::Http)).map_err(|_| "scheme")?;
    req.set_authority(Some(authority)).map_err(|_| "authority")?;
    req.set_path_with_query(Some(&format!("/hit/{id}"))).map_err(|_| "path")?;
    let future = outgoing_handler::handle(req, None).map_err(|e| format!("{e:?}"))?;
    future.subscribe().block();
    let response = future
        .get()
        .ok_or("no response")?
        .map_err(|_| "response taken twice")?
        .map_err(|e| format!("{e:?}"))?;
    Ok(response.status())
}

fn respond_status(out: ResponseOutparam, status: u16, body: String) {
    let headers = Fields::from_list(&[(
        "content-length".to_string(),
        body.len().to_string().into_bytes(),
    )])
    .expect("static headers are valid");
    let response = OutgoingResponse::new(headers);
    response.set_status_code(status).expect("a valid status");
    let outgoing = response.body().expect("a new response has a body");
    ResponseOutparam::set(out, Ok(response));
    let stream = outgoing.write().expect("the body stream is taken once");
    stream
        .blocking_write_and_flush(body.as_bytes())
        .expect("writing the response body");
    drop(stream);
    OutgoingBody::finish(outgoing, None).expect("finishing the response body");
}

fn respond(out: ResponseOutparam, body: String) {
    respond_status(out, 200, body);
}

impl Guest for Misbehave {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        let route = path.split('?').next().unwrap_or("");
        let greeting = std::env::var("GREETING").unwrap_or_else(|_| "Hello".to_string());
        if route.ends_with("/panic") {
            panic!("misbehave was asked to panic");
        } else if route.ends_with("/spin") {
            let mut x: u64 = 0;
            loop {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        } else if route.ends_with("/alloc") {
            let mb = query_number(&path, "mb") as usize;
            let mut v: Vec<u8> = Vec::new();
            v.resize(mb << 20, 1);
            let sum: u64 = v.iter().step_by(4096).map(|b| *b as u64).sum();
            respond(out, format!("allocated {mb} MiB ({sum} pages touched)\n"));
        } else if route.ends_with("/sleep") {
            let ms = query_number(&path, "ms");
            std::thread::sleep(std::time::Duration::from_millis(ms));
            respond(out, format!("{greeting} from misbehave after {ms} ms\n"));
        } else if route.ends_with("/status") {
            let code = query_number(&path, "code") as u16;
            respond_status(out, code, format!("status {code} as asked\n"));
        } else if route.ends_with("/flaky") {
            let fail = query_number(&path, "fail");
            let attempt: u64 = header(&request, "ferry-attempt").and_then(|a| a.parse().ok()).unwrap_or(1);
            if attempt <= fail {
                respond_status(out, 503, format!("attempt {attempt} fails on purpose\n"));
            } else {
                respond(out, format!("attempt {attempt} succeeds\n"));
            }
        } else if route.ends_with("/fail-unless-fixed") {
            if std::env::var("FIXED").is_ok() {
                respond(out, "fixed\n".to_string());
            } else {
                respond_status(out, 500, "broken until FIXED is configured\n".to_string());
            }
        } else if route.ends_with("/hold") {
            let to = std::env::var("RECORD_TO").unwrap_or_default();
            match record(&to, "hold") {
                Ok(200) => respond(out, format!("{greeting} from misbehave after hold\n")),
                Ok(status) => respond_status(out, 502, format!("holder answered {status}\n")),
                Err(e) => respond_status(out, 502, format!("holding failed: {e}\n")),
            }
        } else if route.ends_with("/size") {
            let (len, hash) = body_digest(request);
            respond(out, format!("received {len} bytes, fnv1a {hash:016x}\n"));
        } else if route.ends_with("/record") {
            let to = std::env::var("RECORD_TO").unwrap_or_default();
            let id = header(&request, "ferry-invocation-id").unwrap_or_else(|| "none".into());
            match record(&to, &id) {
                Ok(200) => respond(out, format!("recorded {id}\n")),
                Ok(status) => respond_status(out, 502, format!("recorder answered {status}\n")),
                Err(e) => respond_status(out, 502, format!("recording failed: {e}\n")),
            }
        } else {
            respond(out, format!("{greeting} from misbehave\n"));
        }
    }
}

wasip2::http::proxy::export!(Misbehave with_types_in wasip2);
