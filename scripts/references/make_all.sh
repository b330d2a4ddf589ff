#!/usr/bin/env bash
# Regenerate every transformers (Python) reference fixture. Deterministic; CPU only;
# no Hugging Face Hub access (all models/tokenizers come from local files).
#
#   LUMEN_REF_VENV      Python venv to use / create   (default: <repo>/../venv-ref, outside the repo)
#   LUMEN_ASSETS_DIR    real model assets             (default: ~/.cache/lumen/assets, via fetch-assets.sh)
#   LUMEN_LLAMACPP_SRC  unpacked llama-cpp-python sdist (default: ~/.cache/lumen/reference-tools/...)
#   PYTHON              interpreter used to create the venv (default: python3, needs >= 3.10)
#
# Usage: scripts/references/make_all.sh [tiny|smollm2|tokenizer|templates|mllama|pillow|images ...]   (default: all)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
VENV="${LUMEN_REF_VENV:-$(dirname "$REPO")/venv-ref}"
LCP_VERSION=0.3.36
LCP_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
TOOLS="${XDG_CACHE_HOME:-$HOME/.cache}/lumen/reference-tools"
export LUMEN_LLAMACPP_SRC="${LUMEN_LLAMACPP_SRC:-$TOOLS/llama_cpp_python-$LCP_VERSION}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 PYTHONHASHSEED=0 PYTHONDONTWRITEBYTECODE=1

start=$(date +%s)

# 1. venv with pinned packages (torch from PyPI is large; first run takes minutes).
if [ ! -x "$VENV/bin/python" ]; then
    echo "== creating venv $VENV"
    "${PYTHON:-python3}" -m venv "$VENV"
fi
echo "== pip install -r requirements.txt (no-op when already satisfied)"
"$VENV/bin/pip" install --disable-pip-version-check -q -r "$HERE/requirements.txt"
PY="$VENV/bin/python"

# 2. real assets (SmolLM2 GGUF, Llama 3.x tokenizers); idempotent, checks sha256.
export LUMEN_ASSETS_DIR="$("$REPO/scripts/fetch-assets.sh" | tail -n 1)"
echo "== assets in $LUMEN_ASSETS_DIR"

# 3. llama.cpp converter + gguf-py + chat templates, from the llama-cpp-python sdist.
if [ ! -f "$LUMEN_LLAMACPP_SRC/vendor/llama.cpp/convert_hf_to_gguf.py" ]; then
    echo "== fetching llama-cpp-python==$LCP_VERSION sdist"
    mkdir -p "$TOOLS"
    tmp="$(mktemp -d)"
    "$VENV/bin/pip" download --disable-pip-version-check -q --no-deps --no-binary :all: \
        "llama-cpp-python==$LCP_VERSION" -d "$tmp"
    sdist="$tmp/llama_cpp_python-$LCP_VERSION.tar.gz"
    echo "$LCP_SHA256  $sdist" | sha256sum -c - >/dev/null
    p="llama_cpp_python-$LCP_VERSION/vendor/llama.cpp"
    tar -xzf "$sdist" -C "$(dirname "$LUMEN_LLAMACPP_SRC")" \
        "$p/convert_hf_to_gguf.py" "$p/conversion" "$p/gguf-py" "$p/models/templates"
    rm -rf "$tmp"
fi

# 4. generators (tiny must run before tokenizer: the latter reads tiny-llama3-f32.gguf).
steps=("$@"); [ ${#steps[@]} -gt 0 ] || steps=(tiny smollm2 tokenizer templates mllama pillow images)
cd "$HERE"
for s in "${steps[@]}"; do
    case "$s" in
        tiny) script=make_tiny_llama3.py ;;
        smollm2) script=make_smollm2.py ;;
        tokenizer) script=make_tokenizer.py ;;
        templates) script=make_templates.py ;;
        mllama) script=make_mllama.py ;;
        pillow) script=make_pillow_resize.py ;;
        images) script=make_image_edge_cases.py ;;
        *) echo "unknown step $s" >&2; exit 2 ;;
    esac
    echo "== $script"
    t0=$(date +%s)
    "$PY" "$script"
    echo "== $script done in $(( $(date +%s) - t0 ))s"
done
echo "== all done in $(( $(date +%s) - start ))s"
