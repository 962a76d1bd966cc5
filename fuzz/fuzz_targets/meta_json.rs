#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wharf::fuzzing::meta_json(data));
