#!/bin/sh
# Verifies the candle CUDA backend on a GPU machine, with the binaries
# `scripts/build-cuda.sh` left in dist/cuda/ or dist/cuda.tar.xz (that
# machine needs no Rust):
#
#   OUT=/some/dir scripts/gpu-check.sh      # default OUT: /tmp/featmux-gpu-check
#
# (a) the backends' tests (dist/cuda/tests/backends) with the candle backend
#     on `cuda:0`: the row kernels against plain loops (the fused optimizer
#     step against `Optimizer::step`, every optimizer), the CPU-vs-CUDA
#     differential test (all optimizers, poolings, weights, chunks; 1e-5
#     relative), readers never seeing a torn row;
# (b) `featmux device-bench`: gather and update rows/s and GB/s on a
#     10^7-row table, chunk_dim 16, 64 and 128, batches of 65,536 rows,
#     beside the device's measured copy bandwidth, and a gather call split
#     into its upload, kernel and download;
# (c) `featmux serve --backend cuda:0` answering the load generator's gRPC
#     lookups (single values and bags) and pushes, then the same against
#     `--backend cpu` on the same machine.
#
# Everything lands under $OUT (JSON, logs, nvidia-smi); a summary is
# printed last. Exit status: 0 only if every step passed.
# A dry run without a GPU (checks the script itself):
#   FEATMUX_DIST=<dir with featmux, tests/backends, needed-libs.txt> \
#   FEATMUX_CHECK_BACKEND=candle-cpu FEATMUX_CHECK_ROWS=100000 scripts/gpu-check.sh
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/featmux-gpu-check}"
DIST="${FEATMUX_DIST:-dist/cuda}"
BIN="$DIST/featmux"
BACKEND="${FEATMUX_CHECK_BACKEND:-cuda:0}"
ROWS="${FEATMUX_CHECK_ROWS:-10000000}"
mkdir -p "$OUT"
if [ ! -x "$BIN" ] && [ -f dist/cuda.tar.xz ]; then
    python3 -c 'import tarfile; tarfile.open("dist/cuda.tar.xz").extractall("dist", filter="data")'
fi
[ -x "$BIN" ] || { echo "no $BIN: run scripts/build-cuda.sh first (and carry dist/cuda.tar.xz)" >&2; exit 2; }
failed=""

# The CUDA libraries the binary links (cuBLAS, cuRAND, NVRTC, runtime): use
# the system's where the loader finds them, else search the usual places
# (the CUDA toolkit, Python's nvidia-* wheels).
libdirs=""
for lib in $(cat "$DIST/needed-libs.txt"); do
    ldconfig -p | grep -q "/$lib\$" && continue
    path=$(find /usr/local /opt /usr/lib -name "$lib" 2>/dev/null | head -1)
    [ -n "$path" ] && libdirs="$libdirs:$(dirname "$path")"
done
if [ -n "$libdirs" ]; then
    export LD_LIBRARY_PATH="${libdirs#:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
{
    nvidia-smi
    echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
    ldd "$BIN"
} >"$OUT/machine.txt" 2>&1
if ldd "$BIN" | grep -q "not found"; then
    echo "libraries missing:" >&2
    ldd "$BIN" | grep "not found" >&2
    exit 2
fi

echo "== (a) candle-backend tests on $BACKEND" >&2
if FEATMUX_TEST_CANDLE_BACKEND="$BACKEND" "$DIST/tests/backends" >"$OUT/test-backends.log" 2>&1; then
    echo "   $(grep '^test result' "$OUT/test-backends.log")" >&2
else
    echo "   FAILED (see test-backends.log)" >&2
    tail -30 "$OUT/test-backends.log" >&2
    failed="$failed tests"
fi

echo "== (b) device-bench" >&2
if ! "$BIN" device-bench --backend "$BACKEND" --rows "$ROWS" --dims 16,64,128 --batch 65536 \
    --repeats 50 >"$OUT/device-bench.json" 2>"$OUT/device-bench.log"; then
    cat "$OUT/device-bench.log" >&2
    failed="$failed device-bench"
fi

echo "== (c) featmux serve, gRPC lookups and pushes from featmux bench" >&2
wait_ready() {
    for _ in $(seq 1 100); do
        python3 -c "import urllib.request,sys; urllib.request.urlopen('http://$1/readyz', timeout=1)" \
            2>/dev/null && return 0
        sleep 0.2
    done
    return 1
}
for backend in "$BACKEND" cpu; do
    name=$(echo "$backend" | tr -d ':-')
    data=$(mktemp -d)
    "$BIN" serve --data-dir "$data" --backend "$backend" --grpc-addr 127.0.0.1:50151 \
        --http-addr 127.0.0.1:8181 >"$OUT/serve-$name.log" 2>&1 &
    server=$!
    if ! wait_ready 127.0.0.1:8181 || ! kill -0 "$server" 2>/dev/null; then
        echo "   serve --backend $backend did not start:" >&2
        tail -20 "$OUT/serve-$name.log" >&2
        failed="$failed serve-$name"
        kill "$server" 2>/dev/null
        continue
    fi
    common="--rows $ROWS --features 26 --vocab 1000000 --concurrency 8 --duration 5 --batches 4"
    for run in "lookup --workload lookup --table single --examples 4096 --values 1" \
        "bags --workload lookup --table bags --examples 512 --values 20" \
        "push --workload push --table rwa --optimizer row-wise-adagrad --examples 4096 --values 1"; do
        set -- $run
        label=$1
        shift
        # shellcheck disable=SC2086
        if ! "$BIN" --addr http://127.0.0.1:50151 --json bench "$@" $common \
            >"$OUT/e2e-$name-$label.json" 2>"$OUT/e2e-$name-$label.log"; then
            tail -5 "$OUT/e2e-$name-$label.log" >&2
            failed="$failed e2e-$name-$label"
        fi
    done
    kill "$server"
    wait "$server" 2>/dev/null
    rm -rf "$data"
done

python3 - "$OUT" "$(echo "$BACKEND" | tr -d ':-')" <<'PY' >&2
import json, os, sys

out, device = sys.argv[1], sys.argv[2]

def load(name):
    try:
        return json.load(open(os.path.join(out, name)))
    except (OSError, ValueError):
        return None

bench = load("device-bench.json")
if bench:
    print(f"\ndevice-bench: {bench['rows']:,} rows, batches of {bench['batch']:,}, {bench['optimizer']}")
    print(f"{'dim':>4} {'copy GB/s':>10} {'gather Mrows/s':>15} {'gather GB/s':>12} "
          f"{'update Mrows/s':>15} {'update GB/s':>12} {'gather call Mrows/s':>20} {'update call Mrows/s':>20}")
    for r in bench["results"]:
        print(f"{r['dim']:>4} {r['copy_gb_per_s']:>10.0f} {r['gather_kernel']['rows_per_s'] / 1e6:>15.1f} "
              f"{r['gather_kernel']['gb_per_s']:>12.0f} {r['update_kernel']['rows_per_s'] / 1e6:>15.1f} "
              f"{r['update_kernel']['gb_per_s']:>12.0f} {r['gather_call']['rows_per_s'] / 1e6:>20.1f} "
              f"{r['update_call']['rows_per_s'] / 1e6:>20.1f}")
    print("gather call split (ms): upload ids + kernel + download rows = the call's transfers and kernel")
    for r in bench["results"]:
        print(f"{r['dim']:>4} {r['ids_upload']['ms']:.3f} + {r['gather_kernel']['ms']:.3f} + "
              f"{r['rows_download']['ms']:.3f} of {r['gather_call']['ms']:.3f}")
print("\nend to end (featmux bench, 8 clients, same machine):")
errors = False
for label in ("lookup", "bags", "push"):
    cells = []
    for name in (device, "cpu"):
        run = load(f"e2e-{name}-{label}.json")
        cells.append(f"{name} {run['examples_per_s']:>10,.0f} ex/s p99 {run['latency_us']['p99'] / 1e3:.2f} ms"
                     f" errors {run['errors']}" if run else f"{name} (missing)")
        errors = errors or not run or run["errors"] > 0
    print(f"  {label:<7} " + " | ".join(cells))
sys.exit(1 if errors else 0)
PY
[ $? -eq 0 ] || failed="$failed e2e-errors"

if [ -n "$failed" ]; then
    echo "FAILED:$failed" >&2
    exit 1
fi
echo "gpu-check: all passed" >&2
