"""featmux for Python: one shared embedding table for many features.

A :class:`Client` talks gRPC to a ``featmux serve`` through the Rust client
(retries, deadlines, TLS, tokens), releasing the GIL while it waits::

    import featmux
    client = featmux.Client("http://127.0.0.1:50051", token="...")
    client.create_table({"name": "ads", "rows": 100_000, "chunk_dim": 16},
                        [{"name": "user"}, {"name": "genres", "pooling": "mean"}])
    emb = client.lookup("ads", {"user": ["u1", "u2"], "genres": [["a", "b"], []]},
                        ticket=True)
    client.push("ads", {name: grad_of(name) for name in emb}, ticket=emb)

A :class:`ClusterClient` does the same for tables sharded over a cluster
(``ClusterClient("etcd-host:2379", prefix="/featmux")``).

Lookups return ``float32`` arrays ``[examples, width]`` per feature; every
failure raises a subclass of :class:`FeatmuxError` named after its gRPC
status, carrying the server's message.
"""

from featmux._native import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    FeatmuxError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from featmux.client import Client, Embeddings, TrainStream
from featmux.cluster import ClusterClient

__all__ = [
    "AlreadyExists",
    "Client",
    "ClusterClient",
    "DeadlineExceeded",
    "Embeddings",
    "FailedPrecondition",
    "FeatmuxError",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "TrainStream",
    "Unauthenticated",
    "Unavailable",
]
