#!/bin/sh
# Python client vs Rust client lookups against one release server, same
# shapes (4,096 examples x 26 string features, 8 clients/threads), same
# machine, one after the other: prints each one's examples/s and the ratio.
#
#   scripts/bench-python.sh [seconds, default 10]
#
# Needs the release binary (cargo build --release -p featmux-cli) and the
# package installed in /var/tmp/featmux-py (scripts/python-tests.sh does it).
set -eu
cd "$(dirname "$0")/.."
seconds="${1:-10}"
bin="${CARGO_TARGET_DIR:-/var/tmp/featmux-target}/release/featmux"
py=/var/tmp/featmux-py/bin/python
work=$(mktemp -d /var/tmp/featmux-bench-python.XXXXXX)
"$bin" serve --data-dir "$work/data" --grpc-addr 127.0.0.1:50071 --http-addr 127.0.0.1:8071 2>"$work/server.log" &
server=$!
trap 'kill "$server" 2>/dev/null && wait "$server"; rm -rf "$work"' EXIT
until curl -sf http://127.0.0.1:8071/readyz >/dev/null 2>&1; do sleep 0.05; done
addr=http://127.0.0.1:50071
shape="--examples 4096 --features 26 --duration $seconds"
# The Rust client first (it also creates the table), then Python, then Rust again.
"$bin" --addr "$addr" --json bench --workload lookup $shape --concurrency 8 >"$work/rust1.json"
"$py" python/benchmarks/lookup.py --addr "$addr" $shape --threads 8 >"$work/python.json"
"$py" python/benchmarks/lookup.py --addr "$addr" $shape --threads 8 --prebuilt >"$work/python-prebuilt.json"
"$bin" --addr "$addr" --json bench --workload lookup $shape --concurrency 8 >"$work/rust2.json"
"$py" - "$work" <<'PY'
import json, sys
w = sys.argv[1]
rust = [json.load(open(f"{w}/rust{i}.json"))["examples_per_s"] for i in (1, 2)]
base = sum(rust) / 2
print(f"rust client:    {rust[0]:>12,.0f} and {rust[1]:>12,.0f} examples/s (mean {base:,.0f})")
for name in ("python", "python-prebuilt"):
    r = json.loads(open(f"{w}/{name}.json").read())["examples_per_s"]
    print(f"{name + ':':<15} {r:>12,.0f} examples/s = {r / base:.0%} of the rust client")
PY
