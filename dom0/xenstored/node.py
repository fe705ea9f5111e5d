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

    New versions are built with the constructor rather than
    ``dataclasses.replace``, which costs several times as much on every write.
    """

    value: bytes
    children: tuple[str, ...]
    perms: tuple[Permission, ...]
    generation: int = NO_GENERATION

    @property
    def owner(self) -> int:
        """The owning domain: the domid of permission entry 0."""
        return self.perms[0].domid

    @property
    def childlen(self) -> int:
        """Bytes of the nul-separated child list, as xenstored stores it."""
        return sum(len(name) + 1 for name in self.children)

    def children_blob(self) -> bytes:
        """The child list as xenstored stores and sends it: each name nul-terminated."""
        return b"".join(name.encode("ascii") + b"\0" for name in self.children)

    @property
    def acc_size(self) -> int:
        """The size the ``node-size`` quota limits (core.c ``calc_node_acc_size``):
        header, permission entries, value and child names."""
        return NODE_HDR_SIZE + PERM_ENTRY_SIZE * len(self.perms) + len(self.value) + self.childlen

    def with_value(self, value: bytes) -> Node:
        """This node with another value."""
        return Node(value, self.children, self.perms, self.generation)

    def with_perms(self, perms: tuple[Permission, ...]) -> Node:
        """This node with another permission list."""
        return Node(self.value, self.children, perms, self.generation)

    def with_child(self, name: str) -> Node:
        """This node with ``name`` appended to its children (core.c ``add_child``)."""
        return Node(self.value, self.children + (name,), self.perms, self.generation)

    def without_child(self, name: str) -> Node:
        """This node with child ``name`` removed (core.c ``delete_child``)."""
        children = self.children
        try:
            at = children.index(name)
        except ValueError:
            return self
        return Node(self.value, children[:at] + children[at + 1 :], self.perms, self.generation)

    def stamped(self, generation: int) -> Node:
        """This node carrying a new generation count."""
        return Node(self.value, self.children, self.perms, generation)


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
