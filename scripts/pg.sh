#!/usr/bin/env bash
# A private PostgreSQL cluster for development and tests.
#
#   scripts/pg.sh start DIR PORT   init DIR if new, start, ensure role and
#                                  database casm, print DATABASE_URL=...
#   scripts/pg.sh stop DIR         fast shutdown (bounded wait)
#   scripts/pg.sh status DIR       exit 0 if running
#
# The cluster listens on 127.0.0.1:PORT only, keeps its unix socket and its
# logs (DIR/log) inside DIR, and trusts every local connection: it is a
# dev/test cluster, never a production one. PostgreSQL refuses to run as
# root, so as root the server runs as the owner of DIR, the `postgres`
# system user for a new DIR. Every wait is bounded.
set -euo pipefail

PG_START_TIMEOUT=${PG_START_TIMEOUT:-30}
PG_STOP_TIMEOUT=${PG_STOP_TIMEOUT:-30}

log() {
    printf 'pg.sh: %s\n' "$*" >&2
}

die() {
    log "$*"
    exit 1
}

usage() {
    cat >&2 <<'EOF'
usage: scripts/pg.sh start DIR PORT
       scripts/pg.sh stop DIR
       scripts/pg.sh status DIR
EOF
    exit 2
}

# The newest installed server wins; PG_BINDIR overrides.
find_bindir() {
    local dir candidate
    if [ -n "${PG_BINDIR:-}" ]; then
        [ -x "$PG_BINDIR/initdb" ] || die "no initdb in PG_BINDIR=$PG_BINDIR"
        printf '%s\n' "$PG_BINDIR"
        return
    fi
    candidate=""
    for dir in /usr/lib/postgresql/*/bin; do
        [ -x "$dir/initdb" ] && candidate="$candidate$dir"$'\n'
    done
    if [ -n "$candidate" ]; then
        printf '%s' "$candidate" | sort -V | tail -n 1
        return
    fi
    if command -v pg_config >/dev/null 2>&1; then
        dir=$(pg_config --bindir)
        if [ -x "$dir/initdb" ]; then
            printf '%s\n' "$dir"
            return
        fi
    fi
    die "no PostgreSQL server found (run scripts/deps.sh)"
}

# Runs a command as the cluster's owner: ourselves, or PG_USER when root.
as_owner() {
    if [ -n "$PG_USER" ]; then
        runuser -u "$PG_USER" -- "$@"
    else
        "$@"
    fi
}

# As root, picks the owner: whoever owns an existing cluster, else postgres.
choose_owner() {
    local dir=$1 owner
    PG_USER=""
    [ "$(id -u)" -eq 0 ] || return 0
    owner=""
    if [ -f "$dir/PG_VERSION" ]; then
        owner=$(stat -c %U "$dir")
    fi
    if [ -z "$owner" ] || [ "$owner" = root ]; then
        owner=postgres
    fi
    id -u "$owner" >/dev/null 2>&1 \
        || die "user '$owner' does not exist (is postgresql installed?)"
    PG_USER=$owner
}

# The owner must be able to reach DIR: open up (o+x) any ancestor it cannot
# traverse, and say so.
make_reachable() {
    local dir=$1 parent
    [ -n "$PG_USER" ] || return 0
    parent=$(dirname "$dir")
    while :; do
        if ! runuser -u "$PG_USER" -- test -x "$parent"; then
            log "chmod o+x $parent so that $PG_USER can reach $dir"
            chmod o+x "$parent"
        fi
        [ "$parent" = / ] && break
        parent=$(dirname "$parent")
    done
}

is_running() {
    [ -f "$1/postmaster.pid" ] || return 1
    as_owner "$BINDIR/pg_ctl" status -D "$1" >/dev/null 2>&1
}

# Settings live in casm.conf, rewritten at every start, so that a reused DIR
# picks up a new PORT or a changed setting.
write_settings() {
    local dir=$1 port=$2 socket_dir=$3
    as_owner tee "$dir/casm.conf" >/dev/null <<EOF
# Written by scripts/pg.sh at every start; edits here are lost.
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$socket_dir'
fsync = on
max_connections = 200
shared_buffers = 256MB
# casm writes about 4 KB of WAL an update, a 16 MB segment a second or
# so. Zero-filling each new segment held every commit behind it for 50 to
# 150 ms (docs/benchmarks.md), so new segments are not zero-filled and up
# to 1 GB of old ones are kept for reuse. fsync and synchronous_commit
# stay on: a commit is as durable as before.
wal_init_zero = off
min_wal_size = 1GB
logging_collector = on
log_directory = 'log'
log_filename = 'postgresql-%Y-%m-%d.log'
log_rotation_age = 1d
log_line_prefix = '%m [%p] %q%u@%d '
EOF
    if ! grep -q "^include_if_exists = 'casm.conf'" \
        "$dir/postgresql.conf"; then
        printf "\ninclude_if_exists = 'casm.conf'\n" \
            | as_owner tee -a "$dir/postgresql.conf" >/dev/null
    fi
}

init_cluster() {
    local dir=$1 output
    if [ -n "$(ls -A "$dir")" ]; then
        die "$dir is not empty and holds no cluster (no PG_VERSION)"
    fi
    log "initialising a new cluster in $dir"
    if ! output=$(as_owner "$BINDIR/initdb" -D "$dir" -U postgres \
        --auth=trust --encoding=UTF8 --locale=C.UTF-8 --no-instructions \
        2>&1); then
        printf '%s\n' "$output" >&2
        die "initdb failed"
    fi

    as_owner tee "$dir/pg_hba.conf" >/dev/null <<'EOF'
# Written by scripts/pg.sh: a dev/test cluster trusts local connections.
# TYPE  DATABASE  USER  ADDRESS       METHOD
local   all       all                 trust
host    all       all   127.0.0.1/32  trust
EOF
}

psql_admin() {
    local port=$1
    shift
    "$BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" \
        -U postgres "$@"
}

ensure_database() {
    local port=$1
    if [ -z "$(psql_admin "$port" -d postgres -tAc \
        "SELECT 1 FROM pg_roles WHERE rolname = 'casm'")" ]; then
        log "creating role casm"
        psql_admin "$port" -d postgres -c \
            "CREATE ROLE casm LOGIN SUPERUSER PASSWORD 'casm'"
    fi
    if [ -z "$(psql_admin "$port" -d postgres -tAc \
        "SELECT 1 FROM pg_database WHERE datname = 'casm'")" ]; then
        log "creating database casm"
        psql_admin "$port" -d postgres -c \
            "CREATE DATABASE casm OWNER casm ENCODING 'UTF8'"
    fi
}

# Waits, bounded, until the server accepts connections on 127.0.0.1:PORT.
wait_ready() {
    local port=$1 tries=$((PG_START_TIMEOUT * 2))
    while [ "$tries" -gt 0 ]; do
        "$BINDIR/pg_isready" -q -h 127.0.0.1 -p "$port" -t 1 && return 0
        tries=$((tries - 1))
        sleep 0.5
    done
    return 1
}

cmd_start() {
    local dir=$1 port=$2 socket_dir logfile
    case $port in
        '' | *[!0-9]*) die "PORT must be a number, got '$port'" ;;
    esac
    if [ "$port" -lt 1 ] || [ "$port" -gt 65535 ]; then
        die "PORT must be in 1..65535, got $port"
    fi

    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd -P)
    choose_owner "$dir"
    if [ -n "$PG_USER" ]; then
        chown "$PG_USER:" "$dir"
        make_reachable "$dir"
    fi
    chmod 700 "$dir"

    [ -f "$dir/PG_VERSION" ] || init_cluster "$dir"
    as_owner mkdir -p "$dir/log"

    # A unix socket path is limited to 107 bytes.
    socket_dir=$dir
    if [ $((${#dir} + 18)) -gt 107 ]; then
        socket_dir=${TMPDIR:-/tmp}/casm-pg-$port
        log "$dir is too long for a socket path: socket in $socket_dir"
        mkdir -p "$socket_dir"
        [ -z "$PG_USER" ] || chown "$PG_USER:" "$socket_dir"
    fi

    if is_running "$dir"; then
        log "already running in $dir"
        port=$(sed -n 's/^port = //p' "$dir/casm.conf")
        wait_ready "$port" \
            || die "the server in $dir does not answer on port $port"
    else
        write_settings "$dir" "$port" "$socket_dir"
        log "starting PostgreSQL ($BINDIR) on 127.0.0.1:$port"
        if ! as_owner "$BINDIR/pg_ctl" start -D "$dir" -w \
            -t "$PG_START_TIMEOUT" -l "$dir/log/startup.log" >/dev/null
        then
            tail -n 20 "$dir/log/startup.log" >&2 || true
            for logfile in "$dir"/log/postgresql-*.log; do
                if [ -f "$logfile" ]; then
                    tail -n 20 "$logfile" >&2
                fi
            done
            die "PostgreSQL did not start (logs in $dir/log)"
        fi
    fi

    port=$(sed -n 's/^port = //p' "$dir/casm.conf")
    ensure_database "$port"
    printf 'DATABASE_URL=postgresql://casm:casm@127.0.0.1:%s/casm\n' "$port"
}

cmd_stop() {
    local dir=$1
    [ -d "$dir" ] || { log "no $dir: nothing to stop"; return 0; }
    dir=$(cd "$dir" && pwd -P)
    choose_owner "$dir"
    if ! is_running "$dir"; then
        log "not running in $dir"
        return 0
    fi
    log "stopping PostgreSQL in $dir"
    if as_owner "$BINDIR/pg_ctl" stop -D "$dir" -m fast -w \
        -t "$PG_STOP_TIMEOUT" >/dev/null; then
        return 0
    fi
    is_running "$dir" || return 0
    log "fast shutdown failed: immediate shutdown"
    as_owner "$BINDIR/pg_ctl" stop -D "$dir" -m immediate -w -t 10 \
        >/dev/null && return 0
    is_running "$dir" || return 0
    die "PostgreSQL in $dir does not stop"
}

cmd_status() {
    local dir=$1
    [ -d "$dir" ] || return 1
    choose_owner "$dir"
    is_running "$dir"
}

[ $# -ge 2 ] || usage
BINDIR=$(find_bindir)
PG_USER=""
case $1 in
    start) [ $# -eq 3 ] || usage; cmd_start "$2" "$3" ;;
    stop) [ $# -eq 2 ] || usage; cmd_stop "$2" ;;
    status) [ $# -eq 2 ] || usage; cmd_status "$2" ;;
    *) usage ;;
esac
