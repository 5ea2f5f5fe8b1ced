#!/bin/sh
# The PyTorch trainer (python/examples/train_movielens.py) against the Rust
# one (`featmux train`) on MovieLens-100k, same rows and settings: for each
# seed, `featmux dataset --export` writes the split both train on; each
# trains an MLP (64→32, 16 dims per feature, 5 epochs of batches of 256,
# Adagrad 0.05 in featmux with the batch loss summed, Adam 1e-3 on the MLP)
# with Unified Embedding and with the capped per-feature hashing baseline,
# at 1/16 of the collisionless rows; Python also trains DCN-v2 (2 cross
# layers before the same MLP). Writes docs/results/movielens-python.md.
#
#   scripts/experiment-python-movielens.sh     # 3 seeds (~3 min)
#
# Needs the package in /var/tmp/featmux-py (scripts/python-tests.sh).
set -eu
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/featmux-target}"
SEEDS="${SEEDS:-1 2 3}"
DATA=data/movielens/ml-100k.csv
GRPC=127.0.0.1:50078
HTTP=127.0.0.1:8098
PY=/var/tmp/featmux-py/bin/python

[ -f "$DATA" ] || scripts/fetch-movielens.sh "$DATA"
cargo build --release -p featmux-cli
FEATMUX="$CARGO_TARGET_DIR/release/featmux"
. scripts/lib/serve.sh
serve "$FEATMUX" "$GRPC" "$HTTP"

features="--data $DATA --label rating --positive >=4 \
--categorical user_id,item_id,age,gender,occupation,zip_code,release_year --multi genres:|"
mkdir -p "$work/results"
for seed in $SEEDS; do
    # shellcheck disable=SC2086
    "$FEATMUX" --json dataset $features --seed "$seed" --export "$work/split-$seed" >"$work/dataset.json"
    vocabulary=$(sed 's/.*"total_vocabulary":\([0-9]*\).*/\1/' "$work/dataset.json")
    rows=$((vocabulary * 10 / 16))
    for layout in unified capped; do
        echo "== seed $seed, $layout, $rows rows" >&2
        # shellcheck disable=SC2086
        "$FEATMUX" --addr "http://$GRPC" train $features --seed "$seed" --epochs 5 --batch 256 \
            --hidden 64,32 --chunk-dim 16 --sparse-optimizer adagrad --sparse-lr 0.05 \
            --dense-lr 0.001 --layout "$layout" --rows "$rows" --table "rust-$layout-$seed" \
            --out "$work/results/rust-mlp-$layout-$seed.json" >/dev/null 2>&1
        for model in mlp dcn; do
            "$PY" python/examples/train_movielens.py --split "$work/split-$seed" \
                --addr "http://$GRPC" --seed "$seed" --layout "$layout" --rows "$rows" \
                --model "$model" --out "$work/results/python-$model-$layout-$seed.json" >/dev/null
        done
    done
done
"$PY" - "$work/results" "$SEEDS" >docs/results/movielens-python.md <<'PY'
import json, statistics, sys
from pathlib import Path
results, seeds = Path(sys.argv[1]), sys.argv[2].split()
auc = lambda run, layout, seed: json.loads((results / f"{run}-{layout}-{seed}.json").read_text())["test"]["auc"]
speed = lambda run, layout, seed: json.loads((results / f"{run}-{layout}-{seed}.json").read_text())["train_examples_per_s"]
runs = [("rust-mlp", "Rust `featmux train`, MLP"), ("python-mlp", "PyTorch, MLP"), ("python-dcn", "PyTorch, DCN-v2")]
print("# MovieLens-100k: the PyTorch trainer beside the Rust one\n")
print("`scripts/experiment-python-movielens.sh` (seeds " + ", ".join(seeds) + "). Both train on the rows")
print("`featmux dataset --export` writes for the seed; the table has 1/16 of the")
print("collisionless rows; MLP 64→32, 16 dims per feature, 5 epochs of 256,")
print("Adagrad 0.05 in featmux (batch loss summed), Adam 1e-3 dense. Test AUC:\n")
print("| layout | trainer | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | train examples/s |")
print("|---|---|" + "---|" * len(seeds) + "---|---|")
means = {}
for layout in ("unified", "capped"):
    for run, name in runs:
        aucs = [auc(run, layout, s) for s in seeds]
        means[run, layout] = statistics.mean(aucs)
        rate = statistics.mean(speed(run, layout, s) for s in seeds)
        print(f"| {layout} | {name} | " + " | ".join(f"{a:.4f}" for a in aucs) + f" | {means[run, layout]:.4f} | {rate:,.0f} |")
print()
for layout in ("unified", "capped"):
    diffs = [auc("python-mlp", layout, s) - auc("rust-mlp", layout, s) for s in seeds]
    print(f"- {layout}: PyTorch MLP − Rust MLP = {means['python-mlp', layout] - means['rust-mlp', layout]:+.4f} "
          f"mean (per seed " + ", ".join(f"{d:+.4f}" for d in diffs) + "); DCN-v2 − MLP (PyTorch) = "
          f"{means['python-dcn', layout] - means['python-mlp', layout]:+.4f}.")
print(f"- Unified − capped, PyTorch MLP: {means['python-mlp', 'unified'] - means['python-mlp', 'capped']:+.4f}; "
      f"Rust MLP: {means['rust-mlp', 'unified'] - means['rust-mlp', 'capped']:+.4f}.")
PY
cat docs/results/movielens-python.md
