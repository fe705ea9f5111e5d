"""Xenstore operations: ``xenstore-read``, ``-write``, ``-rm``, ``-ls``, ``-watch`` (``tools/xenstore/``'s clients).

They act with dom0's own connection, so dom0's permissions; a watch gets a
connection of its own, whose events stream to the client until it unwatches.
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, Any

from xenlike.public.toolstack_wire import Table
from xenlike.public.xs_wire import Permission, XsError, join_strings, parse_error_payload
from xenlike.public.xs_wire import XsdSockmsgType as XS

from ..xenstored import Delivery
from .request import Request, ToolstackError

if TYPE_CHECKING:
    from .server import Toolstack

__all__ = ["read", "write", "rm", "ls", "watch", "unwatch"]

log = logging.getLogger("dom0.toolstack")

#: Events of one xenstore-watch that may go undelivered (its client went, or reads nothing) before the
#: watch is removed: what a guest's writes under the path would otherwise cost dom0 for ever.
WATCH_UNDELIVERED_MAX = 1000


# What xenstored's error names mean to someone who typed a path.
_MEANING = {
    "ENOENT": "no such node",
    "EACCES": "permission denied",
    "EINVAL": "not a valid path: letters, digits and -/_@, single slashes, none at the end",
    "E2BIG": "too long",
    "ENOSPC": "a quota is exhausted",
    "EISDIR": "it is a directory",
}


def _refused(action: str, path: str, err: XsError) -> ToolstackError:
    """xenstore_client.c's ``couldn't read path %s``, with xenstored's error and what it means."""
    meaning = _MEANING.get(err.errno_name)
    return ToolstackError(f"cannot {action} {path}: {err.errno_name}" + (f" ({meaning})" if meaning else ""))


def read(ts: Toolstack, request: Request) -> Any:
    path = request.args["path"]
    try:
        return ts.xs.read(path)
    except XsError as err:
        raise _refused("read", path, err) from None


def write(ts: Toolstack, request: Request) -> Any:
    path = request.args["path"]
    try:
        ts.xs.write(path, request.args["value"])
    except XsError as err:
        raise _refused("write", path, err) from None
    return {}


def rm(ts: Toolstack, request: Request) -> Any:
    path = request.args["path"]
    try:
        ts.xs.rm(path)
    except XsError as err:
        raise _refused("remove", path, err) from None
    return {}


def ls(ts: Toolstack, request: Request) -> Any:
    """Every node below ``path`` with value and permissions, depth first (xenstore-ls), as a
    :class:`~xenlike.public.toolstack_wire.Table` of ``LS_KEYS``."""
    path = request.args.get("path") or "/"
    try:
        return _walk(ts, path)
    except XsError as err:
        raise _refused("list", path, err) from None


# xenstore-ls's rows: the node's path (below ``path`` as the caller spelt it), its depth below that, its
# name, its value and its permissions in xenstore-ls -p's spelling ("n0 r1").
LS_KEYS = ("path", "depth", "name", "value", "perms")


def _walk(ts: Toolstack, top: str) -> Table:
    # One walk in xenstored, not DIRECTORY, READ and GET_PERMS per node: a host of thousands of guests has a
    # hundred thousand nodes, and dom0's loop serves nobody else while it lists them.
    nodes = ts.xs.walk(top)
    canonical, prefix = nodes[0][0].rstrip("/"), top.rstrip("/")
    below = nodes[1:]
    paths = [prefix + here[len(canonical) :] for here, _depth, _value, _perms in below]
    return Table(
        LS_KEYS,
        (
            paths,
            [depth - 1 for _here, depth, _value, _perms in below],
            [here.rpartition("/")[2] for here in paths],
            [value for _here, _depth, value, _perms in below],
            [_perms_text(perms) for _here, _depth, _value, perms in below],
        ),
    )


@functools.lru_cache(maxsize=4096)
def _perms_text(perms: tuple[Permission, ...]) -> str:
    """A permission list as xenstore-ls -p shows it (most nodes share a handful of lists)."""
    return " ".join(map(str, perms))


def watch(ts: Toolstack, request: Request) -> Any:
    """Stream watch events on ``path`` to this client until it unwatches (the watch's id is this request's)."""
    path = request.args["path"]
    token = f"cli-{request.call_id}"

    undelivered = [0]

    def receive(delivery: Delivery) -> None:
        fields = delivery.payload.split(b"\0")
        if request.event({"path": fields[0].decode(errors="replace"), "token": token}):
            return
        undelivered[0] += 1
        if undelivered[0] >= WATCH_UNDELIVERED_MAX:  # the client is gone (or reads nothing): the watch goes
            log.info("xenstore-watch %s: %d events not delivered; the watch is removed", path, undelivered[0])
            ts.xenstore_watches.pop((request.identity, request.call_id), None)
            service.daemon.disconnect(conn)

    service = ts.xenstore_service
    conn = service.local_client(receive)
    reply = service.daemon.handle(conn, XS.WATCH, 1, 0, join_strings([path, token]))
    if reply and reply[0].msg_type == XS.ERROR:
        service.daemon.disconnect(conn)
        raise _refused("watch", path, XsError(parse_error_payload(reply[0].payload)))
    ts.xenstore_watches[(request.identity, request.call_id)] = conn
    service.route(reply[1:])
    return {"token": token}


def unwatch(ts: Toolstack, request: Request) -> Any:
    conn = ts.xenstore_watches.pop((request.identity, request.args["watch_id"]), None)
    if conn is not None:
        ts.xenstore_service.daemon.disconnect(conn)
    return {}
