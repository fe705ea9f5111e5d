"""blkfront's grant pool: runs lent once at a time, single pages reused, long runs merged back."""

from __future__ import annotations

import inspect
import itertools
import sys
import threading
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



def test_every_waiter_of_one_read_gets_its_bytes():
    """Several threads may wait on one future (a batch's wait beside the workload's own result()).

    The second waiter is held, by a trace function, on the line of result() that
    calls the collector, after it looked at it; the first runs result() to its end
    (and clears the collector); then the second goes on, and must get the bytes too.
    """
    from domu.blkfront.blkfront import BlkFuture

    source, first = inspect.getsourcelines(BlkFuture.result)
    call_line = first + next(i for i, line in enumerate(source) if "collect()" in line)
    future = BlkFuture()
    future.set(collect=lambda: b"DATA")  # as BlockDevice._complete does for a READ answered OKAY
    held, go_on = threading.Event(), threading.Event()

    def local(frame, event, arg):
        if event == "line" and frame.f_lineno == call_line:
            held.set()
            go_on.wait(10)
        return local

    def tracer(frame, event, arg):
        return local if event == "call" and frame.f_code is BlkFuture.result.__code__ else None

    got: list[object] = []

    def second() -> None:
        sys.settrace(tracer)
        try:
            got.append(future.result())
        except BaseException as exc:  # noqa: BLE001 - handed to the test to assert on
            got.append(exc)
        finally:
            sys.settrace(None)

    waiter = threading.Thread(target=second)
    waiter.start()
    assert held.wait(10)
    assert future.result() == b"DATA"  # the first waiter collects
    go_on.set()
    waiter.join(10)
    assert got == [b"DATA"], got
