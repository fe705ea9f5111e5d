"""The xenstored request dispatcher (tools/xenstored/core.c ``process_message``).

:class:`Xenstored` owns the node store, the connections, the introduced
domains and the quotas. A transport feeds it one decoded request at a time
with :meth:`Xenstored.handle` and sends back the :class:`Delivery` list it
returns: the reply to the caller first, then any watch events, each addressed
to its connection. The library does no I/O and starts no threads; calls must
be serialised by the caller, as C xenstored serialises requests in its single
thread.

Deliveries produced outside :meth:`~Xenstored.handle` (events caused by
domain introduction and release called directly, or by the in-process
client for other connections) go to ``sink`` if one was given, else to an
outbox drained with :meth:`~Xenstored.drain`.

Errors: every failure is an ``ERROR`` reply naming the errno exactly as C
xenstored would; :meth:`~Xenstored.handle` never raises for anything a client
sends. A message type with no handler (including the server-to-client types
and the removed RESTRICT) gets ``ENOSYS``; a dom0-only request from an
unprivileged connection gets ``EACCES``; a ``tx_id`` that names no open
transaction of the connection gets ``ENOENT``.

Choices where Xen leaves room (see also the module docstrings of quota.py
and watch.py):

* numbers in payloads (domids, offsets, depths, quota values) must be plain
  decimal; C xenstored's ``atoi`` would read garbage as 0, xenlike answers
  ``EINVAL``;
* replies precede the watch events a request causes (C queues events first;
  clients must accept either order anyway);
* on release, nodes owned by the domain are deleted (C xenstored's default)
  unless ``keep_orphans`` is set, in which case dom0 becomes their owner
  (``xenstored -K``); watches see the deletions like any other;
* permission entries naming a domain that has gone are kept (C xenstored
  marks them ignored when the domid is reused); the toolstack removes a dead
  domain's nodes anyway.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from xenlike.kernel import trace
from xenlike.public.trace import Event, TraceClass
from xenlike.public.xen import DOMID_FIRST_RESERVED, DOMID_SELF
from xenlike.public.xs_wire import (
    OK_PAYLOAD,
    SPECIAL_INTRODUCE_DOMAIN,
    SPECIAL_RELEASE_DOMAIN,
    XENSTORE_PAYLOAD_MAX,
    XENSTORE_SERVER_FEATURE_WATCHDEPTH,
    Permission,
    XsdSockmsgType,
    XsError,
    canonicalize,
    error_payload,
    home_path,
    is_relative_path,
    is_special_path,
    one_arg,
    parse_perms,
    perms_payload,
    split_strings,
)

from .connection import Connection
from .domain import Domain, is_real_domid
from .permissions import may_read
from .quota import QUOTA_NAMES, Quotas, QuotaTable
from .store import GlobalView, Store
from .transaction import Transaction, TransactionView
from .tree import Tree
from .watch import Change, Watch, WatchIndex, match_change, match_special

__all__ = ["Delivery", "Xenstored", "LIBRARY_FEATURES"]

T = XsdSockmsgType

#: ``server_features`` bits implemented by this library itself; a transport
#: adds the ones it implements (reconnection, the error field).
LIBRARY_FEATURES = XENSTORE_SERVER_FEATURE_WATCHDEPTH

_PRIV = 1  # XS_FLAG_PRIV: dom0-only request
_NOTID = 2  # XS_FLAG_NOTID: the tx_id is ignored

_LOCAL_PREFIX = re.compile(r"/local/domain/[0-9]{1,5}/")
_TX_ID_MASK = 0xFFFFFFFF


class Delivery(NamedTuple):
    """One message to send: to ``conn``, with this header and payload."""

    conn: Connection
    msg_type: int
    req_id: int
    tx_id: int
    payload: bytes


@dataclass(slots=True)
class _Request:
    conn: Connection
    msg_type: int
    tx: Transaction | None
    payload: bytes
    events: list[Delivery] = field(default_factory=list)


def _parse_uint(raw: bytes | None, maximum: int = _TX_ID_MASK) -> int:
    """A decimal number in 0..maximum, else EINVAL."""
    if raw is None or not raw.isdigit() or len(raw) > 10:
        raise XsError("EINVAL")
    value = int(raw)
    if value > maximum:
        raise XsError("EINVAL")
    return value


def _parse_int(raw: bytes) -> int:
    """A signed decimal number (INTRODUCE sends the gfn "in signed decimal")."""
    digits = raw[1:] if raw[:1] == b"-" else raw
    if not digits.isdigit() or len(digits) > 20:
        raise XsError("EINVAL")
    return int(raw)


_XENSTORE = TraceClass.XENSTORE.value


def _trace_op(conn: Connection, msg_type: int, tx_id: int, payload: bytes, reply: Delivery, started: int) -> None:
    """One request: who, which, the path it names, its transaction, how it ended, how long it took."""
    try:
        op = T(msg_type).name
    except ValueError:
        op = str(msg_type)
    fields = {
        "conn": conn.domid,
        "op": op,
        "path": trace.summary(payload.split(b"\0", 1)[0].decode("utf-8", "replace")),
        "dur": time.monotonic_ns() - started,
    }
    if tx_id:
        fields["tx"] = tx_id
    if reply.msg_type == T.ERROR:
        fields["errno"] = bytes(reply.payload).rstrip(b"\0").decode("ascii", "replace")
    trace.emit_at(Event.XS_OP, started, fields)


def _event_payload(path: str, token: bytes) -> bytes:
    return path.encode("ascii") + b"\0" + token + b"\0"


class Xenstored:
    """The xenstore daemon core, independent of any transport.

    ``quotas`` are the global defaults for unprivileged domains (C
    xenstored's when omitted). ``server_features`` is what GET_FEATURE
    reports and SET_FEATURE may enable; ``on_introduce(conn, gfn, evtchn)``
    and ``on_release(conn)`` let the transport map and unmap a domain's ring
    when dom0 sends INTRODUCE or RELEASE (an ``XsError`` they raise becomes
    the reply, and the request then changes nothing).
    """

    def __init__(
        self,
        quotas: Quotas | None = None,
        *,
        keep_orphans: bool = False,
        server_features: int = LIBRARY_FEATURES,
        sink: Callable[[Delivery], None] | None = None,
        on_introduce: Callable[[Connection, int, int], None] | None = None,
        on_release: Callable[[Connection], None] | None = None,
    ) -> None:
        self.store = Store()
        self.quotas = QuotaTable(quotas)
        self.keep_orphans = keep_orphans
        self.server_features = server_features
        self.sink = sink
        self.on_introduce = on_introduce
        self.on_release = on_release
        self._connections: dict[int, Connection] = {}
        self._by_domid: dict[int, list[Connection]] = {}
        self._domains: dict[int, Domain] = {}
        self._outbox: list[Delivery] = []
        self._watch_index = WatchIndex()
        # Acts for xenstored itself when it removes a released domain's nodes.
        self._internal = Connection(0, True)
        self._handlers: dict[int, tuple[Callable[[_Request], bytes], int]] = {
            T.CONTROL: (self._do_control, _PRIV),
            T.DIRECTORY: (self._do_directory, 0),
            T.READ: (self._do_read, 0),
            T.GET_PERMS: (self._do_get_perms, 0),
            T.WATCH: (self._do_watch, _NOTID),
            T.UNWATCH: (self._do_unwatch, _NOTID),
            T.TRANSACTION_START: (self._do_transaction_start, 0),
            T.TRANSACTION_END: (self._do_transaction_end, 0),
            T.INTRODUCE: (self._do_introduce, _PRIV),
            T.RELEASE: (self._do_release, _PRIV),
            T.GET_DOMAIN_PATH: (self._do_get_domain_path, 0),
            T.WRITE: (self._do_write, 0),
            T.MKDIR: (self._do_mkdir, 0),
            T.RM: (self._do_rm, 0),
            T.SET_PERMS: (self._do_set_perms, 0),
            T.IS_DOMAIN_INTRODUCED: (self._do_is_domain_introduced, _PRIV),
            T.RESUME: (self._do_resume, _PRIV),
            T.SET_TARGET: (self._do_set_target, _PRIV),
            T.RESET_WATCHES: (self._do_reset_watches, 0),
            T.DIRECTORY_PART: (self._do_directory_part, 0),
            # A domain may read its own features; the handler checks the rest.
            T.GET_FEATURE: (self._do_get_feature, 0),
            T.SET_FEATURE: (self._do_set_feature, _PRIV),
            T.GET_QUOTA: (self._do_get_quota, _PRIV),
            T.SET_QUOTA: (self._do_set_quota, _PRIV),
        }

    # --- connections ------------------------------------------------------------

    def connect(
        self,
        domid: int = 0,
        privileged: bool | None = None,
        *,
        receiver: Callable[[Delivery], None] | None = None,
    ) -> Connection:
        """Register a socket-style client (a dom0 tool); privileged by default for dom0.

        With a ``receiver`` the client lives in this process: every watch
        event for it is passed to ``receiver`` at once instead of being
        returned by :meth:`handle` or sent to the sink.
        """
        conn = Connection(domid, domid == 0 if privileged is None else privileged, receiver=receiver)
        self._register(conn)
        return conn

    def disconnect(self, conn: Connection) -> None:
        """Forget a client that went away, with its watches and transactions.

        For a domain's ring connection use :meth:`release_domain` instead.
        """
        self._drop_state(conn)
        conn.closed = True
        self._unregister(conn)

    def reset_connection(self, conn: Connection) -> None:
        """Drop a connection's watches and transactions but keep it open.

        This is what the ring reconnection protocol needs
        (``XENSTORE_RECONNECT``, docs/misc/xenstore-ring.txt).
        """
        self._drop_state(conn)

    def _drop_state(self, conn: Connection) -> None:
        for watch in conn.watches:
            self._watch_index.discard(conn.id, watch.path)
        conn.drop_state()

    def _register(self, conn: Connection) -> None:
        self._connections[conn.id] = conn
        self._by_domid.setdefault(conn.domid, []).append(conn)

    def _unregister(self, conn: Connection) -> None:
        if self._connections.pop(conn.id, None) is None:
            return
        peers = self._by_domid.get(conn.domid, [])
        if conn in peers:
            peers.remove(conn)
        if not peers:
            self._by_domid.pop(conn.domid, None)

    # --- domains ----------------------------------------------------------------

    def introduce_domain(self, domid: int) -> Connection:
        """Start serving a domain and return its ring connection.

        Fires ``@introduceDomain`` (to :attr:`sink` or the outbox). A domain
        introduced again keeps its connection, which loses its watches and
        transactions, and fires nothing (domain.c ``do_introduce``).
        Raises ``XsError("EINVAL")`` for dom0 or a reserved id.
        """
        conn, events = self._introduce(domid)
        self.deliver(events)
        return conn

    def release_domain(self, domid: int) -> None:
        """Stop serving a domain (domain.c ``do_release``).

        Its watches and transactions are dropped, its connection is closed,
        the nodes it owns are removed (or handed to dom0 with
        ``keep_orphans``) and ``@releaseDomain`` fires. Raises
        ``XsError("EINVAL")`` for dom0 and ``XsError("ENOENT")`` for a domain
        that is not introduced.
        """
        self.deliver(self._release(domid))

    def is_domain_introduced(self, domid: int) -> bool:
        """True if xenstored is serving ``domid`` (dom0 always is)."""
        return domid == 0 or domid in self._domains

    def domain_connection(self, domid: int) -> Connection | None:
        """The ring connection of an introduced domain."""
        dom = self._domains.get(domid)
        return dom.conn if dom is not None else None

    def domain_features(self, domid: int) -> int:
        """The ``server_features`` word to publish in a domain's ring page."""
        dom = self._domains.get(domid)
        return dom.features if dom is not None else self.server_features

    def _introduce(self, domid: int) -> tuple[Connection, list[Delivery]]:
        if domid == 0 or not is_real_domid(domid):
            raise XsError("EINVAL")
        dom = self._domains.get(domid)
        if dom is not None:
            self._drop_state(dom.conn)
            return dom.conn, []
        conn = Connection(domid, False, is_domain=True)
        self._register(conn)
        self._domains[domid] = Domain(domid, conn, self.server_features)
        return conn, self._fire_special(SPECIAL_INTRODUCE_DOMAIN, domid)

    def _release(self, domid: int) -> list[Delivery]:
        if domid == 0:
            raise XsError("EINVAL")
        dom = self._domains.pop(domid, None)
        if dom is None:
            raise XsError("ENOENT")
        # The domain hears nothing about its own teardown (domain.c do_release).
        self.disconnect(dom.conn)
        events = self._remove_orphans(domid)
        events += self._fire_special(SPECIAL_RELEASE_DOMAIN, domid)
        self.quotas.forget(domid)
        return events

    def _remove_orphans(self, domid: int) -> list[Delivery]:
        """Delete or re-own the nodes of a released domain (domain.c ``domain_tree_remove``).

        Without ``keep_orphans`` each topmost node the domain owns is removed
        with its subtree, firing watches. With it, or where removal is
        impossible (the root, the special nodes), dom0 becomes the owner.
        """
        tree = Tree(GlobalView(self.store), self._internal, self.quotas.global_quotas)
        for special in (SPECIAL_RELEASE_DOMAIN, SPECIAL_INTRODUCE_DOMAIN):
            node = self.store.get(special)
            if node is not None and node.owner == domid:
                tree.chown_orphan(special, 0)
        if self.keep_orphans:
            for path in sorted(p for p in self.store.owned_by(domid) if p.startswith("/")):
                tree.chown_orphan(path, 0)
            return []
        root = self.store.get("/")
        if root is not None and root.owner == domid:
            tree.chown_orphan("/", 0)
        changes: list[Change] = []
        for path in self.store.topmost_owned_by(domid):
            changes += tree.rm(path)
        return self._fan_out(changes)

    # --- output -----------------------------------------------------------------

    def deliver(self, deliveries: Iterable[Delivery]) -> None:
        """Hand deliveries that no :meth:`handle` call returns to their receivers.

        In-process connections get theirs directly; the rest go to
        :attr:`sink`, or to the outbox when there is none.
        """
        for delivery in self._route_local(deliveries):
            if self.sink is None:
                self._outbox.append(delivery)
            else:
                self.sink(delivery)

    @staticmethod
    def _route_local(deliveries: Iterable[Delivery]) -> list[Delivery]:
        """Give in-process connections their deliveries; return the others."""
        remote: list[Delivery] = []
        for delivery in deliveries:
            receiver = delivery.conn.receiver
            if receiver is None:
                remote.append(delivery)
            else:
                receiver(delivery)
        return remote

    def drain(self) -> list[Delivery]:
        """Take the deliveries queued while no ``sink`` was set."""
        out, self._outbox = self._outbox, []
        return out

    def _fan_out(self, changes: Iterable[Change]) -> list[Delivery]:
        """Watch events for a list of committed changes (watch.c ``fire_watches``)."""
        out: list[Delivery] = []
        for change in changes:
            for conn in self._watch_index.candidates(change.path, change.exact):
                matched = [w for w in conn.watches if match_change(w, change.path, change.exact)]
                if matched and may_read(conn, change.readers):
                    for watch in matched:
                        self._event(out, conn, watch.event_path(change.path), watch.token)
        return out

    def _fire_special(self, name: str, domid: int) -> list[Delivery]:
        """``@introduceDomain`` / ``@releaseDomain`` events (domain.c ``fire_special_watches``)."""
        special = self.store.get(name)
        root = self.store.get("/")
        readers = tuple(n.perms for n in (special, root) if n is not None)
        out: list[Delivery] = []
        for conn in self._watch_index.watchers(name, f"{name}/{domid}"):
            matched = [(w, match_special(w, name, domid)) for w in conn.watches]
            hits = [(w, p) for w, p in matched if p is not None]
            if hits and may_read(conn, readers):
                for watch, path in hits:
                    self._event(out, conn, path, watch.token)
        return out

    @staticmethod
    def _event(out: list[Delivery], conn: Connection, path: str, token: bytes) -> None:
        payload = _event_payload(path, token)
        # Over-long events are dropped, as core.c send_event does.
        if len(payload) <= XENSTORE_PAYLOAD_MAX:
            out.append(Delivery(conn, T.WATCH_EVENT, 0, 0, payload))
            if trace.mask[0] & _XENSTORE:
                trace.emit(Event.XS_WATCH, {"conn": conn.domid, "path": trace.summary(path), "token": token[:32]})

    # --- the dispatcher ---------------------------------------------------------

    def handle(self, conn: Connection, msg_type: int, req_id: int, tx_id: int, payload: bytes) -> list[Delivery]:
        """Process one request from ``conn`` and return what to send.

        The first delivery is the reply to ``conn`` (same type, req_id and
        tx_id, or type ``ERROR`` with an errno name); watch events for any
        connection follow, except those for in-process connections, which
        their receivers get at once. A closed connection is ignored (empty
        list). Never raises for malformed or hostile input.
        """
        if conn.closed:
            return []
        started = time.monotonic_ns() if trace.mask[0] & _XENSTORE else 0
        request = _Request(conn, msg_type, None, bytes(payload))
        try:
            reply = self._dispatch(request, tx_id)
            if len(reply) > XENSTORE_PAYLOAD_MAX:
                raise XsError("E2BIG")
            out = [Delivery(conn, msg_type, req_id, tx_id, reply)]
        except XsError as err:
            out = [Delivery(conn, T.ERROR, req_id, tx_id, error_payload(err.errno_name))]
        if started:
            _trace_op(conn, msg_type, tx_id, request.payload, out[0], started)
        out += self._route_local(request.events)
        return out

    def walk(self, conn: Connection, path: str, tx_id: int = 0) -> list[tuple[str, int, bytes, tuple[Permission, ...]]]:
        """``(path, depth, value, perms)`` of ``path`` and of each node below it that ``conn`` may read, parents
        first (core.c ``walk_node_tree``): for an in-process client (dom0's toolstack), what xenstore-ls
        asks DIRECTORY, READ and GET_PERMS of every node, in one call.

        ``path`` is canonicalised and checked as a READ's; XsError as that READ, or ENOENT for an unknown
        transaction. Nothing changes, so no watch fires.
        """
        if conn.closed:
            raise XsError("EIO", "connection is closed")
        request = _Request(conn, T.READ, None, b"")
        if tx_id != 0:
            request.tx = conn.transactions.get(tx_id)
            if request.tx is None:
                raise XsError("ENOENT")
        top = self._path(conn, path.encode())
        return [(here, depth, node.value, node.perms) for here, depth, node in self._tree(request).walk(top)]

    def _dispatch(self, request: _Request, tx_id: int) -> bytes:
        entry = self._handlers.get(request.msg_type)
        if entry is None:
            raise XsError("ENOSYS")
        func, flags = entry
        conn = request.conn
        if flags & _PRIV and not conn.privileged:
            raise XsError("EACCES")
        if len(request.payload) > XENSTORE_PAYLOAD_MAX:
            raise XsError("E2BIG")
        if not flags & _NOTID and tx_id != 0:
            request.tx = conn.transactions.get(tx_id)
            if request.tx is None:
                raise XsError("ENOENT")
        return func(request)

    # --- helpers for handlers ---------------------------------------------------

    def _path(self, conn: Connection, raw: bytes | None, *, allow_special: bool = False) -> str:
        """Canonical path of a request argument (core.c ``canonicalize``), else EINVAL."""
        if raw is None:
            raise XsError("EINVAL")
        name = canonicalize(raw, conn.domid, allow_special=allow_special)
        if not conn.privileged:
            match = _LOCAL_PREFIX.match(name)
            local_off = match.end() if match else 0
            if len(name) - local_off > self.quotas.for_domain(conn.domid).path_max:
                raise XsError("EINVAL")
        return name

    def _tree(self, request: _Request) -> Tree:
        conn = request.conn
        quotas = self.quotas.for_domain(conn.domid)
        if request.tx is None:
            return Tree(GlobalView(self.store), conn, quotas)
        limit = None if conn.privileged else quotas.transaction_nodes
        return Tree(TransactionView(self.store, request.tx, limit), conn, quotas)

    def _changed(self, request: _Request, changes: list[Change]) -> None:
        """Fire watches now, or queue them until the transaction commits."""
        if request.tx is None:
            request.events += self._fan_out(changes)
        else:
            for change in changes:
                request.tx.queue_watch(change.path, change.exact)

    def _domain_arg(self, request: _Request) -> int:
        return _parse_uint(one_arg(request.payload), 0xFFFF)

    def _count_watches(self, domid: int) -> int:
        return sum(len(c.watches) for c in self._by_domid.get(domid, ()))

    def _count_transactions(self, domid: int) -> int:
        return sum(len(c.transactions) for c in self._by_domid.get(domid, ()))

    # --- node requests ----------------------------------------------------------

    def _do_read(self, request: _Request) -> bytes:
        path = self._path(request.conn, one_arg(request.payload))
        return self._tree(request).read(path)

    def _do_directory(self, request: _Request) -> bytes:
        path = self._path(request.conn, one_arg(request.payload))
        return self._tree(request).directory(path)

    def _do_directory_part(self, request: _Request) -> bytes:
        args = split_strings(request.payload)
        if len(args) != 2:
            raise XsError("EINVAL")
        path = self._path(request.conn, args[0])
        return self._tree(request).directory_part(path, _parse_uint(args[1]))

    def _do_get_perms(self, request: _Request) -> bytes:
        path = self._path(request.conn, one_arg(request.payload), allow_special=True)
        return perms_payload(self._tree(request).get_perms(path))

    def _do_write(self, request: _Request) -> bytes:
        payload = request.payload
        nul = payload.find(b"\0")
        if nul < 0:
            raise XsError("EINVAL")
        path = self._path(request.conn, payload[:nul])
        self._changed(request, self._tree(request).write(path, payload[nul + 1 :]))
        return OK_PAYLOAD

    def _do_mkdir(self, request: _Request) -> bytes:
        path = self._path(request.conn, one_arg(request.payload))
        self._changed(request, self._tree(request).mkdir(path))
        return OK_PAYLOAD

    def _do_rm(self, request: _Request) -> bytes:
        path = self._path(request.conn, one_arg(request.payload))
        self._changed(request, self._tree(request).rm(path))
        return OK_PAYLOAD

    def _do_set_perms(self, request: _Request) -> bytes:
        conn = request.conn
        args = split_strings(request.payload)
        if len(args) < 2:
            raise XsError("EINVAL")
        if not conn.privileged and len(args) - 1 > self.quotas.for_domain(conn.domid).node_permissions:
            raise XsError("ENOSPC")
        perms = parse_perms(args[1:])
        path = self._path(conn, args[0], allow_special=True)
        self._changed(request, self._tree(request).set_perms(path, perms))
        return OK_PAYLOAD

    # --- watches ----------------------------------------------------------------

    def _do_watch(self, request: _Request) -> bytes:
        conn = request.conn
        args = split_strings(request.payload)
        if len(args) not in (2, 3):
            raise XsError("EINVAL")
        raw_path, token = args[0], args[1]
        path = self._path(conn, raw_path, allow_special=True)
        depth = _parse_uint(args[2]) if len(args) == 3 and args[2] else None
        if is_special_path(path) and depth not in (None, 1):
            raise XsError("EINVAL")
        if any(w.path == path and w.token == token for w in conn.watches):
            raise XsError("EEXIST")
        if not conn.privileged and self._count_watches(conn.domid) >= self.quotas.for_domain(conn.domid).watches:
            raise XsError("E2BIG")
        prefix_len = len(home_path(conn.domid)) + 1 if is_relative_path(raw_path) else 0
        watch = Watch(path, token, prefix_len, depth)
        conn.watches.append(watch)
        self._watch_index.add(conn.id, conn, path)
        # A new watch fires once at once (watch.c do_watch), unconditionally.
        self._event(request.events, conn, watch.requested_path, token)
        return OK_PAYLOAD

    def _do_unwatch(self, request: _Request) -> bytes:
        conn = request.conn
        args = split_strings(request.payload)
        if len(args) not in (2, 3):
            raise XsError("EINVAL")
        path = self._path(conn, args[0], allow_special=True)
        for index, watch in enumerate(conn.watches):
            if watch.path == path and watch.token == args[1]:
                del conn.watches[index]
                if not any(w.path == path for w in conn.watches):
                    self._watch_index.discard(conn.id, path)
                return OK_PAYLOAD
        raise XsError("ENOENT")

    def _do_reset_watches(self, request: _Request) -> bytes:
        self._drop_state(request.conn)
        return OK_PAYLOAD

    # --- transactions -----------------------------------------------------------

    def _do_transaction_start(self, request: _Request) -> bytes:
        conn = request.conn
        if request.tx is not None:
            raise XsError("EBUSY")
        if (
            not conn.privileged
            and self._count_transactions(conn.domid) >= self.quotas.for_domain(conn.domid).transactions
        ):
            raise XsError("ENOSPC")
        tx_id = conn.next_tx_id
        while tx_id == 0 or tx_id in conn.transactions:
            tx_id = (tx_id + 1) & _TX_ID_MASK
        conn.next_tx_id = (tx_id + 1) & _TX_ID_MASK
        conn.transactions[tx_id] = Transaction(tx_id)
        return str(tx_id).encode("ascii") + b"\0"

    def _do_transaction_end(self, request: _Request) -> bytes:
        arg = one_arg(request.payload)
        if arg not in (b"T", b"F"):
            raise XsError("EINVAL")
        tx = request.tx
        if tx is None:
            raise XsError("ENOENT")
        conn = request.conn
        # The transaction ends whatever the outcome (transaction.c do_transaction_end).
        del conn.transactions[tx.id]
        if arg == b"T":
            limit = None if conn.privileged else (lambda domid: self.quotas.for_domain(domid).nodes)
            request.events += self._fan_out(tx.commit(self.store, limit))
        return OK_PAYLOAD

    # --- domains ----------------------------------------------------------------

    def _do_introduce(self, request: _Request) -> bytes:
        args = split_strings(request.payload)
        if len(args) < 3:
            raise XsError("EINVAL")
        domid = _parse_uint(args[0], 0xFFFF)
        gfn = _parse_int(args[1])
        port = _parse_int(args[2])
        if port <= 0:
            raise XsError("EINVAL")
        known = self._domains.get(domid)
        if known is not None:
            # Re-introduction rebinds the ring; the transport goes first so a
            # refusal leaves the connection untouched.
            if self.on_introduce is not None:
                self.on_introduce(known.conn, gfn, port)
            self._introduce(domid)
            return OK_PAYLOAD
        conn, events = self._introduce(domid)
        if self.on_introduce is not None:
            try:
                self.on_introduce(conn, gfn, port)
            except XsError:
                del self._domains[domid]
                self.disconnect(conn)
                raise
        request.events += events
        return OK_PAYLOAD

    def _do_release(self, request: _Request) -> bytes:
        domid = self._domain_arg(request)
        if domid == 0:
            raise XsError("EINVAL")
        dom = self._domains.get(domid)
        if dom is None:
            raise XsError("ENOENT")
        if self.on_release is not None:
            self.on_release(dom.conn)
        request.events += self._release(domid)
        return OK_PAYLOAD

    def _do_get_domain_path(self, request: _Request) -> bytes:
        return home_path(self._domain_arg(request)).encode("ascii") + b"\0"

    def _do_is_domain_introduced(self, request: _Request) -> bytes:
        domid = self._domain_arg(request)
        introduced = domid == DOMID_SELF or self.is_domain_introduced(domid)
        return b"T\0" if introduced else b"F\0"

    def _do_resume(self, request: _Request) -> bytes:
        domid = self._domain_arg(request)
        if domid == 0:
            raise XsError("EINVAL")
        if domid not in self._domains:
            raise XsError("ENOENT")
        return OK_PAYLOAD

    def _do_set_target(self, request: _Request) -> bytes:
        args = split_strings(request.payload)
        if len(args) < 2:
            raise XsError("EINVAL")
        domid = _parse_uint(args[0], 0xFFFF)
        target = _parse_uint(args[1], 0xFFFF)
        dom = self._domains.get(domid)
        if dom is None or target not in self._domains:
            raise XsError("ENOENT")
        dom.conn.target = target
        return OK_PAYLOAD

    def _do_get_feature(self, request: _Request) -> bytes:
        conn = request.conn
        domid = self._domain_arg(request)
        if not conn.privileged and domid != conn.domid:
            raise XsError("EACCES")
        if domid != 0 and domid not in self._domains:
            raise XsError("ENOENT")
        return str(self.domain_features(domid)).encode("ascii") + b"\0"

    def _do_set_feature(self, request: _Request) -> bytes:
        args = split_strings(request.payload)
        if len(args) < 2:
            raise XsError("EINVAL")
        domid = _parse_uint(args[0], 0xFFFF)
        value = _parse_uint(args[1])
        if value & ~self.server_features:
            raise XsError("EINVAL")
        dom = self._domains.get(domid)
        if dom is None:
            raise XsError("ENOENT")
        dom.features = value
        return OK_PAYLOAD

    # --- quotas -----------------------------------------------------------------

    def _quota_target(self, args: list[bytes]) -> tuple[str, int | None]:
        """The quota name and domain (None: global) of GET/SET_QUOTA arguments."""
        if len(args) == 1:
            domid = None
            raw_name = args[0]
        else:
            domid = _parse_uint(args[0], 0xFFFF)
            if domid >= DOMID_FIRST_RESERVED:
                raise XsError("ENOENT")
            raw_name = args[1]
        name = raw_name.decode("ascii", "replace")
        if name not in QUOTA_NAMES:
            raise XsError("EINVAL")
        return name, domid

    def _do_get_quota(self, request: _Request) -> bytes:
        args = split_strings(request.payload)
        if len(args) > 2:
            raise XsError("EINVAL")
        if not args:
            return " ".join(QUOTA_NAMES).encode("ascii") + b"\0"
        name, domid = self._quota_target(args)
        return str(self.quotas.get(name, domid)).encode("ascii") + b"\0"

    def _do_set_quota(self, request: _Request) -> bytes:
        args = split_strings(request.payload)
        if len(args) not in (2, 3):
            raise XsError("EINVAL")
        name, domid = self._quota_target(args[:-1])
        self.quotas.set(name, _parse_uint(args[-1]), domid)
        return OK_PAYLOAD

    # --- control ----------------------------------------------------------------

    _CONTROL_COMMANDS = ("check", "help", "print")

    def _do_control(self, request: _Request) -> bytes:
        args = split_strings(request.payload)
        if not args:
            raise XsError("EINVAL")
        command = args[0]
        if command == b"check":
            return OK_PAYLOAD
        if command == b"help":
            return ("\n".join(self._CONTROL_COMMANDS) + "\n").encode("ascii") + b"\0"
        if command == b"print" and len(args) >= 2:
            return OK_PAYLOAD
        raise XsError("EINVAL")
