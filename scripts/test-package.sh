#!/usr/bin/env bash
# Builds the .deb (debug build), installs it, and checks that the installed
# app starts under Xvfb and paints its UI (`lumen bench app --runs 1`: the
# UI reports its first frame), then removes it. Needs root (or sudo).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/lumen/target}"

sudo=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        sudo=(sudo -n)
    else
        echo "test-package: skipped (installing a .deb needs root or sudo)" >&2
        exit 0
    fi
fi

deb="$(scripts/package.sh --debug | tail -n 1)"
echo "== installing $deb"
dpkg-deb --info "$deb" | sed -n '/Package:/p;/Version:/p;/Depends:/p'
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$deb" >/dev/null
trap '"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get remove -y -qq lumen >/dev/null 2>&1 || true' EXIT
app="$(dpkg -L lumen | grep -E '^/usr/bin/' | head -n 1)"
test -x "$app"
test -f /usr/share/applications/Lumen.desktop
echo "== starting $app under Xvfb"
cargo build -q --locked -p lumen-cli
"$CARGO_TARGET_DIR/debug/lumen" bench app --app "$app" --runs 1 --model none
