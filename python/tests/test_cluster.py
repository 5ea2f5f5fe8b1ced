"""``featmux.ClusterClient`` against a real etcd and three real shards:
lookups equal one standalone server's with the same table, pushes move
the same rows by the same amounts, and ``EmbeddingCollection`` trains
through it unchanged."""

from __future__ import annotations

import re
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

import featmux
from featmux.torch import EmbeddingCollection
from conftest import ADMIN, Server

TABLE = {"name": "sharded", "rows": 6000, "chunk_dim": 8, "optimizer": {"kind": "adagrad", "lr": 0.1}}
FEATURES = [
    {"name": "user"},
    {"name": "tags", "pooling": "mean"},
    {"name": "clicks", "value_type": "int64", "chunks": 2},
]


def batch(step: int) -> dict:
    return {
        "user": [f"u{(step * 32 + e) % 41}" for e in range(32)],
        "tags": [[f"t{(e + t) % 23}" for t in range(e % 4)] for e in range(32)],
        "clicks": [[e, e * 7 % 31] for e in range(32)],
    }


def assert_same(sharded: featmux.Embeddings, single: featmux.Embeddings) -> None:
    assert list(sharded) == list(single)
    for feature in single:
        np.testing.assert_allclose(sharded[feature], single[feature], rtol=1e-6, atol=1e-7)
    # One value per example, sum pooling: the row itself, bit for bit.
    assert np.array_equal(sharded["user"], single["user"])


def test_a_sharded_table_answers_and_trains_like_one_server(server, cluster):
    single = featmux.Client(server.grpc, token=ADMIN)
    sharded = featmux.ClusterClient(cluster.etcd, prefix=cluster.PREFIX, token=ADMIN)
    single.create_table(TABLE, FEATURES)
    info = sharded.admin().create_table(TABLE, FEATURES)
    assert [f["salt"] for f in info["features"]] == [f["salt"] for f in single.table("sharded")["features"]]

    for step in range(3):
        looked_up = sharded.lookup("sharded", batch(step), ticket=True)
        reference = single.lookup("sharded", batch(step), ticket=True)
        assert_same(looked_up, reference)
        grads = {f: np.full(reference[f].shape, 0.05 * (step + 1), np.float32) for f in reference}
        pushed = sharded.push("sharded", grads, ticket=looked_up) if step % 2 == 0 else \
            sharded.push("sharded", grads, batch=batch(step))
        expected = single.push("sharded", grads, ticket=reference)
        assert sorted(s["shard"] for s in pushed["shards"]) == ["s0", "s1", "s2"]
        assert pushed["unique_rows"] == expected["unique_rows"]
    for step in range(3):
        assert_same(sharded.lookup("sharded", batch(step)), single.lookup("sharded", batch(step)))


def test_embedding_collection_trains_through_a_cluster(server, cluster):
    single = featmux.Client(server.grpc, token=ADMIN)
    sharded = featmux.ClusterClient(cluster.etcd, prefix=cluster.PREFIX, token=ADMIN)
    table = {**TABLE, "name": "torch_sharded"}
    single.create_table(table, FEATURES)
    sharded.admin().create_table(table, FEATURES)
    for client in (single, sharded):
        embeddings = EmbeddingCollection(client, "torch_sharded", concat=True)
        out = embeddings(batch(5))
        (out * 0.1).sum().backward()
        assert embeddings.last_push["unique_rows"] > 0
    assert_same(sharded.lookup("torch_sharded", batch(5)), single.lookup("torch_sharded", batch(5)))
    with torch.no_grad():
        assert EmbeddingCollection(sharded, "torch_sharded")(batch(5))["user"].shape == (32, 8)


def rows_looked_up(server: Server) -> float:
    request = urllib.request.Request(f"{server.http}/metrics", headers={"Authorization": f"Bearer {ADMIN}"})
    with urllib.request.urlopen(request) as response:
        text = response.read().decode()
    return sum(float(v) for v in re.findall(r"^featmux_rows_looked_up_total\S* (\S+)$", text, re.M))


def test_lookups_read_from_the_shards_replicas(cluster, tmp_path):
    replicas = []
    for i, shard in enumerate(cluster.shards):
        replica_dir = tmp_path / f"replica{i}"
        replica_dir.mkdir()
        replicas.append(Server(replica_dir, (
            f'[replica]\nprimary = "{shard.grpc}"\nprimary_token = "{ADMIN}"\n'
            f'[cluster]\netcd = ["{cluster.etcd}"]\nprefix = "{cluster.PREFIX}"\nshard_id = "s{i}-replica"\n')))
    try:
        table = {**TABLE, "name": "replicated"}
        shards = featmux.ClusterClient(cluster.etcd, prefix=cluster.PREFIX, token=ADMIN)
        shards.admin().create_table(table, FEATURES)
        looked_up = shards.lookup("replicated", batch(1), ticket=True)
        shards.push("replicated", {f: np.full(looked_up[f].shape, 0.5, np.float32) for f in looked_up},
                    ticket=looked_up)
        want = shards.lookup("replicated", batch(1))
        before = [rows_looked_up(r) for r in replicas]
        deadline = time.monotonic() + 30
        while True:
            # A new client each time: the replicas list themselves once
            # their copy names their shard.
            replicated = featmux.ClusterClient(cluster.etcd, prefix=cluster.PREFIX, token=ADMIN,
                                               read_from="replicas")
            got = replicated.lookup("replicated", batch(1))
            if all(np.array_equal(got[f], want[f]) for f in want) and \
                    all(rows_looked_up(r) > b for r, b in zip(replicas, before)):
                break
            assert time.monotonic() < deadline, "the replicas did not serve the pushed rows"
            time.sleep(0.1)
    finally:
        for replica in replicas:
            replica.stop()
    with pytest.raises(ValueError, match="read_from"):
        featmux.ClusterClient(cluster.etcd, prefix=cluster.PREFIX, read_from="nearest")


def test_the_readme_cluster_snippet_runs_as_written(cluster):
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme.split("\n## Running a cluster\n")[1].split("\n## ")[0]
    snippets = [block.split("\n```")[0] for block in section.split("```python\n")[1:]]
    assert len(snippets) == 1
    # The cluster here has its own etcd, prefix and tokens.
    snippet = snippets[0].replace("127.0.0.1:23000,127.0.0.1:23001", cluster.etcd).replace(
        'prefix="/featmux/local")', f'prefix="{cluster.PREFIX}", token="{ADMIN}")'
    )
    namespace: dict = {}
    exec(snippet, namespace)
    pushed = namespace["cluster"].push("ads", {"user": np.ones((2, 16), np.float32)}, batch={"user": ["u1", "u2"]})
    assert pushed["unique_rows"] == 2
