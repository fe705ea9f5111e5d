"""ByteChannel: one end of a pair of byte rings and its event channel."""

from __future__ import annotations

import os
import struct
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xenlike.kernel.byte_channel import ByteChannel
from xenlike.kernel.events import EventLoop, new_port_fd
from xenlike.kernel.memory import GuestMemory
from xenlike.public.ring import ByteRing, PageLayout, RingError

RING = 64

# Two small rings in one page, so a few hundred bytes wrap them many times.
PAIR = PageLayout(
    "test_pair",
    [("a2b", f"{RING}s"), ("b2a", f"{RING}s"), ("a2b_cons", "I"), ("a2b_prod", "I"), ("b2a_cons", "I"), ("b2a_prod", "I")],
)


def rings(page: memoryview, direction: str) -> ByteRing:
    return ByteRing(page, PAIR.offsetof(direction), RING, PAIR.word(f"{direction}_cons"), PAIR.word(f"{direction}_prod"))


class End:
    """A channel end with what it received and how often it notified its peer."""

    def __init__(self, tx: ByteRing, rx: ByteRing, **kwargs: object) -> None:
        self.received = bytearray()
        self.notifies = 0
        self.peer: End | None = None
        self.pending = False  # the event channel's pending bit, set by the peer
        self.on_data = self.received.extend
        self.channel = ByteChannel(tx, rx, self._notify, lambda data: self.on_data(data), **kwargs)

    def _notify(self) -> None:
        self.notifies += 1
        assert self.peer is not None
        self.peer.pending = True

    def upcall(self) -> None:
        self.pending = False
        self.channel.on_event()


class Pages:
    """Two mappings of one memfd page: each end reads and writes it through its own."""

    def __init__(self) -> None:
        self.mem = GuestMemory.create(1, "test-byte-channel")
        self.other = GuestMemory.from_fd(os.dup(self.mem.fd))
        self.rings: list[ByteRing] = []

    def ring(self, side: int, direction: str) -> ByteRing:
        page = (self.mem, self.other)[side].frame(0)
        ring = rings(page, direction)
        page.release()
        self.rings.append(ring)
        return ring

    def pair(self, **kwargs: object) -> tuple[End, End]:
        a = End(self.ring(0, "a2b"), self.ring(0, "b2a"), **kwargs)
        b = End(self.ring(1, "b2a"), self.ring(1, "a2b"), **kwargs)
        a.peer, b.peer = b, a
        return a, b

    def close(self) -> None:
        for ring in self.rings:
            ring.release()
        self.other.close()
        self.mem.close()


@pytest.fixture
def pages():
    p = Pages()
    yield p
    p.close()


def pump(*ends: End, limit: int = 10_000) -> None:
    """Deliver pending events until the channel is quiet."""
    for _ in range(limit):
        ready = [end for end in ends if end.pending]
        if not ready:
            return
        for end in ready:
            end.upcall()
    raise AssertionError("the ends never went quiet")


def test_a_write_larger_than_the_ring_arrives_whole_and_in_order(pages):
    a, b = pages.pair()
    data = bytes(range(256)) * 4
    assert a.channel.write(data) == len(data)
    assert a.channel.pending_out() == len(data) - RING
    assert a.notifies == 1
    pump(a, b)
    assert bytes(b.received) == data
    assert a.channel.pending_out() == 0
    # Each of A's upcalls moved bytes; each of B's freed room: one notification each.
    assert a.notifies + b.notifies <= 2 * (len(data) // RING + 1)


def test_both_directions_at_once(pages):
    a, b = pages.pair()
    a.channel.write(b"ping" * 50)
    b.channel.write(b"pong" * 70)
    pump(a, b)
    assert bytes(b.received) == b"ping" * 50
    assert bytes(a.received) == b"pong" * 70


def test_no_notification_when_nothing_moved(pages):
    a, b = pages.pair()
    a.channel.on_event()  # a spurious event: nothing to read, nothing queued
    a.channel.write(b"")
    a.channel.flush()
    assert a.notifies == 0
    a.channel.write(b"x" * RING)  # fills tx
    assert a.notifies == 1
    a.channel.write(b"y" * 10)  # only the outbox grows
    a.channel.flush()
    a.channel.on_event()  # tx still full, rx still empty
    assert a.notifies == 1 and a.channel.pending_out() == 10


def test_writes_made_while_handling_data_go_with_one_notification(pages):
    a, b = pages.pair()

    def answer(data: bytes) -> None:
        b.received.extend(data)
        for _ in range(3):
            b.channel.write(b"ack")

    b.on_data = answer
    a.channel.write(b"req")
    b.upcall()
    assert b.notifies == 1  # rx moved and three replies: one event
    pump(a, b)
    assert bytes(a.received) == b"ack" * 3


def test_the_bound_on_queued_bytes(pages):
    a, b = pages.pair(max_queued=10)
    assert a.channel.write(b"z" * 100) == RING + 10
    assert a.channel.pending_out() == 10
    assert a.channel.write(b"more") == 0
    b.upcall()  # B drains the ring; A is told there is room
    assert a.pending
    a.upcall()  # the outbox moves into tx, the bound has room again
    assert a.channel.pending_out() == 0
    assert a.channel.write(b"w" * 20) == 20
    pump(a, b)
    assert bytes(b.received) == b"z" * (RING + 10) + b"w" * 20


def test_a_zero_bound_takes_only_what_fits_in_the_ring(pages):
    a, _ = pages.pair(max_queued=0)
    assert a.channel.write(b"k" * 100) == RING
    assert a.channel.pending_out() == 0


def test_corrupt_indices_close_the_channel(pages):
    a, b = pages.pair()
    page = pages.other.frame(0)
    struct.pack_into("=I", page, PAIR.offsetof("b2a_prod"), 5000)  # B claims 5000 bytes in a 64-byte ring
    with pytest.raises(RingError):
        a.channel.on_event()
    assert a.channel.closed
    assert a.channel.write(b"after") == 0
    a.channel.on_event()  # nothing more happens
    page.release()


def test_a_framing_error_in_on_data_still_frees_the_ring(pages):
    a, b = pages.pair()

    def broken(data: bytes) -> None:
        raise ValueError("bad header")

    b.on_data = broken
    a.channel.write(b"garbage")
    with pytest.raises(ValueError):
        b.upcall()
    assert b.notifies == 1 and not b.channel.closed


def test_close_drops_the_outbox(pages):
    a, b = pages.pair()
    a.channel.write(b"q" * (RING + 5))
    a.channel.close()
    assert a.channel.pending_out() == 0
    assert a.channel.write(b"late") == 0
    pump(a, b)
    assert bytes(b.received) == b"q" * RING


def test_over_a_real_event_channel_with_concurrent_writers(pages):
    """Writers in other threads, upcalls from each end's event loop: every write arrives whole."""
    fd_a, fd_b = new_port_fd(), new_port_fd()
    loop_a, loop_b = EventLoop("a"), EventLoop("b")
    loop_a.bind(1, fd_a, os.dup(fd_b))
    loop_b.bind(1, fd_b, os.dup(fd_a))
    got = bytearray()
    a = ByteChannel(pages.ring(0, "a2b"), pages.ring(0, "b2a"), lambda: loop_a.notify(1), lambda d: None)
    b = ByteChannel(pages.ring(1, "b2a"), pages.ring(1, "a2b"), lambda: loop_b.notify(1), got.extend)
    loop_a.set_handler(1, lambda _port: a.on_event())
    loop_b.set_handler(1, lambda _port: b.on_event())
    messages = [bytes([65 + w]) * 37 for w in range(4)]

    def writer(message: bytes) -> None:
        for _ in range(25):
            a.write(message)

    threads = [threading.Thread(target=writer, args=(m,)) for m in messages]
    for t in threads:
        t.start()
    total = sum(len(m) * 25 for m in messages)
    while len(got) < total:
        loop_b.poll(0.01)
        loop_a.poll(0)
    for t in threads:
        t.join()
    for message in messages:
        assert bytes(got).count(message) == 25  # never interleaved inside a write
    assert len(got) == total
    loop_a.close()
    loop_b.close()


# Operations: ("write", end, data) or ("event", end); end 0 is A, 1 is B.
_ops = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.integers(0, 1), st.binary(min_size=0, max_size=3 * RING)),
        st.tuples(st.just("event"), st.integers(0, 1)),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(ops=_ops, bound=st.one_of(st.none(), st.integers(0, 2 * RING)))
def test_any_interleaving_delivers_exactly_what_was_accepted(ops, bound):
    pages = Pages()
    try:
        a, b = pages.pair(max_queued=bound)
        ends, sent = (a, b), (bytearray(), bytearray())
        for op in ops:
            end = ends[op[1]]
            if op[0] == "write":
                accepted = end.channel.write(op[2])
                if bound is None:
                    assert accepted == len(op[2])
                sent[op[1]].extend(op[2][:accepted])
            else:
                end.upcall()  # spurious or real: either is allowed
            # What has arrived is always a prefix of what was sent.
            assert sent[0].startswith(b.received) and sent[1].startswith(a.received)
        pump(a, b)
        assert bytes(b.received) == bytes(sent[0])
        assert bytes(a.received) == bytes(sent[1])
    finally:
        pages.close()
