"""featmux's in-process engine against what a PyTorch user runs instead, on
the load generator's shapes: one shared table of `--rows` x `--dim` (every
feature hashed into it, as featmux's unified table), `--features` features
of `--values` values each pooled by sum, `--examples` per batch, rows drawn
uniformly. Peers:

- `embedding-bag`: plain `torch.nn.EmbeddingBag(mode="sum")`, forward.
- `tbe`: FBGEMM's table-batched embedding on the CPU (TorchRec's kernel,
  `SplitTableBatchedEmbeddingBagsCodegen`, one table every feature maps
  to), forward only.
- `tbe-train`: the same, forward + backward with its fused exact row-wise
  Adagrad (the update happens inside backward).

Each runs for `--duration` seconds on `--threads` torch threads, cycling
through `--batches` batches made up front. Prints one JSON line per peer:
rows looked up per second (examples x features x values / s, the same
count `featmux bench` reports as `rows_per_s`).

    python python/benchmarks/peers.py --examples 4096 --features 26 --values 1 --dim 16

`scripts/bench-peers.sh` runs it beside `featmux bench --workload
engine-lookup` on the same shapes.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch import nn


def batches(args: argparse.Namespace) -> list[torch.Tensor]:
    """Per batch, the row of every value, feature-major: [features, examples, values]."""
    g = torch.Generator().manual_seed(7)
    shape = (args.features, args.examples, args.values)
    return [torch.randint(0, args.rows, shape, generator=g) for _ in range(args.batches)]


def timed(args: argparse.Namespace, step) -> dict:
    """Runs `step(i)` on batch i % batches for the duration; rows/s."""
    for i in range(3):
        step(i % args.batches)
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < args.duration:
        step(done % args.batches)
        done += 1
    elapsed = time.perf_counter() - started
    rows = done * args.examples * args.features * args.values
    return {"batches": done, "elapsed_s": elapsed, "rows_per_s": rows / elapsed}


def embedding_bag(args: argparse.Namespace, data: list[torch.Tensor]) -> dict:
    table = nn.EmbeddingBag(args.rows, args.dim, mode="sum")
    # One bag per (feature, example), as featmux pools them.
    flat = [d.reshape(-1) for d in data]
    offsets = torch.arange(0, args.features * args.examples * args.values, args.values)

    @torch.no_grad()
    def step(i: int) -> None:
        table(flat[i], offsets)

    return timed(args, step)


def tbe(args: argparse.Namespace, data: list[torch.Tensor], train: bool) -> dict:
    from fbgemm_gpu.split_embedding_configs import EmbOptimType as OptimType
    from fbgemm_gpu.split_table_batched_embeddings_ops_common import (
        EmbeddingLocation,
        PoolingMode,
    )
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
        ComputeDevice,
        SplitTableBatchedEmbeddingBagsCodegen,
    )

    module = SplitTableBatchedEmbeddingBagsCodegen(
        embedding_specs=[(args.rows, args.dim, EmbeddingLocation.HOST, ComputeDevice.CPU)],
        feature_table_map=[0] * args.features,
        optimizer=OptimType.EXACT_ROWWISE_ADAGRAD,
        learning_rate=0.05,
        pooling_mode=PoolingMode.SUM,
    )
    # TBE's layout: offsets over features x examples bags, feature-major.
    flat = [d.reshape(-1) for d in data]
    offsets = torch.arange(0, args.features * args.examples * args.values + 1, args.values)
    grad = torch.full((args.examples, args.features * args.dim), 0.01)

    def step(i: int) -> None:
        if train:
            module(flat[i], offsets).backward(grad)
        else:
            with torch.no_grad():
                module(flat[i], offsets)

    return timed(args, step)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--examples", type=int, default=4096)
    p.add_argument("--features", type=int, default=26)
    p.add_argument("--values", type=int, default=1)
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--peers", default="embedding-bag,tbe,tbe-train")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = batches(args)
    shape = {k: getattr(args, k) for k in ("rows", "dim", "examples", "features", "values", "threads")}
    runs = {
        "embedding-bag": lambda: embedding_bag(args, data),
        "tbe": lambda: tbe(args, data, train=False),
        "tbe-train": lambda: tbe(args, data, train=True),
    }
    for peer in args.peers.split(","):
        result = runs[peer]()
        print(json.dumps({"peer": peer, "torch": torch.__version__, **shape, **result}), flush=True)


if __name__ == "__main__":
    main()
