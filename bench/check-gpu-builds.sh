#!/usr/bin/env bash
# Checks that the GPU and ARM builds compile (and the ARM kernels compute),
# on a Linux x86-64 machine without a GPU, the CUDA toolkit or Xcode. Not
# part of CI (it fetches toolchains and takes about 15 minutes cold,
# seconds warm; the workflow tests the engine natively on Apple Silicon).
#
#   bench/check-gpu-builds.sh [cuda] [metal] [aarch64]     (default: all three)
#
# - cuda: NVIDIA's compiler and headers from their PyPI wheels (CUDA 13.4,
#   cached under ~/.cache/lumen/cuda), then `cargo check --features cuda` of
#   the CLI and the desktop app. candle's build compiles its CUDA kernels
#   with that nvcc (for CUDA_COMPUTE_CAP, default 80); nothing is linked
#   (that needs the driver's libcuda and cuBLAS).
# - metal: `cargo clippy --features metal` of the engine for
#   aarch64-apple-darwin (rustup's standard library for that target; the
#   crates above the engine build C code, which needs Apple's toolchain).
# - aarch64: `cargo clippy` of the engine for aarch64 Linux (the paths that
#   are not x86-64: Lumen's NEON kernels), then the engine's unit tests run
#   under QEMU's aarch64 user-mode emulator (`-cpu max`: DotProd, so the
#   NEON kernels are tested against the scalar reference). Needs Debian's
#   qemu-user and gcc-aarch64-linux-gnu (installed with apt when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/lumen"
checks=("$@")
[ ${#checks[@]} -gt 0 ] || checks=(cuda metal aarch64)

cuda_version=13.4.92
cccl_version=13.3.5.0.6

for check in "${checks[@]}"; do
    case "$check" in
    cuda)
        root="$cache/cuda/$cuda_version"
        if [ ! -x "$root/nvidia/cu13/bin/nvcc" ]; then
            echo "== fetching nvcc $cuda_version from PyPI" >&2
            wheels="$(mktemp -d)"
            python3 -m pip download --no-deps -q -d "$wheels" \
                "nvidia-cuda-nvcc==$cuda_version" "nvidia-cuda-crt==$cuda_version" \
                "nvidia-nvvm==$cuda_version" "nvidia-cuda-runtime==$cuda_version" \
                "nvidia-cuda-cccl==$cccl_version"
            mkdir -p "$root"
            for w in "$wheels"/*.whl; do python3 -m zipfile -e "$w" "$root"; done
            chmod +x "$root"/nvidia/cu13/bin/* "$root"/nvidia/cu13/nvvm/bin/*
            rm -rf "$wheels"
        fi
        cuda="$root/nvidia/cu13"
        echo "== cuda: $("$cuda/bin/nvcc" --version | tail -n 2 | head -n 1)" >&2
        PATH="$cuda/bin:$PATH" CUDA_HOME="$cuda" CUDA_PATH="$cuda" \
            CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-80}" \
            CARGO_TARGET_DIR="$cache/target-cuda" \
            cargo check --locked -p lumen-cli -p lumen-app --features lumen-cli/cuda,lumen-app/cuda
        ;;
    metal)
        echo "== metal: the engine for aarch64-apple-darwin" >&2
        rustup target add aarch64-apple-darwin >&2
        CARGO_TARGET_DIR="$cache/target-cross" \
            cargo clippy --locked --target aarch64-apple-darwin -p lumen-engine --features metal \
            --all-targets -- -D warnings
        ;;
    aarch64)
        echo "== aarch64: the engine for aarch64-unknown-linux-gnu" >&2
        rustup target add aarch64-unknown-linux-gnu >&2
        CARGO_TARGET_DIR="$cache/target-cross" \
            cargo clippy --locked --target aarch64-unknown-linux-gnu -p lumen-engine \
            --all-targets -- -D warnings
        if ! command -v qemu-aarch64 >/dev/null || ! command -v aarch64-linux-gnu-gcc >/dev/null; then
            sudo=""
            [ "$(id -u)" = 0 ] || sudo=sudo
            $sudo apt-get install -y -q qemu-user gcc-aarch64-linux-gnu libc6-dev-arm64-cross >&2
        fi
        echo "== aarch64: the engine's unit tests under qemu-aarch64" >&2
        CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
            CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -cpu max -L /usr/aarch64-linux-gnu" \
            CARGO_TARGET_DIR="$cache/target-cross" \
            cargo test --locked --target aarch64-unknown-linux-gnu -p lumen-engine --lib
        ;;
    *)
        echo "unknown check \`$check\` (cuda, metal, aarch64)" >&2
        exit 2
        ;;
    esac
done
echo "== GPU and ARM builds: ${checks[*]} pass" >&2
