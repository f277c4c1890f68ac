#![no_main]
//! Fuzz target: see ferry_host::fuzz::manifest.

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry_host::fuzz::manifest(data));
