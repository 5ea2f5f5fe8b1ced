"""Serving lookups from Python: one example's concatenated embedding over
HTTP (JSON, what an inference service without the client library sends)
and over gRPC (featmux.Client, numpy), checked equal.

    python python/examples/serving_lookup.py --table movies \\
        --example '{"user": "u1", "genres": ["comedy", "drama"]}'

Exits 1 if the two transports disagree.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request

import numpy as np

import featmux


def http_lookup(base: str, table: str, example: dict, token: str | None) -> tuple[list, np.ndarray]:
    """The feature order and the concatenated vector, over HTTP."""
    request = urllib.request.Request(
        f"{base}/v1/tables/{table}/lookup",
        data=json.dumps({"examples": [example], "concat": True}).encode(),
        headers={"content-type": "application/json", **({"authorization": f"Bearer {token}"} if token else {})},
    )
    with urllib.request.urlopen(request) as response:
        body = json.load(response)
    return body["features"], np.asarray(body["vectors"][0], dtype=np.float32)


def grpc_lookup(client: featmux.Client, table: str, example: dict, order: list) -> np.ndarray:
    """The same example through the Python client, concatenated in `order`."""
    embeddings = client.lookup(table, {feature: [value] for feature, value in example.items()})
    return np.concatenate([embeddings[feature][0] for feature in order])


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--grpc", default="http://127.0.0.1:50051")
    p.add_argument("--http", default="http://127.0.0.1:8080")
    p.add_argument("--token")
    p.add_argument("--table", required=True)
    p.add_argument("--example", required=True, help="one example as JSON: {feature: value or list}")
    args = p.parse_args()
    example = json.loads(args.example)
    order, over_http = http_lookup(args.http, args.table, example, args.token)
    over_grpc = grpc_lookup(featmux.Client(args.grpc, token=args.token), args.table, example, order)
    print(json.dumps({"features": order, "http": over_http.tolist(), "grpc": over_grpc.tolist()}))
    return 0 if np.array_equal(over_http, over_grpc) else 1


if __name__ == "__main__":
    sys.exit(main())
