#![no_main]
//! Fuzz target: see ferry_host::fuzz::async_headers.

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry_host::fuzz::async_headers(data));
