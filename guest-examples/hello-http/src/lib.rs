//! hello-http: an HTTP function for the standard `wasi:http/proxy` world.
//!
//! It answers every request with a greeting, the request path and the `GREETING` config value
//! (set under `[config]` in ferry.toml; Ferry passes config to functions as environment
//! variables).
//!
//! Build:  `cargo build --target wasm32-wasip2 --release`   (or `cargo component build --release`)
//! Deploy: `ferry deploy target/wasm32-wasip2/release/hello_http.wasm --name hello-http`
//!         or `ferry deploy` in this folder, which reads ferry.toml.

use wasip2::exports::http::incoming_handler::Guest;
use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

struct Hello;

impl Guest for Hello {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_else(|| "/".to_string());
        let greeting = std::env::var("GREETING").unwrap_or_else(|_| "Hello".to_string());
        let body = format!("{greeting} from Ferry! path={path}\n");

        let headers = Fields::from_list(&[
            ("content-type".to_string(), b"text/plain; charset=utf-8".to_vec()),
            ("content-length".to_string(), body.len().to_string().into_bytes()),
        ])
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
}

wasip2::http::proxy::export!(Hello with_types_in wasip2);
