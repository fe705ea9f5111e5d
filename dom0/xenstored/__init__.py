"""xenstored: the XenStore daemon core, as a transport-independent library.

It reimplements the semantics of C xenstored (tools/xenstored/) over the
wire format of :mod:`xenlike.public.xs_wire`: a tree of nodes with values and
owner/ACL permissions, watches with tokens, transactions with generation-count
conflict detection, per-domain quotas, and domain introduction and release.

A transport (the shared-memory ring to domUs, zmq to dom0 tools) decodes
messages with :class:`xenlike.public.xs_wire.MessageReader`, hands each to
:meth:`Xenstored.handle` with the client's :class:`Connection`, and sends the
:class:`Delivery` list it gets back. dom0 code in the same process uses
:class:`LocalXenstore`.
"""

from xenlike.public.xs_wire import Permission, XsError, XsPerm

from .connection import Connection
from .domain import Domain
from .local import LocalXenstore
from .node import NO_GENERATION, Node
from .quota import QUOTA_NAMES, Quotas, QuotaTable
from .server import LIBRARY_FEATURES, Delivery, Xenstored
from .store import INITIAL_NODES, Store
from .transaction import Transaction
from .watch import Change, Watch

__all__ = [
    "Xenstored",
    "Delivery",
    "Connection",
    "LocalXenstore",
    "Quotas",
    "QuotaTable",
    "QUOTA_NAMES",
    "LIBRARY_FEATURES",
    "Store",
    "INITIAL_NODES",
    "Node",
    "NO_GENERATION",
    "Transaction",
    "Watch",
    "Change",
    "Domain",
    "Permission",
    "XsPerm",
    "XsError",
]
