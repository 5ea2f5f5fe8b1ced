# Sourced by scripts that need Python with torch: makes sure the venv in
# /var/tmp/featmux-py has the pinned tools (created once; pip's cache in
# /var/tmp too) and sets $venv to it.
venv=/var/tmp/featmux-py
# torch (CPU use, but PyPI's wheel pulls ~3 GB of CUDA libraries): 64 s to
# install here the first time, from the cache after that.
tools="maturin==1.16.0 numpy==2.4.6 pytest==9.2.0 torch==2.14.1"
# A real torchrec KeyedJaggedTensor for the torch bridge's test, and
# FBGEMM's CPU kernels for the peer benchmarks: torchrec and fbgemm-gpu-cpu
# install only without their declared dependencies (which pin other torch
# builds); these are the modules the KJT import needs.
torchrec="fbgemm-gpu-cpu==1.9.0 torchrec==1.9.2 tensordict==0.15.3 pyvers==0.2.3 cloudpickle==3.1.3
pyre-extensions==0.0.32 typing-inspect==0.9.0 mypy-extensions==1.2.0"
if [ "$(cat "$venv/.featmux-tools" 2>/dev/null)" != "$tools $torchrec" ]; then
    python3 -m venv "$venv"
    # shellcheck disable=SC2086
    PIP_CACHE_DIR=/var/tmp/pip-cache "$venv/bin/pip" install -q $tools
    # shellcheck disable=SC2086
    PIP_CACHE_DIR=/var/tmp/pip-cache "$venv/bin/pip" install -q --no-deps $torchrec
    echo "$tools $torchrec" >"$venv/.featmux-tools"
fi
