#!/usr/bin/env bash
# `make up`: runs the whole casm stack on this machine, in the foreground.
#
# Starts what is not given: a PostgreSQL cluster in .casm/pgdata (unless
# DATABASE_URL is set) and the Kafka-protocol mock broker casm-kafka (unless
# KAFKA_BROKERS is set); then the queue broker and the stages, each with its
# stderr in .casm/log/<instance>.log. Once the first gateway answers
# /ready, it prints where everything is and streams the logs until Ctrl-C or
# SIGTERM, then stops all it started, in order, and exits 0. If the stack
# does not become ready in time, it shows the last log lines, stops
# everything and exits 1. It leaves no process behind on any path.
#
# Environment (defaults): HTTP_PORT (8080; gateway i listens on
# HTTP_PORT+i, from 0), BROKER_PORT (5550), LOG_LEVEL (info), PG_PORT
# (55432), GATEWAYS, VALIDATORS, WORKERS, PUBLISHERS, DWHS (1 each),
# READY_TIMEOUT (60 s), STOP_TIMEOUT (15 s), BUILD_DIR (build), CASM_HOME
# (.casm), API_KEYS_FILE (without it, a development key is made in
# .casm/api-key, its hash in .casm/api-keys, and printed).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd -P)
BUILD_DIR=${BUILD_DIR:-build}
case $BUILD_DIR in
    /*) ;;
    *) BUILD_DIR=$ROOT/$BUILD_DIR ;;
esac

# Where the binaries are.
CASM_BROKER=$BUILD_DIR/broker/casm-broker
CASM_GATEWAY=$BUILD_DIR/gateway/casm-gateway
CASM_VALIDATOR=$BUILD_DIR/validator/casm-validator
CASM_WORKER=$BUILD_DIR/worker/casm-worker
CASM_PUBLISHER=$BUILD_DIR/publisher/casm-publisher
CASM_DWH=$BUILD_DIR/dwh/casm-dwh
CASM_KAFKA=$BUILD_DIR/tools/kafka-mock/casm-kafka
PG_SH=$ROOT/scripts/pg.sh

CASM_HOME=${CASM_HOME:-$ROOT/.casm}
LOG_DIR=$CASM_HOME/log
PG_DATA=$CASM_HOME/pgdata
KAFKA_BOOTSTRAP_FILE=$CASM_HOME/kafka.bootstrap

export HTTP_PORT=${HTTP_PORT:-8080}
export BROKER_PORT=${BROKER_PORT:-5550}
export LOG_LEVEL=${LOG_LEVEL:-info}
PG_PORT=${PG_PORT:-55432}
GATEWAYS=${GATEWAYS:-1}
VALIDATORS=${VALIDATORS:-1}
WORKERS=${WORKERS:-1}
PUBLISHERS=${PUBLISHERS:-1}
DWHS=${DWHS:-1}
READY_TIMEOUT=${READY_TIMEOUT:-60}
STOP_TIMEOUT=${STOP_TIMEOUT:-15}

STAGE_PIDS=()        # gateways and stages: stopped first, together
STAGE_NAMES=()
BROKER_PID=""
KAFKA_PID=""
TAIL_PID=""
SLEEP_PID=""
PG_STARTED=0
DEV_API_KEY=""
STREAMING=0
CLEANED=0

log() {
    printf 'up: %s\n' "$*" >&2
}

die() {
    log "$*"
    exit 1
}

check_count() {
    case ${!1} in
        '' | *[!0-9]*) die "$1 must be a number, got '${!1}'" ;;
    esac
}

is_alive() {
    [ -n "$1" ] && kill -0 "$1" 2>/dev/null
}

# Sends SIGTERM to the given pids, waits up to TIMEOUT seconds for them to
# exit, then SIGKILLs whatever is left.
stop_pids() {
    local timeout=$1 pid alive deadline
    shift
    [ $# -gt 0 ] || return 0
    for pid in "$@"; do
        is_alive "$pid" && kill -TERM "$pid" 2>/dev/null
    done
    deadline=$((SECONDS + timeout))
    while :; do
        alive=0
        for pid in "$@"; do
            is_alive "$pid" && alive=1
        done
        [ "$alive" -eq 1 ] || break
        if [ "$SECONDS" -ge "$deadline" ]; then
            for pid in "$@"; do
                if is_alive "$pid"; then
                    log "pid $pid did not stop in ${timeout}s: SIGKILL"
                    kill -KILL "$pid" 2>/dev/null
                fi
            done
            break
        fi
        sleep 0.2
    done
    for pid in "$@"; do
        wait "$pid" 2>/dev/null
    done
}

# Stops everything this script started, in dependency order: the stages
# drain through the broker, the publisher flushes to Kafka, and the
# database goes last.
cleanup() {
    set +e
    [ "$CLEANED" -eq 0 ] || return 0
    CLEANED=1
    trap '' INT TERM

    [ -z "$TAIL_PID" ] || kill "$TAIL_PID" 2>/dev/null
    [ -z "$SLEEP_PID" ] || kill "$SLEEP_PID" 2>/dev/null
    if [ ${#STAGE_PIDS[@]} -gt 0 ] || [ -n "$BROKER_PID" ] \
        || [ -n "$KAFKA_PID" ] || [ "$PG_STARTED" -eq 1 ]; then
        log "stopping"
    fi
    if [ ${#STAGE_PIDS[@]} -gt 0 ]; then
        stop_pids "$STOP_TIMEOUT" "${STAGE_PIDS[@]}"
    fi
    [ -z "$BROKER_PID" ] || stop_pids 5 "$BROKER_PID"
    [ -z "$KAFKA_PID" ] || stop_pids 5 "$KAFKA_PID"
    rm -f "$KAFKA_BOOTSTRAP_FILE" "$KAFKA_BOOTSTRAP_FILE.tmp"
    [ -z "$TAIL_PID" ] || wait "$TAIL_PID" 2>/dev/null
    [ -z "$SLEEP_PID" ] || wait "$SLEEP_PID" 2>/dev/null
    if [ "$PG_STARTED" -eq 1 ]; then
        "$PG_SH" stop "$PG_DATA" 9>&-
    fi
    log "stopped"
}

on_signal() {
    if [ "$STREAMING" -eq 1 ]; then
        exit 0
    fi
    log "interrupted during start-up"
    exit 130
}

show_log_tails() {
    local file
    for file in "$LOG_DIR"/*.log; do
        [ -f "$file" ] || continue
        printf '\n==> %s (last 20 lines) <==\n' "$file" >&2
        tail -n 20 "$file" >&2
    done
}

# Keeps the previous run's logs as *.log.1 and starts this run's afresh.
rotate_logs() {
    local file
    mkdir -p "$LOG_DIR"
    for file in "$LOG_DIR"/*.log; do
        [ -f "$file" ] && mv -f "$file" "$file.1"
    done
    return 0
}

# start_process NAME [ENV=VALUE...] -- COMMAND [ARG...]: starts one
# instance in its own session (so that the terminal's Ctrl-C reaches only
# this script, which then stops everyone in order), with its output in
# LOG_DIR/NAME.log. Sets STARTED_PID.
start_process() {
    local name=$1 assignments=()
    shift
    while [ "$1" != -- ]; do
        assignments+=("$1")
        shift
    done
    shift
    setsid env INSTANCE="$name" "${assignments[@]}" "$@" \
        </dev/null >>"$LOG_DIR/$name.log" 2>&1 9>&- &
    STARTED_PID=$!
    log "started $name (pid $STARTED_PID)"
}

# The instances that died so far, one name per line.
dead_processes() {
    local index
    is_alive "$BROKER_PID" || echo "broker-1"
    is_alive "$KAFKA_PID" || [ -z "$KAFKA_PID" ] || echo "kafka"
    for index in "${!STAGE_PIDS[@]}"; do
        is_alive "${STAGE_PIDS[$index]}" || echo "${STAGE_NAMES[$index]}"
    done
}

start_postgres() {
    local output
    if [ -n "${DATABASE_URL:-}" ]; then
        log "using DATABASE_URL from the environment"
        return
    fi
    PG_STARTED=1
    output=$("$PG_SH" start "$PG_DATA" "$PG_PORT" 9>&-) \
        || die "PostgreSQL did not start (logs in $PG_DATA/log)"
    DATABASE_URL=$(printf '%s\n' "$output" | sed -n 's/^DATABASE_URL=//p')
    [ -n "$DATABASE_URL" ] || die "pg.sh printed no DATABASE_URL"
    export DATABASE_URL
}

start_kafka() {
    local tries
    if [ -n "${KAFKA_BROKERS:-}" ]; then
        log "using KAFKA_BROKERS from the environment"
        return
    fi
    rm -f "$KAFKA_BOOTSTRAP_FILE"
    start_process kafka -- "$CASM_KAFKA" \
        --bootstrap-file "$KAFKA_BOOTSTRAP_FILE"
    KAFKA_PID=$STARTED_PID
    tries=100
    while [ ! -s "$KAFKA_BOOTSTRAP_FILE" ]; do
        is_alive "$KAFKA_PID" || {
            show_log_tails
            die "casm-kafka exited at start"
        }
        tries=$((tries - 1))
        [ "$tries" -gt 0 ] || die "casm-kafka gave no bootstrap in 10 s"
        sleep 0.1
    done
    KAFKA_BROKERS=$(head -n 1 "$KAFKA_BOOTSTRAP_FILE")
    export KAFKA_BROKERS
}

# Without API_KEYS_FILE, the gateways accept one development key: 32 random
# bytes from /dev/urandom in base64url, kept in CASM_HOME/api-key (only its
# owner may read it) and reused by the next run; CASM_HOME/api-keys holds
# its SHA-256, as the gateway reads it (docs/security.md).
setup_api_keys() {
    local key_file=$CASM_HOME/api-key hash
    if [ -n "${API_KEYS_FILE:-}" ]; then
        log "using API_KEYS_FILE from the environment"
        return
    fi
    API_KEYS_FILE=$CASM_HOME/api-keys
    if [ ! -s "$key_file" ] || [ ! -s "$API_KEYS_FILE" ]; then
        (umask 077 && head -c 32 /dev/urandom | base64 | tr '+/' '-_' \
            | tr -d '=\n' >"$key_file")
        hash=$(tr -d '\n' <"$key_file" | sha256sum | cut -d ' ' -f 1)
        printf '# made by make up, for development; the key is in %s\n%s\n' \
            "$key_file" "dev $hash" >"$API_KEYS_FILE"
        log "made a development API key in $key_file"
    fi
    DEV_API_KEY=$(cat "$key_file")
    export API_KEYS_FILE
}

# start_stage STAGE COUNT BINARY: COUNT instances named STAGE-1...
start_stage() {
    local stage=$1 count=$2 binary=$3 n
    for ((n = 1; n <= count; n++)); do
        if [ "$stage" = gateway ]; then
            start_process "$stage-$n" HTTP_PORT=$((HTTP_PORT + n - 1)) \
                -- "$binary"
        else
            start_process "$stage-$n" -- "$binary"
        fi
        STAGE_PIDS+=("$STARTED_PID")
        STAGE_NAMES+=("$stage-$n")
    done
}

wait_ready() {
    local url="http://127.0.0.1:$HTTP_PORT/ready" deadline dead
    deadline=$((SECONDS + READY_TIMEOUT))
    log "waiting up to ${READY_TIMEOUT}s for $url"
    while ! curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null; do
        dead=$(dead_processes)
        if [ -n "$dead" ]; then
            show_log_tails
            die "exited during start-up: $(echo "$dead" | paste -sd " ")"
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            show_log_tails
            die "not ready after ${READY_TIMEOUT}s"
        fi
        sleep 0.5
    done
}

row() {
    printf '  %-15s %s\n' "$1" "$2"
}

print_summary() {
    local q last_port
    printf '\ncasm is up\n'
    row HTTP "http://127.0.0.1:$HTTP_PORT/"
    if [ "$GATEWAYS" -gt 1 ]; then
        last_port=$((HTTP_PORT + GATEWAYS - 1))
        row "" "$GATEWAYS gateways, ports $HTTP_PORT to $last_port"
    fi
    if [ -n "$DEV_API_KEY" ]; then
        row "API key" "$DEV_API_KEY (development; in $CASM_HOME/api-key)"
        row "" "curl -H 'Authorization: Bearer $DEV_API_KEY' ..."
    else
        row "API keys" "$API_KEYS_FILE"
    fi
    row DATABASE_URL "$DATABASE_URL"
    row KAFKA_BROKERS "$KAFKA_BROKERS"
    for q in 1 2 3; do
        row "broker Q$q" "$(printf '%s (upstream), %s (instances)' \
            "tcp://127.0.0.1:$((BROKER_PORT + 2 * q - 2))" \
            "tcp://127.0.0.1:$((BROKER_PORT + 2 * q - 1))")"
    done
    row logs "$LOG_DIR"
    if [ "$PG_STARTED" -eq 1 ]; then
        row "PostgreSQL log" "$PG_DATA/log"
    fi
    printf 'Ctrl-C stops everything.\n\n'
}

main() {
    local name binary missing=()

    for name in GATEWAYS VALIDATORS WORKERS PUBLISHERS DWHS HTTP_PORT \
        BROKER_PORT PG_PORT READY_TIMEOUT STOP_TIMEOUT; do
        check_count "$name"
    done
    [ "$GATEWAYS" -ge 1 ] || die "GATEWAYS must be at least 1"

    for binary in "$CASM_BROKER" "$CASM_GATEWAY" "$CASM_VALIDATOR" \
        "$CASM_WORKER" "$CASM_PUBLISHER"; do
        [ -x "$binary" ] || missing+=("$binary")
    done
    if [ -z "${KAFKA_BROKERS:-}" ] && [ ! -x "$CASM_KAFKA" ]; then
        missing+=("$CASM_KAFKA")
    fi
    [ ${#missing[@]} -eq 0 ] || die "not built (run make build): ${missing[*]}"
    if [ "$DWHS" -gt 0 ] && [ ! -x "$CASM_DWH" ]; then
        log "no $CASM_DWH: starting without the DWH ingester"
        DWHS=0
    fi

    mkdir -p "$CASM_HOME"
    exec 9>"$CASM_HOME/up.lock"
    flock -n 9 || die "another scripts/up.sh is running in $CASM_HOME"

    trap cleanup EXIT
    trap on_signal INT TERM

    rotate_logs
    setup_api_keys
    start_postgres
    start_kafka

    start_process broker-1 -- "$CASM_BROKER"
    BROKER_PID=$STARTED_PID
    start_stage validator "$VALIDATORS" "$CASM_VALIDATOR"
    start_stage worker "$WORKERS" "$CASM_WORKER"
    start_stage publisher "$PUBLISHERS" "$CASM_PUBLISHER"
    start_stage dwh "$DWHS" "$CASM_DWH"
    start_stage gateway "$GATEWAYS" "$CASM_GATEWAY"

    wait_ready
    print_summary
    STREAMING=1

    tail -q -n +1 -F "$LOG_DIR"/*.log 9>&- &
    TAIL_PID=$!

    # Wake up every second (a signal interrupts `wait` at once) to report
    # an instance that died; the others go on serving.
    local reported="" dead
    while :; do
        sleep 1 9>&- &
        SLEEP_PID=$!
        wait "$SLEEP_PID" || true
        SLEEP_PID=""
        dead=$(dead_processes)
        if [ -n "$dead" ] && [ "$dead" != "$reported" ]; then
            log "exited: $(echo "$dead" | paste -sd " ") (see $LOG_DIR)"
            reported=$dead
        fi
    done
}

main "$@"
