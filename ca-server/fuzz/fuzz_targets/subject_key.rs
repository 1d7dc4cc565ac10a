//! Fuzz target: see `moshca_server_fuzz::subject_key`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| moshca_server_fuzz::subject_key(data));
