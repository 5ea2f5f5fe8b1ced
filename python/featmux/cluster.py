"""A client of a featmux cluster: tables sharded by row range over many
``featmux serve`` shards whose state (table configs, partition maps,
members) lives in etcd. Routing is the Rust cluster client's: batches are
planned with the engine's own hashing, each shard gets its rows, partial
sums are added, stale maps are refreshed and retried, and a dead shard's
error names it and its partitions."""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence, Union

from featmux._native import NativeClusterClient
from featmux.client import Client, Embeddings, Gradients, _gradient_blocks


class ClusterClient:
    """Lookups and pushes of a cluster's tables (``etcd``: ``"host:port"``
    endpoints, comma-separated or a list; ``prefix``: the cluster's key
    prefix, the shards' ``cluster.prefix``). Safe to share between threads;
    works wherever a :class:`Client` does for lookups and pushes, e.g. in
    :class:`featmux.torch.EmbeddingCollection`.

    ``read_from="replicas"`` sends lookups without a ticket to the shards'
    read replicas listed in etcd (in turn; the shard itself where none is
    listed or the replica fails): serving traffic off the shards training
    pushes into, with answers as old as the replicas' lag. Pushes and
    ticket lookups always go to the shards."""

    def __init__(
        self,
        etcd: Union[str, Sequence[str]],
        prefix: str = "/featmux",
        token: Optional[str] = None,
        timeout: float = 30.0,
        connections: int = 4,
        read_from: str = "shards",
    ):
        endpoints = [e.strip() for e in etcd.split(",")] if isinstance(etcd, str) else list(etcd)
        self._native = NativeClusterClient(endpoints, prefix, token, timeout, connections, read_from)

    def lookup(self, table: str, batch: Mapping[str, Any], ticket: bool = False) -> Embeddings:
        """Embeddings of ``batch`` (the forms :meth:`Client.lookup` takes),
        the same as one server holding the whole table would return; with
        ``ticket``, the plan a :meth:`push` of its gradients reuses."""
        blocks, planned = self._native.lookup(table, batch, ticket)
        return Embeddings(blocks, planned)

    def push(
        self,
        table: str,
        grads: Gradients,
        batch: Optional[Mapping[str, Any]] = None,
        ticket: Optional[Embeddings] = None,
    ) -> dict:
        """Pushes gradients for ``batch`` or for the lookup ``ticket``
        returned. Each shard applies its rows atomically at its own version:
        ``{"shards": [{"shard", "version", "entries", "unique_rows"}, ...],
        "entries": total, "unique_rows": total}``."""
        if (batch is None) == (ticket is None):
            raise ValueError("push needs either a batch or a ticket")
        if batch is not None:
            shards = self._native.push(table, _gradient_blocks(grads, list(batch)), batch=batch)
        else:
            if ticket.ticket is None:
                raise ValueError("this lookup asked for no ticket (lookup(..., ticket=True))")
            shards = self._native.push(table, _gradient_blocks(grads, list(ticket)), ticket=ticket.ticket)
        return {
            "shards": shards,
            "entries": sum(s["entries"] for s in shards),
            "unique_rows": sum(s["unique_rows"] for s in shards),
        }

    def admin(self) -> Client:
        """A :class:`Client` of one live shard for admin calls (create or
        drop tables, add features): every shard applies them through etcd."""
        return Client._from_native(self._native.admin())
