#!/usr/bin/env bash
# The long crash loop: kills the real `ferry` process ROUNDS times (default 50) at random points
# (a burst of store-and-forward submits, journal replay right after a restart, a checkpoint, a
# deploy) and checks after each round that the store opens, every submit answered 202 runs and
# every deploy answered 2xx is there. Prints one line per round with its duplicates.
#   scripts/crash-loop.sh [ROUNDS]          FERRY_CRASH_SEED=N repeats a run
# scripts/test.sh runs the same test with 4 rounds.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-50}"
cargo build -p ferry-host --bin ferry
FERRY_CRASH_ROUNDS="$rounds" cargo test -p ferry-tests --test e2e crash_loop:: -- --nocapture
