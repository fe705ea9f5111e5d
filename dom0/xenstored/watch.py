"""Watches and the events they produce (tools/xenstored/watch.c).

A watch ``(path, token)`` matches every change at or below ``path`` -- a
create, a value change, a delete or a permission change -- limited to
``depth`` levels below it when a depth was given (the WATCHDEPTH feature).
Removing a subtree fires the removed root for every watch at or above it, and
each removed descendant only for watches set exactly on it, so a watcher on
a deleted descendant still learns about it (xenstore.txt "WATCH_EVENT").

An event reaches a connection only if that connection may read the changed
node or its parent, judged with the permissions before and after the change
(watch.c ``watch_permitted``).

``@introduceDomain`` and ``@releaseDomain`` fire on domain introduction and
release. With depth 1 the event path carries the domain id
(``@releaseDomain/<domid>``), and ``@releaseDomain/<domid>`` may be watched
to hear about one domain only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from xenlike.public.xs_wire import Permission, is_special_path

from .node import is_child, levels_below

if TYPE_CHECKING:
    from .connection import Connection

__all__ = ["Watch", "Change", "WatchIndex", "match_change", "match_special"]


@dataclass(frozen=True, slots=True)
class Watch:
    """One registered watch.

    ``path`` is canonical (absolute or ``@``-special); ``prefix_len`` is how
    much of it to strip from event paths for a watch registered with a
    relative path, so its events are relative too.
    """

    path: str
    token: bytes
    prefix_len: int = 0
    depth: int | None = None

    @property
    def requested_path(self) -> str:
        """The path as the client gave it (relative if it was relative)."""
        return self.path[self.prefix_len :]

    def event_path(self, path: str) -> str:
        """The path reported to this watch's client for a change at ``path``."""
        return path[self.prefix_len :]


class Change(NamedTuple):
    """A modification that may fire watches.

    ``exact`` changes only match watches set exactly on ``path`` (the
    descendants of a removed subtree). ``readers`` are the permission lists
    that decide who may hear about it: a connection that can read under any
    of them gets the event.
    """

    path: str
    exact: bool
    readers: tuple[tuple[Permission, ...], ...]


def match_change(watch: Watch, path: str, exact: bool) -> bool:
    """True if a change at ``path`` fires ``watch`` (watch.c ``fire_watches``)."""
    if is_special_path(watch.path):
        return False
    if exact:
        return watch.path == path
    if not is_child(path, watch.path):
        return False
    return watch.depth is None or levels_below(path, watch.path) <= watch.depth


def match_special(watch: Watch, name: str, domid: int) -> str | None:
    """The event path a special event ``name`` about ``domid`` gives ``watch``, or None."""
    if watch.path == name:
        return f"{name}/{domid}" if watch.depth == 1 else name
    if watch.path == f"{name}/{domid}":
        return watch.path
    return None


class WatchIndex:
    """Which connections watch which paths, so a change looks only at its ancestors.

    C xenstored walks every connection for every change; with hundreds of
    domains, each watching its own ``control/shutdown``, that makes writing a
    new domain's nodes cost more the more domains exist. A change at
    ``/a/b/c`` can only fire watches set on ``/``, ``/a``, ``/a/b`` or ``/a/b/c``,
    so those are the only entries looked up. ``@introduceDomain`` and
    ``@releaseDomain`` look up their watchers the same way, not every connection.
    """

    def __init__(self) -> None:
        self._by_path: dict[str, dict[int, Connection]] = {}

    def add(self, conn_id: int, conn: Connection, path: str) -> None:
        self._by_path.setdefault(path, {})[conn_id] = conn

    def discard(self, conn_id: int, path: str) -> None:
        watchers = self._by_path.get(path)
        if watchers is not None:
            watchers.pop(conn_id, None)
            if not watchers:
                del self._by_path[path]

    def candidates(self, path: str, exact: bool) -> list[Connection]:
        """Connections with a watch on ``path`` or (unless ``exact``) an ancestor, by id."""
        return self.watchers(*((path,) if exact else _ancestors(path)))

    def watchers(self, *paths: str) -> list[Connection]:
        """Connections with a watch set exactly on one of ``paths``, by id."""
        found: dict[int, Connection] = {}
        for path in paths:
            found.update(self._by_path.get(path, {}))
        return [found[key] for key in sorted(found)]


def _ancestors(path: str) -> list[str]:
    """``/a/b`` -> ``["/", "/a", "/a/b"]``."""
    if path == "/":
        return ["/"]
    parts = path.split("/")
    return ["/"] + ["/".join(parts[: i + 1]) for i in range(1, len(parts))]
