//! The fresh process of warmshard's W1 benchmark (`cargo bench --bench peers`, see
//! BENCHMARKS.md); not a usage example.
//!
//! ```text
//! startup_probe none                                   exit at once (the baseline)
//! startup_probe open ENGINE DIR KEY [SLOT VALUE]       open, get KEY, print the ns that took;
//!                                                      exit 0 on a hit, 3 on a miss
//! startup_probe prewarm ENGINE DIR N                   durable prewarm of W1 entries 0..N, then
//!                                                      print "VmHWM_KiB baseline_VmRSS_KiB"
//! ```
//! `SLOT` and `VALUE` are the file offsets the physical limit touches.

#[path = "../benches/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("startup_probe {args:?}: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(args: &[String]) -> common::Result<ExitCode> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["none", ..] => {
            println!("0");
            Ok(ExitCode::SUCCESS)
        }
        ["open", engine, dir, key, rest @ ..] => {
            let mut probe = common::Probe::key(key.as_bytes());
            if let [slot, value] = rest {
                probe.pages = [slot.parse()?, value.parse()?];
            }
            let start = Instant::now();
            let found = common::open_get_by_name(engine, Path::new(dir), &probe)?;
            let elapsed = start.elapsed();
            println!("{}", elapsed.as_nanos());
            match found {
                Some(_) => Ok(ExitCode::SUCCESS),
                None => Ok(ExitCode::from(3)),
            }
        }
        ["prewarm", engine, dir, n] => {
            let baseline = common::proc_status_kib("VmRSS:").unwrap_or(0);
            common::prewarm_by_name(engine, Path::new(dir), n.parse()?)?;
            let peak = common::proc_status_kib("VmHWM:").ok_or("no VmHWM in /proc/self/status")?;
            println!("{peak} {baseline}");
            Ok(ExitCode::SUCCESS)
        }
        _ => Err(
            "usage: startup_probe none | open ENGINE DIR KEY [SLOT VALUE] | prewarm ENGINE DIR N"
                .into(),
        ),
    }
}
