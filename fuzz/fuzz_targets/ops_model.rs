#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| warmshard_fuzz::ops_model::run(data));
