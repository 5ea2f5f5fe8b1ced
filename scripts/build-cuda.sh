#!/bin/sh
# Builds `featmux` with the candle CUDA backend (`--features cuda`) on a
# machine that has neither a GPU nor a CUDA install:
#
#   scripts/build-cuda.sh    # -> dist/cuda/: featmux, tests/backends (the
#                            #    backends' tests), needed-libs.txt; all stripped;
#                            #    and the same as dist/cuda.tar.xz to carry
#
# What it does, once (kept in $FEATMUX_CUDA_HOME, default
# /var/tmp/featmux-cuda/13.0, outside the clone):
#
# 1. `pip download`s NVIDIA's CUDA 13.0 wheels (pinned below: nvcc, its crt
#    headers and NVVM, the runtime, CCCL, cuBLAS, cuRAND, NVRTC) and unpacks
#    them into one toolkit-shaped folder (bin/, include/, lib/).
#    Why 13.0: candle-core 0.11's cudarc 0.19 reads the CUDA version from
#    `nvcc --version` and knows 13.0-13.4; the PTX candle's kernels are
#    compiled to must not be newer than the driver that loads it, and the
#    H100 machines we verify on run driver 580 (CUDA 13.0).
# 2. Adds the unversioned `libX.so` links the linker looks for.
# 3. Generates a link-time stub `libcuda.so` (soname libcuda.so.1): the
#    driver library comes with the GPU driver, not with any wheel. The stub
#    defines every driver-API entry point declared by the pinned `cuda.h`;
#    at run time the real libcuda.so.1 of the driver is loaded instead.
#
# Then it builds with CUDA_COMPUTE_CAP=90 (Hopper; override with
# FEATMUX_CUDA_COMPUTE_CAP) and copies the stripped binary and the test
# binaries gpu-check.sh runs to dist/cuda/ (git-ignored).
# Running it needs libcuda.so.1 (driver), libcudart.so.13, libcublas.so.13,
# libcublasLt.so.13, libcurand.so.10 and libnvrtc.so.13 on the library path
# (`scripts/gpu-check.sh` finds them on the GPU machine).
set -eu
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/featmux-target}"
CUDA_HOME_DIR="${FEATMUX_CUDA_HOME:-/var/tmp/featmux-cuda/13.0}"
COMPUTE_CAP="${FEATMUX_CUDA_COMPUTE_CAP:-90}"
WHEELS="nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88
nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cublas==13.0.2.14
nvidia-curand==10.4.0.35 nvidia-cuda-nvrtc==13.0.88"
# The test binary gpu-check.sh runs on the GPU (engine/tests/backends/).
GPU_TESTS="backends"

install_toolkit() {
    work=$(mktemp -d)
    # shellcheck disable=SC2086
    python3 -m pip download --quiet --no-deps --only-binary=:all: \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux_2_12_x86_64 --platform manylinux2010_x86_64 \
        --python-version 3.12 --implementation cp -d "$work/wheels" $WHEELS
    for wheel in "$work"/wheels/*.whl; do
        python3 -m zipfile -e "$wheel" "$work/unpacked"
    done
    rm -rf "$CUDA_HOME_DIR"
    mkdir -p "$(dirname "$CUDA_HOME_DIR")"
    mv "$work/unpacked/nvidia/cu13" "$CUDA_HOME_DIR"
    rm -rf "$work"
    chmod +x "$CUDA_HOME_DIR"/bin/* "$CUDA_HOME_DIR"/nvvm/bin/*
    (
        cd "$CUDA_HOME_DIR/lib"
        for lib in *.so.*; do
            base="${lib%%.so.*}"
            [ -e "$base.so" ] || ln -s "$lib" "$base.so"
        done
    )
    make_libcuda_stub
    echo "$WHEELS" >"$CUDA_HOME_DIR/.featmux-wheels"
}

make_libcuda_stub() {
    # Every `CUresult CUDAAPI cuX(` declaration and every `#define cuX cuX_v2`
    # target: the names a program built against this cuda.h can reference.
    stubs="$CUDA_HOME_DIR/lib/stubs"
    mkdir -p "$stubs"
    {
        grep -ohE 'CUDAAPI +cu[A-Za-z0-9_]+ *\(' "$CUDA_HOME_DIR/include/cuda.h" |
            grep -oE 'cu[A-Za-z0-9_]+'
        grep -ohE '^ *# *define +cu[A-Za-z0-9_]+ +cu[A-Za-z0-9_]+ *$' "$CUDA_HOME_DIR/include/cuda.h" |
            awk '{print $NF}'
    } | sort -u | awk '{print "void " $1 "(void) {}"}' >"$stubs/libcuda_stub.c"
    cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$stubs/libcuda.so" "$stubs/libcuda_stub.c"
}

if [ "$(cat "$CUDA_HOME_DIR/.featmux-wheels" 2>/dev/null)" != "$WHEELS" ]; then
    echo "featmux: installing the CUDA 13.0 wheels into $CUDA_HOME_DIR"
    install_toolkit
fi

export CUDA_PATH="$CUDA_HOME_DIR" CUDA_COMPUTE_CAP="$COMPUTE_CAP"
export PATH="$CUDA_HOME_DIR/bin:$PATH"
# The `featmux` binary (crate featmux-cli) and the engine's backends test
# binary that gpu-check.sh runs on the device, both with the engine's cuda
# feature.
cargo build --release -p featmux-cli --features cuda --bin featmux
cargo test --release -p featmux-engine --features cuda --no-run --message-format=json \
    >"$CARGO_TARGET_DIR/featmux-cuda-build.json"

rm -rf dist/cuda
mkdir -p dist/cuda/tests
cp "$CARGO_TARGET_DIR/release/featmux" dist/cuda/featmux
python3 - "$CARGO_TARGET_DIR/featmux-cuda-build.json" $GPU_TESTS <<'PY'
import json, shutil, sys

wanted = set(sys.argv[2:])
found = set()
for line in open(sys.argv[1]):
    message = json.loads(line)
    target = message.get("target", {})
    if message.get("executable") and "test" in target.get("kind", []) and target["name"] in wanted:
        shutil.copy(message["executable"], f"dist/cuda/tests/{target['name']}")
        found.add(target["name"])
if found != wanted:
    sys.exit(f"test binaries not built: {sorted(wanted - found)}")
PY
strip dist/cuda/featmux dist/cuda/tests/*
# What the binary needs at run time, for the GPU machine's checks.
readelf -d dist/cuda/featmux | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' >dist/cuda/needed-libs.txt
# The GPU machine takes at most 64 MiB of carried files: ship one xz archive
# (~19 MB; the binaries are ~120 MB, much of it PTX text).
tar -C dist -cf - cuda | xz -T0 -6 >dist/cuda.tar.xz
echo "featmux: built dist/cuda ($(du -sh dist/cuda | cut -f1)) and dist/cuda.tar.xz ($(du -h dist/cuda.tar.xz | cut -f1)); needs: $(tr '\n' ' ' <dist/cuda/needed-libs.txt)"
