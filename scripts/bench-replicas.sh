#!/bin/sh
# Reproduces docs/results/replicas.md: read replicas measured on this
# machine (primary, replicas and load generators share its cores).
#
#   scripts/bench-replicas.sh             # ~4 min
#   DURATION=10 scripts/bench-replicas.sh # shorter freshness runs
#   SETTLE=0 scripts/bench-replicas.sh    # freshness right after the bootstrap
#
# 1. Freshness: a replica's lag from a flush committed on the primary to
#    applied on the replica (its featmux_replica_apply_lag_seconds
#    histogram, 20 % buckets), while `featmux bench` pushes 1,000 and
#    10,000 rows/s open loop, default flush interval (1 s).
# 2. Bootstrap: a replica started from an empty directory copies a primary
#    whose table has about 10^6 stored rows (its "copied the primary" log).
# 3. Row formats: bytes per row and gRPC lookup throughput of an f32, an
#    f16 and an int8 replica and of the primary, one after another.
# 4. MovieLens-100k trained through the primary, test AUC through each
#    replica, and the occupancy report against exact counts.
# Raw results in RESULTS (default docs/results/replicas-run).
set -eu
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/featmux-target}"
DURATION="${DURATION:-30}"
# Seconds between the bootstrap and the freshness runs: the replica's
# RocksDB compacts the copied database meanwhile (measured separately).
SETTLE="${SETTLE:-15}"
RESULTS="${RESULTS:-docs/results/replicas-run}"
DATA=data/movielens/ml-100k.csv
PRIMARY=127.0.0.1:50091

[ -f "$DATA" ] || scripts/fetch-movielens.sh "$DATA"
cargo build --release -p featmux-cli
FEATMUX="$CARGO_TARGET_DIR/release/featmux"
work=$(mktemp -d)
pids=""
cleanup() {
    # shellcheck disable=SC2086
    [ -z "$pids" ] || kill $pids 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

# start NAME GRPC_PORT HTTP_PORT [serve flags...]: a server, JSON logs in
# $work/NAME.log, waiting until /readyz answers 200.
start() {
    name=$1 grpc=$2 http=$3
    shift 3
    "$FEATMUX" serve --data-dir "$work/$name" --grpc-addr "127.0.0.1:$grpc" \
        --http-addr "127.0.0.1:$http" --log-format json "$@" >"$work/$name.log" 2>&1 &
    pids="$pids $!"
    for _ in $(seq 600); do
        curl -sf "http://127.0.0.1:$http/readyz" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "$name did not become ready:" >&2
    cat "$work/$name.log" >&2
    exit 1
}
bench() {
    addr=$1
    shift
    "$FEATMUX" --addr "http://$addr" --json bench --table bench --features 10 --rows 1000000 \
        --optimizer row-wise-adagrad "$@"
}

rm -rf "$RESULTS"
mkdir -p "$RESULTS"
# The occupancy check compares against exact counts: every batch observed.
printf '[occupancy]\nsample_every = 1\n' >"$work/primary.toml"
start primary 50091 8111 --config "$work/primary.toml"

echo "== filling the table (about 10^6 stored rows)" >&2
bench "$PRIMARY" --workload push --examples 4096 --duration 20 --concurrency 2 \
    >"$RESULTS/fill.json"
sleep 2

echo "== bootstrap of an empty f32 replica" >&2
start f32 50092 8112 --replica-of "http://$PRIMARY" --row-format f32
grep '"copied the primary"' "$work/f32.log" >"$RESULTS/bootstrap.json"
sleep "$SETTLE"

for rows in 1000 10000; do
    echo "== freshness at $rows pushed rows/s" >&2
    curl -s http://127.0.0.1:8112/metrics >"$RESULTS/metrics-before-$rows.txt"
    # 10 examples × 10 features: 100 rows per push.
    bench "$PRIMARY" --workload push --examples 10 --concurrency 2 \
        --rate "$((rows / 100))" --duration "$DURATION" >"$RESULTS/push-$rows.json"
    sleep 3
    curl -s http://127.0.0.1:8112/metrics >"$RESULTS/metrics-after-$rows.txt"
done

echo "== row formats" >&2
start f16 50093 8113 --replica-of "http://$PRIMARY" --row-format f16
start int8 50094 8114 --replica-of "http://$PRIMARY" --row-format int8
sleep 3
for target in primary:50091 f32:50092 f16:50093 int8:50094; do
    name=${target%%:*} port=${target#*:}
    "$FEATMUX" --addr "http://127.0.0.1:$port" --json table show bench >"$RESULTS/table-$name.json"
    bench "127.0.0.1:$port" --workload lookup --examples 4096 --concurrency 2 --duration 10 \
        >"$RESULTS/lookup-$name.json"
done

echo "== MovieLens through the primary, evaluated through each replica" >&2
"$FEATMUX" --addr "http://$PRIMARY" train --data "$DATA" --label rating --positive '>=4' \
    --categorical user_id,item_id,age,gender,occupation,zip_code,release_year --multi 'genres:|' \
    --epochs 5 --batch 256 --hidden 64,32 --chunk-dim 16 --sparse-optimizer adagrad \
    --sparse-lr 0.05 --dense-lr 0.001 --layout unified --rows 2000 --table movielens \
    --eval-replicas http://127.0.0.1:50092,http://127.0.0.1:50093,http://127.0.0.1:50094 \
    --check-occupancy --out "$RESULTS/movielens.json" >/dev/null

python3 scripts/lib/replica_report.py "$RESULTS" >docs/results/replicas.md
echo "wrote docs/results/replicas.md" >&2
