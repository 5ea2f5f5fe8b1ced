#!/bin/sh
# A featmux cluster on loopback for development and benchmarks: an etcd of
# ETCD_MEMBERS members (default 3) and SHARDS `featmux serve` shards
# (default 3), each with its own data directory under DIR. Processes run
# in the background; their logs are DIR/*.log.
#
#   scripts/cluster-local.sh up       start (waits until every shard is ready)
#   scripts/cluster-local.sh status   members in etcd, shards' /readyz
#   scripts/cluster-local.sh down     stop everything (data kept; rm -rf DIR)
#
# Settings (environment): DIR (/var/tmp/featmux-cluster), SHARDS (3),
# ETCD_MEMBERS (3), PREFIX (/featmux/local), PORT_BASE (23000: etcd client
# ports PORT_BASE+i, peer PORT_BASE+100+i, shard gRPC PORT_BASE+200+i, HTTP
# PORT_BASE+300+i), FEATMUX (the featmux binary; default
# the release build in CARGO_TARGET_DIR). Clients: featmux bench --etcd
# "$(scripts/cluster-local.sh endpoints)" --cluster-prefix "$PREFIX".
set -eu
DIR="${DIR:-/var/tmp/featmux-cluster}"
SHARDS="${SHARDS:-3}"
ETCD_MEMBERS="${ETCD_MEMBERS:-3}"
PREFIX="${PREFIX:-/featmux/local}"
PORT_BASE="${PORT_BASE:-23000}"
FEATMUX="${FEATMUX:-${CARGO_TARGET_DIR:-/var/tmp/featmux-target}/release/featmux}"

endpoints() {
    i=0 out=""
    while [ "$i" -lt "$ETCD_MEMBERS" ]; do
        out="$out${out:+,}127.0.0.1:$((PORT_BASE + i))"
        i=$((i + 1))
    done
    echo "$out"
}

start() { # name, log, command...
    name=$1 log=$2
    shift 2
    "$@" >"$log" 2>&1 &
    echo $! >"$DIR/$name.pid"
}

up() {
    mkdir -p "$DIR"
    initial="" i=0
    while [ "$i" -lt "$ETCD_MEMBERS" ]; do
        initial="$initial${initial:+,}e$i=http://127.0.0.1:$((PORT_BASE + 100 + i))"
        i=$((i + 1))
    done
    i=0
    while [ "$i" -lt "$ETCD_MEMBERS" ]; do
        client="http://127.0.0.1:$((PORT_BASE + i))" peer="http://127.0.0.1:$((PORT_BASE + 100 + i))"
        start "etcd$i" "$DIR/etcd$i.log" etcd --name "e$i" --data-dir "$DIR/etcd$i" \
            --listen-client-urls "$client" --advertise-client-urls "$client" \
            --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
            --initial-cluster "$initial" --initial-cluster-state new
        i=$((i + 1))
    done
    i=0
    while [ "$i" -lt "$SHARDS" ]; do
        start "shard$i" "$DIR/shard$i.log" env FEATMUX_ETCD="$(endpoints)" \
            FEATMUX_SHARD_ID="shard-$i" FEATMUX_CLUSTER_PREFIX="$PREFIX" \
            "$FEATMUX" serve --data-dir "$DIR/shard$i" \
            --grpc-addr "127.0.0.1:$((PORT_BASE + 200 + i))" \
            --http-addr "127.0.0.1:$((PORT_BASE + 300 + i))"
        i=$((i + 1))
    done
    i=0
    while [ "$i" -lt "$SHARDS" ]; do
        tries=0
        until curl -sf "http://127.0.0.1:$((PORT_BASE + 300 + i))/readyz" >/dev/null 2>&1; do
            tries=$((tries + 1))
            if [ "$tries" -gt 600 ]; then
                echo "shard $i is not ready after 60 s; see $DIR/shard$i.log" >&2
                exit 1
            fi
            sleep 0.1
        done
        i=$((i + 1))
    done
    echo "cluster up: etcd $(endpoints), prefix $PREFIX, $SHARDS shards (gRPC ports $((PORT_BASE + 200))..)"
}

status() {
    members=$(ETCDCTL_API=3 etcdctl --endpoints "$(endpoints)" get --prefix "$PREFIX/members/" --keys-only) || {
        echo "status: etcdctl could not list the members (etcdctl comes with Debian's etcd-client)" >&2
        exit 1
    }
    printf '%s\n' "$members" | sed -n 's|.*/members/||p'
    i=0
    while [ "$i" -lt "$SHARDS" ]; do
        state=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$((PORT_BASE + 300 + i))/readyz" || true)
        echo "shard-$i readyz $state"
        i=$((i + 1))
    done
}

down() {
    pids=""
    for pidfile in "$DIR"/*.pid; do
        [ -e "$pidfile" ] || continue
        pid=$(cat "$pidfile")
        kill "$pid" 2>/dev/null && pids="$pids $pid"
        rm -f "$pidfile"
    done
    # Shards flush on SIGTERM: wait until every process is gone.
    for pid in $pids; do
        tries=0
        while kill -0 "$pid" 2>/dev/null && [ "$tries" -lt 300 ]; do
            sleep 0.1
            tries=$((tries + 1))
        done
    done
}

case "${1:-}" in
up) up ;;
status) status ;;
down) down ;;
endpoints) endpoints ;;
*)
    echo "usage: $0 up|status|down|endpoints" >&2
    exit 2
    ;;
esac
