#!/usr/bin/env bash
# Runs every check and test, from a fresh machine: installs what is missing,
# fetches the test assets (cached), builds and tests the UI, then fmt,
# clippy, the Rust test suite (the desktop app driven under Xvfb among
# them), the workflows' schema, and the .deb installed and started.
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

echo "== GitHub workflows against their schema"
tools="${XDG_CACHE_HOME:-$HOME/.cache}/lumen/py-tools"
[ -x "$tools/bin/check-jsonschema" ] || {
    python3 -m venv "$tools" && "$tools/bin/pip" install -q "check-jsonschema==0.*"
}
"$tools/bin/check-jsonschema" --builtin-schema vendor.github-workflows .github/workflows/*.yml
echo "== tauri.conf.json against the Tauri CLI's schema"
"$tools/bin/check-jsonschema" --regex-variant python \
    --schemafile ui/node_modules/@tauri-apps/cli/config.schema.json src-tauri/tauri.conf.json

echo "== the .deb: built, installed, started"
scripts/test-package.sh
