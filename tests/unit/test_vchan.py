"""vchan: the shared page against libxenvchan.h, the server's ring orders, and both ends' ring and notify logic.

The ends are real :class:`domu.vchan.Vchan` objects over one in-process page and
a pair of eventfds (each end's port signals the other's), so the model test
drives exactly the code a guest runs, without a hypervisor.
"""

from __future__ import annotations

import ctypes
import errno
import os
import select
from types import SimpleNamespace

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from domu.vchan import Vchan, _Mapped
from xenlike.kernel.events import EventLoop, new_port_fd
from xenlike.public.vchan import (
    GRANTS_OFFSET,
    LARGE_RING_OFFSET,
    MAX_RING_SIZE,
    SMALL_RING_OFFSET,
    VCHAN_CONNECTED,
    VCHAN_INTERFACE,
    VCHAN_NOTIFY_READ,
    VCHAN_NOTIFY_WRITE,
    VCHAN_WAITING,
    VchanError,
    VchanInterface,
    check_orders,
    choose_orders,
    peer_name_path,
    port_path,
    ring_pages,
)
from xenlike.public.xen import PAGE_SIZE


class RingShared(ctypes.Structure):
    """``struct ring_shared`` as libxenvchan.h declares it."""

    _fields_ = [("cons", ctypes.c_uint32), ("prod", ctypes.c_uint32)]


class VchanInterfaceC(ctypes.Structure):
    """``struct vchan_interface`` as libxenvchan.h declares it (``grants[]`` is the flexible tail)."""

    _fields_ = [
        ("left", RingShared),
        ("right", RingShared),
        ("left_order", ctypes.c_uint16),
        ("right_order", ctypes.c_uint16),
        ("cli_live", ctypes.c_uint8),
        ("srv_live", ctypes.c_uint8),
        ("cli_notify", ctypes.c_uint8),
        ("srv_notify", ctypes.c_uint8),
        ("grants", ctypes.c_uint32 * 0),
    ]


def test_layout_matches_the_c_header():
    c = VchanInterfaceC
    assert VCHAN_INTERFACE.offsetof("left_cons") == c.left.offset + RingShared.cons.offset == 0
    assert VCHAN_INTERFACE.offsetof("left_prod") == c.left.offset + RingShared.prod.offset == 4
    assert VCHAN_INTERFACE.offsetof("right_cons") == c.right.offset == 8
    assert VCHAN_INTERFACE.offsetof("right_prod") == c.right.offset + RingShared.prod.offset == 12
    for field in ("left_order", "right_order", "cli_live", "srv_live", "cli_notify", "srv_notify"):
        assert VCHAN_INTERFACE.offsetof(field) == getattr(c, field).offset, field
    assert GRANTS_OFFSET == c.grants.offset == ctypes.sizeof(c) == 24
    assert (VCHAN_NOTIFY_WRITE, VCHAN_NOTIFY_READ) == (1, 2)
    assert (SMALL_RING_OFFSET, LARGE_RING_OFFSET, MAX_RING_SIZE) == (1024, 2048, 1 << 20)


@pytest.mark.parametrize(
    ("read_min", "write_min", "orders"),
    [
        (0, 0, (10, 11)),  # both in the page
        (1024, 2048, (10, 11)),
        (2048, 1024, (11, 10)),
        (2048, 2048, (11, 12)),  # only one ring may be the 2048-byte one
        (4096, 1000, (12, 11)),
        (5000, 70000, (13, 17)),
        (1 << 20, 1 << 20, (20, 20)),
    ],
)
def test_the_server_chooses_orders_as_libxenvchan_server_init(read_min, write_min, orders):
    assert choose_orders(read_min, write_min) == orders
    check_orders(*orders)


def test_sizes_past_the_limit_are_refused():
    with pytest.raises(VchanError, match="MAX_RING_SHIFT"):
        choose_orders((1 << 20) + 1, 0)


@pytest.mark.parametrize(
    ("orders", "why"),
    [((9, 12), "outside"), ((12, 21), "outside"), ((10, 10), "overlap"), ((11, 11), "overlap"), ((10, 20), "run past")],
)
def test_a_client_refuses_orders_it_must_not_trust(orders, why):
    with pytest.raises(VchanError, match=why):
        check_orders(*orders)


def test_paths_and_page_counts():
    assert port_path(3, 4, 5000) == "/local/domain/3/data/vchan/4/5000"
    assert peer_name_path(4, "server") == "/local/domain/4/vchan/server"
    assert [ring_pages(o) for o in (10, 11, 12, 16)] == [0, 0, 1, 16]


class _Page:
    """One vchan page and its ring pages in this process, at a real address (for the atomics)."""

    def __init__(self, left_order: int, right_order: int) -> None:
        self.pages = 1 + ring_pages(left_order) + ring_pages(right_order)
        self.buffer = (ctypes.c_char * (self.pages * PAGE_SIZE))()
        self.view = memoryview(self.buffer).cast("B")
        self.address = ctypes.addressof(self.buffer)
        self.orders = left_order, right_order
        VchanInterface.init(self.view[:PAGE_SIZE], left_order, right_order)

    def interface(self) -> VchanInterface:
        left, right = self.orders
        nl = ring_pages(left)
        return VchanInterface(
            self.view[:PAGE_SIZE],
            self.address,
            left,
            right,
            self.view[PAGE_SIZE : PAGE_SIZE * (1 + nl)] if nl else None,
            self.view[PAGE_SIZE * (1 + nl) :] if ring_pages(right) else None,
        )


def _end(page: _Page, is_server: bool, loop: EventLoop) -> Vchan:
    driver = SimpleNamespace(_events=loop, label="test", domid=1 if is_server else 2)
    return Vchan(driver, is_server, 2 if is_server else 1, 5000, 1, page.interface(), _Mapped())


def _pair(left_order: int, right_order: int) -> tuple[_Page, Vchan, Vchan, list[EventLoop]]:
    """A server and a client over one page; port 1 of each signals the other's."""
    page = _Page(left_order, right_order)
    server_fd, client_fd = new_port_fd(), new_port_fd()
    loops = [EventLoop("server"), EventLoop("client")]
    loops[0].bind(1, server_fd, os.dup(client_fd), masked=True)
    loops[1].bind(1, client_fd, os.dup(server_fd), masked=True)
    server, client = _end(page, True, loops[0]), _end(page, False, loops[1])
    page.view[VCHAN_INTERFACE.offsetof("cli_live")] = VCHAN_CONNECTED
    return page, server, client, loops


def _pending(end: Vchan) -> bool:
    return bool(select.select([end.fileno()], [], [], 0)[0])


def test_in_page_rings_sit_where_the_header_says():
    page, server, client, loops = _pair(10, 11)
    client.setblocking(False)
    server.setblocking(False)
    assert (server.read_size, server.write_size, client.read_size, client.write_size) == (1024, 2048, 2048, 1024)
    client.send(b"to-server")
    server.send(b"to-client")
    assert bytes(page.view[SMALL_RING_OFFSET : SMALL_RING_OFFSET + 9]) == b"to-server"
    assert bytes(page.view[LARGE_RING_OFFSET : LARGE_RING_OFFSET + 9]) == b"to-client"
    assert server.recv(100) == b"to-server" and client.recv(100) == b"to-client"
    _close(page, [server, client], loops)


def test_a_closed_peer_is_the_end_of_the_stream():
    page, server, client, loops = _pair(12, 12)
    server.setblocking(False)
    client.send(b"last words")
    page.view[VCHAN_INTERFACE.offsetof("cli_live")] = 0  # what the client's close (or its death) leaves
    assert server.recv(4) == b"last" and server.recv(100) == b" words"  # what was sent is still read
    assert server.recv(100) == b"" and server.is_open() == 0
    with pytest.raises(BrokenPipeError):
        server.send(b"x")
    _close(page, [server, client], loops)


def test_a_server_without_its_client_is_waiting():
    page, server, client, loops = _pair(10, 11)
    page.view[VCHAN_INTERFACE.offsetof("cli_live")] = VCHAN_WAITING
    assert server.is_open() == 2
    _close(page, [server, client], loops)


def test_a_peer_whose_port_closed_is_gone_whatever_its_live_byte_says():
    page, server, client, loops = _pair(10, 11)
    assert server.is_open() == 1
    loops[0].connect(1, None)  # the hypervisor: the client's end of the event channel is closed
    assert page.view[VCHAN_INTERFACE.offsetof("cli_live")] == VCHAN_CONNECTED
    assert server.is_open() == 0
    server.setblocking(False)
    assert server.recv(10) == b""
    _close(page, [server, client], loops)


def test_corrupt_indices_from_a_hostile_peer_are_an_error_not_a_read_past_the_ring():
    page, server, client, loops = _pair(10, 11)
    server.setblocking(False)
    words = page.view[:PAGE_SIZE].cast("I")
    words[VCHAN_INTERFACE.word("left_prod")] = 5000  # more than the 1024-byte ring past cons
    with pytest.raises(ConnectionError) as err:
        server.recv(10)
    assert err.value.errno == errno.EPROTO
    words[VCHAN_INTERFACE.word("left_prod")] = 0
    words[VCHAN_INTERFACE.word("right_cons")] = 7777  # the client claims to have read what was never written
    with pytest.raises(ConnectionError):
        server.send(b"x")
    words.release()
    _close(page, [server, client], loops)


def test_the_orders_a_client_checked_are_the_ones_it_keeps():
    page = _Page(12, 12)
    orders = VchanInterface.read_orders(page.view[:PAGE_SIZE])
    shared = page.interface()
    u16 = page.view[:PAGE_SIZE].cast("H")
    u16[VCHAN_INTERFACE.offsetof("left_order") // 2] = 20  # the server rewrites the page afterwards
    assert (shared.left.size, shared.right.size) == (4096, 4096) and orders == (12, 12)
    assert VchanInterface.read_orders(page.view[:PAGE_SIZE]) == (20, 12)
    u16.release()
    shared.release()
    page.view.release()


def _close(page: _Page, ends: list[Vchan], loops: list[EventLoop]) -> None:
    for end in ends:
        end._shared.release()
    for loop in loops:
        loop.close()
    page.view.release()


ORDERS = [(10, 11), (11, 10), (12, 11), (10, 12), (12, 13)]


class VchanInterleavings(RuleBasedStateMachine):
    """Both ends send and receive in random sizes; a side that found the ring short is always woken.

    Checked after every step: each direction delivers exactly the bytes sent, in
    order; an end that asked to be told (its recv or send came up short) has an
    event pending as soon as the peer moved the index it waits on; the indices
    never run more than a ring apart.
    """

    @initialize(orders=st.sampled_from(ORDERS))
    def setup(self, orders):
        self.page, self.server, self.client, self.loops = _pair(*orders)
        for end in (self.server, self.client):
            end.setblocking(False)
        self.sent = {True: bytearray(), False: bytearray()}  # by the sending end's is_server
        self.received = {True: bytearray(), False: bytearray()}
        self.waiting_data = {True: False, False: False}  # by the receiving end's is_server
        self.waiting_room = {True: False, False: False}
        self.counter = 0

    def _end(self, is_server: bool) -> Vchan:
        return self.server if is_server else self.client

    def _payload(self, size: int) -> bytes:
        data = bytes((self.counter + i) % 251 for i in range(size))
        self.counter += size
        return data

    @rule(is_server=st.booleans(), size=st.integers(1, 3000), packet=st.booleans())
    def send(self, is_server, size, packet):
        end, peer_is_server = self._end(is_server), not is_server
        data = self._payload(size)
        try:
            if packet:
                if size > end.write_size:
                    return
                end.send_packet(data)
                written = size
            else:
                written = end.send(data)
        except BlockingIOError:
            self.waiting_room[is_server] = True
            return
        self.sent[is_server] += data[:written]
        if written < size:
            self.waiting_room[is_server] = True
        if written and self.waiting_data[peer_is_server]:
            assert _pending(self._end(peer_is_server)), "a reader that asked to be told of data was not"

    @rule(is_server=st.booleans(), size=st.integers(1, 3000), packet=st.booleans())
    def recv(self, is_server, size, packet):
        end, peer_is_server = self._end(is_server), not is_server
        try:
            if packet:
                if size > end.read_size:
                    return
                data = end.recv_packet(size)
            else:
                data = end.recv(size)
        except BlockingIOError:
            self.waiting_data[is_server] = True
            return
        self.received[is_server] += data
        if self.waiting_room[peer_is_server]:
            assert _pending(self._end(peer_is_server)), "a writer that asked to be told of room was not"

    @precondition(lambda self: hasattr(self, "server"))
    @rule(is_server=st.booleans())
    def take_event(self, is_server):
        """The end consumes its pending event (``libxenvchan_wait``) and forgets what it waited for."""
        end = self._end(is_server)
        if end.wait(0):
            self.waiting_data[is_server] = self.waiting_room[is_server] = False

    @invariant()
    def streams_are_exact(self):
        if not hasattr(self, "server"):
            return
        for receiver in (True, False):
            got, sent = self.received[receiver], self.sent[not receiver]
            assert sent[: len(got)] == got
            end = self._end(receiver)
            assert end._rx_available() == len(sent) - len(got) <= end.read_size  # without asking for a notify

    def teardown(self):
        if hasattr(self, "server"):
            _close(self.page, [self.server, self.client], self.loops)


VchanInterleavings.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
test_vchan_interleavings = VchanInterleavings.TestCase
