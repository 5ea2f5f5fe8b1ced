#!/bin/sh
# The MovieLens-100k experiment: Unified Embedding vs the hashing trick
# (capped and proportional slices) vs collisionless, at the same memory,
# trained through a real `featmux serve`. Writes docs/results/movielens.md
# and movielens.png; raw results in RESULTS (default
# docs/results/movielens-run).
#
#   scripts/experiment-movielens.sh            # 3 seeds (~5 min)
#   SEEDS="1 2 3 4 5" scripts/experiment-movielens.sh
#
# Budgets: the collisionless table's rows (10 × the summed vocabulary) ×
# 1/64, 1/16, 1/4. Every method gets the same model (MLP 64→32, 16 dims
# per feature), steps (5 epochs of batches of 256), learning rates (Adagrad
# 0.05 on embeddings with the batch loss summed, Adam 1e-3 on the MLP) and
# random 80/10/10 split per seed.
set -eu
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/featmux-target}"
SEEDS="${SEEDS:-1 2 3}"
RESULTS="${RESULTS:-docs/results/movielens-run}"
DATA=data/movielens/ml-100k.csv
GRPC=127.0.0.1:50077
HTTP=127.0.0.1:8097

[ -f "$DATA" ] || scripts/fetch-movielens.sh "$DATA"
cargo build --release -p featmux-cli -p featmux-tools
FEATMUX="$CARGO_TARGET_DIR/release/featmux"

. scripts/lib/serve.sh
serve "$FEATMUX" "$GRPC" "$HTTP"

features="--data $DATA --label rating --positive >=4 \
--categorical user_id,item_id,age,gender,occupation,zip_code,release_year --multi genres:|"
training="--epochs 5 --batch 256 --hidden 64,32 --chunk-dim 16 \
--sparse-optimizer adagrad --sparse-lr 0.05 --dense-lr 0.001"

rm -rf "$RESULTS"
mkdir -p "$RESULTS" docs/results
# shellcheck disable=SC2086
"$FEATMUX" --json dataset $features >"$RESULTS/dataset.json"
vocabulary=$(sed 's/.*"total_vocabulary":\([0-9]*\).*/\1/' "$RESULTS/dataset.json")
collisionless=$((vocabulary * 10))
started=$(date +%s)
for seed in $SEEDS; do
    # shellcheck disable=SC2086
    "$FEATMUX" --addr "http://$GRPC" train $features $training --seed "$seed" \
        --layout collisionless --table "collisionless-$seed" \
        --out "$RESULTS/collisionless-s$seed.json" >/dev/null
    for fraction in 64 16 4; do
        rows=$((collisionless / fraction))
        for layout in unified capped proportional; do
            echo "== seed $seed, 1/$fraction ($rows rows), $layout" >&2
            # shellcheck disable=SC2086
            "$FEATMUX" --addr "http://$GRPC" train $features $training --seed "$seed" \
                --layout "$layout" --rows "$rows" --table "$layout-$fraction-$seed" \
                --out "$RESULTS/$layout-f$fraction-s$seed.json" >/dev/null
        done
    done
done
finished=$(date +%s)
# The network's cost: the same collisionless run in-process.
# shellcheck disable=SC2086
"$FEATMUX" train $features $training --seed 1 --layout collisionless --in-process \
    --table in-process --out "$RESULTS/in-process.json" >/dev/null
echo "$((finished - started))" >"$RESULTS/experiment-seconds.txt"
"$CARGO_TARGET_DIR/release/featmux-report" movielens --results "$RESULTS" \
    --out docs/results/movielens.md --plot docs/results/movielens.png
echo "wrote docs/results/movielens.md and movielens.png (raw results: $RESULTS)"
