//! Fuzz target: see `moshca_server_fuzz::request_message`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| moshca_server_fuzz::request_message(data));
