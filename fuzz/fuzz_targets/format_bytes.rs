#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| warmshard_fuzz::format_bytes::run(data));
