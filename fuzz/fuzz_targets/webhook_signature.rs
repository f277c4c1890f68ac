#![no_main]
//! Fuzz target: see ferry_host::fuzz::webhook_signature.

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry_host::fuzz::webhook_signature(data));
