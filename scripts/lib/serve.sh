# Sourced by the experiment and benchmark scripts: starts a release `featmux serve` in a
# temporary work directory and stops it (and removes the directory) when
# the script exits.
#
#   . scripts/lib/serve.sh
#   serve "$FEATMUX" 127.0.0.1:50077 127.0.0.1:8097   # sets $work, $server

# shellcheck shell=sh
serve() {
    work=$(mktemp -d)
    trap 'serve_cleanup' EXIT INT TERM
    "$1" serve --data-dir "$work/data" --grpc-addr "$2" --http-addr "$3" \
        >"$work/featmux.log" 2>&1 &
    server=$!
    for _ in $(seq 100); do
        curl -sf "http://$3/readyz" >/dev/null 2>&1 && break
        sleep 0.1
    done
    # Ready, and ours: another server already on these ports would answer too.
    if ! curl -sf "http://$3/readyz" >/dev/null || ! kill -0 "$server" 2>/dev/null; then
        echo "featmux serve did not start (ports $2 / $3 taken?):" >&2
        cat "$work/featmux.log" >&2
        exit 1
    fi
}

serve_cleanup() {
    [ -z "${server:-}" ] || kill "$server" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$work"
}
