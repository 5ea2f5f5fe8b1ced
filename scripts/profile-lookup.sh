#!/bin/sh
# Instruction profile of the server side of gRPC lookups: runs `featmux
# serve` under valgrind's callgrind, sends REQUESTS lookups of 4096 examples
# × 26 single-valued features from the bench tool, stops the server and
# prints the functions with the most instructions. Instruction counts do not
# depend on what else the machine is doing, so two builds compare exactly.
#
#   scripts/profile-lookup.sh                    # this tree's release build
#   FEATMUX=/path/to/old/featmux scripts/profile-lookup.sh
set -eu
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/featmux-target}"
REQUESTS="${REQUESTS:-16}"
WORKLOAD="${WORKLOAD:-lookup}"
if [ -z "${FEATMUX:-}" ]; then
    cargo build --release -p featmux-cli
    FEATMUX="$CARGO_TARGET_DIR/release/featmux"
fi
command -v valgrind >/dev/null || {
    echo "needs valgrind (apt-get install valgrind)" >&2
    exit 1
}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.out" \
    "$FEATMUX" serve --data-dir "$work/data" --grpc-addr 127.0.0.1:50079 \
    --http-addr 127.0.0.1:8099 >"$work/serve.log" 2>&1 &
server=$!
for _ in $(seq 120); do
    curl -sf http://127.0.0.1:8099/readyz >/dev/null 2>&1 && break
    sleep 0.5
done
# The table is created first and on its own, so its initialisation can be
# told apart (featmux_engine::init::Initializer::fill_row) from the requests.
"$FEATMUX" --addr http://127.0.0.1:50079 bench --workload "$WORKLOAD" --table t \
    --requests "$REQUESTS" --duration 600 --batches 2 --concurrency 2 --vocab 100000
kill -TERM "$server"
wait "$server" || true
callgrind_annotate --inclusive=no "$work/callgrind.out" | sed -n '/PROGRAM TOTALS/,+28p'
