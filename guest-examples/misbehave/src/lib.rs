//! misbehave: an HTTP function that misbehaves on request, to show (and test) that a bad guest
//! fails only its own invocation and never the host.
//!
//! - `.../panic`          traps (a Rust panic becomes a wasm `unreachable`)
//! - `.../spin`           loops forever (stopped by the function's timeout)
//! - `.../alloc?mb=N`     allocates N MiB (fails beyond the function's memory limit)
//! - `.../sleep?ms=N`     waits N ms, then answers like `.../hello`
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

fn respond(out: ResponseOutparam, body: String) {
    let headers = Fields::from_list(&[(
        "content-length".to_string(),
        body.len().to_string().into_bytes(),
    )])
    .expect("static headers are valid");
    let response = OutgoingResponse::new(headers);
    let outgoing = response.body().expect("a new response has a body");
    ResponseOutparam::set(out, Ok(response));
    let stream = outgoing.write().expect("the body stream is taken once");
    stream
        .blocking_write_and_flush(body.as_bytes())
        .expect("writing the response body");
    drop(stream);
    OutgoingBody::finish(outgoing, None).expect("finishing the response body");
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
        } else {
            respond(out, format!("{greeting} from misbehave\n"));
        }
    }
}

wasip2::http::proxy::export!(Misbehave with_types_in wasip2);
