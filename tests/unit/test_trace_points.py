"""The ring and block data-path trace points, and what the timeline makes of their records.

A ring's push, consume and re-arm, and blkback's request decoded and answered,
write records into this process's real trace buffer (attached as a domain's
would be); with their class off they write nothing.
"""

from __future__ import annotations

import os
import struct

import pytest

from xenlike.kernel import trace
from xenlike.kernel.trace import TraceBuffer
from xenlike.public.blkif import BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_RSP_OKAY, Segment, pack_flush, pack_rw
from xenlike.public.ring import BackRing, FrontRing, RingProtocol
from xenlike.public.trace import ALL_CLASSES, EVENT_NAMES, TraceClass, TraceRecord, unpack_record
from xenlike.public.xen import PAGE_SIZE
from xenlike.tools.trace_export import WORKER_TID_BASE, chrome_trace

from .test_blkback_hostile import FRONT, Setup

PROTOCOL = RingProtocol("test", struct.Struct("<Q"), struct.Struct("<Q"))


@pytest.fixture
def traced():
    """This process attached to a fresh buffer as d3; yields (reader, set the mask)."""
    fd = TraceBuffer.create("test", 3, 1 << 16, 0)
    reader = TraceBuffer(fd)
    trace.attach(os.dup(fd), 3)
    try:
        yield reader
    finally:
        trace.detach()
        reader.close()
        os.close(fd)


def records(reader: TraceBuffer) -> list[tuple[str, int, dict]]:
    taken, lost, why = reader.read()
    assert (lost, why) == (0, None)
    out = []
    for raw in taken:
        event, _ns, domid, _vcpu, fields = unpack_record(raw)
        out.append((EVENT_NAMES[event], domid, fields))
    return out


def test_a_ring_records_its_pushes_consumes_and_re_arms_with_the_event_index_verdict(traced):
    traced.set_mask(TraceClass.RING)
    page = memoryview(bytearray(PAGE_SIZE))
    front, back = FrontRing(page, PROTOCOL), BackRing(page, PROTOCOL, name="d3 (web) test")
    front.put_requests(PROTOCOL.pack_requests([(1,), (2,)]))
    assert front.push_requests()  # req_event is 1: the first push notifies
    front.put_requests(PROTOCOL.pack_requests([(3,)]))
    assert not front.push_requests()  # the back has not re-armed: suppressed
    assert back.get_requests()[1] == 3
    back.put_responses(PROTOCOL.pack_responses([(1,), (2,), (3,)]))
    assert back.push_responses()
    assert not back.final_check_for_requests()  # nothing more: req_event re-armed at 4
    assert front.get_responses()[1] == 3
    assert not front.final_check_for_responses()
    got = records(traced)
    assert [(name, fields) for name, _domid, fields in got] == [
        ("ring_push", {"slots": 2, "notify": True, "event": 1, "ring": "test", "side": "front", "used": 2}),
        ("ring_push", {"slots": 1, "notify": False, "event": 1, "ring": "test", "side": "front", "used": 3}),
        ("ring_consume", {"slots": 3, "ring": "d3 (web) test", "side": "back", "used": 3}),
        ("ring_push", {"slots": 3, "notify": True, "event": 1, "ring": "d3 (web) test", "side": "back", "used": 0}),
        ("ring_arm", {"event": 4, "more": False, "ring": "d3 (web) test", "side": "back", "used": 0}),
        ("ring_consume", {"slots": 3, "ring": "test", "side": "front", "used": 0}),
        ("ring_arm", {"event": 4, "more": False, "ring": "test", "side": "front", "used": 0}),
    ]
    assert {domid for _name, domid, _fields in got} == {3}


def test_with_the_ring_class_off_a_ring_writes_nothing(traced):
    traced.set_mask(ALL_CLASSES & ~TraceClass.RING)
    page = memoryview(bytearray(PAGE_SIZE))
    front, back = FrontRing(page, PROTOCOL), BackRing(page, PROTOCOL)
    front.put_requests(PROTOCOL.pack_requests([(1,)]))
    front.push_requests()
    back.get_requests()
    back.final_check_for_requests()
    assert records(traced) == []


def test_blkback_records_each_request_decoded_and_answered_about_the_front_ends_domain(traced):
    traced.set_mask(TraceClass.IO)
    blk = Setup()
    try:
        gref = next(iter(blk.rw))
        assert blk.submit(pack_rw(BLKIF_OP_WRITE, 7, 16, [Segment(gref, 0, 7)]))[2] == BLKIF_RSP_OKAY
        assert blk.submit(pack_rw(BLKIF_OP_READ, 8, 16, [Segment(gref, 0, 7), Segment(gref, 0, 3)]))[2] == 0
        assert blk.submit(pack_flush(9))[2] == BLKIF_RSP_OKAY
        assert blk.submit(pack_rw(BLKIF_OP_READ, 10, 1 << 40, [Segment(gref, 0, 7)]))[2] != BLKIF_RSP_OKAY
    finally:
        blk.close()
    got = records(traced)
    assert {domid for _name, domid, _fields in got} == {FRONT}
    names = [name for name, _domid, _fields in got]
    assert names == ["io_request", "io_done"] * 4
    decoded = [fields for name, _domid, fields in got if name == "io_request"]
    done = [fields for name, _domid, fields in got if name == "io_done"]
    assert [(f["id"], f["op"], f["sector"], f["segments"]) for f in decoded] == [
        (7, "write", 16, 1), (8, "read", 16, 2), (9, "flush", 0, 0), (10, "read", 1 << 40, 1)
    ]
    assert all(f["dev"] == "test xvda" for f in decoded + done)
    assert [f["status"] for f in done][:3] == [0, 0, 0] and done[3]["status"] < 0
    assert all(isinstance(f["dur"], int) and f["dur"] >= 0 for f in done)


def rec(ns: int, event: str, cls: str, domid: int, src: str, **fields) -> TraceRecord:
    return TraceRecord({"ns": ns, "event": event, "cls": cls, "domid": domid, "vcpu": 0, "src": src, **fields})


def test_the_timeline_has_ring_counters_push_instants_and_io_spans_in_the_guests_process():
    ring = {"ring": "blkif", "side": "front"}
    back = {"ring": "d3 (web) vbd/51712", "side": "back"}
    trace_json = chrome_trace(
        [
            rec(1000, "ring_push", "ring", 3, "web", slots=2, notify=True, used=2, **ring),
            rec(2000, "ring_consume", "ring", 0, "worker1", slots=2, used=2, **back),
            rec(2100, "io_request", "io", 3, "worker1", dev="d3 (web) vbd/51712", id=1, op="write", sector=8),
            rec(2100, "io_done", "io", 3, "worker1", dev="d3 (web) vbd/51712", id=1, op="write", sector=8,
                status=0, dur=5000),
            rec(8000, "ring_push", "ring", 0, "worker1", slots=2, notify=False, used=0, **back),
        ],
        {0: "Domain-0", 3: "web"},
    )
    events = trace_json["traceEvents"]
    counters = [(e["pid"], e["name"], e["args"]["used"], e["ts"]) for e in events if e["ph"] == "C"]
    assert counters == [
        (3, "ring blkif (front)", 2, 0.0),
        (0, "ring d3 (web) vbd/51712 (back)", 2, 1.0),
        (0, "ring d3 (web) vbd/51712 (back)", 0, 7.0),
    ]
    instants = [(e["pid"], e["name"]) for e in events if e["ph"] == "i"]
    assert instants == [(3, "push 2 notify"), (3, "decoded write sector 8"), (0, "push 2 suppressed")]
    (span,) = [e for e in events if e["ph"] == "X"]
    assert (span["pid"], span["tid"], span["name"], span["dur"]) == (3, WORKER_TID_BASE + 1, "write sector 8", 5.0)
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in events if e["name"] == "thread_name"}
    assert threads[(3, WORKER_TID_BASE + 1)] == "back-end worker1: d3 (web) vbd/51712"
    assert threads[(0, WORKER_TID_BASE + 1)] == "back-end worker1"
