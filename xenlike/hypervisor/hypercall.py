"""The hypervisor's side of the hypercall boundary: a row of the hypercall table, and how a handler answers.

A request is ``{"op": ..., "args": {...}}`` (``xenlike.kernel.hypercall`` carries
it); ``domctl`` and ``sysctl`` name their command in ``args["cmd"]``, as
``struct xen_domctl``'s ``cmd`` does. Each call is one :class:`Hypercall` row
(``hypercall_table.py``), which says who may make it: the table's flags are the
privilege checks Xen's XSM default policy (``xsm/dummy.h``) makes.

A handler is ``handler(hv, caller, args, fds) -> (result, fds)``. ``caller`` is
the domain the socket belongs to, whatever the message claims; ``fds`` are those
the call carried (closed once it returns); the fds it returns travel with the
result. It refuses by raising :class:`Refused` (or the error of the layer it
calls: ``EvtchnError``, ``GrantError``, ``OutOfMemory``, a ``KeyError`` for a
missing argument), and raises :class:`Deferred` when it replies later, or has
already replied.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from xenlike.hypervisor.domain import Domain

if TYPE_CHECKING:
    from xenlike.hypervisor.core import Hypervisor

__all__ = ["Result", "Handler", "Hypercall", "Refused", "Deferred"]

Result = tuple[Any, list[int]]
Handler = Callable[["Hypervisor", Domain, dict, list[int]], Result]


class Refused(Exception):
    """A hypercall refused with an errno and a sentence naming the domain and the rule."""

    def __init__(self, err: int, message: str) -> None:
        super().__init__(message)
        self.errno = err


class Deferred(Exception):
    """The reply to this hypercall is sent later (or already was): the dispatcher sends none."""


@dataclass(frozen=True)
class Hypercall:
    """One hypercall: its name, its handler, who may make it and whether a multicall may hold it."""

    op: str
    handler: Handler
    doc: str  # what it does, in one line
    cmd: str | None = None  # the command of a domctl or sysctl
    privileged: bool = False  # dom0's alone: refused to every other domain before the handler runs (XSM_PRIV)
    target: bool = False  # for args["dom"]: the caller's own, or any domain's if the caller is dom0 (XSM_TARGET)
    in_multicall: bool = True  # False for calls that nest or whose reply is deferred

    @property
    def name(self) -> str:
        """``evtchn_close``, ``domctl createdomain``: how refusals and logs name the call."""
        return self.op if self.cmd is None else f"{self.op} {self.cmd}"
