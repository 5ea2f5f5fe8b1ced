#!/usr/bin/env python3
"""Tabulates runs of scripts/bench-serving.sh: the HTTP single-example
lookups (achieved rate, latency from each request's scheduled time, errors)
and the training beside them (rows/s of each kind of client). Runs given
under the same label are summarised by their median, each run listed too.

    python3 scripts/lib/serving_report.py LABEL=DIR [LABEL=DIR ...]
"""

import json
import pathlib
import statistics
import sys

COLUMNS = [
    ("HTTP offered req/s", lambda r: r["http"]["rate"], "{:,.0f}"),
    ("achieved", lambda r: r["http"]["requests_per_s"], "{:,.0f}"),
    ("p50", lambda r: r["http"]["latency_us"]["p50"] / 1000, "{:,.2f} ms"),
    ("p99", lambda r: r["http"]["latency_us"]["p99"] / 1000, "{:,.2f} ms"),
    ("max", lambda r: r["http"]["latency_us"]["max"] / 1000, "{:,.1f} ms"),
    ("HTTP errors", lambda r: r["http"]["errors"], "{:,.0f}"),
    ("gRPC lookup rows/s", lambda r: r["lookup"]["rows_per_s"] / 1e6, "{:.2f} M"),
    ("Train rows/s", lambda r: r["train"]["rows_per_s"] / 1e6, "{:.2f} M"),
    ("push rows/s", lambda r: r["push"]["rows_per_s"] / 1e6, "{:.2f} M"),
    ("training errors",
     lambda r: sum(r[n]["errors"] for n in ("lookup", "train", "push")), "{:,.0f}"),
]


def load(directory: pathlib.Path) -> dict:
    return {name: json.loads((directory / f"{name}.json").read_text())
            for name in ("http", "lookup", "train", "push")}


def line(label: str, values: list) -> str:
    cells = [label] + [fmt.format(v) for (_, _, fmt), v in zip(COLUMNS, values)]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    groups: dict = {}
    for arg in sys.argv[1:]:
        label, directory = arg.split("=", 1)
        groups.setdefault(label, []).append(pathlib.Path(directory))
    print("| run | " + " | ".join(name for name, _, _ in COLUMNS) + " |")
    print("|---|" + "---:|" * len(COLUMNS))
    for label, directories in groups.items():
        runs = [[get(load(d)) for _, get, _ in COLUMNS] for d in directories]
        if len(runs) > 1:
            medians = [statistics.median(column) for column in zip(*runs)]
            print(line(f"**{label}** (median of {len(runs)})", medians))
            for i, values in enumerate(runs, 1):
                print(line(f"{label}, run {i}", values))
        else:
            print(line(label, runs[0]))


if __name__ == "__main__":
    main()
