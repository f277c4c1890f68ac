//! echo-event: an event function (world `ferry:function/event-function`).
//!
//! It answers every CloudEvent with an event of type `<type>.echo`, id `<id>-echo` and source
//! `/ferry/echo-event`, carrying the same data, content type, subject and extensions plus an
//! `echoedfrom` extension naming the original source. An event of type `ferry.test.reject`
//! gets the typed error `invalid-event` instead, `ferry.test.retry` the error `retryable`, and
//! `ferry.test.panic` makes the function trap (for tests of failure handling).
//!
//! Build:  `cargo component build --release`   (or `cargo build --target wasm32-wasip2 --release`)
//! Deploy: `ferry deploy target/wasm32-wasip2/release/echo_event.wasm --name echo-event`

mod bindings {
    // Bindings for Ferry's event world, generated from the root `wit/` folder at compile time.
    wit_bindgen::generate!({
        path: "../../wit",
        world: "ferry:function/event-function",
        generate_all,
    });
}

use bindings::exports::ferry::function::handler::Guest;
use bindings::ferry::function::types::{Error, Event};

struct Echo;

impl Guest for Echo {
    fn handle(event: Event) -> Result<Option<Event>, Error> {
        if event.type_ == "ferry.test.reject" {
            return Err(Error::InvalidEvent(format!(
                "echo-event refuses events of type {}",
                event.type_
            )));
        }
        if event.type_ == "ferry.test.retry" {
            return Err(Error::Retryable("echo-event asks to be retried".to_string()));
        }
        if event.type_ == "ferry.test.panic" {
            panic!("echo-event was asked to panic");
        }
        let mut extensions = event.extensions;
        extensions.push(("echoedfrom".to_string(), event.source));
        Ok(Some(Event {
            id: format!("{}-echo", event.id),
            source: "/ferry/echo-event".to_string(),
            specversion: event.specversion,
            type_: format!("{}.echo", event.type_),
            datacontenttype: event.datacontenttype,
            dataschema: event.dataschema,
            subject: event.subject,
            time: event.time,
            extensions,
            data: event.data,
        }))
    }
}

bindings::export!(Echo with_types_in bindings);
