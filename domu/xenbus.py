"""The guest's xenstore client over its xenstore ring (Linux ``xenbus_comms.c``/``xenbus_xs.c``).

Requests are ``xsd_sockmsg`` messages written into the ``req`` half of the
``xenstore_domain_interface`` page; replies and watch events come back on ``rsp``.
A :class:`~xenlike.kernel.byte_channel.ByteChannel` moves the bytes and signals
the event channel; this module frames them (``xs_wire.MessageReader``) and
matches replies to requests by ``req_id``.

If xenstored stops serving the ring (the guest broke the protocol: the connection
error feature of docs/misc/xenstore-ring.txt), it says why in the page's ``error``
field and kicks the event channel; the client then fails every request waiting for a
reply, and every later one at once, with EIO naming that error, rather than waiting
out its timeout.

Threads: the kernel's event-loop thread is the only reader of the ring. Blocking
calls (:meth:`read`, :meth:`write`, ...) are for other threads (the workload); code
running in the loop thread uses :meth:`request_async`, since it cannot wait for a
reply only it could read. A request is registered under the client's lock before
its bytes are written, so its reply always finds it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from xenlike.kernel.byte_channel import ByteChannel
from xenlike.kernel.events import EventLoop
from xenlike.public.xs_wire import (
    MessageReader,
    Permission,
    XenstoreInterface,
    XsError,
    describe_ring_error,
    format_perm,
    join_strings,
    pack_msg,
    parse_error_payload,
    parse_perms,
    split_strings,
)
from xenlike.public.xs_wire import XsdSockmsgType as XS

__all__ = ["XenbusClient", "XsError", "Transaction"]

log = logging.getLogger("domu.xenbus")

WatchCallback = Callable[[str, str], None]
ReplyCallback = Callable[[int, bytes], None]


@dataclass
class _Pending:
    done: threading.Event = field(default_factory=threading.Event)
    type: int = 0
    payload: bytes = b""
    callback: ReplyCallback | None = None
    stopped: int = 0  # failed because xenstored stopped serving the ring: the page's error


class XenbusClient:
    """A domain's connection to xenstored (``ctx.xenstore``).

    Paths without a leading ``/`` are relative to the domain's home,
    ``/local/domain/<domid>``, as xenstored resolves them; the empty path and
    ``.``/``..`` components are EINVAL.

    Types follow libxenstore and Linux's ``xenbus_read``: a node's value is
    bytes (:meth:`read`; xenstore stores bytes, and a value may be binary), and
    :meth:`read_str` is the text form most callers want. Names are text:
    :meth:`directory` gives ``list[str]``, watch callbacks get ``str`` path and
    token, :meth:`get_domain_path` a ``str``. :meth:`write` takes either.

    Every refusal is :class:`~xenlike.public.xs_wire.XsError`, whose
    ``errno_name`` is xenstored's: ENOENT for a missing node (EACCES instead if
    the domain could not read its nearest existing parent), EACCES for a node the
    domain may not read or write, EINVAL for a bad path, EEXIST for a watch token
    in use, EAGAIN for a transaction that must be retried, ENOSPC or E2BIG over a
    quota. A request over 4096 bytes is refused before it is sent
    (``XsWireError``).
    """

    def __init__(self, interface: XenstoreInterface, loop: EventLoop, port: int, label: str) -> None:
        self.interface = interface
        self.loop = loop
        self.port = port
        self.label = label
        self.loop_thread: int | None = None  # set by the kernel when its loop starts
        self._lock = threading.Lock()  # request ids and the pending table
        self._reader = MessageReader()
        self._pending: dict[int, _Pending] = {}
        self._next_req = 0
        self._watches: dict[str, WatchCallback] = {}
        self._channel = ByteChannel(interface.req, interface.rsp, lambda: loop.notify(port), self._on_data)
        self._stopped = 0  # the page's error (XENSTORE_ERROR_*) once xenstored stopped serving the ring
        loop.set_handler(port, lambda _port: self._on_event())

    # -- transport ---------------------------------------------------------------------

    def _on_event(self) -> None:
        """The event channel fired: xenstored answered, made room, or stopped serving the ring."""
        if self._stopped:
            return
        code = self.interface.error
        if code:
            self._stop(code)
            return
        self._channel.on_event()

    def _stop(self, code: int) -> None:
        """xenstored set the page's ``error``: no reply is coming; fail what waits for one (in the loop thread)."""
        with self._lock:
            self._stopped = code
            waiting, self._pending = self._pending, {}
        self._channel.close()
        log.error("%s: xenstored stopped serving this domain's ring: %s", self.label, describe_ring_error(code))
        for pending in waiting.values():
            pending.type, pending.payload, pending.stopped = XS.ERROR, b"EIO\0", code
            if pending.callback is not None:
                pending.callback(XS.ERROR, pending.payload)
            pending.done.set()

    @staticmethod
    def _refusal(msg_type: int, code: int) -> XsError:
        why = describe_ring_error(code)
        return XsError("EIO", f"{XS(msg_type).name}: xenstored stopped serving this domain's ring: {why}")

    def _send(self, msg_type: int, payload: bytes, tx_id: int, pending: _Pending) -> None:
        with self._lock:
            code = self._stopped or self.interface.error  # the page may say so before its event is handled
            if code:
                raise self._refusal(msg_type, code)
            self._next_req = (self._next_req + 1) & 0xFFFFFFFF
            req_id = self._next_req
            message = pack_msg(msg_type, req_id, tx_id, payload)
            self._pending[req_id] = pending
            self._channel.write(message)  # under our lock: requests reach the ring in req_id order

    def _on_data(self, data: bytes) -> None:
        """Bytes off ``rsp`` (in the loop thread): replies and watch events."""
        for message in self._reader.feed(data):
            self._dispatch(message.type, message.req_id, message.payload)

    def _dispatch(self, msg_type: int, req_id: int, payload: bytes) -> None:
        if msg_type == XS.WATCH_EVENT:
            fields = [f.decode(errors="replace") for f in split_strings(payload)]
            callback = self._watches.get(fields[1]) if len(fields) >= 2 else None  # one look: unwatch may race
            if callback is not None:
                try:
                    callback(fields[0], fields[1])
                except Exception:
                    log.exception("%s: watch callback for %s failed", self.label, fields[1])
            return
        with self._lock:
            pending = self._pending.pop(req_id, None)
        if pending is None:
            log.warning("%s: xenstore reply to unknown request %d", self.label, req_id)
            return
        pending.type, pending.payload = msg_type, payload
        if pending.callback is not None:
            pending.callback(msg_type, payload)
        pending.done.set()

    # -- requests ----------------------------------------------------------------------

    def request(self, msg_type: int, payload: bytes, tx_id: int = 0, timeout: float = 30.0) -> bytes:
        """Send one request and wait for its reply payload; XsError on an ERROR reply.

        TimeoutError if xenstored does not answer in ``timeout`` seconds;
        RuntimeError from the event-loop thread (a watch callback), which must use
        :meth:`request_async`.
        """
        if threading.get_ident() == self.loop_thread:
            raise RuntimeError("a blocking xenstore call from the event-loop thread would deadlock; use request_async")
        pending = _Pending()
        self._send(msg_type, payload, tx_id, pending)
        if not pending.done.wait(timeout):
            raise TimeoutError(f"{self.label}: xenstored did not answer {XS(msg_type).name} in {timeout:g}s")
        if pending.type == XS.ERROR:
            if pending.stopped:
                raise self._refusal(msg_type, pending.stopped)
            name = parse_error_payload(pending.payload)
            raise XsError(name, f"{XS(msg_type).name}: {name}")
        return pending.payload

    def request_async(
        self, msg_type: int, payload: bytes, callback: ReplyCallback | None = None, tx_id: int = 0
    ) -> None:
        """Send one request; ``callback(type, payload)`` runs in the loop thread on reply."""
        self._send(msg_type, payload, tx_id, _Pending(callback=callback))

    # -- the xenstore API --------------------------------------------------------------

    def read(self, path: str, tx: int = 0) -> bytes:
        """A node's value, the bytes stored (``b""`` for a directory); XsError ENOENT if there is no such node."""
        return self.request(XS.READ, _path(path), tx)

    def read_str(self, path: str, default: str | None = None, tx: int = 0) -> str | None:
        """A node's value decoded as UTF-8, or ``default`` if it does not exist.

        Other refusals (EACCES, ...) raise XsError; a value that is not UTF-8
        raises UnicodeDecodeError.
        """
        try:
            return self.read(path, tx).decode()
        except XsError as exc:
            if exc.errno_name == "ENOENT":
                return default
            raise

    def write(self, path: str, value: bytes | str, tx: int = 0) -> None:
        """Set a node's value (a str is UTF-8 encoded), creating it and missing parents.

        A guest may write only where it was given write permission: its
        ``data``, ``control``, ``device`` front ends and the other nodes the
        toolstack makes writable (EACCES elsewhere).
        """
        data = value.encode() if isinstance(value, str) else value
        self.request(XS.WRITE, _path(path) + data, tx)

    def write_async(self, path: str, value: bytes | str) -> None:
        """:meth:`write` without waiting, for the event-loop thread; a refusal is only logged."""
        data = value.encode() if isinstance(value, str) else value
        self.request_async(XS.WRITE, _path(path) + data, self._log_error(f"write {path}"))

    def mkdir(self, path: str, tx: int = 0) -> None:
        """Create an empty node and missing parents; nothing happens if it exists."""
        self.request(XS.MKDIR, _path(path), tx)

    def rm(self, path: str, tx: int = 0) -> None:
        """Remove a node and everything below it; a missing node whose parent exists is no error (ENOENT if not)."""
        self.request(XS.RM, _path(path), tx)

    def directory(self, path: str, tx: int = 0) -> list[str]:
        """The names of a node's children, in the order they were created; XsError ENOENT if there is no such node."""
        return [c.decode() for c in split_strings(self.request(XS.DIRECTORY, _path(path), tx))]

    def get_perms(self, path: str, tx: int = 0) -> tuple[Permission, ...]:
        """A node's permission list: entry 0 is the owner and everyone's default access."""
        return parse_perms(split_strings(self.request(XS.GET_PERMS, _path(path), tx)))

    def set_perms(self, path: str, perms: Iterable[Permission], tx: int = 0) -> None:
        """Replace a node's permission list (:class:`~xenlike.public.xs_wire.Permission` entries); its owner only."""
        self.request(XS.SET_PERMS, join_strings([path, *(format_perm(p) for p in perms)]), tx)

    def get_domain_path(self, domid: int) -> str:
        """The home of domain ``domid``: ``/local/domain/<domid>``."""
        return self.request(XS.GET_DOMAIN_PATH, _path(str(domid))).rstrip(b"\0").decode()

    def watch(self, path: str, token: str, callback: WatchCallback) -> None:
        """Register a watch on ``path`` and everything below it; ``callback(path, token)`` runs in the loop thread.

        As in xenstored, a new watch fires once at once (with ``path`` itself),
        then once per change with the path that changed. ``token`` tells watches
        apart: a token already in use is XsError EEXIST. The callback must not
        make blocking xenstore calls (RuntimeError); it should hand work to
        another thread or use the ``*_async`` calls. An exception in it is logged.
        """
        self._claim_token(token, callback)
        try:
            self.request(XS.WATCH, join_strings([path, token]))
        except BaseException:
            self._release_token(token, callback)
            raise

    def watch_async(self, path: str, token: str, callback: WatchCallback) -> None:
        """:meth:`watch` without waiting, for the event-loop thread; a refusal is only logged."""
        self._claim_token(token, callback)
        log_error = self._log_error(f"watch {path}")

        def answered(msg_type: int, payload: bytes) -> None:
            if msg_type == XS.ERROR:
                self._release_token(token, callback)
            log_error(msg_type, payload)

        self.request_async(XS.WATCH, join_strings([path, token]), answered)

    def unwatch(self, path: str, token: str) -> None:
        """Remove the watch ``(path, token)``; XsError ENOENT if there is none."""
        callback = self._watches.get(token)
        self.request(XS.UNWATCH, join_strings([path, token]))
        if callback is not None:
            self._release_token(token, callback)

    def _claim_token(self, token: str, callback: WatchCallback) -> None:
        """Route ``token``'s events to ``callback``; XsError EEXIST if a watch of this client has it already."""
        with self._lock:
            if token in self._watches:
                raise XsError("EEXIST", f"WATCH: the token {token!r} is in use by another watch")
            self._watches[token] = callback

    def _release_token(self, token: str, callback: WatchCallback) -> None:
        """Stop routing ``token``'s events, if they still go to ``callback`` (not to a watch made since)."""
        with self._lock:
            if self._watches.get(token) is callback:
                del self._watches[token]

    def transaction(self) -> Transaction:
        """``with client.transaction() as t:`` ... commits on exit; XsError EAGAIN from the exit means retry.

        Leaving the block by an exception aborts the transaction instead.
        """
        return Transaction(self)

    def _log_error(self, what: str) -> ReplyCallback:
        def check(msg_type: int, payload: bytes) -> None:
            if msg_type == XS.ERROR:
                log.warning("%s: xenstore %s failed: %s", self.label, what, parse_error_payload(payload))

        return check


class Transaction:
    """A xenstore transaction: reads and writes inside it see one consistent store.

    Its calls are the client's, with the same types and errors. The end commits,
    unless the ``with`` block raised; a commit that conflicts with a change made
    meanwhile raises XsError EAGAIN and changes nothing: run the block again.
    """

    def __init__(self, client: XenbusClient) -> None:
        self.client = client
        self.id = 0

    def __enter__(self) -> Transaction:
        self.id = int(self.client.request(XS.TRANSACTION_START, b"\0").rstrip(b"\0"))
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        commit = exc_type is None
        self.client.request(XS.TRANSACTION_END, b"T\0" if commit else b"F\0", self.id)

    def read(self, path: str) -> bytes:
        """:meth:`XenbusClient.read` inside the transaction."""
        return self.client.read(path, self.id)

    def read_str(self, path: str, default: str | None = None) -> str | None:
        """:meth:`XenbusClient.read_str` inside the transaction."""
        return self.client.read_str(path, default, self.id)

    def write(self, path: str, value: bytes | str) -> None:
        """:meth:`XenbusClient.write` inside the transaction."""
        self.client.write(path, value, self.id)

    def rm(self, path: str) -> None:
        """:meth:`XenbusClient.rm` inside the transaction."""
        self.client.rm(path, self.id)

    def directory(self, path: str) -> list[str]:
        """:meth:`XenbusClient.directory` inside the transaction."""
        return self.client.directory(path, self.id)


def _path(path: str) -> bytes:
    return path.encode() + b"\0"
