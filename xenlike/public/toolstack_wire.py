"""The toolstack API's wire format: dom0's zmq socket and its clients (the CLI, benchmarks, tests).

Every message is one msgpack map:

- a request ``{"id": N, "op": "list", "args": {...}}``;
- its one reply ``{"id": N, "ok": true, "result": ...}`` or ``{"id": N, "ok": false, "error": "..."}``;
- for a watch, besides its reply, events ``{"id": N, "event": {...}}`` until the client unwatches.

A reply may carry rows that all have the same keys (``list``'s domains) as a
:class:`Table`: msgpack extension type :data:`TABLE_EXT` holding ``[keys, columns]``,
one list per key. A client's :func:`unpack` gives the rows back as a list of maps,
so nobody sees the difference but the bytes: a list of two thousand domains costs
six lists to encode and decode instead of two thousand maps, each with its six
keys. Requests never carry tables; dom0 decodes them with plain msgpack.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any

import msgpack

__all__ = ["TABLE_EXT", "Table", "pack", "unpack"]

TABLE_EXT = 1  # msgpack extension type of a Table


@dataclass(frozen=True)
class Table:
    """Rows with the same ``keys``, kept as ``columns``: the i-th row is ``{keys[k]: columns[k][i]}``."""

    keys: Sequence[str]
    columns: Sequence[Sequence[Any]]

    def __post_init__(self) -> None:
        if len(self.keys) != len(self.columns):
            raise ValueError(f"a table of {len(self.keys)} keys has {len(self.columns)} columns")
        lengths = {len(column) for column in self.columns}
        if len(lengths) > 1:
            raise ValueError(f"a table's columns differ in length: {sorted(lengths)}")

    def rows(self) -> list[dict[str, Any]]:
        """The rows as maps, in order."""
        if not self.keys:
            return []
        return list(map(dict, map(zip, repeat(self.keys), zip(*self.columns))))


def _encode(value: Any) -> Any:
    if isinstance(value, Table):
        # A small first buffer: beside the outer packer's 256 KiB one, a second of that size is a fresh
        # mmap on every reply, several times what packing a short table costs.
        packer = msgpack.Packer(use_bin_type=True, buf_size=_TABLE_BUF)
        return msgpack.ExtType(TABLE_EXT, packer.pack([list(value.keys), list(value.columns)]))
    raise TypeError(f"cannot encode {type(value).__name__}")


_TABLE_BUF = 4096


def _decode(code: int, data: bytes) -> Any:
    if code != TABLE_EXT:
        return msgpack.ExtType(code, data)
    body = msgpack.unpackb(data, raw=False)
    if not isinstance(body, list) or len(body) != 2 or not all(isinstance(part, list) for part in body):
        raise ValueError("a table is not [keys, columns]")
    keys, columns = body
    if not all(isinstance(key, str) for key in keys) or not all(isinstance(column, list) for column in columns):
        raise ValueError("a table's keys are not strings or its columns not lists")
    return Table(keys, columns).rows()


def pack(message: Any) -> bytes:
    """A message's bytes; a :class:`Table` anywhere in it goes as columns. TypeError for what msgpack cannot hold."""
    return msgpack.packb(message, use_bin_type=True, default=_encode)


def unpack(data: bytes) -> Any:
    """A message from its bytes, each table in it turned back into its rows; ValueError for bytes that are not one."""
    return msgpack.unpackb(data, raw=False, ext_hook=_decode)
