#!/usr/bin/env bash
# Runs every check and test, from a fresh machine: installs what is missing,
# fetches the test assets (cached), builds and tests the UI, then fmt,
# clippy and the Rust test suite.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"

# Build outside the clone so that a fresh clone on a machine that has built
# Lumen before starts warm; a machine without the cache builds from scratch.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/lumen/target}"
LUMEN_ASSETS_DIR="$(scripts/fetch-assets.sh | tail -n 1)"
export LUMEN_ASSETS_DIR

# The desktop app embeds the built UI: build and check it first.
echo "== ui: npm ci, svelte-check, vitest, vite build"
npm --prefix ui ci --no-audit --no-fund
npm --prefix ui run check
npm --prefix ui test
npm --prefix ui run build

echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked
