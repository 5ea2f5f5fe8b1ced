#!/bin/sh
# Python client vs Rust client lookups against one release server, same
# shapes (4,096 examples x 26 string features, 8 clients/threads), same
# machine: `rounds` rounds, each the Rust client then Python, so drift in
# the machine's speed hits both; prints each one's median examples/s and
# their ratio. Then a PyTorch training step (4,096 x 26 int64 features,
# MLP) with its embeddings in featmux vs in an in-process nn.EmbeddingBag
# of the same size (python/benchmarks/train_step.py), run with OpenMP's
# default wait policy and again with OMP_WAIT_POLICY=PASSIVE.
#
#   scripts/bench-python.sh [seconds per run, default 10] [rounds, default 3]
#
# Needs the release binary (cargo build --release -p featmux-cli) and the
# package installed in /var/tmp/featmux-py (scripts/python-tests.sh does it).
set -eu
cd "$(dirname "$0")/.."
seconds="${1:-10}"
rounds="${2:-3}"
bin="${CARGO_TARGET_DIR:-/var/tmp/featmux-target}/release/featmux"
py=/var/tmp/featmux-py/bin/python
. scripts/lib/serve.sh
serve "$bin" 127.0.0.1:50071 127.0.0.1:8071
addr=http://127.0.0.1:50071
shape="--examples 4096 --features 26 --duration $seconds"
# The first Rust run also creates the table.
for round in $(seq "$rounds"); do
    "$bin" --addr "$addr" --json bench --workload lookup $shape --concurrency 8 >"$work/rust$round.json"
    "$py" python/benchmarks/lookup.py --addr "$addr" $shape --threads 8 >"$work/python$round.json"
done
"$py" - "$work" "$rounds" <<'PY'
import json, statistics, sys
w, rounds = sys.argv[1], int(sys.argv[2])
runs = {c: [json.load(open(f"{w}/{c}{r}.json")) for r in range(1, rounds + 1)] for c in ("rust", "python")}
rate = {c: statistics.median(run["examples_per_s"] for run in runs[c]) for c in runs}
for c in runs:
    each = ", ".join(f"{run['examples_per_s']:,.0f}" for run in runs[c])
    print(f"{c + ' client:':<15} median {rate[c]:>10,.0f} examples/s (rounds: {each})")
cpu = statistics.median(run["client_cpu_ms_per_request"] for run in runs["python"])
print(f"python / rust:  {rate['python'] / rate['rust']:.0%} "
      f"(python client CPU: {cpu:.1f} ms per 4,096-example request)")
PY
# The step twice: with OpenMP's default wait policy (torch's threads spin
# between operations, which suits an in-process table) and with it passive
# (they sleep, leaving the cores to a server on the same machine).
"$py" python/benchmarks/train_step.py --addr "$addr" 2>/dev/null >"$work/step.json"
OMP_WAIT_POLICY=PASSIVE "$py" python/benchmarks/train_step.py --addr "$addr" 2>/dev/null >"$work/step-passive.json"
for policy in default passive; do
    [ "$policy" = default ] && json="$work/step.json" || json="$work/step-passive.json"
    echo "OpenMP wait policy: $policy"
    "$py" - "$json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
bag, fm, fa = r["embedding_bag"], r["featmux"], r["featmux_async_push"]
print(f"torch step, {r['examples']:,} x {r['features']} features, {r['rows']:,} x {r['dim']} table:")
print(f"  nn.EmbeddingBag in-process: {bag['step_ms']:.1f} ms/step, embeddings {bag['embedding_ms']:.1f} ms "
      f"({bag['embedding_ms'] / bag['step_ms']:.0%})")
print(f"  featmux:                    {fm['step_ms']:.1f} ms/step, lookup {fm['lookup_ms']:.1f} + push {fm['push_ms']:.1f} ms "
      f"({(fm['lookup_ms'] + fm['push_ms']) / fm['step_ms']:.0%}); {fm['step_ms'] / bag['step_ms']:.2f}x the EmbeddingBag step")
print(f"  featmux, async push:        {fa['step_ms']:.1f} ms/step; {fa['step_ms'] / bag['step_ms']:.2f}x the EmbeddingBag step")
PY
done
