#!/usr/bin/env bash
# Installs the Debian packages given as arguments, or else those listed in
# scripts/system-packages.txt, that are missing. Idempotent: does nothing (and
# needs no network) when all are there.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -gt 0 ]; then
    wanted=("$@")
else
    mapfile -t wanted < <(grep -Ev '^\s*(#|$)' scripts/system-packages.txt)
fi
missing=()
for pkg in "${wanted[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0

sudo=()
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "need root or sudo to install: ${missing[*]}" >&2; exit 1; }
    sudo=(sudo)
fi
echo "installing: ${missing[*]}" >&2
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
