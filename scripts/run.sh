#!/usr/bin/env bash
# Ferry's main job on a fresh machine: build the host and the example functions (release), start
# `ferry serve` on the embedded sled store, deploy the examples, and print URLs to try.
# Ctrl-C stops the host. FERRY_LISTEN / FERRY_ADMIN_LISTEN / FERRY_DATA_DIR move it elsewhere.
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target add wasm32-wasip2
# The same build scripts/test.sh makes (one build serves both commands).
cargo build --release --workspace --bins
# The examples' ferry.toml files point into guest-examples/target: build there, with what
# tests/build.rs builds them with (no flags meant for the host), so that the tests find them built.
(cd guest-examples && env -u RUSTFLAGS -u CARGO_ENCODED_RUSTFLAGS -u CARGO_BUILD_TARGET \
    -u CARGO_TARGET_DIR -u CARGO_BUILD_BUILD_DIR \
    cargo build --release --target wasm32-wasip2 --target-dir target)

export FERRY_LISTEN="${FERRY_LISTEN:-127.0.0.1:8080}"
export FERRY_ADMIN_LISTEN="${FERRY_ADMIN_LISTEN:-127.0.0.1:8081}"
export FERRY_ADMIN="http://${FERRY_ADMIN_LISTEN}"
ferry="$(pwd)/${CARGO_TARGET_DIR:-target}/release/ferry"
[ -x "$ferry" ] || ferry="${CARGO_TARGET_DIR:-target}/release/ferry"
wasm=guest-examples/target/wasm32-wasip2/release
# The host keeps its admin token in the data directory; the CLI finds it there.
export FERRY_DATA_DIR="${FERRY_DATA_DIR:-$(pwd)/.ferry}"

$ferry serve &
server=$!
# Ctrl-C (or SIGTERM) stops the host and ends the script successfully; any other exit stops it too.
stop() { kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; exit 0; }
trap stop INT TERM
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
    curl -fsS "$FERRY_ADMIN/readyz" >/dev/null 2>&1 && break
    kill -0 $server 2>/dev/null || { echo "ferry serve exited; see the log above" >&2; exit 1; }
    sleep 0.1
done

$ferry deploy "$wasm/hello_http.wasm" --name hello-http
(cd guest-examples/hello-http && "$ferry" deploy)
$ferry deploy "$wasm/echo_event.wasm" --name echo-event
$ferry list

public="http://${FERRY_LISTEN}"
cat <<MSG

Ferry is running. Try:
  curl $public/hello-http/world
  curl $public/greet/you           # hello-http again, deployed from its ferry.toml as "greeter"
  $ferry list
  $ferry status                    # health, triggers, last 5 minutes per function
  $ferry logs hello-http -f        # what a function prints, as it prints it
  curl -i -X POST $public/hello-http/later -H 'Prefer: respond-async'   # then GET the status_url
The ferry binary is $ferry: put it on your PATH with
  cargo install --path host        # or: alias ferry=$ferry
Press Ctrl-C to stop.
MSG
wait "$server"
