//! Fuzz target: see `moshca_server_fuzz::bearer`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| moshca_server_fuzz::bearer(data));
