//! flaky: an event function that fails on purpose, to exercise retries and dead letters.
//!
//! If the event's data contains the marker `FAIL`, it returns the typed error `retryable` (so
//! Ferry redelivers it until `[delivery] max_attempts`, then dead-letters it); if it contains
//! `BROKEN`, it returns `invalid-event` (dead-lettered at once). Otherwise it succeeds and
//! returns no event: with no marker it is a no-op, which the benchmarks use.
//!
//! Build:  `cargo build --target wasm32-wasip2 --release`   (or `cargo component build --release`)
//! Deploy: `ferry deploy target/wasm32-wasip2/release/flaky.wasm`

mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "ferry:function/event-function",
        generate_all,
    });
}

use bindings::exports::ferry::function::handler::Guest;
use bindings::ferry::function::types::{Error, Event};

struct Flaky;

fn contains(data: &[u8], marker: &[u8]) -> bool {
    data.windows(marker.len()).any(|w| w == marker)
}

impl Guest for Flaky {
    fn handle(event: Event) -> Result<Option<Event>, Error> {
        let data = event.data.as_deref().unwrap_or_default();
        if contains(data, b"FAIL") {
            return Err(Error::Retryable(format!("flaky: event {} carries FAIL", event.id)));
        }
        if contains(data, b"BROKEN") {
            return Err(Error::InvalidEvent(format!("flaky: event {} carries BROKEN", event.id)));
        }
        Ok(None)
    }
}

bindings::export!(Flaky with_types_in bindings);
