"""Python client lookup throughput on the load generator's batches: the same
table (`featmux bench` creates it), `--features` string features of one value
each, keys `k<n>` drawn uniformly from `--vocab`, `--examples` per request,
`--threads` threads sharing one client with as many connections as threads
(the Rust bench opens one per client; the GIL is released during calls),
each sending its own batches (dicts of `str` lists, as a data loader hands
them over; read into the wire format on every call) for `--duration` seconds.

    python python/benchmarks/lookup.py --addr http://127.0.0.1:50051 --table bench

With `--shared-region` (an `--addr unix:///path` of the server's socket),
each thread looks up on a Train stream of its own with a shared-memory
region, and gets its embeddings as views of the region.

Prints one JSON line; `scripts/bench-python.sh` runs it beside the Rust
client's `featmux bench` against the same server.
"""

from __future__ import annotations

import argparse
import json
import resource
import threading
import time

import numpy as np

import featmux


def batches(args, seed):
    rng = np.random.default_rng(seed)
    return [
        {f"f{f}": [f"k{k}" for k in rng.integers(0, args.vocab, args.examples)] for f in range(args.features)}
        for _ in range(args.batches)
    ]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--addr", default="http://127.0.0.1:50051")
    p.add_argument("--token")
    p.add_argument("--table", default="bench")
    p.add_argument("--features", type=int, default=26)
    p.add_argument("--examples", type=int, default=4096)
    p.add_argument("--vocab", type=int, default=1_000_000)
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--shared-region", action="store_true")
    p.add_argument("--dim", type=int, default=16, help="the table's width (to size the region)")
    args = p.parse_args()
    client = featmux.Client(args.addr, token=args.token, connections=args.threads)
    prepared = [batches(args, seed) for seed in range(args.threads)]
    counts = [0] * args.threads
    stop = time.monotonic() + args.duration

    def run(i):
        lookup = lambda b: client.lookup(args.table, b)  # noqa: E731
        if args.shared_region:
            stream = client.train()
            stream.open_region(4 * args.examples * args.features * args.dim)
            lookup = lambda b: stream.lookup_into_region(args.table, b, ticket=False)  # noqa: E731
        n = 0
        while time.monotonic() < stop:
            lookup(prepared[i][n % len(prepared[i])])
            n += 1
        counts[i] = n

    started = time.monotonic()
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    threads = [threading.Thread(target=run, args=(i,)) for i in range(args.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    requests = sum(counts)
    print(json.dumps({
        "client": "python",
        "shared_region": args.shared_region,
        "threads": args.threads,
        "examples": args.examples,
        "features": args.features,
        "requests": requests,
        "examples_per_s": requests * args.examples / elapsed,
        "client_cpu_ms_per_request": 1000 * cpu / max(requests, 1),
    }))


if __name__ == "__main__":
    main()
