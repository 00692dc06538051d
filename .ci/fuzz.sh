#!/usr/bin/env bash
# Runs each warmshard fuzz target for a bounded time: the file-level targets (open_get,
# ops_model: hundreds of executions a second) for FUZZ_SECONDS each (default 60), the in-memory
# ones (format_bytes, format_model: tens of thousands a second) for half that, so the default
# budget is 3 minutes of fuzzing after the build.
#
# Needs a nightly toolchain (cargo-fuzz builds with -Z sanitizer flags). Without one it prints
# why and exits 0: the committed corpus is still replayed on stable by tests/fuzz_corpus.rs.
# A crash found by the fuzzer fails this script (non-zero exit) and leaves the input in
# fuzz/artifacts/<target>/; new corpus entries go to a scratch directory, not into git.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-60}"
half=$(( (seconds + 1) / 2 ))
# target:seconds
targets=("open_get:$seconds" "ops_model:$seconds" "format_bytes:$half" "format_model:$half")

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz: SKIPPED: no nightly toolchain here ('cargo +nightly' fails); cargo-fuzz needs nightly." >&2
    echo "fuzz: install one with 'rustup toolchain install nightly' to run the fuzz targets." >&2
    exit 0
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz: cargo-fuzz not found; installing it (cargo install cargo-fuzz --locked)" >&2
    if ! cargo install cargo-fuzz --locked; then
        echo "fuzz: SKIPPED: could not install cargo-fuzz." >&2
        exit 0
    fi
fi

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
# One build of every target first, so each target's time below is fuzzing only.
cargo +nightly fuzz build
for entry in "${targets[@]}"; do
    target="${entry%%:*}"
    budget="${entry##*:}"
    mkdir -p "$scratch/$target"
    echo "fuzz: $target for ${budget}s"
    log="$scratch/$target.log"
    # The first corpus directory receives new inputs (scratch); the committed seeds are only read.
    if cargo +nightly fuzz run "$target" "$scratch/$target" "fuzz/corpus/$target" -- \
        -max_total_time="$budget" -print_final_stats=1 >"$log" 2>&1; then
        status=0
    else
        status=$?
    fi
    grep -E '^stat::(number_of_executed_units|average_exec_per_sec)|^Done ' "$log" || true
    if [ "$status" -ne 0 ]; then
        # The panic message sits far above libFuzzer's summary: show it first.
        grep -m 3 -A 2 -E "panicked at|ERROR: AddressSanitizer" "$log" >&2 || true
        tail -n 60 "$log" >&2
        echo "fuzz: $target FAILED (exit $status); the input is in fuzz/artifacts/$target/" >&2
        exit "$status"
    fi
done
echo "fuzz: all targets ran their budget (${seconds}s file-level, ${half}s in-memory) without a failure"
