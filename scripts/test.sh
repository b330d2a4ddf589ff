#!/usr/bin/env bash
# Runs every check and test, from a fresh machine: installs what is missing,
# fetches the test assets (cached), then fmt, clippy and the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"

# Build outside the clone so that a fresh clone on a machine that has built
# Lumen before starts warm; a machine without the cache builds from scratch.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/lumen/target}"
LUMEN_ASSETS_DIR="$(scripts/fetch-assets.sh | tail -n 1)"
export LUMEN_ASSETS_DIR

echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked
