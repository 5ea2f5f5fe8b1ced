"""The Python client: dict batches in, numpy embeddings out, admin calls
with dicts shaped like the HTTP API's JSON."""

from __future__ import annotations

import mmap
import os
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from featmux._native import NativeClient


class Embeddings(dict):
    """A lookup's result: ``{feature: float32 array [examples, width]}`` in
    the batch's order, and the ticket (when asked for) that a push of the
    gradients of exactly this batch can name instead of sending it again."""

    ticket: Optional[int]

    def __init__(self, blocks, ticket: Optional[int]):
        super().__init__(blocks)
        self.ticket = ticket


Gradients = Union[Mapping[str, Any], Sequence[Any]]


def _gradient_blocks(grads: Gradients, order: Sequence[str]) -> list:
    """Float32 blocks in the batch's feature order."""
    if isinstance(grads, Mapping):
        missing = [f for f in order if f not in grads]
        extra = [f for f in grads if f not in order]
        if missing or extra:
            raise ValueError(f"gradients must name exactly the batch's features: missing {missing}, unknown {extra}")
        grads = [grads[f] for f in order]
    return [np.ascontiguousarray(g, dtype=np.float32).ravel() for g in grads]


class TrainStream:
    """Lookups and pushes pipelined on one HTTP/2 stream (``Client.train()``):
    send several, then :meth:`recv` their answers, which come in request
    order. A request the server refuses raises from :meth:`recv` (the
    exception's ``request_id`` names it) and the stream stays open."""

    def __init__(self, native):
        self._native = native
        self._region: Optional[mmap.mmap] = None

    def send_lookup(self, table: str, batch: Mapping[str, Any], ticket: bool = True) -> int:
        """Sends a lookup (with a ticket by default); returns its id."""
        return self._native.send_lookup(table, batch, ticket)

    def send_push(self, table: str, grads: Gradients, ticket: Embeddings) -> int:
        """Sends the gradients of a lookup answered on this stream; returns
        its id."""
        if ticket.ticket is None:
            raise ValueError("this lookup asked for no ticket")
        return self._native.send_push(table, ticket.ticket, _gradient_blocks(grads, list(ticket)))

    def recv(self) -> tuple:
        """The next answer: ``(id, Embeddings)`` for a lookup, ``(id, {"version",
        "entries", "unique_rows"})`` for a push."""
        id, kind, payload, ticket = self._native.recv()
        if kind == "error":
            payload.request_id = id
            raise payload
        if kind == "lookup":
            return id, Embeddings(payload, ticket)
        return id, payload

    # Shared memory, for a trainer on the server's machine.

    def open_region(self, nbytes: int) -> None:
        """Gives this stream a shared-memory region of ``nbytes`` bytes (a
        stream of a client on the server's Unix socket, ``unix:///path``):
        :meth:`lookup_into_region` and :meth:`push_from_region` then move
        embeddings and gradients through memory this process and the
        server share, not through the socket. Twice a lookup's answer
        (4 bytes × examples × the batch's summed widths) holds it and its
        gradients. One region per stream; it lasts as long as the stream."""
        fd, size = self._native.open_region(nbytes)
        try:
            self._region = mmap.mmap(fd, size)
        finally:
            os.close(fd)

    def lookup_into_region(
        self, table: str, batch: Mapping[str, Any], ticket: bool = True, offset: int = 0
    ) -> Embeddings:
        """A lookup whose embeddings the server writes into the region, back
        to back from byte ``offset`` (a multiple of 4). The arrays are views
        of the region, not copies (``torch.from_numpy`` keeps it that way):
        a later lookup over the same bytes changes them. The batch travels
        through the region too, encoded from ``offset`` where it fits, so a
        lookup changes bytes from ``offset`` on: its blocks', and its
        batch's, which may reach further (bags of many values)."""
        region = self._mapped()
        blocks, ticket_id = self._native.lookup_into_region(table, batch, ticket, offset)
        arrays = [
            (feature, np.frombuffer(region, np.float32, rows * width, at).reshape(rows, width))
            for feature, rows, width, at in blocks
        ]
        return Embeddings(arrays, ticket_id)

    def push_from_region(
        self,
        table: str,
        grads: Gradients,
        ticket: Optional[Embeddings] = None,
        offset: Optional[int] = None,
        batch: Optional[Mapping[str, Any]] = None,
    ) -> dict:
        """Pushes gradients through the region: those of a
        :meth:`lookup_into_region` answer (``ticket``), or of ``batch``
        (looked up elsewhere; the batch goes through the region too, past
        every gradient). A gradient that already is a contiguous view of
        the region (computed in place) is used where it lies; any other is
        copied into the region from byte ``offset`` on (by default just past
        the ticket's embeddings, or from 0 for a batch)."""
        if (ticket is None) == (batch is None):
            raise ValueError("give `ticket` (a lookup_into_region answer) or `batch`, not both")
        region = self._mapped()
        if batch is not None:
            gradients, _ = _place_gradients(region, list(batch), grads, offset or 0)
            # Past every gradient, copied or in place: the client writes
            # the batch before the server reads them.
            end = max((at + nbytes for _, at, nbytes in gradients), default=0)
            return self._native.push_batch_from_region(table, batch, gradients, end)
        if ticket.ticket is None:
            raise ValueError("this lookup asked for no ticket")
        if offset is None:
            ends = [_offset_in(region, e) for e in ticket.values()]
            if any(at is None for at in ends):
                raise ValueError("the ticket's embeddings are not in this stream's region: give `offset`")
            offset = max(at + e.nbytes for at, e in zip(ends, ticket.values()))
        gradients, _ = _place_gradients(region, list(ticket), grads, offset)
        return self._native.push_from_region(table, ticket.ticket, gradients)

    def _mapped(self) -> mmap.mmap:
        if self._region is None:
            raise ValueError("this stream has no region: call open_region first")
        return self._region


def _place_gradients(region: mmap.mmap, order: list, grads: Gradients, offset: int) -> tuple:
    """``(feature, offset, bytes)`` of each gradient block in the region,
    in ``order``: where it already lies, else copied there from ``offset``
    on; and the byte after the last one copied."""
    gradients = []
    for feature, block in zip(order, _gradient_blocks(grads, order)):
        at = _offset_in(region, block)
        if at is None:
            at = offset
            if at % 4 or at + block.nbytes > len(region):
                raise ValueError(
                    f"gradient `{feature}` ({block.nbytes} bytes at {at}) does not fit the region's {len(region)} bytes"
                )
            np.frombuffer(region, np.float32, block.size, at)[:] = block
            offset = at + block.nbytes
        gradients.append((feature, at, block.nbytes))
    return gradients, offset


def _offset_in(region: mmap.mmap, array: np.ndarray) -> Optional[int]:
    """Where a contiguous float32 array lies in ``region``, or None when it
    lies elsewhere."""
    if array.dtype != np.float32 or not array.flags.c_contiguous:
        return None
    base = np.frombuffer(region, np.uint8).ctypes.data
    at = array.ctypes.data - base
    if 0 <= at and at + array.nbytes <= len(region):
        return at
    return None


class Client:
    """A connection to a featmux server's gRPC port (``http://host:port``,
    ``https://`` with TLS, or ``unix:///path`` for the server's Unix socket
    on this machine). Safe to share between threads.

    ``token`` is sent as a bearer token; ``ca_cert`` is a PEM file's path or
    bytes for a private CA; ``timeout`` is each call's deadline in seconds;
    ``retries`` the attempts after UNAVAILABLE (with backoff);
    ``connections`` the HTTP/2 connections calls are spread over (one
    connection serialises every call's framing at both ends: threads
    sharing a client need several). ``lookup_precision="f16"`` or
    ``"bf16"`` has lookups (and a train stream's) answered in 16-bit floats,
    half the bytes on the wire, each value rounded by the server (ties to
    even); the arrays are still float32. ``push_precision`` does the same
    for pushed gradients (rounded here, widened by the server, whose
    optimizer runs in float32). Tables and pooling stay float32; regions
    always carry float32."""

    def __init__(
        self,
        addr: str,
        token: Optional[str] = None,
        ca_cert: Union[str, os.PathLike, bytes, None] = None,
        timeout: float = 30.0,
        retries: int = 5,
        connections: int = 4,
        lookup_precision: str = "f32",
        push_precision: str = "f32",
    ):
        if ca_cert is not None and not isinstance(ca_cert, bytes):
            with open(ca_cert, "rb") as f:
                ca_cert = f.read()
        self._native = NativeClient(
            addr, token, ca_cert, timeout, retries, connections, lookup_precision, push_precision
        )

    @classmethod
    def _from_native(cls, native: NativeClient) -> "Client":
        client = cls.__new__(cls)
        client._native = native
        return client

    # Data plane.

    def lookup(self, table: str, batch: Mapping[str, Any], ticket: bool = False) -> Embeddings:
        """Embeddings of ``batch``, pooled per example; with ``ticket`` the
        server keeps the hashed batch for :meth:`push`.

        ``batch`` maps each feature to either its examples or its column
        (the two forms mix in one batch):

        - examples: a list with one entry per example: a ``str``, an
          ``int``, ``None`` (no value) or a list of them (a bag); or a numpy
          array, 1-D (one value per example) or 2-D integers (``shape[1]``
          values per example): ``{"user": ["u1", "u2"], "genres": [["a",
          "b"], []]}``;
        - a column, a KeyedJaggedTensor's shape: ``{"values": int array or
          list of str, "lengths": bag lengths, "weights": optional float
          per value}``.

        The batch is read in Rust, straight into the wire format."""
        blocks, ticket_id = self._native.lookup(table, batch, ticket)
        return Embeddings(blocks, ticket_id)

    def push(
        self,
        table: str,
        grads: Gradients,
        batch: Optional[Mapping[str, Any]] = None,
        ticket: Union[Embeddings, int, None] = None,
    ) -> dict:
        """Pushes gradients of the pooled outputs (``[examples, width]`` per
        feature, as a dict by feature or a list in batch order) for ``batch``
        or for a lookup's ``ticket`` (the :class:`Embeddings` it returned, or
        its ticket id with ``grads`` as a list). The table's optimizer runs
        in the server. Returns ``{"version", "entries", "unique_rows"}``."""
        if (batch is None) == (ticket is None):
            raise ValueError("push needs either a batch or a ticket")
        if batch is not None:
            blocks = _gradient_blocks(grads, list(batch))
            return self._native.push(table, blocks, batch=batch)
        if isinstance(ticket, Embeddings):
            if ticket.ticket is None:
                raise ValueError("this lookup asked for no ticket (lookup(..., ticket=True))")
            blocks = _gradient_blocks(grads, list(ticket))
            return self._native.push(table, blocks, ticket=ticket.ticket)
        if isinstance(grads, Mapping):
            raise ValueError("with a ticket id, pass the gradients as a list in the lookup's feature order")
        return self._native.push(table, _gradient_blocks(grads, []), ticket=int(ticket))

    def train(self) -> TrainStream:
        """Opens a Train stream for pipelined lookups and pushes."""
        return TrainStream(self._native.train())

    # Administration.

    def create_table(self, table: Mapping[str, Any], features: Sequence[Mapping[str, Any]] = ()) -> dict:
        """Creates ``table`` (``name``, ``rows``, ``chunk_dim``, optional
        ``seed``, ``optimizer`` ``{"kind": ..., "lr": ...}``,
        ``max_abs_gradient``) with its first ``features`` (``name``,
        ``chunks``, ``value_type`` string|int64, ``pooling``
        sum|mean|sqrtn|none, ``placement``), all in one atomic change."""
        return self._native.create_table(dict(table), [dict(f) for f in features])

    def add_features(self, table: str, features: Sequence[Mapping[str, Any]]) -> dict:
        """Registers features (all or none)."""
        return self._native.add_features(table, [dict(f) for f in features])

    def table(self, name: str) -> dict:
        """A table's configuration, features, bytes in memory, dirty rows."""
        return self._native.table(name)

    def tables(self) -> list:
        """Every table."""
        return self._native.tables()

    def drop_table(self, name: str) -> None:
        """Drops a table and its stored rows."""
        self._native.drop_table(name)

    def create_checkpoint(self) -> dict:
        """Flushes and checkpoints every table: ``{"id", "version", ...}``."""
        return self._native.create_checkpoint()

    def checkpoints(self) -> list:
        """Checkpoints, oldest first."""
        return self._native.checkpoints()

    def delete_checkpoint(self, id: int) -> None:
        """Deletes a checkpoint."""
        self._native.delete_checkpoint(id)

    def restore_checkpoint(self, id: int, table: str, into: Optional[str] = None) -> dict:
        """Restores ``table`` from checkpoint ``id`` in place, or into a new
        table ``into``."""
        return self._native.restore_checkpoint(id, table, into)

    def stats(self) -> dict:
        """Server-wide counters: training and flushed versions, flushes, bytes."""
        return self._native.stats()
