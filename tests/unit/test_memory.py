"""Guest memory, foreign mappings and the page allocator."""

from __future__ import annotations

import ctypes
import faulthandler
import os
import signal
import sys
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xenlike.kernel.memory import ForeignMapping, GuestMemory, OutOfFrames, PageAllocator
from xenlike.public.xen import PAGE_SIZE


@pytest.fixture
def memory():
    mem = GuestMemory.create(32, "test-guest")
    yield mem
    mem.close()


def test_memory_is_sparse_and_zeroed(memory):
    assert memory.size == 32 * PAGE_SIZE
    assert memory.resident_frames() == 0
    assert bytes(memory.frame(5)) == bytes(PAGE_SIZE)
    memory.frame(5)[:4] = b"xen!"
    assert memory.resident_frames() == 1


def test_frame_outside_memory_is_refused(memory):
    with pytest.raises(IndexError, match="outside this domain's memory"):
        memory.frame(32)
    with pytest.raises(IndexError):
        memory.frames(30, 3)
    with pytest.raises(IndexError):
        memory.address(-1)


def test_release_frames_punches_holes(memory):
    memory.frame(3)[:] = b"\xff" * PAGE_SIZE
    assert memory.resident_frames() == 1
    memory.release_frames([3])
    assert memory.resident_frames() == 0
    assert bytes(memory.frame(3)) == bytes(PAGE_SIZE)


def test_another_process_sees_the_same_frames(memory):
    other = GuestMemory.from_fd(os.dup(memory.fd))
    try:
        other.frame(7)[:5] = b"hello"
        assert bytes(memory.frame(7)[:5]) == b"hello"
        assert other.nr_frames == memory.nr_frames
    finally:
        other.close()


def test_foreign_mapping_places_scattered_frames_side_by_side(memory):
    for pfn in (9, 2, 20):
        memory.frame(pfn)[:1] = bytes([pfn])
    with ForeignMapping(memory.fd, [9, 2, 20]) as mapping:
        assert [mapping.view[i * PAGE_SIZE] for i in range(3)] == [9, 2, 20]
        mapping.frame(1)[1:3] = b"ok"
    assert bytes(memory.frame(2)[1:3]) == b"ok"


def test_read_only_foreign_mapping_faults_on_write(memory):
    """A read-only mapping is PROT_READ: even a raw store through ctypes faults."""
    mapping = ForeignMapping(memory.fd, [4], writable=False)
    with pytest.raises(TypeError):
        mapping.view[0] = 1
    pid = os.fork()
    if pid == 0:  # the child tries to write behind Python's back
        faulthandler.disable()  # the fault is expected: no traceback
        ctypes.memset(mapping.address, 0x41, 1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    mapping.close()
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSEGV
    assert memory.frame(4)[0] == 0


def test_allocator_hands_out_contiguous_runs():
    pages = PageAllocator(4, 20)
    a = pages.alloc(4)
    b = pages.alloc(8)
    assert (a, b) == (4, 8)
    with pytest.raises(OutOfFrames):
        pages.alloc(5)
    pages.free(a)
    assert pages.alloc(2) == 4
    with pytest.raises(ValueError):
        pages.free(5)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(1, 6)), max_size=60))
def test_allocator_never_overlaps_and_coalesces(ops):
    pages = PageAllocator(8, 72)
    owned: dict[int, int] = {}
    for do_alloc, count in ops:
        if do_alloc or not owned:
            try:
                start = pages.alloc(count)
            except OutOfFrames:
                continue
            assert 8 <= start and start + count <= 72
            for other, length in owned.items():
                assert start + count <= other or other + length <= start
            owned[start] = count
        else:
            start = sorted(owned)[count % len(owned)]
            pages.free(start)
            del owned[start]
        assert pages.free_frames == 64 - sum(owned.values())
    for start in list(owned):
        pages.free(start)
    assert pages.alloc(64) == 8  # everything coalesced back into one run


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(1, 6), st.booleans()), max_size=60))
def test_allocator_runs_restore_into_a_fresh_allocator(ops):
    """What a save carries (runs no device owns) reserved in a fresh allocator: the same frames are taken."""
    pages = PageAllocator(8, 72)
    owned: dict[int, tuple[int, bool]] = {}
    for do_alloc, count, device in ops:
        if do_alloc or not owned:
            try:
                start = pages.alloc(count, owner="device/vbd/51712" if device else "")
            except OutOfFrames:
                continue
            owned[start] = (count, device)
        else:
            start = sorted(owned)[count % len(owned)]
            pages.free(start)
            del owned[start]
    kept = sorted((start, count) for start, (count, device) in owned.items() if not device)
    assert pages.runs() == kept
    fresh = PageAllocator(8, 72)
    for start, count in kept:
        fresh.reserve(start, count)
    assert fresh.free_frames == 64 - sum(count for _, count in kept)
    assert fresh.runs() == kept
    for start, count in kept:
        with pytest.raises(ValueError, match="are not free"):
            fresh.reserve(start, 1)
        fresh.free(start)
    assert fresh.alloc(64) == 8


def test_frames_allocated_and_freed_from_many_threads_are_never_handed_out_twice():
    """The guest's drivers allocate from their own threads (the kernel's zone lock)."""
    pages = PageAllocator(0, 1 << 16)
    held: list[list[int]] = [[] for _ in range(4)]
    errors: list[BaseException] = []

    def churn(mine: list[int]) -> None:
        try:
            for turn in range(2000):
                mine.append(pages.alloc(1 + turn % 3))
                if turn % 4 == 3:
                    for pfn in mine[::2]:
                        pages.free(pfn)
                    del mine[::2]
        except BaseException as exc:  # noqa: BLE001 - handed to the test to assert on
            errors.append(exc)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter can
    threads = [threading.Thread(target=churn, args=(mine,)) for mine in held]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        sys.setswitchinterval(interval)
    assert not errors, errors[:3]
    firsts = [pfn for mine in held for pfn in mine]
    assert len(firsts) == len(set(firsts))
    for pfn in firsts:
        pages.free(pfn)
    assert pages.free_frames == 1 << 16 and pages._free == [[0, 1 << 16]]


def test_trim_keeps_the_head_of_a_run_and_frees_its_tail():
    pages = PageAllocator(0, 64)
    first = pages.alloc(16, owner="balloon")
    pages.trim(first, 4)
    assert pages.free_frames == 60 and pages._free == [[4, 60]]  # the tail joined the free run after it
    assert pages.alloc(12) == 4  # the freed tail is the first fit
    with pytest.raises(ValueError, match="cannot keep 4 of the 4"):
        pages.trim(first, 4)
    with pytest.raises(ValueError, match="not the start"):
        pages.trim(first + 1, 1)
    pages.free(first)
    assert pages.runs() == [(4, 12)]
