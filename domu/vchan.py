"""vchan in the guest: byte streams to another domain, after Xen's ``tools/libs/vchan`` (libxenvchan).

A workload gets ``ctx.vchan`` (:class:`VchanDriver`). A server calls
``ctx.vchan.listen(port)``, a client ``ctx.vchan.connect(server, port)``; each gets
a :class:`Vchan`, a socket-like end of the stream. The page layout, the ring
orders and the xenstore contract are :mod:`xenlike.public.vchan`.

Memory. In Xen the server grants ordinary pages of its own and the client maps
them through gntdev. In xenlike a domain's memory is one memfd, and only dom0 is
ever handed a domU's memfd: a client domU given it would hold all of the server's
memory. So the server allocates the vchan's pages apart, with the
``gntalloc_alloc`` hypercall (Linux's gntalloc device): a sealed memfd holding
only those pages, bound to the one peer it names, whose pseudo-frames the server
grants as it grants its own frames. The client's ``grant_map`` of those grants
is checked like any other, and answered with that small memfd and each page's
index in it (:mod:`xenlike.public.gntalloc`), never with the server's memory; a
grant of any other frame of a domU is refused to another domU as before.

Who may connect is dom0's decision: the toolstack creates
``data/vchan/<client>/<port>`` under the server's home, for the pairs the
server's config lists (``vchan = ["client:port"]``), and the rest of that subtree
is dom0's. :meth:`VchanDriver.connect` refuses with EACCES, naming the server and
the port, when the directory is not there.

End of stream. Each end sets its ``*_live`` byte to 0 and signals when it
closes; when an end dies instead, the hypervisor clears that byte and signals for
it (the unmap notifications libxenvchan asks gntalloc and gntdev for). A reader
then gets ``b""`` once the ring is empty, and a writer BrokenPipeError.

Waiting. The vchan's event channel stays masked in the domain's event loop: a
:class:`Vchan` reads its eventfd itself, in the thread that waits, as
libxenvchan reads its own ``xenevtchn`` fd (``libxenvchan_wait``). So a blocked
``recv`` is woken straight from the peer's ``write()`` to the eventfd, with no
hop through the event-loop thread. The byte-channel endpoint
(:mod:`xenlike.kernel.byte_channel`) drives its rings from upcalls with an
outbox, which suits xenstore and the console; a vchan's caller blocks in its own
thread, so this module follows ``io.c`` directly on the same :class:`ByteRing`
views. Several threads may use one vchan (one sending, one receiving): a wake-up
one of them takes is passed on to the others.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import select
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from xenlike.kernel.memory import ForeignMapping
from xenlike.public.atomic import fetch_and8, fetch_or8
from xenlike.public.grant_table import GrantError
from xenlike.public.ring import ByteRing, RingError
from xenlike.public.vchan import (
    VCHAN_CONNECTED,
    VCHAN_EXITED,
    VCHAN_INTERFACE,
    VCHAN_NOTIFY_READ,
    VCHAN_NOTIFY_WRITE,
    VCHAN_WAITING,
    VchanInterface,
    check_orders,
    choose_orders,
    peer_name_path,
    port_path,
    ring_pages,
)
from xenlike.public.xs_wire import Permission, XsError, XsPerm

if TYPE_CHECKING:
    from xenlike.kernel.events import EventLoop
    from xenlike.kernel.gnttab import GrantTable
    from xenlike.kernel.hypercall import HypercallClient

    from .xenbus import XenbusClient

__all__ = ["VchanDriver", "Vchan", "DEFAULT_RING_SIZE", "CONNECT_TIMEOUT_S"]

log = logging.getLogger("domu.vchan")

#: Each direction's ring when ``listen`` is not told otherwise: 64 KiB, 16 granted pages.
DEFAULT_RING_SIZE = 1 << 16
#: How long ``connect`` waits for the server to listen, unless told otherwise.
CONNECT_TIMEOUT_S = 10.0
# A blocked waiter looks at the peer's event channel this often: a peer that closed
# its port without clearing its live byte (only a hostile one does) is noticed.
_PEER_CHECK_S = 1.0

_tokens = itertools.count()


def _domid_text(value: str | None, what: str) -> int:
    if value is None or not value.isdigit():
        raise ValueError(f"{what} is {value!r}, not a domid")
    return int(value)


class VchanDriver:
    """``ctx.vchan``: opens vchans to other domains (``libxenvchan_server_init``/``_client_init``).

    ``domid``/``name`` are this domain's; the other arguments are its kernel's
    xenstore client, hypercall channel, grant table and event loop.
    """

    def __init__(
        self,
        domid: int,
        name: str,
        xenstore: XenbusClient,
        hypercall: HypercallClient,
        grant_table: GrantTable,
        events: EventLoop,
    ) -> None:
        self.domid = domid
        self.name = name
        self.label = f"d{domid} ({name})"
        self._xs = xenstore
        self._hypercall = hypercall
        self._grants = grant_table
        self._events = events
        self._lock = threading.Lock()
        self._unrevoked: list[int] = []  # grant refs a client still mapped when its server closed

    # -- naming -------------------------------------------------------------------------------

    def resolve(self, domain: int | str, port: int | None = None) -> int:
        """A peer's domid: an int is taken as it is, a name is looked up where the toolstack wrote it.

        The toolstack writes ``~/vchan/<name>`` for every domain the policy pairs
        this one with, so a name the policy does not pair is PermissionError
        (EACCES), naming ``port`` when one is given.
        """
        if isinstance(domain, int):
            return domain
        if domain.isdigit():
            return int(domain)
        value = self._xs.read_str(peer_name_path(self.domid, domain))
        if value is None:
            what = f"vchan port {port} of {domain!r}" if port is not None else f"a vchan with {domain!r}"
            raise PermissionError(
                errno.EACCES,
                f"{self.label} may not use {what}: no domain of that name runs, or its vchan config does not "
                f'allow "{self.name}:{port if port is not None else "<port>"}"',
            )
        return _domid_text(value, f"~/vchan/{domain}")

    # -- server -------------------------------------------------------------------------------

    def listen(
        self,
        port: int,
        read_min: int = DEFAULT_RING_SIZE,
        write_min: int = DEFAULT_RING_SIZE,
        *,
        client: int | str | None = None,
        timeout: float | None = None,
    ) -> Vchan:
        """Offer vchan ``port`` to a client and return the server's end (``libxenvchan_server_init``).

        ``read_min``/``write_min`` are the smallest ring sizes wanted for each
        direction (rounded up as :func:`~xenlike.public.vchan.choose_orders` says).
        ``client`` is the peer (a domid or a name); by default the one domain the
        policy allows on this port, waited for up to ``timeout`` seconds (None: for
        ever) if it does not run yet. The returned end's :meth:`Vchan.is_open` is
        2 until the client connects; writes before that wait in the ring.
        """
        _check_port(port)
        left, right = choose_orders(read_min, write_min)
        peer = self.resolve(client, port) if client is not None else self._allowed_client(port, timeout)
        base = port_path(self.domid, peer, port)
        if self._xs.read_str(base) is None:
            raise PermissionError(
                errno.EACCES,
                f"{self.label}: vchan port {port} is not allowed with d{peer}: the toolstack made no {base} "
                f'(add "<client-name>:{port}" to this domain\'s vchan config)',
            )
        self._retry_revokes()
        return Vchan._serve(self, peer, port, left, right)

    def _allowed_client(self, port: int, timeout: float | None) -> int:
        """The one client the policy allows on ``port``; waits until one runs."""
        deadline = None if timeout is None else time.monotonic() + timeout
        changed = threading.Event()
        token = f"vchan-listen-{next(_tokens)}"
        watch_path = f"/local/domain/{self.domid}/data/vchan"
        self._xs.watch(watch_path, token, lambda path, tok: changed.set())
        try:
            while True:
                changed.clear()
                clients = self._clients_allowed(port)
                if len(clients) == 1:
                    return clients[0]
                if len(clients) > 1:
                    raise ValueError(
                        f"{self.label}: vchan port {port} is allowed for d{', d'.join(map(str, clients))}: "
                        "name the client (listen(port, client=...))"
                    )
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"{self.label}: no client allowed on vchan port {port} appeared in {timeout}s")
                changed.wait(left)
        finally:
            try:
                self._xs.unwatch(watch_path, token)
            except XsError:
                pass

    def _clients_allowed(self, port: int) -> list[int]:
        try:
            peers = self._xs.directory(f"/local/domain/{self.domid}/data/vchan")
        except XsError:
            return []
        allowed = []
        for peer in peers:
            if peer.isdigit() and self._xs.read_str(port_path(self.domid, int(peer), port)) is not None:
                allowed.append(int(peer))
        return allowed

    # -- client -------------------------------------------------------------------------------

    def connect(self, domain: int | str, port: int, *, timeout: float | None = CONNECT_TIMEOUT_S) -> Vchan:
        """Connect to vchan ``port`` of server ``domain`` (a domid or a name) (``libxenvchan_client_init``).

        PermissionError (EACCES) if the policy does not allow this domain on that
        port; TimeoutError if the server does not listen within ``timeout``
        seconds (None: wait for ever).
        """
        _check_port(port)
        server = self.resolve(domain, port)
        base = port_path(server, self.domid, port)
        try:
            present = self._xs.read_str(base) is not None
        except XsError:
            present = False
        if not present:
            raise PermissionError(
                errno.EACCES,
                f"{self.label} may not connect to vchan port {port} of d{server} ({domain}): the server's vchan "
                f'config does not allow "{self.name}:{port}"',
            )
        ring_ref, remote_port = self._await_server(base, server, port, timeout)
        return Vchan._connect(self, server, port, ring_ref, remote_port)

    def _await_server(self, base: str, server: int, port: int, timeout: float | None) -> tuple[int, int]:
        deadline = None if timeout is None else time.monotonic() + timeout
        changed = threading.Event()
        token = f"vchan-connect-{next(_tokens)}"
        self._xs.watch(base, token, lambda path, tok: changed.set())
        try:
            while True:
                changed.clear()
                try:
                    with self._xs.transaction() as tx:  # both, as the server wrote them: in one transaction
                        ring_ref = tx.read_str(f"{base}/ring-ref")
                        remote_port = tx.read_str(f"{base}/event-channel")
                except XsError as exc:
                    if exc.errno_name == "EAGAIN":
                        continue
                    raise
                if ring_ref is not None and remote_port is not None:
                    return _domid_text(ring_ref, "ring-ref"), _domid_text(remote_port, "event-channel")
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"{self.label}: d{server} did not listen on vchan port {port} in {timeout}s")
                changed.wait(left)
        finally:
            try:
                self._xs.unwatch(base, token)
            except XsError:
                pass

    def _retry_revokes(self) -> None:
        with self._lock:
            refs, self._unrevoked = self._unrevoked, []
        for ref in refs:
            self._end_access(ref)

    def _end_access(self, ref: int) -> None:
        try:
            self._grants.end_access(ref)
        except GrantError:
            with self._lock:
                self._unrevoked.append(ref)


def _check_port(port: int) -> None:
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise ValueError(f"vchan port {port!r} is not a number from 1 to 65535")


@dataclass
class _Mapped:
    """What one end holds of the shared memory, to let go of at close."""

    page: ForeignMapping | None = None
    left: ForeignMapping | None = None
    right: ForeignMapping | None = None
    fds: list[int] = field(default_factory=list)
    handles: list[int] = field(default_factory=list)  # client: grant_map handles
    refs: list[int] = field(default_factory=list)  # server: grant refs it handed out
    area: int | None = None  # server: the first frame of its gntalloc area

    def mappings(self) -> list[ForeignMapping]:
        return [m for m in (self.page, self.left, self.right) if m is not None]


class Vchan:
    """One end of a vchan: a socket-like byte stream to another domain (``struct libxenvchan``).

    :meth:`send`/:meth:`recv` move what they can (``libxenvchan_write``/``_read``);
    :meth:`send_packet`/:meth:`recv_packet` move exactly one packet of a given size
    or nothing (``libxenvchan_send``/``_recv``). Blocking by default; with
    ``setblocking(False)`` a call that can do nothing raises BlockingIOError. At
    the end of the stream :meth:`recv` returns ``b""`` and :meth:`send` raises
    BrokenPipeError. For select/poll, :meth:`fileno` is the event channel's fd:
    when it is readable, call :meth:`wait` (which clears it), then the
    non-blocking calls.
    """

    def __init__(
        self,
        driver: VchanDriver,
        is_server: bool,
        peer: int,
        port: int,
        event_port: int,
        shared: VchanInterface,
        mapped: _Mapped,
    ) -> None:
        self.driver = driver
        self.is_server = is_server
        self.peer = peer
        self.port = port
        self.event_port = event_port
        self._shared = shared
        self._mapped = mapped
        self._events = driver._events
        self._recv_fd = self._events.channel(event_port).recv_fd
        # The server reads the left ring and writes the right one; the client the reverse.
        self._rx: ByteRing = shared.left if is_server else shared.right
        self._tx: ByteRing = shared.right if is_server else shared.left
        own, other = ("srv", "cli") if is_server else ("cli", "srv")
        self._peer_live = f"{other}_live"
        self._own_live = f"{own}_live"
        self._own_notify = shared.notify_address(f"{own}_notify")
        self._peer_notify = shared.notify_address(f"{other}_notify")
        self._blocking = True
        self._closed = False
        self._had_peer = not is_server
        self._wake = threading.Condition()
        self._wakeups = 0  # events taken off the eventfd so far
        self._polling = False
        self._send_lock = threading.Lock()
        self._recv_lock = threading.Lock()
        self.label = f"{driver.label} vchan {'server' if is_server else 'client'} port {port} with d{peer}"

    # -- setting up ---------------------------------------------------------------------------

    @classmethod
    def _serve(cls, driver: VchanDriver, peer: int, port: int, left_order: int, right_order: int) -> Vchan:
        """``init_evt_srv``, ``init_gnt_srv``, ``init_xs_srv``: an unbound port, the pages, the nodes."""
        hc = driver._hypercall
        bound, fds = hc.call("evtchn_alloc_unbound", remote_dom=peer)
        event_port = bound["port"]
        driver._events.bind(event_port, fds[0], masked=True)
        nr_left, nr_right = ring_pages(left_order), ring_pages(right_order)
        mapped = _Mapped()
        try:
            area, area_fds = hc.call("gntalloc_alloc", domid=peer, count=1 + nr_left + nr_right)
            fd, base = area_fds[0], area["frame"]
            mapped.fds.append(fd)
            mapped.area = base
            mapped.page = ForeignMapping(fd, [0])
            if nr_left:
                mapped.left = ForeignMapping(fd, range(1, 1 + nr_left))
            if nr_right:
                mapped.right = ForeignMapping(fd, range(1 + nr_left, 1 + nr_left + nr_right))
            VchanInterface.init(mapped.page.view, left_order, right_order)
            for i in range(1 + nr_left + nr_right):
                mapped.refs.append(driver._grants.grant_access(peer, base + i))
            shared = cls._interface(mapped, left_order, right_order)
            shared.set_grants(mapped.refs[1:])
            hc.call(
                "gntalloc_unmap_notify",
                granter=driver.domid,
                frame=base,
                offset=VCHAN_INTERFACE.offsetof("srv_live"),
                port=event_port,
            )
        except BaseException:
            _unmap(driver, mapped)
            _close_port(driver, event_port)
            raise
        end = cls(driver, True, peer, port, event_port, shared, mapped)
        try:
            end._publish(mapped.refs[0])
        except BaseException:
            end.close()
            raise
        log.info("%s: listening (rings %d/%d bytes)", end.label, 1 << left_order, 1 << right_order)
        return end

    @staticmethod
    def _interface(mapped: _Mapped, left_order: int, right_order: int) -> VchanInterface:
        assert mapped.page is not None  # mapped first, by both ends
        return VchanInterface(
            mapped.page.view,
            mapped.page.address,
            left_order,
            right_order,
            mapped.left.view if mapped.left else None,
            mapped.right.view if mapped.right else None,
        )

    def _publish(self, ring_ref: int) -> None:
        """``ring-ref`` and ``event-channel`` in one transaction, readable by the peer alone."""
        xs = self.driver._xs
        base = port_path(self.driver.domid, self.peer, self.port)
        perms = [Permission(self.driver.domid, XsPerm.NONE), Permission(self.peer, XsPerm.READ)]
        while True:
            try:
                with xs.transaction() as tx:
                    for key, value in (("ring-ref", ring_ref), ("event-channel", self.event_port)):
                        tx.write(f"{base}/{key}", str(value))
                        xs.set_perms(f"{base}/{key}", perms, tx.id)
                return
            except XsError as exc:
                if exc.errno_name != "EAGAIN":
                    raise

    @classmethod
    def _connect(cls, driver: VchanDriver, server: int, port: int, ring_ref: int, remote_port: int) -> Vchan:
        """``init_evt_cli``, ``init_gnt_cli``: bind the port, map and check the page, map the rings."""
        hc = driver._hypercall
        bound, fds = hc.call("evtchn_bind_interdomain", remote_dom=server, remote_port=remote_port)
        event_port = bound["port"]
        driver._events.bind(event_port, fds[0], fds[1], masked=True)
        mapped = _Mapped()
        try:
            cls._map(driver, server, [ring_ref], mapped, "page")
            assert mapped.page is not None  # _map set it
            view = mapped.page.view
            # Read once and checked: the server may rewrite the page at any time.
            left_order, right_order = VchanInterface.read_orders(view)
            check_orders(left_order, right_order)
            grants = VchanInterface.read_grants(view, left_order, right_order)
            nr_left = ring_pages(left_order)
            if nr_left:
                cls._map(driver, server, grants[:nr_left], mapped, "left")
            if ring_pages(right_order):
                cls._map(driver, server, grants[nr_left:], mapped, "right")
            shared = cls._interface(mapped, left_order, right_order)
            hc.call(
                "gntalloc_unmap_notify",
                handle=mapped.handles[0],
                offset=VCHAN_INTERFACE.offsetof("cli_live"),
                port=event_port,
            )
        except BaseException:
            _unmap(driver, mapped)
            _close_port(driver, event_port)
            raise
        end = cls(driver, False, server, port, event_port, shared, mapped)
        shared.set_live("cli_live", VCHAN_CONNECTED)
        fetch_or8(shared.notify_address("srv_notify"), VCHAN_NOTIFY_WRITE)
        driver._events.notify(event_port)  # wake up the server
        log.info("%s: connected (rings %d/%d bytes)", end.label, 1 << left_order, 1 << right_order)
        return end

    @staticmethod
    def _map(driver: VchanDriver, server: int, refs: list[int], mapped: _Mapped, which: str) -> None:
        """Map ``refs`` of ``server`` side by side into ``mapped.<which>``."""
        result, fds = driver._hypercall.call("grant_map", granter=server, refs=refs)
        mapped.handles.extend(result["handles"])
        mapped.fds.extend(fds)
        pages = result.get("pages")
        if not pages or None in pages or len(set(result["fd_index"])) != 1:
            raise ConnectionError(errno.EPROTO, f"d{server}'s vchan grants are not pages it allocated for us")
        setattr(mapped, which, ForeignMapping(fds[result["fd_index"][0]], pages))

    # -- the stream ---------------------------------------------------------------------------

    def send(self, data: bytes | bytearray | memoryview) -> int:
        """Write what fits (``libxenvchan_write``): blocking, all of ``data``; else what fits now.

        BrokenPipeError once the peer closed; BlockingIOError (non-blocking)
        when nothing fits.
        """
        view = memoryview(data).cast("B")
        with self._send_lock:
            pos = 0
            while True:
                self._check_writable()
                ticket = self._wakeups
                avail = self._space_wanted(len(view) - pos)
                if avail:
                    pos += self._do_send(view[pos : pos + avail])
                if pos == len(view):
                    return pos
                if not self._blocking:
                    if pos:
                        return pos
                    raise BlockingIOError(errno.EAGAIN, f"{self.label}: the ring is full")
                self._wait_after(ticket)

    def sendall(self, data: bytes | bytearray | memoryview) -> None:
        """All of ``data``, waiting for room even when non-blocking."""
        view = memoryview(data).cast("B")
        pos = 0
        while pos < len(view):
            ticket = self._wakeups
            try:
                pos += self.send(view[pos:])
            except BlockingIOError:
                self._wait_after(ticket)

    def send_packet(self, data: bytes | bytearray | memoryview) -> None:
        """Write all of ``data`` at once or nothing (``libxenvchan_send``).

        ValueError if it can never fit the ring; BlockingIOError (non-blocking)
        when it does not fit now.
        """
        view = memoryview(data).cast("B")
        if len(view) > self._tx.size:
            raise ValueError(f"{self.label}: a packet of {len(view)} bytes exceeds the {self._tx.size}-byte ring")
        with self._send_lock:
            while True:
                self._check_writable()
                ticket = self._wakeups
                if self._space_wanted(len(view)) >= len(view):
                    self._do_send(view)
                    return
                if not self._blocking:
                    raise BlockingIOError(errno.EAGAIN, f"{self.label}: no room for {len(view)} bytes")
                self._wait_after(ticket)

    def recv(self, bufsize: int) -> bytes:
        """Read what is there, up to ``bufsize`` bytes (``libxenvchan_read``); ``b""`` at the end of the stream.

        Blocking, waits for at least one byte; non-blocking, BlockingIOError when
        the ring is empty and the peer is still there.
        """
        if bufsize <= 0:
            self._check_not_closed()
            return b""
        with self._recv_lock:
            self._check_not_closed()  # under the lock: close() holds it while it unmaps
            while True:
                ticket = self._wakeups
                avail = self._data_wanted(bufsize)
                if avail:
                    return self._do_recv(min(avail, bufsize))
                if not self._is_open() or self._closed:
                    return b""
                if not self._blocking:
                    raise BlockingIOError(errno.EAGAIN, f"{self.label}: nothing to read")
                self._wait_after(ticket)

    def recv_packet(self, size: int) -> bytes:
        """Read exactly ``size`` bytes at once (``libxenvchan_recv``).

        ValueError if ``size`` is larger than the ring; EOFError if the stream
        ends with fewer bytes left; BlockingIOError (non-blocking) when fewer
        are there now.
        """
        if size > self._rx.size:
            raise ValueError(f"{self.label}: a packet of {size} bytes exceeds the {self._rx.size}-byte ring")
        with self._recv_lock:
            self._check_not_closed()
            while True:
                ticket = self._wakeups
                if self._data_wanted(size) >= size:
                    return self._do_recv(size)
                if not self._is_open() or self._closed:
                    left = self._rx_available()
                    raise EOFError(f"{self.label}: the stream ended with {left} of {size} bytes left")
                if not self._blocking:
                    raise BlockingIOError(errno.EAGAIN, f"{self.label}: fewer than {size} bytes are there")
                self._wait_after(ticket)

    # -- state --------------------------------------------------------------------------------

    def setblocking(self, flag: bool) -> None:
        """Blocking (the default) or not, as ``socket.setblocking`` (``libxenvchan``'s ``blocking``)."""
        self._blocking = bool(flag)

    def getblocking(self) -> bool:
        return self._blocking

    def is_open(self) -> int:
        """``libxenvchan_is_open``: 0 closed, 1 open, 2 (server) no client yet.

        Safe against a close() in another thread: it holds the lock close() takes
        before it unmaps the page and closes the port.
        """
        with self._wake:
            return self._is_open()

    def _is_open(self) -> int:
        """is_open() for a caller that holds a lock close() takes (``_send_lock``, ``_recv_lock`` or ``_wake``)."""
        if self._closed:
            return VCHAN_EXITED
        live = self._shared.live(self._peer_live)
        send_fd = self._events.channel(self.event_port).send_fd
        if send_fd is not None:
            self._had_peer = True
        elif self._had_peer and live != VCHAN_WAITING:
            return VCHAN_EXITED  # the peer's port is closed: it went, whatever its byte says
        return live if live in (VCHAN_CONNECTED, VCHAN_WAITING) else VCHAN_EXITED

    def data_ready(self) -> int:
        """Bytes waiting to be read (``libxenvchan_data_ready``); asks the peer to signal its next write."""
        with self._wake:  # close() unmaps the page under it
            self._check_not_closed()
            fetch_or8(self._peer_notify, VCHAN_NOTIFY_WRITE)
            return self._rx_available()

    def buffer_space(self) -> int:
        """Bytes that can be written now (``libxenvchan_buffer_space``); asks the peer to signal its next read."""
        with self._wake:
            self._check_not_closed()
            fetch_or8(self._peer_notify, VCHAN_NOTIFY_READ)
            return self._tx_space()

    @property
    def read_size(self) -> int:
        """The size of the ring this end reads."""
        return self._rx.size

    @property
    def write_size(self) -> int:
        """The size of the ring this end writes."""
        return self._tx.size

    def fileno(self) -> int:
        """The event channel's eventfd, readable when the peer signalled (``libxenvchan_fd_for_select``)."""
        return self._recv_fd

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the peer signals (``libxenvchan_wait``); False if ``timeout`` seconds passed first."""
        return self._wait_after(self._wakeups, timeout)

    def close(self) -> None:
        """``libxenvchan_close``: say so to the peer, signal it, let go of the pages, the port and the nodes.

        A thread blocked in this vchan wakes up: a reader gets ``b""``, a writer
        an error. Any thread may call it, and more than one at once: the first
        closes, the others return. The page is unmapped and the port closed under
        ``_send_lock``, ``_recv_lock`` and ``_wake`` (taken in that order), so no
        other call of this vchan is touching either at that moment.
        """
        with self._wake:
            if self._closed:
                return
            self._closed = True
            os.eventfd_write(self._recv_fd, 1)  # wake whoever is polling, to see the close
            self._wake.notify_all()
            while self._polling:  # a wait() outside send and recv: its poll is on the port about to close
                self._wake.wait()
        with self._send_lock, self._recv_lock, self._wake:
            self._shared.set_live(self._own_live, VCHAN_EXITED)
            self._events.notify(self.event_port)
            if self.is_server:
                self._unpublish()
            self._shared.release()
            _unmap(self.driver, self._mapped)
            _close_port(self.driver, self.event_port)
        log.info("%s: closed", self.label)

    def __enter__(self) -> Vchan:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Vchan {self.label} open={self.is_open()}>"

    # -- io.c ---------------------------------------------------------------------------------

    def _check_not_closed(self) -> None:
        if self._closed:
            raise OSError(errno.EBADF, f"{self.label} is closed")

    def _check_writable(self) -> None:
        self._check_not_closed()
        if not self._is_open():
            raise BrokenPipeError(errno.EPIPE, f"{self.label}: the peer closed the stream")

    def _rx_available(self) -> int:
        try:
            return self._rx.available()
        except RingError as exc:
            raise ConnectionError(errno.EPROTO, f"{self.label}: {exc}") from None

    def _tx_space(self) -> int:
        try:
            return self._tx.space()
        except RingError as exc:
            raise ConnectionError(errno.EPROTO, f"{self.label}: {exc}") from None

    def _data_wanted(self, request: int) -> int:
        """``fast_get_data_ready``: what is there; if short, ask for a signal and look again."""
        ready = self._rx_available()
        if ready >= request:
            return ready
        fetch_or8(self._peer_notify, VCHAN_NOTIFY_WRITE)  # a locked op: the fence before the second look
        return self._rx_available()

    def _space_wanted(self, request: int) -> int:
        """``fast_get_buffer_space``: the room there is; if short, ask for a signal and look again."""
        space = self._tx_space()
        if space >= request:
            return space
        fetch_or8(self._peer_notify, VCHAN_NOTIFY_READ)
        return self._tx_space()

    def _do_send(self, data: memoryview) -> int:
        try:
            written = self._tx.write(data)
        except RingError as exc:
            raise ConnectionError(errno.EPROTO, f"{self.label}: {exc}") from None
        self._send_notify(VCHAN_NOTIFY_WRITE)
        return written

    def _do_recv(self, count: int) -> bytes:
        try:
            data = self._rx.read(count)
        except RingError as exc:
            raise ConnectionError(errno.EPROTO, f"{self.label}: {exc}") from None
        self._send_notify(VCHAN_NOTIFY_READ)
        return data

    def _send_notify(self, bit: int) -> None:
        """Clear ``bit`` in our notify byte; signal the peer only if it had asked (a locked op: the fence too)."""
        if fetch_and8(self._own_notify, ~bit) & bit:
            self._events.notify(self.event_port)

    def _wait_after(self, ticket: int, timeout: float | None = None) -> bool:
        """Wait for an event taken after ``ticket`` (the count read before the caller looked at the ring).

        One thread at a time reads the eventfd; the others wait on a condition it
        signals, so a wake-up meant for a reader is not lost to a writer.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._wake:
            while self._wakeups == ticket and not self._closed:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                if self._polling:
                    self._wake.wait(left)
                    continue
                self._polling = True
                self._wake.release()
                try:
                    got = self._poll(left)
                finally:
                    self._wake.acquire()
                    self._polling = False
                if got or not self._is_open():
                    self._wakeups += 1
                self._wake.notify_all()
            return True

    def _poll(self, timeout: float | None) -> bool:
        """Read the eventfd (clearing pending) once it is readable; False after ``timeout``."""
        wait = _PEER_CHECK_S if timeout is None else min(timeout, _PEER_CHECK_S)
        ready, _, _ = select.select([self._recv_fd], [], [], wait)
        if not ready:
            return False
        try:
            os.read(self._recv_fd, 8)
        except BlockingIOError:
            return False
        return True

    def _unpublish(self) -> None:
        base = port_path(self.driver.domid, self.peer, self.port)
        for key in ("ring-ref", "event-channel"):
            try:
                self.driver._xs.rm(f"{base}/{key}")
            except (XsError, TimeoutError, RuntimeError):
                pass


def _unmap(driver: VchanDriver, mapped: _Mapped) -> None:
    """Let go of the pages: unmap them; the client gives back its grant maps, the server revokes and frees."""
    for mapping in mapped.mappings():
        mapping.close()
    for fd in mapped.fds:
        os.close(fd)
    mapped.fds = []
    hc = driver._hypercall
    if mapped.handles:
        try:
            hc.call("grant_unmap", handles=mapped.handles)
        except OSError as exc:
            log.warning("%s: vchan grant_unmap: %s", driver.label, exc)
        mapped.handles = []
    for ref in mapped.refs:
        driver._end_access(ref)  # refused while the client still maps it: tried again later
    mapped.refs = []
    if mapped.area is not None:
        try:
            hc.call("gntalloc_free", frame=mapped.area)
        except OSError as exc:
            log.warning("%s: gntalloc_free: %s", driver.label, exc)
        mapped.area = None


def _close_port(driver: VchanDriver, port: int) -> None:
    try:
        driver._hypercall.call("evtchn_close", port=port)
    except OSError:
        pass
    driver._events.unbind(port)
