#!/bin/sh
# A model of cluster throughput vs shard count (1..64), built from costs
# measured here: the CPU a shard spends per row-level request (a fixed part
# and a part per entry) and the CPU the cluster client spends per batch
# (planning, splitting and adding the partial sums: a fixed part and a part
# per shard asked). Measured with `featmux bench --etcd` on clusters of 1
# and 3 release shards (scripts/cluster-local.sh), each cost as CPU seconds
# per request from /proc (so the shards sharing this 2-core machine does
# not bias it); the client's as the difference of two run lengths (setup
# cancels). Writes docs/results/cluster-model.md and the raw runs under
# docs/results/cluster-model-run/.
#
#   scripts/model-cluster.sh [seconds of the long runs, default 12]
set -eu
cd "$(dirname "$0")/.."
long="${1:-12}"
bin="${CARGO_TARGET_DIR:-/var/tmp/featmux-target}/release/featmux"
work=$(mktemp -d /var/tmp/featmux-model-cluster.XXXXXX)
out=docs/results/cluster-model-run
mkdir -p "$out"
one() { DIR="$work/one" SHARDS=1 ETCD_MEMBERS=1 PORT_BASE=26000 FEATMUX="$bin" scripts/cluster-local.sh "$@"; }
three() { DIR="$work/three" SHARDS=3 ETCD_MEMBERS=1 PORT_BASE=27000 FEATMUX="$bin" scripts/cluster-local.sh "$@"; }
cleanup() {
    one down
    three down
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM
one up
three up
python3 - "$bin" "$work" "$out" "$long" "$(one endpoints)" "$(three endpoints)" <<'PY'
import json, os, subprocess, sys, time
binary, work, out, long_s, etcd1, etcd3 = sys.argv[1:7]
long_s = float(long_s)
tick = os.sysconf("SC_CLK_TCK")

def cpu(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / tick  # utime + stime (own)

def shard_pids(cluster):
    d = f"{work}/{cluster}"
    return [int(open(f"{d}/{f}").read()) for f in sorted(os.listdir(d)) if f.startswith("shard") and f.endswith(".pid")]

def bench(etcd, workload, examples, seconds):
    args = [binary, "--json", "bench", "--etcd", etcd, "--cluster-prefix", "/featmux/local",
            "--workload", workload, "--examples", str(examples), "--features", "26",
            "--concurrency", "4", "--duration", str(seconds), "--table", "model"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE)
    used = 0.0
    # The client's CPU: read its /proc just before it exits.
    while proc.poll() is None:
        try:
            used = cpu(proc.pid)
        except (FileNotFoundError, ProcessLookupError, IndexError):
            pass
        time.sleep(0.05)
    report = json.loads(proc.stdout.read())
    assert report["errors"] == 0, report
    return report, used

runs = {}
for cluster, etcd, shards in (("one", etcd1, 1), ("three", etcd3, 3)):
    bench(etcd, "lookup", 64, 1)  # creates the table, warms up
    for workload in ("lookup", "push"):
        for examples in (64, 4096):
            pids = shard_pids(cluster)
            results = []
            for seconds in (long_s / 3, long_s):
                before = sum(cpu(p) for p in pids)
                report, client = bench(etcd, workload, examples, seconds)
                server = sum(cpu(p) for p in pids) - before
                results.append({"report": report, "client_cpu_s": client, "server_cpu_s": server})
            key = f"{workload}-{examples}-{shards}"
            runs[key] = results
            json.dump(results, open(f"{out}/{key}.json", "w"), indent=1)
            short, full = results
            dreq = full["report"]["requests"] - short["report"]["requests"]
            print(f"{key}: {full['report']['requests']} requests, server {1e3 * full['server_cpu_s'] / full['report']['requests']:.2f} ms CPU/request, "
                  f"client {1e3 * (full['client_cpu_s'] - short['client_cpu_s']) / dreq:.2f} ms CPU/request", flush=True)
json.dump(runs, open(f"{out}/all.json", "w"), indent=1)
PY
python3 scripts/lib/cluster_model.py "$out/all.json" >docs/results/cluster-model.md
cat docs/results/cluster-model.md
