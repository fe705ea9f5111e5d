"""blkback remembers indirect segment lists it has checked: a hostile front end gains nothing by it.

A list seen before (the same bytes, the same operation, no grant mapped or
unmapped since) is served without being decoded and checked again. These tests
drive sequences of indirect requests that repeat lists, rewrite them in place,
mix READs and WRITEs on read-only grants, aim past the disk's end, inject failing
sectors and drop every mapping, and hold each answer to what a back end that
checks everything every time would answer.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.test_blkback_hostile import SECTORS, Setup
from xenlike.public.blkif import BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_RSP_OKAY, Segment, pack_indirect, pack_segments

INDIRECT_PAGES = (40, 41, 42)


def _lists(setup: Setup) -> list[list[Segment]]:
    rw = list(setup.rw)
    return [
        [Segment(g, 0, 7) for g in rw[:4]],  # whole adjacent pages
        [Segment(rw[5], 0, 7), Segment(rw[4], 2, 5)],  # out of order, partial
        [Segment(rw[0], 0, 7), Segment(setup.ro, 0, 7)],  # a read-only grant: WRITE only
        [Segment(rw[1], 3, 2)],  # first past last: never valid
        [Segment(rw[2], 0, 7), Segment(300, 0, 7)],  # an ungranted gref: never valid
    ]


def _expected(setup: Setup, op: int, sector: int, segs: list[Segment], failing: bool) -> bool:
    """What checking everything every time answers: True for BLKIF_RSP_OKAY."""
    allowed = set(setup.rw) | ({setup.ro} if op == BLKIF_OP_WRITE else set())
    if not all(s.gref in allowed and s.first_sect <= s.last_sect < 8 for s in segs):
        return False
    total = sum(s.last_sect - s.first_sect + 1 for s in segs)
    return sector + total <= SECTORS and not (failing and sector <= 4 < sector + total)


io = st.tuples(st.just("io"), st.sampled_from([BLKIF_OP_READ, BLKIF_OP_WRITE]), st.integers(0, 2),
               st.sampled_from([0, 8, SECTORS - 40, SECTORS - 8, SECTORS - 1, SECTORS + 4]))
# Mostly I/O, so that lists come back often enough to be served from what was remembered.
steps = st.lists(
    st.one_of(
        io, io, io, io, io, io,
        st.tuples(st.just("rewrite"), st.integers(0, 2), st.integers(0, 4)),
        st.tuples(st.just("unmap_all")),
        st.tuples(st.just("failing"), st.booleans()),
    ),
    min_size=20,
    max_size=60,
)


@settings(max_examples=100, deadline=None)
@given(steps, st.lists(st.integers(0, 4), min_size=3, max_size=3))
def test_remembered_lists_are_answered_as_if_checked_again(sequence, first_lists):
    setup = Setup()
    try:
        lists = _lists(setup)
        indirect = [setup.grants.grant_access(0, pfn, readonly=True) for pfn in INDIRECT_PAGES]
        held = list(first_lists)  # which list each indirect page holds

        def write_list(page: int, which: int) -> None:
            frame = setup.memory.frame(INDIRECT_PAGES[page])
            frame[:] = bytes(4096)
            frame[: 8 * len(lists[which])] = pack_segments(lists[which])
            held[page] = which

        for page, which in enumerate(first_lists):
            write_list(page, which)
        failing = False
        for step in sequence:
            if step[0] == "rewrite":
                write_list(step[1], step[2])
            elif step[0] == "unmap_all":
                setup.back.grants.unmap_all()
            elif step[0] == "failing":
                failing = step[1]
                setup.back.inject({"sector_eio": [[4, 4]] if failing else []})
            else:
                _, op, page, sector = step
                segs = lists[held[page]]
                setup.next_id += 1
                status = setup.submit(pack_indirect(op, setup.next_id, sector, len(segs), [indirect[page]]))[2]
                assert (status == BLKIF_RSP_OKAY) == _expected(setup, op, sector, segs, failing), (step, segs)
                if status == BLKIF_RSP_OKAY and op == BLKIF_OP_READ:
                    _assert_read_landed(setup, sector, segs)
    finally:
        setup.close()


def _assert_read_landed(setup: Setup, sector: int, segs: list[Segment]) -> None:
    """Each segment's sectors of the guest's page hold the image's, in order from ``sector``."""
    pfn_of = dict(setup.rw)
    with open(setup.path, "rb") as image:
        for s in segs:
            count = s.last_sect - s.first_sect + 1
            image.seek(sector * 512)
            want = image.read(count * 512)
            got = bytes(setup.memory.frame(pfn_of[s.gref])[s.first_sect * 512 : (s.last_sect + 1) * 512])
            assert got == want
            sector += count


def test_a_list_served_again_is_not_decoded_again_until_a_mapping_changes():
    setup = Setup()
    try:
        segs = _lists(setup)[0]
        setup.memory.frame(INDIRECT_PAGES[0])[: 8 * len(segs)] = pack_segments(segs)
        gref = setup.grants.grant_access(0, INDIRECT_PAGES[0], readonly=True)
        for _ in range(3):
            setup.next_id += 1
            assert setup.submit(pack_indirect(BLKIF_OP_READ, setup.next_id, 8, len(segs), [gref]))[2] == BLKIF_RSP_OKAY
        assert len(setup.back._checked_runs) == 1
        setup.back.grants.unmap_all()
        setup.next_id += 1
        assert setup.submit(pack_indirect(BLKIF_OP_READ, setup.next_id, 8, len(segs), [gref]))[2] == BLKIF_RSP_OKAY
        assert setup.back.stats["maps"] == 2 * (len(segs) + 1)  # mapped again after the unmap, list checked anew
    finally:
        setup.close()
