//! {{name}}: an HTTP function for Ferry. It targets Ferry's `http-function` world, which is the
//! standard `wasi:http/proxy` world, so it gets the request as it arrived and streams its answer.

use wasip2::exports::http::incoming_handler::Guest;
use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

/// What the function answers to a request for `path` (path and query).
pub fn greeting(path: &str) -> String {
    format!("Hello from {{name}}! You asked for {path}\n")
}

struct Function;

impl Guest for Function {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_else(|| "/".to_string());
        // What a function prints goes to its log: `ferry logs {{name}}`.
        println!("request for {path}");
        let body = greeting(&path);
        let headers = Fields::from_list(&[(
            "content-type".to_string(),
            b"text/plain; charset=utf-8".to_vec(),
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
}

wasip2::http::proxy::export!(Function with_types_in wasip2);

#[cfg(test)]
mod tests {
    #[test]
    fn the_greeting_names_the_function_and_the_path() {
        let text = super::greeting("/hello?x=1");
        assert!(text.starts_with("Hello from {{name}}!"), "{text}");
        assert!(text.contains("/hello?x=1"), "{text}");
    }
}
