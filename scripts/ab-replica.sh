#!/bin/sh
# Alternating A/B runs of two featmux builds serving as read replicas:
# how docs/results/profile.md, section 28, measured a replica's lookups.
# One primary (run by BIN_B) is filled by 15 s of pushes; then, each
# round, a fresh replica of it run by BIN_A and one run by BIN_B take
# turns, each measured with `featmux bench --workload lookup` (4,096
# examples x 26 single-valued features, 8 clients) after a warm-up.
#
#   scripts/ab-replica.sh ROUNDS BIN_A BIN_B DIM
#
# Prints M rows/s and the replica's CPU per request (all its threads,
# from /proc). BIN_A `primary`: side A measures the primary itself, the
# replica's rate beside its primary's:
#   scripts/ab-replica.sh 2 primary "$bin" 64
# FORMAT: the replicas' row format (f32, f16, int8; default f32).
# TRANSPORT: region (the Unix socket with a shared-memory region, the
# default) or unix (the plain Unix socket). DURATION: seconds per
# measured run (default 5).
set -eu
. "$(dirname "$0")/lib/serve.sh"
[ $# -eq 4 ] || { sed -n '2,19p' "$0" >&2; exit 2; }
rounds=$1 bin_a=$2 bin_b=$3 dim=$4
DURATION="${DURATION:-5}"
case "${TRANSPORT:-region}" in
    region) region="--shared-region" ;;
    unix) region="" ;;
    *) echo "TRANSPORT is region or unix" >&2; exit 2 ;;
esac
shape="--table replicated --examples 4096 --features 26 --values 1 --vocab 100000 --concurrency 8 --batches 4 --chunk-dim $dim"
work=$(mktemp -d)
servers=""
trap '[ -z "$servers" ] || kill $servers 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT INT TERM

mkdir "$work/primary"
start_server "$bin_b" 127.0.0.1:50181 127.0.0.1:8281 "$work/primary"
primary=$server
servers=$primary
"$bin_b" --addr "unix://$work/primary/grpc.sock" --json bench --http http://127.0.0.1:8281 \
    --workload push $shape --optimizer row-wise-adagrad --lr 0.05 --duration 15 >/dev/null

# measure BIN DIR HTTP PID: a warm-up, then a measured lookup run against
# the server on DIR's socket (process PID); prints its figure.
measure() {
    # shellcheck disable=SC2086
    "$1" --addr "unix://$2/grpc.sock" --json bench --http "http://$3" $region \
        --workload lookup $shape --duration 3 >/dev/null
    before=$(awk '{print $14 + $15}' "/proc/$4/stat")
    # shellcheck disable=SC2086
    "$1" --addr "unix://$2/grpc.sock" --json bench --http "http://$3" $region \
        --workload lookup $shape --duration "$DURATION" >"$work/run.json"
    after=$(awk '{print $14 + $15}' "/proc/$4/stat")
    python3 - "$work/run.json" "$before" "$after" <<'PY'
import json, os, sys
run = json.load(open(sys.argv[1]))
ms = (int(sys.argv[3]) - int(sys.argv[2])) * 1e3 / os.sysconf("SC_CLK_TCK") / run["requests"]
print(f"{run['rows_per_s'] / 1e6:.2f} M rows/s, {ms:.2f} ms/request")
PY
}

# one BIN: a replica run by BIN, bootstrapped afresh, measured, stopped.
one() {
    rm -rf "$work/replica"
    mkdir "$work/replica"
    start_server "$1" 127.0.0.1:50182 127.0.0.1:8282 "$work/replica" \
        --replica-of http://127.0.0.1:50181 --row-format "${FORMAT:-f32}"
    replica=$server
    sleep 2
    measure "$1" "$work/replica" 127.0.0.1:8282 "$replica"
    kill "$replica"
    wait "$replica" 2>/dev/null || true
}

for round in $(seq "$rounds"); do
    if [ "$bin_a" = primary ]; then
        a=$(measure "$bin_b" "$work/primary" 127.0.0.1:8281 "$primary")
    else
        a=$(one "$bin_a")
    fi
    b=$(one "$bin_b")
    echo "round $round: A $a | B $b"
done
