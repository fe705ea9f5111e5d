"""The requests that read and change the node tree (tools/xenstored/core.c).

:class:`Tree` implements READ, DIRECTORY, DIRECTORY_PART, GET_PERMS, WRITE,
MKDIR, RM and SET_PERMS, and the walk below a node, for one caller on one view
(the committed tree or a transaction). Paths arrive canonical. Each change is staged in a
:class:`Batch`, checked against permissions and quotas, and only then
applied, so a refused request changes nothing. Mutating requests return the
:class:`~.watch.Change` list whose watches they fire.

Permission rules, as C xenstored:

* reading needs READ, changing needs WRITE, SET_PERMS needs ownership;
* a missing node is reported as ``ENOENT`` only if the nearest existing
  ancestor grants the access asked for; otherwise ``EACCES``, so a client
  learns nothing about nodes it could not see (core.c ``errno_from_parents``);
* creating is allowed where that ancestor grants WRITE; created nodes inherit
  their parent's permissions, with the owner replaced by the creator when the
  creator is unprivileged ("unprivileged domains own what they create");
* only a privileged caller may give a node another owner (``EPERM``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Protocol

from xenlike.public.xs_wire import XENSTORE_PAYLOAD_MAX, Permission, XsError, XsPerm

from .connection import Connection
from .node import Node, basename, child_path, parent_path
from .permissions import perm_for_conn
from .quota import Quotas
from .watch import Change

__all__ = ["View", "Batch", "Tree"]


class View(Protocol):
    """Where a request reads and writes nodes (see store.py and transaction.py)."""

    def get(self, path: str) -> Node | None: ...

    def peek(self, path: str) -> Node | None: ...

    def count_owned(self, domid: int) -> int: ...

    def apply(self, changes: dict[str, Node | None]) -> None: ...


class Batch:
    """Changes staged by one request on top of a view."""

    def __init__(self, view: View) -> None:
        self.view = view
        self.pending: dict[str, Node | None] = {}

    def get(self, path: str) -> Node | None:
        """The node at ``path`` including this batch's own changes."""
        if path in self.pending:
            return self.pending[path]
        return self.view.get(path)

    def peek(self, path: str) -> Node | None:
        """Like :meth:`get`, but a transaction does not record the read."""
        if path in self.pending:
            return self.pending[path]
        return self.view.peek(path)

    def put(self, path: str, node: Node) -> None:
        """Stage a new version of the node at ``path``."""
        self.pending[path] = node

    def delete(self, path: str) -> None:
        """Stage the removal of the node at ``path``."""
        self.pending[path] = None

    def owner_delta(self) -> Counter[int]:
        """How the batch changes the number of nodes each domain owns."""
        delta: Counter[int] = Counter()
        for path, new in self.pending.items():
            old = self.view.get(path)
            if old is not None:
                delta[old.owner] -= 1
            if new is not None:
                delta[new.owner] += 1
        return delta

    def commit(self) -> None:
        """Apply the staged changes to the view."""
        if self.pending:
            self.view.apply(self.pending)


class Tree:
    """Tree requests of one connection against one view."""

    def __init__(self, view: View, conn: Connection, quotas: Quotas) -> None:
        self.view = view
        self.conn = conn
        self.quotas = quotas
        self.limited = not conn.privileged

    # --- lookups with permission checks ---------------------------------------

    def _ancestor_access(self, batch: Batch, path: str) -> XsPerm:
        """What the nearest existing ancestor of ``path`` grants (core.c ``ask_parents``)."""
        name = parent_path(path)
        node = batch.get(name)
        while node is None and name != "/":
            name = parent_path(name)
            node = batch.get(name)
        if node is None:
            return XsPerm.NONE
        return perm_for_conn(self.conn, node.perms)

    def _get(self, batch: Batch, path: str, want: XsPerm) -> Node:
        """The node at ``path`` if the caller has ``want`` on it (core.c ``get_node``).

        Raises ``ENOENT`` or ``EACCES`` as described in the module docstring.
        """
        node = batch.get(path)
        if node is not None and perm_for_conn(self.conn, node.perms) & want == want:
            return node
        error = "ENOENT" if node is None else "EACCES"
        if self._ancestor_access(batch, path) & want:
            raise XsError(error)
        raise XsError("EACCES")

    # --- quota checks -----------------------------------------------------------

    def _check_quotas(self, batch: Batch, sized: bool = True) -> None:
        """Refuse a batch that breaks the ``nodes`` or ``node-size`` quota."""
        if not self.limited:
            return
        delta = batch.owner_delta()
        own = delta[self.conn.domid]
        if own > 0 and self.view.count_owned(self.conn.domid) + own > self.quotas.nodes:
            raise XsError("ENOSPC")
        if sized:
            for node in batch.pending.values():
                if node is not None and node.acc_size > self.quotas.node_size:
                    raise XsError("ENOSPC")

    # --- reads ------------------------------------------------------------------

    def read(self, path: str) -> bytes:
        """READ: the node's value."""
        return self._get(Batch(self.view), path, XsPerm.READ).value

    def directory(self, path: str) -> bytes:
        """DIRECTORY: the names of the node's children, in creation order, each nul-terminated (the reply)."""
        return self._get(Batch(self.view), path, XsPerm.READ).children_blob()

    def directory_part(self, path: str, offset: int) -> bytes:
        """DIRECTORY_PART reply: generation, then children from byte ``offset``.

        Follows core.c ``send_directory_part``: the reply fits the payload
        limit, and ends with an extra nul once the list is complete.
        """
        node = self._get(Batch(self.view), path, XsPerm.READ)
        gen = str(node.generation).encode("ascii") + b"\0"
        blob = node.children_blob()
        total = len(blob)
        if offset >= total:
            return gen + b"\0"
        maxlen = XENSTORE_PAYLOAD_MAX - len(gen) - 1
        pos = offset
        length = 0
        while True:
            nul = blob.index(b"\0", pos)
            if length + (nul - pos) >= maxlen:
                break
            length += nul - pos + 1
            pos = nul + 1
            if offset + length == total:
                break
        reply = gen + blob[offset : offset + length]
        if offset + length == total:
            reply += b"\0"
        return reply

    def get_perms(self, path: str) -> tuple[Permission, ...]:
        """GET_PERMS: the node's permission list."""
        return self._get(Batch(self.view), path, XsPerm.READ).perms

    def walk(self, path: str) -> Iterator[tuple[str, int, Node]]:
        """``path`` and each node below it the caller may read, with its depth below ``path``: parents first,
        children in creation order (core.c ``walk_node_tree``).

        What xenstore-ls learns from DIRECTORY, READ and GET_PERMS on every node, read in one pass:
        ``path`` itself fails as READ would (ENOENT, EACCES); a node below it that the caller may not read is
        left out with everything beneath it, as xenstore-ls moves on from a directory it cannot list.
        """
        batch = Batch(self.view)
        everything = self.conn.privileged
        stack = [(path, 0, self._get(batch, path, XsPerm.READ))]
        while stack:
            here, depth, node = stack.pop()
            yield here, depth, node
            below = []
            for name in node.children:
                child = child_path(here, name)
                found = batch.get(child)
                if found is not None and (everything or perm_for_conn(self.conn, found.perms) & XsPerm.READ):
                    below.append((child, depth + 1, found))
            stack.extend(reversed(below))

    # --- changes ----------------------------------------------------------------

    def _create(self, batch: Batch, path: str, value: bytes) -> Node:
        """Stage ``path`` and its missing ancestors (core.c ``construct_node``)."""
        missing = [path]
        parent_name = parent_path(path)
        parent = batch.get(parent_name)
        while parent is None:
            if parent_name == "/":
                raise XsError("ENOENT")
            missing.append(parent_name)
            parent_name = parent_path(parent_name)
            parent = batch.get(parent_name)
        node = parent
        for name in reversed(missing):
            parent = parent.with_child(basename(name))
            batch.put(parent_name, parent)
            perms = parent.perms
            if self.limited:
                perms = (Permission(self.conn.domid, perms[0].access),) + perms[1:]
            node = Node(b"", b"", perms)
            batch.put(name, node)
            parent_name, parent = name, node
        node = node.with_value(value)
        batch.put(path, node)
        return node

    def _readers(self, batch: Batch, path: str, node: Node) -> tuple[tuple[Permission, ...], ...]:
        """Who may hear about a change of ``node``: its readers or its parent's."""
        parent = batch.peek(parent_path(path))
        if parent is None:
            return (node.perms,)
        return (node.perms, parent.perms)

    def write(self, path: str, value: bytes) -> list[Change]:
        """WRITE: set the value, creating the node and missing parents."""
        batch = Batch(self.view)
        try:
            node = self._get(batch, path, XsPerm.WRITE)
        except XsError as err:
            if err.errno_name != "ENOENT":
                raise
            node = self._create(batch, path, value)
        else:
            node = node.with_value(value)
            batch.put(path, node)
        self._check_quotas(batch)
        change = Change(path, False, self._readers(batch, path, node))
        batch.commit()
        return [change]

    def mkdir(self, path: str) -> list[Change]:
        """MKDIR: make sure the node exists; an existing node is left alone."""
        batch = Batch(self.view)
        try:
            self._get(batch, path, XsPerm.WRITE)
            return []
        except XsError as err:
            if err.errno_name != "ENOENT":
                raise
        node = self._create(batch, path, b"")
        self._check_quotas(batch)
        change = Change(path, False, self._readers(batch, path, node))
        batch.commit()
        return [change]

    def rm(self, path: str) -> list[Change]:
        """RM: remove the node and everything below it.

        A missing node is fine if its parent exists. The whole subtree goes
        whatever its owners: only the removed root needs WRITE.
        """
        batch = Batch(self.view)
        try:
            node = self._get(batch, path, XsPerm.WRITE)
        except XsError as err:
            if err.errno_name == "ENOENT" and batch.get(parent_path(path)) is not None:
                return []
            raise
        if path == "/":
            raise XsError("EINVAL")
        parent_name = parent_path(path)
        parent = batch.get(parent_name)
        if parent is None:
            raise XsError("EINVAL")
        changes: list[Change] = []
        # Depth-first, children before their parent, like core.c walk_node_tree's
        # exit callback; iterative because paths may nest over a thousand levels.
        stack: list[tuple[str, Node, tuple[Permission, ...], tuple[str, ...], int]]
        stack = [(path, node, parent.perms, node.children, 0)]
        while stack:
            name, current, parent_perms, children, index = stack[-1]
            if index < len(children):
                stack[-1] = (name, current, parent_perms, children, index + 1)
                sub = child_path(name, children[index])
                sub_node = batch.get(sub)
                if sub_node is not None:
                    stack.append((sub, sub_node, current.perms, sub_node.children, 0))
                continue
            stack.pop()
            batch.delete(name)
            changes.append(Change(name, name != path, (current.perms, parent_perms)))
        batch.put(parent_name, parent.without_child(basename(path)))
        self._check_quotas(batch, sized=False)
        batch.commit()
        return changes

    def set_perms(self, path: str, perms: tuple[Permission, ...]) -> list[Change]:
        """SET_PERMS: replace the node's permission list (owner or privileged only)."""
        batch = Batch(self.view)
        node = self._get(batch, path, XsPerm.WRITE | XsPerm.OWNER)
        if self.limited and perms[0].domid != node.owner:
            raise XsError("EPERM")
        new = node.with_perms(perms)
        batch.put(path, new)
        self._check_quotas(batch)
        readers = (node.perms,) + self._readers(batch, path, new)
        batch.commit()
        return [Change(path, False, readers)]

    def chown_orphan(self, path: str, owner: int) -> None:
        """Give a node a new owner without checks or events (release with keep-orphans)."""
        batch = Batch(self.view)
        node = batch.get(path)
        if node is None:
            return
        perms = (Permission(owner, node.perms[0].access),) + node.perms[1:]
        batch.put(path, node.with_perms(perms))
        batch.commit()
