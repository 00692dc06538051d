//! Not API: views into shard files for warmshard's own tests and fuzz targets, which check
//! bytes the public API does not expose. It may change in any release.

use std::ops::Range;

#[path = "fuzz_api.rs"]
pub mod format_api;

/// The byte range of every record a slot of the shard `file` points to (header to end of
/// value), in slot order; or why the file does not parse.
pub fn record_ranges(file: &[u8]) -> Result<Vec<Range<usize>>, crate::Health> {
    let (_, layout) = crate::format::parse(file)?;
    let base = file.as_ptr() as usize;
    Ok(layout
        .slots(file)
        .filter_map(|(_, _, record)| record)
        .map(|record| {
            let start = record.raw.as_ptr() as usize - base;
            start..start + record.raw.len()
        })
        .collect())
}

/// The full structural check of one shard file (`Snapshot::verify` runs it on base and
/// delta).
pub fn verify_file(file: &[u8]) -> Result<(), String> {
    let (_, layout) = crate::format::parse(file).map_err(|health| health.to_string())?;
    layout.verify(file).map_err(|problem| problem.to_string())
}
