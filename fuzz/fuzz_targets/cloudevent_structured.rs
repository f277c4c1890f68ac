#![no_main]
//! Fuzz target: see ferry_host::fuzz::cloudevent_structured.

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry_host::fuzz::cloudevent_structured(data));
