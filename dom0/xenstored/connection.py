"""Client connections of xenstored (tools/xenstored/core.h ``struct connection``).

A connection is one client: a domain's shared-memory ring, or a dom0 tool on
a local socket. It carries the identity every check uses (``domid``,
``privileged``, the SET_TARGET ``target``) and owns that client's watches and
open transactions. The transport that carries the bytes keeps its own
reference to the object and passes it to :meth:`Xenstored.handle`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from xenlike.public.xs_wire import home_path

if TYPE_CHECKING:
    from .transaction import Transaction
    from .watch import Watch

__all__ = ["Connection"]

_connection_ids = itertools.count(1)


class Connection:
    """One xenstore client.

    ``privileged`` connections (dom0 and local tool sockets) bypass the
    permission system and all quotas. ``closed`` connections are ignored by
    the dispatcher, as xenstored ignores a released domain's ring. A
    connection with a ``receiver`` lives in the dom0 process itself: the
    dispatcher hands it its watch events directly.
    """

    __slots__ = (
        "id",
        "domid",
        "privileged",
        "target",
        "watches",
        "transactions",
        "next_tx_id",
        "closed",
        "is_domain",
        "receiver",
    )

    def __init__(
        self,
        domid: int,
        privileged: bool,
        *,
        is_domain: bool = False,
        receiver: Callable[[Any], None] | None = None,
    ) -> None:
        self.id = next(_connection_ids)
        self.domid = domid
        self.privileged = privileged
        self.target: int | None = None
        self.watches: list[Watch] = []
        self.transactions: dict[int, Transaction] = {}
        self.next_tx_id = 1
        self.closed = False
        self.is_domain = is_domain
        # In-process clients take their watch events through this callable
        # instead of a transport.
        self.receiver = receiver

    @property
    def home(self) -> str:
        """Where this connection's relative paths resolve."""
        return home_path(self.domid)

    def drop_state(self) -> None:
        """Forget all watches and transactions (RESET_WATCHES, reconnection, release)."""
        self.watches.clear()
        self.transactions.clear()

    def __repr__(self) -> str:
        kind = "domain" if self.is_domain else "socket"
        priv = " privileged" if self.privileged else ""
        state = " closed" if self.closed else ""
        return f"<Connection #{self.id} {kind} dom{self.domid}{priv}{state}>"
