#!/usr/bin/env bash
# The DWH ingester's benchmark: how many events per second one casm-dwh
# instance stores, and its peak memory, beside two baselines measured in the
# same run on the same events:
#
#   kafka read   kcat reading the whole topic (what any consumer can get)
#   COPY         psql \copy of the same events into a table shaped like
#                dwh.business_transactions (primary key and customer index):
#                PostgreSQL's bulk path for the history alone, without the
#                current customers, the attribute index or the metrics
#
# Everything runs in a temporary directory: a private PostgreSQL
# (scripts/pg.sh) and the Kafka-protocol mock broker (casm-kafka), both
# stopped at the end. The mock keeps at most about 5 MB per partition in
# memory, so the topic gets many partitions (48) to hold all the events.
#
#   bench/dwh_bench.sh [EVENTS]
#
# Environment: BUILD_DIR (build), DWH_BENCH_EVENTS (200000),
# DWH_BENCH_CUSTOMERS (20000), DWH_BENCH_PARTITIONS (48),
# DWH_BENCH_PG_PORT (55690), DWH_BENCH_CHURN=1 (every attribute value
# changes at every event: the worst case for the attribute index), plus any
# DWH_* setting of casm-dwh (DWH_BATCH_MAX, DWH_BATCH_MS) and LOG_LEVEL;
# DWH_BENCH_KEEP=1 keeps the directory (casm-dwh's log is dwh.log).
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD_DIR:-$here/build}
events=${1:-${DWH_BENCH_EVENTS:-200000}}
customers=${DWH_BENCH_CUSTOMERS:-20000}
partitions=${DWH_BENCH_PARTITIONS:-48}
pg_port=${DWH_BENCH_PG_PORT:-55690}
topic=ocs.business-transactions

for binary in dwh/casm-dwh dwh/casm-dwh-load tools/kafka-mock/casm-kafka; do
    [ -x "$build/$binary" ] || {
        echo "dwh_bench: missing $build/$binary (build first)" >&2
        exit 1
    }
done
command -v kcat >/dev/null || { echo "dwh_bench: kcat missing" >&2; exit 1; }

tmp=$(mktemp -d /tmp/casm-dwh-bench.XXXXXX)
chmod 755 "$tmp"
kafka_pid=""
dwh_pid=""

cleanup() {
    [ -z "$dwh_pid" ] || kill -KILL "$dwh_pid" 2>/dev/null || true
    [ -z "$kafka_pid" ] || kill -TERM "$kafka_pid" 2>/dev/null || true
    "$here/scripts/pg.sh" stop "$tmp/pg" >/dev/null 2>&1 || true
    if [ "${DWH_BENCH_KEEP:-0}" = 1 ]; then
        echo "dwh_bench: kept $tmp" >&2
    else
        rm -rf "$tmp"
    fi
}
trap cleanup EXIT

now() {
    date +%s.%N
}

# Seconds between two timestamps, with three decimals.
elapsed() {
    awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'
}

rate() {
    awk -v n="$1" -v s="$2" 'BEGIN { printf "%.0f", (s > 0 ? n / s : 0) }'
}

echo "dwh_bench: $events events, $customers customers, $partitions partitions"

database_url=$("$here/scripts/pg.sh" start "$tmp/pg" "$pg_port" \
    2>"$tmp/pg.log" | sed -n 's/^DATABASE_URL=//p')
[ -n "$database_url" ] || { cat "$tmp/pg.log" >&2; exit 1; }
sql() {
    psql -X -q -At -v ON_ERROR_STOP=1 -d "$database_url" "$@"
}

KAFKA_PARTITIONS=$partitions KAFKA_TOPIC=$topic \
    "$build/tools/kafka-mock/casm-kafka" >"$tmp/kafka.out" 2>"$tmp/kafka.log" &
kafka_pid=$!
brokers=""
for _ in $(seq 100); do
    brokers=$(sed -n 's/^KAFKA_BROKERS=//p' "$tmp/kafka.out")
    [ -n "$brokers" ] && break
    sleep 0.1
done
[ -n "$brokers" ] || { cat "$tmp/kafka.log" >&2; exit 1; }

# 1. Load the topic.
churn=""
[ "${DWH_BENCH_CHURN:-0}" = 1 ] && churn=--churn
start=$(now)
"$build/dwh/casm-dwh-load" --brokers "$brokers" --topic "$topic" \
    --count "$events" --customers "$customers" --seed "$$" $churn >/dev/null
load_s=$(elapsed "$start" "$(now)")

# 2. Baseline: read the whole topic with kcat.
start=$(now)
kcat -C -b "$brokers" -t "$topic" -e -q -o beginning -J >"$tmp/events.json"
read_s=$(elapsed "$start" "$(now)")
read_count=$(wc -l <"$tmp/events.json")

# 3. Baseline: the same events into a history-shaped table with COPY.
python3 - "$tmp/events.json" "$tmp/events.tsv" <<'PY'
import json, sys
def cell(text):
    return (text.replace("\\", "\\\\").replace("\t", "\\t")
                .replace("\n", "\\n").replace("\r", "\\r"))
with open(sys.argv[1]) as src, open(sys.argv[2], "w") as out:
    for line in src:
        m = json.loads(line)
        raw = m.get("headers") or []
        h = dict(zip(raw[0::2], raw[1::2]))
        v = json.loads(m["payload"])
        out.write("\t".join(cell(str(x)) for x in (
            h["X-Ocs-Io-transaction-id"], h["X-Ocs-Io-operation"],
            h["X-Ocs-Io-request-id"], v["refId"], v["version"],
            v["modifiedAt"], m["payload"], m["partition"], m["offset"])))
        out.write("\n")
PY
sql -c "CREATE TABLE copy_history (
    transaction_id uuid PRIMARY KEY, operation text NOT NULL,
    request_id text NOT NULL, ref_id uuid NOT NULL, version bigint NOT NULL,
    event_time timestamptz, event jsonb NOT NULL,
    kafka_partition integer NOT NULL, kafka_offset bigint NOT NULL,
    ingested_at timestamptz NOT NULL DEFAULT now ());
    CREATE INDEX ON copy_history (ref_id, version); CHECKPOINT"
start=$(now)
columns="transaction_id, operation, request_id, ref_id, version, event_time"
columns="$columns, event, kafka_partition, kafka_offset"
sql -c "\\copy copy_history ($columns) FROM '$tmp/events.tsv'"
copy_s=$(elapsed "$start" "$(now)")
copy_count=$(sql -c "SELECT count(*) FROM copy_history")
sql -c "DROP TABLE copy_history; CHECKPOINT"

# CPU seconds (user + system) of a process, and of the PostgreSQL server's
# processes (the postmaster's children): contention on a shared machine
# stretches the wall clock, not these.
ticks=$(getconf CLK_TCK)
cpu_of() {
    awk -v t="$ticks" '{ printf "%.2f", ($14 + $15) / t }' "/proc/$1/stat" \
        2>/dev/null || echo 0
}
postgres_cpu() {
    local master total=0 pid
    master=$(head -n 1 "$tmp/pg/postmaster.pid")
    for pid in $(pgrep -P "$master"); do
        total=$(awk -v a="$total" -v b="$(cpu_of "$pid")" \
            'BEGIN { printf "%.2f", a + b }')
    done
    echo "$total"
}

# 4. casm-dwh: from its first stored batch to the last event.
stored() {
    sql -c "SELECT coalesce(sum(count), 0) FROM dwh.metrics_daily" \
        2>/dev/null || echo 0
}
pg_cpu_before=$(postgres_cpu)
env DATABASE_URL="$database_url" KAFKA_BROKERS="$brokers" \
    KAFKA_TOPIC="$topic" INSTANCE=dwh-bench LOG_LEVEL="${LOG_LEVEL:-info}" \
    "$build/dwh/casm-dwh" 2>"$tmp/dwh.log" &
dwh_pid=$!
started=$(now)
first_at=""
first_count=0
count=0
deadline=$(( $(date +%s) + 600 ))
while [ "$count" -lt "$events" ]; do
    if ! kill -0 "$dwh_pid" 2>/dev/null; then
        tail -n 20 "$tmp/dwh.log" >&2
        echo "dwh_bench: casm-dwh exited" >&2
        exit 1
    fi
    [ "$(date +%s)" -lt "$deadline" ] || {
        echo "dwh_bench: only $count of $events stored in 600 s" >&2
        exit 1
    }
    count=$(stored)
    if [ -z "$first_at" ] && [ "$count" -gt 0 ]; then
        first_at=$(now)
        first_count=$count
    fi
    sleep 0.2
done
done_at=$(now)
hwm_kb=$(awk '/^VmHWM/ { print $2 }' "/proc/$dwh_pid/status")
dwh_cpu=$(cpu_of "$dwh_pid")
pg_cpu=$(postgres_cpu)
backend_cpu=0
for pid in $(sql -c "SELECT pid FROM pg_stat_activity
                     WHERE application_name = 'casm-dwh'"); do
    backend_cpu=$(awk -v a="$backend_cpu" -v b="$(cpu_of "$pid")" \
        'BEGIN { printf "%.2f", a + b }')
done
start=$(now)
kill -TERM "$dwh_pid"
wait "$dwh_pid" || true
stop_s=$(elapsed "$start" "$(now)")
dwh_pid=""

dwh_s=$(elapsed "$first_at" "$done_at")
dwh_all_s=$(elapsed "$started" "$done_at")
dwh_events=$((events - first_count))
check=$(sql -c "SELECT (SELECT count(*) FROM dwh.business_transactions)
                       || ' history, ' ||
                       (SELECT count(*) FROM dwh.customers) || ' customers, '
                       || (SELECT count(*) FROM dwh.custom_attributes)
                       || ' attribute rows'")

printf '\n%-34s %12s %10s %14s\n' "" events seconds events/s
printf '%-34s %12s %10s %14s\n' "load (casm-dwh-load, producer)" \
    "$events" "$load_s" "$(rate "$events" "$load_s")"
printf '%-34s %12s %10s %14s\n' "baseline: kafka read (kcat)" \
    "$read_count" "$read_s" "$(rate "$read_count" "$read_s")"
printf '%-34s %12s %10s %14s\n' "baseline: COPY into history only" \
    "$copy_count" "$copy_s" "$(rate "$copy_count" "$copy_s")"
printf '%-34s %12s %10s %14s\n' "casm-dwh (first batch to last)" \
    "$dwh_events" "$dwh_s" "$(rate "$dwh_events" "$dwh_s")"
printf '%-34s %12s %10s %14s\n' "casm-dwh (with start, group join)" \
    "$events" "$dwh_all_s" "$(rate "$events" "$dwh_all_s")"
printf '\ncasm-dwh peak RSS (VmHWM): %s kB; SIGTERM to exit: %s s\n' \
    "$hwm_kb" "$stop_s"
awk -v d="$dwh_cpu" -v p="$pg_cpu" -v p0="$pg_cpu_before" -v n="$events" \
    -v b="$backend_cpu" \
    'BEGIN { printf "CPU: casm-dwh %.2f s, PostgreSQL %.2f s (its sessions " \
             "%.2f s): %.0f + %.0f us per event\n", d, p - p0, b, \
             d * 1e6 / n, (p - p0) * 1e6 / n }'
printf 'load average at the end: %s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
printf 'warehouse: %s\n' "$check"
