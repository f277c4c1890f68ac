//! Every `bindgen!` of Ferry in one place, so that each WIT type has exactly one Rust type.
//!
//! HTTP functions use the standard `wasi:http/proxy` bindings of `wasmtime-wasi-http`; event
//! functions use the `ferry:function/event-function` world from the root `wit/` folder, reusing the
//! WASI and wasi:http bindings of `wasmtime-wasi` and `wasmtime-wasi-http` for everything imported.

pub use wasmtime_wasi_http::p2::bindings::ProxyPre;

// Generated from `wit/`, where these types and functions are documented.
#[allow(missing_docs)]
mod generated {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "ferry:function/event-function",
        exports: { default: async },
        require_store_data_send: true,
        additional_derives: [PartialEq],
        with: {
            "wasi:io": wasmtime_wasi::p2::bindings::io,
            "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
            "wasi:random": wasmtime_wasi::p2::bindings::random,
            "wasi:cli": wasmtime_wasi::p2::bindings::cli,
            "wasi:http": wasmtime_wasi_http::p2::bindings::http,
        },
    });
}

pub use generated::exports::ferry::function::handler;
pub use generated::ferry::function::types::{Error as GuestError, Event as GuestEvent};
pub use generated::{EventFunction, EventFunctionPre};

/// The export that makes a component an HTTP function (any 0.2.x version).
pub const HTTP_EXPORT_PREFIX: &str = "wasi:http/incoming-handler@0.2";
/// The export that makes a component an event function.
pub const EVENT_EXPORT: &str = "ferry:function/handler@0.1.0";
