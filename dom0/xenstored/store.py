"""The global node database (tools/xenstored/core.c ``db_*`` and ``setup_structure``).

Nodes are kept in a flat mapping from canonical path to :class:`Node`, as C
xenstored keeps them in a hashtable keyed by name; parent/child structure
lives in each node's child list. The store also owns the global generation
counter and counts the nodes each domain owns, for the ``nodes`` quota.

Code reads and changes the tree through a *view*: :class:`GlobalView` here
for requests outside transactions, ``TransactionView`` for requests inside
one. Both offer ``get``, ``peek``, ``count_owned`` and ``apply``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping

from xenlike.xs_wire import SPECIAL_INTRODUCE_DOMAIN, SPECIAL_RELEASE_DOMAIN, Permission, XsPerm

from .node import Node, child_path

__all__ = ["Store", "GlobalView", "INITIAL_NODES"]

_DOM0_ONLY = (Permission(0, XsPerm.NONE),)

#: The nodes a fresh xenstored holds (core.c ``setup_structure``), all ``n0``.
INITIAL_NODES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("/", ("tool",)),
    ("/tool", ("xenstored",)),
    ("/tool/xenstored", ()),
    (SPECIAL_RELEASE_DOMAIN, ()),
    (SPECIAL_INTRODUCE_DOMAIN, ()),
)


class Store:
    """All committed nodes, the generation counter and per-owner node counts."""

    def __init__(self) -> None:
        self._nodes: dict[str, Node] = {}
        self.generation = 0
        self.owner_counts: Counter[int] = Counter()
        for path, children in INITIAL_NODES:
            self.set(path, Node(b"", children, _DOM0_ONLY).stamped(self.next_generation()))

    def next_generation(self) -> int:
        """A fresh, unique generation count (incremented before use, as xenstored does)."""
        self.generation += 1
        return self.generation

    @property
    def nodes(self) -> Mapping[str, Node]:
        """Read-only access to every committed node by path."""
        return self._nodes

    def get(self, path: str) -> Node | None:
        """The committed node at ``path``, if any."""
        return self._nodes.get(path)

    def set(self, path: str, node: Node) -> None:
        """Store ``node`` at ``path`` as is (its generation must already be stamped)."""
        old = self._nodes.get(path)
        if old is not None:
            self.owner_counts[old.owner] -= 1
        self._nodes[path] = node
        self.owner_counts[node.owner] += 1

    def remove(self, path: str) -> None:
        """Delete the node at ``path`` if present (children are the caller's business)."""
        old = self._nodes.pop(path, None)
        if old is not None:
            self.owner_counts[old.owner] -= 1

    def walk(self, root: str = "/") -> Iterator[tuple[str, Node]]:
        """Every node at or below ``root``, parents before children."""
        stack = [root]
        while stack:
            path = stack.pop()
            node = self._nodes.get(path)
            if node is None:
                continue
            yield path, node
            stack.extend(child_path(path, name) for name in reversed(node.children))


class GlobalView:
    """Direct access to the committed tree, for requests outside a transaction."""

    transaction = None

    def __init__(self, store: Store) -> None:
        self.store = store

    def get(self, path: str) -> Node | None:
        """The node at ``path``, if any."""
        return self.store.get(path)

    def peek(self, path: str) -> Node | None:
        """Same as :meth:`get` (views that track reads do not track this one)."""
        return self.store.get(path)

    def count_owned(self, domid: int) -> int:
        """How many nodes ``domid`` owns."""
        return self.store.owner_counts[domid]

    def apply(self, changes: Mapping[str, Node | None]) -> None:
        """Commit a batch: each node gets a fresh generation; ``None`` deletes."""
        store = self.store
        for path, node in changes.items():
            if node is None:
                store.remove(path)
            else:
                store.set(path, node.stamped(store.next_generation()))
