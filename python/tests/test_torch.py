"""The PyTorch bridge against a real server: backward pushes the gradients
of exactly the looked-up batch, so with SGD every pooled output moves by the
step the pooling formula predicts (sum, mean, sqrtn, weights, several
chunks), for dicts, KJT-shaped columns and a KeyedJaggedTensor-like object."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import featmux
from conftest import ADMIN, DATA
from featmux.torch import EmbeddingCollection

LR = 0.25


@pytest.fixture(scope="module")
def admin(server):
    return featmux.Client(server.grpc, token=ADMIN)


@pytest.fixture(scope="module")
def client(server, admin):
    admin.create_table(
        {"name": "torch_t", "rows": 4_000_000, "chunk_dim": 4, "seed": 3, "optimizer": {"kind": "sgd", "lr": LR}},
        [
            {"name": "user"},
            {"name": "genres", "pooling": "mean"},
            {"name": "tags", "pooling": "sqrtn"},
            {"name": "clicks", "value_type": "int64"},
            {"name": "age", "value_type": "int64", "chunks": 3},
        ],
    )
    return featmux.Client(server.grpc, token=DATA)


def batch(offset):
    """Distinct values everywhere (rows collide with negligible odds)."""
    o = offset
    return {
        "user": [f"u{o}", f"u{o + 1}"],
        "genres": [[f"g{o}", f"g{o + 1}", f"g{o + 2}"], [f"g{o + 3}"]],
        "tags": [[f"t{o}", f"t{o + 1}", f"t{o + 2}", f"t{o + 3}"], [f"t{o + 4}"]],
        "clicks": {"values": np.array([o, o + 1, o + 2]), "lengths": [2, 1], "weights": [0.5, 2.0, 3.0]},
        "age": np.array([o, o + 1]),
    }


def expected_step(grads):
    """The change of each pooled output after one SGD push of `grads`."""
    # sum: -lr g. mean over n: each row gets g/n, the mean moves by -lr g/n.
    # sqrtn: each row gets g/sqrt(n), the output moves by -lr g.
    # weighted sum: row r gets a_r g, the output moves by -lr g sum(a_r^2).
    # chunks: each chunk's row gets its slice of g: -lr g.
    genres_n = torch.tensor([[3.0], [1.0]])
    weights_sq = torch.tensor([[0.5**2 + 2.0**2], [3.0**2]])
    return {
        "user": -LR * grads["user"],
        "genres": -LR * grads["genres"] / genres_n,
        "tags": -LR * grads["tags"],
        "clicks": -LR * grads["clicks"] * weights_sq,
        "age": -LR * grads["age"],
    }


def train_step(module, b, seed):
    out = module(b)
    g = torch.Generator().manual_seed(seed)
    grads = {f: torch.randn(t.shape, generator=g) for f, t in out.items()}
    loss = sum((out[f] * grads[f]).sum() for f in out)
    loss.backward()
    return {f: t.detach().clone() for f, t in out.items()}, grads


@pytest.fixture(scope="module")
def local(server, client):
    """A client of the server's Unix socket (after `client` made the table)."""
    return featmux.Client(server.unix, token=DATA)


def collection(client, local, shared_region, **options):
    """The module over TCP, or with regions over the Unix socket."""
    if shared_region is None:
        return EmbeddingCollection(client, "torch_t", **options)
    return EmbeddingCollection(local, "torch_t", shared_region=shared_region, **options)


@pytest.mark.parametrize("shared_region", [None, 4096])
def test_backward_pushes_exactly_the_gradients_of_the_outputs(client, local, shared_region):
    module = collection(client, local, shared_region)
    b = batch(0)
    before, grads = train_step(module, b, seed=1)
    assert module.last_push["unique_rows"] == 2 + 4 + 5 + 3 + 6
    with torch.no_grad():
        after = module(b)
    assert not any(t.requires_grad for t in after.values())
    for f, step in expected_step(grads).items():
        torch.testing.assert_close(after[f] - before[f], step, rtol=0, atol=1e-5, msg=f)


@pytest.mark.parametrize("shared_region", [None, 4096])
def test_a_dense_model_trains_beside_featmux_and_async_pushes_arrive(admin, client, local, shared_region):
    module = collection(client, local, shared_region, concat=True, async_push=True)
    dense = torch.nn.Linear(4 + 4 + 4 + 4 + 12, 1)
    optimizer = torch.optim.SGD(dense.parameters(), lr=0.1)
    b = batch(100)
    version = admin.stats()["version"]
    with torch.no_grad():
        first = module(b).clone()
    for _ in range(3):
        optimizer.zero_grad()
        loss = dense(module(b)).square().mean()
        loss.backward()
        optimizer.step()
    module.wait()
    assert admin.stats()["version"] == version + 3
    with torch.no_grad():
        last = module(b)
    assert last.shape == (2, 28)
    assert not torch.equal(last, first)
    # featmux rows are not parameters: the dense optimizer never sees them.
    assert list(module.parameters()) == []


class FakeKJT:
    """The KeyedJaggedTensor interface featmux.torch reads."""

    def __init__(self, keys, values, lengths, weights=None):
        self._keys, self._values, self._lengths, self._weights = keys, values, lengths, weights

    def keys(self):
        return self._keys

    def values(self):
        return self._values

    def lengths(self):
        return self._lengths

    def weights_or_none(self):
        return self._weights


def test_a_keyed_jagged_tensor_looks_up_like_the_dict_it_holds(client):
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    module = EmbeddingCollection(client, "torch_t").eval()
    values, lengths = torch.tensor([7, 8, 9, 10, 11]), torch.tensor([2, 1, 1, 1])
    weights = torch.tensor([0.5, 2.0, 3.0, 1.0, 1.0])
    want = module({"clicks": {"values": [7, 8, 9], "lengths": [2, 1], "weights": [0.5, 2.0, 3.0]}, "age": [10, 11]})
    real = KeyedJaggedTensor.from_lengths_sync(keys=["clicks", "age"], values=values, lengths=lengths, weights=weights)
    for kjt in [real, FakeKJT(["clicks", "age"], values, lengths, weights)]:
        got = module(kjt)
        assert list(got) == ["clicks", "age"]
        for f in want:
            torch.testing.assert_close(got[f], want[f], rtol=0, atol=0)


def test_the_movielens_example_learns_from_an_exported_split(server, admin, tmp_path):
    # A CSV whose label is the user's (half the users always like, half
    # never): the example must learn it from `featmux dataset --export`.
    import json
    import subprocess
    import sys
    from pathlib import Path

    from conftest import featmux_binary

    rng = np.random.default_rng(5)
    rows = ["user_id,item_id,genres,rating"]
    for _ in range(600):
        user, item = rng.integers(0, 20), rng.integers(0, 30)
        rows.append(f"u{user},i{item},g{item % 3}|g{item % 4},{5 if user < 10 else 1}")
    csv = tmp_path / "ratings.csv"
    csv.write_text("\n".join(rows) + "\n")
    split = tmp_path / "split"
    subprocess.run(
        [featmux_binary(), "dataset", "--data", str(csv), "--label", "rating", "--positive", ">=4",
         "--categorical", "user_id,item_id", "--multi", "genres:|", "--export", str(split)],
        check=True, capture_output=True,
    )
    example = Path(__file__).parents[1] / "examples" / "train_movielens.py"
    for model, layout in [("mlp", "unified"), ("dcn", "capped")]:
        version = admin.stats()["version"]
        out = subprocess.run(
            [sys.executable, str(example), "--split", str(split), "--addr", server.grpc, "--token", ADMIN,
             "--table", f"ml_{model}", "--model", model, "--layout", layout, "--rows", "40",
             "--chunk-dim", "4", "--epochs", "3", "--batch", "32", "--sparse-lr", "0.2", "--dense-lr", "0.01"],
            check=True, capture_output=True, text=True,
        )
        report = json.loads(out.stdout)
        assert report["features"] == {"genres": 4, "item_id": 30, "user_id": 20}
        assert report["test"]["examples"] == 60
        assert report["test"]["auc"] > 0.95, report
        # Every step pushed: 3 epochs of 480 training rows in batches of 32.
        assert admin.stats()["version"] - version == 3 * 15
