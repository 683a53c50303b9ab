//! Fuzz target: see `pock_fuzz::npz` for what it does with each input.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pock_fuzz::npz(data));
