//! Fuzz target: see `moshca_server_fuzz::krl`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| moshca_server_fuzz::krl(data));
