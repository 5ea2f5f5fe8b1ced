#!/usr/bin/env python3
"""Tabulates runs of scripts/bench-serving.sh: the HTTP single-example
lookups (achieved rate, latency from each request's scheduled time, errors)
and the training beside them (rows/s of each kind of client).

    python3 scripts/lib/serving_report.py LABEL=DIR [LABEL=DIR ...]
"""

import json
import pathlib
import sys


def load(directory: pathlib.Path, name: str) -> dict:
    return json.loads((directory / f"{name}.json").read_text())


def row(label: str, directory: pathlib.Path) -> str:
    http = load(directory, "http")
    latency = http["latency_us"]
    training = [load(directory, name) for name in ("lookup", "train", "push")]
    cells = [
        label,
        f"{http['rate']:,.0f}",
        f"{http['requests_per_s']:,.0f}",
        f"{latency['p50'] / 1000:,.2f} ms",
        f"{latency['p99'] / 1000:,.2f} ms",
        f"{latency['max'] / 1000:,.1f} ms",
        f"{http['errors']:,}",
    ] + [f"{t['rows_per_s'] / 1e6:.2f} M" for t in training] + [
        f"{sum(t['errors'] for t in training):,}"
    ]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    runs = [arg.split("=", 1) for arg in sys.argv[1:]]
    print(
        "| run | HTTP offered req/s | achieved | p50 | p99 | max | HTTP errors "
        "| gRPC lookup rows/s | Train rows/s | push rows/s | training errors |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, directory in runs:
        print(row(label, pathlib.Path(directory)))


if __name__ == "__main__":
    main()
