#!/usr/bin/env bash
# Make sure the given Debian packages are installed.
#
# Usage: scripts/ensure-debs.sh PACKAGE...
#
# Checks each package with `dpkg -s`; if any is missing, runs `apt-get update`
# once and `apt-get install -y` for the missing ones only. Installed packages
# cost nothing, so callers (CI, bench scripts) may run it every time.
# Progress goes to stderr, so a caller's stdout stays clean.
set -euo pipefail
exec 1>&2

if [ "$#" -eq 0 ]; then
    echo "usage: $0 PACKAGE..." >&2
    exit 2
fi

missing=()
for pkg in "$@"; do
    # `dpkg -s` also succeeds for removed packages whose config files remain,
    # so look at the status line rather than the exit code alone.
    if ! dpkg -s "$pkg" 2>/dev/null | grep -q '^Status: install ok installed$'; then
        missing+=("$pkg")
    fi
done

if [ "${#missing[@]}" -eq 0 ]; then
    exit 0
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
    sudo=(sudo)
fi

echo "ensure-debs: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
