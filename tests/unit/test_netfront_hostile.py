"""netfront against a back end that answers with garbage: its rx responses, played by hand through a real ring.

A guest must not be harmed by its back end either: every response is checked
(status, offset, flags, extra info), a frame that cannot be right is dropped and
counted, the event loop never sees an exception, and the next good frame still
reaches the guest's stack.
"""

from __future__ import annotations

import select
import socket
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domu.netfront.netfront import BackendFeatures, NetfrontQueue
from xenlike.kernel.events import new_port_fd
from xenlike.public.netif import (
    EXTRA_INFO,
    NETIF_RX_PROTOCOL,
    NETRXF_csum_blank,
    NETRXF_data_validated,
    NETRXF_extra_info,
    NETRXF_more_data,
    RX_RESPONSE,
    XEN_NETIF_EXTRA_FLAG_MORE,
)
from xenlike.public.ring import BackRing
from xenlike.public.xen import PAGE_SIZE

from .netif_support import GUEST_ADDRESS, FrontKernel, Namespace, require_tap
from .test_netback_hostile import PORT, udp_frame  # the frame is a datagram to PORT



class HandBackend:
    """A netfront on a TAP in the guest's namespace, its back end played by the test."""

    def __init__(self) -> None:
        self.ns = Namespace()
        self.kernel = FrontKernel()
        tx, rx = self.kernel.shared_ring(), self.kernel.shared_ring()
        tap = self.ns.tap("eth0", GUEST_ADDRESS)
        self.kernel.loop.bind(3, new_port_fd())  # the event channel: the test calls on_event itself
        features = BackendFeatures(sg=True, gso_tcpv4=True, gso_tcpv6=True, ipv6_csum=True)
        self.front = NetfrontQueue(self.kernel, 0, tap, tx, rx, 3, features)
        self.rx = BackRing(rx.view, NETIF_RX_PROTOCOL)
        self.requests: list[tuple[int, int]] = []
        self.front.running = True  # as start() does, without a loop thread: the test calls on_event
        self.sink = self.ns.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sink.bind(("10.99.0.2", PORT))

    def answer(self, slots: list[bytes]) -> None:
        """Answer the oldest posted requests with these response slots, and kick the front end."""
        data, count = self.rx.get_requests()
        self.requests += NETIF_RX_PROTOCOL.unpack_requests(data)
        del self.requests[: len(slots)]
        self.rx.put_responses(b"".join(slots))
        self.rx.push_responses()
        self.front.on_event(3)

    def page_of_next(self) -> memoryview:
        """The page of the oldest posted request (netfront's rx pool page for its slot)."""
        data, _count = self.rx.get_requests()
        self.requests += NETIF_RX_PROTOCOL.unpack_requests(data)
        req_id, _gref = self.requests[0]
        return self.front._rxp.pages[req_id]

    def close(self) -> None:
        self.sink.close()
        self.rx.release()
        self.front.close()
        self.kernel.close()
        self.ns.close()


@pytest.fixture
def hand():
    require_tap()
    rig = HandBackend()
    yield rig
    rig.close()


def slot(req_id: int, offset: int, flags: int, status: int) -> bytes:
    return RX_RESPONSE.pack(req_id & 0xFFFF, offset & 0xFFFF, flags & 0xFFFF, status)


pieces = st.lists(
    st.tuples(st.integers(0, 0xFFFF), st.one_of(st.integers(0, 64), st.integers(PAGE_SIZE - 64, 0xFFFF)),
              st.one_of(st.integers(-3, 1600), st.integers(PAGE_SIZE - 64, 32767)), st.integers(0, 0xFFFF)),
    min_size=1, max_size=20,
)
extras = st.lists(st.tuples(st.integers(0, 255), st.integers(0, 0xFFFF), st.integers(0, 255)), max_size=3)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pieces=pieces, extras=extras, flags=st.integers(0, 0xFFFF))
def test_garbage_responses_are_dropped_and_the_next_frame_arrives(hand, pieces, extras, flags) -> None:
    slots = []
    for n, (req_id, offset, status, piece_flags) in enumerate(pieces):
        # The chain is well formed (more_data on all but the last, extra info after the first), the rest is garbage.
        f = (flags if n == 0 else piece_flags) & ~(NETRXF_more_data | NETRXF_extra_info)
        f |= NETRXF_more_data if n < len(pieces) - 1 else 0
        f |= NETRXF_extra_info if n == 0 and extras else 0
        slots.append(slot(req_id, offset, f, status))
        if n == 0:
            for e, (kind, size, gso_type) in enumerate(extras):
                more = XEN_NETIF_EXTRA_FLAG_MORE if e < len(extras) - 1 else 0
                slots.append(EXTRA_INFO.pack(kind, more, size, gso_type, 0, 0))
    before = dict(hand.front.stats)
    hand.answer(slots)
    assert hand.front.running and hand.front._rx_slots == []
    after = hand.front.stats
    handled = sum(after[k] - before[k] for k in ("rx_packets", "rx_errors", "rx_dropped"))
    assert handled == 1  # one packet: delivered, refused or dropped by the TAP
    # The next good frame, in the next request's page, reaches the guest's socket.
    frame = udp_frame("10.99.0.2", b"good frame")
    page = hand.page_of_next()
    page[: len(frame)] = frame
    hand.answer([slot(hand.requests[0][0], 0, NETRXF_data_validated, len(frame))])
    assert b"good frame" in _datagrams_until(hand.sink, b"good frame")


def _datagrams_until(sink: socket.socket, wanted: bytes, timeout: float = 5.0) -> list[bytes]:
    """What ``sink`` receives until ``wanted`` comes or ``timeout`` passes.

    A garbage chain's bytes are the guest's own pages, which may still hold an
    earlier frame's headers: delivered as the back end described them, they can
    make a datagram to the sink before the good frame.
    """
    received: list[bytes] = []
    deadline = time.monotonic() + timeout
    while wanted not in received:
        ready, _, _ = select.select([sink], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        received.append(sink.recv(100))
    return received


def test_a_csum_blank_frame_whose_headers_do_not_parse_is_an_error(hand) -> None:
    page = hand.page_of_next()
    page[:60] = b"\xff" * 12 + b"\x08\x06" + bytes(46)  # ARP: no TCP or UDP checksum to finish
    hand.answer([slot(hand.requests[0][0], 0, NETRXF_csum_blank | NETRXF_data_validated, 60)])
    assert hand.front.stats["rx_errors"] == 1 and hand.front.stats["rx_packets"] == 0
