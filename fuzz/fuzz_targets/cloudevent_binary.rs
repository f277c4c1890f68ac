#![no_main]
//! Fuzz target: see ferry_host::fuzz::cloudevent_binary.

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry_host::fuzz::cloudevent_binary(data));
