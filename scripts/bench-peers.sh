#!/bin/sh
# Reproduces docs/results/performance.md and performance.png in one run:
# featmux (gRPC over TCP and over a Unix socket, and HTTP, through a real
# `featmux serve`), the same lookups
# in-process, Redis MGET (plain and pipelined) over the same batches, a plain
# TCP exchange of the same sizes, iperf3 over loopback, and the PyTorch
# peers a trainer would use instead (nn.EmbeddingBag; FBGEMM's TBE, forward
# and with its fused row-wise Adagrad: python/benchmarks/peers.py, in the
# venv scripts/lib/python-venv.sh makes if missing).
#
#   scripts/bench-peers.sh              # full run (~17 min), writes the report
#   DURATION=2 PAIRS=1 scripts/bench-peers.sh   # shorter runs, one round
#   RESULTS=/tmp/run BEFORE=docs/results/performance-before scripts/bench-peers.sh
#
# RESULTS is where the raw JSON goes (default docs/results/performance-run);
# BEFORE, if set, is an earlier run's folder shown beside this one;
# FEATMUX, if set, is the featmux binary to measure (e.g. one built from an
# earlier commit) instead of this tree's release build.
# Installs redis-server, iperf3 and a font for the plot if missing.
# TORCH_THREADS: the PyTorch peers' threads (default 2, this machine's cores).
# PAIRS: rounds of each comparison made in rounds (default 3): the service
# paths beside the in-process engine, the engine beside its PyTorch peer.
set -eu
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/featmux-target}"
DURATION="${DURATION:-5}"
SCALE_DURATION="${SCALE_DURATION:-3}"
RESULTS="${RESULTS:-docs/results/performance-run}"
REDIS_PORT=6399
GRPC=127.0.0.1:50071
HTTP=127.0.0.1:8091

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}
missing=""
for pkg in redis-server iperf3 fonts-dejavu-core; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
    as_root apt-get update -q
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -q $missing
fi

cargo build --release -p featmux-cli -p featmux-tools
. scripts/lib/python-venv.sh
. scripts/lib/serve.sh
FEATMUX="${FEATMUX:-$CARGO_TARGET_DIR/release/featmux}"
REPORT="$CARGO_TARGET_DIR/release/featmux-report"

work=$(mktemp -d)
pids=""
featmux_pid=""
cleanup() {
    for pid in $pids $featmux_pid; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
    --dir "$work" >"$work/redis.log" 2>&1 &
pids="$pids $!"
for _ in $(seq 100); do
    redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break
    sleep 0.1
done

# fresh_server: stops the featmux server if one runs, then starts one on
# an empty data directory. Each training run over the service gets its
# own, as each in-process run gets a fresh catalog: on one long-lived
# server a run would inherit the previous runs' dirty rows and RocksDB's
# compactions of them.
fresh_server() {
    if [ -n "$featmux_pid" ]; then
        kill "$featmux_pid"
        wait "$featmux_pid" 2>/dev/null || true
    fi
    rm -rf "$work/data"
    start_server "$FEATMUX" "$GRPC" "$HTTP" "$work"
    featmux_pid=$server
}
fresh_server

rm -rf "$RESULTS"
mkdir -p "$RESULTS" docs/results
# A results folder outside the tree (an absolute path) is no change of it.
case "$RESULTS" in
    /*) results_in_tree=. ;;
    *) results_in_tree=":(exclude)$RESULTS" ;;
esac
{
    echo "date:     $(date -u '+%Y-%m-%d %H:%M UTC')"
    # The results folder (just emptied) and the report it rewrites are
    # not the measured tree's changes.
    echo "commit:   $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . "$results_in_tree" \
        ':(exclude)docs/results/performance.md' ':(exclude)docs/results/performance.png' \
        || echo ' (with uncommitted changes)')"
    echo "cpu:      $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores"
    echo "memory:   $(free -g | awk '/Mem:/ {print $2}') GiB"
    echo "kernel:   $(uname -r)"
    echo "rustc:    $(rustc --version)"
    echo "redis:    $(redis-server --version | cut -d' ' -f3)"
    echo "iperf3:   $(iperf3 --version | head -1)"
} >"$RESULTS/machine.txt"

# bench NAME [featmux bench flags...]: one run, its JSON report in RESULTS.
bench() {
    bench_at "http://$GRPC" "$@"
}
# bench_unix NAME [flags...]: the same through the server's Unix socket, as
# a trainer on the server's machine would call it.
bench_unix() {
    bench_at "unix://$work/grpc.sock" "$@"
}
# bench_region NAME [flags...]: on the Unix socket, with each client's
# embeddings and gradients through a shared-memory region.
bench_region() {
    bench_unix "$@" --shared-region
}
# With TRAINER_CPUS set (a taskset list), the benchmark runs on those CPUs.
bench_at() {
    addr=$1
    name=$2
    shift 2
    echo "== $name ($addr): $*" >&2
    ${TRAINER_CPUS:+taskset -c "$TRAINER_CPUS"} "$FEATMUX" --addr "$addr" --json bench --http "http://$HTTP" \
        --redis "127.0.0.1:$REDIS_PORT" --duration "$DURATION" --batches 4 "$@" \
        >"$RESULTS/$name.json"
}

# Loopback bandwidth, one stream.
iperf3 -s -1 -p 5299 >/dev/null 2>&1 &
sleep 0.5
iperf3 -c 127.0.0.1 -p 5299 -t 5 -J >"$RESULTS/iperf3.json"

# Single-valued: 4096 examples × 26 features × 16 dims, 8 clients.
single="--examples 4096 --features 26 --values 1 --vocab 100000 --concurrency 8"
train="--optimizer row-wise-adagrad --lr 0.05 $single"
# Each service path and the in-process run it is divided by, in PAIRS
# rounds (default 3) run back to back: the in-process rate alone has moved
# by two fifths between two runs on this host, so a share is the median of
# the rounds' shares (the report lists each). Training runs each get a
# fresh server.
for round in $(seq "${PAIRS:-3}"); do
    bench "engine-lookup-$round" --workload engine-lookup --table single $single
    bench "lookup-$round" --workload lookup --table single $single
    bench "lookup-bf16-$round" --workload lookup --table single $single --precision bf16
    bench_unix "lookup-unix-$round" --workload lookup --table single $single
    bench_region "lookup-region-$round" --workload lookup --table single $single
    bench "tcp-blast-$round" --workload tcp-blast $single

    for op in push train; do
        bench "engine-$op-rowwise-adagrad-$round" --workload "engine-$op" --table rwa $train
        fresh_server
        bench "$op-rowwise-adagrad-$round" --workload "$op" --table rwa $train
        fresh_server
        # The same with 16-bit gradients (and answers, for the stream).
        case $op in push) half="--push-precision bf16" ;; *) half="--precision bf16 --push-precision bf16" ;; esac
        bench "$op-rowwise-adagrad-bf16-$round" --workload "$op" --table rwa $train $half
        fresh_server
        bench_unix "$op-rowwise-adagrad-unix-$round" --workload "$op" --table rwa $train
        fresh_server
        bench_region "$op-rowwise-adagrad-region-$round" --workload "$op" --table rwa $train
        fresh_server
    done
done
# One trainer (one client), where a request's work can use every core:
# the server shares it with its idle bulk threads (engine::fanout), the
# in-process engine with its helper threads. Paired in rounds too.
one="--examples 4096 --features 26 --values 1 --vocab 100000 --concurrency 1"
for round in $(seq "${PAIRS:-3}"); do
    bench "engine-lookup-c1-$round" --workload engine-lookup --table single $one
    bench "lookup-c1-$round" --workload lookup --table single $one
    bench_region "lookup-region-c1-$round" --workload lookup --table single $one
    for op in push train; do
        bench "engine-$op-c1-$round" --workload "engine-$op" --table rwa \
            --optimizer row-wise-adagrad --lr 0.05 $one
        fresh_server
        bench "$op-c1-$round" --workload "$op" --table rwa --optimizer row-wise-adagrad \
            --lr 0.05 $one
        fresh_server
        bench_region "$op-region-c1-$round" --workload "$op" --table rwa \
            --optimizer row-wise-adagrad --lr 0.05 $one
        fresh_server
    done
done
# Split cores: the server on the first half of the CPUs, the trainer on
# the rest, and the in-process engine (its clients beside it) on the
# server's half. This is what the wire costs a server whose trainer has
# cores of its own, the nearest this one machine comes to two: loopback
# TCP still does the receiving side's protocol work on the sender's core.
half=$(($(nproc) / 2))
if [ "$half" -ge 1 ]; then
    server_cpus="0-$((half - 1))"
    trainer_cpus="$half-$(($(nproc) - 1))"
    for round in $(seq "${PAIRS:-3}"); do
        SERVER_CPUS=$server_cpus fresh_server
        TRAINER_CPUS=$server_cpus bench "split-engine-lookup-$round" --workload engine-lookup \
            --table single $single
        TRAINER_CPUS=$trainer_cpus bench "split-lookup-$round" --workload lookup --table single \
            $single
        for op in push train; do
            TRAINER_CPUS=$server_cpus bench "split-engine-$op-$round" --workload "engine-$op" \
                --table rwa $train
            SERVER_CPUS=$server_cpus fresh_server
            TRAINER_CPUS=$trainer_cpus bench "split-$op-$round" --workload "$op" --table rwa $train
        done
    done
    fresh_server
fi
bench redis-mget --workload redis-mget $single
bench redis-mget-pipelined --workload redis-mget --mget-keys 1000 $single

# Bags of 20 values, sum pooling: Redis ships every row to the client.
redis-cli -p "$REDIS_PORT" flushall >/dev/null
bags="--examples 512 --features 26 --values 20 --vocab 100000 --concurrency 8"
bench bags-lookup --workload lookup --table bags $bags
bench bags-redis-mget --workload redis-mget $bags
bench bags-redis-mget-pipelined --workload redis-mget --mget-keys 1000 $bags
redis-cli -p "$REDIS_PORT" flushall >/dev/null

# PyTorch peers and the in-process engine on the same shapes: one table of
# 10^6 rows every feature shares, 26 features, single values (4,096
# examples) and bags of 20 (512 examples), 16 and 64 floats per row.
# PAIRS rounds (default 3), each running featmux and then the peer back to
# back: a peer's rate has moved by a third between two runs on this host,
# so only runs made side by side divide fairly. The report shows each
# ratio's median over the rounds and every round's.
torch_peer() {
    name=$1
    shift
    echo "== torch $name: $*" >&2
    # 32 distinct batches, as featmux's 8 clients × 4 batches: the same
    # rows touched, so the same share of them in the CPU's caches (with
    # peers.py's default of 4, its batches' rows fit in this machine's
    # 32 MiB L3 and featmux's do not).
    "$venv/bin/python" python/benchmarks/peers.py --duration "$DURATION" \
        --threads "${TORCH_THREADS:-2}" --batches 32 "$@" >"$RESULTS/torch-$name.json"
}
# The engine's values are int64 ids in these runs, as a PyTorch trainer's
# KeyedJaggedTensor carries them (featmux's Python module sends them as
# they are); featmux still hashes every one. The service runs above send
# strings, as Redis keys them.
ids="--key-type int64"
for round in $(seq "${PAIRS:-3}"); do
    for dim in 16 64; do
        # Run names: the report's (engine-lookup-ids, bags-engine-lookup,
        # with -d64 at 64 floats) and the round after them.
        case $dim in 16) at="" table="" ;; *) at="-d$dim" table=$dim ;; esac
        bench "engine-lookup-ids$at-$round" --workload engine-lookup --table "single$table" \
            --chunk-dim "$dim" $single $ids
        torch_peer "single-d$dim-embedding-bag-$round" --peers embedding-bag \
            --examples 4096 --values 1 --dim "$dim"
        if [ "$dim" = 16 ]; then
            # Paired with the same engine run as nn.EmbeddingBag.
            torch_peer "single-d16-tbe-$round" --peers tbe --examples 4096 --values 1 --dim 16
        fi
        bench "bags-engine-lookup$at-$round" --workload engine-lookup --table "bags$table" \
            --chunk-dim "$dim" $bags $ids
        torch_peer "bags-d$dim-embedding-bag-$round" --peers embedding-bag \
            --examples 512 --values 20 --dim "$dim"
    done
    bench "engine-train-rowwise-adagrad-ids-$round" --workload engine-train --table rwa \
        $train $ids
    torch_peer "single-d16-tbe-train-$round" --peers tbe-train --examples 4096 --values 1 --dim 16
done

# HTTP serving: one example of 26 features, open loop; five runs of each
# rate (the report shows their median and every p99: host noise).
for rate in 100 1000 5000; do
    for i in 1 2 3 4 5; do
        bench "http-$rate-$i" --workload http-lookup --table single --examples 1 \
            --features 26 --vocab 100000 --concurrency 16 --rate "$rate"
    done
done

# Scaling curves (shorter runs).
DURATION=$SCALE_DURATION
for n in 64 256 1024 4096 16384; do
    bench "scale-batch-$n" --workload lookup --table single --examples "$n" \
        --features 26 --vocab 100000 --concurrency 8
    bench "scale-batch-engine-$n" --workload engine-lookup --table single \
        --examples "$n" --features 26 --vocab 100000 --concurrency 8
done
for rows in 10000 100000 1000000 10000000 100000000; do
    vocab=$((rows * 10))
    bench "scale-rows-$rows" --workload lookup --table "rows$rows" --rows "$rows" \
        --examples 4096 --features 26 --vocab "$vocab" --concurrency 8
    "$FEATMUX" --addr "http://$GRPC" table drop "rows$rows" >/dev/null
    bench "scale-rows-engine-$rows" --workload engine-lookup --table "rows$rows" \
        --rows "$rows" --examples 4096 --features 26 --vocab "$vocab" --concurrency 8
done
for f in 1 4 16 26 64; do
    bench "scale-features-$f" --workload lookup --table "features$f" --examples 4096 \
        --features "$f" --vocab 100000 --concurrency 8
    bench "scale-features-engine-$f" --workload engine-lookup --table "features$f" \
        --examples 4096 --features "$f" --vocab 100000 --concurrency 8
done

"$REPORT" performance --results "$RESULTS" ${BEFORE:+--before "$BEFORE"} \
    --out docs/results/performance.md --plot docs/results/performance.png
echo "wrote docs/results/performance.md and docs/results/performance.png (raw results: $RESULTS)"
