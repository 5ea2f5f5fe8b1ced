#!/bin/sh
# Alternating A/B runs of two featmux builds (or two transports), each run
# against a fresh release server, so this host's drift (a fifth between
# runs) hits both sides alike: how every "before -> after, every round
# higher" figure in docs/results/profile.md was measured.
#
#   scripts/ab.sh ROUNDS BIN_A BIN_B service lookup|push|train
#   scripts/ab.sh ROUNDS BIN_A BIN_B engine engine-lookup|engine-push|engine-train
#   scripts/ab.sh ROUNDS BIN_A BIN_B http RATE
#
# service and engine print M rows/s (4,096 examples x 26 single-valued
# features x 16 floats, row-wise Adagrad, 8 clients), service also the
# server's CPU per request (all its threads, from /proc/PID/stat: on a
# host whose throughput drifts, the steadier figure) and how it splits
# between the server's threads (bulk: the engine's lane; flusher; rocksdb:
# RocksDB's flushes and compactions; tokio: the network); http prints the
# server's CPU per single-example lookup with the open-loop p50 and p99
# at RATE requests/s.
# TRANSPORT_A / TRANSPORT_B (tcp, unix or region, default tcp) pick how
# side A / B reaches the server, e.g. the same build over TCP and its Unix
# socket:
#   TRANSPORT_B=unix scripts/ab.sh 5 "$bin" "$bin" service lookup
# region: the Unix socket with a shared-memory region (lookup, push, train).
# DURATION: seconds per measured run (default 5). SHAPE: the batches'
# shape instead of the default, e.g. bags of 20 values:
#   SHAPE="--examples 512 --features 26 --values 20 --vocab 100000 --concurrency 8 --batches 4" \
#       scripts/ab.sh 4 "$a" "$b" engine engine-lookup
set -eu
. "$(dirname "$0")/lib/serve.sh"
[ $# -eq 5 ] || { sed -n '2,25p' "$0" >&2; exit 2; }
rounds=$1 bin_a=$2 bin_b=$3 kind=$4 what=$5
DURATION="${DURATION:-5}"
GRPC=127.0.0.1:50081
HTTP=127.0.0.1:8181
shape="${SHAPE:---examples 4096 --features 26 --values 1 --vocab 100000 --concurrency 8 --batches 4}"
train="--table rwa --optimizer row-wise-adagrad --lr 0.05"

# threads PID: each thread of PID with the CPU ticks it has used
# (user + system), "NAME TICKS" per line: how the server's CPU splits (a
# thread that exits mid-run counts in the total only, and one that exits
# while it is read is left out).
threads() {
    for task in /proc/"$1"/task/*; do
        { name=$(cat "$task/comm") && ticks=$(awk '{print $14 + $15}' "$task/stat"); } 2>/dev/null ||
            continue
        printf '%s %s\n' "$name" "$ticks"
    done
}

# one BIN TRANSPORT: one measured run; prints its figure.
one() {
    work=$(mktemp -d)
    start_server "$1" "$GRPC" "$HTTP" "$work"
    pid=$server
    region=""
    case $2 in
        unix) addr="unix://$work/grpc.sock" ;;
        region) addr="unix://$work/grpc.sock" region="--shared-region" ;;
        *) addr="http://$GRPC" ;;
    esac
    bench="$1 --addr $addr --json bench --http http://$HTTP $region"
    case $kind in
        engine)
            $bench --workload "$what" $train $shape --duration "$DURATION" >"$work/run.json"
            python3 -c "import json,sys; print(f\"{json.load(open(sys.argv[1]))['rows_per_s'] / 1e6:.2f}\")" \
                "$work/run.json"
            ;;
        service)
            before=$(awk '{print $14 + $15}' "/proc/$pid/stat")
            threads "$pid" >"$work/threads-before"
            $bench --workload "$what" $train $shape --duration "$DURATION" >"$work/run.json"
            threads "$pid" >"$work/threads-after"
            after=$(awk '{print $14 + $15}' "/proc/$pid/stat")
            python3 - "$work/run.json" "$before" "$after" "$work/threads-before" "$work/threads-after" <<'PY'
import collections, json, os, re, sys
run = json.load(open(sys.argv[1]))
def groups(path):
    ticks = collections.Counter()
    for line in open(path):
        name, t = line.rsplit(" ", 1)
        # featmux-bulk-0 -> bulk, rocksdb:low -> rocksdb, tokio-rt-worker -> tokio
        group = re.sub(r"^featmux-|[-:].*$", "", re.sub(r"-\d+$", "", name))
        ticks[group] += int(t)
    return ticks
per = 1e3 / os.sysconf("SC_CLK_TCK") / run["requests"]
total = (int(sys.argv[3]) - int(sys.argv[2])) * per
before, after = groups(sys.argv[4]), groups(sys.argv[5])
ms = {g: (after[g] - before[g]) * per for g in after if after[g] > before[g]}
split = ", ".join(f"{g} {v:.2f}" for g, v in sorted(ms.items(), key=lambda kv: -kv[1]))
print(f"{run['rows_per_s'] / 1e6:.2f} M rows/s, server {total:.2f} ms/request ({split})")
PY
            ;;
        http)
            http="--workload http-lookup --table single --examples 1 --features 26 --vocab 100000 --concurrency 16 --rate $what"
            $bench $http --duration 2 >/dev/null # warm-up (creates the table)
            before=$(awk '{print $14 + $15}' "/proc/$pid/stat")
            $bench $http --duration "$DURATION" >"$work/run.json"
            after=$(awk '{print $14 + $15}' "/proc/$pid/stat")
            python3 - "$work/run.json" "$before" "$after" <<'PY'
import json, os, sys
run = json.load(open(sys.argv[1]))
ticks = int(sys.argv[3]) - int(sys.argv[2])
us = 1e6 * ticks / os.sysconf("SC_CLK_TCK") / run["requests"]
lat = run["latency_us"]
print(f"{us:.1f} us/request, p50 {lat['p50']} us, p99 {lat['p99']} us")
PY
            ;;
        *) echo "unknown kind $kind (service, engine or http)" >&2; exit 2 ;;
    esac
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    rm -rf "$work"
}

for round in $(seq "$rounds"); do
    a=$(one "$bin_a" "${TRANSPORT_A:-tcp}")
    b=$(one "$bin_b" "${TRANSPORT_B:-tcp}")
    echo "round $round: A $a | B $b"
done
