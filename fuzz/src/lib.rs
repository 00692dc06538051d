//! The logic of warmshard's fuzz targets, as plain functions.
//!
//! Each module is also compiled into `tests/fuzz_corpus.rs` (through `#[path]`), so stable
//! `cargo test` replays the committed seed corpus with exactly the checks the fuzzer runs.

pub mod format_api;
pub mod format_bytes;
pub mod format_model;
pub mod open_get;
pub mod ops_model;
