#!/usr/bin/env bash
# Installs the Debian packages casm needs to build, test, run and bench
# (with the argument "build": only what compiling needs).
# Idempotent: packages already installed are left alone, and nothing is
# fetched (not even the package lists) when nothing is missing. As non-root
# it uses sudo when there is one, and otherwise says what to install.
set -euo pipefail

# What compiling needs: `deps.sh build` installs only these (the
# Dockerfile's build stage). python3 too: CMake looks for it at configure
# time, for the end-to-end suites.
BUILD_PACKAGES=(
    build-essential cmake pkg-config
    libzmq3-dev libczmq-dev libjansson-dev libpq-dev librdkafka-dev
    libmicrohttpd-dev nettle-dev check python3 libgoogle-perftools-dev
)
# And what the tests, make up and the benchmark need besides; CI checks
# compose.yaml with docker-compose and python3-yaml (tests/compose). The
# security suite makes certificates with openssl; CI's fuzz run needs
# clang with libFuzzer (libclang-rt-dev), and llvm-symbolizer (llvm) makes
# sanitizer reports readable.
PACKAGES=(
    "${BUILD_PACKAGES[@]}"
    postgresql postgresql-contrib
    curl kcat wrk procps iproute2
    openssl clang libclang-rt-dev llvm
    docker-compose python3-yaml
)
# The OpenAPI linter (tests/openapi) runs on Node.js and npm. A Node.js
# that is there already is used as it is: NodeSource's bundles its own npm,
# which Debian's npm package would conflict with.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1
then
    PACKAGES+=(nodejs npm)
fi

case "${1:-all}" in
    all)    ;;
    build)  PACKAGES=("${BUILD_PACKAGES[@]}") ;;
    *)      printf 'usage: %s [all | build]\n' "$0" >&2
            exit 2 ;;
esac

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
