#!/usr/bin/env bash
# Fuzzes the parsers callers and deployers reach, with libFuzzer on stable Rust (coverage
# instrumentation through stable -C flags, no sanitizer), SECONDS per target (default 60).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Targets: manifest cloudevent_binary cloudevent_structured webhook_signature async_headers upload.
# Each starts from fuzz/seeds/<target> and keeps what it learns in fuzz/corpus/<target> (not
# committed). An input that crashes a target is copied to fuzz/regressions/<target>/: commit it
# with the fix; `cargo test` replays every file there (ferry_host::fuzz).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(manifest cloudevent_binary cloudevent_structured webhook_signature async_headers upload)

# Its own target directory: the instrumented build must not evict the normal one.
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$(pwd)/target/fuzz}"
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module \
 -Cllvm-args=-sanitizer-coverage-level=4 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
 -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares \
 -Cdebug-assertions -Coverflow-checks"
# With an explicit --target, RUSTFLAGS reach only the fuzzed code, not build scripts and macros.
triple="$(rustc -vV | sed -n 's/^host: //p')"
(cd fuzz && cargo build --release --bins --target "$triple")
bin="$CARGO_TARGET_DIR/$triple/release"

failed=0
for t in "${targets[@]}"; do
    corpus="fuzz/corpus/$t"
    artifacts="fuzz/artifacts/$t"
    mkdir -p "$corpus" "$artifacts" "fuzz/regressions/$t"
    echo "== $t: ${seconds}s"
    if ! "$bin/$t" "$corpus" "fuzz/seeds/$t" \
        -max_total_time="$seconds" -timeout=20 -rss_limit_mb=4096 -max_len=262144 \
        -artifact_prefix="$artifacts/" -print_final_stats=1 2>&1 | tail -n 25; then
        failed=1
    fi
    for crash in "$artifacts"/crash-* "$artifacts"/timeout-* "$artifacts"/oom-*; do
        [ -e "$crash" ] || continue
        cp "$crash" "fuzz/regressions/$t/"
        echo "!! $t: $(basename "$crash") kept in fuzz/regressions/$t/ (replayed by cargo test)" >&2
        failed=1
    done
done
exit "$failed"
