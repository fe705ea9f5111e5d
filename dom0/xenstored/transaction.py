"""Transactions (tools/xenstored/transaction.c).

A transaction does not copy the database. The first time it touches a node
it records the node's generation (or that the node was absent) and from then
on works on a private copy of it; nodes it never touched are read from the
committed tree. Every request reads the nodes it depends on before changing
them (the node itself, its parents when creating, the subtree when removing),
so a write is always preceded by a recorded read.

Commit (``TRANSACTION_END T``) succeeds iff every node recorded on first read
still has the generation it had then (a node read as absent must still be
absent); otherwise it fails with ``EAGAIN`` and the client retries the whole
transaction. On success the private copies replace the committed nodes, each
with a fresh generation, and the watches queued by the transaction fire --
only then, never while it is open.

Each queued node fires once, as in transaction.c, and who hears it is judged
by the node's permissions when the transaction first read it and those it has
once committed. A node that existed only inside the transaction (written,
then removed) has neither, so it is judged by the permissions its private
copy had and by its committed parent's, as the same requests outside a
transaction would have been: its write may have created parents that outlive
it, and watchers of those must learn of the change.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from xenlike.public.xs_wire import Permission, XsError

from .node import NO_GENERATION, Node, parent_path
from .store import Store
from .watch import Change

__all__ = ["Accessed", "Transaction", "TransactionView"]


@dataclass(slots=True)
class Accessed:
    """What a transaction knows about one node (transaction.c ``struct accessed_node``)."""

    node: Node | None
    generation: int
    check_gen: bool
    old_perms: tuple[Permission, ...] | None
    modified: bool = False
    fire: bool = False
    fire_exact: bool = True
    #: The permission lists the node has had in the private copy.
    perms_inside: tuple[tuple[Permission, ...], ...] = ()


class Transaction:
    """One open transaction of a connection."""

    __slots__ = ("id", "accessed", "owner_delta", "node_created")

    def __init__(self, tx_id: int) -> None:
        self.id = tx_id
        self.accessed: dict[str, Accessed] = {}
        self.owner_delta: Counter[int] = Counter()
        self.node_created = False

    def queue_watch(self, path: str, exact: bool) -> None:
        """Remember that committing must fire watches for ``path`` (``queue_watches``).

        A non-exact event replaces an exact one, never the other way round.
        """
        entry = self.accessed[path]
        if not entry.fire:
            entry.fire = True
            entry.fire_exact = exact
        elif not exact:
            entry.fire_exact = False

    def commit(self, store: Store, nodes_limit: Callable[[int], int] | None) -> list[Change]:
        """Validate and apply the transaction; return the changes that fire watches.

        ``nodes_limit`` gives the ``nodes`` quota of a domain, or is ``None``
        when no limit applies (privileged committer). Raises
        ``XsError("EAGAIN")`` on a conflict and ``XsError("ENOSPC")`` if a
        domain would own more nodes than its quota; either way nothing changes.
        """
        for path, entry in self.accessed.items():
            if entry.check_gen:
                current = store.get(path)
                generation = NO_GENERATION if current is None else current.generation
                if generation != entry.generation:
                    raise XsError("EAGAIN")
        if nodes_limit is not None and self.node_created:
            for domid, delta in self.owner_delta.items():
                if delta > 0 and store.owner_counts[domid] + delta > nodes_limit(domid):
                    raise XsError("ENOSPC")
        for path, entry in self.accessed.items():
            if not entry.modified:
                continue
            if entry.node is None:
                store.remove(path)
            else:
                store.set(path, entry.node.stamped(store.next_generation()))
        changes: list[Change] = []
        for path, entry in self.accessed.items():
            if not entry.fire:
                continue
            readers: list[tuple[Permission, ...]] = []
            if entry.old_perms is not None:
                readers.append(entry.old_perms)
            current = store.get(path)
            if current is not None:
                readers.append(current.perms)
                parent = store.get(parent_path(path))
                if parent is not None:
                    readers.append(parent.perms)
            elif entry.old_perms is None:
                # Created and removed inside the transaction: only its private
                # copy had permissions; its parent may have been created with it.
                readers.extend(entry.perms_inside)
                parent = store.get(parent_path(path))
                if parent is not None:
                    readers.append(parent.perms)
            changes.append(Change(path, entry.fire_exact, tuple(readers)))
        return changes


class TransactionView:
    """The tree as seen by requests inside ``transaction``.

    ``max_nodes`` is the ``transaction-nodes`` quota for unprivileged callers
    (``None``: unlimited); touching one node more gives ``ENOSPC``.
    """

    def __init__(self, store: Store, transaction: Transaction, max_nodes: int | None) -> None:
        self.store = store
        self.transaction = transaction
        self.max_nodes = max_nodes

    def get(self, path: str) -> Node | None:
        """The node at ``path`` as this transaction sees it, recording first reads."""
        accessed = self.transaction.accessed
        entry = accessed.get(path)
        if entry is not None:
            return entry.node
        if self.max_nodes is not None and len(accessed) >= self.max_nodes:
            raise XsError("ENOSPC")
        node = self.store.get(path)
        if node is None:
            accessed[path] = Accessed(None, NO_GENERATION, True, None)
        else:
            accessed[path] = Accessed(node, node.generation, True, node.perms)
        return node

    def peek(self, path: str) -> Node | None:
        """The node at ``path`` as this transaction sees it, without recording a read.

        Only for deciding who may hear about a change; such a look must not
        make the transaction conflict or count against its quota.
        """
        entry = self.transaction.accessed.get(path)
        return entry.node if entry is not None else self.store.get(path)

    def count_owned(self, domid: int) -> int:
        """How many nodes ``domid`` would own if this transaction committed now."""
        return self.store.owner_counts[domid] + self.transaction.owner_delta[domid]

    def apply(self, changes: Mapping[str, Node | None]) -> None:
        """Record a batch of changes in the transaction's private copies."""
        tx = self.transaction
        for path, node in changes.items():
            entry = tx.accessed.get(path)
            if entry is None:
                # Requests read before they write, so this is only a safety net:
                # an unread node is not checked at commit, like a blind write.
                entry = tx.accessed[path] = Accessed(None, NO_GENERATION, False, None)
                current = self.store.get(path)
                entry.node = current
            old = entry.node
            if old is not None:
                tx.owner_delta[old.owner] -= 1
            if node is None:
                entry.node = None
            else:
                entry.node = node.stamped(self.store.next_generation())
                if node.perms not in entry.perms_inside:
                    entry.perms_inside += (node.perms,)
                tx.owner_delta[node.owner] += 1
                if old is None:
                    tx.node_created = True
            entry.modified = True
