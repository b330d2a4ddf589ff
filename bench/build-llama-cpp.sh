#!/usr/bin/env bash
# Build a pinned llama.cpp (CPU only) for benchmarks and reference generation.
#
# NOT part of CI. The llama.cpp source comes from the llama-cpp-python sdist on
# PyPI (vendor/llama.cpp), the only registry-reachable copy of it; the sdist is
# checked against a pinned sha256.
#
# Idempotent: the build is cached and redone only when the version or the
# CMake flags change.
#
#   LUMEN_CACHE_DIR        cache root (default: ~/.cache/lumen)
#   LLAMA_CPP_DIR          build root (default: $LUMEN_CACHE_DIR/llama.cpp)
#   LLAMA_CPP_JOBS         parallel build jobs (default: nproc)
#   LLAMA_CPP_CMAKE_ARGS   extra CMake arguments, appended last (override flags)
#
# CPU flags: -march=native and the AMX kernels crash with an illegal instruction
# on some of our (virtualised) Xeons, so GGML_NATIVE is OFF, AMX is always OFF,
# and each x86 extension is enabled explicitly only if /proc/cpuinfo lists it.
#
# Layout of $LLAMA_CPP_DIR: src/ (vendor/llama.cpp, incl. gguf-py and the
# ggml-vocab-*.gguf test vocabularies in src/models), build/, build/bin/.
# Prints the bin folder on its last line.
set -euo pipefail

LCP_PY_VERSION=0.3.36            # llama-cpp-python sdist
LCP_PY_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
LLAMA_CPP_COMMIT=0c1e57098       # ggml-org/llama.cpp commit vendored by that sdist (its CHANGELOG)
TARGETS=(llama-completion llama-simple llama-tokenize llama-bench)

CACHE="${LUMEN_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/lumen}"
ROOT="${LLAMA_CPP_DIR:-$CACHE/llama.cpp}"
JOBS="${LLAMA_CPP_JOBS:-$(nproc)}"
SRC="$ROOT/src"
BUILD="$ROOT/build"
BIN="$BUILD/bin"

for tool in cmake c++ python3 pip3; do
    command -v "$tool" >/dev/null || { echo "build-llama-cpp: $tool is needed (apt-get install -y cmake g++)" >&2; exit 1; }
done

# --- CMake flags --------------------------------------------------------------
has_cpu() { grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | tr ' ' '\n' | grep -qx "$1"; }
onoff() { if has_cpu "$1"; then echo ON; else echo OFF; fi; }

CMAKE_ARGS=(
    -DCMAKE_BUILD_TYPE=Release
    -DBUILD_SHARED_LIBS=OFF
    -DGGML_NATIVE=OFF
    -DGGML_CCACHE=OFF
    -DGGML_OPENMP=ON
    -DLLAMA_BUILD_TESTS=OFF
    -DLLAMA_BUILD_EXAMPLES=ON
    -DLLAMA_BUILD_SERVER=OFF
    -DLLAMA_OPENSSL=OFF
)
if [ "$(uname -m)" = x86_64 ]; then
    CMAKE_ARGS+=(
        -DGGML_SSE42="$(onoff sse4_2)"
        -DGGML_AVX="$(onoff avx)"
        -DGGML_AVX2="$(onoff avx2)"
        -DGGML_BMI2="$(onoff bmi2)"
        -DGGML_FMA="$(onoff fma)"
        -DGGML_F16C="$(onoff f16c)"
        -DGGML_AVX_VNNI="$(onoff avx_vnni)"
        -DGGML_AVX512="$(onoff avx512f)"
        -DGGML_AVX512_VBMI="$(onoff avx512vbmi)"
        -DGGML_AVX512_VNNI="$(onoff avx512_vnni)"
        -DGGML_AVX512_BF16="$(onoff avx512_bf16)"
        -DGGML_AMX_TILE=OFF
        -DGGML_AMX_INT8=OFF
        -DGGML_AMX_BF16=OFF
    )
fi
# shellcheck disable=SC2206
CMAKE_ARGS+=(${LLAMA_CPP_CMAKE_ARGS:-})

STAMP="$ROOT/build.stamp"
WANT="llama-cpp-python==$LCP_PY_VERSION llama.cpp@$LLAMA_CPP_COMMIT targets=${TARGETS[*]} ${CMAKE_ARGS[*]}"

built() {
    [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] || return 1
    local t; for t in "${TARGETS[@]}"; do [ -x "$BIN/$t" ] || return 1; done
}

if built; then
    echo "build-llama-cpp: cached build is up to date ($ROOT)" >&2
    echo "$BIN"
    exit 0
fi

mkdir -p "$ROOT"

# --- source -------------------------------------------------------------------
if [ ! -f "$SRC/.lumen-source" ] || [ "$(cat "$SRC/.lumen-source")" != "$LCP_PY_VERSION" ]; then
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    echo "build-llama-cpp: downloading llama-cpp-python==$LCP_PY_VERSION sdist" >&2
    pip3 download --no-deps --disable-pip-version-check -q \
        -d "$tmp" "llama-cpp-python==$LCP_PY_VERSION" >&2
    sdist="$tmp/llama_cpp_python-$LCP_PY_VERSION.tar.gz"
    got="$(sha256sum "$sdist" | cut -d' ' -f1)"
    [ "$got" = "$LCP_PY_SHA256" ] || { echo "build-llama-cpp: sha256 mismatch for $sdist: $got" >&2; exit 1; }
    tar -xzf "$sdist" -C "$tmp"
    rm -rf "$SRC" "$BUILD"
    mv "$tmp/llama_cpp_python-$LCP_PY_VERSION/vendor/llama.cpp" "$SRC"
    rm -f "$SRC/.git"   # a gitlink into the (absent) parent repository
    echo "$LCP_PY_VERSION" > "$SRC/.lumen-source"
fi

# --- build --------------------------------------------------------------------
rm -f "$STAMP"
echo "build-llama-cpp: cmake ${CMAKE_ARGS[*]}" >&2
cmake -S "$SRC" -B "$BUILD" "${CMAKE_ARGS[@]}" >&2
cmake --build "$BUILD" --config Release -j "$JOBS" --target "${TARGETS[@]}" >&2
echo "$WANT" > "$STAMP"
echo "$BIN"
