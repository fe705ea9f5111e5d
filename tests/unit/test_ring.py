"""Shared rings and byte rings: layout, geometry, notification and refusals."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xenlike.kernel.memory import GuestMemory
from xenlike.public.xen import PAGE_SIZE
from xenlike.public.console import ConsoleInterface
from xenlike.public.ring import (
    BackRing,
    ByteRing,
    FrontRing,
    RingError,
    RingFull,
    RingProtocol,
    ring_size,
)
from xenlike.public.xs_wire import XENSTORE_EVTCHN_PORT_OFFSET, XenstoreInterface

PAIR = RingProtocol("pair", struct.Struct("<QQ"), struct.Struct("<QQ"))


@pytest.fixture
def memory():
    mem = GuestMemory.create(16, "test-ring")
    yield mem
    mem.close()


def rings(memory, pages=1, protocol=PAIR):
    front = FrontRing(memory.frames(0, pages), protocol)
    back = BackRing(memory.frames(0, pages), protocol)
    return front, back


@pytest.mark.parametrize(
    "entry, pages, slots",
    [(112, 1, 32), (12, 1, 256), (8, 1, 256), (112, 2, 64), (112, 4, 128), (64, 16, 512)],
)
def test_ring_sizes_match_xen(entry, pages, slots):
    """blkif: (4096-64)/112 = 36 -> 32; netif tx 12 B and rx 8 B -> 256 (xen-facts 1.1)."""
    assert ring_size(pages * PAGE_SIZE, entry) == slots


def test_shared_ring_init_sets_events_to_one(memory):
    memory.frame(0)[:64] = b"\xff" * 64
    front, _ = rings(memory)
    words = struct.unpack_from("<4I", memory.frame(0))
    assert words == (0, 1, 0, 1)
    assert bytes(memory.frame(0)[16:64]) == bytes(48)
    assert front.shared_indices() == {"req_prod": 0, "req_event": 1, "rsp_prod": 0, "rsp_event": 1}


def test_first_request_notifies_then_batches_silently(memory):
    front, back = rings(memory)
    front.put_request(1, 2)
    assert front.push_requests() is True  # req_event = 1 lies in (0, 1]
    front.put_request(3, 4)
    assert front.push_requests() is False  # the back has not re-armed: it is busy
    assert back.get_request() == (1, 2)
    assert back.get_request() == (3, 4)
    assert back.final_check_for_requests() is False  # re-armed req_event = 3
    front.put_request(5, 6)
    assert front.push_requests() is True


def test_a_polling_front_end_gets_no_notification_until_it_re_arms(memory):
    front, back = rings(memory)
    for value in range(3):
        front.put_request(value, 0)
    front.push_requests()
    back.get_requests()
    front.disable_response_events()  # the first response would notify (rsp_event = 1): not now
    for value in range(2):
        back.put_response(value, 0)
        assert back.push_responses() is False
    assert front.get_responses()[1] == 2
    assert front.final_check_for_responses() is False  # re-armed at rsp_cons + 1
    back.put_response(2, 0)
    assert back.push_responses() is True


def test_final_check_catches_work_pushed_before_rearm(memory):
    front, back = rings(memory)
    front.put_request(1, 1)
    front.push_requests()
    assert back.final_check_for_requests() is True  # work is waiting: no need to sleep


def test_responses_round_trip_with_wrap(memory):
    front, back = rings(memory)
    n = front.nr_ents
    for round_ in range(5):  # pass the ring boundary several times
        batch = PAIR.pack_requests((round_ * 1000 + i, i) for i in range(n - 3))
        assert front.put_requests(batch) == n - 3
        front.push_requests()
        data, count = back.get_requests()
        assert count == n - 3 and data == batch
        back.put_responses(data)
        back.push_responses()
        got, count = front.get_responses()
        assert got == batch


def test_ring_full_is_refused(memory):
    front, _ = rings(memory)
    front.put_requests(PAIR.pack_requests((i, i) for i in range(front.nr_ents)))
    assert front.full()
    with pytest.raises(RingFull):
        front.put_request(0, 0)


def test_back_refuses_a_front_that_jumps_req_prod(memory):
    front, back = rings(memory)
    struct.pack_into("<I", memory.frame(0), 0, front.nr_ents + 5)  # a hostile req_prod
    with pytest.raises(RingError, match="more than"):
        back.unconsumed_requests()


def test_front_refuses_more_responses_than_requests(memory):
    front, back = rings(memory)
    front.put_request(1, 1)
    front.push_requests()
    struct.pack_into("<I", memory.frame(0), 8, 3)  # rsp_prod = 3 for one request
    with pytest.raises(RingError, match="beyond"):
        front.get_responses()


def test_back_cannot_answer_unconsumed_requests(memory):
    front, back = rings(memory)
    front.put_request(1, 1)
    front.push_requests()
    with pytest.raises(RingFull):
        back.put_response(1, 1)


def test_back_copies_requests_before_use(memory):
    front, back = rings(memory)
    front.put_request(7, 8)
    front.push_requests()
    data, _ = back.get_requests()
    memory.frame(0)[64:80] = b"\xee" * 16  # the front rewrites the slot afterwards
    assert list(PAIR.unpack_requests(data)) == [(7, 8)]


def test_back_ring_attaches_where_the_front_is(memory):
    front, back = rings(memory)
    for i in range(3):
        front.put_request(i, i)
    front.push_requests()
    for _ in range(3):
        back.get_request()
        back.put_response(0, 0)
    back.push_responses()
    again = BackRing(memory.frames(0, 1), PAIR)  # a reconnecting back end
    assert again.req_cons == 3 and again.unconsumed_requests() == 0


def test_protocol_entry_size_and_slot_packing():
    blk_like = RingProtocol("blk", struct.Struct("<BBH4xQQ" + "IBB2x" * 11), struct.Struct("<QBxh4x"))
    assert blk_like.entry_size == 112
    packed = blk_like.pack_responses([(9, 1, -1)])
    assert len(packed) == 112
    assert list(blk_like.unpack_responses(packed)) == [(9, 1, -1)]


# -- byte rings ----------------------------------------------------------------------


def test_xenstore_interface_offsets(memory):
    page = memory.frame(1)
    xs = XenstoreInterface(page)
    assert xs.req.write(b"abc") == 3
    assert bytes(page[0:3]) == b"abc"
    assert struct.unpack_from("<4I", page, 2048) == (0, 3, 0, 0)
    struct.pack_into("<I", page, XENSTORE_EVTCHN_PORT_OFFSET, 7)
    assert struct.unpack_from("<I", page, 2076)[0] == 7
    assert xs.evtchn_port == 7
    assert xs.req.read() == b"abc"
    assert struct.unpack_from("<I", page, 2048)[0] == 3
    xs.release()


def test_console_interface_offsets(memory):
    page = memory.frame(2)
    console = ConsoleInterface(page)
    console.output.write(b"hello\n")
    assert bytes(page[1024:1030]) == b"hello\n"
    assert struct.unpack_from("<4I", page, 3072) == (0, 0, 0, 6)
    console.input.write(b"k")
    assert bytes(page[0:1]) == b"k" and struct.unpack_from("<I", page, 3076)[0] == 1
    console.release()


def test_byte_ring_refuses_corrupt_indices(memory):
    page = memory.frame(3)
    ring = ByteRing(page, 0, 1024, 512, 513)
    struct.pack_into("<II", page, 2048, 0, 5000)
    with pytest.raises(RingError, match="corrupt"):
        ring.read()


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=700), st.integers(0, 900)), max_size=40))
def test_byte_ring_is_a_fifo(ops):
    mem = GuestMemory.create(1, "test-bytering")
    try:
        ring = ByteRing(mem.frame(0), 0, 1024, 512, 513)
        model = bytearray()
        for op in ops:
            if isinstance(op, bytes):
                written = ring.write(op)
                assert written == min(len(op), 1024 - len(model))
                model += op[:written]
            else:
                got = ring.read(op)
                assert got == bytes(model[:op])
                del model[: len(got)]
            assert ring.available() == len(model)
        ring.release()
    finally:
        mem.close()
