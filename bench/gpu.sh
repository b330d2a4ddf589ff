#!/usr/bin/env bash
# The model benchmark on a machine with an NVIDIA GPU: builds `lumen` with
# CUDA and runs `lumen bench` on the GPU and, for comparison, on the CPU.
# Not part of CI (no GPU there).
#
#   bench/gpu.sh MODEL [extra lumen bench arguments]
#
# Needs the CUDA toolkit (nvcc) and a driver; prints one JSON object per
# device. Set LUMEN_GPU_FEATURE=metal on Apple silicon.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { echo "usage: bench/gpu.sh MODEL [lumen bench args]" >&2; exit 2; }
model="$1"; shift
feature="${LUMEN_GPU_FEATURE:-cuda}"
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/lumen/target-$feature}"

if [ "$feature" = cuda ]; then
    command -v nvcc >/dev/null || { echo "gpu.sh: nvcc (the CUDA toolkit) is needed" >&2; exit 1; }
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >&2 || true
fi
cargo build --release --locked -p lumen-cli --features "$feature" >&2
lumen="$CARGO_TARGET_DIR/release/lumen"
for device in "$feature" cpu; do
    echo "== $device" >&2
    "$lumen" bench --model "$model" --device "$device" --json "$@"
done
