# Sourced by the experiment and benchmark scripts: starts a release
# `featmux serve` and waits until it is ready.
#
#   . scripts/lib/serve.sh
#   serve "$FEATMUX" 127.0.0.1:50077 127.0.0.1:8097   # sets $work, $server
#
# serve makes a temporary work directory and stops the server (and removes
# the directory) when the script exits; start_server is the start alone,
# for scripts that start several servers in turn.

# shellcheck shell=sh
serve() {
    work=$(mktemp -d)
    trap 'serve_cleanup' EXIT INT TERM
    start_server "$1" "$2" "$3" "$work"
}

# start_server BIN GRPC_ADDR HTTP_ADDR DIR [FLAGS...]: a server on DIR/data,
# its Unix socket DIR/grpc.sock and its log DIR/featmux.log, with FLAGS
# passed on to `featmux serve`; sets $server, or exits with the log if it
# did not come up within 60 s (a replica copies its primary first). With
# SERVER_CPUS set (a taskset list), the server runs on those CPUs only.
start_server() {
    _bin=$1 _grpc=$2 _http=$3 _dir=$4
    shift 4
    ${SERVER_CPUS:+taskset -c "$SERVER_CPUS"} "$_bin" serve --data-dir "$_dir/data" --grpc-addr "$_grpc" --http-addr "$_http" \
        --grpc-unix-socket "$_dir/grpc.sock" "$@" >"$_dir/featmux.log" 2>&1 &
    server=$!
    for _ in $(seq 600); do
        curl -sf "http://$_http/readyz" >/dev/null 2>&1 && break
        kill -0 "$server" 2>/dev/null || break
        sleep 0.1
    done
    # Ready, and ours: another server already on these ports would answer too.
    if ! curl -sf "http://$_http/readyz" >/dev/null || ! kill -0 "$server" 2>/dev/null; then
        echo "featmux serve did not start (ports $_grpc / $_http taken?):" >&2
        cat "$_dir/featmux.log" >&2
        exit 1
    fi
}

serve_cleanup() {
    [ -z "${server:-}" ] || kill "$server" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$work"
}
