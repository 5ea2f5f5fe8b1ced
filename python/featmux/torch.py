"""PyTorch bridge: a featmux table's features as an ``nn.Module``.

:class:`EmbeddingCollection` looks a batch up in featmux (with a ticket
while training) and returns tensors that require grad; ``loss.backward()``
pushes their gradients with that ticket, and the table's sparse optimizer
runs in the server. The dense model keeps its own torch optimizer: featmux
embeddings are not parameters of the module.

Why an ``autograd.Function`` rather than PERSIA's leaf-tensors-then-push:
the push happens inside ``backward()``, so a training loop written for
``nn.EmbeddingBag`` needs no extra call, and gradients flowing through any
dense graph (several losses, ``retain_graph``) arrive summed by autograd.
With ``async_push=True`` the push runs on a background thread (at most
``max_pending`` in flight) so the next batch's lookup overlaps it;
:meth:`EmbeddingCollection.wait` drains them (and re-raises a failure).

On the server's machine (a client of its Unix socket, ``unix:///path``),
``shared_region=BYTES`` has lookups and pushes move their embeddings and
gradients through shared memory instead of the socket: two Train streams
(one for lookups, one for pushes), each with a region of that size, which
must hold a batch's embeddings (4 bytes × examples × summed widths). The
embeddings are copied out of the region into the output tensors: autograd
keeps a layer's input for backward, and the next lookup reuses the region.

A trainer sharing its machine's cores with the server runs faster with
``OMP_WAIT_POLICY=PASSIVE`` set before torch is imported: torch's OpenMP
threads otherwise spin between operations on the cores the server's
lookups and pushes need (``scripts/bench-python.sh`` measures both).

``torch`` is an optional dependency of the package; import this module only
where it is installed.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Mapping, Optional, Union

import numpy as np
import torch

from featmux.client import Client, Embeddings


def kjt_to_batch(kjt: Any) -> dict:
    """A ``torchrec`` KeyedJaggedTensor (or anything with ``keys()``,
    ``values()``, ``lengths()`` and ``weights_or_none()``) as column
    batches: per key, its slice of the concatenated values and lengths."""
    keys = list(kjt.keys())
    values = kjt.values().detach().cpu().numpy()
    lengths = kjt.lengths().detach().cpu().numpy().astype(np.uint32)
    weights = kjt.weights_or_none()
    weights = None if weights is None else weights.detach().cpu().numpy().astype(np.float32)
    if len(keys) == 0:
        return {}
    if lengths.size % len(keys):
        raise ValueError(f"{lengths.size} lengths for {len(keys)} keys")
    per_key = lengths.size // len(keys)
    batch, start = {}, 0
    for i, key in enumerate(keys):
        key_lengths = lengths[i * per_key : (i + 1) * per_key]
        end = start + int(key_lengths.sum())
        column = {"values": values[start:end], "lengths": key_lengths}
        if weights is not None:
            column["weights"] = weights[start:end]
        batch[key] = column
        start = end
    return batch


def _as_batch(batch: Any) -> Mapping[str, Any]:
    if isinstance(batch, Mapping):
        return {
            f: {k: (v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v) for k, v in d.items()}
            if isinstance(d, Mapping)
            else (d.detach().cpu().numpy() if isinstance(d, torch.Tensor) else d)
            for f, d in batch.items()
        }
    if all(hasattr(batch, a) for a in ("keys", "values", "lengths", "weights_or_none")):
        return kjt_to_batch(batch)
    raise TypeError(f"a batch is a dict of features or a KeyedJaggedTensor, not {type(batch).__name__}")


class _Lookup(torch.autograd.Function):
    """Outputs: the looked-up blocks. Backward: push their gradients."""

    @staticmethod
    def forward(ctx, anchor, module, looked_up, *blocks):
        ctx.module = module
        ctx.looked_up = looked_up
        return tuple(torch.from_numpy(b) for b in blocks)

    @staticmethod
    def backward(ctx, *grads):
        blocks = {
            f: (g if g is not None else torch.zeros(ctx.looked_up[f].shape)).detach().cpu().numpy()
            for f, g in zip(ctx.looked_up, grads)
        }
        ctx.module._push(blocks, ctx.looked_up)
        return (None, None, None) + (None,) * len(grads)


class EmbeddingCollection(torch.nn.Module):
    """The features of featmux table ``table`` as a module.

    ``forward(batch)`` takes a dict of per-example values, a dict of
    KeyedJaggedTensor-shaped columns, or a KeyedJaggedTensor, and returns
    ``{feature: tensor [examples, width]}`` in the batch's order, or with
    ``concat=True`` one ``[examples, sum of widths]`` tensor (TorchRec's
    ``KeyedTensor.values()``). In training mode with grad enabled the
    tensors require grad and backward pushes their gradients; in eval mode
    or under ``torch.no_grad()`` it only looks up."""

    def __init__(
        self,
        client: Client,
        table: str,
        concat: bool = False,
        async_push: bool = False,
        max_pending: int = 2,
        shared_region: Optional[int] = None,
    ):
        super().__init__()
        self.client = client
        self.table = table
        self.concat = concat
        self._regions: Optional[tuple[_RegionStream, _RegionStream]] = None
        if shared_region is not None:
            self._regions = (_RegionStream(client, shared_region), _RegionStream(client, shared_region))
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="featmux-push") if async_push else None
        self._slots = threading.BoundedSemaphore(max_pending)
        self._pending: list[Future] = []
        self.last_push: Optional[dict] = None

    def forward(self, batch: Any) -> Union[dict, torch.Tensor]:
        batch = _as_batch(batch)
        train = self.training and torch.is_grad_enabled()
        if self._regions is None:
            looked_up = self.client.lookup(self.table, batch, ticket=train)
        else:
            looked_up = self._regions[0].lookup(self.table, batch, train)
        if train:
            anchor = torch.empty(0, requires_grad=True)
            tensors = _Lookup.apply(anchor, self, looked_up, *looked_up.values())
        else:
            tensors = tuple(torch.from_numpy(b) for b in looked_up.values())
        if self.concat:
            return torch.cat(tensors, dim=1)
        return dict(zip(looked_up, tensors))

    def _push(self, grads: Mapping[str, np.ndarray], looked_up: Embeddings) -> None:
        push = self.client.push if self._regions is None else self._regions[1].push
        if self._pool is None:
            self.last_push = push(self.table, grads, ticket=looked_up)
            return
        self._collect_done()
        self._slots.acquire()
        future = self._pool.submit(push, self.table, grads, ticket=looked_up)
        future.add_done_callback(lambda _: self._slots.release())
        self._pending.append(future)

    def _collect_done(self) -> None:
        """Takes the answers of finished pushes; raises the first that failed."""
        running = []
        for future in self._pending:
            if future.done():
                self.last_push = future.result()
            else:
                running.append(future)
        self._pending = running

    def wait(self) -> None:
        """Waits for every asynchronous push; raises the first that failed."""
        pending, self._pending = self._pending, []
        for future in pending:
            self.last_push = future.result()

    def extra_repr(self) -> str:
        return (
            f"table={self.table!r}, concat={self.concat}, async_push={self._pool is not None}, "
            f"shared_region={self._regions is not None}"
        )


class _RegionStream:
    """A Train stream with a shared-memory region, used by one thread at a
    time (what is in the region is read before the lock is released)."""

    def __init__(self, client: Client, nbytes: int):
        self._stream = client.train()
        self._stream.open_region(nbytes)
        self._lock = threading.Lock()

    def lookup(self, table: str, batch: Mapping[str, Any], ticket: bool) -> Embeddings:
        with self._lock:
            in_region = self._stream.lookup_into_region(table, batch, ticket=ticket)
            return Embeddings([(f, a.copy()) for f, a in in_region.items()], in_region.ticket)

    def push(self, table: str, grads: Mapping[str, np.ndarray], ticket: Embeddings) -> dict:
        with self._lock:
            return self._stream.push_from_region(table, grads, ticket=ticket, offset=0)

