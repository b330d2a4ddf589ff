#!/usr/bin/env bash
# Builds Lumen's Linux installers with the Tauri CLI (from npm, in ui/).
#
#   scripts/package.sh            release .deb (and AppImage, see below)
#   scripts/package.sh --debug    a debug-build .deb, quick when the tests
#                                 have built everything already (what
#                                 scripts/test.sh installs and starts)
#
# The AppImage needs linuxdeploy, which the Tauri CLI downloads from
# GitHub; on a machine that cannot reach GitHub only the .deb is built.
# macOS (.dmg) and Windows (.msi, NSIS) installers are built on those
# systems by .github/workflows/release.yml.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/lumen/target}"

profile=release
args=()
if [ "${1:-}" = "--debug" ]; then
    profile=debug
    args+=(--debug)
fi
bundles=deb
if [ "$profile" = release ] && curl -sfI --max-time 5 https://github.com >/dev/null 2>&1; then
    bundles=deb,appimage
fi

[ -d ui/node_modules ] || npm --prefix ui ci --no-audit --no-fund
# The CLI runs the UI build itself (beforeBuildCommand).
ui/node_modules/.bin/tauri build "${args[@]}" --ci --bundles "$bundles" >&2
ls "$CARGO_TARGET_DIR/$profile/bundle/deb/"*.deb
