#!/usr/bin/env bash
# Coverage-guided fuzzing of what fib-rpc reads from the network: the targets in fuzz/ (cargo-fuzz
# and libFuzzer, on the nightly toolchain), each for SECONDS (default 60), from the committed seeds
# in fuzz/seeds/<target>/.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# What a run finds on the way is kept in target/fuzz-corpus/<target>/ (not committed); a failed
# invariant or a crash leaves its input in fuzz/artifacts/<target>/ and makes the script fail (turn
# the input into a regression test). Each target's memory is bounded (-rss_limit_mb, and
# -malloc_limit_mb for a single allocation). Prints the executions per target. Needs the nightly
# toolchain (rustup's, beside stable); installs cargo-fuzz if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
shift || true
say() { printf 'fuzz.sh: %s\n' "$*" >&2; }

if ! cargo +nightly --version >/dev/null 2>&1; then
    say "the nightly toolchain is missing (rustup toolchain install nightly): cannot fuzz"
    exit 69
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    say "installing cargo-fuzz"
    cargo install cargo-fuzz --locked --quiet
fi

targets=("$@")
if ((${#targets[@]} == 0)); then
    mapfile -t targets < <(cd fuzz && cargo +nightly fuzz list)
fi
# One build for every target; the fuzzing profile is release with debug assertions.
(cd fuzz && cargo +nightly fuzz build --sanitizer none) >&2

failed=0
for target in "${targets[@]}"; do
    corpus="target/fuzz-corpus/$target"
    mkdir -p "$corpus" "fuzz/artifacts/$target"
    log="target/fuzz-corpus/$target.log"
    if (cd fuzz && cargo +nightly fuzz run --sanitizer none "$target" "../$corpus" "seeds/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=512 -malloc_limit_mb=256 -max_len=65536 \
        -print_final_stats=1 >"../$log" 2>&1); then
        executions=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
        printf '%-20s %s executions in %s s, no failure\n' "$target" "$executions" "$seconds"
    else
        failed=1
        printf '%-20s FAILED (log: %s, input: fuzz/artifacts/%s/)\n' "$target" "$log" "$target"
        grep -E 'panicked|ERROR|SUMMARY' "$log" | head -n 5 >&2 || true
    fi
done
exit "$failed"
