#!/usr/bin/env bash
# Installs the Debian packages casm needs to build, test, run and bench.
# Idempotent: packages already installed are left alone, and nothing is
# fetched (not even the package lists) when nothing is missing. As non-root
# it uses sudo when there is one, and otherwise says what to install.
set -euo pipefail

PACKAGES=(
    build-essential cmake pkg-config
    libzmq3-dev libczmq-dev libjansson-dev libpq-dev librdkafka-dev
    libmicrohttpd-dev nettle-dev check
    postgresql postgresql-contrib
    curl kcat python3 wrk procps iproute2
)

log() {
    printf 'deps: %s\n' "$*" >&2
}

is_installed() {
    local status
    status=$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) || return 1
    [ "$status" = "install ok installed" ]
}

if ! command -v dpkg-query >/dev/null 2>&1 \
    || ! command -v apt-get >/dev/null 2>&1; then
    log "this script needs a Debian-like system (dpkg and apt-get)"
    exit 1
fi

missing=()
for package in "${PACKAGES[@]}"; do
    # dpkg -s is the documented check; dpkg-query gives the exact status,
    # so a removed package with its config left behind counts as missing.
    if ! dpkg -s "$package" >/dev/null 2>&1 || ! is_installed "$package"
    then
        missing+=("$package")
    fi
done

if [ "${#missing[@]}" -eq 0 ]; then
    log "all ${#PACKAGES[@]} packages present"
    exit 0
fi
log "missing: ${missing[*]}"

as_root=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        as_root=(sudo)
    else
        log "not root and no sudo: as root, run"
        log "  apt-get update && apt-get install -y ${missing[*]}"
        exit 1
    fi
fi

export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -q --no-install-recommends "${missing[@]}"

still_missing=()
for package in "${missing[@]}"; do
    is_installed "$package" || still_missing+=("$package")
done
if [ "${#still_missing[@]}" -ne 0 ]; then
    log "still missing after install: ${still_missing[*]}"
    exit 1
fi
log "installed: ${missing[*]}"
