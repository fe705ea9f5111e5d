"""One client request to the toolstack and its answer (libxl's asynchronous operation, ``libxl__ao``).

The messages on the API's ROUTER socket are those of :mod:`xenlike.public.toolstack_wire`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Request", "ToolstackError"]


class ToolstackError(Exception):
    """A request the toolstack refuses; the message goes back to the client as is."""


@dataclass(frozen=True)
class Request:
    """A request as the toolstack received it: who sent it, its id, its operation and arguments.

    It is answered exactly once, with :meth:`reply` or :meth:`fail`. An operation
    whose reply waits for something (a domain to shut down, a device to close)
    keeps its request and answers it from a later turn of dom0's loop, as libxl
    completes an ``ao`` with ``libxl__ao_complete``.
    """

    identity: bytes  # the client's ROUTER identity
    call_id: int
    op: str
    args: dict[str, Any]
    send: Callable[[bytes, dict], object] = field(repr=False, compare=False)

    def reply(self, result: Any) -> None:
        self.send(self.identity, {"id": self.call_id, "ok": True, "result": result})

    def fail(self, error: str) -> None:
        self.send(self.identity, {"id": self.call_id, "ok": False, "error": error})

    def event(self, event: dict[str, Any]) -> bool:
        """One more message for a streaming request (a watch), tagged with its id; False if not delivered."""
        return self.send(self.identity, {"id": self.call_id, "event": event}) is not False
