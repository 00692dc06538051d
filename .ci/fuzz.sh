#!/usr/bin/env bash
# Runs each warmshard fuzz target for a bounded time (FUZZ_SECONDS, default 60 s each).
#
# Needs a nightly toolchain (cargo-fuzz builds with -Z sanitizer flags). Without one it prints
# why and exits 0: the committed corpus is still replayed on stable by tests/fuzz_corpus.rs.
# A crash found by the fuzzer fails this script (non-zero exit) and leaves the input in
# fuzz/artifacts/<target>/; new corpus entries go to a scratch directory, not into git.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-60}"
targets=(open_get ops_model)

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
for target in "${targets[@]}"; do
    mkdir -p "$scratch/$target"
    echo "fuzz: $target for ${seconds}s"
    log="$scratch/$target.log"
    # The first corpus directory receives new inputs (scratch); the committed seeds are only read.
    if cargo +nightly fuzz run "$target" "$scratch/$target" "fuzz/corpus/$target" -- \
        -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
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
echo "fuzz: all targets ran ${seconds}s without a failure"
