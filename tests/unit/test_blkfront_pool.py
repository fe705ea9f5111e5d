"""blkfront's grant pool: runs lent once at a time, single pages reused, long runs merged back."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

from hypothesis import given, settings
from hypothesis import strategies as st

from domu.blkfront.pool import _GrantPool
from xenlike.kernel.memory import PageAllocator

CHUNK_PAGES, MAX_CHUNKS = 12, 2


def _pool() -> _GrantPool:
    grefs = itertools.count(8)
    grant_table = SimpleNamespace(grant_access=lambda domid, pfn: next(grefs))
    kernel = SimpleNamespace(pages=PageAllocator(0, 256), grant_table=grant_table)
    device = SimpleNamespace(kernel=kernel, backend_id=0, xdev=SimpleNamespace(nodename="device/vbd/51712"),
                             bus=SimpleNamespace(end_access=lambda xdev, gref: True))
    return _GrantPool(device, CHUNK_PAGES, MAX_CHUNKS)  # type: ignore[arg-type]


def _pages(run) -> set[int]:
    return set(range(run.pfn, run.pfn + run.count))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.integers(1, CHUNK_PAGES), st.just(1), st.just(1), st.integers(-40, -1)), max_size=80))
def test_no_page_is_lent_twice_and_everything_comes_back(steps):
    pool, held = _pool(), []
    for step in steps:
        if step > 0:
            run = pool.take(step)
            if run is None:  # only when no run of that length is free anywhere
                assert pool.free_pages < step or step > 1
                continue
            assert run.count == step
            assert all(not _pages(run) & _pages(other) for other in held), "a page lent twice"
            held.append(run)
        elif held:
            pool.give(held.pop(step % len(held)))
        assert pool.free_pages == pool.pages - sum(run.count for run in held)
    for run in held:
        pool.give(run)
    assert pool.free_pages == pool.pages
    whole = [pool.take(CHUNK_PAGES) for _ in range(len(pool._chunks))]  # single pages merge back into whole chunks
    assert all(run is not None for run in whole)


def test_a_single_page_given_back_is_the_next_one_lent():
    pool = _pool()
    first, second = pool.take(1), pool.take(1)
    pool.give(first)
    assert pool.take(1) is first
    pool.give(second)
    assert pool.free_pages == pool.pages - 1
