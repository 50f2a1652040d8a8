#!/usr/bin/env bash
# `make bench`: casm end to end beside PostgreSQL's own one-by-one rate.
#
# On a fresh machine (after scripts/deps.sh), in one run:
#
#   1. builds casm with optimisation in its own build directory;
#   2. starts a fresh PostgreSQL under that directory (fsync and
#      synchronous_commit on, as scripts/pg.sh sets them), lets the worker
#      apply the schema, and seeds BENCH_CUSTOMERS customers (externalId
#      BENCH-1 ...);
#   3. runs pgbench with the worker's own update statement given one
#      request (the SQL is printed by `casm-worker --statement
#      update_attributes`), one transaction per request, 64 clients: the
#      yardstick;
#   4. starts the stack with scripts/up.sh (Kafka-protocol mock, broker,
#      one gateway, validator, worker and publisher; no DWH ingester, which
#      has its own bench/dwh_bench.sh) and drives it with wrk and
#      bench/update.lua at each of BENCH_CONNECTIONS;
#   5. prints a table (requests/s, latency, non-200 answers, each casm
#      process's peak RSS so far), a table of CPU time per request (each
#      casm process, PostgreSQL, all) and the ratio line; stops
#      everything.
#
# Environment (defaults): BENCH_BUILD_DIR (build-bench), BENCH_PG_PORT
# (55800), BENCH_HTTP_PORT (8800), BENCH_BROKER_PORT (5800),
# BENCH_CUSTOMERS (100000), BENCH_PGBENCH_SECONDS (20), BENCH_WRK_SECONDS
# (15), BENCH_CONNECTIONS ("1 16 64 256"), BENCH_WRK_THREADS (1),
# BENCH_VALIDATORS, BENCH_WORKERS and BENCH_PUBLISHERS (1 each), and any
# casm setting (WORKER_CREDIT, VALIDATOR_CREDIT, KAFKA_LINGER_MS, ...),
# which reaches the processes as it is. Raw outputs and logs stay in
# $BENCH_BUILD_DIR/bench-run.
set -euo pipefail
shopt -u patsub_replacement 2>/dev/null || true

ROOT=$(cd "$(dirname "$0")/.." && pwd -P)
BUILD_DIR=${BENCH_BUILD_DIR:-$ROOT/build-bench}
case $BUILD_DIR in
    /*) ;;
    *) BUILD_DIR=$ROOT/$BUILD_DIR ;;
esac
PG_PORT=${BENCH_PG_PORT:-55800}
HTTP_PORT=${BENCH_HTTP_PORT:-8800}
BROKER_PORT=${BENCH_BROKER_PORT:-5800}
CUSTOMERS=${BENCH_CUSTOMERS:-100000}
PGBENCH_SECONDS=${BENCH_PGBENCH_SECONDS:-20}
WRK_SECONDS=${BENCH_WRK_SECONDS:-15}
CONNECTIONS=${BENCH_CONNECTIONS:-1 16 64 256}
WRK_THREADS=${BENCH_WRK_THREADS:-1}
PGBENCH_CLIENTS=64

RUN_DIR=$BUILD_DIR/bench-run
PG_DATA=$RUN_DIR/pgdata
CASM_HOME=$RUN_DIR/stack
PG_SH=$ROOT/scripts/pg.sh
WORKER=$BUILD_DIR/worker/casm-worker
VALIDATORS=${BENCH_VALIDATORS:-1}
WORKERS=${BENCH_WORKERS:-1}
PUBLISHERS=${BENCH_PUBLISHERS:-1}
PROCESSES=(gateway-1)
for kind in validator:$VALIDATORS worker:$WORKERS publisher:$PUBLISHERS; do
    for i in $(seq 1 "${kind#*:}"); do
        PROCESSES+=("${kind%:*}-$i")
    done
done
PROCESSES+=(broker-1)

UP_PID=""
MIGRATE_PID=""
PG_STARTED=0

log() {
    printf 'bench: %s\n' "$*" >&2
}

die() {
    log "$*"
    exit 1
}

is_alive() {
    [ -n "$1" ] && kill -0 "$1" 2>/dev/null
}

# Sends SIGTERM and waits up to $2 seconds, then SIGKILL.
stop_pid() {
    local pid=$1 timeout=$2 deadline
    is_alive "$pid" || return 0
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + timeout))
    while is_alive "$pid" && [ "$SECONDS" -lt "$deadline" ]; do
        sleep 0.2
    done
    is_alive "$pid" && kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    set +e
    trap '' INT TERM
    [ -z "$MIGRATE_PID" ] || stop_pid "$MIGRATE_PID" 10
    [ -z "$UP_PID" ] || stop_pid "$UP_PID" 40
    if [ "$PG_STARTED" -eq 1 ]; then
        "$PG_SH" stop "$PG_DATA" >/dev/null 2>&1
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for tool in cmake wrk pgbench psql curl; do
    command -v "$tool" >/dev/null \
        || die "$tool is missing (run scripts/deps.sh)"
done

# 1. An optimised build of its own.
log "building (Release) in $BUILD_DIR"
mkdir -p "$BUILD_DIR"
if ! { cmake -S "$ROOT" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release \
        && cmake --build "$BUILD_DIR" -j2 --target casm-broker casm-gateway \
            casm-validator casm-worker casm-publisher casm-kafka; } \
    >"$BUILD_DIR/bench-build.log" 2>&1; then
    tail -n 30 "$BUILD_DIR/bench-build.log" >&2
    die "the build failed (log in $BUILD_DIR/bench-build.log)"
fi

# 2. A fresh database, the schema, the customers.
rm -rf "$RUN_DIR"
mkdir -p "$RUN_DIR" "$CASM_HOME"
PG_STARTED=1
DATABASE_URL=$("$PG_SH" start "$PG_DATA" "$PG_PORT" 2>"$RUN_DIR/pg.log" \
    | sed -n 's/^DATABASE_URL=//p') || true
[ -n "$DATABASE_URL" ] || { cat "$RUN_DIR/pg.log" >&2; die "no PostgreSQL"; }
export DATABASE_URL

sql() {
    psql -X -q -At -v ON_ERROR_STOP=1 -d "$DATABASE_URL" "$@"
}

settings=$(sql -c "SELECT current_setting ('fsync') || ' '
                   || current_setting ('synchronous_commit')")
[ "$settings" = "on on" ] \
    || die "fsync and synchronous_commit must be on, got: $settings"

# The worker applies the migrations at start; it is stopped once it says
# it is ready (no broker runs yet, so it takes no work).
log "applying the schema"
BROKER_PORT=$BROKER_PORT INSTANCE=migrate "$WORKER" \
    2>"$RUN_DIR/migrate.log" &
MIGRATE_PID=$!
for _ in $(seq 1 300); do
    grep -q '"worker ready"' "$RUN_DIR/migrate.log" && break
    is_alive "$MIGRATE_PID" \
        || { cat "$RUN_DIR/migrate.log" >&2; die "the worker exited"; }
    sleep 0.1
done
grep -q '"worker ready"' "$RUN_DIR/migrate.log" \
    || { cat "$RUN_DIR/migrate.log" >&2; die "the schema was not applied"; }
stop_pid "$MIGRATE_PID" 10
MIGRATE_PID=""

log "seeding $CUSTOMERS customers"
sql -c "INSERT INTO casm.customers (ref_id, external_id, custom_attributes)
        SELECT ('00000000-0000-4000-8000-' || lpad (n::text, 12, '0'))::uuid,
               'BENCH-' || n,
               (SELECT jsonb_object_agg ('attribute' || i, 'seed-' || n)
                FROM generate_series (1, 10) i)
        FROM generate_series (1, $CUSTOMERS) n"
sql -c "VACUUM ANALYZE" -c "CHECKPOINT"

# 3. The yardstick: the worker's statement for one request under pgbench.
# Its one parameter, the JSON array of the validator's commands, becomes a
# pgbench expression: one command with a unique request id, a hash, a
# random seeded customer and 10 attributes, no merge.
statement=$("$WORKER" --statement update_attributes)
command="'[{\"requestId\":\"pgbench-' || :client_id || '-' || :r"
command="$command || '\",\"requestHash\":\"'"
command="$command || md5 (:r::text) || md5 (:n::text)"
command="$command || '\",\"refId\":\"00000000-0000-4000-8000-'"
command="$command || lpad (:n::text, 12, '0') || '\",\"customAttributes\":{'"
separator=""
for name in segmentHint preferredChannel language region tier contractType \
    billingCycle deviceType campaign note; do
    command="$command || '$separator\"$name\":\"v' || :r || '\"'"
    separator=,
done
command="($command || '},\"merge\": false}]')"
# (pgbench would take ":false" for a variable: hence the space.)
[[ $statement == *'$1'* && $statement != *'$2'* ]] \
    || die "the worker's statement does not take one parameter"
statement=${statement//\$1/$command}
{
    printf '\\set n random(1, %d)\n' "$CUSTOMERS"
    printf '\\set r random(1, 999999999999)\n'
    printf '%s;\n' "$statement"
} >"$RUN_DIR/worker-statement.pgbench"

log "pgbench: $PGBENCH_CLIENTS clients, ${PGBENCH_SECONDS}s"
pgbench -n -M prepared -c "$PGBENCH_CLIENTS" -j 2 -T "$PGBENCH_SECONDS" \
    -f "$RUN_DIR/worker-statement.pgbench" "$DATABASE_URL" \
    >"$RUN_DIR/pgbench.out" 2>&1 \
    || { cat "$RUN_DIR/pgbench.out" >&2; die "pgbench failed"; }
pgbench_tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$RUN_DIR/pgbench.out" \
    | head -n 1)
pgbench_p=$(sed -n 's/^latency average = \(.*\)$/\1/p' "$RUN_DIR/pgbench.out")
pgbench_failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' \
    "$RUN_DIR/pgbench.out")
[ -n "$pgbench_tps" ] || { cat "$RUN_DIR/pgbench.out" >&2; die "no tps"; }
rows=$(sql -c "SELECT count (*) FROM casm.requests
               WHERE request_id LIKE 'pgbench-%'")
[ "$rows" -gt 0 ] || die "pgbench changed nothing: check the statement"

# pgbench's rows would be swept by the publisher: they go.
sql -c "DELETE FROM casm.outbox WHERE request_id LIKE 'pgbench-%'" \
    -c "DELETE FROM casm.requests WHERE request_id LIKE 'pgbench-%'"
sql -c "VACUUM ANALYZE" -c "CHECKPOINT"

# 4. The stack, then wrk.
log "starting the stack"
# An API key of the bench's own, in the gateway's key file format.
API_KEY=bench-$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
printf 'bench %s\n' "$(printf '%s' "$API_KEY" | sha256sum | cut -d ' ' -f 1)" \
    >"$RUN_DIR/api-keys"
url=http://127.0.0.1:$HTTP_PORT
! curl -s -o /dev/null --max-time 2 "$url/health" \
    || die "something answers on port $HTTP_PORT already (BENCH_HTTP_PORT)"
env CASM_HOME="$CASM_HOME" BUILD_DIR="$BUILD_DIR" HTTP_PORT="$HTTP_PORT" \
    API_KEYS_FILE="$RUN_DIR/api-keys" \
    BROKER_PORT="$BROKER_PORT" DWHS=0 GATEWAYS=1 VALIDATORS="$VALIDATORS" \
    WORKERS="$WORKERS" PUBLISHERS="$PUBLISHERS" "$ROOT/scripts/up.sh" \
    >/dev/null 2>"$RUN_DIR/up.log" &
UP_PID=$!
deadline=$((SECONDS + 90))
until curl -fsS -o /dev/null --max-time 2 "$url/ready" 2>/dev/null; do
    is_alive "$UP_PID" || { cat "$RUN_DIR/up.log" >&2; die "up.sh exited"; }
    [ "$SECONDS" -lt "$deadline" ] \
        || { cat "$RUN_DIR/up.log" >&2; die "not ready in 90 s"; }
    sleep 0.5
done

declare -A PIDS
for name in "${PROCESSES[@]}"; do
    pid=$(sed -n "s/^up: started $name (pid \([0-9]*\))$/\1/p" \
        "$RUN_DIR/up.log" | tail -n 1)
    [ -n "$pid" ] && is_alive "$pid" || die "no pid for $name"
    PIDS[$name]=$pid
done

# Peak resident memory of a process in MiB (VmHWM).
peak_rss() {
    awk '/^VmHWM:/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status" \
        2>/dev/null || printf 'gone'
}

ms() {
    awk -v us="$1" 'BEGIN { printf "%.2f", us / 1000 }'
}

# CPU time (user + system, all threads) a process has used, in clock ticks.
cpu_ticks() {
    awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0
}

# The PostgreSQL server's processes: the postmaster and its children (the
# casm sessions among them, and the WAL writer, checkpointer...).
pg_pids() {
    local postmaster
    postmaster=$(head -n 1 "$PG_DATA/postmaster.pid" 2>/dev/null) || return 0
    echo "$postmaster"
    pgrep -P "$postmaster" || true
}

# CPU ticks so far of each casm process, then of PostgreSQL, one per line.
cpu_snapshot() {
    local name pid total=0
    for name in "${PROCESSES[@]}"; do
        cpu_ticks "${PIDS[$name]}"
    done
    for pid in $(pg_pids); do
        total=$((total + $(cpu_ticks "$pid")))
    done
    echo "$total"
}

TICKS=$(getconf CLK_TCK)
ROWS=()
CPU_ROWS=()
tag=b$(date +%s)
for connections in $CONNECTIONS; do
    threads=$WRK_THREADS
    [ "$threads" -le "$connections" ] || threads=$connections
    log "wrk: $connections connections, ${WRK_SECONDS}s"
    # A row of its own in the requestIds, so that a connection count given
    # twice sends new requests, not reused ids (422).
    index=${#ROWS[@]}
    out=$RUN_DIR/wrk-$index-$connections.out
    mapfile -t before < <(cpu_snapshot)
    wrk -t "$threads" -c "$connections" -d "${WRK_SECONDS}s" --timeout 10s \
        --latency -s "$ROOT/bench/update.lua" "$url" \
        -- "$tag-r$index-c$connections" "$CUSTOMERS" "$API_KEY" >"$out" 2>&1 \
        || { cat "$out" >&2; die "wrk failed"; }
    mapfile -t after < <(cpu_snapshot)
    result=$(grep '^casm-bench ' "$out") || { cat "$out" >&2; die "no result"; }
    declare -A r=()
    for pair in ${result#casm-bench }; do
        r[${pair%%=*}]=${pair#*=}
    done
    rps=$(awk -v n="${r[requests]}" -v us="${r[duration_us]}" \
        'BEGIN { printf "%.0f", n * 1e6 / us }')
    errors=$((r[connect] + r[read] + r[write] + r[timeout]))
    row=$(printf '%11s %10s %8s %8s %8s %8s %7s' "$connections" "$rps" \
        "$(ms "${r[p50_us]}")" "$(ms "${r[p99_us]}")" \
        "$(ms "${r[max_us]}")" "${r[non200]}" "$errors")
    for name in "${PROCESSES[@]}"; do
        row="$row $(printf '%9s' "$(peak_rss "${PIDS[$name]}")")"
    done
    ROWS+=("$row")
    # CPU microseconds per request of each process, PostgreSQL's, and all.
    row=$(printf '%11s' "$connections")
    sum=0
    for i in "${!after[@]}"; do
        us=$(awk -v d=$((after[i] - before[i])) -v n="${r[requests]}" \
            -v t="$TICKS" 'BEGIN { printf "%.0f", n ? d * 1e6 / t / n : 0 }')
        row="$row $(printf '%9s' "$us")"
        sum=$((sum + us))
    done
    CPU_ROWS+=("$row $(printf '%9s' "$sum")")
    if [ "$connections" = 64 ]; then
        RPS64=$rps
        P99_64=$(ms "${r[p99_us]}")
    fi
    sleep 2
done

# 5. The tables.
# The processes' column names; one instance of a kind is named by the kind
# alone.
process_names() {
    local name kind
    for name in "${PROCESSES[@]}"; do
        kind=${name%-*}
        case "$kind:$VALIDATORS:$WORKERS:$PUBLISHERS" in
            validator:1:*|worker:*:1:*|publisher:*:*:1|gateway:*|broker:*)
                name=$kind ;;
        esac
        printf ' %9s' "$name"
    done
}

printf '\ncasm end to end (wrk, bench/update.lua, %ss per row;' "$WRK_SECONDS"
printf ' peak RSS so far, MiB)\n'
printf '%11s %10s %8s %8s %8s %8s %7s' connections requests/s 'p50 ms' \
    'p99 ms' 'max ms' non-200 errors
process_names
printf '\n'
for row in "${ROWS[@]}"; do
    printf '%s\n' "$row"
done
printf '\nCPU time per request, microseconds (user + system, all threads)\n'
printf '%11s' connections
process_names
printf ' %9s %9s\n' postgres all
for row in "${CPU_ROWS[@]}"; do
    printf '%s\n' "$row"
done
printf '\npgbench (%d clients, %ss, the worker statement, one transaction' \
    "$PGBENCH_CLIENTS" "$PGBENCH_SECONDS"
printf ' per request): %s tps, latency %s, failed %s\n' "$pgbench_tps" \
    "$pgbench_p" "${pgbench_failed:-0}"
if [ -n "${RPS64:-}" ]; then
    ratio=$(awk -v a="$RPS64" -v b="$pgbench_tps" \
        'BEGIN { printf "%.2f", a / b }')
    printf 'casm/pgbench throughput ratio at 64 connections: %s (p99 %s ms)\n' \
        "$ratio" "$P99_64"
fi
