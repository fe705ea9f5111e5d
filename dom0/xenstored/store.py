"""The global node database (tools/xenstored/core.c ``db_*`` and ``setup_structure``).

Nodes are kept in a flat mapping from canonical path to :class:`Node`, as C
xenstored keeps them in a hashtable keyed by name; parent/child structure
lives in each node's child list. The store also owns the global generation
counter and counts the nodes each domain owns, for the ``nodes`` quota, and
indexes them by owner, so releasing a domain finds its nodes without walking
every other domain's (C xenstored walks the whole tree in ``domain_tree_remove``).

Code reads and changes the tree through a *view*: :class:`GlobalView` here
for requests outside transactions, ``TransactionView`` for requests inside
one. Both offer ``get``, ``peek``, ``count_owned`` and ``apply``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping

from xenlike.public.xs_wire import SPECIAL_INTRODUCE_DOMAIN, SPECIAL_RELEASE_DOMAIN, Permission, XsPerm, join_strings

from .node import Node, child_path, parent_path

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
        self._owned: dict[int, set[str]] = {}
        for path, children in INITIAL_NODES:
            self.set(path, Node(b"", join_strings(children), _DOM0_ONLY).stamped(self.next_generation()))

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
            self._disown(path, old.owner)
        self._nodes[path] = node
        self.owner_counts[node.owner] += 1
        self._owned.setdefault(node.owner, set()).add(path)

    def remove(self, path: str) -> None:
        """Delete the node at ``path`` if present (children are the caller's business)."""
        old = self._nodes.pop(path, None)
        if old is not None:
            self._disown(path, old.owner)

    def _disown(self, path: str, owner: int) -> None:
        self.owner_counts[owner] -= 1
        paths = self._owned[owner]
        paths.discard(path)
        if not paths:
            del self._owned[owner]

    def owned_by(self, domid: int) -> frozenset[str]:
        """The paths of every node ``domid`` owns (entry 0 of its permissions)."""
        return frozenset(self._owned.get(domid, ()))

    def topmost_owned_by(self, domid: int) -> list[str]:
        """The nodes below ``/`` that ``domid`` owns and whose ancestors it does not, in :meth:`walk` order.

        What removing a released domain's nodes starts from: each of these goes with its subtree.
        """
        owned = {path for path in self._owned.get(domid, ()) if path.startswith("/")}
        topmost = [path for path in owned if not _has_ancestor_in(path, owned)]
        indexes: dict[tuple[str, str], int] = {}  # the paths share ancestors: /local/domain is searched once
        return sorted(topmost, key=lambda path: self._walk_position(path, indexes))

    def _walk_position(self, path: str, indexes: dict[tuple[str, str], int]) -> tuple[int, ...]:
        """Where :meth:`walk` from ``/`` meets ``path``: its index among its parent's children, at each level.

        ``indexes`` remembers each (parent, name) looked up, for the other paths of one sort.
        """
        position = []
        parent = "/"
        for name in path.strip("/").split("/") if path != "/" else ():
            at = indexes.get((parent, name))
            if at is None:
                at = indexes[parent, name] = self._child_index(parent, name)
            position.append(at)
            parent = child_path(parent, name)
        return tuple(position)

    def _child_index(self, parent: str, name: str) -> int:
        """``name``'s place in ``parent``'s child list; -1 if either is missing."""
        node = self._nodes.get(parent)
        return node.child_index(name) if node is not None else -1

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


def _has_ancestor_in(path: str, paths: set[str]) -> bool:
    while path != "/":
        path = parent_path(path)
        if path in paths:
            return True
    return False


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
