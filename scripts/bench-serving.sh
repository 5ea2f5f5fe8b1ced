#!/bin/sh
# Serving beside training (issue "Performance", target 4): HTTP
# single-example lookups, open loop, while training saturates the same
# `featmux serve` (release build). One table of 10^6 rows x 16, row-wise
# Adagrad, 26 single-valued features; training clients send batches of
# 512 examples: LOOKUP gRPC lookup clients, TRAIN Train streams (lookup with
# ticket, then push), PUSH push clients; the HTTP lookups arrive at RATE
# req/s. Everything shares this machine's cores.
#
#   scripts/bench-serving.sh                 # 100 s, writes RESULTS/*.json
#   DURATION=30 RESULTS=/tmp/x scripts/bench-serving.sh
#   SERVE_FLAGS="--config my.toml" scripts/bench-serving.sh
#   FEATMUX=/path/to/featmux scripts/bench-serving.sh   # another build
#
# TRAINERS_NICE=10 runs the training clients at that lower CPU priority:
# a diagnostic for how much of the serving tail is their CPU on this shared
# host (trainers normally run elsewhere).
#
# The HTTP load generator keeps at most HTTP_CONCURRENCY (16) requests in
# flight; when answers are slower than that allows, requests queue in it
# and their latency, counted from when each was due, grows.
#
# Then `python3 scripts/lib/serving_report.py RESULTS...` tabulates runs.
set -eu
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/featmux-target}"
DURATION="${DURATION:-100}"
RATE="${RATE:-500}"
LOOKUP="${LOOKUP:-24}"
TRAIN="${TRAIN:-16}"
PUSH="${PUSH:-8}"
HTTP_CONCURRENCY="${HTTP_CONCURRENCY:-16}"
TRAINERS_NICE="${TRAINERS_NICE:-0}"
RESULTS="${RESULTS:-docs/results/serving-run}"
GRPC=127.0.0.1:50081
HTTP=127.0.0.1:8101

if [ -z "${FEATMUX:-}" ]; then
    cargo build --release -p featmux-cli
    FEATMUX="$CARGO_TARGET_DIR/release/featmux"
fi
work=$(mktemp -d)
server=""
clients=""
cleanup() {
    # shellcheck disable=SC2086
    [ -z "$server$clients" ] || kill $server $clients 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

# shellcheck disable=SC2086
"$FEATMUX" serve --data-dir "$work/data" --grpc-addr "$GRPC" --http-addr "$HTTP" \
    --log-format json ${SERVE_FLAGS:-} >"$work/server.log" 2>&1 &
server=$!
for _ in $(seq 300); do
    curl -sf "http://$HTTP/readyz" >/dev/null 2>&1 && break
    sleep 0.1
done
rm -rf "$RESULTS"
mkdir -p "$RESULTS"
common="--addr http://$GRPC --json bench --http http://$HTTP --table serving --rows 1000000 \
    --features 26 --values 1 --vocab 100000 --optimizer row-wise-adagrad --lr 0.05"
# Create the table before the clients race to.
# shellcheck disable=SC2086
"$FEATMUX" $common --workload lookup --examples 1 --requests 1 >/dev/null
# run NICE NAME [bench flags...]
run() {
    level=$1 name=$2
    shift 2
    # shellcheck disable=SC2086
    nice -n "$level" "$FEATMUX" $common --duration "$DURATION" "$@" >"$RESULTS/$name.json" &
    clients="$clients $!"
}
run "$TRAINERS_NICE" lookup --workload lookup --examples 512 --concurrency "$LOOKUP"
run "$TRAINERS_NICE" train --workload train --examples 512 --concurrency "$TRAIN"
run "$TRAINERS_NICE" push --workload push --examples 512 --concurrency "$PUSH"
run 0 http --workload http-lookup --examples 1 --concurrency "$HTTP_CONCURRENCY" --rate "$RATE"
# shellcheck disable=SC2086
wait $clients
clients=""
cp "$work/server.log" "$RESULTS/server.log"
echo "wrote $RESULTS" >&2
