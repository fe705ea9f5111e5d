"""A typed xenstore client for code running inside the dom0 process.

The toolstack runs in the same process as xenstored, so it needs no socket:
:class:`LocalXenstore` sends every call through :meth:`Xenstored.handle` on a
connection of its own (privileged by default, like libxenstore on dom0's
socket). Calls therefore get exactly the checks, errors and watch events of
wire requests -- it is the moral equivalent of libxenstore's ``xs_*``
functions (tools/libs/store/xs.c) on top of the dispatcher.

Failures raise :class:`~xenlike.public.xs_wire.XsError` carrying the errno name.
Watch events for this client are queued on :attr:`LocalXenstore.events`;
events it causes for other connections go to the daemon's sink or outbox.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import TypeVar

from xenlike.public.xs_wire import (
    Permission,
    XsdSockmsgType,
    XsError,
    join_strings,
    one_arg,
    parse_error_payload,
    parse_perm,
    parse_perms,
    split_strings,
)

from .connection import Connection
from .server import Delivery, Xenstored

__all__ = ["LocalXenstore", "PermSpec"]

T = XsdSockmsgType
R = TypeVar("R")

#: A permission given either decoded or as its wire string (``"r5"``).
PermSpec = Permission | str

#: How often :meth:`LocalXenstore.transact` retries a conflicting transaction.
MAX_TRANSACTION_RETRIES = 100


def _encode_value(value: bytes | str) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def _encode_perms(perms: Iterable[PermSpec]) -> list[str]:
    return [str(parse_perm(p) if isinstance(p, str) else p) for p in perms]


class LocalXenstore:
    """In-process xenstore client over a :class:`Xenstored`.

    ``tx`` arguments take a transaction id from :meth:`transaction_start`
    (0: no transaction).
    """

    def __init__(self, daemon: Xenstored, domid: int = 0, *, privileged: bool | None = None) -> None:
        self.daemon = daemon
        self.events: deque[tuple[str, bytes]] = deque()
        self.conn: Connection = daemon.connect(domid, privileged, receiver=self._receive)
        self._next_req_id = 0

    # --- plumbing ---------------------------------------------------------------

    def _receive(self, delivery: Delivery) -> None:
        fields = split_strings(delivery.payload)
        if delivery.msg_type == T.WATCH_EVENT and len(fields) >= 2:
            self.events.append((fields[0].decode("ascii"), fields[1]))

    def request(self, msg_type: int, payload: bytes, tx: int = 0) -> bytes:
        """Send one raw request and return the reply payload, or raise ``XsError``."""
        self._next_req_id = (self._next_req_id + 1) & 0xFFFFFFFF
        deliveries = self.daemon.handle(self.conn, msg_type, self._next_req_id, tx, payload)
        if not deliveries:
            raise XsError("EIO", "connection is closed")
        reply, others = deliveries[0], deliveries[1:]
        self.daemon.deliver(others)
        if reply.msg_type == T.ERROR:
            raise XsError(parse_error_payload(reply.payload))
        return reply.payload

    def pop_events(self) -> list[tuple[str, bytes]]:
        """Take every queued watch event as ``(path, token)``."""
        out = list(self.events)
        self.events.clear()
        return out

    def close(self) -> None:
        """Disconnect; the client's watches and transactions are dropped."""
        self.daemon.disconnect(self.conn)

    # --- nodes ------------------------------------------------------------------

    def read(self, path: str, tx: int = 0) -> bytes:
        """The value at ``path``."""
        return self.request(T.READ, join_strings([path]), tx)

    def exists(self, path: str, tx: int = 0) -> bool:
        """True if ``path`` exists (and is readable)."""
        try:
            self.read(path, tx)
        except XsError as err:
            if err.errno_name == "ENOENT":
                return False
            raise
        return True

    def write(self, path: str, value: bytes | str, perms: Iterable[PermSpec] | None = None, tx: int = 0) -> None:
        """Set ``path`` to ``value``, creating missing parents.

        With ``perms`` the node also gets that permission list; outside a
        transaction both happen in one, so watchers never see the node with
        its inherited permissions.
        """
        data = join_strings([path]) + _encode_value(value)
        if perms is None:
            self.request(T.WRITE, data, tx)
            return
        encoded = _encode_perms(perms)
        if tx:
            self.request(T.WRITE, data, tx)
            self.request(T.SET_PERMS, join_strings([path, *encoded]), tx)
            return

        def both(t: int) -> None:
            self.request(T.WRITE, data, t)
            self.request(T.SET_PERMS, join_strings([path, *encoded]), t)

        self.transact(both)

    def mkdir(self, path: str, perms: Iterable[PermSpec] | None = None, tx: int = 0) -> None:
        """Make sure ``path`` exists, optionally with a permission list."""
        if perms is None:
            self.request(T.MKDIR, join_strings([path]), tx)
            return
        encoded = _encode_perms(perms)

        def both(t: int) -> None:
            self.request(T.MKDIR, join_strings([path]), t)
            self.request(T.SET_PERMS, join_strings([path, *encoded]), t)

        if tx:
            both(tx)
        else:
            self.transact(both)

    def rm(self, path: str, tx: int = 0) -> None:
        """Remove ``path`` and everything below it."""
        self.request(T.RM, join_strings([path]), tx)

    def directory(self, path: str, tx: int = 0) -> list[str]:
        """The names of the children of ``path``; a list too long for one reply (E2BIG: the children
        of ``/local/domain`` on a host of a few hundred guests) is read in parts, as libxenstore's
        ``xs_directory`` falls back to ``xs_directory_part``."""
        try:
            reply = self.request(T.DIRECTORY, join_strings([path]), tx)
        except XsError as err:
            if err.errno_name != "E2BIG":
                raise
            return self._directory_in_parts(path, tx)
        return [name.decode("ascii") for name in split_strings(reply)]

    def _directory_in_parts(self, path: str, tx: int) -> list[str]:
        """XS_DIRECTORY_PART from offset 0 until the reply that ends the list (an extra nul); started
        again if the node's generation changes between parts, as ``xs_directory_part`` does."""
        while True:
            names: list[bytes] = []
            offset, generation = 0, None
            while True:
                reply = self.request(T.DIRECTORY_PART, join_strings([path, str(offset)]), tx)
                gen, _, chunk = reply.partition(b"\0")
                if generation is not None and gen != generation:
                    break  # the directory changed meanwhile
                generation = gen
                done = chunk == b"\0" or chunk.endswith(b"\0\0")
                if done:
                    chunk = chunk[:-1]
                names.extend(split_strings(chunk))
                offset += len(chunk)
                if done:
                    return [name.decode("ascii") for name in names]

    def walk(self, path: str, tx: int = 0) -> list[tuple[str, int, bytes, tuple[Permission, ...]]]:
        """``(path, depth, value, perms)`` of ``path`` and every readable node below it, parents first: what
        DIRECTORY, READ and GET_PERMS on each would give, in one call to the daemon (xenstore-ls's walk)."""
        return self.daemon.walk(self.conn, path, tx)

    def get_perms(self, path: str, tx: int = 0) -> list[Permission]:
        """The permission list of ``path`` (entry 0 is the owner)."""
        return list(parse_perms(split_strings(self.request(T.GET_PERMS, join_strings([path]), tx))))

    def set_perms(self, path: str, perms: Iterable[PermSpec], tx: int = 0) -> None:
        """Replace the permission list of ``path``."""
        self.request(T.SET_PERMS, join_strings([path, *_encode_perms(perms)]), tx)

    # --- watches ----------------------------------------------------------------

    def watch(self, path: str, token: bytes | str, depth: int | None = None) -> None:
        """Watch ``path``; it fires once at once, then on every change below it."""
        fields: list[bytes | str] = [path, _encode_value(token)]
        if depth is not None:
            fields.append(str(depth))
        self.request(T.WATCH, join_strings(fields))

    def unwatch(self, path: str, token: bytes | str) -> None:
        """Remove a watch set with the same path and token."""
        self.request(T.UNWATCH, join_strings([path, _encode_value(token)]))

    # --- transactions -----------------------------------------------------------

    def transaction_start(self) -> int:
        """Open a transaction and return its id."""
        reply = self.request(T.TRANSACTION_START, b"\0")
        return int(one_arg(reply) or b"0")

    def transaction_end(self, tx: int, commit: bool = True) -> bool:
        """Commit (or abort) ``tx``; False if the commit conflicted (EAGAIN)."""
        try:
            self.request(T.TRANSACTION_END, b"T\0" if commit else b"F\0", tx)
        except XsError as err:
            if err.errno_name == "EAGAIN":
                return False
            raise
        return True

    def transact(self, body: Callable[[int], R]) -> R:
        """Run ``body(tx)`` in a transaction, retrying it whole on EAGAIN.

        An ``XsError`` raised by ``body`` aborts the transaction and propagates.
        """
        for _ in range(MAX_TRANSACTION_RETRIES):
            tx = self.transaction_start()
            try:
                result = body(tx)
            except BaseException:
                self.transaction_end(tx, commit=False)
                raise
            if self.transaction_end(tx):
                return result
        raise XsError("EAGAIN", "transaction kept conflicting")

    # --- domains and quotas -----------------------------------------------------

    def introduce(self, domid: int, gfn: int, evtchn: int) -> None:
        """INTRODUCE a domain (dom0 only)."""
        self.request(T.INTRODUCE, join_strings([str(domid), str(gfn), str(evtchn)]))

    def release(self, domid: int) -> None:
        """RELEASE a domain (dom0 only)."""
        self.request(T.RELEASE, join_strings([str(domid)]))

    def is_domain_introduced(self, domid: int) -> bool:
        """True if xenstored serves ``domid`` (dom0 only)."""
        return self.request(T.IS_DOMAIN_INTRODUCED, join_strings([str(domid)])) == b"T\0"

    def get_domain_path(self, domid: int) -> str:
        """``/local/domain/<domid>``, as xenstored computes it."""
        return (one_arg(self.request(T.GET_DOMAIN_PATH, join_strings([str(domid)]))) or b"").decode("ascii")

    def get_quota(self, name: str, domid: int | None = None) -> int:
        """One quota, global or for ``domid`` (dom0 only)."""
        fields = [name] if domid is None else [str(domid), name]
        return int(one_arg(self.request(T.GET_QUOTA, join_strings(fields))) or b"0")

    def set_quota(self, name: str, value: int, domid: int | None = None) -> None:
        """Change one quota, global or for ``domid`` (dom0 only)."""
        fields = [name, str(value)] if domid is None else [str(domid), name, str(value)]
        self.request(T.SET_QUOTA, join_strings(fields))
