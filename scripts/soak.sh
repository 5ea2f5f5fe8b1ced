#!/bin/sh
# Soak test (not CI): a release `featmux serve` with tokens and a memory
# budget, 64 clients mixing lookups (16), pushes (16), Train streams (16),
# HTTP lookups (8) and admin calls (8 loops: stats, list, create/drop a
# table, checkpoint create/delete) for a while; every 10 s the server's
# resident memory, open file descriptors, live tickets, remembered push ids,
# WAL and database bytes are sampled. Then the server is stopped and started again, and the
# restart is timed (the write-ahead log must not make it slow).
#
#   scripts/soak.sh [seconds, default 600] [table rows, default 1000000]
#
# Writes /var/tmp/featmux-soak/{samples.csv,bench-*.json,summary.txt}.
# Needs the release binary: cargo build --release -p featmux-cli
set -eu
cd "$(dirname "$0")/.."
seconds="${1:-600}"
rows="${2:-1000000}"
bin="${CARGO_TARGET_DIR:-/var/tmp/featmux-target}/release/featmux"
out=/var/tmp/featmux-soak
rm -rf "$out"
mkdir -p "$out"
admin=soak-admin
data=soak-data
cat >"$out/featmux.toml" <<TOML
data_dir = "$out/data"
grpc_addr = "127.0.0.1:50061"
http_addr = "127.0.0.1:8091"
log_format = "json"
[auth]
admin_token = "$admin"
data_token = "$data"
[limits]
max_memory_bytes = 4294967296
TOML

start_server() {
    "$bin" serve --config "$out/featmux.toml" 2>>"$out/server.log" &
    server=$!
    started=$(date +%s.%N)
    until curl -sf http://127.0.0.1:8091/readyz >/dev/null 2>&1; do
        kill -0 "$server" 2>/dev/null || { echo "server died; see $out/server.log"; exit 1; }
        sleep 0.05
    done
    ready=$(echo "$(date +%s.%N) - $started" | bc)
}

start_server
echo "server $server ready in ${ready}s"
grpc=http://127.0.0.1:50061
# The benches use the admin token (it also works on the data plane): they
# check the table exists, an admin call.
common="--addr $grpc --token $admin --json bench --http http://127.0.0.1:8091 --table soak --rows $rows --features 8 --vocab $rows --zipf 1.05 --duration $seconds"
# Create the table first (benches share it), then the load.
"$bin" --addr $grpc --token $admin table create soak --rows "$rows" --chunk-dim 16 \
    --optimizer adagrad --lr 0.05 $(for f in 0 1 2 3 4 5 6 7; do printf -- '--feature f%s ' $f; done) \
    >/dev/null
pids=""
for workload in lookup push train; do
    # shellcheck disable=SC2086
    "$bin" $common --workload $workload --examples 256 --concurrency 16 >"$out/bench-$workload.json" 2>"$out/bench-$workload.err" &
    pids="$pids $!"
done
# shellcheck disable=SC2086
"$bin" $common --workload http-lookup --examples 4 --concurrency 8 >"$out/bench-http-lookup.json" 2>"$out/bench-http-lookup.err" &
pids="$pids $!"

admin_loop() {
    i=0
    deadline=$(($(date +%s) + seconds))
    errors=0
    while [ "$(date +%s)" -lt "$deadline" ]; do
        f="--addr $grpc --token $admin"
        # shellcheck disable=SC2086
        {
            "$bin" $f stats >/dev/null &&
                "$bin" $f table list >/dev/null &&
                "$bin" $f table create "scratch$1" --rows 10000 --chunk-dim 8 --feature x >/dev/null &&
                "$bin" $f table drop "scratch$1" >/dev/null
        } || errors=$((errors + 1))
        if [ $((i % 10)) -eq 0 ] && [ "$1" -eq 0 ]; then
            # shellcheck disable=SC2086
            id=$("$bin" $f --json checkpoint create | sed -n 's/.*"id": *\([0-9]*\).*/\1/p' | head -1)
            # shellcheck disable=SC2086
            [ -n "$id" ] && "$bin" $f checkpoint delete "$id" >/dev/null || errors=$((errors + 1))
        fi
        i=$((i + 1))
    done
    echo "$i $errors" >"$out/admin-$1.txt"
}
for a in 0 1 2 3 4 5 6 7; do
    admin_loop $a &
    pids="$pids $!"
done

echo "t_s,rss_kib,fds,live_tickets,remembered_pushes,wal_bytes,database_bytes" >"$out/samples.csv"
t=0
while [ "$t" -le "$seconds" ]; do
    rss=$(awk '/VmRSS/ {print $2}' "/proc/$server/status")
    fds=$(ls "/proc/$server/fd" | wc -l)
    metrics=$(curl -sf -H "authorization: Bearer $admin" http://127.0.0.1:8091/metrics)
    metric() { echo "$metrics" | awk -v m="$1" '$1 == m {print $2}'; }
    echo "$t,$rss,$fds,$(metric featmux_live_tickets),$(metric featmux_remembered_pushes),$(metric featmux_wal_bytes),$(metric featmux_database_bytes)" >>"$out/samples.csv"
    sleep 10
    t=$((t + 10))
done
for p in $pids; do wait "$p" || true; done

kill -TERM "$server"
wait "$server" && stop_status=0 || stop_status=$?
data_bytes=$(du -sb "$out/data" | cut -f1)
start_server
restart=$ready
kill -TERM "$server"
wait "$server" || true

{
    echo "soak: ${seconds}s, table of $rows rows x 16 (adagrad), 64 clients"
    for w in lookup push train http-lookup; do
        python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(sys.argv[2], r['requests'], 'requests,', r['errors'], 'errors')" \
            "$out/bench-$w.json" "$w" || echo "$w: failed: $(head -c 300 "$out/bench-$w.err")"
    done
    echo "admin loops (iterations errors): $(cat "$out"/admin-*.txt | tr '\n' ';')"
    echo "graceful stop exit status: $stop_status"
    echo "data directory after the soak: $data_bytes bytes"
    echo "restart ready in ${restart}s"
    echo "samples (t_s,rss_kib,fds,live_tickets,remembered_pushes,wal_bytes,database_bytes): $out/samples.csv"
} | tee "$out/summary.txt"
