#!/bin/sh
# Fetches MovieLens-100k and joins it into one CSV for the trainer:
#
#   scripts/fetch-movielens.sh [OUT]     # default OUT: data/movielens/ml-100k.csv
#
# The data comes from the PyPI wheel of RecBole, which ships it under
# recbole/dataset_example/ml-100k/ (.inter, .user, .item); `pip download
# --no-deps` fetches only that wheel (~2 MB). Columns of the result:
# user_id, item_id, age, gender, occupation, zip_code, genres ("|"-separated),
# release_year (empty where unknown), timestamp, rating. data/ is
# git-ignored: never commit it.
set -eu
cd "$(dirname "$0")/.."
OUT="${1:-data/movielens/ml-100k.csv}"
RECBOLE_VERSION=1.2.1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --no-deps "recbole==$RECBOLE_VERSION" -d "$work"
mkdir -p "$(dirname "$OUT")"
python3 - "$work"/recbole-*.whl "$OUT" <<'PY'
import csv, io, sys, zipfile

wheel, out = sys.argv[1], sys.argv[2]
prefix = "recbole/dataset_example/ml-100k/ml-100k."

def table(z, kind):
    text = z.read(prefix + kind).decode("utf-8", "replace")
    rows = csv.reader(io.StringIO(text), delimiter="\t", quoting=csv.QUOTE_NONE)
    header = [h.split(":")[0] for h in next(rows)]
    return [dict(zip(header, row)) for row in rows if row]

def year(text):
    # One movie's year is "unkonwn" in the source: leave it empty (missing).
    return text if text.isdigit() else ""

with zipfile.ZipFile(wheel) as z:
    users = {u["user_id"]: u for u in table(z, "user")}
    items = {i["item_id"]: i for i in table(z, "item")}
    ratings = table(z, "inter")

with open(out, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["user_id", "item_id", "age", "gender", "occupation", "zip_code",
                "genres", "release_year", "timestamp", "rating"])
    for r in ratings:
        u, i = users[r["user_id"]], items[r["item_id"]]
        w.writerow([r["user_id"], r["item_id"], u["age"], u["gender"], u["occupation"],
                    u["zip_code"], "|".join(i["class"].split()), year(i["release_year"]),
                    r["timestamp"].split(".")[0], r["rating"].split(".")[0]])
print(f"wrote {out}: {len(ratings)} ratings, {len(users)} users, {len(items)} items")
PY
