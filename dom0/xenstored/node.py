"""Nodes of the xenstore tree and the path arithmetic over them.

Mirrors ``struct node`` / ``struct node_hdr`` of tools/xenstored/core.h: a node
has a value (binary, usually ASCII without a nul), an ordered list of child
names, a permission list whose entry 0 names the owner, and a generation
count. Every change to a node stamps it with a fresh value of a global
counter (tools/xenstored/transaction.c, header comment), which is what
transactions compare to detect conflicts.
"""

from __future__ import annotations

from dataclasses import dataclass

from xenlike.public.xs_wire import Permission

__all__ = [
    "Node",
    "NO_GENERATION",
    "NODE_HDR_SIZE",
    "PERM_ENTRY_SIZE",
    "parent_path",
    "basename",
    "child_path",
    "is_child",
    "levels_below",
]

#: Generation recorded for a node that does not exist (``NO_GENERATION``).
NO_GENERATION = -1

#: ``sizeof(struct node_hdr)``: u64 generation, u16 num_perms, u16 datalen, u32 childlen.
NODE_HDR_SIZE = 16
#: ``sizeof(struct xs_permissions)``: u32 domid, u32 access bits.
PERM_ENTRY_SIZE = 8


@dataclass(frozen=True, slots=True)
class Node:
    """One immutable version of a node; changes produce new versions.

    The child names are kept as xenstored keeps them (``struct node``'s
    ``children``/``childlen``): one byte string, each name nul-terminated, in
    creation order. Adding, finding and removing a child then cost a search
    and a copy of those bytes, never a visit to one Python object per sibling,
    which with thousands of domains under ``/local/domain`` is what a create
    and a destroy would pay for (each name a cache miss).

    New versions are built with the constructor rather than
    ``dataclasses.replace``, which costs several times as much on every write.
    """

    value: bytes
    child_list: bytes  # b"name\0name\0" (xs_wire.join_strings); names are ASCII (validate_path)
    perms: tuple[Permission, ...]
    generation: int = NO_GENERATION

    @property
    def owner(self) -> int:
        """The owning domain: the domid of permission entry 0."""
        return self.perms[0].domid

    @property
    def children(self) -> tuple[str, ...]:
        """The child names, in creation order (decoded: costs what the list's length does)."""
        if not self.child_list:
            return ()
        return tuple(self.child_list[:-1].decode("ascii").split("\0"))

    @property
    def childlen(self) -> int:
        """Bytes of the nul-separated child list, as xenstored stores it."""
        return len(self.child_list)

    def children_blob(self) -> bytes:
        """The child list as xenstored stores and sends it: each name nul-terminated."""
        return self.child_list

    def _find_child(self, name: str) -> tuple[int, bytes]:
        """Where child ``name``'s entry starts in :attr:`child_list` (-1 if absent), and the entry."""
        entry = name.encode("ascii") + b"\0"
        blob = self.child_list
        if blob.startswith(entry):
            return 0, entry
        at = blob.find(b"\0" + entry)
        return (at + 1 if at >= 0 else -1), entry

    def child_index(self, name: str) -> int:
        """``name``'s place among the children (0 for the first); -1 if it is not one."""
        at, _ = self._find_child(name)
        return self.child_list.count(b"\0", 0, at) if at >= 0 else -1

    @property
    def acc_size(self) -> int:
        """The size the ``node-size`` quota limits (core.c ``calc_node_acc_size``):
        header, permission entries, value and child names."""
        return NODE_HDR_SIZE + PERM_ENTRY_SIZE * len(self.perms) + len(self.value) + len(self.child_list)

    def with_value(self, value: bytes) -> Node:
        """This node with another value."""
        return Node(value, self.child_list, self.perms, self.generation)

    def with_perms(self, perms: tuple[Permission, ...]) -> Node:
        """This node with another permission list."""
        return Node(self.value, self.child_list, perms, self.generation)

    def with_child(self, name: str) -> Node:
        """This node with ``name`` appended to its children (core.c ``add_child``)."""
        return Node(self.value, self.child_list + name.encode("ascii") + b"\0", self.perms, self.generation)

    def without_child(self, name: str) -> Node:
        """This node with child ``name`` removed (core.c ``delete_child``)."""
        at, entry = self._find_child(name)
        if at < 0:
            return self
        blob = self.child_list
        return Node(self.value, blob[:at] + blob[at + len(entry) :], self.perms, self.generation)

    def stamped(self, generation: int) -> Node:
        """This node carrying a new generation count."""
        return Node(self.value, self.child_list, self.perms, generation)


def parent_path(path: str) -> str:
    """The parent of a canonical path (core.c ``get_parent``).

    The parent of a top-level node, and of an ``@``-path without a slash, is ``/``.
    """
    slash = path.rfind("/", 1)
    return path[:slash] if slash > 0 else "/"


def basename(path: str) -> str:
    """The last component of a canonical path other than ``/``."""
    return path[path.rfind("/") + 1 :]


def child_path(parent: str, name: str) -> str:
    """The path of child ``name`` of ``parent``."""
    return f"/{name}" if parent == "/" else f"{parent}/{name}"


def is_child(child: str, parent: str) -> bool:
    """True if ``child`` is ``parent`` or lies below it (watch.c ``is_child``)."""
    if parent == "/":
        return True
    if not child.startswith(parent):
        return False
    return len(child) == len(parent) or child[len(parent)] == "/"


def levels_below(child: str, parent: str) -> int:
    """How many path components ``child`` lies below ``parent`` (0 if equal).

    ``child`` must satisfy :func:`is_child`.
    """
    if child == parent:
        return 0
    if parent == "/":
        return child.count("/")
    return child.count("/") - parent.count("/")
