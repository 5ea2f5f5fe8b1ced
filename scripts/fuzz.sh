#!/bin/sh
# Runs each coverage-guided fuzz target for a while (not part of CI):
#
#   scripts/fuzz.sh [seconds per target, default 120]
#
# Targets (fuzz/fuzz_targets/): grpc_request (protobuf PushRequest → batch
# and gradient conversion → planning → lookup and un-pooling),
# json_examples (the serving JSON decoder → planning), packed_strings.
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`);
# builds in /var/tmp/featmux-fuzz-target (RocksDB is built once there).
# The committed seed corpus is fuzz/corpus/<target>; new inputs go to
# /var/tmp/featmux-fuzz-corpus, crashes to fuzz/artifacts/<target>.
set -eu
cd "$(dirname "$0")/../fuzz"
seconds="${1:-120}"
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-/var/tmp/featmux-fuzz-target}"
work=/var/tmp/featmux-fuzz-corpus
for target in grpc_request json_examples packed_strings; do
    mkdir -p "$work/$target"
    echo "== $target ($seconds s)"
    cargo +nightly fuzz run "$target" "$work/$target" "corpus/$target" -- \
        -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=4096 2>&1 |
        grep -E "^#[0-9]+ +DONE|Done [0-9]+ runs|ERROR|panicked|SUMMARY" || true
done
