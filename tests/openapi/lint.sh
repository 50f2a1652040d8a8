#!/usr/bin/env bash
# Lints openapi.yaml with the Redocly CLI pinned in package-lock.json, and
# bundles it to JSON for the contract test (tests/e2e/test_openapi.py),
# which has no YAML parser of its own.
#
#   lint.sh SOURCE_DIR TOOLS_DIR
#
# The linter is installed with `npm ci` into TOOLS_DIR (in the build
# directory, never in the source tree), again only when the lockfile has
# changed. Writes TOOLS_DIR/openapi.json and TOOLS_DIR/openapi.sha256 (the
# SHA-256 of the YAML it was made from, so that the contract test can tell
# that the gateway serves that very document).
set -euo pipefail

if [ "$#" -ne 2 ]; then
    echo "usage: $0 SOURCE_DIR TOOLS_DIR" >&2
    exit 2
fi
source_dir=$(cd "$1" && pwd)
tools=$2
here=$source_dir/tests/openapi
document=$source_dir/openapi.yaml

log() {
    printf 'openapi-lint: %s\n' "$*" >&2
}

for tool in node npm; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        log "$tool is missing: run scripts/deps.sh"
        exit 1
    fi
done

# The pinned @redocly/cli 1.34 needs Node.js 18.17 or newer (its
# package.json's engines); Debian 12's nodejs is 18.20.
if ! node -e '
    const [major, minor] = process.versions.node.split(".").map(Number);
    process.exit(major > 18 || (major === 18 && minor >= 17) ? 0 : 1);'
then
    log "node $(node --version) is too old for the linter: 18.17 or newer"
    exit 1
fi

mkdir -p "$tools"
stamp=$tools/node_modules/.casm-lock
if ! cmp -s "$here/package-lock.json" "$stamp" \
    || [ ! -x "$tools/node_modules/.bin/redocly" ]; then
    log "installing the linter into $tools (npm ci)"
    cp "$here/package.json" "$here/package-lock.json" "$tools/"
    (cd "$tools" && npm ci --no-audit --no-fund --ignore-scripts \
                          --loglevel=error)
    cp "$here/package-lock.json" "$stamp"
fi

# No usage reports and no update check: both go over the network, and each
# costs seconds.
export REDOCLY_TELEMETRY=off REDOCLY_SUPPRESS_UPDATE_NOTICE=true
redocly=$tools/node_modules/.bin/redocly
pinned=$(node -p 'require(process.argv[1]).devDependencies["@redocly/cli"]' \
         "$here/package.json")
installed=$("$redocly" --version)
if [ "$installed" != "$pinned" ]; then
    log "redocly $installed is installed, package.json pins $pinned"
    exit 1
fi

# Redocly's recommended rules, every warning an error (redocly.yaml).
"$redocly" lint --config "$here/redocly.yaml" --format stylish "$document"

"$redocly" bundle --config "$here/redocly.yaml" --ext json \
    --output "$tools/openapi.json" "$document"
sha256sum < "$document" | cut -d' ' -f1 > "$tools/openapi.sha256"
log "lint clean; bundled to $tools/openapi.json"
