//! The startup hot path of a shell: look up a function's compiled form in the shard; on a miss,
//! compile it and store the result for the next start.
//!
//! ```text
//! cargo run --example startup_lookup -- [SHARD_PATH]
//! ```
//! Without a path the shard lives in the per-user cache directory. Run it twice: the first run
//! compiles and stores, the second finds everything in the shard.

use std::time::Instant;

use warmshard::{Options, Shard};

/// Stands in for an expensive compilation (parsing, bytecode generation...).
fn compile(source: &str) -> Vec<u8> {
    source.bytes().rev().chain(*b"\0bytecode").collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let started = Instant::now();
    // The producer names the program and its version: a new version ignores old bytecode.
    let options =
        Options::from_env().producer(concat!("example-shell ", env!("CARGO_PKG_VERSION")));
    let shard = match std::env::args_os().nth(1) {
        Some(path) => Shard::open_with(path, options)?,
        None => Shard::open_default("example-autoload", options)?,
    };
    let snapshot = shard.snapshot();
    let opened = started.elapsed();

    let functions = [
        "_git_checkout",
        "_git_commit",
        "_ls_colors",
        "prompt_precmd",
    ];
    let mut compiled = Vec::new();
    for name in functions {
        match snapshot.get(name.as_bytes()) {
            Some(bytecode) => println!(
                "{name}: hit, {} bytes of bytecode, zero-copy",
                bytecode.len()
            ),
            None => {
                let source = format!("function {name} {{ echo {name}; }}");
                compiled.push((name, compile(&source)));
                println!("{name}: miss, compiled");
            }
        }
    }
    if !compiled.is_empty() {
        // One write for all misses: one lock, one new file.
        shard.merge_in(compiled)?;
    }
    println!(
        "opened {} ({}) in {:.1} µs",
        shard.path().display(),
        snapshot.health(),
        opened.as_secs_f64() * 1e6
    );
    Ok(())
}
