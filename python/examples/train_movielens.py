"""Trains a PyTorch model on MovieLens whose embeddings live in featmux:
every step looks the batch up through ``featmux.torch.EmbeddingCollection``
(with a ticket), runs the dense model forward and backward in torch, and
the backward pass pushes the embedding gradients, where the table's sparse
optimizer runs. The dense model (an MLP like ``featmux train``'s, or DCN-v2
cross layers in front of it) keeps its torch Adam.

The examples come from ``featmux dataset --export DIR``, so this trains and
is scored on exactly the rows (split, features, bags) ``featmux train``
uses for the same flags and seed:

    featmux dataset --data data/movielens/ml-100k.csv --label rating \\
        --positive '>=4' --categorical user_id,item_id,age,gender,occupation,zip_code,release_year \\
        --multi 'genres:|' --seed 1 --export /tmp/ml-1
    python python/examples/train_movielens.py --split /tmp/ml-1 --seed 1 \\
        --addr http://127.0.0.1:50051 --layout unified --rows 16550 --model dcn

``--layout unified`` shares all rows between the features (Unified
Embedding); ``capped`` is the per-feature hashing baseline (each feature
its own slice of min(vocabulary, t) rows, t filling the budget), as
``featmux train --layout capped`` places it. Prints one JSON object
(validation AUC per epoch, test AUC and log loss, examples/s).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import featmux
from featmux.torch import EmbeddingCollection


def read_split(path: Path) -> tuple[list[str], dict, np.ndarray]:
    """Features (in file order), ``{feature: [bag per example]}``, labels."""
    examples = [json.loads(line) for line in path.read_text().splitlines()]
    features = list(examples[0]["features"])
    bags = {f: [e["features"][f] for e in examples] for f in features}
    labels = np.array([e["label"] for e in examples], dtype=np.float32)
    return features, bags, labels


def capped_slices(vocabulary: list[int], budget: int) -> list[int]:
    """Each feature min(vocabulary, t) rows, t the largest cap that fits."""
    vocabulary = [max(v, 1) for v in vocabulary]
    lo, hi = 1, max(vocabulary)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if sum(min(v, mid) for v in vocabulary) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return [min(v, lo) for v in vocabulary]


class Mlp(nn.Module):
    """ReLU MLP ``input -> hidden... -> 1`` (a logit)."""

    def __init__(self, width: int, hidden: list[int]):
        super().__init__()
        layers: list[nn.Module] = []
        for out in hidden:
            layers += [nn.Linear(width, out), nn.ReLU()]
            width = out
        layers.append(nn.Linear(width, 1))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x).squeeze(1)


class DcnV2(nn.Module):
    """DCN-v2 (Wang et al., 2021), stacked: full-rank cross layers
    ``x_{l+1} = x_0 * (W_l x_l + b_l) + x_l`` learn explicit feature
    crosses, then the MLP above reads their output."""

    def __init__(self, width: int, hidden: list[int], cross_layers: int):
        super().__init__()
        self.cross = nn.ModuleList(nn.Linear(width, width) for _ in range(cross_layers))
        self.deep = Mlp(width, hidden)

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for layer in self.cross:
            x = x0 * layer(x) + x
        return self.deep(x)


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC by the rank-sum formula, tied scores sharing their mean rank."""
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores))
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], len(scores)]
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + end + 1) / 2
    positives = labels > 0.5
    p, n = positives.sum(), (~positives).sum()
    return float((ranks[positives].sum() - p * (p + 1) / 2) / (p * n))


def log_loss(labels: np.ndarray, probabilities: np.ndarray) -> float:
    p = np.clip(probabilities.astype(np.float64), 1e-7, 1 - 1e-7)
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))


def take(bags: dict, rows) -> dict:
    return {f: [values[i] for i in rows] for f, values in bags.items()}


def evaluate(embeddings: EmbeddingCollection, model: nn.Module, bags: dict, labels: np.ndarray) -> dict:
    embeddings.eval()
    model.eval()
    scores = []
    with torch.no_grad():
        for start in range(0, len(labels), 2048):
            rows = range(start, min(start + 2048, len(labels)))
            scores.append(torch.sigmoid(model(embeddings(take(bags, rows)))).numpy())
    embeddings.train()
    model.train()
    scores = np.concatenate(scores)
    return {"examples": len(labels), "auc": auc(labels, scores), "log_loss": log_loss(labels, scores)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--split", type=Path, required=True, help="directory written by `featmux dataset --export`")
    p.add_argument("--addr", default="http://127.0.0.1:50051")
    p.add_argument("--token")
    p.add_argument("--table", help="table to create (default: movielens-<layout>-<model>-<seed>)")
    p.add_argument("--layout", choices=["unified", "capped"], default="unified")
    p.add_argument("--rows", type=int, default=100_000, help="table rows: the memory budget")
    p.add_argument("--chunk-dim", type=int, default=16)
    p.add_argument("--model", choices=["mlp", "dcn"], default="mlp")
    p.add_argument("--hidden", default="64,32", help="hidden layer widths of the MLP")
    p.add_argument("--cross-layers", type=int, default=2, help="DCN-v2 cross layers")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--sparse-optimizer", default="adagrad", help="run in featmux: sgd, adagrad, row_wise_adagrad, adam, ftrl")
    p.add_argument("--sparse-lr", type=float, default=0.05, help="the loss is summed over the batch")
    p.add_argument("--dense-lr", type=float, default=1e-3)
    p.add_argument("--async-push", action="store_true", help="overlap each push with the next lookup")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", type=Path, help="also write the JSON result here")
    args = p.parse_args()

    torch.manual_seed(args.seed)
    features, train_bags, train_labels = read_split(args.split / "train.jsonl")
    _, valid_bags, valid_labels = read_split(args.split / "valid.jsonl")
    _, test_bags, test_labels = read_split(args.split / "test.jsonl")
    vocabulary = [len({v for bag in train_bags[f] for v in bag}) for f in features]

    client = featmux.Client(args.addr, token=args.token)
    table = args.table or f"movielens-{args.layout}-{args.model}-{args.seed}"
    slices = capped_slices(vocabulary, args.rows) if args.layout == "capped" else [None] * len(features)
    client.create_table(
        {
            "name": table,
            "rows": args.rows if args.layout == "unified" else sum(slices),
            "chunk_dim": args.chunk_dim,
            "seed": args.seed,
            "optimizer": {"kind": args.sparse_optimizer, "lr": args.sparse_lr},
        },
        [
            {"name": f, "pooling": "mean", **({"placement": {"kind": "partitioned", "rows": s}} if s else {})}
            for f, s in zip(features, slices)
        ],
    )
    embeddings = EmbeddingCollection(client, table, concat=True, async_push=args.async_push)
    width = len(features) * args.chunk_dim
    hidden = [int(h) for h in args.hidden.split(",")]
    model = Mlp(width, hidden) if args.model == "mlp" else DcnV2(width, hidden, args.cross_layers)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.dense_lr)
    loss_fn = nn.BCEWithLogitsLoss(reduction="sum")

    rng = np.random.default_rng(args.seed)
    epochs, training_seconds = [], 0.0
    for epoch in range(1, args.epochs + 1):
        order = rng.permutation(len(train_labels))
        loss_sum, started = 0.0, time.perf_counter()
        for start in range(0, len(order), args.batch):
            rows = order[start : start + args.batch]
            optimizer.zero_grad()
            logits = model(embeddings(take(train_bags, rows)))
            loss = loss_fn(logits, torch.from_numpy(train_labels[rows]))
            loss.backward()  # pushes the embedding gradients to featmux
            optimizer.step()
            loss_sum += loss.item()
        embeddings.wait()
        training_seconds += time.perf_counter() - started
        valid = evaluate(embeddings, model, valid_bags, valid_labels)
        epochs.append({"epoch": epoch, "train_loss": loss_sum / len(order), "valid": valid})
    report = {
        "trainer": "python",
        "model": args.model,
        "layout": args.layout,
        "rows": args.rows,
        "seed": args.seed,
        "features": dict(zip(features, vocabulary)),
        "epochs": epochs,
        "valid": epochs[-1]["valid"],
        "test": evaluate(embeddings, model, test_bags, test_labels),
        "train_examples_per_s": len(train_labels) * args.epochs / training_seconds,
    }
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
