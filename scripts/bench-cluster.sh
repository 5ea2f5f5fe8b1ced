#!/bin/sh
# The cluster client's fan-out cost on one machine: the same lookups and
# pushes (4,096 examples x 26 features, 8 clients, same table shape) sent
# to one release server with the plain client, then routed by the
# ClusterClient over a cluster of 1 and of 3 shards (scripts/cluster-local.sh,
# one etcd member each) on the same machine (total work equal; 3 shards
# share this machine's cores, so this measures what routing costs, not
# what more machines give). Prints examples/s and latency for each.
#
#   scripts/bench-cluster.sh [seconds per run, default 10]
set -eu
cd "$(dirname "$0")/.."
seconds="${1:-10}"
bin="${CARGO_TARGET_DIR:-/var/tmp/featmux-target}/release/featmux"
work=$(mktemp -d /var/tmp/featmux-bench-cluster.XXXXXX)
pid=""
one() { DIR="$work/one" SHARDS=1 ETCD_MEMBERS=1 PORT_BASE=24000 FEATMUX="$bin" scripts/cluster-local.sh "$@"; }
three() { DIR="$work/three" SHARDS=3 ETCD_MEMBERS=1 PORT_BASE=25000 FEATMUX="$bin" scripts/cluster-local.sh "$@"; }
cleanup() {
    [ -z "$pid" ] || kill "$pid" 2>/dev/null || true
    one down
    three down
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM
"$bin" serve --data-dir "$work/single" --grpc-addr 127.0.0.1:50090 \
    --http-addr 127.0.0.1:8090 2>"$work/single.log" &
pid=$!
until curl -sf http://127.0.0.1:8090/readyz >/dev/null 2>&1; do sleep 0.05; done
one up
three up
shape="--examples 4096 --features 26 --concurrency 8 --duration $seconds"
for workload in lookup push; do
    # shellcheck disable=SC2086
    "$bin" --addr http://127.0.0.1:50090 --json bench --workload "$workload" $shape \
        --table single >"$work/single-$workload.json"
    # shellcheck disable=SC2086
    "$bin" --json bench --workload "$workload" $shape --table routed \
        --etcd "$(one endpoints)" --cluster-prefix /featmux/local >"$work/routed1-$workload.json"
    # shellcheck disable=SC2086
    "$bin" --json bench --workload "$workload" $shape --table routed \
        --etcd "$(three endpoints)" --cluster-prefix /featmux/local >"$work/routed3-$workload.json"
done
python3 - "$work" <<'PY'
import json, sys
w = sys.argv[1]
for workload in ("lookup", "push"):
    base = None
    for name, label in (("single", "plain client, 1 server"), ("routed1", "cluster client, 1 shard"), ("routed3", "cluster client, 3 shards")):
        r = json.load(open(f"{w}/{name}-{workload}.json"))
        rate = r["examples_per_s"]
        base = base or rate
        print(f"{workload:<6} {label:<26} {rate:>10,.0f} examples/s ({rate / base:.0%})  "
              f"p50 {r['latency_us']['p50'] / 1000:.1f} ms  p99 {r['latency_us']['p99'] / 1000:.1f} ms  errors {r['errors']}")
PY
