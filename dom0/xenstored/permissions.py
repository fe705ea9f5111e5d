"""The xenstore permission check (tools/xenstored/core.c ``perm_for_conn``).

A node's permission list starts with the owner's entry; its access letter is
the default for every domain without an entry of its own. Privileged
connections, the owner and a device model targeting the owner
(SET_TARGET) get everything, including ``OWNER`` (the right to SET_PERMS).
Otherwise the first later entry naming the caller (or its target) decides,
else entry 0's access.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from xenlike.public.xs_wire import Permission, XsPerm

__all__ = ["Caller", "ALL_ACCESS", "perm_for_conn", "may_read"]

#: What privileged callers and owners get.
ALL_ACCESS = XsPerm.READ | XsPerm.WRITE | XsPerm.OWNER


class Caller(Protocol):
    """What the check needs to know about a connection."""

    domid: int
    privileged: bool
    target: int | None


def perm_for_conn(conn: Caller, perms: Sequence[Permission]) -> XsPerm:
    """The access ``conn`` has to a node with permission list ``perms``."""
    owner = perms[0].domid
    target = conn.target
    if conn.privileged or owner == conn.domid or (target is not None and owner == target):
        return ALL_ACCESS
    for entry in perms[1:]:
        if entry.domid == conn.domid or (target is not None and entry.domid == target):
            return XsPerm(entry.access & XsPerm.BOTH)
    return XsPerm(perms[0].access & XsPerm.BOTH)


def may_read(conn: Caller, candidates: Sequence[Sequence[Permission]]) -> bool:
    """True if any of the permission lists lets ``conn`` read (watch.c ``watch_permitted``)."""
    return any(perm_for_conn(conn, perms) & XsPerm.READ for perms in candidates)
