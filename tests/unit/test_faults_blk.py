"""Injected block faults alone: the sector-range rule, and blkback serving through sector-eio and ring-corrupt.

The back end runs in-process on a real ring, grant table and image (the set-up of
``test_blkback_hostile``).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dom0.faults import FaultError, SectorRanges, parse_sector_range
from xenlike.public.blkif import (
    BLKIF_OP_DISCARD,
    BLKIF_OP_READ,
    BLKIF_OP_WRITE,
    BLKIF_RSP_EOPNOTSUPP,
    BLKIF_RSP_ERROR,
    BLKIF_RSP_OKAY,
    Segment,
    pack_discard,
    pack_rw,
)
from xenlike.public.ring import RingError

from .test_blkback_hostile import SECTORS, Setup


@pytest.fixture
def blk():
    setup = Setup()
    yield setup
    setup.close()


ranges = st.lists(st.tuples(st.integers(0, 200), st.integers(0, 40)).map(lambda t: (t[0], t[0] + t[1])), max_size=4)


@given(ranges, st.integers(0, 260), st.integers(1, 64))
def test_a_request_hits_the_first_failing_sector_it_touches_and_only_those(spans, sector, count):
    failing = {s for first, last in spans for s in range(first, last + 1)}
    touched = [s for s in range(sector, sector + count) if s in failing]
    assert SectorRanges(spans).hit(sector, count) == (touched[0] if touched else None)
    assert bool(SectorRanges(spans)) == bool(spans)


def test_a_sector_range_is_first_or_first_to_last_within_the_disk():
    assert parse_sector_range("7", 100) == (7, 7)
    assert parse_sector_range("7-99", 100) == (7, 99)
    for text, error in [("7-100", "past the disk's last sector, 99"), ("9-3", "at most LAST"), ("x", "FIRST"),
                        ("-3", "FIRST"), ("1-", "FIRST")]:
        with pytest.raises(FaultError, match=error):
            parse_sector_range(text, 100)


def _write(blk, sector: int, pages: int, byte: int) -> tuple[int, int, int]:
    grefs = list(blk.rw)[:pages]
    for gref in grefs:
        blk.memory.frame(blk.rw[gref])[:] = bytes([byte]) * 4096
    blk.next_id += 1
    return blk.submit(pack_rw(BLKIF_OP_WRITE, blk.next_id, sector, [Segment(g, 0, 7) for g in grefs]))


def _image(blk, sector: int, count: int) -> bytes:
    with open(blk.path, "rb") as f:
        f.seek(sector * 512)
        return f.read(count * 512)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ranges, st.lists(st.tuples(st.sampled_from([BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_OP_DISCARD]),
                                  st.integers(0, 240), st.integers(1, 2)), min_size=1, max_size=8))
def test_sector_eio_fails_exactly_the_requests_touching_its_ranges_and_the_ring_goes_on(blk, spans, batch):
    blk.back.inject({"sector_eio": [list(span) for span in spans]})
    failing = SectorRanges(spans)
    for op, sector, pages in batch:
        before = _image(blk, sector, pages * 8)
        if op == BLKIF_OP_WRITE:
            status = _write(blk, sector, pages, 0x5A)[2]
        else:
            blk.next_id += 1
            slot = (pack_discard(blk.next_id, sector, pages * 8) if op == BLKIF_OP_DISCARD else
                    pack_rw(op, blk.next_id, sector, [Segment(g, 0, 7) for g in list(blk.rw)[:pages]]))
            status = blk.submit(slot)[2]
        if failing.hit(sector, pages * 8) is None:
            assert status == BLKIF_RSP_OKAY
        else:
            assert status == BLKIF_RSP_ERROR
            assert _image(blk, sector, pages * 8) == before  # nothing of a refused request reaches the image
    blk.back.inject({"sector_eio": []})  # cleared: every sector served again
    assert _write(blk, 0, 2, 0x33)[2] == BLKIF_RSP_OKAY and _image(blk, 0, 16) == b"\x33" * 8192


def test_a_scribbled_slot_is_answered_eopnotsupp_under_its_own_id_and_the_ring_goes_on(blk):
    blk.back.inject({"ring_corrupt": "slot"})
    assert not blk.back.process()  # an empty ring: it waits for a request to scribble
    assert blk.back.corrupt == "slot"
    before = _image(blk, 8, 8)
    req_id, op, status = _write(blk, 8, 1, 0x77)
    assert (req_id, op, status) == (blk.next_id, 0xFF, BLKIF_RSP_EOPNOTSUPP)
    assert _image(blk, 8, 8) == before and blk.back.corrupt is None
    assert _write(blk, 8, 1, 0x78)[2] == BLKIF_RSP_OKAY and _image(blk, 8, 8) == b"\x78" * 4096


def test_a_scribbled_index_stops_the_ring_as_bogus_requests(blk):
    assert _write(blk, 0, 1, 1)[2] == BLKIF_RSP_OKAY
    blk.back.inject({"ring_corrupt": "index"})
    with pytest.raises(RingError, match="front end provided bogus ring requests: .* more than 32 ahead"):
        blk.back.process()
    assert _image(blk, SECTORS - 8, 8) == bytes(4096)
