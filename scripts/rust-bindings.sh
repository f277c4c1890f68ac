#!/usr/bin/env bash
# Writes host/templates/rust-event/src/world.rs: the Rust bindings of Ferry's `event-function`
# world that `ferry new event` puts in a project, generated from wit/ by wit-bindgen itself (its
# `generate!` macro, asked to write out what it expands to). Run it after changing wit/; a unit
# test (`scaffold::tests::the_rust_event_bindings_are_generated_from_this_wit`) says when to.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
version=0.62.0 # the wit-bindgen the template depends on (host/templates/rust-event/Cargo.toml)
out=host/templates/rust-event/src/world.rs
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

rustup target add wasm32-wasip2
mkdir -p "$work/gen/src"
cat >"$work/gen/Cargo.toml" <<TOML
[package]
name = "gen"
version = "0.1.0"
edition = "2021"

[dependencies]
wit-bindgen = "=$version"

[workspace]
TOML
cat >"$work/gen/src/lib.rs" <<RUST
#![allow(unused_imports)]
wit_bindgen::generate!({
    path: "$root/wit",
    world: "ferry:function/event-function",
    generate_all,
    debug: true,
});
RUST
(cd "$work/gen" && env -u CARGO_TARGET_DIR -u RUSTFLAGS -u CARGO_BUILD_BUILD_DIR \
    cargo check --quiet --release --target wasm32-wasip2 --target-dir "$work/target")
generated=$(find "$work/target" -path '*wit-bindgen-rust-macro-*/out/event-function0.rs' | head -1)
[ -n "$generated" ] || { echo "wit-bindgen wrote no event-function0.rs under $work/target" >&2; exit 1; }
# The hash the unit test compares: wit/world.wit, then every other .wit file in wit/ and
# wit/deps/ by path.
hash=$(cat wit/world.wit $(LC_ALL=C ls -d wit/*.wit wit/deps/*.wit | grep -vx wit/world.wit) |
    sha256sum | cut -d' ' -f1)
{
    echo "// The bindings of Ferry's WIT world \`ferry:function/event-function\` (world.wit and deps/ in"
    echo "// wit/, sha256 $hash), as"
    echo "// wit-bindgen $version's \`generate!({ path: \"wit\", world: \"ferry:function/event-function\","
    echo "// generate_all })\` makes them. Written by \`ferry new event\` (and \`ferry wit --rust\`), so"
    echo "// that a build needs no proc macro: do not edit. (Ferry's scripts/rust-bindings.sh makes it.)"
    echo
    cat "$generated"
} >"$out"
echo "wrote $out ($(wc -l <"$out") lines) from wit/ (sha256 $hash)"
