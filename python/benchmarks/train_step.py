"""What a PyTorch training step pays for featmux: the same step (an MLP over
`--features` int64 features of one value each, `--examples` per batch, the
loss summed, Adam on the MLP, Adagrad on the embeddings) with its
embeddings in featmux (`featmux.torch.EmbeddingCollection`: a lookup with
a ticket, a push in backward) and with a pure-PyTorch `nn.EmbeddingBag` of
the same size (`--rows` x `--dim`, sparse gradients, `torch.optim.Adagrad`)
in this process. Prints one JSON line: each side's step time and the time
in its embedding part; featmux also with `async_push=True`, the push
overlapping the next step.

    python python/benchmarks/train_step.py --addr http://127.0.0.1:50051

With `--unix unix:///path` (the server's Unix socket) it also runs the
featmux step there, and there with shared-memory regions
(`EmbeddingCollection(shared_region=...)`).

`scripts/bench-python.sh` runs it against a release server.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from torch import nn

import featmux
from featmux.torch import EmbeddingCollection


def mlp(width: int) -> nn.Module:
    return nn.Sequential(nn.Linear(width, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 1))


class TimedCollection(EmbeddingCollection):
    """Adds up the time spent in lookups (forward) and pushes (backward)."""

    lookup_s = 0.0
    push_s = 0.0

    def forward(self, batch):
        started = time.perf_counter()
        out = super().forward(batch)
        self.lookup_s += time.perf_counter() - started
        return out

    def _push(self, grads, looked_up):
        started = time.perf_counter()
        super()._push(grads, looked_up)
        self.push_s += time.perf_counter() - started


def featmux_steps(args, batches, labels, async_push: bool, addr: str = "", shared_region: bool = False) -> dict:
    client = featmux.Client(addr or args.addr, token=args.token)
    table = f"train-step-{time.time_ns()}"
    client.create_table(
        {"name": table, "rows": args.rows, "chunk_dim": args.dim, "seed": 1, "optimizer": {"kind": "adagrad", "lr": 0.05}},
        [{"name": f"f{f}", "value_type": "int64", "pooling": "mean"} for f in range(args.features)],
    )
    region = 4 * args.examples * args.features * args.dim if shared_region else None
    embeddings = TimedCollection(client, table, concat=True, async_push=async_push, shared_region=region)
    model = mlp(args.features * args.dim)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step(batch, y):
        optimizer.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(model(embeddings(batch)).squeeze(1), y, reduction="sum")
        loss.backward()
        optimizer.step()

    def reset():
        embeddings.lookup_s = embeddings.push_s = 0.0

    seconds = timed(args, batches, labels, step, reset)
    embeddings.wait()
    client.drop_table(table)
    return {
        "step_ms": 1000 * seconds / args.steps,
        "lookup_ms": 1000 * embeddings.lookup_s / args.steps,
        "push_ms": 1000 * embeddings.push_s / args.steps,
    }


def embedding_bag_steps(args, batches, labels) -> dict:
    bag = nn.EmbeddingBag(args.rows, args.dim, mode="mean", sparse=True)
    model = mlp(args.features * args.dim)
    sparse = torch.optim.Adagrad(bag.parameters(), lr=0.05)
    dense = torch.optim.Adam(model.parameters(), lr=1e-3)
    n = args.examples * args.features
    offsets = torch.arange(n)
    salts = torch.arange(args.features) * 0x9E3779B1
    # The same ids, hashed into the one shared table (one value per bag).
    ids = [((torch.from_numpy(np.stack([b[f"f{f}"] for f in range(args.features)], axis=1)) + salts) % args.rows).reshape(-1) for b in batches]
    clock = {"embedding_s": 0.0}

    def step(i, y):
        sparse.zero_grad()
        dense.zero_grad()
        started = time.perf_counter()
        x = bag(ids[i], offsets).reshape(args.examples, -1)
        forward = time.perf_counter() - started
        x_leaf = x.detach().requires_grad_()
        loss = nn.functional.binary_cross_entropy_with_logits(model(x_leaf).squeeze(1), y, reduction="sum")
        loss.backward()
        dense.step()
        started = time.perf_counter()
        x.backward(x_leaf.grad)
        sparse.step()
        clock["embedding_s"] += forward + time.perf_counter() - started

    seconds = timed(args, list(range(len(batches))), labels, step, lambda: clock.update(embedding_s=0.0))
    return {"step_ms": 1000 * seconds / args.steps, "embedding_ms": 1000 * clock["embedding_s"] / args.steps}


def timed(args, batches, labels, step, reset) -> float:
    for i in range(args.warmup):
        step(batches[i % len(batches)], labels[i % len(labels)])
    reset()
    started = time.perf_counter()
    for i in range(args.steps):
        step(batches[i % len(batches)], labels[i % len(labels)])
    return time.perf_counter() - started


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--addr", default="http://127.0.0.1:50051")
    p.add_argument("--token")
    p.add_argument("--features", type=int, default=26)
    p.add_argument("--examples", type=int, default=4096)
    p.add_argument("--rows", type=int, default=1 << 20)
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--vocab", type=int, default=1_000_000)
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--unix", help="the server's Unix socket, unix:///path")
    args = p.parse_args()
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    batches = [{f"f{f}": rng.integers(0, args.vocab, args.examples) for f in range(args.features)} for _ in range(args.batches)]
    labels = [torch.from_numpy(rng.integers(0, 2, args.examples).astype(np.float32)) for _ in range(args.batches)]
    with_featmux = featmux_steps(args, batches, labels, async_push=False)
    overlapped = featmux_steps(args, batches, labels, async_push=True)
    baseline = embedding_bag_steps(args, batches, labels)
    local = {}
    if args.unix:
        local = {
            "featmux_unix": featmux_steps(args, batches, labels, async_push=False, addr=args.unix),
            "featmux_unix_region": featmux_steps(args, batches, labels, async_push=False, addr=args.unix, shared_region=True),
        }
    print(json.dumps({
        "examples": args.examples,
        "features": args.features,
        "rows": args.rows,
        "dim": args.dim,
        "torch_threads": torch.get_num_threads(),
        "featmux": with_featmux,
        # Pushes on a background thread (push_ms: handing them over).
        "featmux_async_push": overlapped,
        "embedding_bag": baseline,
        **local,
    }))


if __name__ == "__main__":
    main()
