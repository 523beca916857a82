#!/usr/bin/env bash
# Install the Debian packages that napari's Qt canvas (PyQt6 wheels; libxcb-cursor0 is Qt 6's own
# need, libxcb-xinerama0 Qt 5's) needs under a virtual screen (Xvfb).
# Idempotent: does nothing when they are all present.
set -euo pipefail
packages=(xvfb xauth libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0
          libxcb-render-util0 libxcb-xinerama0 libxcb-xfixes0 libxcb-shape0 libxcb-cursor0
          libxkbcommon-x11-0 libgl1 libegl1 libfontconfig1 libdbus-1-3)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "Installing system packages for napari's Qt tests: ${missing[*]}"
if ! command -v apt-get >/dev/null; then
    echo "error: no apt-get here. Install the equivalents of: ${missing[*]} (and xvfb-run)" >&2
    exit 1
fi
if [ "$(id -u)" -eq 0 ]; then
    sudo=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    sudo=(sudo)
else
    echo "error: missing system packages and not root. Run as root, or ask an admin to run:" >&2
    echo "  apt-get update && apt-get install -y ${missing[*]}" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
