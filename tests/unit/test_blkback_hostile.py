"""blkback against a hostile front end: arbitrary requests through a real ring.

The back end's data path (``dom0.blkback.blkback.BlkifRing``) is driven in-process:
the front end's memory, grant table and ring are real, grant maps go through the
hypervisor's own ``GrantMapper`` checks, the disk is a real image file. Every
request must get exactly one response: OKAY only when the request is valid by
blkif.h's rules, an error otherwise; and the back end must go on serving.
"""

from __future__ import annotations

import os
import struct
import tempfile

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from dom0.blkback.blkback import BlkifRing
from dom0.blkback.vbd import open_image
from xenlike.public.blkif import (
    BLKIF_OP_DISCARD,
    BLKIF_OP_FLUSH_DISKCACHE,
    BLKIF_OP_READ,
    BLKIF_OP_WRITE,
    BLKIF_PROTOCOL,
    BLKIF_RSP_OKAY,
    REQUEST,
    RESPONSE,
    Segment,
    pack_discard,
    pack_flush,
    pack_indirect,
    pack_rw,
    pack_segments,
)
from xenlike.hypervisor.grant_table import GrantMapper
from xenlike.kernel.gnttab import GrantTable
from xenlike.kernel.hypercall import HypercallError
from xenlike.kernel.memory import GuestMemory
from xenlike.public.grant_table import GrantError
from xenlike.public.ring import FrontRing, RingError

FRONT = 5
SECTORS = 2048  # a 1 MiB image
RW_PAGES = range(20, 28)
RO_PAGE, FOREIGN_PAGE = 30, 31


class HypervisorGrants:
    """The grant_map/grant_unmap hypercalls, answered by the hypervisor's own checks."""

    def __init__(self, mapper: GrantMapper) -> None:
        self.mapper = mapper

    def call(self, op, **args):
        try:
            if op == "grant_map":
                done = [self.mapper.map_grant_ref(0, args["granter"], ref, args.get("readonly", False)) for ref in args["refs"]]
                return {"frames": [m.frame for m in done], "handles": [m.handle for m in done]}, []
            if op == "grant_unmap":
                for handle in args["handles"]:
                    self.mapper.unmap_grant_ref(0, handle)
                return {}, []
        except GrantError as exc:
            raise HypercallError(22, str(exc)) from None
        raise AssertionError(f"unexpected hypercall {op}")


class Setup:
    def __init__(self) -> None:
        self.memory = GuestMemory.create(64, "test-blk-front")
        self.grants = GrantTable(self.memory, 1, 1)
        self.mapper = GrantMapper({FRONT: self.grants}.__getitem__)
        self.front = FrontRing(self.memory.frames(10, 1), BLKIF_PROTOCOL)
        ring_ref = self.grants.grant_access(0, 10)
        self.rw = {self.grants.grant_access(0, pfn): pfn for pfn in RW_PAGES}
        self.ro = self.grants.grant_access(0, RO_PAGE, readonly=True)
        self.foreign = self.grants.grant_access(7, FOREIGN_PAGE)
        fd, self.path = tempfile.mkstemp(prefix="xenlike-blk-")
        os.ftruncate(fd, SECTORS * 512)
        os.close(fd)
        self.vbd = open_image(self.path, readonly=False)
        self.back = BlkifRing("test xvda", FRONT, self.vbd, HypervisorGrants(self.mapper), self.memory.fd, [ring_ref], True)
        self.next_id = 1

    def submit(self, slot: bytes) -> tuple[int, int, int]:
        self.front.put_requests(slot)
        self.front.push_requests()
        self.back.process()
        data, count = self.front.get_responses()
        assert count == 1, "every request gets exactly one response"
        return RESPONSE.unpack_from(data)

    def close(self) -> None:
        self.back.close()
        self.vbd.close()
        os.unlink(self.path)
        self.front.release()
        self.grants.release()
        self.memory.close()


@pytest.fixture
def blk():
    setup = Setup()
    yield setup
    setup.close()


# Mostly plausible requests, so that the interesting ones sit next to the valid edge.
grefs = st.sampled_from(["rw"] * 6 + ["ro", "ro", "foreign", "ungranted", "ring"])
segment = st.builds(lambda kind, first, length: (kind, first, (first + length - 1) % 256),
                    grefs, st.integers(0, 8), st.integers(0, 8))
segments = st.lists(segment, min_size=0, max_size=12)
sectors = st.one_of(st.integers(0, 64), st.integers(SECTORS - 24, SECTORS + 4), st.integers(SECTORS - 24, SECTORS + 4),
                    st.integers(0, 2**64 - 1))
requests = st.tuples(
    st.sampled_from([BLKIF_OP_READ] * 3 + [BLKIF_OP_WRITE] * 3 + [BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_DISCARD, 2, 4, 200]),
    sectors,
    segments,
    st.integers(0, 255),
)


def _gref(setup: Setup, kind: str) -> int:
    return {"rw": next(iter(setup.rw)), "ro": setup.ro, "foreign": setup.foreign, "ungranted": 300, "ring": 8}[kind]


def valid(op: int, sector: int, segs: list, nr_field: int) -> bool:
    """The model: blkif.h's rules for a request this back end should serve."""
    if op == BLKIF_OP_FLUSH_DISKCACHE:
        return True
    if op == BLKIF_OP_DISCARD:
        return 0 < nr_field and sector + nr_field <= SECTORS
    if op not in (BLKIF_OP_READ, BLKIF_OP_WRITE):
        return False
    if not 1 <= len(segs) <= 11 or nr_field != len(segs):
        return False
    total = 0
    for kind, first, last in segs:
        if not first <= last <= 7:
            return False
        if kind in ("foreign", "ungranted") or (kind == "ro" and op == BLKIF_OP_READ):
            return False
        total += last - first + 1
    return sector + total <= SECTORS


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(requests, min_size=1, max_size=12))
@example(batch=[(BLKIF_OP_WRITE, SECTORS - 1, [("rw", 0, 7)], 1)])  # runs past the end
@example(batch=[(BLKIF_OP_READ, 0, [("ro", 0, 7)], 1)])  # a read into a read-only grant
@example(batch=[(BLKIF_OP_READ, 0, [("rw", 3, 2)], 1)])  # first_sect > last_sect
@example(batch=[(BLKIF_OP_WRITE, 0, [("rw", 0, 7)] * 12, 12)])  # more than 11 segments
def test_every_request_gets_the_right_status_and_the_back_end_keeps_serving(blk, batch):
    for op, sector, segs, nr in batch:
        segment_list = [Segment(_gref(blk, kind), first, last) for kind, first, last in segs]
        req_id = blk.next_id
        blk.next_id += 1
        if op == BLKIF_OP_DISCARD:
            slot = pack_discard(req_id, sector % 2**64, nr)
        else:
            # Build the slot by hand so nr_segments can lie about the segment list.
            padded = (segment_list + [Segment(0, 0, 0)] * 11)[:11]
            fields = [f for s in padded for f in (s.gref, s.first_sect, s.last_sect)]
            nr_field = len(segs) if nr % 4 else nr  # mostly honest, sometimes not
            slot = REQUEST.pack(op, nr_field, 0, req_id, sector % 2**64, *fields)
            nr = nr_field
        got_id, got_op, status = blk.submit(slot)
        assert got_id == req_id and got_op == op
        if valid(op, sector, [(k, f, l) for k, f, l in segs], nr):
            assert status == BLKIF_RSP_OKAY, f"valid request refused: op {op} sector {sector} {segs}"
        else:
            assert status < 0, f"invalid request served: op {op} sector {sector} nr {nr} {segs}"
    # Whatever came before, a good request is still served, and the data is right.
    gref, pfn = next(iter(blk.rw.items()))
    blk.memory.frame(pfn)[:512] = b"\xab" * 512
    assert blk.submit(pack_rw(BLKIF_OP_WRITE, blk.next_id, 3, [Segment(gref, 0, 0)]))[2] == BLKIF_RSP_OKAY
    with open(blk.path, "rb") as f:
        f.seek(3 * 512)
        assert f.read(512) == b"\xab" * 512


def test_a_read_into_a_read_only_grant_is_refused_and_leaves_it_unmapped(blk):
    status = blk.submit(pack_rw(BLKIF_OP_READ, 1, 0, [Segment(blk.ro, 0, 7)]))[2]
    assert status < 0
    assert not blk.mapper.is_mapped(FRONT, blk.ro)


def test_a_ring_index_jumping_ahead_stops_the_ring(blk):
    struct.pack_into("<I", blk.memory.frame(10), 0, 10_000)  # req_prod far past the ring
    with pytest.raises(RingError, match="more than"):
        blk.back.process()


def test_closing_the_back_end_unmaps_every_grant(blk):
    gref = next(iter(blk.rw))
    assert blk.submit(pack_rw(BLKIF_OP_READ, 1, 0, [Segment(gref, 0, 7)]))[2] == BLKIF_RSP_OKAY
    assert blk.mapper.mapping_count() >= 2  # the ring and the persistent data page
    blk.back.close()
    assert blk.mapper.mapping_count() == 0
    blk.back.close = lambda: None  # already closed for the fixture


def test_the_counters_xentop_shows_count_requests_by_operation_and_sectors_moved(blk):
    gref = next(iter(blk.rw))
    assert blk.submit(pack_rw(BLKIF_OP_WRITE, 1, 0, [Segment(gref, 0, 7)]))[2] == BLKIF_RSP_OKAY
    assert blk.submit(pack_rw(BLKIF_OP_READ, 2, 8, [Segment(gref, 2, 3)]))[2] == BLKIF_RSP_OKAY
    assert blk.submit(pack_rw(BLKIF_OP_READ, 3, 0, [Segment(gref, 3, 2)]))[2] < 0  # refused, still counted
    assert blk.submit(pack_flush(4))[2] == BLKIF_RSP_OKAY
    assert blk.submit(pack_discard(5, 0, 8))[2] == BLKIF_RSP_OKAY
    stats = blk.back.stats
    assert (stats["write_requests"], stats["write_sectors"]) == (1, 8)
    assert (stats["read_requests"], stats["read_sectors"]) == (2, 2)
    assert (stats["flush_requests"], stats["discard_requests"], stats["oo_requests"]) == (1, 1, 0)
    assert (stats["requests"], stats["errors"]) == (5, 1)


def _indirect(blk, op, sector, segs, indirect_pfn=RO_PAGE - 2):
    """An INDIRECT request whose segment list sits in a page granted read-only."""
    blk.memory.frame(indirect_pfn)[: 8 * len(segs)] = pack_segments(segs)
    gref = blk.grants.grant_access(0, indirect_pfn, readonly=True)
    try:
        return blk.submit(pack_indirect(op, blk.next_id, sector, len(segs), [gref]))[2]
    finally:
        blk.back.grants.unmap_all()
        blk.grants.end_access(gref)


def test_indirect_segments_move_the_right_sectors_through_pages_in_any_order(blk):
    pages = list(blk.rw.items())  # (gref, pfn), granted in pfn order
    for i, (_, pfn) in enumerate(pages):
        blk.memory.frame(pfn)[:] = bytes([i + 1]) * 4096
    # Whole pages, then a run out of order, then partial sectors: merged where adjacent, split where not.
    segs = [Segment(g, 0, 7) for g, _ in pages[:4]] + [Segment(pages[6][0], 0, 7), Segment(pages[5][0], 2, 5)]
    assert _indirect(blk, BLKIF_OP_WRITE, 16, segs) == BLKIF_RSP_OKAY
    with open(blk.path, "rb") as f:
        f.seek(16 * 512)
        got = f.read(4 * 4096 + 4096 + 4 * 512)
    assert got == b"".join(bytes([i]) * 4096 for i in (1, 2, 3, 4, 7)) + bytes([6]) * 2048
    for _, pfn in pages:
        blk.memory.frame(pfn)[:] = bytes(4096)
    assert _indirect(blk, BLKIF_OP_READ, 16, segs) == BLKIF_RSP_OKAY
    assert bytes(blk.memory.frame(pages[6][1])) == bytes([7]) * 4096
    assert bytes(blk.memory.frame(pages[5][1])[1024:3072]) == bytes([6]) * 2048
    assert bytes(blk.memory.frame(pages[5][1])[:1024]) == bytes(1024)


@pytest.mark.parametrize("bad", [Segment(None, 3, 2), Segment(None, 0, 8), Segment("ro", 0, 7), Segment(300, 0, 7)])
def test_an_indirect_read_with_one_bad_segment_is_refused(blk, bad):
    grefs = list(blk.rw)
    gref = {None: grefs[3], "ro": blk.ro}.get(bad.gref, bad.gref)
    segs = [Segment(g, 0, 7) for g in grefs[:3]] + [Segment(gref, bad.first_sect, bad.last_sect)]
    assert _indirect(blk, BLKIF_OP_READ, 0, segs) < 0
    assert not blk.mapper.is_mapped(FRONT, blk.ro)


def test_an_indirect_request_whose_segment_page_is_not_granted_is_refused(blk):
    slot = pack_indirect(BLKIF_OP_READ, blk.next_id, 0, 2, [blk.foreign])
    assert blk.submit(slot)[2] < 0
