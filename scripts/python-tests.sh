#!/bin/sh
# The Python package (python/): builds it with maturin into a venv kept in
# /var/tmp (pinned tools, created once; pip's cache there too), then runs its
# pytest suite against a real `featmux serve` (the debug binary `./dev test`
# built). `./dev test` runs it after the Rust tests.
#
#   scripts/python-tests.sh [pytest arguments]
set -eu
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/featmux-target}"
. scripts/lib/python-venv.sh
# The build backend is maturin (pyproject.toml); the venv already has it.
PATH="$venv/bin:$PATH" PIP_CACHE_DIR=/var/tmp/pip-cache \
    "$venv/bin/pip" install -q --no-build-isolation --force-reinstall --no-deps ./python
FEATMUX_BIN="$CARGO_TARGET_DIR/debug/featmux" "$venv/bin/python" -m pytest -q python/tests "$@"
