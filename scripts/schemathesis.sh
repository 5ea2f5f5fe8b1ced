#!/bin/sh
# schemathesis (property-based API testing from the OpenAPI document) over
# featmux's own /openapi.json, authenticated as admin, every check, a
# bounded number of examples (scripts/schemathesis.toml): the document must
# say exactly what the server answers, and the server must survive it.
# `./dev test` runs it after the Rust tests, on the debug binary they built.
#
#   scripts/schemathesis.sh [featmux binary]
set -eu
cd "$(dirname "$0")/.."
bin="${1:-${CARGO_TARGET_DIR:-/var/tmp/featmux-target}/debug/featmux}"
venv=/var/tmp/featmux-schemathesis
version=4.32.5
if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -q "$version"; then
    python3 -m venv "$venv"
    PIP_CACHE_DIR=/var/tmp/pip-cache "$venv/bin/pip" install -q "schemathesis==$version"
fi
work=$(mktemp -d /var/tmp/featmux-schemathesis-run.XXXXXX)
trap 'kill "$server" 2>/dev/null || true; rm -rf "$work"' EXIT
cat >"$work/featmux.toml" <<TOML
data_dir = "$work/data"
grpc_addr = "127.0.0.1:0"
http_addr = "127.0.0.1:0"
log_format = "json"
[auth]
admin_token = "schemathesis-admin"
data_token = "schemathesis-data"
[limits]
# Generated tables are refused past this (413) instead of filling memory.
max_memory_bytes = 268435456
TOML
"$bin" serve --config "$work/featmux.toml" 2>"$work/server.log" &
server=$!
http=""
for _ in $(seq 1 200); do
    http=$(sed -n 's/.*"message":"listening".*"http":"\([^"]*\)".*/\1/p; s/.*"http":"\([^"]*\)".*"message":"listening".*/\1/p' "$work/server.log" | head -1)
    [ -n "$http" ] && curl -sf "http://$http/readyz" >/dev/null 2>&1 && break
    sleep 0.05
done
[ -n "$http" ] || { cat "$work/server.log"; echo "featmux did not start" >&2; exit 1; }
status=0
"$venv/bin/schemathesis" --config-file scripts/schemathesis.toml run \
    "http://$http/openapi.json" --checks all \
    -H "Authorization: Bearer schemathesis-admin" --no-color || status=$?
if ! kill -0 "$server" 2>/dev/null; then
    echo "schemathesis: the server died" >&2
    tail -20 "$work/server.log" >&2
    exit 1
fi
exit "$status"
