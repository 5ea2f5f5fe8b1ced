"""The Python client against a real ``featmux serve``: admin round trips,
lookups as numpy arrays equal to the Rust client's, SGD pushes that move
rows by exactly -lr * g, and every error class with the server's message."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import featmux
from conftest import ADMIN, DATA, featmux_binary

LR = 0.5


@pytest.fixture(scope="module")
def admin(server):
    return featmux.Client(server.grpc, token=ADMIN)


@pytest.fixture(scope="module")
def data(server):
    return featmux.Client(server.grpc, token=DATA)


def sgd_table(name, rows=10_000, chunk_dim=4, **extra):
    return {"name": name, "rows": rows, "chunk_dim": chunk_dim, "seed": 7, "optimizer": {"kind": "sgd", "lr": LR}, **extra}


def test_admin_calls_round_trip(admin):
    info = admin.create_table(
        sgd_table("admin_t", max_abs_gradient=2.5),
        [{"name": "user"}, {"name": "age", "value_type": "int64", "chunks": 2, "pooling": "mean"}],
    )
    assert info["config"]["max_abs_gradient"] == 2.5
    assert info["config"]["optimizer"] == {"kind": "sgd", "lr": LR}
    assert [(f["name"], f["width"], f["pooling"]) for f in info["features"]] == [("user", 4, "sum"), ("age", 8, "mean")]
    info = admin.add_features("admin_t", [{"name": "city", "placement": {"kind": "partitioned", "rows": 100}}])
    city = info["features"][2]
    assert city["placement"]["kind"] == "partitioned" and city["placement"]["rows"] == 100
    assert admin.table("admin_t")["features"] == info["features"]
    assert "admin_t" in [t["config"]["name"] for t in admin.tables()]

    checkpoint = admin.create_checkpoint()
    assert checkpoint["id"] in [c["id"] for c in admin.checkpoints()]
    clone = admin.restore_checkpoint(checkpoint["id"], "admin_t", into="admin_t_copy")
    assert clone["config"]["name"] == "admin_t_copy"
    admin.delete_checkpoint(checkpoint["id"])
    assert checkpoint["id"] not in [c["id"] for c in admin.checkpoints()]
    for name in ["admin_t", "admin_t_copy"]:
        admin.drop_table(name)
    assert "admin_t" not in [t["config"]["name"] for t in admin.tables()]
    assert "admin_t" not in [t["config"]["name"] for t in admin.stats()["tables"]]


def rust_lookup(server, table, examples):
    """The same lookup through the Rust client (the featmux CLI)."""
    out = subprocess.run(
        [featmux_binary(), "--addr", server.grpc, "--token", ADMIN, "--json", "lookup", table]
        + [json.dumps(e) for e in examples],
        check=True,
        capture_output=True,
        text=True,
    )
    return {f: np.asarray(rows, dtype=np.float32) for f, rows in json.loads(out.stdout)["embeddings"].items()}


def test_lookups_are_numpy_arrays_equal_to_the_rust_clients(server, admin, data):
    admin.create_table(
        sgd_table("lookup_t"),
        [{"name": "user"}, {"name": "tags", "pooling": "mean"}, {"name": "age", "value_type": "int64", "chunks": 2}],
    )
    examples = [
        {"user": "u1", "tags": ["a", "b"], "age": 31},
        {"user": "u2", "tags": [], "age": 45},
        {"user": "u1", "tags": ["c"], "age": 31},
    ]
    batch = {
        "user": [e["user"] for e in examples],
        "tags": [e["tags"] for e in examples],
        "age": np.array([e["age"] for e in examples], dtype=np.int64),
    }
    got = data.lookup("lookup_t", batch)
    assert list(got) == ["user", "tags", "age"]
    assert got.ticket is None
    for feature, width in [("user", 4), ("tags", 4), ("age", 8)]:
        assert got[feature].dtype == np.float32 and got[feature].shape == (3, width)
    np.testing.assert_array_equal(got["user"][0], got["user"][2])
    np.testing.assert_array_equal(got["tags"][1], np.zeros(4, np.float32))
    rust = rust_lookup(server, "lookup_t", examples)
    for feature in got:
        np.testing.assert_array_equal(got[feature], rust[feature])
    # The column (KeyedJaggedTensor-shaped) form gives the same answer.
    columns = data.lookup("lookup_t", {"tags": {"values": ["a", "b", "c"], "lengths": [2, 0, 1]}})
    np.testing.assert_array_equal(columns["tags"], got["tags"])


def test_sixteen_bit_lookups_are_the_float32_ones_rounded(server, admin, data):
    admin.create_table(sgd_table("half_t", rows=1_000_000, chunk_dim=16), [{"name": "user"}])
    batch = {"user": [f"u{i}" for i in range(64)]}
    exact = data.lookup("half_t", batch)["user"]
    f16 = featmux.Client(server.grpc, token=DATA, lookup_precision="f16")
    got = f16.lookup("half_t", batch)["user"]
    assert got.dtype == np.float32 and got.shape == exact.shape
    np.testing.assert_array_equal(got, exact.astype(np.float16).astype(np.float32))
    # bf16: the top 16 bits of each float32, rounded to nearest (ties to even).
    bits = exact.view(np.uint32).astype(np.uint64)
    rounded = (((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16).astype(np.uint32).view(np.float32)
    bf16 = featmux.Client(server.grpc, token=DATA, lookup_precision="bf16")
    got = bf16.lookup("half_t", batch)["user"]
    np.testing.assert_array_equal(got, rounded)
    assert not np.array_equal(got, exact)
    stream = bf16.train()
    stream.send_lookup("half_t", batch, ticket=False)
    np.testing.assert_array_equal(stream.recv()[1]["user"], rounded)
    with pytest.raises(ValueError, match="unknown precision `fp8`"):
        featmux.Client(server.grpc, token=DATA, lookup_precision="fp8")
    # 16-bit gradients: each rounded, then applied in float32 (SGD: -lr * g).
    pusher = featmux.Client(server.grpc, token=DATA, push_precision="f16")
    grad = np.full((64, 16), 1 / 3, np.float32)
    pusher.push("half_t", {"user": grad}, batch=batch)
    after = data.lookup("half_t", batch)["user"]
    np.testing.assert_array_equal(after, exact - np.float32(LR) * grad.astype(np.float16).astype(np.float32))


def test_every_batch_form_reads_the_same_values(admin, data):
    admin.create_table(
        sgd_table("forms_t"),
        [{"name": "user"}, {"name": "tags"}, {"name": "item", "value_type": "int64"}, {"name": "seen", "value_type": "int64"}],
    )
    # Reference: one list of examples per feature (str, int, bags, None).
    ref = data.lookup(
        "forms_t",
        {"user": ["u1", "u2", "u3"], "tags": [["a", "b"], None, ("c",)], "item": [5, 6, 7], "seen": [[1, 2], [3, 4], [5, 6]]},
    )
    np.testing.assert_array_equal(ref["tags"][1], np.zeros(4, np.float32))
    forms = [
        # numpy arrays: strings, 1-D int32 (cast to int64), 2-D ints (fixed bags).
        {
            "user": np.array(["u1", "u2", "u3"]),
            "tags": [np.array(["a", "b"]), [], ["c"]],
            "item": np.array([5, 6, 7], dtype=np.int32),
            "seen": np.array([[1, 2], [3, 4], [5, 6]], dtype=np.uint16),
        },
        # KeyedJaggedTensor-shaped columns, lists or arrays, any int dtype.
        {
            "user": {"values": ("u1", "u2", "u3"), "lengths": [1, 1, 1]},
            "tags": {"values": ["a", "b", "c"], "lengths": np.array([2, 0, 1], dtype=np.int64), "weights": None},
            "item": {"values": [5, 6, 7], "lengths": [1, 1, 1]},
            "seen": {"values": np.arange(1, 7, dtype=np.int32), "lengths": [2, 2, 2]},
        },
        # Any iterable of examples, and any mapping as the batch.
        {"user": iter(["u1", "u2", "u3"]), "tags": (x for x in [["a", "b"], [], ["c"]]), "item": (5, 6, 7), "seen": [(1, 2), (3, 4), (5, 6)]},
    ]
    for batch in forms:
        got = data.lookup("forms_t", batch)
        for feature in ref:
            np.testing.assert_array_equal(got[feature], ref[feature], err_msg=feature)
    # A feature with no value in the whole batch has no type to send: the
    # server takes its empty bags for an int64 feature as for a str one.
    empty = data.lookup("forms_t", {"tags": [None, [], None], "item": [[], [], []]})
    assert not empty["tags"].any() and not empty["item"].any()


def test_malformed_batches_raise_naming_the_feature_and_example(data):
    cases = [
        ({"user": ["u", 3]}, TypeError, "feature `user`: values must be all str or all int"),
        ({"user": ["u", 2.5]}, TypeError, "feature `user`, example 1: values are str or int, not float"),
        ({"tags": [["a"], ["b", True]]}, TypeError, "feature `tags`, example 1: values are str or int, not bool"),
        ({"item": [2**70]}, ValueError, "feature `item`, example 0"),
        ({"item": np.array([1.5, 2.5])}, TypeError, "feature `item`: values of dtype float64"),
        ({"item": np.zeros((1, 1, 1), dtype=np.int64)}, ValueError, "1-D or 2-D, not 3-D"),
        ({"tags": {"values": ["a"], "lengths": [1], "wieghts": [1.0]}}, TypeError, "unknown column key `wieghts`"),
        ({"tags": {"values": ["a"]}}, TypeError, "feature `tags`: a column needs `values` and `lengths`"),
        ({"tags": {"values": ["a", 2], "lengths": [2]}}, TypeError, "feature `tags`: values must be all str or all int"),
        ({"tags": {"values": [["a"]], "lengths": [1]}}, TypeError, "feature `tags`, value 0: values are str or int, not list"),
        # Equal lengths that do not add up to the values: the server names
        # the mismatch (the client does not send them as one count).
        ({"tags": {"values": ["a", "b", "c", "d"], "lengths": [1, 1, 1]}}, featmux.InvalidArgument, "lengths sum to 3 but 4 values were sent"),
        ({"user": 3}, TypeError, "feature `user`: expected a list of examples or a column dict"),
        (["user"], TypeError, "a batch is a dict of features, not list"),
    ]
    for batch, error, message in cases:
        with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
            data.lookup("forms_t", batch)


def test_an_sgd_push_moves_rows_by_exactly_minus_lr_times_g(admin, data):
    admin.create_table(
        sgd_table("push_t", rows=1_000_000),
        [{"name": "item", "value_type": "int64"}, {"name": "genres", "pooling": "mean"}],
    )
    batch = {"item": np.array([11, 12], dtype=np.int64), "genres": [["x", "y"], ["z"]]}
    before = data.lookup("push_t", batch, ticket=True)
    rng = np.random.default_rng(3)
    grads = {f: rng.standard_normal(before[f].shape).astype(np.float32) for f in before}
    pushed = data.push("push_t", grads, ticket=before)
    assert pushed["unique_rows"] == 5
    after = data.lookup("push_t", batch)
    # One row per item; a mean bag of n distinct rows: each row gets g / n,
    # so the mean moves by -lr * g / n.
    np.testing.assert_allclose(after["item"], before["item"] - LR * grads["item"], rtol=0, atol=1e-6)
    bag = np.array([[2.0], [1.0]], dtype=np.float32)
    np.testing.assert_allclose(after["genres"], before["genres"] - LR * grads["genres"] / bag, rtol=0, atol=1e-6)
    # A push of the batch itself (no ticket), gradients as a list.
    data.push("push_t", [grads["item"], grads["genres"]], batch=batch)
    again = data.lookup("push_t", batch)
    np.testing.assert_allclose(again["item"], after["item"] - LR * grads["item"], rtol=0, atol=1e-6)


def test_every_refusal_raises_its_class_with_the_servers_message(server, admin, data):
    admin.create_table(sgd_table("err_t"), [{"name": "user"}])
    with pytest.raises(featmux.NotFound, match="unknown table `nope`"):
        data.lookup("nope", {"user": ["u"]})
    with pytest.raises(featmux.AlreadyExists, match="err_t"):
        admin.create_table(sgd_table("err_t"), [])
    with pytest.raises(featmux.InvalidArgument, match="user"):
        data.push("err_t", {"user": np.zeros(3, np.float32)}, batch={"user": ["u"]})
    with pytest.raises(featmux.ResourceExhausted, match="bytes"):
        admin.create_table(sgd_table("huge_t", rows=1 << 40), [])
    with pytest.raises(featmux.Unauthenticated):
        featmux.Client(server.grpc, token="wrong").tables()
    with pytest.raises(featmux.Unauthenticated):
        data.create_table(sgd_table("by_data_token"), [])
    with pytest.raises(featmux.Unavailable):
        featmux.Client("http://127.0.0.1:1", retries=0, timeout=1.0)
    assert issubclass(featmux.NotFound, featmux.FeatmuxError)
    with pytest.raises(TypeError, match="all str or all int"):
        data.lookup("err_t", {"user": ["u", 3]})


def test_the_readme_snippets_run_as_written(server, monkeypatch):
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme.split("\n## Python\n")[1].split("\n## ")[0]
    snippets = [block.split("\n```")[0] for block in section.split("```python\n")[1:]]
    assert len(snippets) == 2
    monkeypatch.setenv("FEATMUX_TOKEN", ADMIN)
    admin = featmux.Client(server.grpc, token=ADMIN)
    version = admin.stats()["version"]
    namespace: dict = {}
    for snippet in snippets:
        exec(snippet.replace("http://127.0.0.1:50051", server.grpc), namespace)
    info = admin.table("movies")
    assert [f["name"] for f in info["features"]] == ["user", "genres"]
    # The client snippet's push and the torch snippet's backward each pushed.
    assert admin.stats()["version"] == version + 2


def test_the_serving_example_gets_one_vector_over_http_and_grpc(server, admin):
    admin.create_table(sgd_table("serving_t"), [{"name": "user"}, {"name": "genres", "pooling": "mean"}])
    example = Path(__file__).parents[1] / "examples" / "serving_lookup.py"
    out = subprocess.run(
        [sys.executable, str(example), "--grpc", server.grpc, "--http", server.http, "--token", DATA,
         "--table", "serving_t", "--example", json.dumps({"user": "u1", "genres": ["comedy", "drama"]})],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert report["features"] == ["user", "genres"]
    assert len(report["http"]) == 8 and report["http"] == report["grpc"]


def test_a_train_stream_pipelines_lookups_and_pushes(admin, data):
    admin.create_table(sgd_table("stream_t", rows=1_000_000), [{"name": "item", "value_type": "int64"}])
    stream = data.train()
    batches = [{"item": np.array([1, 2])}, {"item": np.array([3, 4])}]
    ids = [stream.send_lookup("stream_t", b) for b in batches]
    looked_up = [stream.recv() for _ in batches]
    assert [i for i, _ in looked_up] == ids
    grads = [{"item": np.full((2, 4), 0.5, np.float32)}, {"item": np.full((2, 4), -1.0, np.float32)}]
    push_ids = [stream.send_push("stream_t", g, emb) for g, (_, emb) in zip(grads, looked_up)]
    pushed = [stream.recv() for _ in push_ids]
    assert [i for i, _ in pushed] == push_ids
    assert all(p["unique_rows"] == 2 for _, p in pushed)
    # A refused request raises from recv, naming its id; the stream goes on.
    bad = stream.send_lookup("nope", batches[0])
    with pytest.raises(featmux.NotFound) as refused:
        stream.recv()
    assert refused.value.request_id == bad
    after = data.lookup("stream_t", {"item": np.array([1, 2, 3, 4])})
    before = np.concatenate([emb["item"] for _, emb in looked_up])
    step = np.concatenate([g["item"] for g in grads])
    np.testing.assert_allclose(after["item"], before - LR * step, rtol=0, atol=1e-6)
    again = stream.send_lookup("stream_t", batches[0], ticket=False)
    assert stream.recv()[0] == again


def test_a_train_streams_region_carries_embeddings_and_gradients(server, admin, data):
    admin.create_table(sgd_table("region_t"), [{"name": "user"}, {"name": "item", "chunks": 2}])
    batch = {"user": ["u1", "u2", "u1"], "item": ["a", "b", "c"]}
    expected = data.lookup("region_t", batch)
    stream = featmux.Client(server.unix, token=DATA).train()
    stream.open_region(4096)

    got = stream.lookup_into_region("region_t", batch, offset=64)
    assert list(got) == ["user", "item"]
    for feature in got:
        np.testing.assert_array_equal(got[feature], expected[feature])
    # Views of the region, not copies.
    assert not got["user"].flags.owndata

    # `user` gradients copied in after the embeddings; `item` computed in
    # place in the region.
    grads = {
        "user": np.ones((3, 4), dtype=np.float32),
        "item": np.frombuffer(stream._region, np.float32, 3 * 8, 2048).reshape(3, 8),
    }
    grads["item"][:] = 2.0
    answer = stream.push_from_region("region_t", grads, ticket=got)
    assert answer["unique_rows"] == 2 + 3 * 2
    # The same gradients again, for the batch itself (no ticket): the
    # batch goes through the region too, past the `item` gradients, which
    # now lie just past where `user`'s are copied to.
    grads["item"] = np.frombuffer(stream._region, np.float32, 3 * 8, 64).reshape(3, 8)
    grads["item"][:] = 2.0
    answer = stream.push_from_region("region_t", grads, batch=batch)
    assert answer["unique_rows"] == 2 + 3 * 2
    with pytest.raises(ValueError, match="not both"):
        stream.push_from_region("region_t", grads, ticket=got, batch=batch)
    after = data.lookup("region_t", batch)
    # Per push, u1 got two gradients of 1, u2 one; each item row one
    # gradient of 2.
    np.testing.assert_allclose(after["user"], expected["user"] - 2 * LR * np.array([[2.0], [1.0], [2.0]]), atol=1e-6)
    np.testing.assert_allclose(after["item"], expected["item"] - 2 * LR * 2.0, atol=1e-6)

    with pytest.raises(featmux.InvalidArgument, match="of a region of 4096 bytes"):
        stream.lookup_into_region("region_t", batch, offset=4000)
    with pytest.raises(featmux.FailedPrecondition, match="Unix socket"):
        data.train().open_region(4096)


def test_a_trainer_on_the_servers_machine_can_use_its_unix_socket(server, admin, data):
    admin.create_table(sgd_table("unix_t"), [{"name": "user"}])
    local = featmux.Client(server.unix, token=DATA)
    batch = {"user": ["u1", "u2", "u1"]}
    before = local.lookup("unix_t", batch, ticket=True)
    np.testing.assert_array_equal(before["user"], data.lookup("unix_t", batch)["user"])
    grads = {"user": np.ones((3, 4), dtype=np.float32)}
    local.push("unix_t", grads, ticket=before)
    # u1 got two gradients of 1, u2 one; the TCP client sees the update.
    after = data.lookup("unix_t", batch)["user"]
    np.testing.assert_allclose(after, before["user"] - LR * np.array([[2.0], [1.0], [2.0]]), rtol=0, atol=1e-6)
    with pytest.raises(featmux.Unauthenticated):
        featmux.Client(server.unix).lookup("unix_t", batch)
