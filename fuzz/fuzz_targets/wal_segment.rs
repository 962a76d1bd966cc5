#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wharf::fuzzing::wal_segment(data));
